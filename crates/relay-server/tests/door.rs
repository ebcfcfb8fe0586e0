//! What a request meets before a handler, against a real server on 127.0.0.1:0: clients that
//! trickle bytes are cut off, `Host` and `Origin` are checked (DNS rebinding, cross-site
//! posts), the API key's scheme is case-insensitive, and 405s and panics get the same JSON
//! error object as every other error. Raw TCP where a well-behaved client cannot misbehave.
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use axum::routing::get;
use relay_engine::model::{LoadedModel, ModelPair};
use relay_engine::testing::write_tiny_pair;
use relay_server::{AppState, ServerConfig};
use serde_json::{json, Value};

struct Server {
    url: String,
    addr: String,
    _dir: tempfile::TempDir,
}

/// A server on the tiny pair; `extra` adds routes to the app (behind the same door).
async fn start_with(config: ServerConfig, extra: axum::Router) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let (slm, llm) = write_tiny_pair(dir.path(), 512);
    let load = |p| LoadedModel::load(p, Default::default()).unwrap();
    let state = AppState::new(ModelPair::new(load(&slm), load(&llm)), config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let app = relay_server::router(state.clone()).merge(extra);
    tokio::spawn(relay_server::serve_app(
        listener,
        app,
        state,
        std::future::pending(),
    ));
    Server {
        url: format!("http://{addr}"),
        addr,
        _dir: dir,
    }
}

