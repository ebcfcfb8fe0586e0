//! Loading Qwen2 / Qwen3 weights: GGUF (quantized, `QMatMul`) or an HF directory with
//! `config.json` + `*.safetensors` (dense f32/f16/bf16, computed in f32).

use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::model::{Arch, Embedding, Layer, Linear, Model, ModelConfig, Weight};
use super::native::NativeMatrix;
use super::q8::Q8Matrix;
use super::LoadOptions;
use crate::error::{EngineError, Result};

/// What a loader hands the engine besides the model.
pub(crate) struct Loaded {
    pub model: Model,
    pub name: String,
    pub eos_token_ids: Vec<u32>,
}

fn malformed(path: &Path, reason: impl std::fmt::Display) -> EngineError {
    EngineError::Malformed {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn parse_arch(s: &str) -> Result<Arch> {
    match s {
        "qwen2" => Ok(Arch::Qwen2),
        "qwen3" => Ok(Arch::Qwen3),
        other => Err(EngineError::Unsupported(format!(
            "architecture `{other}` (supported: qwen2, qwen3)"
        ))),
    }
}

// ---------------------------------------------------------------- GGUF

/// What a model file says besides its tensors.
struct Header {
    cfg: ModelConfig,
    name: String,
    eos_token_ids: Vec<u32>,
}

/// Opens a GGUF file and reads its header, checking that no tensor runs past the file's end.
fn open_gguf(path: &Path) -> Result<(std::fs::File, gguf_file::Content)> {
    let mut file = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => EngineError::NotFound(path.to_path_buf()),
        _ => EngineError::Io(e),
    })?;
    let file_len = file.metadata()?.len();
    let content = gguf_file::Content::read(&mut file)
        .map_err(|e| malformed(path, format!("not a readable GGUF file: {e}")))?;
    // A file cut short keeps a readable header; catch it before reading any tensor.
    for (name, ti) in &content.tensor_infos {
        let bytes = ti.shape.elem_count() / ti.ggml_dtype.block_size() * ti.ggml_dtype.type_size();
        let end = content.tensor_data_offset + ti.offset + bytes as u64;
        if end > file_len {
            return Err(malformed(
                path,
                format!("truncated: tensor `{name}` ends at byte {end}, file has {file_len}"),
            ));
        }
    }
    Ok((file, content))
}

