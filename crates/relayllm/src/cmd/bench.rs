//! `relayllm bench`: speed against a named baseline measured in the same run.
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use relay_engine::candle::bench::bench_decode;
use relay_engine::fetch::{default_models_dir, resolve_model_arg};
use relay_engine::{EngineKind, LoadOptions};
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
    /// Relay overhead on the real pair: relay wall time against the time its SLM and LLM
    /// tokens take decoded alone (each model replays exactly its own tokens, one step each at
    /// their positions in the answer, plus the SLM's prompt prefill), and the LLM prefill the KV reuse saves against re-sending
    /// the whole context at every call (the reference implementation's way).
    Relay(RelayBenchArgs),
    /// Continuous batching: aggregate decode throughput of --concurrency requests running
    /// at once through the batcher (as `serve` and `eval --concurrency` run them) against the
    /// same requests one at a time on the same engine.
    Batch(BatchBenchArgs),
    /// One LoRA training step (forward, backward, AdamW) over --tokens tokens of a text: each
    /// part timed, tokens/s, peak memory. `make bench-train` runs it beside PyTorch
    /// (transformers + peft) on the same GGUF, text, LoRA and threads.
    Train(TrainBenchArgs),
}

#[derive(Args)]
pub struct TrainBenchArgs {
    /// `slm`, `llm`, a .gguf file, or a safetensors folder.
    #[arg(long, default_value = "slm")]
    pub model: String,
    /// Tokens per step (the text is repeated until it has enough).
    #[arg(long, default_value_t = 600)]
    pub tokens: usize,
    /// LoRA rank on all seven projections (alpha = 2 × rank, as `train sft` defaults).
    #[arg(long, default_value_t = 16)]
    pub lora_rank: usize,
    /// Compute threads [default: all cores].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Timed steps (medians are reported); one untimed warm-up step comes first.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// The text to train on [default: a built-in worked solution].
    #[arg(long)]
    pub text_file: Option<PathBuf>,
    /// Compute the gradients with candle's autograd over the written-out forward (the
    /// trainer's path before the hand-written LoRA pass; same values and gradients).
    #[arg(long)]
    pub autograd: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Folder of the fetched pair [default: $RELAYLLM_MODELS_DIR or the repo's models/].
    #[arg(long)]
    pub models_dir: Option<PathBuf>,
}

#[derive(Args)]
pub struct BatchBenchArgs {
    /// `slm`, `llm`, a .gguf file, or a safetensors folder.
    #[arg(long, default_value = "slm")]
    pub model: String,
    /// Requests at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Tokens each request decodes (greedy, EOS ignored so every request does the same work).
    #[arg(long, default_value_t = 128)]
    pub tokens: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub models: super::common::ModelArgs,
}

#[derive(Args)]
pub struct RelayBenchArgs {
    #[arg(long, default_value = "slm")]
    pub slm: String,
    #[arg(long, default_value = "llm")]
    pub llm: String,
    /// JSONL with a `problem` field; the first --problems are answered.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// How many problems.
    #[arg(long, default_value_t = 3)]
    pub problems: usize,
    /// Response budget per problem.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    #[command(flatten)]
    pub policy: super::common::PolicyArgs,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub models: super::common::ModelArgs,
}

#[derive(Args)]
pub struct DecodeArgs {
    /// `slm`, `llm` (the fetched pair), a .gguf file, or a safetensors folder.
    #[arg(long)]
    pub model: String,
    /// Engine to measure (`llama-cpp` needs a build with the `llama-cpp` feature).
    #[arg(long, default_value = "candle", value_parser = ["candle", "llama-cpp"])]
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
        BenchCommand::Relay(args) => relay_bench(args),
        BenchCommand::Batch(args) => batch_bench(args),
        BenchCommand::Train(args) => train_bench(args),
    }
}

