//! `relayllm serve` as a child process, stopped the way supervisors stop it (SIGTERM; SIGINT
//! from a terminal), and given its API key without putting it on the command line.
//!
//! To have streams in flight when the signal comes without racing a decoder, the LLM is a
//! stand-in OpenAI-compatible server in this process that holds every completion until the
//! test releases it: a request for `model: llm` blocks there, its stream open.
use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::routing::{get, post};
use axum::{Json, Router};
use relay_engine::testing::write_tiny_pair;
use relay_engine::tiny_vocab::{token_bytes, TINY_VOCAB_SIZE};
use serde_json::{json, Value};
use tokio::sync::watch;

/// A `relayllm serve` child; killed on drop if still running.
struct ServeChild {
    child: Child,
    url: String,
    stderr: tempfile::NamedTempFile,
}

impl ServeChild {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let stderr = tempfile::NamedTempFile::new().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_relayllm"));
        cmd.args(["serve", "--port", "0"]).args(args);
        cmd.env_remove("RELAYLLM_API_KEY");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr.reopen().unwrap()))
            .spawn()
            .unwrap();
        let mut line = String::new();
        let stdout = child.stdout.take().unwrap();
        // The child loads its models (and asks the stand-in LLM about itself) meanwhile.
        tokio::task::block_in_place(|| {
            std::io::BufReader::new(stdout)
                .read_line(&mut line)
                .unwrap()
        });
        let Some(addr) = line.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            panic!(
                "serve did not start: {line:?}\n{}",
                std::fs::read_to_string(stderr.path()).unwrap()
            );
        };
        Self {
            url: addr.to_string(),
            child,
            stderr,
        }
    }

    fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name}");
    }

    /// Waits up to `limit` for the exit; panics (with the server's log) if it does not come or
    /// is not a clean one.
    fn exits_cleanly_within(&mut self, limit: Duration) -> Duration {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "serve exited with {status} (killed by the signal?)\n{}",
                    self.log()
                );
                return start.elapsed();
            }
            assert!(
                start.elapsed() < limit,
                "serve still running {limit:?} after the signal\n{}",
                self.log()
            );
            tokio::task::block_in_place(|| std::thread::sleep(Duration::from_millis(20)));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.stderr.path()).unwrap_or_default()
    }

    /// True once the port refuses connections (the listener is closed).
    async fn refuses_connections(&self) -> bool {
        let addr = self.url.trim_start_matches("http://").to_string();
        for _ in 0..500 {
            if tokio::net::TcpStream::connect(&addr).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}

impl Drop for ServeChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The stand-in LLM: `/v1/models` at once; each `/v1/completions` is counted in `held` and
/// answered (`max_tokens` times the token "a", with log-probs) only once `release` is sent.
struct HeldLlm {
    url: String,
    held: Arc<AtomicUsize>,
    release: watch::Sender<bool>,
}

impl HeldLlm {
    async fn start() -> Self {
        let a = (0..TINY_VOCAB_SIZE as u32)
            .find(|&id| token_bytes(id).as_deref() == Some(b"a".as_slice()))
            .unwrap();
        let held = Arc::new(AtomicUsize::new(0));
        let (release, released) = watch::channel(false);
        let models = json!({"object": "list", "data": [{"id": "held-llm", "object": "model",
            "meta": {"n_vocab": TINY_VOCAB_SIZE, "n_ctx": 512}}]});
        let counter = held.clone();
        let app = Router::new()
            .route("/v1/models", get(move || async move { Json(models) }))
            .route(
                "/v1/completions",
                post(move |body: Bytes| {
                    let (held, mut released) = (counter.clone(), released.clone());
                    async move {
                        let body: Value = serde_json::from_slice(&body).unwrap();
                        held.fetch_add(1, Ordering::SeqCst);
                        let _ = released.wait_for(|&r| r).await;
                        let n = body["max_tokens"].as_u64().unwrap() as usize;
                        let token = json!({"id": a, "logprob": -0.01,
                            "top_logprobs": [{"id": a, "logprob": -0.01}]});
                        Json(json!({"choices": [{"index": 0, "text": "a".repeat(n),
                            "finish_reason": "length", "logprobs": {"content": vec![token; n]}}],
                            "usage": {"completion_tokens": n}}))
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, held, release }
    }

    /// Waits until `n` completions are held.
    async fn holding(&self, n: usize) {
        for _ in 0..3000 {
            if self.held.load(Ordering::SeqCst) >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "the LLM holds {} completions, not {n}",
            self.held.load(Ordering::SeqCst)
        );
    }
}

fn serve_args<'a>(slm: &'a Path, llm: &'a str, grace: &'a str) -> Vec<&'a str> {
    vec![
        "--slm",
        slm.to_str().unwrap(),
        "--llm",
        llm,
        "--max-concurrency",
        "4",
        "--shutdown-grace",
        grace,
    ]
}

/// Starts a streamed `model: llm` chat (which blocks in the held LLM); the response, whose
/// head is in.
async fn open_stream(url: &str, max_tokens: usize) -> reqwest::Response {
    let r = reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .json(
            &json!({"model": "llm", "messages": [{"role": "user", "content": "Say a."}],
            "max_tokens": max_tokens, "temperature": 0, "stream": true}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r
}

/// Reads a stream to its end: every event whole (`data: ` + JSON, or `[DONE]`), and the body
/// ended by the server, not cut.
async fn events(r: reqwest::Response) -> Vec<String> {
    let text = r
        .text()
        .await
        .unwrap_or_else(|e| panic!("the stream was cut: {e:?}"));
    assert!(text.ends_with("\n\n"), "a half-written event: {text:?}");
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let data = e
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not an event: {e:?}"));
            assert!(
                data == "[DONE]" || serde_json::from_str::<Value>(data).is_ok(),
                "a half-written event: {data:?}"
            );
            data.to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_and_sigint_let_streams_in_flight_finish() {
    let dir = tempfile::tempdir().unwrap();
    let (slm, _) = write_tiny_pair(dir.path(), 512);
    for signal in ["TERM", "INT"] {
        let llm = HeldLlm::start().await;
        let mut server = ServeChild::start(&serve_args(&slm, &llm.url, "60"), &[]);
        let streams = [
            open_stream(&server.url, 32).await,
            open_stream(&server.url, 32).await,
        ];
        llm.holding(2).await;
        server.signal(signal);
        assert!(
            server.refuses_connections().await,
            "SIG{signal}: no new connections"
        );
        // The streams are still open, blocked in the LLM: let them go on.
        llm.release.send_replace(true);
        for r in streams {
            let ev = events(r).await;
            assert_eq!(
                ev.last().map(String::as_str),
                Some("[DONE]"),
                "SIG{signal}: {ev:?}"
            );
            let last: Value = serde_json::from_str(&ev[ev.len() - 2]).unwrap();
            assert_eq!(
                last["choices"][0]["finish_reason"], "length",
                "SIG{signal}: the answer ran to its end: {last}"
            );
            assert_eq!(last["usage"]["completion_tokens"], 32);
            let text: String = ev[..ev.len() - 1]
                .iter()
                .filter_map(|e| {
                    let v: Value = serde_json::from_str(e).unwrap();
                    v["choices"][0]["delta"]["content"]
                        .as_str()
                        .map(str::to_string)
                })
                .collect();
            assert_eq!(text, "a".repeat(32), "SIG{signal}: all of it streamed");
        }
        server.exits_cleanly_within(Duration::from_secs(30));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_still_running_when_the_grace_ends_get_a_final_event() {
    let dir = tempfile::tempdir().unwrap();
    let (slm, _) = write_tiny_pair(dir.path(), 512);
    // The LLM is never released: the streams cannot finish by themselves.
    let llm = HeldLlm::start().await;
    let mut server = ServeChild::start(&serve_args(&slm, &llm.url, "2"), &[]);
    let streams = [
        open_stream(&server.url, 32).await,
        open_stream(&server.url, 32).await,
    ];
    llm.holding(2).await;
    let signalled = Instant::now();
    server.signal("TERM");
    for r in streams {
        let ev = events(r).await;
        let ended = signalled.elapsed();
        assert_eq!(ev.last().map(String::as_str), Some("[DONE]"), "{ev:?}");
        let last: Value = serde_json::from_str(&ev[ev.len() - 2]).unwrap();
        assert_eq!(
            last["error"]["code"], "shutting_down",
            "the final event says why: {last}"
        );
        assert!(
            ended >= Duration::from_secs(2),
            "the stream had its grace: ended after {ended:?}"
        );
    }
    let exit = server.exits_cleanly_within(Duration::from_secs(20));
    assert!(
        signalled.elapsed() < Duration::from_secs(2 + 10),
        "exits soon after the grace: {exit:?} after the streams ended"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_comes_from_the_environment_or_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let (slm, llm) = write_tiny_pair(dir.path(), 512);
    let pair = [
        "--slm",
        slm.to_str().unwrap(),
        "--llm",
        llm.to_str().unwrap(),
    ];
    let status = |url: String, key: Option<&'static str>| async move {
        let mut r = reqwest::Client::new().get(format!("{url}/v1/models"));
        if let Some(k) = key {
            r = r.header("authorization", format!("Bearer {k}"));
        }
        r.send().await.unwrap().status().as_u16()
    };
    let server = ServeChild::start(&pair, &[("RELAYLLM_API_KEY", "env-key")]);
    assert_eq!(status(server.url.clone(), None).await, 401);
    assert_eq!(status(server.url.clone(), Some("env-key")).await, 200);
    drop(server);

    let key_file = dir.path().join("key");
    std::fs::write(&key_file, "file-key\n").unwrap();
    let mut args = pair.to_vec();
    args.extend(["--api-key-file", key_file.to_str().unwrap()]);
    // The file wins over the environment.
    let server = ServeChild::start(&args, &[("RELAYLLM_API_KEY", "env-key")]);
    assert_eq!(status(server.url.clone(), None).await, 401);
    assert_eq!(status(server.url.clone(), Some("env-key")).await, 401);
    assert_eq!(status(server.url.clone(), Some("file-key")).await, 200);
    drop(server);

    std::fs::write(&key_file, "\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_relayllm"))
        .args(["serve", "--port", "0"])
        .args(&args)
        .output()
        .unwrap();
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("empty"),
        "an empty key file is refused, not taken as no key"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weight_sync_is_wired_to_its_flag() {
    let dir = tempfile::tempdir().unwrap();
    let (slm, llm) = write_tiny_pair(dir.path(), 512);
    let pair = [
        "--slm",
        slm.to_str().unwrap(),
        "--llm",
        llm.to_str().unwrap(),
    ];
    let sync = |url: String| {
        let slm = slm.clone();
        async move {
            let r = reqwest::Client::new()
                .post(format!("{url}/admin/weights"))
                .json(&json!({"model": "slm", "path": slm}))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    };
    let server = ServeChild::start(&pair, &[]);
    let (status, v) = sync(server.url.clone()).await;
    assert_eq!(status, 403, "off without the flag: {v}");
    drop(server);

    let mut args = pair.to_vec();
    args.push("--allow-weight-sync");
    let server = ServeChild::start(&args, &[]);
    let (status, v) = sync(server.url.clone()).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["version"], 1, "{v}");
}
