//! Arguments several subcommands share (models, relay settings, sampling) and turning them
//! into library values. Each is parsed once here so `relay`, `eval` and `serve` agree.
use anyhow::{Context, Result};
use clap::Args;
use relay_core::{PolicyKind, RelayConfig};
use relay_engine::chat::ChatTemplate;
use relay_engine::fetch::{default_models_dir, resolve_model_arg};
use relay_engine::model::{LoadedModel, ModelPair};
use relay_engine::remote::{RemoteConfig, RemoteEngine};
use relay_engine::sampling::SamplingParams;
use relay_engine::tokenizer::Tokenizer;
use relay_engine::LoadOptions;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Where models come from.
#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// Compute threads [default: all cores].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Engine for local models: `candle` (pure Rust) or `llama-cpp` (needs a build with
    /// `--features llama-cpp`). Remote (`http://`) models ignore it.
    #[arg(long, default_value = "candle", value_parser = ["candle", "llama-cpp"])]
    pub engine: String,
    /// Folder of the fetched pair, for `slm`/`llm` [default: $RELAYLLM_MODELS_DIR or the repo's models/].
    #[arg(long)]
    pub models_dir: Option<PathBuf>,
    /// Tokenizer (and chat template) for a model given as an `http://` URL: a GGUF file, a
    /// `tokenizer.json`, or a model folder. Without it a remote model of a pair borrows the
    /// other model's tokenizer and template.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Bearer key for a remote (`http://`) model.
    #[arg(long)]
    pub remote_api_key: Option<String>,
    /// Seconds one request to a remote model may take.
    #[arg(long, default_value_t = 60)]
    pub remote_timeout: u64,
    /// Relay read-ahead: while the SLM writes, the LLM reads what it wrote in the background,
    /// N tokens at a time, so that a call finds its context already read. For an LLM on
    /// hardware of its own (a GPU, another server); on CPU cores the two models share it only
    /// competes with the SLM. 0 = off.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub llm_read_ahead: usize,
}

impl ModelArgs {
    pub fn resolve(&self, arg: &str) -> PathBuf {
        resolve_model_arg(
            arg,
            &self.models_dir.clone().unwrap_or_else(default_models_dir),
        )
    }

    /// How local models are loaded (`--threads`, `--engine`).
    pub fn load_options(&self) -> Result<LoadOptions> {
        Ok(LoadOptions {
            threads: self.threads,
            engine: self.engine.parse().map_err(anyhow::Error::msg)?,
            ..LoadOptions::default()
        })
    }

    /// A model path (GGUF, safetensors folder, `slm`/`llm`) or an `http://` URL of an
    /// OpenAI-compatible server; a URL needs `--tokenizer` (see [`Self::load_pair`] otherwise).
    pub fn load(&self, arg: &str) -> Result<LoadedModel> {
        if is_remote(arg) {
            let source = self.tokenizer.as_deref().with_context(|| {
                format!("{arg} is a remote model: pass --tokenizer PATH (a GGUF or tokenizer.json)")
            })?;
            let tokenizer = Tokenizer::load_for_model(source)
                .with_context(|| format!("tokenizer {}", source.display()))?;
            let template = ChatTemplate::load_for_model(source).ok().map(Arc::new);
            return self.load_remote(arg, Arc::new(tokenizer), template);
        }
        let path = resolve_local_model(arg, self.models_dir.as_deref())?;
        LoadedModel::load(&path, self.load_options()?)
            .with_context(|| format!("loading {} on the {} engine", path.display(), self.engine))
    }

    /// Both models of a relay. A remote model's tokenizer and chat template come from
    /// `--tokenizer` when given, else from the other model of the pair (which must then be
    /// local): the usual setup is a local SLM and the same-family LLM behind a server.
    pub fn load_pair(&self, slm: &str, llm: &str) -> Result<ModelPair> {
        let mut pair = self.load_pair_models(slm, llm)?;
        pair.llm_read_ahead = self.llm_read_ahead;
        if pair.llm_read_ahead > 0
            && !relay_engine::model::same_vocabulary(&pair.slm.tokenizer, &pair.llm.tokenizer)
        {
            eprintln!(
                "warning: --llm-read-ahead is off: it needs the two models to share a tokenizer"
            );
        }
        Ok(pair)
    }

    fn load_pair_models(&self, slm: &str, llm: &str) -> Result<ModelPair> {
        if self.tokenizer.is_some() || (!is_remote(slm) && !is_remote(llm)) {
            return Ok(ModelPair::new(self.load(slm)?, self.load(llm)?));
        }
        match (is_remote(slm), is_remote(llm)) {
            (true, true) => anyhow::bail!("both models are remote: pass --tokenizer PATH"),
            (false, true) => {
                let slm = self.load(slm)?;
                let llm = self.load_remote(llm, slm.tokenizer.clone(), slm.template.clone())?;
                Ok(ModelPair::new(slm, llm))
            }
            _ => {
                let llm = self.load(llm)?;
                let slm = self.load_remote(slm, llm.tokenizer.clone(), llm.template.clone())?;
                Ok(ModelPair::new(slm, llm))
            }
        }
    }

