//! The `Engine` trait: the one seam between the relay (and later the server and trainer) and
//! whatever runs a model. An engine owns *sequences*; each sequence owns its KV cache, which
//! lives exactly as long as the sequence does.

use crate::error::Result;

/// Handle of one sequence (one request's view in one model). Cheap to copy; meaningless
/// to any engine but the one that created it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct SeqId(pub u64);

/// What callers need to know about the loaded model.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelInfo {
    /// Short name, e.g. the GGUF `general.name` or the file stem.
    pub name: String,
    /// Architecture as read from the file (`qwen2`, `qwen3`).
    pub architecture: String,
    pub vocab_size: usize,
    /// Maximum positions a sequence may hold.
    pub context_length: usize,
    /// Token ids that end generation.
    pub eos_token_ids: Vec<u32>,
}

impl ModelInfo {
    /// Every id is inside the vocabulary (the check each engine does before running tokens).
    pub fn check_tokens(&self, tokens: &[u32]) -> crate::error::Result<()> {
        let vocab_size = self.vocab_size;
        match tokens.iter().find(|&&t| t as usize >= vocab_size) {
            Some(&id) => Err(crate::error::EngineError::TokenOutOfVocab { id, vocab_size }),
            None => Ok(()),
        }
    }

    /// A sequence of `len` positions fits the context.
    pub fn check_context(&self, len: usize) -> crate::error::Result<()> {
        let context_length = self.context_length;
        if len > context_length {
            return Err(crate::error::EngineError::ContextOverflow {
                len,
                context_length,
            });
        }
        Ok(())
    }

    /// A prefill of `tokens` onto a sequence of `len` positions: at least one token, all in
    /// the vocabulary, and room for them in the context.
    pub fn check_prefill(&self, len: usize, tokens: &[u32]) -> crate::error::Result<()> {
        if tokens.is_empty() {
            return Err(crate::error::EngineError::InvalidInput(
                "prefill needs at least one token".into(),
            ));
        }
        self.check_tokens(tokens)?;
        self.check_context(len + tokens.len())
    }

    /// A decode step: every token in the vocabulary, every sequence known (`len_of` gives its
    /// length, `None` when the engine has no such sequence), none twice, and room for one more
    /// position in each. Returns the sequences' lengths in batch order.
    pub fn check_step(
        &self,
        batch: &[(SeqId, u32)],
        len_of: impl Fn(SeqId) -> Option<usize>,
    ) -> crate::error::Result<Vec<usize>> {
        use crate::error::EngineError;
        let tokens: Vec<u32> = batch.iter().map(|&(_, t)| t).collect();
        self.check_tokens(&tokens)?;
        let mut lens = Vec::with_capacity(batch.len());
        for (i, &(id, _)) in batch.iter().enumerate() {
            let len = len_of(id).ok_or(EngineError::UnknownSequence(id))?;
            if batch[..i].iter().any(|&(other, _)| other == id) {
                return Err(EngineError::InvalidInput(format!(
                    "sequence {id:?} appears twice in one step"
                )));
            }
            self.check_context(len + 1)?;
            lens.push(len);
        }
        Ok(lens)
    }
}

/// A model runtime with per-sequence KV caches.
///
/// All methods take `&self`: engines use interior mutability so that one engine can be shared
/// between requests (`Arc<dyn Engine>`). Logits are returned as plain `Vec<f32>` over the vocab.
pub trait Engine: Send + Sync {
    fn info(&self) -> &ModelInfo;

    /// Creates an empty sequence.
    fn create_sequence(&self) -> Result<SeqId>;

    /// Appends `tokens` to the sequence (which may already hold tokens: this is how one model's
    /// tokens get into the other's cache) and returns the logits after the last of them.
    /// `tokens` must be non-empty.
    fn prefill(&self, seq: SeqId, tokens: &[u32]) -> Result<Vec<f32>>;

    /// Appends one token to each listed sequence, computed as one batch, and returns the logits
    /// after each, in the same order.
    fn step(&self, batch: &[(SeqId, u32)]) -> Result<Vec<Vec<f32>>>;

    /// Number of tokens the sequence holds.
    fn seq_len(&self, seq: SeqId) -> Result<usize>;

    /// Drops everything past the first `len` tokens.
    fn truncate(&self, seq: SeqId, len: usize) -> Result<()>;

    /// A new sequence with a copy of `seq`'s cache; the two evolve independently.
    fn fork(&self, seq: SeqId) -> Result<SeqId>;

    /// Frees the sequence and its cache. Freeing an unknown sequence is an error.
    fn free(&self, seq: SeqId) -> Result<()>;

    /// Log-probability of each of `tokens[1..]` given the tokens before it (length
    /// `tokens.len() - 1`), computed without touching any sequence. Used by training.
    fn score(&self, tokens: &[u32]) -> Result<Vec<f32>>;

    /// Whether [`Self::generate_greedy`] is offered (and cheaper than stepping).
    fn continues_in_one_go(&self) -> bool {
        false
    }

    /// Appends `tokens` (may be empty) to `seq`, then continues it greedily by up to `max_new`
    /// tokens in one go and appends those too; returns them, ending with an EOS id when the
    /// model ended. For engines where this is much cheaper than `prefill` plus `max_new` steps —
    /// a remote server answers it in one request instead of one per token. `None`: not
    /// offered; use `prefill` and `step` (the default, and right for in-process engines).
    fn generate_greedy(
        &self,
        _seq: SeqId,
        _tokens: &[u32],
        _max_new: usize,
    ) -> Option<Result<Vec<u32>>> {
        None
    }
}
