//! The training forward against the inference engine, and its gradients against finite
//! differences.

mod common;

use candle_core::{Device, Tensor};
use common::{ids, tiny_gguf, tiny_hf};
use relay_engine::candle::Arch;
use relay_engine::testing::max_diff;
use relay_engine::{CandleEngine, Engine, LoadOptions};
use relay_train::{Adapter, TrainModel};

#[test]
fn logprobs_match_the_engine_on_qwen2_and_qwen3_gguf_and_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    for arch in [Arch::Qwen2, Arch::Qwen3] {
        for path in [tiny_gguf(dir.path(), arch), tiny_hf(dir.path(), arch)] {
            let engine = CandleEngine::load(&path, LoadOptions::default()).unwrap();
            let model = TrainModel::load(&path, Adapter::lora(4, 8.0), 1).unwrap();
            let seq = ids(48, 7);
            let want = engine.score(&seq).unwrap();
            let got = model
                .token_logprobs(&seq)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let d = max_diff(&got, &want);
            assert!(d < 1e-3, "{arch:?} {}: max diff {d}", path.display());
            // LoRA starts at B = 0: the reference is the same model.
            let reference = model.reference_logprobs(&seq).unwrap();
            assert!(max_diff(&reference, &got) < 1e-5);
            // Sanity: these are real distributions, not all equal.
            assert!(got.iter().all(|x| *x <= 0.0) && got.iter().any(|x| *x < -1.0));
        }
    }
}

#[test]
fn trained_weights_reach_the_engine_and_the_reference_stays_put() {
    let dir = tempfile::tempdir().unwrap();
    for (arch, adapter) in [
        (Arch::Qwen2, Adapter::lora(4, 8.0)),
        (Arch::Qwen3, Adapter::Full),
    ] {
        let path = tiny_gguf(dir.path(), arch);
        let base = CandleEngine::load(&path, LoadOptions::default()).unwrap();
        let model = TrainModel::load(&path, adapter, 3).unwrap();
        // Move every trainable parameter.
        for (i, v) in model.trainable().iter().enumerate() {
            let noise = Tensor::randn(0f32, 0.05, v.dims(), &Device::Cpu).unwrap();
            let _ = i;
            v.set(&(v.as_tensor() + noise).unwrap()).unwrap();
        }
        let seq = ids(40, 11);
        let got = model
            .token_logprobs(&seq)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let base_lp = base.score(&seq).unwrap();
        assert!(
            max_diff(&got, &base_lp) > 1e-2,
            "{arch:?}: training changed nothing"
        );
        let reference = model.reference_logprobs(&seq).unwrap();
        assert!(
            max_diff(&reference, &base_lp) < 1e-3,
            "{arch:?}: reference moved"
        );
        let merged = model.to_engine(LoadOptions::default()).unwrap();
        assert_eq!(merged.info().eos_token_ids, base.info().eos_token_ids);
        let d = max_diff(&merged.score(&seq).unwrap(), &got);
        assert!(d < 1e-3, "{arch:?}: merged engine differs by {d}");
    }
}

