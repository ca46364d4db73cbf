//! The agent's HTTP interface (axum): `/metrics` and `/healthz` for
//! scrapers and probes, `/api/…` for captures and live data, the agent's own
//! CPU profile at `/debug/pprof/profile`.
//!
//! Every error is a JSON body `{"error": "..."}` with a 4xx/5xx status,
//! never a panic; request bodies are capped at [`MAX_BODY`]; with a token,
//! everything but `/metrics` and `/healthz` needs `Authorization: Bearer`.

mod api;
mod auth;

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::DefaultBodyLimit,
    http::StatusCode,
    middleware,
    response::{IntoResponse, Response},
    routing::get,
};

use crate::daemon::Shared;

/// Largest request body accepted: a capture request is ~100 bytes; 64 KiB
/// leaves room for long pid lists and refuses anything that is not one.
pub const MAX_BODY: usize = 64 * 1024;

/// A JSON error with its status.
pub struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

/// The whole HTTP surface.
pub fn router(shared: Arc<Shared>) -> Router {
    let protected = api::routes().layer(middleware::from_fn_with_state(
        shared.clone(),
        auth::require,
    ));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(api::metrics))
        .merge(protected)
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such endpoint".into()) })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(shared)
}