fn gguf_header(content: &gguf_file::Content, path: &Path, opts: &LoadOptions) -> Result<Header> {
    let md = &content.metadata;
    let arch_name = md
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .ok_or_else(|| malformed(path, "missing general.architecture"))?
        .clone();
    let arch = parse_arch(&arch_name)?;
    let p = arch.name();
    let get = |key: &str| -> Result<&gguf_file::Value> {
        md.get(&format!("{p}.{key}"))
            .ok_or_else(|| malformed(path, format!("missing metadata {p}.{key}")))
    };
    let num = |key: &str| -> Result<usize> {
        value_usize(get(key)?)
            .ok_or_else(|| malformed(path, format!("{p}.{key} is not an integer")))
    };
    let float = |key: &str, default: f64| -> f64 {
        md.get(&format!("{p}.{key}"))
            .and_then(value_f64)
            .unwrap_or(default)
    };

    let hidden_size = num("embedding_length")?;
    let num_heads = num("attention.head_count")?;
    let context_length = num("context_length")?;
    let vocab_size = content
        .tensor_infos
        .get("token_embd.weight")
        .ok_or_else(|| malformed(path, "tensor `token_embd.weight`: missing"))?
        .shape
        .dims()
        .first()
        .copied()
        .unwrap_or(0);
    let cfg = ModelConfig {
        arch,
        vocab_size,
        hidden_size,
        intermediate_size: num("feed_forward_length").unwrap_or(0),
        num_layers: num("block_count")?,
        num_heads,
        num_kv_heads: num("attention.head_count_kv").unwrap_or(num_heads),
        head_dim: num("attention.key_length").unwrap_or(hidden_size / num_heads.max(1)),
        rope_theta: float("rope.freq_base", 10_000.0),
        rms_norm_eps: float("attention.layer_norm_rms_epsilon", 1e-6),
        context_length: opts
            .max_context
            .map_or(context_length, |m| m.min(context_length)),
    };
    let mut eos = Vec::new();
    for key in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"] {
        if let Some(id) = md.get(key).and_then(value_usize) {
            if !eos.contains(&(id as u32)) {
                eos.push(id as u32);
            }
        }
    }
    let name = md
        .get("general.name")
        .and_then(|v| v.to_string().ok().cloned())
        .unwrap_or_else(|| {
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
    Ok(Header {
        cfg,
        name,
        eos_token_ids: eos,
    })
}

/// What another engine needs from a GGUF header, read (and checked: architecture, truncation)
/// exactly as this engine reads it, so both engines fail alike on a bad file.
#[allow(dead_code)]
pub(crate) struct GgufHeader {
    pub name: String,
    pub architecture: String,
    pub vocab_size: usize,
    /// Already capped by `opts.max_context`.
    pub context_length: usize,
    pub eos_token_ids: Vec<u32>,
}

#[allow(dead_code)]
pub(crate) fn read_gguf_header(path: &Path, opts: &LoadOptions) -> Result<GgufHeader> {
    let (_file, content) = open_gguf(path)?;
    let h = gguf_header(&content, path, opts)?;
    Ok(GgufHeader {
        name: h.name,
        architecture: h.cfg.arch.name().to_string(),
        vocab_size: h.cfg.vocab_size,
        context_length: h.cfg.context_length,
        eos_token_ids: h.eos_token_ids,
    })
}

/// A model's shape as its header says (a GGUF's metadata, a folder's `config.json`), read
/// without its weights, and with `opts.max_context` applied as a load would: what a weight
/// sync compares before it loads anything.
pub fn read_model_config(path: &Path, opts: &LoadOptions) -> Result<ModelConfig> {
    if !path.exists() {
        return Err(EngineError::NotFound(path.to_path_buf()));
    }
    if path.is_dir() {
        return Ok(safetensors_header(path, opts)?.0.cfg);
    }
    let (_file, content) = open_gguf(path)?;
    Ok(gguf_header(&content, path, opts)?.cfg)
}

pub(crate) fn load_gguf(path: &Path, opts: &LoadOptions) -> Result<Loaded> {
    let (mut file, content) = open_gguf(path)?;
    let header = gguf_header(&content, path, opts)?;
    let arch = header.cfg.arch;
    let num_layers = header.cfg.num_layers;
    let hidden_size = header.cfg.hidden_size;

    let dev = Device::Cpu;
    let tensor = |file: &mut std::fs::File, name: &str| -> Result<QTensor> {
        content
            .tensor(file, name, &dev)
            .map_err(|e| malformed(path, format!("tensor `{name}`: {e}")))
    };
    let vector = |file: &mut std::fs::File, name: &str| -> Result<Tensor> {
        Ok(tensor(file, name)?.dequantize(&dev)?.to_dtype(DType::F32)?)
    };
    let linear = |file: &mut std::fs::File, name: &str, bias: bool| -> Result<Linear> {
        let q = weight(tensor(file, &format!("{name}.weight"))?, opts)?;
        let b = if bias && content.tensor_infos.contains_key(&format!("{name}.bias")) {
            Some(vector(file, &format!("{name}.bias"))?)
        } else {
            None
        };
        Ok(Linear { w: q, b })
    };

    let embed_q = Arc::new(tensor(&mut file, "token_embd.weight")?);
    let mut layers = Vec::with_capacity(num_layers);
    for i in 0..num_layers {
        let b = format!("blk.{i}");
        let qwen3 = arch == Arch::Qwen3;
        let head_norm = |file: &mut std::fs::File, n: &str| -> Result<Option<Vec<f32>>> {
            if qwen3 {
                Ok(Some(
                    vector(file, &format!("{b}.{n}.weight"))?.to_vec1::<f32>()?,
                ))
            } else {
                Ok(None)
            }
        };
        layers.push(Layer {
            attn_norm: vector(&mut file, &format!("{b}.attn_norm.weight"))?,
            q: linear(&mut file, &format!("{b}.attn_q"), true)?,
            k: linear(&mut file, &format!("{b}.attn_k"), true)?,
            v: linear(&mut file, &format!("{b}.attn_v"), true)?,
            o: linear(&mut file, &format!("{b}.attn_output"), false)?,
            q_norm: head_norm(&mut file, "attn_q_norm")?,
            k_norm: head_norm(&mut file, "attn_k_norm")?,
            ffn_norm: vector(&mut file, &format!("{b}.ffn_norm.weight"))?,
            gate: linear(&mut file, &format!("{b}.ffn_gate"), false)?,
            up: linear(&mut file, &format!("{b}.ffn_up"), false)?,
            down: linear(&mut file, &format!("{b}.ffn_down"), false)?,
        });
    }
    let norm = vector(&mut file, "output_norm.weight")?;
    let lm_head = if content.tensor_infos.contains_key("output.weight") {
        weight(tensor(&mut file, "output.weight")?, opts)?
    } else {
        weight_arc(embed_q.clone(), opts)?
    };
    let dt = embed_q.dtype();
    let embed = if matches!(dt, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
        || hidden_size % dt.block_size() != 0
    {
        Embedding::Dense(embed_q.dequantize(&dev)?)
    } else {
        Embedding::Quantized(embed_q)
    };
    Ok(Loaded {
        model: Model::new(header.cfg, embed, layers, norm, lm_head),
        name: header.name,
        eos_token_ids: header.eos_token_ids,
    })
}

/// Chooses the kernel for a GGUF weight: candle's own where it has a fast runtime-dispatched
/// one (dense types; Q4_K rows that are a multiple of 256 long, which candle repacks for
/// AVX-512 VNNI), our Q8 kernel for everything else (see `LoadOptions::requantize`). Q8_0
/// converts to our Q8 blocks without loss, and at decode our kernel beats candle's repacked
/// Q8_0 one (a Q8_0 export of the 0.5B: 28.6 → 44 tok/s), which stays for prefill-sized inputs.
fn weight(q: QTensor, opts: &LoadOptions) -> Result<Weight> {
    weight_arc(Arc::new(q), opts)
}

fn weight_arc(q: Arc<QTensor>, opts: &LoadOptions) -> Result<Weight> {
    let k = q.shape().dims().last().copied().unwrap_or(0);
    let candle_fast = match q.dtype() {
        GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => true,
        GgmlDType::Q4K => k % 256 == 0,
        _ => false,
    };
    if matches!(q.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16) {
        return Ok(Weight::Candle(QMatMul::from_arc(q)?));
    }
    if opts.native_kernels && super::native::available() {
        if let Some(native) = NativeMatrix::from_qtensor(&q)? {
            // Prefill-sized inputs reuse each weight load over many rows; candle's repacked
            // kernels (Q4_K, and Q6_K above one row; 16-row tiles) do that better than ours.
            let n = q.shape().dims().first().copied().unwrap_or(0);
            let batched = if n % 16 == 0 {
                Some(QMatMul::from_arc(q)?)
            } else {
                None
            };
            return Ok(Weight::Native { native, batched });
        }
    }
    if candle_fast || !opts.requantize || !Q8Matrix::supports(k) {
        return Ok(Weight::Candle(QMatMul::from_arc(q)?));
    }
    let t = q.dequantize(&Device::Cpu)?;
    let batched = (q.dtype() == GgmlDType::Q8_0 && k % 256 == 0)
        .then(|| QMatMul::from_arc(q.clone()))
        .transpose()?;
    Ok(Weight::Q8 {
        q8: Q8Matrix::from_tensor(&t)?,
        batched,
    })
}

fn value_usize(v: &gguf_file::Value) -> Option<usize> {
    use gguf_file::Value as V;
    Some(match v {
        V::U8(x) => *x as usize,
        V::I8(x) => usize::try_from(*x).ok()?,
        V::U16(x) => *x as usize,
        V::I16(x) => usize::try_from(*x).ok()?,
        V::U32(x) => *x as usize,
        V::I32(x) => usize::try_from(*x).ok()?,
        V::U64(x) => *x as usize,
        V::I64(x) => usize::try_from(*x).ok()?,
        _ => return None,
    })
}

fn value_f64(v: &gguf_file::Value) -> Option<f64> {
    use gguf_file::Value as V;
    match v {
        V::F32(x) => Some(*x as f64),
        V::F64(x) => Some(*x),
        other => value_usize(other).map(|x| x as f64),
    }
}

// ---------------------------------------------------------------- safetensors

/// Reads `config.json` (and `generation_config.json` for EOS ids) and lists the weight files.
fn safetensors_header(dir: &Path, opts: &LoadOptions) -> Result<(Header, Vec<PathBuf>)> {
    let cfg_path = dir.join("config.json");
    if !cfg_path.exists() {
        return Err(EngineError::NotFound(cfg_path));
    }
    let cfg_text = std::fs::read_to_string(&cfg_path)?;
    let cj: serde_json::Value =
        serde_json::from_str(&cfg_text).map_err(|e| malformed(&cfg_path, e))?;
    let model_type = cj
        .get("model_type")
        .and_then(|v| v.as_str())
        .ok_or_else(|| malformed(&cfg_path, "missing model_type"))?;
    let arch = parse_arch(model_type)?;
    let num = |key: &str| -> Result<usize> {
        cj.get(key)
            .and_then(|v| v.as_u64())
            .map(|v| v as usize)
            .ok_or_else(|| malformed(&cfg_path, format!("missing {key}")))
    };
    let hidden_size = num("hidden_size")?;
    let num_heads = num("num_attention_heads")?;
    let context_length = num("max_position_embeddings").unwrap_or(32768);

    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(EngineError::NotFound(dir.join("*.safetensors")));
    }
    let cfg = ModelConfig {
        arch,
        vocab_size: num("vocab_size")?,
        hidden_size,
        intermediate_size: num("intermediate_size").unwrap_or(0),
        num_layers: num("num_hidden_layers")?,
        num_heads,
        num_kv_heads: num("num_key_value_heads").unwrap_or(num_heads),
        head_dim: num("head_dim").unwrap_or(hidden_size / num_heads.max(1)),
        rope_theta: cj
            .get("rope_theta")
            .and_then(|v| v.as_f64())
            .unwrap_or(10_000.0),
        rms_norm_eps: cj
            .get("rms_norm_eps")
            .and_then(|v| v.as_f64())
            .unwrap_or(1e-6),
        context_length: opts
            .max_context
            .map_or(context_length, |m| m.min(context_length)),
    };
    let mut eos = Vec::new();
    let mut add_eos = |v: Option<&serde_json::Value>| match v {
        Some(serde_json::Value::Number(n)) => eos.extend(n.as_u64().map(|x| x as u32)),
        Some(serde_json::Value::Array(a)) => {
            eos.extend(a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32))
        }
        _ => {}
    };
    add_eos(cj.get("eos_token_id"));
    if let Ok(text) = std::fs::read_to_string(dir.join("generation_config.json")) {
        if let Ok(g) = serde_json::from_str::<serde_json::Value>(&text) {
            add_eos(g.get("eos_token_id"));
        }
    }
    eos.sort_unstable();
    eos.dedup();
    let name = dir
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let header = Header {
        cfg,
        name,
        eos_token_ids: eos,
    };
    Ok((header, files))
}

