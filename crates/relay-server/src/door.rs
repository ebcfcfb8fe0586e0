//! What a request passes before a handler sees it: the API key and the body read deadline (a
//! client trickling its body must not hold a connection). A handler that panics is answered
//! with a JSON 500 here rather than a dropped connection.
//!
//! The header read deadline lives with the connections ([`crate::conn`]): hyper enforces it
//! while parsing, before there is a request to check.
use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures_util::{FutureExt, StreamExt};

use crate::error::ApiError;
use crate::AppState;

/// The checks of one listening server.
pub struct Door {
    state: Arc<AppState>,
}

impl Door {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }

    /// `app` behind the door: the panic guard outermost, then the body.
    pub fn wrap(self, app: Router) -> Router {
        let door = Arc::new(self);
        app.layer(middleware::from_fn_with_state(door.clone(), read_body))
            .layer(middleware::from_fn_with_state(door, answer_panics))
    }

    fn refuse(&self, e: ApiError) -> Response {
        self.state.metrics.request(e.kind);
        e.into_response()
    }
}

/// Reads the whole body within the body read timeout (and the body size limit), then hands
/// the request on with the body in memory; a client too slow is answered 408 and its
/// connection closed.
async fn read_body(State(door): State<Arc<Door>>, req: Request, next: Next) -> Response {
    use axum::body::HttpBody;
    let config = &door.state.config;
    if req.body().size_hint().exact() == Some(0) {
        return next.run(req).await;
    }
    let limit = config.max_body_bytes;
    if req.body().size_hint().lower() > limit as u64 {
        return closing(door.refuse(too_large(limit)));
    }
    let (parts, body) = req.into_parts();
    let read = async {
        let mut stream = body.into_data_stream();
        let mut buf = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| ApiError::bad_json(format!("reading the body: {e}")))?;
            if buf.len() + chunk.len() > limit {
                return Err(too_large(limit));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(buf))
    };
    match tokio::time::timeout(config.body_timeout, read).await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(e)) => closing(door.refuse(e)),
        Err(_) => closing(door.refuse(ApiError::body_timeout(config.body_timeout.as_secs_f64()))),
    }
}

fn too_large(limit: usize) -> ApiError {
    ApiError::too_large(format!(
        "request body too large: the limit is {limit} bytes"
    ))
}

/// The rest of the body is not read: the connection cannot carry another request.
fn closing(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

async fn answer_panics(State(door): State<Arc<Door>>, req: Request, next: Next) -> Response {
    let what = format!("{} {}", req.method(), req.uri().path());
    match AssertUnwindSafe(next.run(req)).catch_unwind().await {
        Ok(resp) => resp,
        Err(payload) => {
            tracing::error!("handler for {what} panicked: {}", panic_text(&*payload));
            door.refuse(ApiError::internal(
                "the server failed on this request (a bug: its log says where)",
            ))
        }
    }
}

fn panic_text(payload: &(dyn Any + Send)) -> &str {
    match payload.downcast_ref::<&str>() {
        Some(s) => s,
        None => payload
            .downcast_ref::<String>()
            .map_or("(no message)", String::as_str),
    }
}

/// `Authorization: Bearer KEY` when the server has a key (RFC 7235: the scheme is
/// case-insensitive). Keys are compared in time independent of where they differ.
pub async fn require_key(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &state.config.api_key {
        if !bearer(req.headers()).is_some_and(|given| same_key(given.as_bytes(), key.as_bytes())) {
            state.metrics.request("authentication_error");
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(req).await
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once([' ', '\t'])?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start())
}

fn same_key(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        let mut h = HeaderMap::new();
        for v in ["Bearer k", "bearer k", "BEARER  k"] {
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            assert_eq!(bearer(&h), Some("k"), "{v}");
        }
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic k"));
        assert_eq!(bearer(&h), None);
        assert!(same_key(b"abc", b"abc") && !same_key(b"abc", b"abd") && !same_key(b"ab", b"abc"));
    }
}
