//! Test support shared by this crate's tests and the crates above it: a real llama.cpp
//! server as a child process (the remote-engine integration tests run against it). Not used
//! by the library itself.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
