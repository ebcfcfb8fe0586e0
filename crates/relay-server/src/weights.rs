//! The model pair in service, and weight sync: `POST /admin/weights` loads new weights for the
//! SLM (or the LLM) from a path on this machine and swaps them in whole, so that a trainer
//! (TRL, verl through `integrations/python/`) can keep the rollouts on the policy it trains.
//!
//! Requests never see a swap happen: each job takes the [`ServedPair`] that is current when it
//! starts and holds it to its end, so a request in flight finishes on the weights it began
//! with, and the old weights are freed once the last such request is done (until then both
//! copies are in memory). Tokenizers and chat templates never change (a sync must keep the
//! vocabulary), so a prompt validated before a swap means the same ids after it.
//!
//! Loading server-local paths named by a client is a privilege: the route answers 403 unless
//! the server was started with `--allow-weight-sync` ([`crate::ServerConfig::weight_sync`]).
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use relay_engine::batching::{BatchStats, BatchingEngine};
use relay_engine::candle::{read_model_config, ModelConfig};
use relay_engine::model::{LoadedModel, ModelPair};
use relay_engine::relay::RelayPair;
use relay_engine::{EngineError, LoadOptions};
use serde::Serialize;
use serde_json::{json, Value};

use crate::api::{json_object, model_choice, refused};
use crate::error::ApiError;
use crate::job::ModelChoice;
use crate::AppState;

/// Which weights of each model are in service: 0 for those loaded at startup, one more at
/// each sync of that model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct WeightsVersions {
    pub slm: u64,
    pub llm: u64,
}

/// One model of the pair, by the name requests use for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Slm,
    Llm,
}

impl Slot {
    pub fn name(self) -> &'static str {
        match self {
            Slot::Slm => "slm",
            Slot::Llm => "llm",
        }
    }
    fn of(self, pair: &mut ModelPair) -> &mut LoadedModel {
        match self {
            Slot::Slm => &mut pair.slm,
            Slot::Llm => &mut pair.llm,
        }
    }
    fn version(self, v: &mut WeightsVersions) -> &mut u64 {
        match self {
            Slot::Slm => &mut v.slm,
            Slot::Llm => &mut v.llm,
        }
    }
}

/// The pair as requests run on it at one moment; replaced whole by a weight sync.
pub struct ServedPair {
    /// The models as requests use them (in-process engines behind their batchers).
    pub models: ModelPair,
    pub pair: RelayPair,
    /// The continuous batchers in front of in-process engines, by model name.
    pub batchers: Vec<(&'static str, Arc<BatchingEngine>)>,
    pub versions: WeightsVersions,
    /// The models as loaded, without batchers: what the next sync builds on.
    loaded: ModelPair,
}

impl ServedPair {
    /// `window`: put a [`BatchingEngine`] with this join window in front of each in-process
    /// engine (see [`crate::AppState::new`]); `None`: no batching.
    fn new(loaded: ModelPair, window: Option<Duration>) -> Self {
        let mut models = loaded.clone();
        let batchers = match window {
            Some(w) => models.batch_local_engines(w),
            None => Vec::new(),
        };
        Self {
            pair: models.relay_pair(),
            models,
            batchers,
            versions: WeightsVersions::default(),
            loaded,
        }
    }

