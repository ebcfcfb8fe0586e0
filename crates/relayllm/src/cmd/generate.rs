//! `relayllm generate`: one model, streamed to stdout.
use anyhow::Result;
use clap::Args;

#[derive(Args)]
pub struct GenerateArgs {}

pub fn run(_args: GenerateArgs) -> Result<()> {
    anyhow::bail!("not wired yet")
}
