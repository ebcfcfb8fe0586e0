//! `relayllm bench`: speed against a named baseline measured in the same run.
use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum BenchCommand {}

pub fn run(_cmd: BenchCommand) -> Result<()> {
    anyhow::bail!("not wired yet")
}
