//! Bearer-token authentication, compared in constant time.

use std::sync::Arc;

use axum::{
    extract::{Request, State},
    http::{StatusCode, header::AUTHORIZATION},
    middleware::Next,
    response::{IntoResponse as _, Response},
};

use super::ApiError;
use crate::daemon::Shared;

/// Lets the request through when no token is configured or when it
/// carries the right one; 401 otherwise.
pub async fn require(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let Some(token) = &shared.token else {
        return next.run(request).await;
    };
    let given = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(given) if same(given.as_bytes(), token.as_bytes()) => next.run(request).await,
        Some(_) => ApiError(StatusCode::UNAUTHORIZED, "wrong token".into()).into_response(),
        None => ApiError(
            StatusCode::UNAUTHORIZED,
            "this agent needs `Authorization: Bearer <token>`".into(),
        )
        .into_response(),
    }
}

/// Equal in time that depends only on the lengths, not on where the first
/// difference is (so the token cannot be guessed byte by byte).
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    /// Equal tokens match; a different byte anywhere or a different length does not.
    #[test]
    fn constant_time_compare() {
        assert!(super::same(b"abcdefghijklmnop", b"abcdefghijklmnop"));
        assert!(!super::same(b"abcdefghijklmnop", b"abcdefghijklmnoq"));
        assert!(!super::same(b"xbcdefghijklmnop", b"abcdefghijklmnop"));
        assert!(!super::same(b"abc", b"abcd"));
    }
}
