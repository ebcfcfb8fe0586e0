//! A second in-process engine on llama.cpp (through the `llama-cpp-2` crate), behind the
//! `llama-cpp` cargo feature. Same contract as [`crate::CandleEngine`]: the engine deals in
//! token ids only (tokenizer and chat template stay ours), so on the same GGUF its greedy
//! tokens equal the candle engine's up to near-ties.
//!
//! One llama context per model, with one unified KV cache; each relay sequence is one llama.cpp
//! sequence id (a *slot*). Forks share their prefix's KV cells (`llama_memory_seq_cp` only adds
//! the new id to the cells). Slot 0 is kept for `score`, which fills it and empties it again,
//! so it never touches a live sequence. The context is not thread-safe: one mutex guards it
//! together with the slot table, as the candle engine guards its caches.
//!
//! Calls validate their input up front (unknown sequence, token outside the vocabulary,
//! context overflow, empty chunk, a sequence twice in one step) with the same errors as the
//! candle engine, so a failed call leaves every sequence as it was.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use llama_cpp_2::context::params::{KvCacheType, LlamaContextParams};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

use crate::candle::LoadOptions;
use crate::engine::{Engine, ModelInfo, SeqId};
use crate::error::{EngineError, Result};

/// Sequence ids in the context (one is the scratch one). llama.cpp allows up to 256, but
/// reserves an output buffer of `n_seq_max` logit rows up front (39 MB at 64 for Qwen's
/// 152k vocabulary), and a relay needs one or two per request.
const MAX_SLOTS: u32 = 64;
/// Slot kept for `score`.
const SCRATCH: i32 = 0;
/// Tokens per `llama_decode` call (longer prefills and scores go in several).
const N_BATCH: usize = 512;

fn backend() -> Result<&'static LlamaBackend> {
    static BACKEND: OnceLock<std::result::Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            // llama.cpp logs every load at length on stderr; send it to tracing instead.
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| EngineError::LlamaCpp(format!("backend init: {e}")))
}

/// The KV cache's element type: `$RELAYLLM_LLAMA_KV_TYPE` (`f32`, `f16`), default f32.
fn kv_type() -> KvCacheType {
    match std::env::var("RELAYLLM_LLAMA_KV_TYPE").as_deref() {
        Ok("f16") => KvCacheType::F16,
        _ => KvCacheType::F32,
    }
}

/// Flash attention: `$RELAYLLM_LLAMA_FLASH_ATTN` (`on`, `off`, `auto`), default off.
fn flash_attn() -> i32 {
    match std::env::var("RELAYLLM_LLAMA_FLASH_ATTN").as_deref() {
        Ok("on") => 1,
        Ok("auto") => -1,
        _ => 0,
    }
}

/// The cache settings engines loaded now get, for reports: `KV f32, flash attention off`.
pub fn cache_settings() -> String {
    let kv = match kv_type() {
        KvCacheType::F16 => "f16",
        _ => "f32",
    };
    let fa = match flash_attn() {
        1 => "on",
        -1 => "auto",
        _ => "off",
    };
    format!("KV {kv}, flash attention {fa}")
}

fn llama_err(what: &str, e: impl std::fmt::Display) -> EngineError {
    EngineError::LlamaCpp(format!("{what}: {e}"))
}

/// One relay sequence: its llama.cpp sequence id and how many positions it holds.
struct Slot {
    id: i32,
    len: usize,
}

struct State {
    ctx: LlamaContext<'static>,
    seqs: HashMap<SeqId, Slot>,
    /// Slot ids not in use (never [`SCRATCH`]).
    free_slots: Vec<i32>,
    batch: LlamaBatch<'static>,
}

/// Qwen2/Qwen3 GGUF files on llama.cpp, CPU.
pub struct LlamaCppEngine {
    info: ModelInfo,
    // Field order matters: the context borrows the model, so `state` must drop first.
    state: Mutex<State>,
    model: Box<LlamaModel>,
    next_id: AtomicU64,
    kv_cells: usize,
}