fn read_safetensors(files: &[PathBuf]) -> Result<HashMap<String, Tensor>> {
    let mut ts: HashMap<String, Tensor> = HashMap::new();
    for f in files {
        let part = candle_core::safetensors::load(f, &Device::Cpu).map_err(|e| malformed(f, e))?;
        ts.extend(part);
    }
    Ok(ts)
}

pub(crate) fn load_safetensors(dir: &Path, opts: &LoadOptions) -> Result<Loaded> {
    let (header, files) = safetensors_header(dir, opts)?;
    let ts = read_safetensors(&files)?;
    Ok(Loaded {
        model: dense_model(header.cfg, ts, GgmlDType::F32, dir, opts)?,
        name: header.name,
        eos_token_ids: header.eos_token_ids,
    })
}

// ---------------------------------------------------------------- dense

/// Every weight of a model as a dense f32 tensor under its Hugging Face name, with the model's
/// shape: what training starts from (a GGUF file is dequantized tensor by tensor).
#[derive(Debug, Clone)]
pub struct DenseWeights {
    pub config: ModelConfig,
    /// By HF name; no `lm_head.weight` when the output head is tied to the embeddings.
    pub tensors: HashMap<String, Tensor>,
    pub name: String,
    pub eos_token_ids: Vec<u32>,
}

