//! A loaded model as callers use it: the engine with its tokenizer and chat template, and the
//! pair of them that a relay needs. One place that the CLI, the server and the eval runner
//! share, so a model path means the same thing everywhere.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::batching::BatchingEngine;
use crate::candle::{CandleEngine, EngineKind, LoadOptions, ModelConfig};
use crate::chat::{ChatMessage, ChatOptions, ChatTemplate, Prompt};
use crate::engine::Engine;
use crate::error::{EngineError, Result};
use crate::relay::RelayPair;
use crate::tokenizer::{SpecialTokens, Tokenizer};

/// An engine with the tokenizer and chat template that belong to it.
#[derive(Clone)]
pub struct LoadedModel {
    pub path: PathBuf,
    pub engine: Arc<dyn Engine>,
    pub tokenizer: Arc<Tokenizer>,
    /// `None` when the model ships no chat template (then `--chat` is an error).
    pub template: Option<Arc<ChatTemplate>>,
}

impl LoadedModel {
    /// Loads a `.gguf` file or a safetensors folder on the engine `opts.engine` names (the
    /// embedded candle engine by default).
    pub fn load(path: &Path, opts: LoadOptions) -> Result<Self> {
        if !path.exists() {
            return Err(EngineError::NotFound(path.to_path_buf()));
        }
        let engine = load_engine(path, opts)?;
        let tokenizer = Tokenizer::load_for_model(path)?;
        let template = match ChatTemplate::load_for_model(path) {
            Ok(t) => Some(Arc::new(t)),
            Err(e) => {
                tracing::debug!(error = %e, "no chat template for {}", path.display());
                None
            }
        };
        Ok(Self {
            path: path.to_path_buf(),
            engine,
            tokenizer: Arc::new(tokenizer),
            template,
        })
    }

