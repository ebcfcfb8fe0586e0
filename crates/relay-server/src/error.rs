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
    /// The model server behind this one (a remote SLM or LLM) refused or failed: 502, or 503
    /// where it is overloaded, unreachable or too slow (another try may pass).
    pub fn upstream(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code: Some(code),
            ..Self::new(status, "upstream_error", message)
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

/// Whose fault an engine error is decides its status: the client's input 400, the model server
/// behind this one 502/503 (its URL stays in the log, not in the answer), anything else ours.
impl From<relay_engine::EngineError> for ApiError {
    fn from(e: relay_engine::EngineError) -> Self {
        use relay_engine::EngineError as E;
        const BEHIND: &str = "the model server behind this one";
        match e {
            E::InvalidInput(m) => ApiError::bad_json(m),
            E::Upstream {
                status: Some(s),
                message,
                ..
            } => {
                let (status, code) = match s {
                    429 | 503 => (StatusCode::SERVICE_UNAVAILABLE, "upstream_overloaded"),
                    _ => (StatusCode::BAD_GATEWAY, "upstream_failed"),
                };
                ApiError::upstream(
                    status,
                    code,
                    format!("{BEHIND} answered HTTP {s}: {message}"),
                )
            }
            E::Upstream {
                status: None,
                message,
                ..
            } => ApiError::upstream(
                StatusCode::BAD_GATEWAY,
                "upstream_failed",
                format!("{BEHIND} sent an answer that cannot be used: {message}"),
            ),
            E::Unreachable { message, .. } => ApiError::upstream(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream_unreachable",
                format!("{BEHIND} cannot be reached: {message}"),
            ),
            E::Timeout { after, .. } => ApiError::upstream(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream_timeout",
                format!("{BEHIND} did not answer within {after:?}"),
            ),
            other => ApiError::internal(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay_engine::EngineError as E;
    use std::time::Duration;

    fn upstream(status: Option<u16>) -> E {
        E::Upstream {
            url: "http://10.0.0.7:8080/v1/completions".into(),
            status,
            message: r#"{"error":"no"}"#.into(),
        }
    }

    #[test]
    fn engine_errors_answer_with_whose_fault_they_are() {
        let url = "http://10.0.0.7:8080/v1/completions".to_string();
        let cases = [
            (
                E::InvalidInput("the prompt is empty".into()),
                400,
                "invalid_request_error",
                None,
            ),
            (
                upstream(Some(401)),
                502,
                "upstream_error",
                Some("upstream_failed"),
            ),
            (
                upstream(Some(400)),
                502,
                "upstream_error",
                Some("upstream_failed"),
            ),
            (
                upstream(Some(500)),
                502,
                "upstream_error",
                Some("upstream_failed"),
            ),
            (
                upstream(Some(429)),
                503,
                "upstream_error",
                Some("upstream_overloaded"),
            ),
            (
                upstream(Some(503)),
                503,
                "upstream_error",
                Some("upstream_overloaded"),
            ),
            (
                upstream(None),
                502,
                "upstream_error",
                Some("upstream_failed"),
            ),
            (
                E::Unreachable {
                    url: url.clone(),
                    message: "Connection Failed".into(),
                },
                503,
                "upstream_error",
                Some("upstream_unreachable"),
            ),
            (
                E::Timeout {
                    url: url.clone(),
                    after: Duration::from_secs(5),
                },
                503,
                "upstream_error",
                Some("upstream_timeout"),
            ),
            (
                E::Internal("engine contract broken: empty step".into()),
                500,
                "server_error",
                None,
            ),
            (
                E::VocabSizeUnknown { url: url.clone() },
                500,
                "server_error",
                None,
            ),
        ];
        for (error, status, kind, code) in cases {
            let label = error.label();
            let api = ApiError::from(error);
            assert_eq!(
                (api.status.as_u16(), api.kind, api.code),
                (status, kind, code),
                "{label}: {}",
                api.message
            );
        }
    }

    #[test]
    fn an_upstream_answer_names_its_status_but_not_its_url() {
        let api = ApiError::from(upstream(Some(401)));
        assert!(api.message.contains("HTTP 401"), "{}", api.message);
        assert!(api.message.contains(r#"{"error":"no"}"#), "{}", api.message);
        assert!(!api.message.contains("10.0.0.7"), "{}", api.message);
        let body = api.body();
        assert_eq!(body["error"]["type"], "upstream_error");
        assert_eq!(body["error"]["code"], "upstream_failed");
        assert!(body["error"]["param"].is_null());
    }
}