/// llama-bench's figures for the same file: (prefill tok/s, decode tok/s), averages of its runs.
fn llama_bench(bin: &Path, model: &Path, threads: usize, args: &DecodeArgs) -> Result<(f64, f64)> {
    let out = Command::new(bin)
        .arg("-m")
        .arg(model)
        .args(["-t", &threads.to_string()])
        .args([
            "-p",
            &args.prompt_tokens.to_string(),
            "-n",
            &args.gen_tokens.to_string(),
        ])
        .args(["-r", &args.runs.max(1).to_string(), "-o", "json"])
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "llama-bench failed: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
    }
    let rows: Vec<serde_json::Value> =
        serde_json::from_slice(&out.stdout).context("llama-bench printed no JSON array")?;
    let pick = |prompt: bool| -> Result<f64> {
        rows.iter()
            .find(|r| {
                let n_prompt = r["n_prompt"].as_u64().unwrap_or(0);
                let n_gen = r["n_gen"].as_u64().unwrap_or(0);
                if prompt {
                    n_prompt > 0 && n_gen == 0
                } else {
                    n_gen > 0 && n_prompt == 0
                }
            })
            .and_then(|r| r["avg_ts"].as_f64())
            .context("llama-bench output lacks a prompt or generation row")
    };
    Ok((pick(true)?, pick(false)?))
}

