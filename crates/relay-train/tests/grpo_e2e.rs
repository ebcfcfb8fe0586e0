//! GRPO end to end on a task where calling helps only on hard items.
//!
//! Easy items `E7:` ask the SLM to copy a digit: it learns that. Hard items `H7:` ask for a
//! secret two-digit code per digit that only the LLM was taught; the SLM alone can only guess.
//! Warm-up SFT teaches the SLM the command and to use it half the time, on easy and hard items
//! alike. GRPO with the difficulty-aware reward must then raise the mean reward and move the
//! calls onto the hard items: student-solvable groups pay 1.5 for answering alone and 1 − ρ for
//! calling, teacher-dependent groups pay −1 for a wrong answer without a call.
//!
//! Both models are tiny random transformers trained from scratch here (SFT, full weights),
//! then exported and run by the real engine and relay; nothing is mocked.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use relay_core::reward::{RewardKind, RhoKind};
use relay_engine::generate::{generate, GenerateParams};
use relay_engine::model::{LoadedModel, ModelPair};
use relay_engine::testing::write_tiny_pair;
use relay_engine::tiny_vocab::IM_END_ID;
use relay_engine::tokenizer::Tokenizer;
use relay_engine::LoadOptions;
use relay_grader::GradeMode;
use relay_train::export::{export_model, ExportFormat, ExportOptions};
use relay_train::grpo::{self, GrpoConfig, Prompt};
use relay_train::sft::{self, SftConfig};
use relay_train::{Adapter, TrainModel};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

const SECRET: [u32; 10] = [37, 82, 15, 64, 93, 28, 51, 76, 49, 10];
const CALL: &str = "<call>8</call>";

fn items() -> Vec<(String, String, bool)> {
    (0..10)
        .flat_map(|d| {
            [
                (format!("E{d}:"), d.to_string(), false),
                (format!("H{d}:"), SECRET[d as usize].to_string(), true),
            ]
        })
        .collect()
}

fn line(tok: &Tokenizer, prompt: &str, parts: &[(&str, bool)], eos_learned: bool) -> String {
    let mut ids = tok.encode(prompt, false).unwrap();
    let mut mask = vec![0u8; ids.len()];
    for (text, learned) in parts {
        let t = tok.encode(text, false).unwrap();
        mask.extend(std::iter::repeat_n(u8::from(*learned), t.len()));
        ids.extend(t);
    }
    ids.push(IM_END_ID);
    mask.push(u8::from(eos_learned));
    serde_json::json!({"messages": [], "input_ids": ids, "loss_mask": mask}).to_string()
}

/// The SLM's warm-up: half the examples call (the LLM's answer masked out), half answer alone
/// (right on easy items, a random guess on hard ones).
fn slm_data(tok: &Tokenizer, reps: usize) -> String {
    let mut rng = StdRng::seed_from_u64(7);
    let mut out = String::new();
    for _ in 0..reps {
        for (p, ans, hard) in items() {
            let boxed = format!("\\boxed{{{ans}}}");
            let l = if rng.gen_bool(0.5) {
                line(tok, &p, &[(CALL, true), (&boxed, false)], false)
            } else if hard {
                let guess = format!("\\boxed{{{}}}", rng.gen_range(10..100));
                line(tok, &p, &[(&guess, true)], true)
            } else {
                line(tok, &p, &[(&boxed, true)], true)
            };
            out.push_str(&l);
            out.push('\n');
        }
    }
    out
}

/// The LLM knows every answer.
fn llm_data(tok: &Tokenizer, reps: usize) -> String {
    let mut out = String::new();
    for _ in 0..reps {
        for (p, ans, _) in items() {
            out.push_str(&line(
                tok,
                &p,
                &[(&format!("\\boxed{{{ans}}}"), true)],
                true,
            ));
            out.push('\n');
        }
    }
    out
}

fn sft_full(base: &Path, data: &Path, out: &Path, epochs: usize) -> TrainModel {
    let mut cfg = SftConfig::new(base.to_path_buf(), data.to_path_buf());
    cfg.adapter = Adapter::Full;
    cfg.epochs = epochs;
    cfg.lr = 3e-3;
    cfg.warmup_steps = 10;
    cfg.grad_accum = 8;
    cfg.save_every = 0;
    let summary = sft::train(&cfg, out, false, |_| ControlFlow::Continue(())).unwrap();
    let ckpt = relay_train::checkpoint::load(&summary.checkpoint).unwrap();
    let model = TrainModel::load(base, Adapter::Full, 0).unwrap();
    model.set_trainable(&ckpt.params).unwrap();
    model
}

fn export(model: &TrainModel, path: &Path) -> PathBuf {
    let opts = ExportOptions {
        format: ExportFormat::Gguf,
        gguf_weights: candle_core::quantized::GgmlDType::F32,
    };
    export_model(model, path, &opts).unwrap();
    path.to_path_buf()
}

/// Call rate on easy and on hard items: `k` sampled relay runs of each.
fn call_rates(slm: &LoadedModel, llm: &LoadedModel, cfg: &GrpoConfig, k: usize) -> (f64, f64) {
    let pair = ModelPair::new(slm.clone(), llm.clone());
    let mut cfg = cfg.clone();
    cfg.group = k;
    let (mut easy, mut hard) = (0usize, 0usize);
    for (i, (p, ans, is_hard)) in items().into_iter().enumerate() {
        let prompt = Prompt {
            index: i,
            problem: p,
            answer: ans,
        };
        let called = grpo::rollout_group(&pair, &cfg, &prompt, 10_000)
            .unwrap()
            .iter()
            .filter(|s| s.rollout().called())
            .count();
        if is_hard {
            hard += called;
        } else {
            easy += called;
        }
    }
    let n = (10 * k) as f64;
    (easy as f64 / n, hard as f64 / n)
}

