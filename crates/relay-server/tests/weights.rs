//! Weight sync (`POST /admin/weights`) against a real HTTP client on 127.0.0.1:0, with tiny
//! models written by our own code: after a sync the relay answers as the new SLM does, a model
//! of another shape is refused and the old weights stay, the route is off without the flag,
//! and a request in flight during a swap finishes on the weights it started with.
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use relay_engine::chat::ChatTemplate;
use relay_engine::model::{LoadedModel, ModelPair};
use relay_engine::testing::{write_tiny_pair, StepHook};
use relay_engine::tiny::{write_gguf, write_safetensors, TinyConfig};
use relay_engine::tiny_vocab;
use relay_engine::tokenizer::Tokenizer;
use relay_engine::{CandleEngine, LoadOptions};
use relay_server::{AppState, ServerConfig};
use serde_json::{json, Value};

/// The tiny SLM's shape (as `write_tiny_pair` writes it) with weights from `seed`.
fn slm_config(seed: u64) -> TinyConfig {
    TinyConfig {
        vocab_size: tiny_vocab::TINY_VOCAB_SIZE,
        eos_token_id: tiny_vocab::IM_END_ID,
        context_length: 512,
        num_layers: 2,
        seed,
        ..TinyConfig::qwen2()
    }
}

fn write_slm_gguf(path: &Path, cfg: &TinyConfig) -> PathBuf {
    write_gguf(path, cfg, &tiny_vocab::gguf_metadata()).unwrap();
    path.to_path_buf()
}

/// A model as the server loads it; the tokenizer and template come from `tokenizer_from` (a
/// safetensors folder of ours carries none).
fn load(path: &Path, tokenizer_from: &Path) -> LoadedModel {
    LoadedModel {
        path: path.to_path_buf(),
        engine: Arc::new(CandleEngine::load(path, LoadOptions::default()).unwrap()),
        tokenizer: Arc::new(Tokenizer::load_for_model(tokenizer_from).unwrap()),
        template: ChatTemplate::load_for_model(tokenizer_from)
            .ok()
            .map(Arc::new),
    }
}

