//! The JSON API and the metrics endpoint.

use std::{sync::Arc, time::Duration};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, Query, State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Deserialize;

use super::ApiError;
use crate::daemon::{
    Shared,
    captures::{self, CaptureRequest, StartError},
};

/// Windows merged by one `/api/continuous?profile=1` request at most: an
/// hour of 60 s windows.
const MAX_MERGED_WINDOWS: usize = 60;

/// Longest self-profile: the agent's own profiler costs little, but a
/// client should not hold a connection open for long.
const MAX_SELF_PROFILE_S: u64 = 60;

pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/api/captures", get(list_captures).post(create_capture))
        .route("/api/captures/{id}", get(get_capture))
        .route("/api/captures/{id}/files/{name}", get(get_file))
        .route("/api/queries", get(queries))
        .route("/api/syscalls", get(syscalls))
        .route("/api/tcp", get(tcp))
        .route("/api/continuous", get(continuous))
        .route("/debug/pprof/profile", get(self_profile))
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message.into())
}

fn not_found(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, message.into())
}

pub async fn metrics(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let (content_type, body) = crate::daemon::metrics::encode(&shared, accept);
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn create_capture(
    State(shared): State<Arc<Shared>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| ApiError(e.status(), e.body_text()))?;
    let req: CaptureRequest = serde_json::from_slice(&body)
        .map_err(|e| bad(format!("malformed capture request: {e}")))?;
    match captures::start(&shared, &req, "on-demand") {
        Ok(meta) => Ok((StatusCode::ACCEPTED, Json(meta)).into_response()),
        Err(StartError::BadRequest(m)) => Err(bad(m)),
        Err(e @ StartError::Busy { .. }) => {
            let StartError::Busy { id, .. } = &e else {
                return Err(bad(e.to_string()));
            };
            Ok((
                StatusCode::CONFLICT,
                Json(serde_json::json!({ "error": e.to_string(), "running": id })),
            )
                .into_response())
        }
        Err(e) => Err(ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

async fn list_captures(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.captures.list()).into_response()
}

async fn get_capture(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    shared
        .captures
        .get(&id)
        .map(|m| Json(m).into_response())
        .ok_or_else(|| not_found(format!("no capture {id:?}")))
}

async fn get_file(
    State(shared): State<Arc<Shared>>,
    Path((id, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let meta = shared
        .captures
        .get(&id)
        .ok_or_else(|| not_found(format!("no capture {id:?}")))?;
    if !meta.files.iter().any(|f| f == &name) {
        return Err(not_found(format!("capture {id} has no file {name:?}")));
    }
    let bytes = shared
        .store
        .read_capture_file(&id, &name)
        .ok_or_else(|| not_found(format!("capture {id}: {name} is gone from the store")))?;
    Ok(([(header::CONTENT_TYPE, content_type(&name))], bytes).into_response())
}

fn content_type(name: &str) -> &'static str {
    let ext = std::path::Path::new(name)
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("");
    if ext.eq_ignore_ascii_case("json") {
        "application/json"
    } else if ext.eq_ignore_ascii_case("svg") {
        "image/svg+xml"
    } else {
        "application/octet-stream"
    }
}

async fn queries(State(shared): State<Arc<Shared>>) -> Response {
    let rows = shared.queries.lock().map(|t| t.rows()).unwrap_or_default();
    Json(rows).into_response()
}

/// The last window's syscall rows (counts mode: exact calls and errors).
async fn syscalls(State(shared): State<Arc<Shared>>) -> Response {
    let rows = shared
        .latest
        .lock()
        .map(|l| l.syscalls.clone())
        .unwrap_or_default();
    Json(rows).into_response()
}

/// The last window's TCP rows.
async fn tcp(State(shared): State<Arc<Shared>>) -> Response {
    let rows = shared
        .latest
        .lock()
        .map(|l| l.tcp.clone())
        .unwrap_or_default();
    Json(rows).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RangeQuery {
    from: Option<u64>,
    to: Option<u64>,
    /// `1`: the merged CPU profile of the range instead of the list.
    profile: Option<u8>,
}

async fn continuous(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<RangeQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| bad(format!("bad query string: {}", e.body_text())))?;
    let from = q.from.unwrap_or(0);
    let to = q.to.unwrap_or(u64::MAX);
    if from > to {
        return Err(bad("from is after to"));
    }
    let windows: Vec<_> = shared
        .store
        .windows()
        .into_iter()
        .filter(|w| w.start_unix_ms >= from && w.start_unix_ms <= to)
        .collect();
    if q.profile != Some(1) {
        return Ok(Json(windows).into_response());
    }
    let cpu: Vec<_> = windows
        .iter()
        .filter(|w| w.name.ends_with("-cpu.pb.gz"))
        .collect();
    if cpu.is_empty() {
        return Err(not_found("no CPU window in that range"));
    }
    if cpu.len() > MAX_MERGED_WINDOWS {
        return Err(bad(format!(
            "{} windows in that range; at most {MAX_MERGED_WINDOWS} can be merged",
            cpu.len()
        )));
    }
    let names: Vec<String> = cpu.iter().map(|w| w.name.clone()).collect();
    let store = shared.store.clone();
    let merged = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, String> {
        let mut profiles = Vec::new();
        for name in names {
            let bytes = store
                .read_window(&name)
                .ok_or_else(|| format!("{name} is gone"))?;
            profiles.push(profiles::pprof::decode(&bytes).map_err(|e| format!("{name}: {e}"))?);
        }
        let merged = profiles::merge(profiles).map_err(|e| e.to_string())?;
        profiles::pprof::encode_gzip(&merged).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], merged).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SelfProfileQuery {
    seconds: Option<u64>,
}

/// The agent's own CPU profile (pprof crate, in-process SIGPROF sampling
/// at 99 Hz), gzip pprof as Go's `net/http/pprof` serves it.
async fn self_profile(
    query: Result<Query<SelfProfileQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| bad(format!("bad query string: {}", e.body_text())))?;
    let seconds = q.seconds.unwrap_or(10);
    if seconds == 0 || seconds > MAX_SELF_PROFILE_S {
        return Err(bad(format!(
            "seconds must be between 1 and {MAX_SELF_PROFILE_S}"
        )));
    }
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(99)
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()
        .map_err(|e| ApiError(StatusCode::CONFLICT, format!("profiler busy: {e}")))?;
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let report = guard
        .report()
        .build()
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let profile = report
        .pprof()
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let mut raw = Vec::new();
    pprof::protos::Message::encode(&profile, &mut raw)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &raw)
        .and_then(|()| gz.finish())
        .map(|bytes| ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}
