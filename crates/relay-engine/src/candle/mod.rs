//! The default engine: Qwen2 / Qwen3 on candle, pure Rust, CPU.
//!
//! The engine owns one [`kv::KvCache`] per sequence. Calls validate their input up front
//! (unknown sequence, token outside the vocabulary, context overflow, empty chunk) and a
//! failed call leaves every sequence as it was.

pub mod bench;
mod kv;
mod load;
mod model;
pub mod names;
mod native;
mod pool;
mod q8;
mod rows;

#[allow(unused_imports)]
pub(crate) use load::read_gguf_header;
pub use load::{load_dense, read_model_config, DenseWeights};
pub use model::{Arch, ModelConfig};

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::engine::{Engine, ModelInfo, SeqId};
use crate::error::{EngineError, Result};
use kv::KvCache;
use model::{Chunk, Model, Want};

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Compute threads (our pool, candle's pool and rayon). Default: the machine's cores.
    /// Thread pools are process-wide and start once, so the first load decides;
    /// `RAYON_NUM_THREADS` / `CANDLE_NUM_THREADS` set by the user win.
    pub threads: Option<usize>,
    /// Cap on positions per sequence, below the model's own context length (saves memory,
    /// lets tests hit the limit cheaply).
    pub max_context: Option<usize>,
    /// Re-quantize GGUF weights that candle has no fast CPU kernel for (Q5_0, Q6_K, and any type
    /// whose rows are not a multiple of 256 long) to our Q8 format at load. 8-bit blocks are
    /// finer than the 5/6-bit source, so the error added is small; `false` keeps the file's
    /// exact types on candle's generic (slow) kernels.
    pub requantize: bool,
    /// Run Q4_K / Q6_K weights (rows a multiple of 256 long) on their own blocks with our
    /// AVX-512 kernels at decode (`native.rs`) when the CPU has AVX-512 BW + VNNI: they read
    /// 4.75 / 6.6 bits per weight where candle's kernels read 6 and the Q8 fallback 8.5.
    /// Prefill still uses candle's repacked kernels. Ignored on other CPUs.
    pub native_kernels: bool,
    /// Which engine [`crate::model::LoadedModel::load`] runs the model on. Candle (the
    /// default) is always built; llama.cpp only with the `llama-cpp` cargo feature.
    pub engine: EngineKind,
}

/// The in-process engines a model can be loaded on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineKind {
    /// [`CandleEngine`]: pure Rust, always built.
    #[default]
    Candle,
    /// `LlamaCppEngine` on llama.cpp: needs the `llama-cpp` cargo feature.
    LlamaCpp,
}

impl EngineKind {
    /// Its name on the command line: `candle`, `llama-cpp`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Candle => "candle",
            Self::LlamaCpp => "llama-cpp",
        }
    }

    /// The engines this build has, candle first.
    pub fn built() -> Vec<Self> {
        [Self::Candle, Self::LlamaCpp]
            .into_iter()
            .filter(|k| k.available())
            .collect()
    }

    /// Whether this build has it.
    pub fn available(self) -> bool {
        match self {
            Self::Candle => true,
            Self::LlamaCpp => cfg!(feature = "llama-cpp"),
        }
    }
}

impl std::str::FromStr for EngineKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "candle" => Ok(Self::Candle),
            "llama-cpp" | "llama.cpp" | "llamacpp" => Ok(Self::LlamaCpp),
            other => Err(format!("unknown engine `{other}` (candle, llama-cpp)")),
        }
    }
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            threads: None,
            max_context: None,
            requantize: true,
            native_kernels: true,
            engine: EngineKind::Candle,
        }
    }
}

/// One sequence's state: its cache (which also knows its length).
struct SeqState {
    cache: KvCache,
}

/// Qwen2/Qwen3 on candle with engine-owned per-sequence KV caches.
pub struct CandleEngine {
    model: Model,
    info: ModelInfo,
    seqs: Mutex<HashMap<SeqId, SeqState>>,
    next_id: AtomicU64,
}

impl CandleEngine {
    /// Loads a `.gguf` file, or a directory holding `config.json` and `*.safetensors`.
    pub fn load(path: &Path, opts: LoadOptions) -> Result<Self> {
        init_threads(opts.threads);
        if !path.exists() {
            return Err(EngineError::NotFound(path.to_path_buf()));
        }
        let loaded = if path.is_dir() {
            load::load_safetensors(path, &opts)?
        } else {
            load::load_gguf(path, &opts)?
        };
        Ok(Self::from_model(loaded))
    }

    /// An engine over weights already in memory (the trainer's, for rollouts), given as dense
    /// tensors under their Hugging Face names (`model.layers.0.self_attn.q_proj.weight`; no
    /// `lm_head.weight` means tied embeddings). The layer matrices are stored as `weights`:
    /// F32 runs them exactly as given, a quantized type (Q8_0) trades a little accuracy for
    /// decode speed, as a GGUF of that type would.
    pub fn from_tensors(
        cfg: ModelConfig,
        tensors: HashMap<String, candle_core::Tensor>,
        weights: candle_core::quantized::GgmlDType,
        name: impl Into<String>,
        eos_token_ids: Vec<u32>,
        opts: LoadOptions,
    ) -> Result<Self> {
        init_threads(opts.threads);
        let source = std::path::PathBuf::from("<tensors in memory>");
        let model = load::dense_model(cfg, tensors, weights, &source, &opts)?;
        Ok(Self::from_model(load::Loaded {
            model,
            name: name.into(),
            eos_token_ids,
        }))
    }

