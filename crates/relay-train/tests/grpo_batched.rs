//! GRPO's rollouts run batched (several relays at once through one pair, their decode steps
//! shared) sample what they sample one at a time, for a fixed seed: every rollout has its own
//! seed, and its logits do not depend on which others share its batch. So the step's samples,
//! rewards, log and update are the same either way.
//!
//! Both models run with Q8_0 weights, the rollout engine's default: there a batched decode step
//! gives the very logits of a lone one (each row is quantized and dotted on its own). With F32
//! weights the batched matmul sums in another order (~1e-5 in a logit on these models), and a
//! sample could flip on a near-tie; equality here is exact, not a tolerance.
//!
//! The SLM is a tiny random model given a little SFT so that it calls the LLM on some
//! rollouts and not on others: the comparison then covers LLM-written tokens and the rewards
//! of both kinds.

use relay_core::reward::{RewardKind, RhoKind};
use relay_engine::model::{LoadedModel, ModelPair};
use relay_engine::testing::write_tiny_pair;
use relay_engine::tiny_vocab::IM_END_ID;
use relay_engine::tokenizer::Tokenizer;
use relay_engine::LoadOptions;
use relay_train::export::{export_model, ExportFormat, ExportOptions};
use relay_train::grpo::{self, GrpoConfig, Prompt, Sample};
use relay_train::sft::{self, SftConfig};
use relay_train::{Adapter, TrainModel};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `E{d}:` answered `\boxed{d}` alone half the time, with `<call>4</call>` (the LLM's
/// continuation masked out) the other half.
fn warm_slm(dir: &Path) -> (PathBuf, PathBuf) {
    let (slm0, llm) = write_tiny_pair(dir, 256);
    let tok = Tokenizer::load_for_model(&slm0).unwrap();
    let mut lines = String::new();
    for rep in 0..4 {
        for d in 0..10 {
            let mut ids = tok.encode(&format!("E{d}:"), false).unwrap();
            let mut mask = vec![0u8; ids.len()];
            let answer = tok.encode(&format!("\\boxed{{{d}}}"), false).unwrap();
            if (rep + d) % 2 == 0 {
                let call = tok.encode("<call>4</call>", false).unwrap();
                mask.extend(vec![1u8; call.len()]);
                ids.extend(call);
                mask.extend(vec![0u8; answer.len() + 1]);
            } else {
                mask.extend(vec![1u8; answer.len() + 1]);
            }
            ids.extend(answer);
            ids.push(IM_END_ID);
            lines.push_str(
                &serde_json::json!({"messages": [], "input_ids": ids, "loss_mask": mask})
                    .to_string(),
            );
            lines.push('\n');
        }
    }
    let data = dir.join("sft.jsonl");
    std::fs::write(&data, lines).unwrap();
    let mut sc = SftConfig::new(slm0.clone(), data);
    sc.adapter = Adapter::Full;
    sc.epochs = 2;
    sc.lr = 3e-3;
    sc.grad_accum = 8;
    sc.save_every = 0;
    let s = sft::train(&sc, &dir.join("sft"), false, |_| ControlFlow::Continue(())).unwrap();
    let model = relay_train::TrainModel::load(&slm0, Adapter::Full, 0).unwrap();
    model
        .set_trainable(&relay_train::checkpoint::load(&s.checkpoint).unwrap().params)
        .unwrap();
    let slm = dir.join("slm-sft.gguf");
    let opts = ExportOptions {
        format: ExportFormat::Gguf,
        gguf_weights: candle_core::quantized::GgmlDType::F32,
    };
    export_model(&model, &slm, &opts).unwrap();
    (slm, llm)
}

/// The model at `path` as the relay runs it, with Q8_0 weights.
fn q8_0(path: &Path) -> LoadedModel {
    let model = TrainModel::load(path, Adapter::Full, 0).unwrap();
    let engine = model
        .to_engine_with(
            LoadOptions::default(),
            candle_core::quantized::GgmlDType::Q8_0,
        )
        .unwrap();
    LoadedModel {
        path: path.to_path_buf(),
        engine: std::sync::Arc::new(engine),
        tokenizer: std::sync::Arc::new(model.tokenizer().clone()),
        template: model.chat_template().cloned().map(std::sync::Arc::new),
    }
}

fn config(slm: PathBuf, data: PathBuf) -> GrpoConfig {
    let mut cfg = GrpoConfig::new(slm, data);
    cfg.group = 8;
    cfg.prompts_per_step = 2;
    cfg.max_tokens = 16;
    cfg.max_calls = 1;
    cfg.max_call_tokens = 4;
    cfg.chat = false;
    cfg.instruction = false;
    cfg.reward = RewardKind::Difficulty;
    cfg.rho = RhoKind::Requested;
    cfg.save_every = 0;
    cfg
}

/// What a rollout sampled and how it was scored.
fn key(s: &Sample) -> impl PartialEq + std::fmt::Debug {
    (
        s.index,
        s.prompt_ids.clone(),
        s.response_ids.clone(),
        s.sources.clone(),
        s.text.clone(),
        s.correct,
        serde_json::to_string(&s.calls).unwrap(),
        s.reward,
        s.advantage,
    )
}

#[test]
fn batched_rollouts_equal_rollouts_one_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let (slm_path, llm_path) = warm_slm(dir.path());
    let pair = ModelPair::new(q8_0(&slm_path), q8_0(&llm_path));
    let prompts = [
        Prompt {
            index: 3,
            problem: "E1:".into(),
            answer: "1".into(),
        },
        Prompt {
            index: 8,
            problem: "E7:".into(),
            answer: "7".into(),
        },
    ];
    let prompts: Vec<&Prompt> = prompts.iter().collect();
    let cfg = config(slm_path, dir.path().join("unused.jsonl"));
    let run = |concurrency: usize| {
        let cfg = GrpoConfig {
            rollout_concurrency: concurrency,
            ..cfg.clone()
        };
        let mut r = grpo::rollout_step(&pair, &cfg, &prompts, 5).unwrap();
        for g in &mut r.groups {
            grpo::score_group(g, cfg.reward, cfg.rho);
        }
        r
    };
    let one = run(1);
    assert_eq!(one.slm_batch_mean, 1.0);
    let samples: Vec<&Sample> = one.groups.iter().flatten().collect();
    assert_eq!(samples.len(), 16);
    assert!(
        one.groups[0].iter().all(|s| s.index == 3) && one.groups[1].iter().all(|s| s.index == 8),
        "groups in the prompts' order"
    );
    // The comparison means something: calls and LLM-written tokens on some rollouts, not all,
    // and rollouts that differ from each other.
    let calling = samples.iter().filter(|s| s.llm_tokens() > 0).count();
    assert!(
        (1..16).contains(&calling),
        "{calling} of 16 rollouts have LLM tokens"
    );
    let distinct: std::collections::HashSet<_> =
        samples.iter().map(|s| s.response_ids.clone()).collect();
    assert!(distinct.len() > 2, "{} distinct responses", distinct.len());

    for concurrency in [8, 16] {
        let batched = run(concurrency);
        assert!(
            batched.slm_batch_mean > 1.5,
            "{concurrency} at once: decode steps were batched ({:.2} a forward)",
            batched.slm_batch_mean
        );
        for (p, (a, b)) in one.groups.iter().zip(&batched.groups).enumerate() {
            assert_eq!(a.len(), b.len());
            for (g, (a, b)) in a.iter().zip(b).enumerate() {
                assert_eq!(
                    key(a),
                    key(b),
                    "prompt {p} rollout {g}: one at a time vs {concurrency} at once"
                );
            }
        }
    }
}

