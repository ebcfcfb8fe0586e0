//! What a request passes before a handler sees it: the body read deadline (a client
//! trickling its body must not hold a connection).
//!
//! The header read deadline lives with the connections ([`crate::conn`]): hyper enforces it
//! while parsing, before there is a request to check.
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures_util::StreamExt;

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

    /// `app` behind the door.
    pub fn wrap(self, app: Router) -> Router {
        let door = Arc::new(self);
        app.layer(middleware::from_fn_with_state(door, read_body))
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
