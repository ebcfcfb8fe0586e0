//! Tiny random-weight Qwen2 / Qwen3 models, written by our own code as GGUF and as HF
//! safetensors + config.json, so tests need no download. Weights are a pure function of the
//! seed: the GGUF (F32) and the safetensors written from one `TinyConfig` hold the same numbers.

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::candle::Arch;
use crate::error::Result;

/// Storage type of the 2-D weights in a tiny GGUF (norms and biases stay F32, as in real files).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TinyWeights {
    F32,
    /// Needs `hidden_size` and `intermediate_size` multiples of 32.
    Q8_0,
    /// Needs `hidden_size` and `intermediate_size` multiples of 256.
    Q4K,
}

/// Shape of a tiny model.
#[derive(Debug, Clone)]
pub struct TinyConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    pub context_length: usize,
    pub tie_embeddings: bool,
    pub eos_token_id: u32,
    pub weights: TinyWeights,
    pub seed: u64,
}

impl TinyConfig {
    /// Qwen2.5-like: q/k/v biases, tied embeddings, head_dim = hidden / heads.
    pub fn qwen2() -> Self {
        Self {
            arch: Arch::Qwen2,
            vocab_size: 320,
            hidden_size: 64,
            intermediate_size: 128,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 16,
            rope_theta: 1_000_000.0,
            rms_norm_eps: 1e-6,
            context_length: 256,
            tie_embeddings: true,
            eos_token_id: 2,
            weights: TinyWeights::F32,
            seed: 42,
        }
    }

    /// Qwen3-like: q/k norms, no biases, untied output, head_dim ≠ hidden / heads.
    pub fn qwen3() -> Self {
        Self {
            arch: Arch::Qwen3,
            head_dim: 32,
            tie_embeddings: false,
            seed: 43,
            ..Self::qwen2()
        }
    }

    pub fn with_weights(mut self, w: TinyWeights) -> Self {
        if w == TinyWeights::Q4K {
            self.hidden_size = self.hidden_size.max(256).next_multiple_of(256);
            self.intermediate_size = self.intermediate_size.max(512).next_multiple_of(256);
            self.head_dim = self.head_dim.max(self.hidden_size / self.num_heads);
        }
        self.weights = w;
        self
    }

    /// Tensors by HF name, f32, deterministic from `seed`.
    pub fn tensors(&self) -> Result<BTreeMap<String, Tensor>> {
        let mut rng = StdRng::seed_from_u64(self.seed);
        let mut out = BTreeMap::new();
        let (h, hd, nh, nkv, ff) = (
            self.hidden_size,
            self.head_dim,
            self.num_heads,
            self.num_kv_heads,
            self.intermediate_size,
        );
        let mut put = |name: String, shape: &[usize], kind: Init| -> Result<()> {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = (0..n)
                .map(|_| {
                    let u: f32 = rng.gen_range(-1.0..1.0);
                    match kind {
                        Init::Weight(fan_in) => u * 1.7 / (fan_in as f32).sqrt(),
                        Init::Norm => 1.0 + 0.2 * u,
                        Init::Small => 0.1 * u,
                        Init::Embed => u,
                    }
                })
                .collect();
            out.insert(name, Tensor::from_vec(data, shape, &Device::Cpu)?);
            Ok(())
        };
        put(
            "model.embed_tokens.weight".into(),
            &[self.vocab_size, h],
            Init::Embed,
        )?;
        for i in 0..self.num_layers {
            let p = format!("model.layers.{i}");
            put(format!("{p}.input_layernorm.weight"), &[h], Init::Norm)?;
            put(
                format!("{p}.self_attn.q_proj.weight"),
                &[nh * hd, h],
                Init::Weight(h),
            )?;
            put(
                format!("{p}.self_attn.k_proj.weight"),
                &[nkv * hd, h],
                Init::Weight(h),
            )?;
            put(
                format!("{p}.self_attn.v_proj.weight"),
                &[nkv * hd, h],
                Init::Weight(h),
            )?;
            if self.arch == Arch::Qwen2 {
                put(
                    format!("{p}.self_attn.q_proj.bias"),
                    &[nh * hd],
                    Init::Small,
                )?;
                put(
                    format!("{p}.self_attn.k_proj.bias"),
                    &[nkv * hd],
                    Init::Small,
                )?;
                put(
                    format!("{p}.self_attn.v_proj.bias"),
                    &[nkv * hd],
                    Init::Small,
                )?;
            } else {
                put(format!("{p}.self_attn.q_norm.weight"), &[hd], Init::Norm)?;
                put(format!("{p}.self_attn.k_norm.weight"), &[hd], Init::Norm)?;
            }
            put(
                format!("{p}.self_attn.o_proj.weight"),
                &[h, nh * hd],
                Init::Weight(nh * hd),
            )?;
            put(
                format!("{p}.post_attention_layernorm.weight"),
                &[h],
                Init::Norm,
            )?;
            put(
                format!("{p}.mlp.gate_proj.weight"),
                &[ff, h],
                Init::Weight(h),
            )?;
            put(format!("{p}.mlp.up_proj.weight"), &[ff, h], Init::Weight(h))?;
            put(
                format!("{p}.mlp.down_proj.weight"),
                &[h, ff],
                Init::Weight(ff),
            )?;
        }
        put("model.norm.weight".into(), &[h], Init::Norm)?;
        if !self.tie_embeddings {
            put(
                "lm_head.weight".into(),
                &[self.vocab_size, h],
                Init::Weight(h),
            )?;
        }
        Ok(out)
    }