fn decode(args: DecodeArgs) -> Result<()> {
    let models_dir = args.models_dir.clone().unwrap_or_else(default_models_dir);
    let path = resolve_model_arg(&args.model, &models_dir);
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let engine_kind: EngineKind = args.engine.parse().map_err(anyhow::Error::msg)?;
    let opts = LoadOptions {
        threads: Some(threads),
        requantize: !args.no_requantize,
        engine: engine_kind,
        ..LoadOptions::default()
    };
    let engine = relay_engine::model::load_engine(&path, opts)
        .with_context(|| format!("loading {}", path.display()))?;
    if !args.json {
        eprintln!(
            "measuring {} ({} threads, {} runs)...",
            path.display(),
            threads,
            args.runs
        );
    }
    let ours = bench_decode(
        engine.as_ref(),
        args.prompt_tokens,
        args.gen_tokens,
        args.runs,
    )?;
    drop(engine); // free its memory before llama.cpp maps the same file
    let theirs = match &args.llama_bench {
        Some(bin) => Some(llama_bench(bin, &path, threads, &args)?),
        None => None,
    };
    let settings = engine_settings(engine_kind);
    let mut report = json!({
        "model": path.display().to_string(),
        "engine": args.engine,
        "engine_settings": settings,
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
    let settings = settings.map(|s| format!("; {s}")).unwrap_or_default();
    println!(
        "{} [{}; {} threads{settings}]",
        path.display(),
        args.engine,
        threads
    );
    println!(
        "  prefill {:8.1} tok/s   decode {:6.1} tok/s   (median of {})",
        ours.prefill_tps, ours.decode_tps, ours.runs
    );
    if let Some((prefill, decode)) = theirs {
        println!(
            "  llama-bench prefill {:8.1} tok/s   decode {:6.1} tok/s",
            prefill, decode
        );
        println!(
            "  ratio (ours / llama.cpp): prefill {:.2}x   decode {:.2}x",
            ours.prefill_tps / prefill,
            ours.decode_tps / decode
        );
    }
    Ok(())
}

/// Settings that change what the engine measures, where it has any (the llama.cpp engine's
/// KV cache type and flash attention, set through the environment).
fn engine_settings(kind: EngineKind) -> Option<String> {
    #[cfg(feature = "llama-cpp")]
    if kind == EngineKind::LlamaCpp {
        return Some(relay_engine::llama_cpp::cache_settings());
    }
    let _ = kind;
    None
}

const BENCH_PROMPTS: [&str; 3] = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much did she earn?",
    "Betty is saving money for a new wallet which costs $100. Betty has only half of the money she needs. Her parents decided to give her $15 for that purpose, and her grandparents twice as much as her parents. How much more money does Betty need to buy the wallet?",
];

/// Seconds per decoded token of `engine` alone: prefill `prompt`, decode `n` greedy tokens.
fn solo_decode_seconds_per_token(
    engine: &dyn relay_engine::Engine,
    prompt: &[u32],
    n: usize,
) -> Result<f64> {
    let seq = engine.create_sequence()?;
    let mut logits = engine.prefill(seq, prompt)?;
    let t = std::time::Instant::now();
    for _ in 0..n {
        let tok = relay_engine::sampling::argmax(&logits) as u32;
        logits = engine
            .step(&[(seq, tok)])?
            .pop()
            .context("step returned nothing")?;
    }
    let per = t.elapsed().as_secs_f64() / n.max(1) as f64;
    engine.free(seq)?;
    Ok(per)
}

fn relay_bench(args: RelayBenchArgs) -> Result<()> {
    use relay_engine::chat::ChatMessage;
    use relay_engine::relay::{relay, LlmRetry, RelayRequest};
    let pair = args.models.load_pair(&args.slm, &args.llm)?;
    let problems: Vec<String> = match &args.data {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading {}", path.display()))?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .take(args.problems)
            .map(|l| -> Result<String> {
                let v: serde_json::Value = serde_json::from_str(l)?;
                Ok(v["problem"]
                    .as_str()
                    .context("a line lacks `problem`")?
                    .to_string())
            })
            .collect::<Result<_>>()?,
        None => BENCH_PROMPTS
            .iter()
            .take(args.problems)
            .map(|s| s.to_string())
            .collect(),
    };
    let relay_pair = pair.relay_pair();
    let (mut wall, mut baseline, mut short_baseline) = (0.0f64, 0.0f64, 0.0f64);
    let (mut llm_prefill_s, mut slm_prefill_s) = (0.0f64, 0.0f64);
    // Measured split of the relay's wall time (the trace's per-model clocks) against the
    // baseline's per-model parts.
    let (mut slm_in_relay, mut llm_in_relay, mut slm_alone, mut llm_alone) =
        (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    let (mut slm_tokens, mut llm_tokens, mut ours_prefill, mut resend_prefill, mut calls) =
        (0, 0, 0, 0, 0);
    let mut read_ahead = 0;
    for (i, problem) in problems.iter().enumerate() {
        let messages = [ChatMessage::user(format!(
            "{problem}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
        ))];
        let (slm_prompt, llm_prompt) = pair.prompt_ids(&messages, true)?;
        let request = RelayRequest {
            slm_prompt: slm_prompt.clone(),
            llm_prompt: llm_prompt.clone(),
            config: args.policy.config(args.max_tokens, i as u64),
            sampling: relay_engine::sampling::SamplingParams::greedy(),
            retry: LlmRetry::default(),
            cancel: None,
        };
        let t = std::time::Instant::now();
        let out = relay(&relay_pair, &request, |_| {})?;
        let w = t.elapsed().as_secs_f64();
        let tr = &out.trace;
        // The same work done by each model alone: its prompt prefill plus its tokens decoded
        // at its own solo speed (measured now, on the same machine state).
        let slm_per = solo_decode_seconds_per_token(pair.slm.engine.as_ref(), &slm_prompt, 32)?;
        let llm_per = solo_decode_seconds_per_token(pair.llm.engine.as_ref(), &llm_prompt, 32)?;
        let t = std::time::Instant::now();
        let s = pair.slm.engine.create_sequence()?;
        pair.slm.engine.prefill(s, &slm_prompt)?;
        pair.slm.engine.free(s)?;
        let slm_prompt_s = t.elapsed().as_secs_f64();
        // Prefill speed of each model on a prompt-sized chunk, to split the overhead.
        let t = std::time::Instant::now();
        let s = pair.llm.engine.create_sequence()?;
        pair.llm.engine.prefill(s, &llm_prompt)?;
        pair.llm.engine.free(s)?;
        let llm_prefill_per = t.elapsed().as_secs_f64() / llm_prompt.len().max(1) as f64;
        let slm_prefill_per = slm_prompt_s / slm_prompt.len().max(1) as f64;
        llm_prefill_s += tr.prefill_tokens.llm as f64 * llm_prefill_per;
        slm_prefill_s +=
            tr.prefill_tokens.slm.saturating_sub(slm_prompt.len()) as f64 * slm_prefill_per;
        let short_context =
            slm_prompt_s + tr.tokens.slm as f64 * slm_per + tr.tokens.llm as f64 * llm_per;
        // The baseline: each model decoding exactly its own tokens, one step each, at the
        // positions they hold in the answer (attention there costs what it costs in the
        // relay). Needs one vocabulary: the response ids are then both models' ids.
        let b = if relay_pair.llm_tokenizer.is_none() {
            let slm_s =
                replay_decode_seconds(pair.slm.engine.as_ref(), &slm_prompt, &out.tokens, |i| {
                    out.sources[i] == relay_core::Source::Slm
                })?;
            let llm_s =
                replay_decode_seconds(pair.llm.engine.as_ref(), &llm_prompt, &out.tokens, |i| {
                    out.sources[i] == relay_core::Source::Llm
                })?;
            slm_alone += slm_prompt_s + slm_s;
            llm_alone += llm_s;
            slm_prompt_s + slm_s + llm_s
        } else {
            short_context
        };
        short_baseline += short_context;
        if !args.json {
            eprintln!(
                "problem {}: relay {:.2}s vs decoded alone {:.2}s ({:.3}x) · SLM {} + LLM {} tokens, {} calls, LLM prefill {} vs re-sending {}",
                i + 1, w, b, w / b, tr.tokens.slm, tr.tokens.llm, tr.calls.len(), tr.prefill_tokens.llm,
                out.llm_context_at_calls.iter().sum::<usize>()
            );
        }
        wall += w;
        baseline += b;
        slm_in_relay += tr.time_ms.slm / 1000.0;
        llm_in_relay += tr.time_ms.llm / 1000.0;
        slm_tokens += tr.tokens.slm;
        llm_tokens += tr.tokens.llm;
        calls += tr.calls.len();
        ours_prefill += tr.prefill_tokens.llm;
        read_ahead += out.llm_read_ahead_tokens;
        resend_prefill += out.llm_context_at_calls.iter().sum::<usize>();
    }
    let total = (slm_tokens + llm_tokens).max(1);
    let report = json!({
        "policy": args.policy.policy,
        "problems": problems.len(),
        "relay_wall_s": wall,
        "decoded_alone_s": baseline,
        // The older estimate: each model's per-token speed just after the prompt, times its
        // tokens (cheaper attention than deep in an answer, so it understates the baseline).
        "decoded_alone_short_context_s": short_baseline,
        "overhead_ratio": wall / baseline.max(1e-9),
        "slm_tokens": slm_tokens,
        "llm_tokens": llm_tokens,
        "call_ratio": llm_tokens as f64 / total as f64,
        "calls": calls,
        "llm_prefill_tokens": ours_prefill,
        // Of those, read in the background while the SLM wrote (--llm-read-ahead).
        "llm_read_ahead_tokens": read_ahead,
        "resend_prefill_tokens": resend_prefill,
        "prefill_saving_ratio": resend_prefill as f64 / ours_prefill.max(1) as f64,
        // Where the overhead goes (estimates from each model's measured prefill speed): the
        // LLM reading the context at its calls, the SLM reading the LLM's tokens, the rest.
        "llm_context_prefill_s": llm_prefill_s,
        "slm_prefill_of_llm_tokens_s": slm_prefill_s,
        "other_overhead_s": wall - baseline - llm_prefill_s - slm_prefill_s,
        "overhead_ratio_without_llm_prefill": (wall - llm_prefill_s) / baseline.max(1e-9),
        // Measured, not estimated: time inside each model's engine calls during the relay,
        // the same model's share of the baseline (0 when the pair has two vocabularies, where
        // the baseline is the short-context estimate), and the relay loop's own time
        // (sampling, policy, detokenizing) outside both engines.
        "measured": {
            "slm_in_relay_s": slm_in_relay,
            "slm_alone_s": slm_alone,
            "llm_in_relay_s": llm_in_relay,
            "llm_alone_s": llm_alone,
            "loop_s": wall - slm_in_relay - llm_in_relay,
        },
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "relay overhead: {:.3}x the time of its tokens decoded alone ({:.1}s vs {:.1}s); call ratio {:.1}%",
            wall / baseline.max(1e-9), wall, baseline, 100.0 * llm_tokens as f64 / total as f64
        );
        println!(
            "overhead {:.1}s: LLM reading the context {:.1}s, SLM reading the LLM's tokens {:.1}s, other {:.1}s (estimates from measured prefill speeds)",
            wall - baseline,
            llm_prefill_s,
            slm_prefill_s,
            wall - baseline - llm_prefill_s - slm_prefill_s
        );
        if slm_alone > 0.0 {
            println!(
                "measured: SLM {:.1}s in the relay vs {:.1}s alone, LLM {:.1}s vs {:.1}s alone, relay loop outside both {:.1}s",
                slm_in_relay, slm_alone, llm_in_relay, llm_alone, wall - slm_in_relay - llm_in_relay
            );
        }
        println!(
            "LLM prefill: {} tokens vs {} re-sending the context at each of {} calls ({:.1}x less); {} read ahead",
            ours_prefill,
            resend_prefill,
            calls,
            resend_prefill as f64 / ours_prefill.max(1) as f64,
            read_ahead
        );
    }
    Ok(())
}

/// Seconds `engine` spends producing the response tokens `mine` picks, one decode step each,
/// at their real positions after `prompt`. Every other token reaches the cache by an untimed
/// prefill, as if it had always been there; the prompt too (its prefill is counted apart).
fn replay_decode_seconds(
    engine: &dyn relay_engine::Engine,
    prompt: &[u32],
    tokens: &[u32],
    mine: impl Fn(usize) -> bool,
) -> Result<f64> {
    let (&last, head) = prompt.split_last().context("empty prompt")?;
    let seq = engine.create_sequence()?;
    if !head.is_empty() {
        engine.prefill(seq, head)?;
    }
    // Tokens not yet in the cache; producing the next token steps on the last of them.
    let mut pending = vec![last];
    let mut total = 0.0;
    for (i, &t) in tokens.iter().enumerate() {
        if mine(i) {
            let (&feed, rest) = pending.split_last().context("nothing to step on")?;
            if !rest.is_empty() {
                engine.prefill(seq, rest)?;
            }
            let t0 = std::time::Instant::now();
            engine.step(&[(seq, feed)])?;
            total += t0.elapsed().as_secs_f64();
            pending.clear();
        }
        pending.push(t);
    }
    engine.free(seq)?;
    Ok(total)
}

/// Decodes `tokens` greedy tokens after `prompt` one step at a time (a request's decode loop),
/// never stopping at EOS.
fn decode_request(engine: &dyn relay_engine::Engine, prompt: &[u32], tokens: usize) -> Result<()> {
    let seq = engine.create_sequence()?;
    let mut logits = engine.prefill(seq, prompt)?;
    for _ in 0..tokens {
        let id = relay_engine::sampling::argmax(&logits) as u32;
        logits = engine
            .step(&[(seq, id)])?
            .pop()
            .context("step returned nothing")?;
    }
    engine.free(seq)?;
    Ok(())
}

fn batch_bench(args: BatchBenchArgs) -> Result<()> {
    use relay_engine::batching::{BatchingEngine, DEFAULT_JOIN_WINDOW};
    use relay_engine::chat::ChatMessage;
    anyhow::ensure!(
        args.concurrency >= 1 && args.tokens >= 1,
        "--concurrency and --tokens must be at least 1"
    );
    let model = args.models.load(&args.model)?;
    let prompts: Vec<Vec<u32>> = (0..args.concurrency)
        .map(|i| {
            let problem = BENCH_PROMPTS[i % BENCH_PROMPTS.len()];
            model.prompt_ids(
                &[ChatMessage::user(format!("Request {i}. {problem}"))],
                true,
            )
        })
        .collect::<relay_engine::Result<_>>()?;
    let plain = model.engine.clone();
    let t = std::time::Instant::now();
    for p in &prompts {
        decode_request(plain.as_ref(), p, args.tokens)?;
    }
    let one_at_a_time_s = t.elapsed().as_secs_f64();

    let batcher = BatchingEngine::new(plain.clone(), DEFAULT_JOIN_WINDOW);
    let t = std::time::Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = prompts
            .iter()
            .map(|p| s.spawn(|| decode_request(&batcher, p, args.tokens)))
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("a request thread panicked"))??;
        }
        Ok(())
    })?;
    let together_s = t.elapsed().as_secs_f64();
    let stats = batcher.stats();
    let total = (args.concurrency * args.tokens) as f64;
    let report = json!({
        "model": model.path.display().to_string(),
        "concurrency": args.concurrency,
        "tokens_per_request": args.tokens,
        "one_at_a_time_s": one_at_a_time_s,
        "one_at_a_time_tps": total / one_at_a_time_s,
        "batched_s": together_s,
        "batched_tps": total / together_s,
        "throughput_ratio": one_at_a_time_s / together_s,
        "mean_batch": stats.steps as f64 / stats.batches.max(1) as f64,
        "max_batch": stats.max_batch,
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "{} requests × {} tokens: one at a time {:.1} tok/s ({:.1}s), batched {:.1} tok/s ({:.1}s): {:.2}x; mean batch {:.1}",
            args.concurrency, args.tokens, total / one_at_a_time_s, one_at_a_time_s,
            total / together_s, together_s, one_at_a_time_s / together_s,
            stats.steps as f64 / stats.batches.max(1) as f64
        );
    }
    Ok(())
}

