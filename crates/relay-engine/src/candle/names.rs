//! Tensor names: llama.cpp's GGUF names (`blk.0.attn_q.weight`) and Hugging Face's
//! (`model.layers.0.self_attn.q_proj.weight`) for the Qwen2 / Qwen3 tensors we load. One table
//! both ways, so the tiny-model writer, the trainer and the exporter agree.

/// (HF module inside a layer, GGUF module inside a block).
const LAYER_MODULES: [(&str, &str); 11] = [
    ("input_layernorm", "attn_norm"),
    ("post_attention_layernorm", "ffn_norm"),
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("self_attn.q_norm", "attn_q_norm"),
    ("self_attn.k_norm", "attn_k_norm"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
];

/// (HF name, GGUF name) of the tensors outside the layers.
const GLOBAL: [(&str, &str); 3] = [
    ("model.embed_tokens.weight", "token_embd.weight"),
    ("model.norm.weight", "output_norm.weight"),
    ("lm_head.weight", "output.weight"),
];

/// The GGUF name of an HF tensor name; `None` for a name outside the Qwen2/Qwen3 set.
pub fn hf_to_gguf(hf: &str) -> Option<String> {
    if let Some((_, g)) = GLOBAL.iter().find(|(h, _)| *h == hf) {
        return Some(g.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (i, rest) = rest.split_once('.')?;
    let (module, suffix) = rest.rsplit_once('.')?;
    let (_, g) = LAYER_MODULES.iter().find(|(h, _)| *h == module)?;
    Some(format!("blk.{i}.{g}.{suffix}"))
}

/// The HF name of a GGUF tensor name; `None` for a name outside the Qwen2/Qwen3 set.
pub fn gguf_to_hf(gguf: &str) -> Option<String> {
    if let Some((h, _)) = GLOBAL.iter().find(|(_, g)| *g == gguf) {
        return Some(h.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (i, rest) = rest.split_once('.')?;
    let (module, suffix) = rest.rsplit_once('.')?;
    let (h, _) = LAYER_MODULES.iter().find(|(_, g)| *g == module)?;
    Some(format!("model.layers.{i}.{h}.{suffix}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for hf in [
            "model.embed_tokens.weight",
            "lm_head.weight",
            "model.layers.3.self_attn.q_proj.bias",
            "model.layers.0.mlp.down_proj.weight",
            "model.layers.11.self_attn.k_norm.weight",
        ] {
            let g = hf_to_gguf(hf).unwrap();
            assert_eq!(gguf_to_hf(&g).as_deref(), Some(hf));
        }
        assert_eq!(
            hf_to_gguf("model.layers.2.self_attn.o_proj.weight").as_deref(),
            Some("blk.2.attn_output.weight")
        );
        assert_eq!(hf_to_gguf("model.layers.2.rotary.inv_freq"), None);
    }
}
