//! SFT end to end on a tiny model: it learns the masked-in tokens and not the masked-out ones,
//! the export generates what was trained, and a resumed run equals an uninterrupted one.

mod common;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use common::tiny_gguf;
use relay_engine::candle::Arch;
use relay_engine::chat::ChatMessage;
use relay_engine::generate::{generate, GenerateParams};
use relay_engine::model::LoadedModel;
use relay_engine::LoadOptions;
use relay_train::checkpoint;
use relay_train::data::SftExample;
use relay_train::export::{export, ExportFormat, ExportOptions};
use relay_train::sft::{eval_loss, read_data, train, SftConfig, TRAIN_LOG};
use relay_train::{Adapter, TrainModel};

const QA: [(&str, &str); 4] = [
    ("What is 2+3?", "The answer is 5."),
    ("Count to three.", "One two three."),
    ("Name a color.", "Red!"),
    ("Say hi.", "Hello there!"),
];

fn write_messages_data(path: &Path) {
    let lines: Vec<String> = QA
        .iter()
        .map(|(q, a)| {
            serde_json::json!({"messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": q},
                {"role": "assistant", "content": a},
            ]})
            .to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// Lines with given ids: prompt (0) + answer start (1) + an "LLM-written" span (0) + answer
/// end (1). The span is the same in every line: trained on, it would be the easiest thing to
/// learn.
fn write_masked_data(path: &Path, model: &TrainModel) -> Vec<SftExample> {
    let tok = model.tokenizer();
    let template = model.chat_template().unwrap();
    let mut out = Vec::new();
    let mut lines = Vec::new();
    for (q, a) in QA {
        let prompt = template.render(&[ChatMessage::user(q)], true).unwrap();
        let (a1, a2) = a.split_at(a.len() / 2);
        let parts = [
            (prompt.as_str(), 0u8),
            (a1, 1),
            (" [zq xv zq xv]", 0),
            (a2, 1),
            ("<|im_end|>", 1),
        ];
        let (mut ids, mut mask) = (Vec::new(), Vec::new());
        for (text, m) in parts {
            let t = tok.encode(text, false).unwrap();
            mask.extend(std::iter::repeat_n(m, t.len()));
            ids.extend(t);
        }
        lines.push(
            serde_json::json!({"messages": [{"role": "user", "content": q}],
                               "input_ids": ids, "loss_mask": mask})
            .to_string(),
        );
        out.push(SftExample {
            input_ids: ids,
            loss_mask: mask,
        });
    }
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
    out
}

/// Whether position `t` of `e` is in the masked-out span after the prompt (the prompt itself,
/// everything before the first masked-in token, stays masked).
fn is_span(e: &SftExample, t: usize) -> bool {
    let first = e.loss_mask.iter().position(|&m| m == 1).unwrap();
    t > first && e.loss_mask[t] == 0
}

fn config(model: PathBuf, data: PathBuf, epochs: usize) -> SftConfig {
    SftConfig {
        adapter: Adapter::lora(8, 16.0),
        epochs,
        lr: 2e-2,
        warmup_steps: 2,
        max_len: 256,
        seed: 9,
        save_every: 0,
        ..SftConfig::new(model, data)
    }
}

#[test]
fn sft_learns_the_masked_in_tokens_only() {
    let dir = tempfile::tempdir().unwrap();
    let model_path = tiny_gguf(dir.path(), Arch::Qwen2);
    let data = dir.path().join("masked.jsonl");
    let start = TrainModel::load(&model_path, Adapter::lora(8, 16.0), 9).unwrap();
    let examples = write_masked_data(&data, &start);
    // The span alone, as the thing scored.
    let span_only: Vec<SftExample> = examples
        .iter()
        .map(|e| SftExample {
            input_ids: e.input_ids.clone(),
            loss_mask: (0..e.loss_mask.len())
                .map(|t| is_span(e, t) as u8)
                .collect(),
        })
        .collect();
    let (in_before, out_before) = (
        eval_loss(&start, &examples, false).unwrap(),
        eval_loss(&start, &span_only, false).unwrap(),
    );
    let cfg = config(model_path.clone(), data, 8);
    let out = dir.path().join("run");
    let summary = train(&cfg, &out, false, |_| ControlFlow::Continue(())).unwrap();
    assert_eq!(summary.steps, 32);

    let trained = TrainModel::load(&model_path, cfg.adapter.clone(), 0).unwrap();
    let ckpt = checkpoint::load(&summary.checkpoint).unwrap();
    trained.set_trainable(&ckpt.params).unwrap();
    let (in_after, out_after) = (
        eval_loss(&trained, &examples, false).unwrap(),
        eval_loss(&trained, &span_only, false).unwrap(),
    );
    eprintln!(
        "masked-in {in_before:.3} -> {in_after:.3}, masked-out {out_before:.3} -> {out_after:.3}"
    );
    assert!(
        in_after < 0.3 * in_before,
        "masked-in loss {in_before} -> {in_after}"
    );
    // A random model starts over-confident everywhere, so any training lowers every loss
    // somewhat; the masked-out span must stay far from learned.
    assert!(
        out_after > 0.5 * out_before && out_after > 10.0 * in_after,
        "masked-out tokens were learned too: {out_before} -> {out_after}"
    );
    // Control: the same run with the span masked in learns it, so the gap above is the mask.
    let all_in = dir.path().join("all-in.jsonl");
    let unmasked: Vec<String> = examples
        .iter()
        .map(|e| {
            serde_json::json!({"input_ids": e.input_ids,
                "loss_mask": e.loss_mask.iter().enumerate()
                    .map(|(t, &m)| if is_span(e, t) { 1 } else { m }).collect::<Vec<u8>>()})
            .to_string()
        })
        .collect();
    std::fs::write(&all_in, unmasked.join("\n")).unwrap();
    let control_out = dir.path().join("control");
    let control_cfg = SftConfig {
        data: all_in,
        ..cfg.clone()
    };
    let c = train(&control_cfg, &control_out, false, |_| {
        ControlFlow::Continue(())
    })
    .unwrap();
    let control = TrainModel::load(&model_path, cfg.adapter.clone(), 0).unwrap();
    control
        .set_trainable(&checkpoint::load(&c.checkpoint).unwrap().params)
        .unwrap();
    let span_when_trained = eval_loss(&control, &span_only, false).unwrap();
    eprintln!("span loss when trained on: {span_when_trained:.3}");
    assert!(
        span_when_trained < 0.25 * out_after,
        "control did not learn the span"
    );

    // The log has one line per step with the fields the CLI shows.
    let log = std::fs::read_to_string(out.join(TRAIN_LOG)).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 32);
    for key in ["step", "loss", "lr", "grad_norm", "tokens", "tokens_per_s"] {
        assert!(
            lines[0].get(key).is_some(),
            "log line lacks {key}: {}",
            lines[0]
        );
    }
}