#[test]
fn a_step_trains_the_same_with_batched_rollouts() {
    let dir = tempfile::tempdir().unwrap();
    let (slm, llm_path) = warm_slm(dir.path());
    let llm = q8_0(&llm_path);
    let data = dir.path().join("p.jsonl");
    let lines: Vec<String> = (0..10)
        .map(|d| {
            serde_json::json!({"problem": format!("E{d}:"), "answer": d.to_string()}).to_string()
        })
        .collect();
    std::fs::write(&data, lines.join("\n")).unwrap();
    let mut cfg = config(slm, data);
    // LoRA and the default rollout engine (Q8_0), as a real run has them.
    cfg.adapter = Adapter::lora(2, 4.0);
    cfg.lr = 1e-2;
    cfg.steps = 2;
    let run = |concurrency: usize| {
        let cfg = GrpoConfig {
            rollout_concurrency: concurrency,
            ..cfg.clone()
        };
        let out = dir.path().join(format!("c{concurrency}"));
        let mut logs = Vec::new();
        let s = grpo::train(&cfg, &llm, &out, false, |l| {
            logs.push(l.clone());
            ControlFlow::Continue(())
        })
        .unwrap();
        let rollouts = std::fs::read_to_string(out.join(grpo::ROLLOUTS_LOG)).unwrap();
        let ckpt = relay_train::checkpoint::load(&s.checkpoint).unwrap();
        (logs, rollouts, ckpt)
    };
    let (logs1, rollouts1, ckpt1) = run(1);
    let (logs8, rollouts8, ckpt8) = run(8);
    assert_eq!(rollouts1, rollouts8, "rollouts.jsonl");
    assert_eq!(logs1.len(), 2);
    for (a, b) in logs1.iter().zip(&logs8) {
        let timeless = |l: &grpo::StepLog| grpo::StepLog {
            rollout_s: 0.0,
            train_s: 0.0,
            rollout_tok_s: 0.0,
            rollout_batch_mean: 0.0,
            rollout_engine_s: 0.0,
            logprob_s: 0.0,
            update_s: 0.0,
            ..l.clone()
        };
        assert_eq!(timeless(a), timeless(b), "step {}", a.step);
        assert_eq!(a.rollout_batch_mean, 1.0);
        assert!(b.rollout_batch_mean > 1.5, "{}", b.rollout_batch_mean);
    }
    for (name, t1) in &ckpt1.params {
        let t8 = &ckpt8.params[name];
        let diff: f32 = (t1 - t8)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert_eq!(diff, 0.0, "{name} differs");
    }
    // The step's timing adds up and counts what the rollouts wrote.
    let per_step: Vec<usize> = rollouts1
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .fold(vec![0; 2], |mut acc, v| {
            acc[v["step"].as_u64().unwrap() as usize - 1] +=
                v["response_tokens"].as_u64().unwrap() as usize;
            acc
        });
    for l in logs1.iter().chain(&logs8) {
        assert_eq!(l.rollout_tokens, per_step[l.step - 1]);
        assert!(l.rollout_tokens > 0 && l.rollout_tok_s > 0.0, "{l:?}");
        assert!(
            l.rollout_engine_s > 0.0 && l.rollout_engine_s < l.rollout_s,
            "{l:?}"
        );
        assert!(l.logprob_s > 0.0 && l.update_s > 0.0, "{l:?}");
        let parts = l.logprob_s + l.update_s;
        assert!(
            parts <= l.train_s && l.train_s - parts < 0.25 * l.train_s + 0.05,
            "{l:?}"
        );
    }
}

