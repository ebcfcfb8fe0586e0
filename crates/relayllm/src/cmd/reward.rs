//! `relayllm reward`: one group's rollouts on stdin, the difficulty-aware rewards on stdout —
//! the same function `/reward/group` and training use.
use anyhow::{Context, Result};
use clap::Args;
use relay_core::reward::{group_rewards, RewardKind, RhoKind, RolloutGroup};
use std::io::Read;

#[derive(Args)]
pub struct RewardArgs {
    /// difficulty (DESIGN.md's table, scenarios per group), simple (accuracy − ρ) or accuracy.
    #[arg(long, default_value = "difficulty")]
    pub reward: RewardKind,
    /// What ρ counts: requested (Σ min(n, 4096)) or served (LLM tokens written).
    #[arg(long, default_value = "requested")]
    pub rho: RhoKind,
}

pub fn run(args: RewardArgs) -> Result<()> {
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .context("reading stdin")?;
    let group: RolloutGroup = serde_json::from_str(&input).context(
        "stdin must be one group as JSON: {\"rollouts\": [{\"correct\": bool, \"calls\": [{\"requested_n\": int, \"served\": int}], \"response_tokens\": int}]}",
    )?;
    println!(
        "{}",
        serde_json::to_string(&group_rewards(&group, args.reward, args.rho))?
    );
    Ok(())
}
