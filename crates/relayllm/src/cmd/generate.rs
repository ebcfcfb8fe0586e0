//! `relayllm generate`: one model, streamed to stdout.
use anyhow::{Context, Result};
use clap::Args;
use relay_engine::chat::{ChatMessage, ChatTemplate};
use relay_engine::fetch::{default_models_dir, resolve_model_arg};
use relay_engine::generate::{generate, GenerateParams};
use relay_engine::sampling::SamplingParams;
use relay_engine::tokenizer::Tokenizer;
use relay_engine::{CandleEngine, LoadOptions};
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;

#[derive(Args)]
pub struct GenerateArgs {
    /// `slm` or `llm` (the fetched pair), a .gguf file, or a folder with config.json + safetensors.
    #[arg(long)]
    pub model: String,
    /// The prompt text (with --chat, the user message).
    #[arg(long, required_unless_present = "print_path")]
    pub prompt: Option<String>,
    /// Wrap the prompt in the model's chat template (a user turn plus the assistant header).
    #[arg(long)]
    pub chat: bool,
    /// System message for --chat [default: the template's own default].
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 is greedy (the default, so runs are reproducible).
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
    /// Stop when this text appears (repeatable); it is not printed.
    #[arg(long)]
    pub stop: Vec<String>,
    /// Print one JSON object {tokens, text, prompt, prompt_tokens, finish_reason} at the end
    /// instead of streaming text.
    #[arg(long)]
    pub json: bool,
    /// Compute threads [default: all cores].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Folder of the fetched pair [default: $RELAYLLM_MODELS_DIR or the repo's models/].
    #[arg(long)]
    pub models_dir: Option<PathBuf>,
    /// Print the resolved model path and exit.
    #[arg(long)]
    pub print_path: bool,
}

pub fn run(args: GenerateArgs) -> Result<()> {
    let models_dir = args.models_dir.clone().unwrap_or_else(default_models_dir);
    let path = resolve_model_arg(&args.model, &models_dir);
    if args.print_path {
        println!("{}", path.display());
        return Ok(());
    }
    if !path.exists() {
        anyhow::bail!(
            "model not found: {} (for `slm`/`llm`, run `relayllm fetch models` first)",
            path.display()
        );
    }
    let prompt = args.prompt.clone().unwrap_or_default();
    let opts = LoadOptions { threads: args.threads, ..LoadOptions::default() };
    let engine = CandleEngine::load(&path, opts).with_context(|| format!("loading {}", path.display()))?;
    let tokenizer = Tokenizer::load_for_model(&path).context("loading the tokenizer")?;
    let prompt_text = if args.chat {
        let template = ChatTemplate::load_for_model(&path).context("loading the chat template")?;
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(ChatMessage::system(system.clone()));
        }
        messages.push(ChatMessage::user(prompt));
        template.render(&messages, true)?
    } else {
        prompt
    };
    let prompt_tokens = tokenizer.encode(&prompt_text, false)?;
    let params = GenerateParams {
        max_tokens: args.max_tokens,
        sampling: SamplingParams { temperature: args.temperature, top_p: args.top_p, top_k: args.top_k, seed: args.seed },
        stop: args.stop.clone(),
    };
    let mut stdout = std::io::stdout().lock();
    let stream = !args.json;
    let out = generate(&engine, &tokenizer, &prompt_tokens, &params, |text| {
        if stream {
            let _ = stdout.write_all(text.as_bytes());
            let _ = stdout.flush();
        }
    })?;
    if args.json {
        let value = json!({
            "tokens": out.tokens,
            "text": out.text,
            "prompt": prompt_text,
            "prompt_tokens": prompt_tokens,
            "finish_reason": out.finish_reason,
        });
        writeln!(stdout, "{value}")?;
    } else {
        writeln!(stdout)?;
    }
    Ok(())
}
