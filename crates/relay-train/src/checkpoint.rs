//! Checkpoints: one safetensors file per save, `checkpoint-<step>.safetensors`, holding the
//! trainable weights (`param.<name>`), the optimizer moments (`adam.m.<name>`, `adam.v.<name>`)
//! and, in the header, the step, the data position and the run's settings as JSON.
//!
//! A save writes a temporary file in the same folder, fsyncs it, renames it into place and
//! fsyncs the folder: a crash leaves either the old set of checkpoints or the new one, never a
//! half-written file under a checkpoint name. [`latest`] only ever reads complete files.
//!
//! [`save_adapter`] writes the same file without the optimizer moments, its weights in f16 if
//! asked: what `export` needs and nothing more, small enough to commit (a rank-16 LoRA of the
//! 0.5B is 35 MB in f32 with no moments, 106 MB with them, 18 MB in f16). [`load`] hands every
//! weight back in f32, whatever it was stored in. Such a file cannot be resumed from: the
//! optimizer says so by name when its moments are missing.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// Header key holding [`CheckpointMeta`] as JSON.
const META_KEY: &str = "relay_train";
const PREFIX: &str = "checkpoint-";
const SUFFIX: &str = ".safetensors";

/// What a checkpoint says besides its tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// Optimizer updates taken.
    pub step: u64,
    /// Examples consumed (across epochs): where the data stream resumes.
    pub position: u64,
    /// What the saved parameters are (LoRA pairs or full weights): what export needs.
    pub adapter: crate::model::Adapter,
    /// The run's settings (the trainer's own config type, as JSON).
    pub config: serde_json::Value,
}

/// A loaded checkpoint.
#[derive(Debug)]
pub struct Checkpoint {
    pub meta: CheckpointMeta,
    /// Trainable weights by parameter name.
    pub params: HashMap<String, Tensor>,
    /// Optimizer state by its own names (`adam.m.<param>`, `adam.v.<param>`).
    pub optimizer: HashMap<String, Tensor>,
}

/// The file name of the checkpoint at `step`.
pub fn file_name(step: u64) -> String {
    format!("{PREFIX}{step:08}{SUFFIX}")
}

/// Writes a checkpoint into `dir` atomically; returns its path.
pub fn save(
    dir: &Path,
    meta: &CheckpointMeta,
    params: &[(String, Tensor)],
    optimizer: &[(String, Tensor)],
) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(file_name(meta.step));
    let mut tensors: Vec<(String, Tensor)> = Vec::with_capacity(params.len() + optimizer.len());
    for (name, t) in params {
        tensors.push((format!("param.{name}"), t.contiguous()?));
    }
    for (name, t) in optimizer {
        tensors.push((name.clone(), t.contiguous()?));
    }
    let header = HashMap::from([(
        META_KEY.to_string(),
        serde_json::to_string(meta).expect("checkpoint meta serializes"),
    )]);
    let bytes = safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), Some(header))
        .map_err(|e| TrainError::Checkpoint {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    write_atomic(&path, &bytes)?;
    Ok(path)
}

/// Writes the weights of the checkpoint at `src` (a file, or a folder's newest) alone, stored as
/// `dtype` (f32 or f16), as `checkpoint-<step>.safetensors` in `out_dir` with the same meta;
/// returns the new file's path.
pub fn save_adapter(src: &Path, out_dir: &Path, dtype: DType) -> Result<PathBuf> {
    if !matches!(dtype, DType::F32 | DType::F16) {
        return Err(TrainError::InvalidInput(format!(
            "adapter weights are stored as f32 or f16, not {dtype:?}"
        )));
    }
    let src = resolve(src)?;
    let ckpt = load(&src)?;
    let mut params: Vec<(String, Tensor)> = ckpt
        .params
        .into_iter()
        .map(|(name, t)| Ok((name, t.to_dtype(dtype)?)))
        .collect::<Result<_>>()?;
    params.sort_by(|a, b| a.0.cmp(&b.0));
    save(out_dir, &ckpt.meta, &params, &[])
}

/// Writes `bytes` to `path` through a temporary file in the same folder (fsync, rename, fsync
/// the folder). On any error the temporary file is removed and `path` is untouched.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// [`write_atomic`] for content produced by a writer (`write` may seek, as GGUF's does).
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> std::io::Result<()>,
) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        write(&mut w)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        // The rename itself is durable only once the folder is synced.
        std::fs::File::open(dir)?.sync_all()
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(TrainError::Write {
            path: path.to_path_buf(),
            reason: e.to_string(),
        });
    }
    Ok(())
}

/// Reads a checkpoint file.
pub fn load(path: &Path) -> Result<Checkpoint> {
    let bad = |reason: String| TrainError::Checkpoint {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path)?;
    let (_, header) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let meta_json = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(META_KEY))
        .ok_or_else(|| {
            bad(format!(
                "no `{META_KEY}` entry in the header: not a relay-train checkpoint"
            ))
        })?;
    let meta: CheckpointMeta =
        serde_json::from_str(meta_json).map_err(|e| bad(format!("header: {e}")))?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .map_err(|e| bad(e.to_string()))?;
    let mut params = HashMap::new();
    let mut optimizer = HashMap::new();
    for (name, t) in tensors {
        match name.strip_prefix("param.") {
            Some(p) => {
                // Adapters saved by [`save_adapter`] may be f16; training and export read f32.
                params.insert(
                    p.to_string(),
                    t.to_dtype(DType::F32).map_err(|e| bad(e.to_string()))?,
                );
            }
            None => {
                optimizer.insert(name, t);
            }
        }
    }
    Ok(Checkpoint {
        meta,
        params,
        optimizer,
    })
}

