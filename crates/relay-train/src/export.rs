//! Export: a trained model (LoRA merged into its base, or full weights) as a file the engine
//! and other tools load — an HF safetensors folder or a GGUF.
//!
//! A GGUF export keeps the base GGUF's metadata (architecture, tokenizer, chat template)
//! and rewrites only the tensors, 2-D weights as F16 (default) or Q8_0, vectors as F32. A
//! safetensors export writes f32 weights, `config.json` and the tokenizer files: copied from an
//! HF base, derived from the GGUF metadata otherwise.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use relay_engine::candle::{names, Arch};

use crate::checkpoint::{self, write_atomic, write_atomic_with};
use crate::error::{Result, TrainError};
use crate::model::TrainModel;

/// File format of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// A folder: `model.safetensors`, `config.json`, tokenizer files.
    Safetensors,
    /// One `.gguf` file; needs a GGUF base (its metadata carries the tokenizer).
    Gguf,
}

/// How to export.
#[derive(Debug, Clone, Copy)]
pub struct ExportOptions {
    pub format: ExportFormat,
    /// GGUF storage of 2-D weights: F16, Q8_0 or F32. A matrix whose rows do not split into
    /// whole blocks of the type falls back to F16.
    pub gguf_weights: GgmlDType,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            format: ExportFormat::Safetensors,
            gguf_weights: GgmlDType::F16,
        }
    }
}

/// Loads `base`, applies the checkpoint at `adapter` (a checkpoint file, or a training output
/// folder: its newest checkpoint), and writes the merged model to `out`.
pub fn export(base: &Path, adapter: &Path, out: &Path, opts: &ExportOptions) -> Result<PathBuf> {
    let ckpt_path = checkpoint::resolve(adapter)?;
    let ckpt = checkpoint::load(&ckpt_path)?;
    let model = TrainModel::load(base, ckpt.meta.adapter.clone(), 0)?;
    model
        .set_trainable(&ckpt.params)
        .map_err(|e| TrainError::Checkpoint {
            path: ckpt_path.clone(),
            reason: format!("does not fit the base {}: {e}", base.display()),
        })?;
    export_model(&model, out, opts)?;
    Ok(ckpt_path)
}

/// Writes `model` (current weights, LoRA merged) to `out`.
pub fn export_model(model: &TrainModel, out: &Path, opts: &ExportOptions) -> Result<()> {
    let tensors = model.merged_tensors()?;
    match opts.format {
        ExportFormat::Safetensors => write_safetensors_dir(model, tensors, out),
        ExportFormat::Gguf => write_gguf(model, tensors, out, opts.gguf_weights),
    }
}