    /// This pair with `slot`'s model replaced by `new`; the other model keeps its engine and
    /// batcher, so its running requests and new ones still batch together.
    fn replaced(&self, slot: Slot, new: LoadedModel, window: Option<Duration>) -> Self {
        let mut loaded = self.loaded.clone();
        *slot.of(&mut loaded) = new.clone();
        let mut served = new;
        let mut batchers = self.batchers.clone();
        if let (Some(w), false) = (window, served.engine.continues_in_one_go()) {
            let batcher = Arc::new(BatchingEngine::new(served.engine.clone(), w));
            served.engine = batcher.clone();
            match batchers.iter_mut().find(|(n, _)| *n == slot.name()) {
                Some(entry) => entry.1 = batcher,
                None => batchers.push((slot.name(), batcher)),
            }
        }
        let mut models = self.models.clone();
        *slot.of(&mut models) = served;
        let mut versions = self.versions;
        *slot.version(&mut versions) += 1;
        Self {
            pair: models.relay_pair(),
            models,
            batchers,
            versions,
            loaded,
        }
    }
}

/// The swappable [`ServedPair`]: requests take the current one ([`Self::current`]), a sync
/// puts a new one in its place.
pub struct ServedModels {
    current: RwLock<Arc<ServedPair>>,
    window: Option<Duration>,
    /// One sync at a time, so that each builds on the one before.
    syncing: tokio::sync::Mutex<()>,
    /// Each model's shape as read from its file at startup (a later sync must match it);
    /// `None` for a remote model, or when weight sync is off.
    shapes: [Option<ModelConfig>; 2],
    /// What batchers retired by a sync had counted when they were retired, by model name, so
    /// that `/metrics` counters keep rising (steps an old batcher runs after the swap, for
    /// requests finishing on the old weights, are not counted).
    retired: Mutex<Vec<(&'static str, BatchStats)>>,
}

impl ServedModels {
    pub fn new(loaded: ModelPair, window: Option<Duration>, sync: Option<&LoadOptions>) -> Self {
        let shape = |m: &LoadedModel| {
            let opts = sync?;
            if m.engine.continues_in_one_go() {
                return None;
            }
            read_model_config(&m.path, opts)
                .inspect_err(|e| {
                    tracing::warn!(error = %e, "weight sync: cannot read the shape of {}", m.path.display())
                })
                .ok()
        };
        let shapes = [shape(&loaded.slm), shape(&loaded.llm)];
        Self {
            current: RwLock::new(Arc::new(ServedPair::new(loaded, window))),
            window,
            syncing: tokio::sync::Mutex::new(()),
            shapes,
            retired: Mutex::new(Vec::new()),
        }
    }

    /// The pair new requests run on; a request keeps it to its end.
    pub fn current(&self) -> Arc<ServedPair> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn install(&self, next: ServedPair) {
        let kept: Vec<Arc<BatchingEngine>> = next.batchers.iter().map(|(_, b)| b.clone()).collect();
        let prev = std::mem::replace(
            &mut *self.current.write().unwrap_or_else(|e| e.into_inner()),
            Arc::new(next),
        );
        let mut retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        for (name, b) in &prev.batchers {
            if kept.iter().any(|k| Arc::ptr_eq(k, b)) {
                continue;
            }
            let s = b.stats();
            match retired.iter_mut().find(|(n, _)| n == name) {
                Some((_, base)) => {
                    base.batches += s.batches;
                    base.steps += s.steps;
                    base.max_batch = base.max_batch.max(s.max_batch);
                }
                None => retired.push((name, s)),
            }
        }
    }

