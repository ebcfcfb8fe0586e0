//! `relayllm relay`: one prompt through the SLM and the LLM together.
use super::common::{ModelArgs, PolicyArgs, SamplingArgs};
use anyhow::Result;
use clap::{Args, ValueEnum};
use relay_core::{RelayTrace, Source};
use relay_engine::chat::ChatMessage;
use relay_engine::relay::{relay, LlmRetry, RelayEvent, RelayRequest};
use serde_json::json;
use std::io::{IsTerminal, Write};

#[derive(Args)]
pub struct RelayArgs {
    /// The small model that writes: `slm` (the fetched one), a .gguf file, or a safetensors folder.
    #[arg(long, default_value = "slm")]
    pub slm: String,
    /// The large model that writes when called: `llm`, a .gguf file, or a safetensors folder.
    #[arg(long, default_value = "llm")]
    pub llm: String,
    /// The prompt (with --chat, the user message).
    #[arg(long)]
    pub prompt: String,
    /// Wrap the prompt in each model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// System message for --chat.
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    /// Response budget: SLM and LLM tokens together.
    #[arg(long, default_value_t = 1024)]
    pub max_tokens: usize,
    #[command(flatten)]
    pub policy: PolicyArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// How to show which model wrote what: colour on a terminal, [[brackets]] around LLM
    /// text, or nothing. `auto` colours when stdout is a terminal.
    #[arg(long, value_enum, default_value_t = Mark::Auto)]
    pub mark: Mark,
    /// Print one JSON object {text, tokens, trace} instead of the streamed answer.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub models: ModelArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mark {
    Auto,
    Color,
    Brackets,
    None,
}

/// Writes streamed text, opening and closing the LLM's marks as the source changes.
pub struct SpanPrinter {
    mark: Mark,
    current: Source,
}

impl SpanPrinter {
    pub fn new(mark: Mark) -> Self {
        let mark = match mark {
            Mark::Auto if std::io::stdout().is_terminal() => Mark::Color,
            Mark::Auto => Mark::None,
            m => m,
        };
        Self {
            mark,
            current: Source::Slm,
        }
    }

    fn open(&self) -> &'static str {
        match self.mark {
            Mark::Color => "\x1b[1;33m",
            Mark::Brackets => "[[",
            _ => "",
        }
    }

    fn close(&self) -> &'static str {
        match self.mark {
            Mark::Color => "\x1b[0m",
            Mark::Brackets => "]]",
            _ => "",
        }
    }

    pub fn write(
        &mut self,
        out: &mut impl Write,
        text: &str,
        source: Source,
    ) -> std::io::Result<()> {
        if source != self.current {
            let mark = if source == Source::Llm {
                self.open()
            } else {
                self.close()
            };
            out.write_all(mark.as_bytes())?;
            self.current = source;
        }
        out.write_all(text.as_bytes())?;
        out.flush()
    }

    pub fn finish(&mut self, out: &mut impl Write) -> std::io::Result<()> {
        if self.current == Source::Llm {
            out.write_all(self.close().as_bytes())?;
            self.current = Source::Slm;
        }
        out.flush()
    }
}

/// The one-line summary of a relay response.
pub fn summary(trace: &RelayTrace) -> String {
    let served = trace.calls.iter().filter(|c| c.served > 0).count();
    let failed = trace.calls.iter().filter(|c| c.llm_error.is_some()).count();
    format!(
        "[{}] {} tokens (SLM {}, LLM {}) · {} call(s) served{} · call ratio {:.1}% · time SLM {:.1}s, LLM {:.1}s · LLM prefill {} tok · stop: {}",
        trace.policy,
        trace.tokens.slm + trace.tokens.llm,
        trace.tokens.slm,
        trace.tokens.llm,
        served,
        if failed > 0 { format!(", {failed} failed") } else { String::new() },
        trace.call_ratio * 100.0,
        trace.time_ms.slm / 1000.0,
        trace.time_ms.llm / 1000.0,
        trace.prefill_tokens.llm,
        trace.stop.map_or("running", |s| s.label()),
    )
}

pub fn run(args: RelayArgs) -> Result<()> {
    let pair = args.models.load_pair(&args.slm, &args.llm)?;
    let mut messages = Vec::new();
    if let Some(system) = &args.system {
        messages.push(ChatMessage::system(system.clone()));
    }
    messages.push(ChatMessage::user(args.prompt.clone()));
    let (slm_prompt, llm_prompt) = pair.prompt_ids(&messages, args.chat)?;
    let request = RelayRequest {
        slm_prompt,
        llm_prompt,
        config: args.policy.config(args.max_tokens, args.sampling.seed),
        sampling: args.sampling.params(),
        retry: LlmRetry::default(),
        cancel: None,
    };
    let mut stdout = std::io::stdout().lock();
    let mut printer = SpanPrinter::new(args.mark);
    let stream = !args.json;
    let out = relay(&pair.relay_pair(), &request, |event| {
        if let (true, RelayEvent::Text { text, source }) = (stream, event) {
            let _ = printer.write(&mut stdout, &text, source);
        }
    })?;
    if args.json {
        writeln!(
            stdout,
            "{}",
            json!({ "text": out.text, "tokens": out.tokens, "trace": out.trace,
                    "llm_read_ahead_tokens": out.llm_read_ahead_tokens })
        )?;
    } else {
        printer.finish(&mut stdout)?;
        writeln!(stdout)?;
        writeln!(stdout, "{}", summary(&out.trace))?;
    }
    Ok(())
}
