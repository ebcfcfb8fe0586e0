//! A differentiable Qwen2 / Qwen3 forward over whole sequences, on candle's autograd.
//!
//! The math is the inference engine's (`relay_engine::candle`'s forward): NEOX RoPE (rotate
//! halves), grouped-query attention, RMSNorm, SwiGLU, Qwen2's q/k/v biases and Qwen3's per-head
//! q/k norms. Here it runs over the full sequence at once with a causal mask and no KV cache,
//! built only from ops whose backward candle implements (RMSNorm, RoPE and softmax are written
//! out from basic ops for that reason).
//!
//! Every weight is held dense in f32 under its Hugging Face name; a GGUF base is dequantized
//! once at load. The base stays frozen: LoRA adds trainable `A`/`B` pairs next to it (`B` starts
//! at zero, so the adapted model starts equal to the base), and full fine-tuning trains a copy
//! while the base remains as the reference model.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor, Var, D};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use relay_engine::candle::{load_dense, Arch, ModelConfig};
use relay_engine::chat::ChatTemplate;
use relay_engine::model::LoadedModel;
use relay_engine::tokenizer::Tokenizer;
use relay_engine::{CandleEngine, LoadOptions};

use crate::backprop::{Block, Dims, Linear, LoraNet, LoraPair};
use crate::error::{Result, TrainError};
use crate::fused;

/// A linear layer LoRA can adapt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoraTarget {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl LoraTarget {
    pub const ALL: [LoraTarget; 7] = [
        LoraTarget::Q,
        LoraTarget::K,
        LoraTarget::V,
        LoraTarget::O,
        LoraTarget::Gate,
        LoraTarget::Up,
        LoraTarget::Down,
    ];

    /// The module inside a layer, as HF names it.
    pub fn module(self) -> &'static str {
        match self {
            LoraTarget::Q => "self_attn.q_proj",
            LoraTarget::K => "self_attn.k_proj",
            LoraTarget::V => "self_attn.v_proj",
            LoraTarget::O => "self_attn.o_proj",
            LoraTarget::Gate => "mlp.gate_proj",
            LoraTarget::Up => "mlp.up_proj",
            LoraTarget::Down => "mlp.down_proj",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            LoraTarget::Q => "q",
            LoraTarget::K => "k",
            LoraTarget::V => "v",
            LoraTarget::O => "o",
            LoraTarget::Gate => "gate",
            LoraTarget::Up => "up",
            LoraTarget::Down => "down",
        }
    }
}

impl std::str::FromStr for LoraTarget {
    type Err = TrainError;
    fn from_str(s: &str) -> Result<Self> {
        LoraTarget::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| {
                TrainError::InvalidInput(format!(
                    "unknown LoRA target `{s}` (known: q, k, v, o, gate, up, down)"
                ))
            })
    }
}

/// What training changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Adapter {
    /// Low-rank adapters `W + (alpha / rank) · B A` on the listed linear layers of every layer.
    Lora {
        rank: usize,
        alpha: f64,
        targets: Vec<LoraTarget>,
    },
    /// Every weight is trainable.
    Full,
}

impl Adapter {
    /// LoRA on all seven linear layers of each block.
    pub fn lora(rank: usize, alpha: f64) -> Self {
        Adapter::Lora {
            rank,
            alpha,
            targets: LoraTarget::ALL.to_vec(),
        }
    }
}

/// One LoRA pair: `A` is `[rank, in]`, `B` is `[out, rank]`.
struct Lora {
    a: Var,
    b: Var,
    scale: f64,
}

/// Which weights a forward uses.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Weights {
    /// The trainable ones (adapters on, or the full copy).
    Current,
    /// The frozen start.
    Reference,
}