fn write_safetensors_dir(
    model: &TrainModel,
    tensors: HashMap<String, Tensor>,
    out: &Path,
) -> Result<()> {
    std::fs::create_dir_all(out)?;
    let mut sorted: Vec<(&String, &Tensor)> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let bytes = safetensors::serialize(sorted, None).map_err(|e| TrainError::Write {
        path: out.join("model.safetensors"),
        reason: e.to_string(),
    })?;
    write_atomic(&out.join("model.safetensors"), &bytes)?;

    let base = model.source();
    if base.is_dir() {
        // An HF base: its config and tokenizer files describe the export as well.
        for entry in std::fs::read_dir(base)? {
            let p = entry?.path();
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            let Some(name) = name else { continue };
            let is_weights =
                name.ends_with(".safetensors") || name.ends_with(".safetensors.index.json");
            if p.is_file()
                && !is_weights
                && (name.ends_with(".json") || name.ends_with(".txt") || name.ends_with(".jinja"))
            {
                std::fs::copy(&p, out.join(&name))?;
            }
        }
        return Ok(());
    }
    // A GGUF base: derive the HF files from what the GGUF said.
    let cfg = model.config();
    let eos = model.eos_token_ids();
    let (model_type, class) = match cfg.arch {
        Arch::Qwen2 => ("qwen2", "Qwen2ForCausalLM"),
        Arch::Qwen3 => ("qwen3", "Qwen3ForCausalLM"),
    };
    let config = serde_json::json!({
        "architectures": [class],
        "model_type": model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "rope_theta": cfg.rope_theta,
        "rms_norm_eps": cfg.rms_norm_eps,
        "max_position_embeddings": cfg.context_length,
        "tie_word_embeddings": !tensors.contains_key("lm_head.weight"),
        "eos_token_id": eos.first(),
        "hidden_act": "silu",
        "torch_dtype": "float32",
    });
    write_json(&out.join("config.json"), &config)?;
    write_json(
        &out.join("generation_config.json"),
        &serde_json::json!({ "eos_token_id": eos }),
    )?;
    let tokenizer_json = out.join("tokenizer.json");
    model
        .tokenizer()
        .hf()
        .save(&tokenizer_json, false)
        .map_err(|e| TrainError::Write {
            path: tokenizer_json.clone(),
            reason: e.to_string(),
        })?;
    let mut tok_cfg = serde_json::json!({
        "eos_token": eos.first().and_then(|&id| model.tokenizer().id_to_token(id)),
        "tokenizer_class": "Qwen2Tokenizer",
    });
    if let Some(t) = model.chat_template() {
        tok_cfg["chat_template"] = serde_json::Value::String(t.source().to_string());
    }
    write_json(&out.join("tokenizer_config.json"), &tok_cfg)
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).expect("json serializes");
    write_atomic(path, text.as_bytes())
}

fn write_gguf(
    model: &TrainModel,
    tensors: HashMap<String, Tensor>,
    out: &Path,
    weights: GgmlDType,
) -> Result<()> {
    if !matches!(weights, GgmlDType::F16 | GgmlDType::Q8_0 | GgmlDType::F32) {
        return Err(TrainError::Unsupported(format!(
            "GGUF export as {weights:?} (use f16, q8_0 or f32)"
        )));
    }
    let base = model.source();
    if base.is_dir() {
        return Err(TrainError::Unsupported(format!(
            "GGUF export needs a GGUF base (its metadata carries the tokenizer); {} is a \
             safetensors folder: export --format safetensors",
            base.display()
        )));
    }
    let mut file = std::fs::File::open(base)?;
    let content = gguf_file::Content::read(&mut file).map_err(|e| {
        TrainError::InvalidInput(format!("{}: not a readable GGUF file: {e}", base.display()))
    })?;
    let mut metadata: Vec<(String, gguf_file::Value)> = content.metadata.into_iter().collect();
    metadata.sort_by(|a, b| a.0.cmp(&b.0));
    // llama.cpp's `general.file_type`: what most of the tensors are stored as.
    let file_type = match weights {
        GgmlDType::F32 => 0u32,
        GgmlDType::F16 => 1,
        _ => 7,
    };
    metadata.retain(|(k, _)| k != "general.file_type");
    metadata.push(("general.file_type".into(), gguf_file::Value::U32(file_type)));

    let mut qtensors: Vec<(String, QTensor)> = Vec::with_capacity(tensors.len());
    let mut names_sorted: Vec<&String> = tensors.keys().collect();
    names_sorted.sort();
    for hf in names_sorted {
        let t = &tensors[hf];
        let gguf = names::hf_to_gguf(hf)
            .ok_or_else(|| TrainError::Unsupported(format!("no GGUF name for tensor `{hf}`")))?;
        let dtype = if t.rank() == 2 {
            let row = t.dims()[1];
            if row % weights.block_size() == 0 {
                weights
            } else {
                GgmlDType::F16
            }
        } else {
            GgmlDType::F32
        };
        qtensors.push((gguf, QTensor::quantize(&t.to_device(&Device::Cpu)?, dtype)?));
    }
    let md_refs: Vec<(&str, &gguf_file::Value)> =
        metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = qtensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    write_atomic_with(out, |w| {
        gguf_file::write(w, &md_refs, &t_refs).map_err(std::io::Error::other)
    })
}