    /// This model with new weights from `path` (a `.gguf` file or a safetensors folder, as
    /// `relayllm export` or `save_pretrained` write it), for a weight sync. Refused with
    /// [`EngineError::Incompatible`], before the weights are read, unless their shape is
    /// `shape` (this model's, read when it was loaded: the file may since have been
    /// overwritten); a tokenizer shipped with them must have this model's vocabulary. The
    /// tokenizer and chat template stay this model's own, so prompts mean the same ids before
    /// and after, and a folder of weights alone (`model.save_pretrained` without the
    /// tokenizer) is enough.
    pub fn with_weights_from(
        &self,
        path: &Path,
        opts: LoadOptions,
        shape: &ModelConfig,
    ) -> Result<Self> {
        let offered = crate::candle::read_model_config(path, &opts)?;
        let differences = shape.shape_differences(&offered);
        if !differences.is_empty() {
            return Err(EngineError::Incompatible(format!(
                "{} does not fit the model it would replace ({}; served vs offered): {}",
                path.display(),
                self.path.display(),
                differences.join(", ")
            )));
        }
        match Tokenizer::load_for_model(path) {
            Ok(t) if !same_vocabulary(&t, &self.tokenizer) => {
                return Err(EngineError::Incompatible(format!(
                    "{}'s tokenizer has another vocabulary ({} tokens) than the served model's \
                     ({} tokens, or the same count with other ids)",
                    path.display(),
                    t.vocab_size(),
                    self.tokenizer.vocab_size()
                )))
            }
            Ok(_) | Err(EngineError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        let engine = load_engine(path, opts)?;
        Ok(Self {
            path: path.to_path_buf(),
            engine,
            tokenizer: self.tokenizer.clone(),
            template: self.template.clone(),
        })
    }

    /// The prompt as the model should see it: the chat template applied to `messages` (with
    /// the assistant header) when `chat`, else the concatenated contents as plain text.
    pub fn render(&self, messages: &[ChatMessage], chat: bool) -> Result<String> {
        if !chat {
            return Ok(messages.iter().map(|m| m.content.as_str()).collect());
        }
        self.template()?.render(messages, true)
    }

    /// [`Self::render`] and its tokens. With `chat` only the template's markers are special
    /// tokens (message content is plain text, [`SpecialTokens::Template`]); without, special-
    /// token text in the contents becomes its ids ([`SpecialTokens::Parse`]: the caller writes
    /// the whole prompt, turn markers included).
    pub fn prompt(&self, messages: &[ChatMessage], chat: bool) -> Result<Prompt> {
        if !chat {
            let text = self.render(messages, false)?;
            let ids = self.tokenizer.encode(&text, false)?;
            return Ok(Prompt { text, ids });
        }
        let options = ChatOptions {
            add_generation_prompt: true,
            ..ChatOptions::default()
        };
        self.template()?.prompt(&self.tokenizer, messages, &options)
    }

    /// [`Self::prompt`]'s ids.
    pub fn prompt_ids(&self, messages: &[ChatMessage], chat: bool) -> Result<Vec<u32>> {
        Ok(self.prompt(messages, chat)?.ids)
    }

    fn template(&self) -> Result<&ChatTemplate> {
        self.template.as_deref().ok_or_else(|| {
            EngineError::InvalidInput(format!(
                "{} has no chat template; drop --chat",
                self.path.display()
            ))
        })
    }
}

/// The engine `opts.engine` names, on `path`.
pub fn load_engine(path: &Path, opts: LoadOptions) -> Result<Arc<dyn Engine>> {
    match opts.engine {
        EngineKind::Candle => Ok(Arc::new(CandleEngine::load(path, opts)?)),
        #[cfg(feature = "llama-cpp")]
        EngineKind::LlamaCpp => Ok(Arc::new(crate::llama_cpp::LlamaCppEngine::load(
            path, opts,
        )?)),
        #[cfg(not(feature = "llama-cpp"))]
        EngineKind::LlamaCpp => Err(EngineError::Unsupported(
            "the llama-cpp engine: this build lacks the `llama-cpp` cargo feature (build with \
             `cargo build --release -p relayllm --features llama-cpp`)"
                .into(),
        )),
    }
}

/// True when two tokenizers map every token to the same id (then ids pass between models).
pub fn same_vocabulary(a: &Tokenizer, b: &Tokenizer) -> bool {
    a.vocab_size() == b.vocab_size() && a.hf().get_vocab(true) == b.hf().get_vocab(true)
}

/// The SLM and LLM of a relay, each with its tokenizer and template.
#[derive(Clone)]
pub struct ModelPair {
    pub slm: LoadedModel,
    pub llm: LoadedModel,
    /// [`RelayPair::llm_read_ahead`] for the relays of this pair (0 = off).
    pub llm_read_ahead: usize,
}

impl ModelPair {
    pub fn new(slm: LoadedModel, llm: LoadedModel) -> Self {
        Self {
            slm,
            llm,
            llm_read_ahead: 0,
        }
    }

    /// What the relay loop needs; the tokenizers are shared when their vocabularies agree.
    pub fn relay_pair(&self) -> RelayPair {
        let shared = same_vocabulary(&self.slm.tokenizer, &self.llm.tokenizer);
        RelayPair {
            slm: self.slm.engine.clone(),
            llm: self.llm.engine.clone(),
            slm_tokenizer: self.slm.tokenizer.clone(),
            llm_tokenizer: (!shared).then(|| self.llm.tokenizer.clone()),
            llm_read_ahead: self.llm_read_ahead,
        }
    }

    /// Puts a [`BatchingEngine`] in front of each in-process engine, so that the decode steps
    /// of requests running at once are batched; returns the batchers by model name (for their
    /// statistics). Engines that continue in one go (remote servers) are left alone: the
    /// server behind them batches its own requests.
    pub fn batch_local_engines(
        &mut self,
        window: std::time::Duration,
    ) -> Vec<(&'static str, Arc<BatchingEngine>)> {
        let mut batchers: Vec<(&'static str, Arc<BatchingEngine>)> = Vec::new();
        let shared = Arc::ptr_eq(&self.slm.engine, &self.llm.engine);
        for (name, model) in [("slm", &mut self.slm), ("llm", &mut self.llm)] {
            if model.engine.continues_in_one_go() {
                continue;
            }
            // One engine in both slots (an SLM-only run) gets one batcher, not two.
            if let (true, Some((_, batcher))) = (shared, batchers.first()) {
                model.engine = batcher.clone();
                continue;
            }
            let batcher = Arc::new(BatchingEngine::new(model.engine.clone(), window));
            model.engine = batcher.clone();
            batchers.push((name, batcher));
        }
        batchers
    }

    /// The prompt in each model's own template and tokens: (SLM ids, LLM ids).
    pub fn prompt_ids(&self, messages: &[ChatMessage], chat: bool) -> Result<(Vec<u32>, Vec<u32>)> {
        Ok((
            self.slm.prompt_ids(messages, chat)?,
            self.llm.prompt_ids(messages, chat)?,
        ))
    }

    /// A raw text prompt in each model's tokens, special-token text read as `mode` says.
    pub fn text_prompt_ids(&self, text: &str, mode: SpecialTokens) -> Result<(Vec<u32>, Vec<u32>)> {
        Ok((
            self.slm.tokenizer.encode_with(text, mode)?,
            self.llm.tokenizer.encode_with(text, mode)?,
        ))
    }
}