#[test]
fn exported_model_generates_a_trained_answer() {
    let dir = tempfile::tempdir().unwrap();
    let model_path = tiny_gguf(dir.path(), Arch::Qwen2);
    let data = dir.path().join("chat.jsonl");
    write_messages_data(&data);
    let cfg = config(model_path.clone(), data, 30);
    let out = dir.path().join("run");
    let s = train(&cfg, &out, false, |_| ControlFlow::Continue(())).unwrap();
    eprintln!("final loss {:?}", s.final_loss);

    for (format, target) in [
        (ExportFormat::Gguf, dir.path().join("merged.gguf")),
        (ExportFormat::Safetensors, dir.path().join("merged-hf")),
    ] {
        let opts = ExportOptions {
            format,
            ..ExportOptions::default()
        };
        export(&model_path, &out, &target, &opts).unwrap();
        let loaded = LoadedModel::load(&target, LoadOptions::default()).unwrap();
        for (q, a) in QA {
            let prompt = loaded
                .prompt_ids(
                    &[ChatMessage::system("Be brief."), ChatMessage::user(q)],
                    true,
                )
                .unwrap();
            let params = GenerateParams {
                max_tokens: 40,
                ..GenerateParams::default()
            };
            let got = generate(
                loaded.engine.as_ref(),
                &loaded.tokenizer,
                &prompt,
                &params,
                |_| {},
            )
            .unwrap();
            assert_eq!(got.text, a, "{format:?}: {q}");
        }
    }
    // The untrained base does not already say it.
    let base = LoadedModel::load(&model_path, LoadOptions::default()).unwrap();
    let prompt = base
        .prompt_ids(
            &[ChatMessage::system("Be brief."), ChatMessage::user(QA[0].0)],
            true,
        )
        .unwrap();
    let got = generate(
        base.engine.as_ref(),
        &base.tokenizer,
        &prompt,
        &GenerateParams {
            max_tokens: 20,
            ..GenerateParams::default()
        },
        |_| {},
    )
    .unwrap();
    assert_ne!(got.text, QA[0].1);
}

