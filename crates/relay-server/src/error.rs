//! The server's one error type, answered as an OpenAI-style error object.
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

/// An error a client sees: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Short machine label (OpenAI's `type`), also used in logs and metrics.
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after: None,
        }
    }
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        Self {
            param: Some(param.to_string()),
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
        }
    }
    pub fn bad_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }
    pub fn unknown_model(model: &str) -> Self {
        Self {
            param: Some("model".into()),
            code: Some("model_not_found"),
            ..Self::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!("The model `{model}` does not exist (this server has relay, slm, llm)"),
            )
        }
    }
    pub fn unauthorized() -> Self {
        Self {
            code: Some("invalid_api_key"),
            ..Self::new(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "Incorrect or missing API key",
            )
        }
    }
    pub fn overloaded(retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after),
            code: Some("rate_limit_exceeded"),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "overloaded_error",
                "The server's queue is full; retry later",
            )
        }
    }
    pub fn timeout() -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout_error",
            "The request took longer than the server's request timeout",
        )
    }
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            message,
        )
    }
    pub fn not_found(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found_error",
            format!("no route {path}"),
        )
    }
    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            format!("{path} does not take {method} (the Allow header lists what it takes)"),
        )
    }
    /// A `Host` this server does not answer to (DNS rebinding) or a page of another origin.
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code: Some(code),
            ..Self::new(StatusCode::FORBIDDEN, "permission_error", message)
        }
    }
    /// The body did not arrive within the body read timeout.
    pub fn body_timeout(secs: f64) -> Self {
        Self {
            code: Some("body_read_timeout"),
            ..Self::new(
                StatusCode::REQUEST_TIMEOUT,
                "timeout_error",
                format!("the request body did not arrive within {secs} s"),
            )
        }
    }
    /// The server stopped before the request was done (its shutdown grace ran out).
    pub fn shutting_down() -> Self {
        Self {
            code: Some("shutting_down"),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable_error",
                "The server is shutting down and its grace for requests in flight ran out; retry on another instance",
            )
        }
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

impl From<relay_engine::EngineError> for ApiError {
    fn from(e: relay_engine::EngineError) -> Self {
        match e {
            relay_engine::EngineError::InvalidInput(m) => ApiError::bad_json(m),
            other => ApiError::internal(other.to_string()),
        }
    }
}
