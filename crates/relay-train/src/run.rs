//! What every training run does around its loop, shared by SFT and GRPO: refuse to write over
//! a finished folder unless resuming, restore the newest checkpoint (when its settings match),
//! keep the step log in step with it, and save (then prune) checkpoints.

use std::path::{Path, PathBuf};

use candle_core::Tensor;

use crate::checkpoint::{self, CheckpointMeta};
use crate::error::{Result, TrainError};
use crate::model::TrainModel;
use crate::optim::AdamW;

/// Checkpoints a run keeps (the newest ones).
pub const KEEP_CHECKPOINTS: usize = 2;

/// Creates `out` and returns its newest checkpoint. A folder that holds checkpoints is an
/// error unless `resume`: a second run must not silently mix with the first.
pub fn prepare(out: &Path, resume: bool) -> Result<Option<PathBuf>> {
    std::fs::create_dir_all(out)?;
    let existing = checkpoint::latest(out)?;
    if existing.is_some() && !resume {
        return Err(TrainError::InvalidInput(format!(
            "{} already holds checkpoints: pass --resume to continue, or choose another --out",
            out.display()
        )));
    }
    Ok(existing)
}

/// Where a run starts: `(step, position, resumed_from)`. With a checkpoint and `resume`, the
/// checkpoint's settings must equal `pinned`; its weights and optimizer state are restored.
pub fn restore(
    existing: Option<&Path>,
    resume: bool,
    pinned: &serde_json::Value,
    model: &TrainModel,
    opt: &mut AdamW,
) -> Result<(u64, u64, Option<u64>)> {
    let Some(newest) = existing.filter(|_| resume) else {
        return Ok((0, 0, None));
    };
    let (path, c) = newest_readable(newest)?;
    let path = path.as_path();
    if &c.meta.config != pinned {
        return Err(TrainError::Resume {
            path: path.to_path_buf(),
            reason: format!(
                "settings differ from the checkpoint's:\n  checkpoint: {}\n  now:        {}",
                c.meta.config, pinned
            ),
        });
    }
    model.set_trainable(&c.params)?;
    opt.load_state(&c.optimizer, c.meta.step)?;
    Ok((c.meta.step, c.meta.position, Some(c.meta.step)))
}

/// The newest checkpoint that loads, from `newest` back through the older ones in its folder.
/// Saves are atomic, so a checkpoint that does not load was damaged afterwards (a disk error,
/// a truncated copy). When an older one loads, the damaged newer ones are renamed to
/// `<name>.corrupt` (kept for inspection, never read again) and the run goes on from the older
/// one with a warning. When none loads, nothing is renamed and the error names each one tried.
fn newest_readable(newest: &Path) -> Result<(PathBuf, checkpoint::Checkpoint)> {
    let dir = newest.parent().unwrap_or(Path::new("."));
    let mut tried: Vec<(PathBuf, TrainError)> = Vec::new();
    let mut candidates: Vec<PathBuf> = checkpoint::list(dir)?
        .into_iter()
        .map(|(_, p)| p)
        .filter(|p| p.as_path() <= newest)
        .collect();
    if candidates.last().map(PathBuf::as_path) != Some(newest) {
        candidates.push(newest.to_path_buf());
    }
    for path in candidates.into_iter().rev() {
        match checkpoint::load(&path) {
            Ok(c) => {
                for (bad, why) in &tried {
                    let aside = bad.with_extension("safetensors.corrupt");
                    std::fs::rename(bad, &aside)?;
                    tracing::warn!(
                        "checkpoint {} does not load ({why}); renamed to {} and resuming from {}",
                        bad.display(),
                        aside.display(),
                        path.display()
                    );
                }
                return Ok((path, c));
            }
            Err(e @ TrainError::Checkpoint { .. }) => tried.push((path, e)),
            Err(e) => return Err(e),
        }
    }
    let reasons: Vec<String> = tried.iter().map(|(_, e)| e.to_string()).collect();
    Err(TrainError::Resume {
        path: dir.to_path_buf(),
        reason: format!("no checkpoint there loads: {}", reasons.join("; ")),
    })
}

/// Saves the trainable weights and optimizer state atomically, then keeps only the newest
/// [`KEEP_CHECKPOINTS`].
pub fn save(out: &Path, meta: &CheckpointMeta, model: &TrainModel, opt: &AdamW) -> Result<PathBuf> {
    let params: Vec<(String, Tensor)> = model
        .trainable_named()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().clone()))
        .collect();
    let path = checkpoint::save(out, meta, &params, &opt.state())?;
    checkpoint::prune(out, KEEP_CHECKPOINTS)?;
    Ok(path)
}

/// A step log (JSONL with a `step` field) opened for appending: a fresh run starts it empty; a
/// resumed one keeps the lines up to its checkpoint's step, so the log matches the weights.
pub fn open_step_log(path: &Path, resumed_from: Option<u64>) -> Result<std::fs::File> {
    match resumed_from {
        Some(step) => {
            let old = std::fs::read_to_string(path).unwrap_or_default();
            let kept: String = old
                .lines()
                .filter(|l| {
                    serde_json::from_str::<serde_json::Value>(l)
                        .ok()
                        .and_then(|v| v.get("step")?.as_u64())
                        .is_some_and(|s| s <= step)
                })
                .map(|l| format!("{l}\n"))
                .collect();
            checkpoint::write_atomic(path, kept.as_bytes())?;
        }
        None => std::fs::write(path, b"")?,
    }
    Ok(std::fs::OpenOptions::new().append(true).open(path)?)
}