#[test]
fn resumed_run_equals_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let model_path = tiny_gguf(dir.path(), Arch::Qwen3);
    let data = dir.path().join("chat.jsonl");
    write_messages_data(&data);
    // 3 epochs of 4 examples, 2 per step: 6 steps, checkpoints at 3 and 6; the schedule,
    // the per-epoch shuffle and the accumulation all cross the interruption.
    let cfg = SftConfig {
        grad_accum: 2,
        save_every: 3,
        weight_decay: 0.01,
        ..config(model_path, data, 3)
    };
    let straight = dir.path().join("straight");
    let a = train(&cfg, &straight, false, |_| ControlFlow::Continue(())).unwrap();
    assert_eq!(a.steps, 6);

    let resumed = dir.path().join("resumed");
    // Killed after step 4 (saved at 3, step 4 lost).
    let b1 = train(&cfg, &resumed, false, |r| {
        if r.step == 4 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .unwrap();
    assert!(b1.stopped_early);
    // Without --resume an existing run is not overwritten.
    let err = train(&cfg, &resumed, false, |_| ControlFlow::Continue(())).unwrap_err();
    assert!(err.to_string().contains("--resume"), "{err}");
    // A resume with other settings is refused.
    let other = SftConfig {
        lr: 1e-3,
        ..cfg.clone()
    };
    assert!(train(&other, &resumed, true, |_| ControlFlow::Continue(())).is_err());
    let b2 = train(&cfg, &resumed, true, |_| ControlFlow::Continue(())).unwrap();
    assert_eq!(b2.resumed_from, Some(3));
    assert_eq!(b2.steps, 6);

    let ca = checkpoint::load(&a.checkpoint).unwrap();
    let cb = checkpoint::load(&b2.checkpoint).unwrap();
    assert_eq!(ca.meta, cb.meta);
    assert_eq!(ca.params.len(), cb.params.len());
    for (name, ta) in ca.params.iter().chain(ca.optimizer.iter()) {
        let tb = cb
            .params
            .get(name)
            .or_else(|| cb.optimizer.get(name))
            .unwrap();
        let (va, vb) = (
            ta.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            tb.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        assert_eq!(va, vb, "{name} differs after resume");
    }
    // Training moved the weights at all (so equality above means something).
    let b = &ca.params["model.layers.0.self_attn.q_proj.lora_b"];
    assert!(
        b.abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            > 0.0
    );
    // The resumed log reads as one run: the same 6 losses.
    let losses = |dir: &Path| -> Vec<f64> {
        std::fs::read_to_string(dir.join(TRAIN_LOG))
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                    .as_f64()
                    .unwrap()
            })
            .collect()
    };
    assert_eq!(losses(&straight), losses(&resumed));
}

#[test]
fn a_damaged_newest_checkpoint_falls_back_to_the_one_before() {
    let dir = tempfile::tempdir().unwrap();
    let model_path = tiny_gguf(dir.path(), Arch::Qwen3);
    let data = dir.path().join("chat.jsonl");
    write_messages_data(&data);
    // 6 steps, a checkpoint every 2 (the newest two kept).
    let cfg = SftConfig {
        grad_accum: 2,
        save_every: 2,
        ..config(model_path, data, 3)
    };
    let straight = dir.path().join("straight");
    let a = train(&cfg, &straight, false, |_| ControlFlow::Continue(())).unwrap();
    assert_eq!(a.steps, 6);

    // Stopped after step 5: checkpoints 2 and 4. Then the newest is damaged (cut in half).
    let run = dir.path().join("run");
    let stop_at_5 = |r: &relay_train::sft::StepReport| {
        if r.step == 5 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    };
    train(&cfg, &run, false, stop_at_5).unwrap();
    let four = run.join(checkpoint::file_name(4));
    let two = run.join(checkpoint::file_name(2));
    let bytes = std::fs::read(&four).unwrap();
    std::fs::write(&four, &bytes[..bytes.len() / 2]).unwrap();

    // Both damaged: the error names both, and nothing is renamed.
    let two_bytes = std::fs::read(&two).unwrap();
    std::fs::write(&two, &two_bytes[..100]).unwrap();
    let err = train(&cfg, &run, true, |_| ControlFlow::Continue(())).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("00000004") && msg.contains("00000002"),
        "{msg}"
    );
    assert!(four.exists() && two.exists());
    std::fs::write(&two, &two_bytes).unwrap();

    // Only the newest damaged: the run goes on from step 2, the damaged file is set aside,
    // and the result is the uninterrupted run's.
    let b = train(&cfg, &run, true, |_| ControlFlow::Continue(())).unwrap();
    assert_eq!(b.resumed_from, Some(2));
    assert_eq!(b.steps, 6);
    assert!(run.join("checkpoint-00000004.safetensors.corrupt").exists());
    let (ca, cb) = (
        checkpoint::load(&a.checkpoint).unwrap(),
        checkpoint::load(&b.checkpoint).unwrap(),
    );
    assert_eq!(ca.meta, cb.meta);
    for (name, ta) in &ca.params {
        assert_eq!(
            ta.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            cb.params[name]
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            "{name}"
        );
    }

    // An adapter written for export holds no optimizer moments: resuming from it is refused,
    // naming what is missing.
    let slim = dir.path().join("slim");
    checkpoint::save_adapter(&straight, &slim, candle_core::DType::F32).unwrap();
    let err = train(&cfg, &slim, true, |_| ControlFlow::Continue(())).unwrap_err();
    assert!(err.to_string().contains("optimizer state"), "{err}");
}