/// Checkpoints in `dir`, oldest first, as (step, path).
pub fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if !path.is_file() {
            continue;
        }
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let step = name
            .strip_prefix(PREFIX)
            .and_then(|r| r.strip_suffix(SUFFIX))
            .and_then(|s| s.parse::<u64>().ok());
        if let Some(step) = step {
            out.push((step, path));
        }
    }
    out.sort();
    Ok(out)
}

/// The newest checkpoint in `dir`, if any.
pub fn latest(dir: &Path) -> Result<Option<PathBuf>> {
    Ok(list(dir)?.pop().map(|(_, p)| p))
}

/// A checkpoint path given as a file, or as a folder (its newest checkpoint).
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if path.is_dir() {
        latest(path)?.ok_or_else(|| TrainError::Checkpoint {
            path: path.to_path_buf(),
            reason: "no checkpoint-*.safetensors in this folder".into(),
        })
    } else if path.is_file() {
        Ok(path.to_path_buf())
    } else {
        Err(TrainError::Checkpoint {
            path: path.to_path_buf(),
            reason: "not found".into(),
        })
    }
}

/// Removes all but the newest `keep` checkpoints in `dir`.
pub fn prune(dir: &Path, keep: usize) -> Result<()> {
    let all = list(dir)?;
    let n = all.len().saturating_sub(keep);
    for (_, p) in &all[..n] {
        std::fs::remove_file(p)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(step: u64) -> CheckpointMeta {
        CheckpointMeta {
            step,
            position: step * 2,
            adapter: crate::model::Adapter::lora(4, 8.0),
            config: serde_json::json!({"lr": 0.1}),
        }
    }

    #[test]
    fn round_trips_and_latest_is_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let w = Tensor::new(&[1f32, 2.0, 3.0], &Device::Cpu).unwrap();
        for step in [2, 10, 4] {
            save(
                dir.path(),
                &meta(step),
                &[("a.lora_a".into(), (&w * step as f64).unwrap())],
                &[("adam.m.a.lora_a".into(), w.clone())],
            )
            .unwrap();
        }
        let p = latest(dir.path()).unwrap().unwrap();
        let c = load(&p).unwrap();
        assert_eq!(c.meta, meta(10));
        assert_eq!(
            c.params["a.lora_a"].to_vec1::<f32>().unwrap(),
            vec![10.0, 20.0, 30.0]
        );
        assert!(c.optimizer.contains_key("adam.m.a.lora_a"));
        prune(dir.path(), 2).unwrap();
        let steps: Vec<u64> = list(dir.path()).unwrap().iter().map(|x| x.0).collect();
        assert_eq!(steps, vec![4, 10]);
    }

    #[test]
    fn an_adapter_keeps_the_weights_in_f16_and_drops_the_moments() {
        let dir = tempfile::tempdir().unwrap();
        let w = Tensor::new(&[1f32, 0.1, -3.25, 1e-3], &Device::Cpu).unwrap();
        save(
            dir.path(),
            &meta(7),
            &[("a.lora_a".into(), w.clone())],
            &[("adam.m.a.lora_a".into(), w.clone())],
        )
        .unwrap();
        let out = dir.path().join("adapter");
        let p = save_adapter(dir.path(), &out, DType::F16).unwrap();
        assert_eq!(p, out.join(file_name(7)));
        let c = load(&p).unwrap();
        assert_eq!(c.meta, meta(7));
        assert!(c.optimizer.is_empty(), "{:?}", c.optimizer.keys());
        let got = c.params["a.lora_a"].to_vec1::<f32>().unwrap();
        // The nearest f16s (IEEE binary16) of 0.1 and 1e-3; 1 and -3.25 are exact.
        assert_eq!(got, vec![1.0, 0.099975586, -3.25, 0.0010004044]);
        assert_ne!(got, w.to_vec1::<f32>().unwrap(), "0.1 is not an f16");
        // 2 bytes a weight, not 4 + 4 + 4.
        let stored = std::fs::metadata(&p).unwrap().len();
        let full = std::fs::metadata(dir.path().join(file_name(7)))
            .unwrap()
            .len();
        assert!(stored < full, "{stored} >= {full}");
        assert!(save_adapter(dir.path(), &out, DType::BF16).is_err());
    }

    #[test]
    fn a_failed_save_leaves_no_partial_file_and_keeps_the_old_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let w = Tensor::new(&[1f32], &Device::Cpu).unwrap();
        save(dir.path(), &meta(1), &[("x".into(), w.clone())], &[]).unwrap();
        // The rename onto a non-empty folder of the target's name fails after the temp file
        // was fully written: the failure the atomic write has to clean up after.
        let blocker = dir.path().join(file_name(2));
        std::fs::create_dir(&blocker).unwrap();
        std::fs::write(blocker.join("keep"), b"x").unwrap();
        let err = save(dir.path(), &meta(2), &[("x".into(), w)], &[]).unwrap_err();
        assert!(matches!(err, TrainError::Write { .. }), "{err}");
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            !names.iter().any(|n| n.contains(".tmp")),
            "temp file left: {names:?}"
        );
        // A stray temp file (a crash mid-write) is never taken for a checkpoint.
        std::fs::write(
            dir.path().join(".checkpoint-00000003.safetensors.tmp-1"),
            b"half",
        )
        .unwrap();
        let newest = latest(dir.path()).unwrap().unwrap();
        assert_eq!(load(&newest).unwrap().meta.step, 1);
    }
}