/// Central differences on a few LoRA entries (the largest gradients of one A and one B) of a
/// tiny model whose B is non-zero, so both halves of each pair carry gradient.
#[test]
fn lora_gradients_match_finite_differences() {
    let dir = tempfile::tempdir().unwrap();
    for arch in [Arch::Qwen2, Arch::Qwen3] {
        let path = tiny_hf(dir.path(), arch);
        let model = TrainModel::load(&path, Adapter::lora(4, 8.0), 5).unwrap();
        for (name, v) in model.trainable_named() {
            if name.ends_with("lora_b") {
                let t = Tensor::randn(0f32, 0.05, v.dims(), &Device::Cpu).unwrap();
                v.set(&t).unwrap();
            }
        }
        let seq = ids(24, 3);
        let weights: Vec<f32> = (0..seq.len() - 1)
            .map(|i| if i % 3 == 0 { -1.0 } else { 0.5 })
            .collect();
        let w = Tensor::new(weights.as_slice(), &Device::Cpu).unwrap();
        let loss = |m: &TrainModel| -> Tensor {
            (m.token_logprobs(&seq).unwrap() * &w)
                .unwrap()
                .sum_all()
                .unwrap()
        };
        let grads = loss(&model).backward().unwrap();
        let named = model.trainable_named();
        let picks = [
            "model.layers.0.self_attn.q_proj.lora_a",
            "model.layers.1.mlp.down_proj.lora_b",
            "model.layers.0.self_attn.v_proj.lora_b",
        ];
        for pick in picks {
            let (_, var) = named.iter().find(|(n, _)| n == pick).unwrap();
            let g = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap();
            let g = g.to_vec1::<f32>().unwrap();
            // The two largest entries.
            let mut order: Vec<usize> = (0..g.len()).collect();
            order.sort_by(|&a, &b| g[b].abs().total_cmp(&g[a].abs()));
            let base = var
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            for &i in &order[..2] {
                let h = 1e-2f32;
                let at = |delta: f32| -> f64 {
                    let mut p = base.clone();
                    p[i] += delta;
                    var.set(&Tensor::from_vec(p, var.dims(), &Device::Cpu).unwrap())
                        .unwrap();
                    loss(&model).to_scalar::<f32>().unwrap() as f64
                };
                let fd = (at(h) - at(-h)) / (2.0 * h as f64);
                var.set(&Tensor::from_vec(base.clone(), var.dims(), &Device::Cpu).unwrap())
                    .unwrap();
                let an = g[i] as f64;
                assert!(
                    an.abs() > 1e-3,
                    "{arch:?} {pick}[{i}]: gradient {an} too small to check"
                );
                assert!(
                    (fd - an).abs() <= 0.03 * an.abs() + 2e-3,
                    "{arch:?} {pick}[{i}]: autograd {an}, finite difference {fd}"
                );
            }
        }
    }
}

/// The hand-written LoRA pass (the default with LoRA) against candle's autograd over the
/// written-out forward with the fused ops: the same log-probs, reference log-probs and
/// gradient for every LoRA matrix, on Qwen2 (q/k/v biases) and Qwen3 (q/k norms), from a
/// prompt offset, and again on a second backward over the same graph.
#[test]
fn hand_written_lora_pass_gives_autograds_values_and_gradients() {
    let dir = tempfile::tempdir().unwrap();
    for arch in [Arch::Qwen2, Arch::Qwen3] {
        let path = tiny_hf(dir.path(), arch);
        let hand = TrainModel::load(&path, Adapter::lora(4, 8.0), 13).unwrap();
        let mut auto = TrainModel::load(&path, Adapter::lora(4, 8.0), 13).unwrap();
        auto.set_hand_written(false);
        for ((name, a), (_, b)) in hand.trainable_named().iter().zip(auto.trainable_named()) {
            let t = if name.ends_with("lora_b") {
                Tensor::randn(0f32, 0.05, a.dims(), &Device::Cpu).unwrap()
            } else {
                a.as_tensor().copy().unwrap()
            };
            a.set(&t).unwrap();
            b.set(&t).unwrap();
        }
        let seq = ids(37, 5);
        let from = 6;
        let weights: Vec<f32> = (from..seq.len())
            .map(|i| if i % 3 == 0 { -1.0 } else { 0.4 })
            .collect();
        let w = Tensor::new(weights.as_slice(), &Device::Cpu).unwrap();
        let lp_h = hand.token_logprobs_from(&seq, from).unwrap();
        let lp_a = auto.token_logprobs_from(&seq, from).unwrap();
        let (vh, va) = (
            lp_h.to_vec1::<f32>().unwrap(),
            lp_a.to_vec1::<f32>().unwrap(),
        );
        assert_eq!(vh.len(), seq.len() - from);
        let d = max_diff(&vh, &va);
        // Summation order differs (a few ulps of values near -10).
        assert!(d < 1e-4, "{arch:?}: log-probs differ by {d}");
        assert!(
            vh.iter().any(|x| *x < -1.0),
            "{arch:?}: degenerate log-probs"
        );
        let r_h = hand.reference_logprobs_from(&seq, from).unwrap();
        let r_a = auto.reference_logprobs_from(&seq, from).unwrap();
        assert!(max_diff(&r_h, &r_a) < 1e-4, "{arch:?}: reference differs");
        assert!(max_diff(&r_h, &vh) > 1e-3, "{arch:?}: LoRA changed nothing");
        let loss_h = (&lp_h * &w).unwrap().sum_all().unwrap();
        let g_a = (&lp_a * &w).unwrap().sum_all().unwrap().backward().unwrap();
        // Twice over the same graph: the second backward recomputes what the first consumed.
        for round in 0..2 {
            let g_h = loss_h.backward().unwrap();
            let mut checked = 0;
            for ((name, a), (_, b)) in hand.trainable_named().iter().zip(auto.trainable_named()) {
                let gh = g_h.get(a.as_tensor()).unwrap().flatten_all().unwrap();
                let ga = g_a.get(b.as_tensor()).unwrap().flatten_all().unwrap();
                let (gh, ga) = (gh.to_vec1::<f32>().unwrap(), ga.to_vec1::<f32>().unwrap());
                let scale = ga.iter().fold(0f32, |m, x| m.max(x.abs()));
                let d = max_diff(&gh, &ga);
                assert!(
                    scale > 1e-6 && d <= 1e-4 * scale.max(1e-2),
                    "{arch:?} round {round} {name}: gradients differ by {d} (largest {scale})"
                );
                checked += 1;
            }
            assert_eq!(checked, hand.trainable_named().len());
        }
    }
}

