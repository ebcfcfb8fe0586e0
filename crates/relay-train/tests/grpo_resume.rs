//! A GRPO run stopped and resumed ends where an uninterrupted run ends: rollout seeds come from
//! (seed, step, prompt, rollout) and the optimizer state is in the checkpoint; how many
//! rollouts run at once does not matter.

use relay_engine::model::LoadedModel;
use relay_engine::testing::write_tiny_pair;
use relay_engine::tiny_vocab::IM_END_ID;
use relay_engine::tokenizer::Tokenizer;
use relay_engine::LoadOptions;
use relay_train::export::{export_model, ExportFormat, ExportOptions};
use relay_train::grpo::{self, GrpoConfig};
use relay_train::sft::{self, SftConfig};
use relay_train::Adapter;
use std::ops::ControlFlow;

#[test]
fn resumed_grpo_equals_uninterrupted() {
    let dir = tempfile::tempdir().unwrap();
    let (slm0, llm_path) = write_tiny_pair(dir.path(), 256);
    // A little SFT on "Ed:" -> "\\boxed{d}" so that some rollouts are right and some wrong:
    // advantages are not all zero and the update has something to do.
    let tok = Tokenizer::load_for_model(&slm0).unwrap();
    let mut lines = String::new();
    for _ in 0..4 {
        for d in 0..10 {
            let mut ids = tok.encode(&format!("E{d}:"), false).unwrap();
            let mut mask = vec![0u8; ids.len()];
            let ans = tok.encode(&format!("\\boxed{{{d}}}"), false).unwrap();
            mask.extend(vec![1u8; ans.len() + 1]);
            ids.extend(ans);
            ids.push(IM_END_ID);
            lines.push_str(
                &serde_json::json!({"messages": [], "input_ids": ids, "loss_mask": mask})
                    .to_string(),
            );
            lines.push('\n');
        }
    }
    let sft_data = dir.path().join("sft.jsonl");
    std::fs::write(&sft_data, lines).unwrap();
    let mut sc = SftConfig::new(slm0.clone(), sft_data);
    sc.adapter = Adapter::Full;
    sc.lr = 3e-3;
    sc.grad_accum = 8;
    sc.save_every = 0;
    let s = sft::train(&sc, &dir.path().join("sft"), false, |_| {
        ControlFlow::Continue(())
    })
    .unwrap();
    let model = relay_train::TrainModel::load(&slm0, Adapter::Full, 0).unwrap();
    model
        .set_trainable(&relay_train::checkpoint::load(&s.checkpoint).unwrap().params)
        .unwrap();
    let slm = dir.path().join("slm-sft.gguf");
    let opts = ExportOptions {
        format: ExportFormat::Gguf,
        gguf_weights: candle_core::quantized::GgmlDType::F32,
    };
    export_model(&model, &slm, &opts).unwrap();
    let llm = LoadedModel::load(&llm_path, LoadOptions::default()).unwrap();
    let data = dir.path().join("p.jsonl");
    std::fs::write(
        &data,
        "{\"problem\":\"E1:\",\"answer\":\"1\"}\n{\"problem\":\"E7:\",\"answer\":\"7\"}\n{\"problem\":\"E4:\",\"answer\":\"4\"}\n",
    )
    .unwrap();
    let mut cfg = GrpoConfig::new(slm, data);
    cfg.adapter = Adapter::lora(2, 4.0);
    cfg.group = 4;
    cfg.prompts_per_step = 2;
    cfg.lr = 1e-2;
    cfg.max_tokens = 6;
    cfg.chat = false;
    cfg.instruction = false;
    cfg.save_every = 0;
    let go = |cfg: &GrpoConfig, out: &std::path::Path, resume: bool| {
        grpo::train(cfg, &llm, out, resume, |_| ControlFlow::Continue(())).unwrap()
    };
    cfg.steps = 4;
    let straight = go(&cfg, &dir.path().join("a"), false);
    cfg.steps = 2;
    go(&cfg, &dir.path().join("b"), false);
    cfg.steps = 4;
    // Rollouts one at a time now, batched before: a speed knob, free to change on resume.
    cfg.rollout_concurrency = 1;
    let resumed = go(&cfg, &dir.path().join("b"), true);
    assert_eq!(resumed.resumed_from, Some(2));
    let a = relay_train::checkpoint::load(&straight.checkpoint).unwrap();
    let b = relay_train::checkpoint::load(&resumed.checkpoint).unwrap();
    assert_eq!(a.meta.step, 4);
    assert_eq!(b.meta.step, 4);
    let mut moved = 0.0f32;
    for (name, ta) in &a.params {
        let tb = &b.params[name];
        let diff: f32 = (ta - tb)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert_eq!(diff, 0.0, "{name} differs after resume");
        if name.ends_with(".lora_b") {
            // B starts at zero: anything here is training.
            moved += ta
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
        }
    }
    assert!(moved > 0.0, "training changed the adapters");
    let la = std::fs::read_to_string(dir.path().join("a").join(grpo::GRPO_LOG)).unwrap();
    let lb = std::fs::read_to_string(dir.path().join("b").join(grpo::GRPO_LOG)).unwrap();
    let strip = |s: &str| -> Vec<serde_json::Value> {
        s.lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                for k in [
                    "rollout_s",
                    "train_s",
                    "rollout_tok_s",
                    "rollout_batch_mean",
                    "rollout_engine_s",
                    "logprob_s",
                    "update_s",
                ] {
                    v.as_object_mut().unwrap().remove(k);
                }
                v
            })
            .collect()
    };
    assert_eq!(strip(&la), strip(&lb), "the logs match step for step");
}