    fn load_remote(
        &self,
        url: &str,
        tokenizer: Arc<Tokenizer>,
        template: Option<Arc<ChatTemplate>>,
    ) -> Result<LoadedModel> {
        let mut config = RemoteConfig::new(url);
        config.api_key = self.remote_api_key.clone();
        config.timeout = Duration::from_secs(self.remote_timeout.max(1));
        // The server's own n_vocab wins (it may pad past the tokenizer); this is the fallback.
        config.vocab_size = None;
        config.eos_token_ids = tokenizer.eos_ids().to_vec();
        let engine = match RemoteEngine::connect(config.clone()) {
            Err(relay_engine::EngineError::VocabSizeUnknown { .. }) => {
                config.vocab_size = Some(tokenizer.vocab_size());
                RemoteEngine::connect(config)
            }
            other => other,
        }
        .with_context(|| format!("connecting to {url}"))?;
        Ok(LoadedModel {
            path: PathBuf::from(url),
            engine: Arc::new(engine),
            tokenizer,
            template,
        })
    }
}

/// A local model argument as a path: `slm` / `llm` name the fetched pair (in `models_dir`, or
/// the default models folder), which must have been fetched; anything else is a path.
pub fn resolve_local_model(arg: &str, models_dir: Option<&std::path::Path>) -> Result<PathBuf> {
    let dir = models_dir.map_or_else(default_models_dir, |d| d.to_path_buf());
    let path = resolve_model_arg(arg, &dir);
    if !path.exists() && (arg == "slm" || arg == "llm") {
        anyhow::bail!(
            "{arg} not found at {} — run `relayllm fetch models` first",
            path.display()
        );
    }
    Ok(path)
}

/// An `http://`/`https://` model argument names a server, not a file.
pub fn is_remote(arg: &str) -> bool {
    arg.starts_with("http://") || arg.starts_with("https://")
}

/// How the relay decides when the LLM writes.
#[derive(Args, Clone, Debug)]
pub struct PolicyArgs {
    /// Who writes when: tag (the learned <call>n</call>), confidence (call when the SLM's top-1
    /// probability is below --threshold), random-token, random-query, slm-only, llm-only,
    /// teacher-free (tags kept, never served), fixed-n.
    #[arg(long, default_value = "tag")]
    pub policy: PolicyKind,
    /// confidence: call when the SLM's top-1 probability falls below this.
    #[arg(long, default_value_t = 0.5)]
    pub threshold: f32,
    /// confidence / random-token: tokens per call; fixed-n: the n that replaces the tag's.
    #[arg(long, default_value_t = 16)]
    pub call_tokens: u64,
    /// confidence: a call lasts until the LLM ends a line (at most --call-tokens).
    #[arg(long)]
    pub until_newline: bool,
    /// confidence: SLM tokens after a call before the next one may start.
    #[arg(long, default_value_t = 16)]
    pub cooldown: usize,
    /// random-token: chance of a call at each SLM token.
    #[arg(long, default_value_t = 0.01)]
    pub token_probability: f64,
    /// random-query: chance that the whole query goes to the LLM.
    #[arg(long, default_value_t = 0.5)]
    pub query_probability: f64,
    /// Most calls per response.
    #[arg(long, default_value_t = 4)]
    pub max_calls: usize,
    /// Most tokens one call may serve.
    #[arg(long, default_value_t = 512)]
    pub max_call_tokens: usize,
}

impl PolicyArgs {
    /// The relay settings, with `max_tokens` as the response budget and `seed` for the
    /// random policies.
    pub fn config(&self, max_tokens: usize, seed: u64) -> RelayConfig {
        let mut c = RelayConfig::default();
        c.limits.max_response_tokens = max_tokens;
        c.limits.max_calls = self.max_calls;
        c.limits.max_call_tokens = self.max_call_tokens;
        c.policy.kind = self.policy;
        c.policy.threshold = self.threshold;
        c.policy.call_tokens = self.call_tokens;
        c.policy.until_newline = self.until_newline;
        c.policy.cooldown = self.cooldown;
        c.policy.token_probability = self.token_probability;
        c.policy.query_probability = self.query_probability;
        c.policy.seed = seed;
        c
    }
}

/// Sampling settings.
#[derive(Args, Clone, Debug)]
pub struct SamplingArgs {
    /// Sampling temperature; 0 is greedy (the default, so runs reproduce).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches P.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Keep only the K most likely tokens (0 = all).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Random seed: the same seed gives the same tokens.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl SamplingArgs {
    pub fn params(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            seed: self.seed,
        }
    }
}