#[test]
fn a_failing_rollout_returns_its_error_and_stops_the_step() {
    let dir = tempfile::tempdir().unwrap();
    let (slm, llm) = write_tiny_pair(dir.path(), 64);
    let load = |p: &Path| LoadedModel::load(p, LoadOptions::default()).unwrap();
    let pair = ModelPair::new(load(&slm), load(&llm));
    // The second prompt does not fit the 64-token context: its prefill fails.
    let prompts = [
        Prompt {
            index: 0,
            problem: "E1:".into(),
            answer: "1".into(),
        },
        Prompt {
            index: 1,
            problem: "E1: ".repeat(100),
            answer: "1".into(),
        },
    ];
    let prompts: Vec<&Prompt> = prompts.iter().collect();
    for concurrency in [1, 4, 16] {
        let mut cfg = config(slm.clone(), dir.path().join("unused.jsonl"));
        cfg.max_tokens = 8;
        cfg.rollout_concurrency = concurrency;
        let t = Instant::now();
        let r = grpo::rollout_step(&pair, &cfg, &prompts, 0);
        let err = r.expect_err("a prompt over the context fails the step");
        assert!(
            err.to_string().contains("context"),
            "{concurrency} at once: {err}"
        );
        assert!(t.elapsed() < Duration::from_secs(60));
    }
}
