//! Loading tiny Qwen2/Qwen3 models from GGUF (F32, Q8_0, Q4_K) and HF safetensors.
//! The F32 GGUF and the safetensors hold the same weights, so their logits must agree to
//! 1e-4 (same math, same order). Quantized files are compared to F32 by relative L2 error.

use relay_engine::candle::Arch;
use relay_engine::testing::max_diff;
use relay_engine::tiny::{tiny_engine, write_tiny_model, TinyConfig, TinyFormat, TinyWeights};
use relay_engine::{CandleEngine, Engine, LoadOptions};

fn rel_l2(a: &[f32], b: &[f32]) -> f32 {
    let num: f32 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f32 = b.iter().map(|y| y * y).sum();
    (num / den).sqrt()
}

fn run(e: &CandleEngine, tokens: &[u32]) -> Vec<Vec<f32>> {
    let s = e.create_sequence().unwrap();
    let mut out = vec![e.prefill(s, &tokens[..3]).unwrap()];
    for &t in &tokens[3..] {
        out.push(e.step(&[(s, t)]).unwrap().remove(0));
    }
    e.free(s).unwrap();
    out
}

const TOKENS: [u32; 8] = [11, 22, 33, 44, 55, 66, 77, 88];

#[test]
fn gguf_f32_and_safetensors_agree() {
    for cfg in [TinyConfig::qwen2(), TinyConfig::qwen3()] {
        let (g, _d1) = tiny_engine(&cfg, TinyFormat::Gguf, LoadOptions::default()).unwrap();
        let (s, _d2) = tiny_engine(&cfg, TinyFormat::Safetensors, LoadOptions::default()).unwrap();
        for (a, b) in run(&g, &TOKENS).iter().zip(run(&s, &TOKENS)) {
            let d = max_diff(a, &b);
            assert!(
                d <= 1e-4,
                "{:?}: GGUF vs safetensors differ by {d}",
                cfg.arch
            );
        }
    }
}

#[test]
fn model_info_is_read_from_the_file() {
    for cfg in [TinyConfig::qwen2(), TinyConfig::qwen3()] {
        for format in [TinyFormat::Gguf, TinyFormat::Safetensors] {
            let (e, _d) = tiny_engine(&cfg, format, LoadOptions::default()).unwrap();
            let info = e.info();
            assert_eq!(info.architecture, cfg.arch.name());
            assert_eq!(info.vocab_size, cfg.vocab_size);
            assert_eq!(info.context_length, cfg.context_length);
            assert_eq!(info.eos_token_ids, vec![cfg.eos_token_id]);
            let c = e.config();
            assert_eq!(
                (c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim),
                (
                    cfg.num_layers,
                    cfg.num_heads,
                    cfg.num_kv_heads,
                    cfg.head_dim
                )
            );
            assert_eq!(c.rope_theta, cfg.rope_theta);
        }
    }
    let (e, _d) = tiny_engine(
        &TinyConfig::qwen2(),
        TinyFormat::Gguf,
        LoadOptions {
            max_context: Some(32),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(e.info().context_length, 32);
}

#[test]
fn quantized_gguf_stays_close_to_f32() {
    for (arch_cfg, weights, bound) in [
        (TinyConfig::qwen2(), TinyWeights::Q8_0, 0.03),
        (TinyConfig::qwen3(), TinyWeights::Q8_0, 0.03),
        (TinyConfig::qwen2(), TinyWeights::Q4K, 0.25),
        (TinyConfig::qwen3(), TinyWeights::Q4K, 0.25),
    ] {
        let qcfg = arch_cfg.with_weights(weights);
        // Same shape and seed, F32 storage: the reference.
        let fcfg = TinyConfig {
            weights: TinyWeights::F32,
            ..qcfg.clone()
        };
        let (q, _d1) = tiny_engine(&qcfg, TinyFormat::Gguf, LoadOptions::default()).unwrap();
        let (f, _d2) = tiny_engine(&fcfg, TinyFormat::Gguf, LoadOptions::default()).unwrap();
        for (a, b) in run(&q, &TOKENS).iter().zip(run(&f, &TOKENS)) {
            let e = rel_l2(a, &b);
            assert!(
                e <= bound,
                "{:?} {weights:?}: relative L2 error {e} > {bound}",
                qcfg.arch
            );
            assert!(
                e > 0.0,
                "quantized weights should not be bit-identical to f32"
            );
        }
    }
}

#[test]
fn qwen2_and_qwen3_are_different_forwards() {
    // Same seed and shape except the arch: q/k norm and biases must change the output.
    let a = TinyConfig::qwen2();
    let b = TinyConfig {
        arch: Arch::Qwen3,
        ..TinyConfig::qwen2()
    };
    let (ea, _d1) = tiny_engine(&a, TinyFormat::Gguf, LoadOptions::default()).unwrap();
    let (eb, _d2) = tiny_engine(&b, TinyFormat::Gguf, LoadOptions::default()).unwrap();
    let (la, lb) = (run(&ea, &TOKENS), run(&eb, &TOKENS));
    assert!(max_diff(&la[0], &lb[0]) > 1e-2);
}

#[test]
fn write_tiny_model_writes_both_forms() {
    let dir = tempfile::tempdir().unwrap();
    for arch in [Arch::Qwen2, Arch::Qwen3] {
        let paths = write_tiny_model(dir.path(), arch).unwrap();
        assert!(paths.gguf.is_file());
        assert!(paths.safetensors_dir.join("config.json").is_file());
        assert!(paths.safetensors_dir.join("model.safetensors").is_file());
        let g = CandleEngine::load(&paths.gguf, LoadOptions::default()).unwrap();
        let s = CandleEngine::load(&paths.safetensors_dir, LoadOptions::default()).unwrap();
        assert!(max_diff(&run(&g, &TOKENS)[5], &run(&s, &TOKENS)[5]) <= 1e-4);
    }
}

#[test]
fn tiny_weights_are_deterministic_from_the_seed() {
    let a = TinyConfig::qwen2().tensors().unwrap();
    let b = TinyConfig::qwen2().tensors().unwrap();
    let c = TinyConfig {
        seed: 7,
        ..TinyConfig::qwen2()
    }
    .tensors()
    .unwrap();
    let name = "model.layers.1.mlp.down_proj.weight";
    let v = |m: &std::collections::BTreeMap<String, candle_core::Tensor>| {
        m[name].flatten_all().unwrap().to_vec1::<f32>().unwrap()
    };
    assert_eq!(v(&a), v(&b));
    assert_ne!(v(&a), v(&c));
}