    fn gguf_metadata(&self) -> Vec<(String, gguf_file::Value)> {
        use gguf_file::Value as V;
        let a = self.arch.name();
        let mut md = vec![
            ("general.architecture".to_string(), V::String(a.to_string())),
            ("general.name".to_string(), V::String(format!("tiny-{a}"))),
            (format!("{a}.block_count"), V::U32(self.num_layers as u32)),
            (
                format!("{a}.context_length"),
                V::U32(self.context_length as u32),
            ),
            (
                format!("{a}.embedding_length"),
                V::U32(self.hidden_size as u32),
            ),
            (
                format!("{a}.feed_forward_length"),
                V::U32(self.intermediate_size as u32),
            ),
            (
                format!("{a}.attention.head_count"),
                V::U32(self.num_heads as u32),
            ),
            (
                format!("{a}.attention.head_count_kv"),
                V::U32(self.num_kv_heads as u32),
            ),
            (
                format!("{a}.rope.freq_base"),
                V::F32(self.rope_theta as f32),
            ),
            (
                format!("{a}.attention.layer_norm_rms_epsilon"),
                V::F32(self.rms_norm_eps as f32),
            ),
            (
                "tokenizer.ggml.eos_token_id".to_string(),
                V::U32(self.eos_token_id),
            ),
            // No vocabulary of its own (tests that need one pass `tiny_vocab::gguf_metadata()`,
            // which overrides this): llama.cpp needs the key, and then sizes its dummy
            // vocabulary from `{arch}.vocab_size`. Candle reads neither.
            ("tokenizer.ggml.model".to_string(), V::String("none".into())),
            (format!("{a}.vocab_size"), V::U32(self.vocab_size as u32)),
        ];
        if self.arch == Arch::Qwen3 {
            md.push((
                format!("{a}.attention.key_length"),
                V::U32(self.head_dim as u32),
            ));
            md.push((
                format!("{a}.attention.value_length"),
                V::U32(self.head_dim as u32),
            ));
        }
        md
    }

    fn hf_config(&self) -> serde_json::Value {
        let (model_type, class) = match self.arch {
            Arch::Qwen2 => ("qwen2", "Qwen2ForCausalLM"),
            Arch::Qwen3 => ("qwen3", "Qwen3ForCausalLM"),
        };
        serde_json::json!({
            "architectures": [class],
            "model_type": model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "rope_theta": self.rope_theta,
            "rms_norm_eps": self.rms_norm_eps,
            "max_position_embeddings": self.context_length,
            "tie_word_embeddings": self.tie_embeddings,
            "eos_token_id": self.eos_token_id,
            "hidden_act": "silu",
            "torch_dtype": "float32",
        })
    }
}

#[derive(Clone, Copy)]
enum Init {
    Weight(usize),
    Norm,
    Small,
    Embed,
}

