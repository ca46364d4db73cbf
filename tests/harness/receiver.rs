//! A loopback HTTP receiver that records every request (a stand-in for a
//! Pyroscope server's ingest endpoint, which cannot be installed here):
//! it answers 200 and keeps the request line, headers and body.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpListener,
    sync::{Arc, Mutex},
};

/// One recorded request.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// e.g. `POST /ingest?name=...`
    pub request_line: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The content of the multipart form field `field`, if any.
    #[must_use]
    pub fn form_field(&self, field: &str) -> Option<Vec<u8>> {
        let ct = self.header("content-type")?;
        let boundary = ct.split("boundary=").nth(1)?.trim_matches('"');
        let delimiter = format!("--{boundary}");
        let body = &self.body;
        let mut parts = split(body, delimiter.as_bytes());
        parts.find_map(|part| {
            let head_end = find(part, b"\r\n\r\n")?;
            let head = String::from_utf8_lossy(&part[..head_end]);
            if !head.contains(&format!("name=\"{field}\"")) {
                return None;
            }
            let content = &part[head_end + 4..];
            Some(content.strip_suffix(b"\r\n").unwrap_or(content).to_vec())
        })
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn split<'a>(hay: &'a [u8], delimiter: &'a [u8]) -> impl Iterator<Item = &'a [u8]> {
    let mut rest = hay;
    std::iter::from_fn(move || {
        let start = find(rest, delimiter)? + delimiter.len();
        rest = &rest[start..];
        let end = find(rest, delimiter).unwrap_or(rest.len());
        let part = &rest[..end];
        Some(part.strip_prefix(b"\r\n").unwrap_or(part))
    })
}

/// A receiver on a free loopback port, recording on a background thread.
pub struct Receiver {
    pub port: u16,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
}

impl Receiver {
    #[must_use]
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
        let port = listener.local_addr().map_or(0, |a| a.port());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let sink = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream);
                while let Some(rec) = read_request(&mut reader) {
                    if let Ok(mut all) = sink.lock() {
                        all.push(rec);
                    }
                    let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                    if reader.get_mut().write_all(reply).is_err() {
                        break;
                    }
                }
            }
        });
        Self { port, requests }
    }

    #[must_use]
    pub fn recorded(&self) -> Vec<Recorded> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

fn read_request(reader: &mut BufReader<std::net::TcpStream>) -> Option<Recorded> {
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).ok()? == 0 {
        return None;
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(':')?;
        headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    Some(Recorded {
        request_line: request_line.trim_end().to_owned(),
        headers,
        body,
    })
}