impl LlamaCppEngine {
    /// Loads a `.gguf` file. The header is read by our own loader first, so a missing,
    /// truncated or foreign file fails with the same errors as the candle engine; only then
    /// does llama.cpp map it. `opts.threads` sets llama.cpp's threads; `max_context` caps
    /// positions per sequence. `requantize` and `native_kernels` are candle's and ignored.
    ///
    /// The KV cache is one pool of cells shared by all sequences (forks share their common
    /// prefix): `$RELAYLLM_LLAMA_KV_CELLS` cells, default four sequences' worth, at least
    /// one full-length sequence (and 512 cells), at most 32768 unless one sequence needs more.
    pub fn load(path: &Path, opts: LoadOptions) -> Result<Self> {
        if !path.exists() {
            return Err(EngineError::NotFound(path.to_path_buf()));
        }
        if path.is_dir() {
            return Err(EngineError::Unsupported(format!(
                "{}: the llama-cpp engine loads GGUF files only, not safetensors folders",
                path.display()
            )));
        }
        let header = crate::candle::read_gguf_header(path, &opts)?;
        let backend = backend()?;
        let model = LlamaModel::load_from_file(backend, path, &LlamaModelParams::default())
            .map_err(|e| EngineError::Malformed {
                path: path.to_path_buf(),
                reason: format!("llama.cpp could not load it: {e}"),
            })?;
        let model = Box::new(model);
        let vocab_size = usize::try_from(model.n_vocab()).unwrap_or(0);
        if vocab_size != header.vocab_size {
            return Err(EngineError::Malformed {
                path: path.to_path_buf(),
                reason: format!(
                    "llama.cpp sees {vocab_size} tokens, the embedding has {}",
                    header.vocab_size
                ),
            });
        }
        let context_length = header.context_length;
        let kv_cells = std::env::var("RELAYLLM_LLAMA_KV_CELLS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or_else(|| (4 * context_length).min(32768))
            .max(context_length)
            // llama.cpp caps a batch at the cache size, and its outputs at the batch, yet
            // reserves outputs for every sequence id: keep the cache at least a batch long.
            .max(N_BATCH);
        let threads = opts
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1) as i32;
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(kv_cells as u32))
            .with_n_batch(N_BATCH as u32)
            .with_n_ubatch(N_BATCH as u32)
            .with_n_seq_max(MAX_SLOTS)
            .with_kv_unified(true)
            .with_n_threads(threads)
            .with_n_threads_batch(threads)
            .with_flash_attention_policy(flash_attn())
            .with_type_k(kv_type())
            .with_type_v(kv_type());
        // SAFETY: the model lives in a Box whose address never changes, and `state` (which
        // holds the context) is declared before `model`, so it is dropped first.
        let model_ref: &'static LlamaModel = unsafe { &*(model.as_ref() as *const LlamaModel) };
        let ctx = model_ref
            .new_context(backend, params)
            .map_err(|e| llama_err("creating the context", e))?;
        let info = ModelInfo {
            name: header.name,
            architecture: header.architecture,
            vocab_size,
            context_length,
            eos_token_ids: header.eos_token_ids,
        };
        Ok(Self {
            info,
            state: Mutex::new(State {
                ctx,
                seqs: HashMap::new(),
                free_slots: (1..MAX_SLOTS as i32).rev().collect(),
                batch: LlamaBatch::new(N_BATCH, 1),
            }),
            model,
            next_id: AtomicU64::new(1),
            kv_cells,
        })
    }

    /// Number of live sequences (for metrics and leak checks).
    pub fn num_sequences(&self) -> usize {
        self.lock().seqs.len()
    }

    /// KV cells in the shared pool (all sequences together).
    pub fn kv_cells(&self) -> usize {
        self.kv_cells
    }

    /// The llama.cpp model (for its own metadata).
    pub fn llama_model(&self) -> &LlamaModel {
        &self.model
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every call changes the slot table only after llama.cpp succeeded, so a poisoned
        // lock still guards a consistent table.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    /// Decodes `tokens` into slot `slot` at positions `start..`, in chunks of [`N_BATCH`].
    /// Calls `take(i, logits)` with the logits after `tokens[i]` for every `i` when `all`,
    /// else only for the last token.
    fn decode_run(
        &mut self,
        slot: i32,
        start: usize,
        tokens: &[u32],
        all: bool,
        mut take: impl FnMut(usize, &[f32]),
    ) -> Result<()> {
        let n = tokens.len();
        for (c, chunk) in tokens.chunks(N_BATCH).enumerate() {
            let base = c * N_BATCH;
            self.batch.clear();
            for (j, &t) in chunk.iter().enumerate() {
                let i = base + j;
                let logits = all || i + 1 == n;
                self.batch
                    .add(
                        LlamaToken::new(t as i32),
                        (start + i) as i32,
                        &[slot],
                        logits,
                    )
                    .map_err(|e| llama_err("batch", e))?;
            }
            if let Err(e) = self.ctx.decode(&mut self.batch) {
                // Leave the slot as it was before this call.
                let _ = self
                    .ctx
                    .clear_kv_cache_seq(Some(slot as u32), Some(start as u32), None);
                return Err(llama_err("decode", e));
            }
            for (j, _) in chunk.iter().enumerate() {
                let i = base + j;
                if all || i + 1 == n {
                    take(i, self.ctx.get_logits_ith(j as i32));
                }
            }
        }
        Ok(())
    }
}

impl Engine for LlamaCppEngine {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn create_sequence(&self) -> Result<SeqId> {
        let mut st = self.lock();
        let slot = st.free_slots.pop().ok_or_else(|| {
            EngineError::InvalidInput(format!(
                "the llama-cpp engine holds at most {} sequences at once",
                MAX_SLOTS - 1
            ))
        })?;
        let id = SeqId(self.next_id.fetch_add(1, Ordering::Relaxed));
        st.seqs.insert(id, Slot { id: slot, len: 0 });
        Ok(id)
    }