/// A worked solution, the default text of `bench train`.
const TRAIN_BENCH_TEXT: &str = "Let's solve the problem step by step. We have 3 apples and buy \
    5 more, so in total we have 3 + 5 = 8 apples. Then we give away half of them, which is \
    8 / 2 = 4 apples, and we are left with 8 - 4 = 4 apples. ";

fn train_bench(args: TrainBenchArgs) -> Result<()> {
    use relay_train::bench::{median, peak_rss_mib, StepBench};
    use relay_train::{Adapter, TrainModel};
    if args.runs == 0 || args.tokens < 2 || args.lora_rank == 0 {
        bail!("--runs and --lora-rank must be at least 1, --tokens at least 2");
    }
    super::train::set_threads(args.threads);
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let models_dir = args.models_dir.clone().unwrap_or_else(default_models_dir);
    let path = resolve_model_arg(&args.model, &models_dir);
    let text = match &args.text_file {
        Some(f) => {
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?
        }
        None => TRAIN_BENCH_TEXT.to_string(),
    };
    if text.trim().is_empty() {
        bail!("the text to train on is empty");
    }
    let rank = args.lora_rank;
    let mut model = TrainModel::load(&path, Adapter::lora(rank, 2.0 * rank as f64), 0)
        .with_context(|| format!("loading {}", path.display()))?;
    model.set_hand_written(!args.autograd);
    let implementation = if args.autograd {
        "relayllm-autograd"
    } else {
        "relayllm"
    };
    let once = model.tokenizer().encode(&text, false)?;
    if once.is_empty() {
        bail!("the text has no tokens");
    }
    let ids: Vec<u32> = once.iter().copied().cycle().take(args.tokens).collect();
    let mut bench = StepBench::new(&model, ids)?;
    if !args.json {
        eprintln!(
            "measuring one LoRA step of {} ({} tokens, rank {rank}, {threads} threads, {} runs + 1 warm-up)...",
            path.display(),
            bench.tokens(),
            args.runs
        );
    }
    bench.step()?; // warm-up: first-touch allocations, thread pools
    let mut runs = Vec::with_capacity(args.runs);
    let mut loss = 0.0;
    for _ in 0..args.runs {
        let (t, l) = bench.step()?;
        runs.push(t);
        loss = l;
    }
    let pick = |f: fn(&relay_train::bench::StepTiming) -> f64| {
        median(&runs.iter().map(f).collect::<Vec<_>>())
    };
    let step_s = pick(|t| t.step_s());
    let report = json!({
        "impl": implementation,
        "model": path.display().to_string(),
        "tokens": bench.tokens(),
        "threads": threads,
        "lora_rank": rank,
        "trainable_params": model.num_trainable(),
        "runs": args.runs,
        "forward_s": pick(|t| t.forward_s),
        "backward_s": pick(|t| t.backward_s),
        "optimizer_s": pick(|t| t.optimizer_s),
        "step_s": step_s,
        "tokens_per_s": bench.tokens() as f64 / step_s,
        "peak_rss_mib": peak_rss_mib(),
        "loss": loss,
    });
    if args.json {
        println!("{report}");
        return Ok(());
    }
    println!(
        "{} [{implementation}: LoRA r{rank}, {} tokens, {threads} threads]",
        path.display(),
        bench.tokens()
    );
    println!(
        "  step {step_s:.2} s = forward {:.2} + backward {:.2} + optimizer {:.3}   {:.1} tok/s   peak RSS {:.0} MiB   (median of {})",
        pick(|t| t.forward_s),
        pick(|t| t.backward_s),
        pick(|t| t.optimizer_s),
        bench.tokens() as f64 / step_s,
        peak_rss_mib(),
        args.runs
    );
    Ok(())
}