async fn start(config: ServerConfig) -> Server {
    start_with(config, axum::Router::new()).await
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

fn chat() -> Value {
    json!({"model": "slm", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
}

/// The status and JSON body; the body must be an OpenAI-style error object when the status
/// is not 2xx.
async fn answer(r: reqwest::RequestBuilder) -> (u16, Value) {
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if status >= 300 {
        assert!(
            body["error"]["message"].is_string() && body["error"]["type"].is_string(),
            "{status} without a JSON error object: {text:?}"
        );
    }
    (status, body)
}

/// How a raw connection behaves: it writes `head` at once, then `trickle` one byte every
/// 50 ms, until the server closes it or `limit` passes.
#[derive(Clone)]
struct Slow {
    head: Vec<u8>,
    trickle: Vec<u8>,
}

/// When the server closed the connection (None: still open at `limit`), and what it answered.
fn slow_client(addr: &str, slow: Slow, limit: Duration) -> (Option<Duration>, String) {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    s.write_all(&slow.head).unwrap();
    let mut got = Vec::new();
    let mut trickle = slow.trickle.iter().cycle();
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit {
        if !slow.trickle.is_empty() && s.write_all(&[*trickle.next().unwrap()]).is_err() {
            return (Some(start.elapsed()), String::from_utf8_lossy(&got).into());
        }
        match s.read(&mut buf) {
            Ok(0) => return (Some(start.elapsed()), String::from_utf8_lossy(&got).into()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return (Some(start.elapsed()), String::from_utf8_lossy(&got).into()),
        }
    }
    (None, String::from_utf8_lossy(&got).into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_trickle_bytes_or_sit_idle_are_closed() {
    let s = start(ServerConfig {
        header_timeout: Duration::from_secs(1),
        body_timeout: Duration::from_secs(2),
        ..ServerConfig::default()
    })
    .await;
    let request_head = |len: usize| {
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n",
            s.addr
        )
        .into_bytes()
    };
    let kinds = [
        // The head one byte at a time.
        Slow {
            head: Vec::new(),
            trickle: request_head(1000),
        },
        // The whole head, then the body one byte at a time.
        Slow {
            head: request_head(1000),
            trickle: b"{\"model\": \"relay\"".to_vec(),
        },
        // Connected, silent.
        Slow {
            head: Vec::new(),
            trickle: Vec::new(),
        },
    ];
    let limit = Duration::from_secs(15);
    let mut clients = Vec::new();
    for i in 0..21 {
        let (addr, slow) = (s.addr.clone(), kinds[i % 3].clone());
        clients.push(tokio::task::spawn_blocking(move || {
            slow_client(&addr, slow, limit)
        }));
    }
    // Meanwhile the server serves others.
    let (st, _) = answer(
        client()
            .post(format!("{}/v1/chat/completions", s.url))
            .json(&chat()),
    )
    .await;
    assert_eq!(st, 200);
    for (i, c) in clients.into_iter().enumerate() {
        let (closed, answered) = c.await.unwrap();
        let after = closed.unwrap_or_else(|| {
            panic!(
                "slow client {i} (kind {}) still open after {limit:?}",
                i % 3
            )
        });
        let deadline = if i % 3 == 1 { 2 } else { 1 };
        assert!(
            after < Duration::from_secs(deadline + 5),
            "client {i} closed only after {after:?}"
        );
        if i % 3 == 1 {
            assert!(
                answered.starts_with("HTTP/1.1 408") && answered.contains("body_read_timeout"),
                "a slow body is answered 408 before the close: {answered:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_must_name_this_server() {
    let s = start(ServerConfig {
        allowed_hosts: vec!["relay.example".into()],
        ..ServerConfig::default()
    })
    .await;
    let port = s.addr.rsplit(':').next().unwrap();
    let health = |host: String| {
        client()
            .get(format!("{}/health", s.url))
            .header("host", host)
    };
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("relay.example:{port}"),
    ] {
        assert_eq!(answer(health(host.clone())).await.0, 200, "{host}");
    }
    // A page of evil.example whose name now points at 127.0.0.1 (DNS rebinding).
    let (st, b) = answer(health(format!("evil.example:{port}"))).await;
    assert_eq!(st, 403, "{b}");
    assert_eq!(b["error"]["code"], "host_not_allowed");
    let (st, _) = answer(
        client()
            .post(format!("{}/v1/chat/completions", s.url))
            .header("host", format!("evil.example:{port}"))
            .json(&chat()),
    )
    .await;
    assert_eq!(st, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_of_other_origins_are_refused_unless_allowed() {
    let s = start(ServerConfig {
        allowed_origins: vec!["https://app.example".into()],
        ..ServerConfig::default()
    })
    .await;
    let post = |origin: &str| {
        client()
            .post(format!("{}/v1/chat/completions", s.url))
            .header("origin", origin)
            // What a cross-site <form> or no-cors fetch can send without a preflight.
            .header("content-type", "text/plain")
            .body(chat().to_string())
    };
    let (st, b) = answer(post("http://evil.example")).await;
    assert_eq!(st, 403, "{b}");
    assert_eq!(b["error"]["code"], "origin_not_allowed");
    assert_eq!(answer(post("null")).await.0, 403, "sandboxed pages too");

    // The page at / calls the API from its own origin.
    let page = client().get(&s.url).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("/v1/chat/completions"));
    let (st, b) = answer(post(&s.url)).await;
    assert_eq!(st, 200, "{b}");

    // An allowed origin gets the CORS answers a browser needs.
    let r = post("https://app.example").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let pre = client()
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/v1/chat/completions", s.url),
        )
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(pre.status(), 204);
    assert!(pre.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .contains("authorization"));
    let pre = client()
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/v1/chat/completions", s.url),
        )
        .header("origin", "http://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(pre.status(), 403);
    assert!(!pre.headers().contains_key("access-control-allow-origin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_is_case_insensitive_and_errors_are_json() {
    async fn buggy() -> &'static str {
        panic!("a handler bug")
    }
    let panics = axum::Router::new().route("/panic", get(buggy));
    let s = start_with(
        ServerConfig {
            api_key: Some("sekret".into()),
            ..ServerConfig::default()
        },
        panics,
    )
    .await;
    let models = |auth: &str| {
        client()
            .get(format!("{}/v1/models", s.url))
            .header("authorization", auth)
    };
    for auth in ["Bearer sekret", "bearer sekret", "BEARER sekret"] {
        assert_eq!(answer(models(auth)).await.0, 200, "{auth}");
    }
    for auth in ["Bearer wrong", "bearer", "Basic sekret", "sekret"] {
        assert_eq!(answer(models(auth)).await.0, 401, "{auth}");
    }

    let r = client()
        .get(format!("{}/v1/chat/completions", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert!(r.headers()["allow"].to_str().unwrap().contains("POST"));
    let (st, b) = answer(client().delete(format!("{}/health", s.url))).await;
    assert_eq!(st, 405, "{b}");
    assert_eq!(b["error"]["type"], "invalid_request_error");

    let (st, b) = answer(client().get(format!("{}/panic", s.url))).await;
    assert_eq!(st, 500, "{b}");
    assert_eq!(b["error"]["type"], "server_error");
    // Still serving.
    assert_eq!(
        answer(client().get(format!("{}/health", s.url))).await.0,
        200
    );
}

/// One raw HTTP/1.1 exchange (`Connection: close`); returns the whole answer.
fn raw_exchange(addr: &str, method: &str, path: &str, body: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    String::from_utf8_lossy(&got).into_owned()
}

/// A body of megabytes is parsed and tokenized on the blocking pool: on a server whose async
/// runtime has a single thread, `/health` is answered while a 1.8 MB chat is still being read
/// into tokens, not after it. (Before, the tokenizer ran on that thread and `/health` waited.)
#[test]
fn a_huge_body_is_tokenized_without_stalling_other_connections() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let s = rt.block_on(start(ServerConfig::default()));
    let text = "lorem ipsum dolor sit amet ".repeat(68_000);
    let big = json!({"model": "slm", "messages": [{"role": "user", "content": text}]}).to_string();
    assert!(big.len() > 1_800_000 && big.len() < 2 * 1024 * 1024);
    let (done, order) = std::sync::mpsc::channel();
    let (sent, body_sent) = std::sync::mpsc::channel();
    let addr = s.addr.clone();
    let done_big = done.clone();
    let huge = std::thread::spawn(move || {
        let mut c = TcpStream::connect(&addr).unwrap();
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            big.len()
        );
        c.write_all(head.as_bytes()).unwrap();
        c.write_all(big.as_bytes()).unwrap();
        sent.send(()).unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        done_big
            .send(("huge", String::from_utf8_lossy(&got).into_owned()))
            .unwrap();
    });
    body_sent.recv().unwrap();
    // Long enough for the server to have read the body and begun on it.
    std::thread::sleep(Duration::from_millis(50));
    let health = raw_exchange(&s.addr, "GET", "/health", b"");
    done.send(("health", health)).unwrap();
    let (first, answer) = order.recv().unwrap();
    assert_eq!(
        first, "health",
        "the huge request was answered first: {answer:.200}"
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:.200}");
    let (_, huge_answer) = order.recv().unwrap();
    // Too long for the tiny model's context: refused, as a client error.
    assert!(huge_answer.starts_with("HTTP/1.1 4"), "{huge_answer:.300}");
    huge.join().unwrap();
    drop(rt);
}