    fn prefill(&self, seq: SeqId, tokens: &[u32]) -> Result<Vec<f32>> {
        let mut st = self.lock();
        let (slot, len) = {
            let s = st.seqs.get(&seq).ok_or(EngineError::UnknownSequence(seq))?;
            (s.id, s.len)
        };
        self.info.check_prefill(len, tokens)?;
        let mut out = Vec::new();
        st.decode_run(slot, len, tokens, false, |_, l| out = l.to_vec())?;
        st.seqs.get_mut(&seq).expect("checked above").len = len + tokens.len();
        Ok(out)
    }

    fn step(&self, batch: &[(SeqId, u32)]) -> Result<Vec<Vec<f32>>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let tokens: Vec<u32> = batch.iter().map(|&(_, t)| t).collect();
        let mut st = self.lock();
        let lens = self
            .info
            .check_step(batch, |id| st.seqs.get(&id).map(|s| s.len))?;
        let slots: Vec<(i32, usize)> = batch
            .iter()
            .zip(lens)
            .map(|(&(id, _), len)| (st.seqs[&id].id, len))
            .collect();
        // At most MAX_SLOTS - 1 distinct sequences, fewer than N_BATCH: one decode.
        let st = &mut *st;
        st.batch.clear();
        for (&(slot, len), &t) in slots.iter().zip(&tokens) {
            st.batch
                .add(LlamaToken::new(t as i32), len as i32, &[slot], true)
                .map_err(|e| llama_err("batch", e))?;
        }
        if let Err(e) = st.ctx.decode(&mut st.batch) {
            for &(slot, len) in &slots {
                let _ = st
                    .ctx
                    .clear_kv_cache_seq(Some(slot as u32), Some(len as u32), None);
            }
            return Err(llama_err("decode", e));
        }
        let out = (0..slots.len())
            .map(|i| st.ctx.get_logits_ith(i as i32).to_vec())
            .collect();
        for &(id, _) in batch {
            st.seqs.get_mut(&id).expect("checked above").len += 1;
        }
        Ok(out)
    }

    fn seq_len(&self, seq: SeqId) -> Result<usize> {
        Ok(self
            .lock()
            .seqs
            .get(&seq)
            .ok_or(EngineError::UnknownSequence(seq))?
            .len)
    }

    fn truncate(&self, seq: SeqId, len: usize) -> Result<()> {
        let mut st = self.lock();
        let s = st.seqs.get(&seq).ok_or(EngineError::UnknownSequence(seq))?;
        if len > s.len {
            return Err(EngineError::InvalidInput(format!(
                "cannot truncate sequence {seq:?} of length {} to {len}",
                s.len
            )));
        }
        let slot = s.id;
        let ok = st
            .ctx
            .clear_kv_cache_seq(Some(slot as u32), Some(len as u32), None)
            .map_err(|e| llama_err("truncate", e))?;
        if !ok {
            return Err(EngineError::LlamaCpp(format!(
                "llama.cpp could not truncate sequence {seq:?} to {len}"
            )));
        }
        st.seqs.get_mut(&seq).expect("checked above").len = len;
        Ok(())
    }

    fn fork(&self, seq: SeqId) -> Result<SeqId> {
        let mut st = self.lock();
        let (src, len) = {
            let s = st.seqs.get(&seq).ok_or(EngineError::UnknownSequence(seq))?;
            (s.id, s.len)
        };
        let dst = st.free_slots.pop().ok_or_else(|| {
            EngineError::InvalidInput(format!(
                "the llama-cpp engine holds at most {} sequences at once",
                MAX_SLOTS - 1
            ))
        })?;
        if len > 0 {
            if let Err(e) = st.ctx.copy_kv_cache_seq(src, dst, None, None) {
                st.free_slots.push(dst);
                return Err(llama_err("fork", e));
            }
        }
        let id = SeqId(self.next_id.fetch_add(1, Ordering::Relaxed));
        st.seqs.insert(id, Slot { id: dst, len });
        Ok(id)
    }

    fn free(&self, seq: SeqId) -> Result<()> {
        let mut st = self.lock();
        let slot = st
            .seqs
            .remove(&seq)
            .ok_or(EngineError::UnknownSequence(seq))?;
        let _ = st.ctx.clear_kv_cache_seq(Some(slot.id as u32), None, None);
        st.free_slots.push(slot.id);
        Ok(())
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
        let input = &tokens[..tokens.len() - 1];
        let targets = &tokens[1..];
        let mut st = self.lock();
        let _ = st.ctx.clear_kv_cache_seq(Some(SCRATCH as u32), None, None);
        let mut out = vec![0.0f32; input.len()];
        let r = st.decode_run(SCRATCH, 0, input, true, |i, l| {
            out[i] = crate::sampling::token_logprob(l, targets[i]);
        });
        let _ = st.ctx.clear_kv_cache_seq(Some(SCRATCH as u32), None, None);
        r.map(|()| out)
    }
}