#[test]
fn grpo_moves_calls_onto_the_hard_items_and_raises_the_reward() {
    let dir = tempfile::tempdir().unwrap();
    let (slm0, llm0) = write_tiny_pair(dir.path(), 128);
    let tok = Tokenizer::load_for_model(&slm0).unwrap();

    // Warm-up SFT of both models from their random start.
    let slm_jsonl = dir.path().join("slm.jsonl");
    std::fs::write(&slm_jsonl, slm_data(&tok, 16)).unwrap();
    let llm_jsonl = dir.path().join("llm.jsonl");
    std::fs::write(&llm_jsonl, llm_data(&tok, 16)).unwrap();
    let llm_model = sft_full(&llm0, &llm_jsonl, &dir.path().join("llm-sft"), 6);
    let llm_path = export(&llm_model, &dir.path().join("llm-sft.gguf"));
    let slm_model = sft_full(&slm0, &slm_jsonl, &dir.path().join("slm-sft"), 6);
    let slm_path = export(&slm_model, &dir.path().join("slm-sft.gguf"));

    let llm = LoadedModel::load(&llm_path, LoadOptions::default()).unwrap();
    // The teacher knows every answer (greedy).
    for (p, ans, _) in items() {
        let ids = tok.encode(&p, false).unwrap();
        let params = GenerateParams {
            max_tokens: 8,
            ..GenerateParams::default()
        };
        let out = generate(llm.engine.as_ref(), &tok, &ids, &params, |_| {}).unwrap();
        assert_eq!(out.text, format!("\\boxed{{{ans}}}"), "teacher on {p}");
    }

    let data = dir.path().join("items.jsonl");
    let lines: Vec<String> = items()
        .iter()
        .map(|(p, a, _)| serde_json::json!({"problem": p, "answer": a}).to_string())
        .collect();
    std::fs::write(&data, lines.join("\n")).unwrap();
    let mut cfg = GrpoConfig::new(slm_path.clone(), data);
    cfg.adapter = Adapter::Full;
    cfg.group = 8;
    cfg.prompts_per_step = 8;
    cfg.steps = 30;
    cfg.lr = 1e-3;
    cfg.max_tokens = 16;
    cfg.max_calls = 1;
    cfg.max_call_tokens = 8;
    cfg.chat = false;
    cfg.instruction = false;
    cfg.grader = GradeMode::MathRuler;
    cfg.reward = RewardKind::Difficulty;
    cfg.rho = RhoKind::Requested;
    cfg.save_every = 0;
    cfg.rollout_weights = grpo::RolloutWeights::F32;

    let before_slm = LoadedModel::load(&slm_path, LoadOptions::default()).unwrap();
    let (easy0, hard0) = call_rates(&before_slm, &llm, &cfg, 8);
    assert!(
        (0.2..0.8).contains(&easy0) && (0.2..0.8).contains(&hard0),
        "warm-up calls about half the time everywhere: easy {easy0:.2}, hard {hard0:.2}"
    );

    let run = |reward: RewardKind, name: &str| {
        let mut cfg = cfg.clone();
        cfg.reward = reward;
        let out = dir.path().join(name);
        let mut logs = Vec::new();
        let summary = grpo::train(&cfg, &llm, &out, false, |l| {
            logs.push(l.clone());
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(summary.steps, 30);
        let ckpt = relay_train::checkpoint::load(&summary.checkpoint).unwrap();
        let trained = TrainModel::load(&slm_path, Adapter::Full, 0).unwrap();
        trained.set_trainable(&ckpt.params).unwrap();
        let after = trained.to_loaded_model(LoadOptions::default()).unwrap();
        (logs, call_rates(&after, &llm, &cfg, 8), out)
    };
    let (logs, (easy1, hard1), out) = run(RewardKind::Difficulty, "grpo");

    let mean =
        |xs: &[grpo::StepLog]| xs.iter().map(|l| l.reward_mean).sum::<f64>() / xs.len() as f64;
    let first = mean(&logs[..5]);
    let last = mean(&logs[logs.len() - 5..]);
    eprintln!(
        "difficulty reward {first:.3} -> {last:.3}; call rate easy {easy0:.2} -> {easy1:.2}, hard {hard0:.2} -> {hard1:.2}"
    );
    assert!(last > first + 0.2, "mean reward {first:.3} -> {last:.3}");
    assert!(
        hard1 >= 0.8,
        "calls on hard items: {hard0:.2} -> {hard1:.2}"
    );
    assert!(
        easy1 <= 0.2,
        "calls on easy items: {easy0:.2} -> {easy1:.2}"
    );

    // Control: plain accuracy reward pays the same for an easy answer with or without a call,
    // so nothing moves the calls off the easy items.
    let (_, (easy_acc, hard_acc), _) = run(RewardKind::Accuracy, "grpo-accuracy");
    eprintln!("accuracy reward: call rate easy {easy0:.2} -> {easy_acc:.2}, hard {hard0:.2} -> {hard_acc:.2}");
    assert!(
        easy_acc > easy1 + 0.2,
        "the difficulty-aware reward, not GRPO alone, takes calls off easy items: {easy_acc:.2} vs {easy1:.2}"
    );
    // The log on disk is what `relayllm report` plots.
    let on_disk = std::fs::read_to_string(out.join(grpo::GRPO_LOG)).unwrap();
    assert_eq!(on_disk.lines().count(), 30);
}
