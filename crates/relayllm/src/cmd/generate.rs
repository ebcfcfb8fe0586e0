//! `relayllm generate`: one model, streamed to stdout.
use super::common::{ModelArgs, SamplingArgs};
use anyhow::Result;
use clap::Args;
use relay_engine::chat::ChatMessage;
use relay_engine::generate::{generate, GenerateParams};
use serde_json::json;
use std::io::Write;

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
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Stop when this text appears (repeatable); it is not printed.
    #[arg(long)]
    pub stop: Vec<String>,
    /// Print one JSON object {tokens, text, prompt, prompt_tokens, finish_reason} at the end
    /// instead of streaming text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub models: ModelArgs,
    /// Print the resolved model path and exit.
    #[arg(long)]
    pub print_path: bool,
}

pub fn run(args: GenerateArgs) -> Result<()> {
    if args.print_path {
        println!("{}", args.models.resolve(&args.model).display());
        return Ok(());
    }
    let model = args.models.load(&args.model)?;
    let mut messages = Vec::new();
    if let Some(system) = &args.system {
        messages.push(ChatMessage::system(system.clone()));
    }
    messages.push(ChatMessage::user(args.prompt.clone().unwrap_or_default()));
    let prompt = model.prompt(&messages, args.chat)?;
    let (prompt_text, prompt_tokens) = (prompt.text, prompt.ids);
    let params = GenerateParams {
        max_tokens: args.max_tokens,
        sampling: args.sampling.params(),
        stop: args.stop.clone(),
    };
    let mut stdout = std::io::stdout().lock();
    let stream = !args.json;
    let out = generate(
        model.engine.as_ref(),
        &model.tokenizer,
        &prompt_tokens,
        &params,
        |text| {
            if stream {
                let _ = stdout.write_all(text.as_bytes());
                let _ = stdout.flush();
            }
        },
    )?;
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