/// Reads a `.gguf` file or a safetensors folder into [`DenseWeights`].
pub fn load_dense(path: &Path, opts: &LoadOptions) -> Result<DenseWeights> {
    let (header, tensors) = if path.is_dir() {
        let (header, files) = safetensors_header(path, opts)?;
        let mut ts = read_safetensors(&files)?;
        for t in ts.values_mut() {
            *t = t.to_dtype(DType::F32)?;
        }
        (header, ts)
    } else {
        let (mut file, content) = open_gguf(path)?;
        let header = gguf_header(&content, path, opts)?;
        let mut ts = HashMap::new();
        for name in content.tensor_infos.keys() {
            // Tensors we do not run (e.g. `rope_freqs`) stay out.
            let Some(hf) = super::names::gguf_to_hf(name) else {
                continue;
            };
            let q = content
                .tensor(&mut file, name, &Device::Cpu)
                .map_err(|e| malformed(path, format!("tensor `{name}`: {e}")))?;
            ts.insert(hf, q.dequantize(&Device::Cpu)?.to_dtype(DType::F32)?);
        }
        (header, ts)
    };
    Ok(DenseWeights {
        config: header.cfg,
        tensors,
        name: header.name,
        eos_token_ids: header.eos_token_ids,
    })
}

/// Builds a model from dense tensors under their HF names (any float dtype; computed in f32).
/// The 2-D layer weights and the output head are stored as `weights` (F32 keeps them dense;
/// a quantized type quantizes them as a GGUF of that type would); `source` names the origin in
/// errors. A missing `lm_head.weight` means tied embeddings.
pub(crate) fn dense_model(
    cfg: ModelConfig,
    mut ts: HashMap<String, Tensor>,
    weights: GgmlDType,
    source: &Path,
    opts: &LoadOptions,
) -> Result<Model> {
    let take_opt = |ts: &mut HashMap<String, Tensor>, name: &str| -> Result<Option<Tensor>> {
        Ok(match ts.remove(name) {
            Some(t) => Some(t.to_dtype(DType::F32)?),
            None => None,
        })
    };
    let take = |ts: &mut HashMap<String, Tensor>, name: &str| -> Result<Tensor> {
        take_opt(ts, name)?.ok_or_else(|| malformed(source, format!("missing tensor `{name}`")))
    };
    let matrix = |w: Tensor| -> Result<Weight> {
        if weights == GgmlDType::F32 {
            Ok(Weight::Candle(QMatMul::Tensor(w)))
        } else {
            weight(QTensor::quantize(&w, weights)?, opts)
        }
    };
    let (vocab_size, hidden_size) = (cfg.vocab_size, cfg.hidden_size);
    let embed_w = take(&mut ts, "model.embed_tokens.weight")?;
    if embed_w.dims2()? != (vocab_size, hidden_size) {
        return Err(malformed(
            source,
            format!(
                "embed_tokens has shape {:?}, config says ({vocab_size}, {hidden_size})",
                embed_w.dims()
            ),
        ));
    }
    let arch = cfg.arch;
    let mut layers = Vec::with_capacity(cfg.num_layers);
    for i in 0..cfg.num_layers {
        let b = format!("model.layers.{i}");
        let mut lin = |name: &str, bias: bool| -> Result<Linear> {
            let w = take(&mut ts, &format!("{b}.{name}.weight"))?;
            let b = if bias {
                take_opt(&mut ts, &format!("{b}.{name}.bias"))?
            } else {
                None
            };
            Ok(Linear { w: matrix(w)?, b })
        };
        let qwen2 = arch == Arch::Qwen2;
        let q = lin("self_attn.q_proj", qwen2)?;
        let k = lin("self_attn.k_proj", qwen2)?;
        let v = lin("self_attn.v_proj", qwen2)?;
        let o = lin("self_attn.o_proj", false)?;
        let gate = lin("mlp.gate_proj", false)?;
        let up = lin("mlp.up_proj", false)?;
        let down = lin("mlp.down_proj", false)?;
        let (q_norm, k_norm) = if arch == Arch::Qwen3 {
            (
                Some(take(&mut ts, &format!("{b}.self_attn.q_norm.weight"))?.to_vec1::<f32>()?),
                Some(take(&mut ts, &format!("{b}.self_attn.k_norm.weight"))?.to_vec1::<f32>()?),
            )
        } else {
            (None, None)
        };
        layers.push(Layer {
            attn_norm: take(&mut ts, &format!("{b}.input_layernorm.weight"))?,
            q,
            k,
            v,
            o,
            q_norm,
            k_norm,
            ffn_norm: take(&mut ts, &format!("{b}.post_attention_layernorm.weight"))?,
            gate,
            up,
            down,
        });
    }
    let norm = take(&mut ts, "model.norm.weight")?;
    let lm_head = matrix(take_opt(&mut ts, "lm_head.weight")?.unwrap_or_else(|| embed_w.clone()))?;
    Ok(Model::new(
        cfg,
        Embedding::Dense(embed_w),
        layers,
        norm,
        lm_head,
    ))
}