    fn from_model(loaded: load::Loaded) -> Self {
        let cfg = &loaded.model.cfg;
        let info = ModelInfo {
            name: loaded.name,
            architecture: cfg.arch.name().to_string(),
            vocab_size: cfg.vocab_size,
            context_length: cfg.context_length,
            eos_token_ids: loaded.eos_token_ids,
        };
        Self {
            model: loaded.model,
            info,
            seqs: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        }
    }

    /// The loaded model's shape.
    pub fn config(&self) -> &ModelConfig {
        &self.model.cfg
    }

    /// Number of live sequences (for metrics and leak checks).
    pub fn num_sequences(&self) -> usize {
        self.lock().len()
    }

    /// Positions currently allocated for a sequence's cache (≥ its length).
    pub fn cache_capacity(&self, seq: SeqId) -> Result<usize> {
        Ok(self
            .lock()
            .get(&seq)
            .ok_or(EngineError::UnknownSequence(seq))?
            .cache
            .capacity())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SeqId, SeqState>> {
        // A panic while holding the lock cannot leave a cache half-committed (length moves
        // last), so a poisoned map is still consistent.
        self.seqs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn init_threads(threads: Option<usize>) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let n = threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1);
        for var in ["RAYON_NUM_THREADS", "CANDLE_NUM_THREADS"] {
            if std::env::var_os(var).is_none() {
                std::env::set_var(var, n.to_string());
            }
        }
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global();
    });
}

impl Engine for CandleEngine {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn create_sequence(&self) -> Result<SeqId> {
        let id = SeqId(self.next_id.fetch_add(1, Ordering::Relaxed));
        self.lock().insert(
            id,
            SeqState {
                cache: self.model.new_cache(),
            },
        );
        Ok(id)
    }

    fn prefill(&self, seq: SeqId, tokens: &[u32]) -> Result<Vec<f32>> {
        let mut seqs = self.lock();
        let state = seqs
            .get_mut(&seq)
            .ok_or(EngineError::UnknownSequence(seq))?;
        self.info.check_prefill(state.cache.len(), tokens)?;
        let mut chunks = [Chunk {
            cache: &mut state.cache,
            tokens,
        }];
        let mut out = self.model.forward(&mut chunks, Want::LastOfEach)?;
        Ok(out.pop().unwrap_or_default())
    }

    fn step(&self, batch: &[(SeqId, u32)]) -> Result<Vec<Vec<f32>>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut seqs = self.lock();
        self.info
            .check_step(batch, |id| seqs.get(&id).map(|s| s.cache.len()))?;
        // Distinct keys: take disjoint &mut borrows by walking the map once.
        let mut by_id: HashMap<SeqId, &mut SeqState> = seqs
            .iter_mut()
            .filter(|(id, _)| batch.iter().any(|(b, _)| b == *id))
            .map(|(id, s)| (*id, s))
            .collect();
        let mut chunks: Vec<Chunk<'_>> = Vec::with_capacity(batch.len());
        for (i, &(id, _)) in batch.iter().enumerate() {
            let state = by_id.remove(&id).expect("checked above");
            chunks.push(Chunk {
                cache: &mut state.cache,
                tokens: std::slice::from_ref(&batch[i].1),
            });
        }
        self.model.forward(&mut chunks, Want::LastOfEach)
    }

    fn seq_len(&self, seq: SeqId) -> Result<usize> {
        Ok(self
            .lock()
            .get(&seq)
            .ok_or(EngineError::UnknownSequence(seq))?
            .cache
            .len())
    }

    fn truncate(&self, seq: SeqId, len: usize) -> Result<()> {
        let mut seqs = self.lock();
        let state = seqs
            .get_mut(&seq)
            .ok_or(EngineError::UnknownSequence(seq))?;
        if len > state.cache.len() {
            return Err(EngineError::InvalidInput(format!(
                "cannot truncate sequence {seq:?} of length {} to {len}",
                state.cache.len()
            )));
        }
        state.cache.truncate(len);
        Ok(())
    }

    fn fork(&self, seq: SeqId) -> Result<SeqId> {
        let mut seqs = self.lock();
        let cache = seqs
            .get(&seq)
            .ok_or(EngineError::UnknownSequence(seq))?
            .cache
            .fork();
        let id = SeqId(self.next_id.fetch_add(1, Ordering::Relaxed));
        seqs.insert(id, SeqState { cache });
        Ok(id)
    }

    fn free(&self, seq: SeqId) -> Result<()> {
        self.lock()
            .remove(&seq)
            .map(|_| ())
            .ok_or(EngineError::UnknownSequence(seq))
    }

    fn score(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        if tokens.is_empty() {
            return Err(EngineError::InvalidInput(
                "score needs at least one token".into(),
            ));
        }
        self.info.check_tokens(tokens)?;
        self.info.check_context(tokens.len())?;
        if tokens.len() == 1 {
            return Ok(Vec::new());
        }
        let mut cache = self.model.new_cache();
        let input = &tokens[..tokens.len() - 1];
        let mut chunks = [Chunk {
            cache: &mut cache,
            tokens: input,
        }];
        let logits = self.model.forward(&mut chunks, Want::All)?;
        Ok(logits
            .iter()
            .zip(&tokens[1..])
            .map(|(l, &t)| crate::sampling::token_logprob(l, t))
            .collect())
    }
}
