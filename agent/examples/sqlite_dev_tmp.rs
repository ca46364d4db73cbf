//! TEMPORARY (sqlite helper's dev reader, to be deleted): attaches the SQLite
//! probes and prints text/done events and stats.
#![allow(clippy::all, clippy::pedantic)]
use std::collections::HashMap;
use aya::maps::RingBuf;
use qprof::probes::{load_object, queries::events::{decode, QueryEvent}, query_sqlite::SqliteProbes};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let secs: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(5);
    let pids: Vec<u32> = args.iter().skip(2).filter_map(|s| s.parse().ok()).collect();
    let mut ebpf = load_object()?;
    let mut probes = SqliteProbes::attach(&mut ebpf, &pids)?;
    for f in probes.files() { eprintln!("attached {} pid {} sql_off {:?} fns {}", f.path, f.pid, f.library.sql_field_offset, f.library.functions.len()); }
    for w in probes.take_warnings() { eprintln!("warning: {w}"); }
    let mut ring = RingBuf::try_from(ebpf.take_map("QUERY_EVENTS").unwrap())?;
    eprintln!("qprof: recording");
    let start = std::time::Instant::now();
    let mut texts: HashMap<u64, String> = HashMap::new();
    let mut agg: HashMap<u64, (u64, u64, u64, u64)> = HashMap::new();
    let quiet = std::env::var("QUIET").is_ok();
    while start.elapsed().as_secs() < secs {
        while let Some(rec) = ring.next() {
            match decode(&rec) {
                Some(QueryEvent::Text { text_id, bytes, truncated, .. }) => {
                    let t = String::from_utf8_lossy(&bytes).into_owned();
                    if !quiet { println!("TEXT {text_id:016x} trunc={truncated} {t:?}"); }
                    texts.insert(text_id, t);
                }
                Some(QueryEvent::Done(d)) => {
                    if !quiet { println!("DONE {:016x} pid={} tid={} lat={}us rows={} err={}", d.text_id, d.pid, d.tid, d.latency_ns / 1000, d.rows as i64, d.error); }
                    let e = agg.entry(d.text_id).or_default();
                    e.0 += 1; e.1 += u64::from(d.error); e.2 += d.latency_ns; e.3 = e.3.max(d.latency_ns);
                }
                None => println!("MALFORMED"),
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    println!("--- summary");
    for (id, (c, e, tot, max)) in &agg { println!("{c:>7} {e:>4} {:>9}us max {:>8}us {:?}", tot / 1000, max / 1000, texts.get(id)); }
    println!("stats {:?}", SqliteProbes::stats(&ebpf)?);
    println!("drops {:?}", qprof::probes::drop_counters(&ebpf)?);
    Ok(())
}