/// A Qwen2/Qwen3 model being trained.
pub struct TrainModel {
    config: ModelConfig,
    source: PathBuf,
    name: String,
    eos_token_ids: Vec<u32>,
    tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
    adapter: Adapter,
    /// The frozen start weights by HF name (never a `Var`, so autograd passes them by).
    base: HashMap<String, Tensor>,
    /// `Adapter::Full`: a trainable copy of every base weight.
    full: BTreeMap<String, Var>,
    /// `Adapter::Lora`: by module name (`model.layers.0.self_attn.q_proj`).
    lora: BTreeMap<String, Lora>,
    /// RoPE inverse frequencies, computed as the engine does.
    inv_freq: Vec<f32>,
    /// Attention and the output head through [`crate::fused`]'s recomputing ops.
    fused: bool,
    /// `Adapter::Lora`: the model as [`crate::backprop`]'s hand-written pass sees it.
    net: Option<Arc<LoraNet>>,
    /// Log-probs through `net` (the default with LoRA) rather than candle's autograd.
    hand_written: bool,
}

impl TrainModel {
    /// Loads a `.gguf` file (every tensor dequantized to f32) or an HF safetensors folder, with
    /// its tokenizer and chat template, and sets up `adapter`; `seed` draws the LoRA `A` init.
    pub fn load(path: &Path, adapter: Adapter, seed: u64) -> Result<Self> {
        let dense = load_dense(path, &LoadOptions::default())?;
        let tokenizer = Tokenizer::load_for_model(path)?;
        let template = ChatTemplate::load_for_model(path).ok();
        let config = dense.config;
        let mut base = dense.tensors;
        let mut full = BTreeMap::new();
        let mut lora = BTreeMap::new();
        match &adapter {
            Adapter::Full => {
                for (name, t) in &base {
                    full.insert(name.clone(), Var::from_tensor(t)?);
                }
            }
            Adapter::Lora {
                rank,
                alpha,
                targets,
            } => {
                if *rank == 0 {
                    return Err(TrainError::InvalidInput(
                        "LoRA rank must be at least 1".into(),
                    ));
                }
                let mut rng = StdRng::seed_from_u64(seed);
                let mut targets = targets.clone();
                targets.sort();
                targets.dedup();
                for i in 0..config.num_layers {
                    for t in &targets {
                        let module = format!("model.layers.{i}.{}", t.module());
                        let w = base.get(&format!("{module}.weight")).ok_or_else(|| {
                            TrainError::InvalidInput(format!("{module}.weight missing"))
                        })?;
                        let (out, inp) = w.dims2()?;
                        // PEFT's init: A ~ kaiming-uniform (bound 1/sqrt(in)), B = 0.
                        let bound = 1.0 / (inp as f32).sqrt();
                        let a: Vec<f32> = (0..rank * inp)
                            .map(|_| rng.gen_range(-bound..bound))
                            .collect();
                        let a = Var::from_vec(a, (*rank, inp), &Device::Cpu)?;
                        let b = Var::zeros((out, *rank), candle_core::DType::F32, &Device::Cpu)?;
                        let scale = alpha / *rank as f64;
                        lora.insert(module, Lora { a, b, scale });
                    }
                }
            }
        }
        let hd = config.head_dim;
        let inv_freq: Vec<f32> = (0..hd / 2)
            .map(|i| (1.0 / config.rope_theta.powf(2.0 * i as f64 / hd as f64)) as f32)
            .collect();
        let net = match &adapter {
            Adapter::Lora { .. } => Some(Arc::new(lora_net(&config, &mut base, &lora, &inv_freq)?)),
            Adapter::Full => None,
        };
        Ok(Self {
            config,
            source: path.to_path_buf(),
            name: dense.name,
            eos_token_ids: dense.eos_token_ids,
            tokenizer,
            template,
            adapter,
            base,
            full,
            lora,
            inv_freq,
            fused: true,
            hand_written: net.is_some(),
            net,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.template.as_ref()
    }

    pub fn adapter(&self) -> &Adapter {
        &self.adapter
    }

    /// The file or folder the base was loaded from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_token_ids
    }

    /// The trainable parameters, in a fixed order (by name).
    pub fn trainable(&self) -> Vec<Var> {
        self.trainable_named().into_iter().map(|(_, v)| v).collect()
    }

    /// The trainable parameters by name, sorted: HF weight names for full training,
    /// `<module>.lora_a` / `<module>.lora_b` for LoRA. Checkpoints use these names.
    pub fn trainable_named(&self) -> Vec<(String, Var)> {
        let mut out: Vec<(String, Var)> = self
            .full
            .iter()
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        for (module, l) in &self.lora {
            out.push((format!("{module}.lora_a"), l.a.clone()));
            out.push((format!("{module}.lora_b"), l.b.clone()));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Number of trainable scalars.
    pub fn num_trainable(&self) -> usize {
        self.trainable().iter().map(|v| v.elem_count()).sum()
    }

    /// Sets the trainable parameters from saved values (a checkpoint); every parameter must be
    /// given, with its shape.
    pub fn set_trainable(&self, values: &HashMap<String, Tensor>) -> Result<()> {
        for (name, var) in self.trainable_named() {
            let t = values.get(&name).ok_or_else(|| {
                TrainError::InvalidInput(format!("no saved value for parameter `{name}`"))
            })?;
            if t.dims() != var.dims() {
                return Err(TrainError::InvalidInput(format!(
                    "parameter `{name}` has shape {:?}, saved value {:?}",
                    var.dims(),
                    t.dims()
                )));
            }
            var.set(&t.to_dtype(candle_core::DType::F32)?)?;
        }
        Ok(())
    }

    /// log p(ids[t] | ids[..t]) for t = 1..len: a `[len - 1]` f32 tensor, differentiable in
    /// the trainable parameters.
    pub fn token_logprobs(&self, ids: &[u32]) -> Result<Tensor> {
        self.token_logprobs_from(ids, 1)
    }

    /// log p(ids[t] | ids[..t]) for t = from..len only (`[len - from]`): the positions before
    /// `from` (a prompt) still condition the rest, but the output head, the largest matmul,
    /// skips them.
    pub fn token_logprobs_from(&self, ids: &[u32], from: usize) -> Result<Tensor> {
        self.logprobs(ids, from, Weights::Current)
    }

    /// The same under the frozen start weights (adapters off / the base of a full run),
    /// detached: t = from..len.
    pub fn reference_logprobs_from(&self, ids: &[u32], from: usize) -> Result<Vec<f32>> {
        Ok(self
            .logprobs(ids, from, Weights::Reference)?
            .to_vec1::<f32>()?)
    }

    /// [`Self::reference_logprobs_from`] from t = 1.
    pub fn reference_logprobs(&self, ids: &[u32]) -> Result<Vec<f32>> {
        self.reference_logprobs_from(ids, 1)
    }

    /// Turns the fused attention and output-head ops off (`false`) or on (the default). The
    /// unfused path keeps every intermediate for the backward pass (several GB on a real model
    /// at a few hundred tokens); it stays for tests that check the fused ops against it.
    pub fn set_fused(&mut self, fused: bool) {
        self.fused = fused;
    }

    /// With LoRA, computes log-probs and their gradients with [`crate::backprop`]'s
    /// hand-written pass (`true`, the default) or with candle's autograd over the written-out
    /// forward (`false`, the reference the tests hold it to). Full fine-tuning always uses
    /// autograd.
    pub fn set_hand_written(&mut self, on: bool) {
        self.hand_written = on && self.net.is_some();
    }

    /// Every LoRA matrix, flattened and concatenated in the hand-written pass's order; its
    /// gradient flows back to each `Var`.
    fn flat_lora(&self, net: &LoraNet) -> Result<Tensor> {
        let mut parts = Vec::with_capacity(2 * net.order.len());
        for module in &net.order {
            let l = &self.lora[module];
            parts.push(l.a.as_tensor().flatten_all()?);
            parts.push(l.b.as_tensor().flatten_all()?);
        }
        Ok(Tensor::cat(&parts, 0)?)
    }

    fn logprobs(&self, ids: &[u32], from: usize, which: Weights) -> Result<Tensor> {
        self.check_ids(ids)?;
        if from == 0 || from >= ids.len() {
            return Err(TrainError::InvalidInput(format!(
                "log-probs from position {from} of {} tokens: need 1 ≤ from < len",
                ids.len()
            )));
        }
        if let (true, Some(net)) = (self.hand_written, &self.net) {
            return Ok(match which {
                Weights::Current => net.logprobs(&self.flat_lora(net)?, ids, from)?,
                Weights::Reference => {
                    let lp = net.base_logprobs(ids, from)?;
                    let len = lp.len();
                    Tensor::from_vec(lp, len, &Device::Cpu)?
                }
            });
        }
        let hidden =
            self.hidden(&ids[..ids.len() - 1], which)?
                .narrow(0, from - 1, ids.len() - from)?;
        let head = self.weight(self.head_name(), which)?;
        let targets = &ids[from..];
        if self.fused {
            return Ok(fused::head_logprobs(&hidden, &head, targets)?);
        }
        logprobs_of(&matmul_t(&hidden, &head)?, targets)
    }

    fn head_name(&self) -> &'static str {
        if self.has("lm_head.weight") {
            "lm_head.weight"
        } else {
            "model.embed_tokens.weight"
        }
    }

    /// Every weight with the current training applied (LoRA merged: `W + (alpha/rank) · B A`),
    /// by HF name; no `lm_head.weight` when the base ties it to the embeddings.
    pub fn merged_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::with_capacity(self.base.len());
        for name in self.base.keys() {
            let mut w = self.weight(name, Weights::Current)?.detach();
            if let Some(module) = name.strip_suffix(".weight") {
                if let Some(l) = self.lora.get(module) {
                    let delta = l.b.as_tensor().matmul(l.a.as_tensor())?;
                    w = (w + (delta * l.scale)?)?;
                }
            }
            out.insert(name.clone(), w.copy()?);
        }
        Ok(out)
    }

    /// An inference engine with the current (merged) weights, dense f32, same EOS ids: rollouts
    /// see exactly the model being trained. Pair it with [`Self::tokenizer`] and
    /// [`Self::chat_template`], or use [`Self::to_loaded_model`].
    pub fn to_engine(&self, opts: LoadOptions) -> Result<CandleEngine> {
        self.to_engine_with(opts, GgmlDType::F32)
    }

    /// [`Self::to_engine`] with the layer matrices stored as `weights` (Q8_0 decodes several
    /// times faster than f32 on a CPU, at a small cost in accuracy).
    pub fn to_engine_with(&self, opts: LoadOptions, weights: GgmlDType) -> Result<CandleEngine> {
        Ok(CandleEngine::from_tensors(
            self.config.clone(),
            self.merged_tensors()?,
            weights,
            self.name.clone(),
            self.eos_token_ids.clone(),
            opts,
        )?)
    }

    /// The engine of [`Self::to_engine`] with this model's tokenizer and chat template, as the
    /// relay and `generate` take it.
    pub fn to_loaded_model(&self, opts: LoadOptions) -> Result<LoadedModel> {
        Ok(LoadedModel {
            path: self.source.clone(),
            engine: std::sync::Arc::new(self.to_engine(opts)?),
            tokenizer: std::sync::Arc::new(self.tokenizer.clone()),
            template: self.template.clone().map(std::sync::Arc::new),
        })
    }

    fn check_ids(&self, ids: &[u32]) -> Result<()> {
        if ids.len() < 2 {
            return Err(TrainError::InvalidInput(format!(
                "log-probs need at least 2 tokens, got {}",
                ids.len()
            )));
        }
        if let Some(&id) = ids.iter().find(|&&t| t as usize >= self.config.vocab_size) {
            return Err(TrainError::InvalidInput(format!(
                "token id {id} is out of the vocabulary (size {})",
                self.config.vocab_size
            )));
        }
        if ids.len() > self.config.context_length {
            return Err(TrainError::InvalidInput(format!(
                "{} tokens exceed the context length {}",
                ids.len(),
                self.config.context_length
            )));
        }
        Ok(())
    }

    fn weight(&self, name: &str, which: Weights) -> Result<Tensor> {
        if which == Weights::Current {
            if let Some(v) = self.full.get(name) {
                return Ok(v.as_tensor().clone());
            }
        }
        self.base
            .get(name)
            .cloned()
            .ok_or_else(|| TrainError::InvalidInput(format!("model has no tensor `{name}`")))
    }

    fn has(&self, name: &str) -> bool {
        self.base.contains_key(name)
    }

    /// `x Wᵀ + b`, plus the LoRA term when the current weights are asked for.
    fn linear(&self, x: &Tensor, module: &str, which: Weights) -> Result<Tensor> {
        let w = self.weight(&format!("{module}.weight"), which)?;
        let mut y = matmul_t(x, &w)?;
        let bias = format!("{module}.bias");
        if self.has(&bias) {
            y = y.broadcast_add(&self.weight(&bias, which)?)?;
        }
        if which == Weights::Current {
            if let Some(l) = self.lora.get(module) {
                let d = x
                    .matmul(&l.a.as_tensor().t()?)?
                    .matmul(&l.b.as_tensor().t()?)?;
                y = (y + (d * l.scale)?)?;
            }
        }
        Ok(y)
    }

    /// The final hidden state after each of `ids` (the output head's input): `[len, hidden]`.
    fn hidden(&self, ids: &[u32], which: Weights) -> Result<Tensor> {
        let cfg = &self.config;
        let (n, nh, nkv, hd) = (ids.len(), cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
        let group = nh / nkv;
        let eps = cfg.rms_norm_eps;
        let dev = Device::Cpu;
        let (cos, sin) = self.rope_tables(n)?;
        let scale = 1.0 / (hd as f64).sqrt();

        let ids_t = Tensor::new(ids, &dev)?;
        let mut x = self
            .weight("model.embed_tokens.weight", which)?
            .index_select(&ids_t, 0)?;
        for i in 0..cfg.num_layers {
            let p = format!("model.layers.{i}");
            let h = rms_norm(
                &x,
                &self.weight(&format!("{p}.input_layernorm.weight"), which)?,
                eps,
            )?;
            let mut q = self
                .linear(&h, &format!("{p}.self_attn.q_proj"), which)?
                .reshape((n, nh, hd))?;
            let mut k = self
                .linear(&h, &format!("{p}.self_attn.k_proj"), which)?
                .reshape((n, nkv, hd))?;
            let v = self
                .linear(&h, &format!("{p}.self_attn.v_proj"), which)?
                .reshape((n, nkv, hd))?;
            if cfg.arch == Arch::Qwen3 {
                q = rms_norm(
                    &q,
                    &self.weight(&format!("{p}.self_attn.q_norm.weight"), which)?,
                    eps,
                )?;
                k = rms_norm(
                    &k,
                    &self.weight(&format!("{p}.self_attn.k_norm.weight"), which)?,
                    eps,
                )?;
            }
            let q = rope(&q, &cos, &sin)?;
            let k = rope(&k, &cos, &sin)?;
            // Query head h reads kv head h / group: grouping the query heads of one kv head
            // into the rows of one matmul needs no copy of k or v.
            let q = q
                .transpose(0, 1)?
                .contiguous()?
                .reshape((nkv, group * n, hd))?;
            let k = k.transpose(0, 1)?.contiguous()?;
            let v = v.transpose(0, 1)?.contiguous()?;
            let a = if self.fused {
                fused::causal_attention(&q, &k, &v, scale)?
            } else {
                let scores = (q.matmul(&k.t()?)? * scale)?
                    .reshape((nh, n, n))?
                    .broadcast_add(&causal_mask(n)?)?;
                softmax_last(&scores)?
                    .reshape((nkv, group * n, n))?
                    .matmul(&v)?
            };
            let a = a
                .reshape((nh, n, hd))?
                .transpose(0, 1)?
                .contiguous()?
                .reshape((n, nh * hd))?;
            x = (x + self.linear(&a, &format!("{p}.self_attn.o_proj"), which)?)?;

            let h = rms_norm(
                &x,
                &self.weight(&format!("{p}.post_attention_layernorm.weight"), which)?,
                eps,
            )?;
            let g = self.linear(&h, &format!("{p}.mlp.gate_proj"), which)?;
            let u = self.linear(&h, &format!("{p}.mlp.up_proj"), which)?;
            x = (x + self.linear(&(g.silu()? * u)?, &format!("{p}.mlp.down_proj"), which)?)?;
        }
        rms_norm(&x, &self.weight("model.norm.weight", which)?, eps)
    }

    /// cos/sin of positions `0..n`, `[n, 1, head_dim / 2]`, as the engine computes them.
    fn rope_tables(&self, n: usize) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        for pos in 0..n {
            for &f in &self.inv_freq {
                let (s, c) = (pos as f32 * f).sin_cos();
                cos.push(c);
                sin.push(s);
            }
        }
        Ok((
            Tensor::from_vec(cos, (n, 1, half), &Device::Cpu)?,
            Tensor::from_vec(sin, (n, 1, half), &Device::Cpu)?,
        ))
    }
}

/// The hand-written pass's view of a LoRA model: the frozen base's tensors (shared, not
/// copied) and the LoRA tensors (sharing storage with their `Var`s).
fn lora_net(
    cfg: &ModelConfig,
    base: &mut HashMap<String, Tensor>,
    lora: &BTreeMap<String, Lora>,
    inv_freq: &[f32],
) -> Result<LoraNet> {
    let vec = |base: &HashMap<String, Tensor>, name: &str| -> Result<Vec<f32>> {
        Ok(get_in(base, name)?.to_vec1::<f32>()?)
    };
    let mut order = Vec::new();
    // The modules' matrices stacked into one (and the base map's entries made views of it, so
    // nothing is held twice), with their biases (zeros for a module without one) if any has.
    let mut linear = |base: &mut HashMap<String, Tensor>, modules: &[String]| -> Result<Linear> {
        let ws = modules
            .iter()
            .map(|m| get_in(base, &format!("{m}.weight")))
            .collect::<Result<Vec<_>>>()?;
        let w = if ws.len() == 1 {
            ws[0].clone()
        } else {
            Tensor::cat(&ws, 0)?
        };
        let has_bias = modules
            .iter()
            .any(|m| base.contains_key(&format!("{m}.bias")));
        let mut biases = Vec::new();
        let mut parts = Vec::new();
        let mut at = 0;
        for (m, wi) in modules.iter().zip(&ws) {
            let out = wi.dim(0)?;
            if ws.len() > 1 {
                base.insert(format!("{m}.weight"), w.narrow(0, at, out)?);
            }
            at += out;
            if has_bias {
                biases.push(match base.get(&format!("{m}.bias")) {
                    Some(b) => b.clone(),
                    None => Tensor::zeros(out, candle_core::DType::F32, &Device::Cpu)?,
                });
            }
            let pair = lora.get(m).map(|l| LoraPair {
                // Detached (no graph inside the op), still sharing the Vars' storage.
                a: l.a.as_tensor().detach(),
                b: l.b.as_tensor().detach(),
                scale: l.scale,
                slot: order.len(),
            });
            if pair.is_some() {
                order.push(m.clone());
            }
            parts.push((out, pair));
        }
        let bias = if has_bias {
            Some(Tensor::cat(&biases, 0)?)
        } else {
            None
        };
        Ok(Linear { w, bias, parts })
    };
    let mut blocks = Vec::with_capacity(cfg.num_layers);
    for i in 0..cfg.num_layers {
        let p = format!("model.layers.{i}");
        let qk_norm = match cfg.arch {
            Arch::Qwen3 => Some((
                vec(base, &format!("{p}.self_attn.q_norm.weight"))?,
                vec(base, &format!("{p}.self_attn.k_norm.weight"))?,
            )),
            _ => None,
        };
        // Slot order: LoraTarget's order within a layer, layers in order.
        blocks.push(Block {
            input_norm: vec(base, &format!("{p}.input_layernorm.weight"))?,
            post_norm: vec(base, &format!("{p}.post_attention_layernorm.weight"))?,
            qk_norm,
            qkv: linear(
                base,
                &["q_proj", "k_proj", "v_proj"].map(|m| format!("{p}.self_attn.{m}")),
            )?,
            o: linear(base, &[format!("{p}.self_attn.o_proj")])?,
            gate_up: linear(
                base,
                &["gate_proj", "up_proj"].map(|m| format!("{p}.mlp.{m}")),
            )?,
            down: linear(base, &[format!("{p}.mlp.down_proj")])?,
        });
    }
    let head = if base.contains_key("lm_head.weight") {
        get_in(base, "lm_head.weight")?
    } else {
        get_in(base, "model.embed_tokens.weight")?
    };
    Ok(LoraNet {
        embed: get_in(base, "model.embed_tokens.weight")?,
        blocks,
        final_norm: vec(base, "model.norm.weight")?,
        head,
        dims: Dims {
            heads: cfg.num_heads,
            kv_heads: cfg.num_kv_heads,
            head_dim: cfg.head_dim,
            eps: cfg.rms_norm_eps,
            inv_freq: inv_freq.to_vec(),
        },
        order,
    })
}

fn get_in(base: &HashMap<String, Tensor>, name: &str) -> Result<Tensor> {
    base.get(name)
        .cloned()
        .ok_or_else(|| TrainError::InvalidInput(format!("model has no tensor `{name}`")))
}

/// `x Wᵀ` for `x: [n, in]`, `W: [out, in]`. A trainable `W` goes through candle's matmul; a
/// frozen one through [`FrozenMatmul`], whose backward yields the gradient of `x` alone:
/// candle's matmul backward always computes the weight's gradient too, which for a frozen
/// base is a whole extra matmul per layer and a weight-sized buffer (the output head's is
/// vocab × hidden) for nothing.
fn matmul_t(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if w.is_variable() || !x.track_op() {
        return Ok(x.matmul(&w.t()?)?);
    }
    Ok(x.contiguous()?.apply_op1(FrozenMatmul { w: w.clone() })?)
}

/// `x ↦ x Wᵀ` with `W` a constant.
struct FrozenMatmul {
    w: Tensor,
}

impl candle_core::CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let x = fused::tensor_of(storage, layout)?;
        let y = x.matmul(&self.w.t()?)?;
        let shape = y.shape().clone();
        Ok((
            candle_core::CpuStorage::F32(y.flatten_all()?.to_vec1::<f32>()?),
            shape,
        ))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.matmul(&self.w)?))
    }
}

