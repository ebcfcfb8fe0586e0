//! `relayllm bench`: speed against a named baseline measured in the same run.
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use relay_engine::candle::bench::bench_decode;
use relay_engine::fetch::{default_models_dir, resolve_model_arg};
use relay_engine::{CandleEngine, LoadOptions};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Prefill and decode tokens/s of one model (medians of several runs).
    ///
    /// With --llama-bench, runs llama.cpp's own benchmark on the same file with the same
    /// threads and prompt/generation lengths, and prints our/their ratios.
    Decode(DecodeArgs),
}

#[derive(Args)]
pub struct DecodeArgs {
    /// `slm`, `llm` (the fetched pair), a .gguf file, or a safetensors folder.
    #[arg(long)]
    pub model: String,
    /// Engine to measure.
    #[arg(long, default_value = "candle", value_parser = ["candle"])]
    pub engine: String,
    /// Compute threads [default: all cores].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Prompt length for the prefill measurement.
    #[arg(long, default_value_t = 128)]
    pub prompt_tokens: usize,
    /// Tokens decoded per run.
    #[arg(long, default_value_t = 64)]
    pub gen_tokens: usize,
    /// Timed runs (the median is reported); one untimed warm-up run comes first.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Path to llama.cpp's `llama-bench` binary, to measure the baseline in the same run.
    #[arg(long)]
    pub llama_bench: Option<PathBuf>,
    /// Keep GGUF quant types as stored instead of re-quantizing slow ones to Q8_0.
    #[arg(long)]
    pub no_requantize: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Folder of the fetched pair [default: $RELAYLLM_MODELS_DIR or the repo's models/].
    #[arg(long)]
    pub models_dir: Option<PathBuf>,
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Decode(args) => decode(args),
    }
}

/// llama-bench's figures for the same file: (prefill tok/s, decode tok/s), averages of its runs.
fn llama_bench(bin: &Path, model: &Path, threads: usize, args: &DecodeArgs) -> Result<(f64, f64)> {
    let out = Command::new(bin)
        .arg("-m")
        .arg(model)
        .args(["-t", &threads.to_string()])
        .args(["-p", &args.prompt_tokens.to_string(), "-n", &args.gen_tokens.to_string()])
        .args(["-r", &args.runs.max(1).to_string(), "-o", "json"])
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!("llama-bench failed: {}", String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or(""));
    }
    let rows: Vec<serde_json::Value> =
        serde_json::from_slice(&out.stdout).context("llama-bench printed no JSON array")?;
    let pick = |prompt: bool| -> Result<f64> {
        rows.iter()
            .find(|r| {
                let n_prompt = r["n_prompt"].as_u64().unwrap_or(0);
                let n_gen = r["n_gen"].as_u64().unwrap_or(0);
                if prompt { n_prompt > 0 && n_gen == 0 } else { n_gen > 0 && n_prompt == 0 }
            })
            .and_then(|r| r["avg_ts"].as_f64())
            .context("llama-bench output lacks a prompt or generation row")
    };
    Ok((pick(true)?, pick(false)?))
}

fn decode(args: DecodeArgs) -> Result<()> {
    let models_dir = args.models_dir.clone().unwrap_or_else(default_models_dir);
    let path = resolve_model_arg(&args.model, &models_dir);
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let opts = LoadOptions { threads: Some(threads), requantize: !args.no_requantize, ..LoadOptions::default() };
    let engine = CandleEngine::load(&path, opts).with_context(|| format!("loading {}", path.display()))?;
    if !args.json {
        eprintln!("measuring {} ({} threads, {} runs)...", path.display(), threads, args.runs);
    }
    let ours = bench_decode(&engine, args.prompt_tokens, args.gen_tokens, args.runs)?;
    drop(engine); // free its memory before llama.cpp maps the same file
    let theirs = match &args.llama_bench {
        Some(bin) => Some(llama_bench(bin, &path, threads, &args)?),
        None => None,
    };
    let mut report = json!({
        "model": path.display().to_string(),
        "engine": args.engine,
        "threads": threads,
        "prompt_tokens": ours.prompt_tokens,
        "gen_tokens": ours.gen_tokens,
        "runs": ours.runs,
        "prefill_tps": ours.prefill_tps,
        "decode_tps": ours.decode_tps,
    });
    if let Some((prefill, decode)) = theirs {
        report["llama_prefill_tps"] = json!(prefill);
        report["llama_decode_tps"] = json!(decode);
        report["prefill_ratio"] = json!(ours.prefill_tps / prefill);
        report["decode_ratio"] = json!(ours.decode_tps / decode);
    }
    if args.json {
        println!("{report}");
        return Ok(());
    }
    println!("{} [{}; {} threads]", path.display(), args.engine, threads);
    println!("  prefill {:8.1} tok/s   decode {:6.1} tok/s   (median of {})", ours.prefill_tps, ours.decode_tps, ours.runs);
    if let Some((prefill, decode)) = theirs {
        println!("  llama-bench prefill {:8.1} tok/s   decode {:6.1} tok/s", prefill, decode);
        println!(
            "  ratio (ours / llama.cpp): prefill {:.2}x   decode {:.2}x",
            ours.prefill_tps / prefill,
            ours.decode_tps / decode
        );
    }
    Ok(())
}