/// The fused attention and output-head ops (the default) against the written-out forward:
/// same log-probs and the same gradient for every trainable parameter, with LoRA and with full
/// training (where the tied output head / embedding is trainable too).
#[test]
fn fused_ops_give_the_written_out_values_and_gradients() {
    let dir = tempfile::tempdir().unwrap();
    for (arch, adapter) in [
        (Arch::Qwen2, Adapter::lora(4, 8.0)),
        (Arch::Qwen3, Adapter::Full),
    ] {
        let path = tiny_hf(dir.path(), arch);
        let fused = TrainModel::load(&path, adapter.clone(), 9).unwrap();
        let mut plain = TrainModel::load(&path, adapter, 9).unwrap();
        plain.set_fused(false);
        plain.set_hand_written(false);
        // Non-zero LoRA B (or moved full weights), the same in both models.
        for ((name, a), (_, b)) in fused.trainable_named().iter().zip(plain.trainable_named()) {
            let noise = Tensor::randn(0f32, 0.05, a.dims(), &Device::Cpu).unwrap();
            let t = if name.ends_with("lora_a") {
                a.as_tensor().copy().unwrap()
            } else {
                (a.as_tensor() + noise).unwrap().detach()
            };
            a.set(&t).unwrap();
            b.set(&t).unwrap();
        }
        let seq = ids(40, 21);
        let from = 9;
        let weights: Vec<f32> = (from..seq.len())
            .map(|i| if i % 4 == 0 { -1.5 } else { 0.7 })
            .collect();
        let w = Tensor::new(weights.as_slice(), &Device::Cpu).unwrap();
        let run = |m: &TrainModel| {
            let lp = m.token_logprobs_from(&seq, from).unwrap();
            let grads = (&lp * &w).unwrap().sum_all().unwrap().backward().unwrap();
            (lp.to_vec1::<f32>().unwrap(), grads)
        };
        let (lp_f, g_f) = run(&fused);
        let (lp_p, g_p) = run(&plain);
        assert_eq!(lp_f.len(), seq.len() - from);
        assert!(max_diff(&lp_f, &lp_p) < 1e-4, "{arch:?}: log-probs differ");
        // The tail of the full-length log-probs.
        let all = fused
            .token_logprobs(&seq)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(max_diff(&all[from - 1..], &lp_f) < 1e-5);
        let mut checked = 0;
        for ((name, a), (_, b)) in fused.trainable_named().iter().zip(plain.trainable_named()) {
            let ga = g_f.get(a.as_tensor()).unwrap().flatten_all().unwrap();
            let gb = g_p.get(b.as_tensor()).unwrap().flatten_all().unwrap();
            let (ga, gb) = (ga.to_vec1::<f32>().unwrap(), gb.to_vec1::<f32>().unwrap());
            let scale = gb.iter().fold(0f32, |m, x| m.max(x.abs()));
            let d = max_diff(&ga, &gb);
            assert!(
                d <= 1e-3 * scale.max(1e-3),
                "{arch:?} {name}: gradients differ by {d} (largest {scale})"
            );
            checked += 1;
        }
        assert!(checked > 10, "{arch:?}: only {checked} parameters compared");
        // The reference path agrees with itself fused or not.
        let r_f = fused.reference_logprobs_from(&seq, from).unwrap();
        let r_p = plain.reference_logprobs_from(&seq, from).unwrap();
        assert!(max_diff(&r_f, &r_p) < 1e-4);
        assert!(fused.token_logprobs_from(&seq, 0).is_err());
        assert!(fused.token_logprobs_from(&seq, seq.len()).is_err());
    }
}
