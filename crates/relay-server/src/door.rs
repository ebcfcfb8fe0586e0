//! What a request passes before a handler sees it: the `Host` and `Origin` checks (a web page
//! must not reach a local server through DNS rebinding or a cross-origin form post), the API
//! key, and the body read deadline (a client trickling its body must not hold a connection).
//! A handler that panics is answered with a JSON 500 here rather than a dropped connection.
//!
//! The header read deadline lives with the connections ([`crate::conn`]): hyper enforces it
//! while parsing, before there is a request to check.
use std::any::Any;
use std::net::{IpAddr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures_util::{FutureExt, StreamExt};

use crate::error::ApiError;
use crate::AppState;

/// The checks of one listening server: its settings and the address it is bound to.
pub struct Door {
    state: Arc<AppState>,
    hosts: Hosts,
    /// Origins allowed besides the server's own (`scheme://host[:port]`, lower case).
    origins: Vec<String>,
    any_origin: bool,
}

/// The `Host` names this server answers to.
struct Hosts {
    any: bool,
    /// Extra names (`--allowed-host`, and `--host` when it is a name), lower case, no port.
    names: Vec<String>,
    bound: IpAddr,
}

impl Door {
    pub fn new(state: Arc<AppState>, bound: SocketAddr) -> Self {
        let config = &state.config;
        let names: Vec<String> = config
            .allowed_hosts
            .iter()
            .map(|h| host_name(h).to_string())
            .collect();
        let origins: Vec<String> = config
            .allowed_origins
            .iter()
            .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
            .collect();
        Self {
            hosts: Hosts {
                any: names.iter().any(|n| n == "*"),
                names,
                bound: bound.ip(),
            },
            any_origin: origins.iter().any(|o| o == "*"),
            origins,
            state,
        }
    }

    /// `app` behind the door: the panic guard outermost, then `Host`, `Origin`, the body.
    pub fn wrap(self, app: Router) -> Router {
        let door = Arc::new(self);
        app.layer(middleware::from_fn_with_state(door.clone(), read_body))
            .layer(middleware::from_fn_with_state(door.clone(), check_origin))
            .layer(middleware::from_fn_with_state(door.clone(), check_host))
            .layer(middleware::from_fn_with_state(door, answer_panics))
    }

    fn refuse(&self, e: ApiError) -> Response {
        self.state.metrics.request(e.kind);
        e.into_response()
    }
}

impl Hosts {
    /// Localhost names and loopback addresses always; the bound address, any address when
    /// bound to all interfaces (DNS rebinding needs a name: an address in `Host` means the
    /// page itself was loaded from that address), and the names allowed by flag.
    fn allow(&self, host: &str) -> bool {
        let name = host_name(host);
        if self.any || name == "localhost" || name.ends_with(".localhost") {
            return true;
        }
        match name.parse::<IpAddr>() {
            Ok(ip) => ip.is_loopback() || ip == self.bound || self.bound.is_unspecified(),
            Err(_) => self.names.contains(&name),
        }
    }
}

/// The host of a `Host` value or flag: lower case, without port, brackets or a final dot.
fn host_name(host: &str) -> String {
    let host = host.trim();
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        // A bare IPv6 address (a flag) has colons but no port.
        None if host.matches(':').count() > 1 => host,
        None => match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        },
    };
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The request's `Host` (HTTP/1.1 requires one; an absolute-form target carries it instead).
fn request_host(req: &Request) -> Option<String> {
    match req.headers().get(header::HOST) {
        Some(v) => v.to_str().ok().map(str::to_string),
        None => req.uri().authority().map(|a| a.to_string()),
    }
}

async fn check_host(State(door): State<Arc<Door>>, req: Request, next: Next) -> Response {
    match request_host(&req) {
        Some(host) if door.hosts.allow(&host) => next.run(req).await,
        Some(host) => door.refuse(ApiError::forbidden(
            "host_not_allowed",
            format!(
                "this server does not answer to Host {host:?}; start it with --allowed-host {} to allow that name",
                host_name(&host)
            ),
        )),
        None => door.refuse(ApiError::forbidden(
            "host_not_allowed",
            "the request names no Host",
        )),
    }
}

/// Browsers send `Origin` on every cross-origin request that can change something (and on
/// same-origin POSTs): one that is not this server's own, nor allowed by flag, is refused
/// before it runs. Allowed foreign origins get the CORS headers a browser needs, preflights
/// included; requests without `Origin` (curl, SDKs) pass.
async fn check_origin(State(door): State<Arc<Door>>, req: Request, next: Next) -> Response {
    let Some(origin) = req.headers().get(header::ORIGIN).cloned() else {
        return next.run(req).await;
    };
    let origin_text = origin.to_str().unwrap_or_default().to_ascii_lowercase();
    let host = request_host(&req).unwrap_or_default().to_ascii_lowercase();
    let same = origin_text
        .split_once("://")
        .is_some_and(|(scheme, authority)| {
            matches!(scheme, "http" | "https") && !host.is_empty() && authority == host
        });
    if same {
        return next.run(req).await;
    }
    if !door.any_origin && !door.origins.contains(&origin_text) {
        return door.refuse(ApiError::forbidden(
            "origin_not_allowed",
            format!(
                "requests from pages of {:?} are refused; start the server with --allow-origin {} to allow them",
                origin_text, origin_text
            ),
        ));
    }
    let preflight = req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut resp = if preflight {
        let mut r = StatusCode::NO_CONTENT.into_response();
        let h = r.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        r
    } else {
        next.run(req).await
    };
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.append(header::VARY, HeaderValue::from_static("origin"));
    resp
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
    fn host_names_lose_port_brackets_case_and_final_dot() {
        assert_eq!(host_name("LocalHost:8000"), "localhost");
        assert_eq!(host_name("[::1]:8000"), "::1");
        assert_eq!(host_name("::1"), "::1");
        assert_eq!(host_name("example.com."), "example.com");
        assert_eq!(host_name("127.0.0.1"), "127.0.0.1");
    }

    #[test]
    fn hosts_allow_local_names_the_bound_address_and_flags() {
        let hosts = |bound: &str, names: &[&str]| Hosts {
            any: false,
            names: names.iter().map(|n| n.to_string()).collect(),
            bound: bound.parse().unwrap(),
        };
        let local = hosts("127.0.0.1", &[]);
        for ok in ["localhost:1", "app.localhost", "127.0.0.1:9", "[::1]:9"] {
            assert!(local.allow(ok), "{ok}");
        }
        for refused in ["evil.example:1", "10.0.0.5", "localhost.evil.example"] {
            assert!(!local.allow(refused), "{refused}");
        }
        let lan = hosts("10.0.0.5", &["relay.lan"]);
        assert!(lan.allow("10.0.0.5:8000") && lan.allow("RELAY.lan:8000"));
        assert!(!lan.allow("10.0.0.6") && !lan.allow("other.lan"));
        assert!(hosts("0.0.0.0", &[]).allow("192.168.1.7:8000"));
        assert!(!hosts("0.0.0.0", &[]).allow("evil.example"));
    }

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
