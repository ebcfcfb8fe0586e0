//! `relayllm export`: a trained checkpoint merged into its base, written as an HF safetensors
//! folder or a GGUF that `generate`, `relay` and the engine load; or, with `--format adapter`,
//! the checkpoint's trained weights alone (no optimizer moments, f16 by default), the small
//! folder that is committed and later merged with `--adapter`.
use super::common::resolve_local_model;
use super::train::set_threads;
use anyhow::{bail, Context, Result};
use candle_core::quantized::GgmlDType;
use clap::{Args, ValueEnum};
use relay_train::export::{export, ExportFormat, ExportOptions};
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    Safetensors,
    Gguf,
    /// The trained weights alone, as a checkpoint folder `--adapter` takes again.
    Adapter,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum GgufDtype {
    F16,
    #[value(name = "q8_0")]
    Q8_0,
    F32,
}

#[derive(Args)]
pub struct ExportArgs {
    /// The base the checkpoint was trained from: `slm`, a .gguf file or a safetensors folder
    /// (not needed for `--format adapter`).
    #[arg(long, required_unless_present = "format")]
    pub model: Option<String>,
    /// A `train` output folder (its newest checkpoint) or one checkpoint file.
    #[arg(long)]
    pub adapter: PathBuf,
    /// Where to write: a folder (safetensors) or a .gguf file.
    #[arg(long)]
    pub out: PathBuf,
    /// Output format [default: gguf when --out ends in .gguf, else safetensors]. `adapter`
    /// writes the trained weights alone into the folder --out (f16 or f32 by --dtype).
    #[arg(long)]
    pub format: Option<Format>,
    /// GGUF storage of the weight matrices (norms and biases stay f32); for `adapter`, of the
    /// trained weights (f16 or f32).
    #[arg(long, default_value = "f16")]
    pub dtype: GgufDtype,
    /// Compute threads [default: all cores].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Folder of the fetched pair, for `slm`.
    #[arg(long)]
    pub models_dir: Option<PathBuf>,
}

pub fn run(args: ExportArgs) -> Result<()> {
    set_threads(args.threads);
    let is_gguf_name = args
        .out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    let format = match args.format {
        Some(Format::Adapter) => return adapter_only(&args),
        Some(Format::Gguf) => ExportFormat::Gguf,
        Some(Format::Safetensors) => ExportFormat::Safetensors,
        None if is_gguf_name => ExportFormat::Gguf,
        None => ExportFormat::Safetensors,
    };
    let Some(model) = args.model.as_deref() else {
        bail!("--model is needed to merge: the base the checkpoint was trained from");
    };
    let base = resolve_local_model(model, args.models_dir.as_deref())?;
    let opts = ExportOptions {
        format,
        gguf_weights: match args.dtype {
            GgufDtype::F16 => GgmlDType::F16,
            GgufDtype::Q8_0 => GgmlDType::Q8_0,
            GgufDtype::F32 => GgmlDType::F32,
        },
    };
    let ckpt = export(&base, &args.adapter, &args.out, &opts).with_context(|| {
        format!(
            "exporting {} with {}",
            base.display(),
            args.adapter.display()
        )
    })?;
    println!(
        "wrote {} ({} merged into {})",
        args.out.display(),
        ckpt.display(),
        base.display()
    );
    Ok(())
}

/// `--format adapter`: the checkpoint's weights alone, f16 or f32.
fn adapter_only(args: &ExportArgs) -> Result<()> {
    let dtype = match args.dtype {
        GgufDtype::F16 => candle_core::DType::F16,
        GgufDtype::F32 => candle_core::DType::F32,
        GgufDtype::Q8_0 => bail!("--format adapter stores f16 or f32 weights, not q8_0"),
    };
    let path = relay_train::checkpoint::save_adapter(&args.adapter, &args.out, dtype)
        .with_context(|| format!("writing the adapter of {}", args.adapter.display()))?;
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    println!(
        "wrote {} ({:.1} MB, weights of {} without optimizer state)",
        path.display(),
        bytes as f64 / 1e6,
        args.adapter.display()
    );
    Ok(())
}