/// `[n, n]`: 0 where a row may attend, a large negative number above the diagonal.
fn causal_mask(n: usize) -> Result<Tensor> {
    // Finite, so no 0 · inf ever reaches a gradient.
    let data: Vec<f32> = (0..n)
        .flat_map(|i| (0..n).map(move |j| if j <= i { 0.0 } else { -1e9 }))
        .collect();
    Ok(Tensor::from_vec(data, (n, n), &Device::Cpu)?)
}

/// RMSNorm over the last dimension.
fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = (ms + eps)?.sqrt()?.recip()?;
    Ok(x.broadcast_mul(&inv)?.broadcast_mul(w)?)
}

/// NEOX rotary embedding over `[n, heads, hd]` with `[n, 1, hd / 2]` tables.
fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let r1 = (x1.broadcast_mul(cos)? - x2.broadcast_mul(sin)?)?;
    let r2 = (x1.broadcast_mul(sin)? + x2.broadcast_mul(cos)?)?;
    Ok(Tensor::cat(&[r1, r2], D::Minus1)?)
}

/// Softmax over the last dimension; the shift by the row max is a constant to autograd.
fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}

/// log_softmax(logits)[t, targets[t]] for each row: `[rows]`.
fn logprobs_of(logits: &Tensor, targets: &[u32]) -> Result<Tensor> {
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let lse = (logits
        .broadcast_sub(&max)?
        .exp()?
        .sum_keepdim(D::Minus1)?
        .log()?
        + max)?;
    let idx = Tensor::new(targets, &Device::Cpu)?.unsqueeze(1)?;
    let picked = logits.gather(&idx, 1)?;
    Ok((picked - lse)?.squeeze(1)?)
}