async fn serve(pair: ModelPair, config: ServerConfig) -> String {
    let state = AppState::new(pair, config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(relay_server::serve(listener, state, std::future::pending()));
    url
}

fn syncing() -> ServerConfig {
    ServerConfig {
        weight_sync: Some(LoadOptions::default()),
        ..ServerConfig::default()
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

async fn post(url: &str, path: &str, body: Value, key: Option<&str>) -> (u16, Value) {
    let mut r = client().post(format!("{url}{path}")).json(&body);
    if let Some(k) = key {
        r = r.bearer_auth(k);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn sync(url: &str, path: &Path) -> (u16, Value) {
    post(
        url,
        "/admin/weights",
        json!({"model": "slm", "path": path}),
        None,
    )
    .await
}

/// What a rollout is compared by: the ids, who wrote each, and the SLM's log-probs (greedy
/// tiny models of different seeds often write the same ids; their log-probs differ).
#[derive(Debug, PartialEq)]
struct Rollout {
    ids: Vec<u64>,
    source_mask: Vec<u64>,
    slm_logprobs: Vec<Option<f64>>,
}

/// A greedy relay rollout that calls the LLM (so both models write), and the weights versions
/// it reports.
async fn rollout(url: &str) -> (Rollout, Value) {
    let (status, tok) = post(
        url,
        "/tokenize",
        json!({"messages": [{"role": "user", "content": "What is 2+2?"}]}),
        None,
    )
    .await;
    assert_eq!(status, 200, "{tok}");
    let body = json!({"prompt_ids": tok["tokens"], "max_tokens": 24, "temperature": 0,
        "relay": {"policy": "confidence", "threshold": 1.0, "call_tokens": 3, "cooldown": 2, "max_calls": 2}});
    let (status, v) = post(url, "/relay/generate", body, None).await;
    assert_eq!(status, 200, "{v}");
    let nums = |k: &str| -> Vec<u64> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect()
    };
    let r = Rollout {
        ids: nums("ids"),
        source_mask: nums("source_mask"),
        slm_logprobs: v["slm_logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(Value::as_f64)
            .collect(),
    };
    assert!(
        r.source_mask.contains(&0) && r.source_mask.contains(&1),
        "{v}"
    );
    (r, v["weights_versions"].clone())
}

/// The rollout a server started on `slm` (and the tiny LLM) gives: what that SLM writes when
/// it is served directly.
async fn direct(slm: &Path, tokenizer_from: &Path, llm: &Path) -> Rollout {
    let pair = ModelPair::new(load(slm, tokenizer_from), load(llm, llm));
    rollout(&serve(pair, ServerConfig::default()).await).await.0
}

async fn models(url: &str) -> Value {
    client()
        .get(format!("{url}/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synced_slm_answers_as_the_new_weights_do() {
    let dir = tempfile::tempdir().unwrap();
    let (slm, llm) = write_tiny_pair(dir.path(), 512);
    let step1 = write_slm_gguf(&dir.path().join("step1.gguf"), &slm_config(7));
    // A trainer's `model.save_pretrained`: config.json + model.safetensors, no tokenizer.
    let step2 = dir.path().join("step2-hf");
    write_safetensors(&step2, &slm_config(8)).unwrap();

    let url = serve(
        ModelPair::new(load(&slm, &slm), load(&llm, &llm)),
        syncing(),
    )
    .await;
    let (before, versions) = rollout(&url).await;
    assert_eq!(versions, json!({"slm": 0, "llm": 0}));
    assert_eq!(before, direct(&slm, &slm, &llm).await);

    let (status, v) = sync(&url, &step1).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["model"], "slm");
    assert_eq!(v["version"], 1);
    assert_eq!(v["path"], step1.to_str().unwrap());
    assert!(v["load_s"].as_f64().unwrap() >= 0.0, "{v}");
    let (after1, versions) = rollout(&url).await;
    assert_eq!(versions, json!({"slm": 1, "llm": 0}));
    assert_ne!(after1, before, "the new weights write something else");
    assert_eq!(after1, direct(&step1, &step1, &llm).await);

    let (status, v) = sync(&url, &step2).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["version"], 2);
    let (after2, versions) = rollout(&url).await;
    assert_eq!(versions, json!({"slm": 2, "llm": 0}));
    assert_ne!(after2, after1);
    assert_eq!(after2, direct(&step2, &slm, &llm).await);

    let m = models(&url).await;
    let entry = |id: &str| {
        m["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(entry("slm")["weights_version"], 2, "{m}");
    assert_eq!(entry("llm")["weights_version"], 0, "{m}");
    assert_eq!(
        entry("relay")["weights_versions"],
        json!({"slm": 2, "llm": 0})
    );
    let metrics = client()
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("relay_weights_version{model=\"slm\"} 2"),
        "{metrics}"
    );
    // The LLM's weights sync the same way, with a version of their own.
    let (status, v) = post(
        &url,
        "/admin/weights",
        json!({"model": "llm", "path": llm}),
        None,
    )
    .await;
    assert_eq!((status, v["version"].clone()), (200, json!(1)), "{v}");
    let (after3, versions) = rollout(&url).await;
    assert_eq!(versions, json!({"slm": 2, "llm": 1}));
    assert_eq!(after3, after2, "the same LLM weights, reloaded");
    // OpenAI endpoints say which weights wrote the answer too.
    let (status, v) = post(
        &url,
        "/v1/chat/completions",
        json!({"model": "slm", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["usage"]["weights_versions"],
        json!({"slm": 2, "llm": 1}),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_that_do_not_fit_are_refused_and_the_old_ones_stay() {
    let dir = tempfile::tempdir().unwrap();
    let (slm, llm) = write_tiny_pair(dir.path(), 512);
    let wider = write_slm_gguf(
        &dir.path().join("wider.gguf"),
        &TinyConfig {
            hidden_size: 128,
            intermediate_size: 256,
            head_dim: 32,
            ..slm_config(7)
        },
    );
    let more_vocab = write_slm_gguf(
        &dir.path().join("vocab.gguf"),
        &TinyConfig {
            vocab_size: tiny_vocab::TINY_VOCAB_SIZE + 64,
            ..slm_config(7)
        },
    );
    let url = serve(
        ModelPair::new(load(&slm, &slm), load(&llm, &llm)),
        syncing(),
    )
    .await;
    let (before, _) = rollout(&url).await;

    for (path, what) in [
        (&wider, "hidden_size: 64 vs 128"),
        (&more_vocab, "vocab_size"),
        // The LLM has one layer more than the SLM.
        (&llm, "num_layers: 2 vs 3"),
    ] {
        let (status, v) = sync(&url, path).await;
        assert_eq!(status, 422, "{v}");
        assert_eq!(v["error"]["code"], "incompatible_weights", "{v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(what), "{message}");
    }
    // Neither a file that is not a model, nor paths the server cannot take, is swapped in.
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"not a model").unwrap();
    let (status, v) = sync(&url, &junk).await;
    assert_eq!(
        (status, v["error"]["code"].clone()),
        (422, json!("unreadable_weights")),
        "{v}"
    );
    for (body, param) in [
        (json!({"path": "relative/model.gguf"}), "path"),
        (json!({"path": dir.path().join("missing.gguf")}), "path"),
        (json!({"model": "slm"}), "path"),
        (json!({"model": "relay", "path": slm}), "model"),
        (json!({"path": slm, "adapter": true}), "adapter"),
    ] {
        let (status, v) = post(&url, "/admin/weights", body.clone(), None).await;
        assert_eq!(status, 400, "{body}: {v}");
        assert_eq!(v["error"]["param"], param, "{body}: {v}");
    }

    let (after, versions) = rollout(&url).await;
    assert_eq!(after, before, "the old weights still answer");
    assert_eq!(versions, json!({"slm": 0, "llm": 0}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weight_sync_is_off_unless_allowed_and_needs_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let (slm, llm) = write_tiny_pair(dir.path(), 512);
    let step1 = write_slm_gguf(&dir.path().join("step1.gguf"), &slm_config(7));
    let body = json!({"model": "slm", "path": step1});
    let pair = || ModelPair::new(load(&slm, &slm), load(&llm, &llm));

    let off = serve(pair(), ServerConfig::default()).await;
    let (status, v) = post(&off, "/admin/weights", body.clone(), None).await;
    assert_eq!(status, 403, "{v}");
    assert_eq!(v["error"]["code"], "weight_sync_disabled", "{v}");

    let keyed = serve(
        pair(),
        ServerConfig {
            api_key: Some("k".into()),
            ..syncing()
        },
    )
    .await;
    let (status, v) = post(&keyed, "/admin/weights", body.clone(), None).await;
    assert_eq!(status, 401, "{v}");
    let (status, v) = post(&keyed, "/admin/weights", body.clone(), Some("wrong")).await;
    assert_eq!(status, 401, "{v}");
    let (status, v) = post(&keyed, "/admin/weights", body, Some("k")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["version"], 1);
}

/// A latch for decode steps: while shut, a step waits (and says that one is waiting), so a
/// request is held mid-answer for as long as the test likes, without timing.
#[derive(Default)]
struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Default)]
struct GateState {
    shut: bool,
    held: usize,
}

impl Gate {
    fn set(&self, shut: bool) {
        self.state.lock().unwrap().shut = shut;
        self.changed.notify_all();
    }
    /// Blocks until a step waits at the shut gate.
    fn wait_held(&self) {
        let mut s = self.state.lock().unwrap();
        while s.held == 0 {
            s = self.changed.wait(s).unwrap();
        }
    }
    /// Where a step passes: at once when open, else once the gate opens again.
    fn pass(&self) {
        let mut s = self.state.lock().unwrap();
        if s.shut {
            s.held += 1;
            self.changed.notify_all();
            while s.shut {
                s = self.changed.wait(s).unwrap();
            }
            s.held -= 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_finishes_on_the_weights_it_started_with() {
    let dir = tempfile::tempdir().unwrap();
    let (slm, llm) = write_tiny_pair(dir.path(), 512);
    let step1 = write_slm_gguf(&dir.path().join("step1.gguf"), &slm_config(7));
    let old = load(&slm, &slm);
    let gate = Arc::new(Gate::default());
    let engine = Arc::new(StepHook::new(old.engine.clone(), {
        let gate = gate.clone();
        move |inner, batch| {
            gate.pass();
            inner.step(batch)
        }
    }));
    let gated = LoadedModel { engine, ..old };
    let url = serve(ModelPair::new(gated, load(&llm, &llm)), syncing()).await;
    let (before, _) = rollout(&url).await;

    gate.set(true);
    let in_flight = tokio::spawn({
        let url = url.clone();
        async move { rollout(&url).await }
    });
    let held = tokio::task::spawn_blocking({
        let gate = gate.clone();
        move || gate.wait_held()
    });
    tokio::time::timeout(Duration::from_secs(120), held)
        .await
        .expect("the request reaches the gate")
        .unwrap();
    // The request is mid-answer on the old SLM; the swap does not wait for it.
    let (status, v) = sync(&url, &step1).await;
    assert_eq!(status, 200, "{v}");
    let (fresh, versions) = rollout(&url).await;
    assert_eq!(versions, json!({"slm": 1, "llm": 0}));
    assert_ne!(fresh, before);
    assert_eq!(fresh, direct(&step1, &step1, &llm).await);
    assert!(!in_flight.is_finished(), "still held at the gate");

    gate.set(false);
    let (finished, versions) = in_flight.await.unwrap();
    assert_eq!(finished, before, "finished on the old weights");
    assert_eq!(versions, json!({"slm": 0, "llm": 0}));
}

/// `sync_weights` of `integrations/python` (what a trainer calls before each rollout batch)
/// against a server that allows it and one that does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_helper_syncs_and_reports_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let (slm, llm) = write_tiny_pair(dir.path(), 512);
    let step1 = write_slm_gguf(&dir.path().join("step1.gguf"), &slm_config(7));
    let pair = || ModelPair::new(load(&slm, &slm), load(&llm, &llm));
    let on = serve(pair(), syncing()).await;
    let off = serve(pair(), ServerConfig::default()).await;
    let script = r#"
import json, sys
sys.path.insert(0, sys.argv[1])
from relayllm_adapters import RelayError, sync_weights
on, off, path = sys.argv[2:5]
print(json.dumps(sync_weights(on, path)))
try:
    sync_weights(off, path)
    print("no error")
except RelayError as e:
    print(e)
"#;
    let adapters = concat!(env!("CARGO_MANIFEST_DIR"), "/../../integrations/python");
    let out = tokio::process::Command::new("python3")
        .args(["-c", script, adapters, &on, &off, step1.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = stdout.lines();
    let answer: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(answer["version"], 1, "{stdout}");
    let refusal = lines.next().unwrap();
    assert!(
        refusal.contains("HTTP 403") && refusal.contains("--allow-weight-sync"),
        "{refusal}"
    );
    assert_eq!(rollout(&on).await.1, json!({"slm": 1, "llm": 0}));
}