    /// Each batcher's statistics by model name, counting those that syncs retired.
    pub fn batch_stats(&self) -> Vec<(&'static str, BatchStats)> {
        let retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        self.current()
            .batchers
            .iter()
            .map(|(name, b)| {
                let mut s = b.stats();
                if let Some((_, base)) = retired.iter().find(|(n, _)| n == name) {
                    s.batches += base.batches;
                    s.steps += base.steps;
                    s.max_batch = s.max_batch.max(base.max_batch);
                }
                (*name, s)
            })
            .collect()
    }
}

/// `/metrics` lines: the weights version of each model.
pub fn metrics_text(versions: WeightsVersions) -> String {
    format!(
        "# HELP relay_weights_version Weights in service per model: 0 as started, +1 per sync.\n\
         # TYPE relay_weights_version gauge\n\
         relay_weights_version{{model=\"slm\"}} {}\n\
         relay_weights_version{{model=\"llm\"}} {}\n",
        versions.slm, versions.llm
    )
}

/// `POST /admin/weights` `{"model": "slm" | "llm" (default slm), "path": "/abs/path"}` →
/// `{"model", "version", "path", "load_s"}` once new requests run on the new weights.
/// 403 without `--allow-weight-sync`; 400 for a bad body, a relative or missing path; 422 for
/// weights that do not fit the model they would replace or cannot be read (the old weights
/// stay); 409 for a model whose weights are not this server's (a remote engine).
pub async fn sync_weights(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match sync(&state, body).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => refused(&state, e),
    }
}

async fn sync(
    state: &Arc<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Value, ApiError> {
    let Some(opts) = state.config.weight_sync.clone() else {
        return Err(ApiError::forbidden(
            "weight_sync_disabled",
            "weight sync is off: start the server with --allow-weight-sync to let clients load weights from its paths",
        ));
    };
    let obj = json_object(body)?;
    if let Some(k) = obj
        .keys()
        .find(|k| !["model", "path"].contains(&k.as_str()))
    {
        return Err(ApiError::invalid(
            k,
            format!("unknown field {k:?}; known: model, path"),
        ));
    }
    let slot = match model_choice(&obj, Some(ModelChoice::Slm))? {
        ModelChoice::Slm => Slot::Slm,
        ModelChoice::Llm => Slot::Llm,
        ModelChoice::Relay => {
            return Err(ApiError::invalid(
                "model",
                "weights are synced per model: give \"slm\" or \"llm\"",
            ))
        }
    };
    let path = match obj.get("path") {
        Some(Value::String(p)) if !p.is_empty() => PathBuf::from(p),
        _ => {
            return Err(ApiError::invalid(
                "path",
                "path (a .gguf file or a safetensors folder on the server) is required",
            ))
        }
    };
    if !path.is_absolute() {
        return Err(ApiError::invalid(
            "path",
            format!(
                "path must be absolute (a relative one would be read from the server's working directory): {}",
                path.display()
            ),
        ));
    }
    if !path.exists() {
        return Err(ApiError::invalid(
            "path",
            format!("no such file or folder on the server: {}", path.display()),
        ));
    }
    let served = &state.served;
    let Some(shape) = served.shapes[slot as usize].clone() else {
        let mut e = ApiError::invalid(
            "model",
            format!(
                "the {}'s weights cannot be synced here: it is a remote engine, or its file could not be read at startup",
                slot.name()
            ),
        );
        e.status = StatusCode::CONFLICT;
        e.code = Some("weight_sync_unavailable");
        return Err(e);
    };
    let _one_at_a_time = served.syncing.lock().await;
    let current = served.current();
    let old = match slot {
        Slot::Slm => current.loaded.slm.clone(),
        Slot::Llm => current.loaded.llm.clone(),
    };
    let started = Instant::now();
    let from = path.clone();
    let loaded = tokio::task::spawn_blocking(move || old.with_weights_from(&from, opts, &shape))
        .await
        .map_err(|e| ApiError::internal(format!("loading the weights failed: {e}")))?
        .map_err(load_error)?;
    let load_s = started.elapsed().as_secs_f64();
    let next = current.replaced(slot, loaded, served.window);
    let version = match slot {
        Slot::Slm => next.versions.slm,
        Slot::Llm => next.versions.llm,
    };
    served.install(next);
    tracing::info!(
        model = slot.name(),
        version,
        load_s,
        "weight sync: now serving {}",
        path.display()
    );
    Ok(json!({"model": slot.name(), "version": version, "path": path, "load_s": load_s}))
}

/// Weights that could not be taken: 422 when the files are the problem (the old weights stay).
fn load_error(e: EngineError) -> ApiError {
    let code = match &e {
        EngineError::Incompatible(_) => "incompatible_weights",
        EngineError::NotFound(_)
        | EngineError::Malformed { .. }
        | EngineError::Unsupported(_)
        | EngineError::Candle(_) => "unreadable_weights",
        _ => return ApiError::internal(format!("loading the weights failed: {e}")),
    };
    let mut err = ApiError::invalid("path", e.to_string());
    err.status = StatusCode::UNPROCESSABLE_ENTITY;
    err.code = Some(code);
    err
}