/// Writes the tiny model as one GGUF file. `extra_metadata` is appended after (and so may
/// override) the model keys, e.g. tokenizer metadata.
pub fn write_gguf(
    path: &Path,
    cfg: &TinyConfig,
    extra_metadata: &[(String, gguf_file::Value)],
) -> Result<()> {
    let dtype = match cfg.weights {
        TinyWeights::F32 => GgmlDType::F32,
        TinyWeights::Q8_0 => GgmlDType::Q8_0,
        TinyWeights::Q4K => GgmlDType::Q4K,
    };
    let mut qtensors = Vec::new();
    for (name, t) in cfg.tensors()? {
        let q = if t.rank() == 2 {
            QTensor::quantize(&t, dtype)?
        } else {
            QTensor::quantize(&t, GgmlDType::F32)?
        };
        let gguf = crate::candle::names::hf_to_gguf(&name).expect("tiny tensors have GGUF names");
        qtensors.push((gguf, q));
    }
    let mut md = cfg.gguf_metadata();
    for (k, v) in extra_metadata {
        md.retain(|(mk, _)| mk != k);
        md.push((k.clone(), v.clone()));
    }
    let md_refs: Vec<(&str, &gguf_file::Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = qtensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    gguf_file::write(&mut f, &md_refs, &t_refs)?;
    std::io::Write::flush(&mut f)?;
    Ok(())
}

/// Writes `model.safetensors` + `config.json` (f32, the same weights as [`write_gguf`]) into `dir`.
pub fn write_safetensors(dir: &Path, cfg: &TinyConfig) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let tensors: std::collections::HashMap<String, Tensor> = cfg.tensors()?.into_iter().collect();
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors"))?;
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&cfg.hf_config()).expect("json"),
    )?;
    Ok(())
}

/// Where [`write_tiny_model`] put things.
#[derive(Debug, Clone)]
pub struct TinyModelPaths {
    pub gguf: PathBuf,
    /// Directory with config.json + model.safetensors.
    pub safetensors_dir: PathBuf,
}

/// Writes both forms of a tiny model of `arch` (F32 weights, default shape) under `dir`.
pub fn write_tiny_model(dir: &Path, arch: Arch) -> Result<TinyModelPaths> {
    let cfg = match arch {
        Arch::Qwen2 => TinyConfig::qwen2(),
        Arch::Qwen3 => TinyConfig::qwen3(),
    };
    std::fs::create_dir_all(dir)?;
    let gguf = dir.join(format!("tiny-{}.gguf", arch.name()));
    write_gguf(&gguf, &cfg, &[])?;
    let safetensors_dir = dir.join(format!("tiny-{}-hf", arch.name()));
    write_safetensors(&safetensors_dir, &cfg)?;
    Ok(TinyModelPaths {
        gguf,
        safetensors_dir,
    })
}

/// Which file form a tiny engine is loaded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TinyFormat {
    Gguf,
    Safetensors,
}

/// Writes a tiny model into a fresh temporary directory and loads it. Keep the returned
/// directory alive as long as the engine is in use.
pub fn tiny_engine(
    cfg: &TinyConfig,
    format: TinyFormat,
    opts: crate::candle::LoadOptions,
) -> Result<(crate::candle::CandleEngine, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let path = match format {
        TinyFormat::Gguf => {
            let p = dir.path().join("tiny.gguf");
            write_gguf(&p, cfg, &[])?;
            p
        }
        TinyFormat::Safetensors => {
            let p = dir.path().join("hf");
            write_safetensors(&p, cfg)?;
            p
        }
    };
    Ok((crate::candle::CandleEngine::load(&path, opts)?, dir))
}

/// Every in-process engine this build has ([`crate::EngineKind::Candle`], and
/// [`crate::EngineKind::LlamaCpp`] with the `llama-cpp` feature), each loaded from the same
/// tiny GGUF, so one test body can check them all. Keep the directory alive as long as the
/// engines are in use.
pub fn tiny_engines(
    cfg: &TinyConfig,
    opts: crate::candle::LoadOptions,
) -> Result<(
    Vec<(crate::EngineKind, std::sync::Arc<dyn crate::Engine>)>,
    tempfile::TempDir,
)> {
    let dir = tempfile::tempdir()?;
    let p = dir.path().join("tiny.gguf");
    write_gguf(&p, cfg, &[])?;
    let mut out = Vec::new();
    for kind in crate::EngineKind::built() {
        let opts = crate::candle::LoadOptions {
            engine: kind,
            ..opts.clone()
        };
        out.push((kind, crate::model::load_engine(&p, opts)?));
    }
    Ok((out, dir))
}