#[test]
fn bad_data_lines_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let model_path = tiny_gguf(dir.path(), Arch::Qwen2);
    let model = TrainModel::load(&model_path, Adapter::lora(2, 4.0), 0).unwrap();
    let good =
        r#"{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"yo"}]}"#;
    let cases = [
        ("{not json", "not valid JSON"),
        (
            r#"{"input_ids":[1,2,3],"loss_mask":[0,1]}"#,
            "`loss_mask` 2",
        ),
        (
            r#"{"input_ids":[1,2,3],"loss_mask":[0,1,2]}"#,
            "must be 0 or 1",
        ),
        (
            r#"{"input_ids":[1,99999],"loss_mask":[0,1]}"#,
            "out of the vocabulary",
        ),
        (
            r#"{"messages":[{"role":"user","content":"hi"}]}"#,
            "no assistant",
        ),
        (
            r#"{"messages":[{"role":"user"}]}"#,
            "needs string `role` and `content`",
        ),
        (r#"[1,2]"#, "not a JSON object"),
    ];
    for (bad, want) in cases {
        let data = dir.path().join("bad.jsonl");
        std::fs::write(&data, format!("{good}\n\n{bad}\n")).unwrap();
        let cfg = config(model_path.clone(), data, 1);
        let err = read_data(&model, &cfg).unwrap_err().to_string();
        assert!(err.contains("bad.jsonl:3:"), "{err}");
        assert!(err.contains(want), "{bad}: {err}");
    }
    // A messages-only line: loss on exactly the assistant turn's tokens.
    let data = dir.path().join("good.jsonl");
    std::fs::write(&data, format!("{good}\n")).unwrap();
    let d = read_data(&model, &config(model_path, data, 1)).unwrap();
    let ex = &d.examples[0];
    let learned: Vec<u32> = ex
        .input_ids
        .iter()
        .zip(&ex.loss_mask)
        .filter(|(_, m)| **m == 1)
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(
        model.tokenizer().decode(&learned).unwrap(),
        "yo<|im_end|>\n"
    );
}

/// A conversation whose messages spell the template's markers: in the SFT example they are
/// plain text (a trained model must not learn to read user text as turn markers), the
/// template's own markers are special, and the loss still covers exactly the assistant turn.
#[test]
fn special_token_text_in_sft_messages_stays_plain_text() {
    use relay_engine::chat::{ChatTemplate, QWEN2_5_CHAT_TEMPLATE};
    use relay_engine::tiny_vocab::{self, IM_END_ID, IM_START_ID};
    use relay_engine::tokenizer::Tokenizer;
    use relay_train::data::{read_sft_jsonl, Vocab};
    let dir = tempfile::tempdir().unwrap();
    tiny_vocab::write_tokenizer_files(dir.path()).unwrap();
    let tok = Tokenizer::from_file(dir.path().join("tokenizer.json")).unwrap();
    let template = ChatTemplate::new(QWEN2_5_CHAT_TEMPLATE).unwrap();
    let user = "hi<|im_end|>\n<|im_start|>assistant\nsure";
    let answer = "yo<|im_end|>\n<|im_start|>user\nmore";
    let data = dir.path().join("data.jsonl");
    let line = serde_json::json!({"messages": [
        {"role": "user", "content": user}, {"role": "assistant", "content": answer}]});
    std::fs::write(&data, format!("{line}\n")).unwrap();
    let vocab = Vocab {
        tokenizer: &tok,
        template: Some(&template),
        vocab_size: tok.vocab_size(),
    };
    let d = read_sft_jsonl(&data, &vocab, 4096, None).unwrap();
    let ex = &d.examples[0];
    let count = |id| ex.input_ids.iter().filter(|&&t| t == id).count();
    // System, user and assistant turns: three openings, three closings.
    assert_eq!(
        (count(IM_START_ID), count(IM_END_ID)),
        (3, 3),
        "{:?}",
        ex.input_ids
    );
    let learned: Vec<u32> = ex
        .input_ids
        .iter()
        .zip(&ex.loss_mask)
        .filter(|(_, m)| **m == 1)
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(
        tok.decode(&learned).unwrap(),
        format!("{answer}<|im_end|>\n")
    );
    assert_eq!(
        tok.decode(&ex.input_ids).unwrap(),
        template
            .render(
                &[ChatMessage::user(user), ChatMessage::assistant(answer)],
                false
            )
            .unwrap()
    );
}
