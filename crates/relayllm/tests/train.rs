//! `relayllm train sft` and `relayllm export` as a user runs them, on a tiny GGUF with the tiny
//! vocabulary and the real Qwen2.5 chat template.

use relay_engine::testing::write_tiny_pair;
use serde_json::Value;
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_relayllm"))
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

const QA: [(&str, &str); 2] = [("Say hi.", "Hello there!"), ("Name a color.", "Red!")];

#[test]
fn train_sft_then_export_then_generate() {
    let dir = tempfile::tempdir().unwrap();
    let (slm, _) = write_tiny_pair(dir.path(), 512);
    let data = dir.path().join("sft.jsonl");
    let lines: Vec<String> = QA
        .iter()
        .map(|(q, a)| {
            serde_json::json!({"messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": q},
                {"role": "assistant", "content": a}]})
            .to_string()
        })
        .collect();
    std::fs::write(&data, lines.join("\n") + "\n").unwrap();
    let out = dir.path().join("run");
    let summary = ok(bin()
        .args(["train", "sft", "--model"])
        .arg(&slm)
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .args([
            "--lora-rank",
            "8",
            "--epochs",
            "20",
            "--lr",
            "0.02",
            "--warmup-steps",
            "2",
        ])
        .args(["--save-every", "10", "--seed", "1", "--json"])
        .output()
        .unwrap());
    let s: Value = serde_json::from_str(summary.trim()).unwrap();
    assert_eq!(s["steps"], 40, "{s}");
    assert!(s["final_loss"].as_f64().unwrap() < 0.1, "{s}");
    let log = std::fs::read_to_string(out.join("train_log.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 40);

    // Already trained: a second run into the same folder needs --resume, which then has
    // nothing left to do.
    let again = bin()
        .args(["train", "sft", "--model"])
        .arg(&slm)
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--resume"));

    let merged = dir.path().join("merged.gguf");
    ok(bin()
        .args(["export", "--model"])
        .arg(&slm)
        .arg("--adapter")
        .arg(&out)
        .arg("--out")
        .arg(&merged)
        .output()
        .unwrap());
    for (q, a) in QA {
        let text = ok(bin()
            .args(["generate", "--model"])
            .arg(&merged)
            .args([
                "--prompt",
                q,
                "--chat",
                "--system",
                "Be brief.",
                "--max-tokens",
                "20",
            ])
            .output()
            .unwrap());
        assert_eq!(text.trim_end(), a, "{q}");
    }
    // The trained weights alone, in f16: smaller than the checkpoint (no Adam moments), and
    // merged into the same base they answer the same.
    let adapter = dir.path().join("adapter");
    ok(bin()
        .args(["export", "--format", "adapter", "--adapter"])
        .arg(&out)
        .arg("--out")
        .arg(&adapter)
        .output()
        .unwrap());
    let size = |d: &std::path::Path| -> u64 {
        let files: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        std::fs::metadata(files.last().unwrap()).unwrap().len()
    };
    assert!(
        size(&adapter) * 4 < size(&out),
        "{} vs {}",
        size(&adapter),
        size(&out)
    );
    let from_adapter = dir.path().join("from-adapter.gguf");
    ok(bin()
        .args(["export", "--model"])
        .arg(&slm)
        .arg("--adapter")
        .arg(&adapter)
        .arg("--out")
        .arg(&from_adapter)
        .output()
        .unwrap());
    for (q, a) in QA {
        let text = ok(bin()
            .args(["generate", "--model"])
            .arg(&from_adapter)
            .args(["--prompt", q, "--chat", "--system", "Be brief."])
            .args(["--max-tokens", "20"])
            .output()
            .unwrap());
        assert_eq!(text.trim_end(), a, "{q}");
    }
    // Merging needs the base, and q8_0 is not an adapter's storage.
    let no_base = bin()
        .args(["export", "--adapter"])
        .arg(&out)
        .arg("--out")
        .arg(dir.path().join("x.gguf"))
        .output()
        .unwrap();
    assert!(!no_base.status.success());
    assert!(String::from_utf8_lossy(&no_base.stderr).contains("--model"));
    let q8 = bin()
        .args([
            "export",
            "--format",
            "adapter",
            "--dtype",
            "q8_0",
            "--adapter",
        ])
        .arg(&out)
        .arg("--out")
        .arg(dir.path().join("q8"))
        .output()
        .unwrap();
    assert!(!q8.status.success());
    assert!(String::from_utf8_lossy(&q8.stderr).contains("f16 or f32"));

    // The safetensors form loads too.
    let hf = dir.path().join("merged-hf");
    ok(bin()
        .args(["export", "--model"])
        .arg(&slm)
        .arg("--adapter")
        .arg(&out)
        .arg("--out")
        .arg(&hf)
        .output()
        .unwrap());
    let text = ok(bin()
        .args(["generate", "--model"])
        .arg(&hf)
        .args([
            "--prompt",
            QA[0].0,
            "--chat",
            "--system",
            "Be brief.",
            "--max-tokens",
            "20",
        ])
        .output()
        .unwrap());
    assert_eq!(text.trim_end(), QA[0].1);
}

#[test]
fn bad_training_input_gives_a_clear_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let (slm, _) = write_tiny_pair(dir.path(), 512);
    let run = |data: &str, extra: &[&str]| -> String {
        let path = dir.path().join("data.jsonl");
        std::fs::write(&path, data).unwrap();
        let out = bin()
            .args(["train", "sft", "--model"])
            .arg(&slm)
            .arg("--data")
            .arg(&path)
            .arg("--out")
            .arg(dir.path().join("out"))
            .args(extra)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!err.contains("panicked"), "{err}");
        err
    };
    let good =
        r#"{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"yo"}]}"#;
    let err = run(
        &format!("{good}\n{{\"input_ids\":[1,2],\"loss_mask\":[0]}}\n"),
        &[],
    );
    assert!(
        err.contains("data.jsonl:2:") && err.contains("loss_mask"),
        "{err}"
    );
    let err = run(&format!("{good}\nnot json\n"), &[]);
    assert!(err.contains("data.jsonl:2: not valid JSON"), "{err}");
    let err = run(good, &["--lora-targets", "q,nope"]);
    assert!(err.contains("unknown LoRA target `nope`"), "{err}");
    let err = run(good, &["--model-typo"]);
    assert!(err.contains("--model-typo"), "{err}");
    let missing = bin()
        .args(["export", "--model"])
        .arg(&slm)
        .arg("--adapter")
        .arg(dir.path().join("nowhere"))
        .arg("--out")
        .arg(dir.path().join("x.gguf"))
        .output()
        .unwrap();
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains("nowhere") && err.contains("not found"),
        "{err}"
    );
}

#[test]
fn train_grpo_logs_checkpoints_resumes_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let (slm, llm) = write_tiny_pair(dir.path(), 512);
    let data = dir.path().join("prompts.jsonl");
    std::fs::write(
        &data,
        "{\"problem\": \"E3:\", \"answer\": \"3\"}\n{\"problem\": \"H3:\", \"answer\": 64}\n{\"problem\": \"E5:\", \"answer\": \"5\"}\n",
    )
    .unwrap();
    let out = dir.path().join("grpo");
    let run = |steps: &str, extra: &[&str]| {
        let mut c = bin();
        c.args(["train", "grpo", "--slm"])
            .arg(&slm)
            .arg("--llm")
            .arg(&llm);
        c.arg("--data").arg(&data).arg("--out").arg(&out);
        c.args([
            "--steps",
            steps,
            "--group",
            "2",
            "--prompts-per-step",
            "2",
            "--max-tokens",
            "6",
            "--no-chat",
            "--no-instruction",
            "--lora-rank",
            "2",
            "--save-every",
            "1",
            "--json",
        ]);
        c.args(extra);
        c.output().unwrap()
    };
    let summary: Value = serde_json::from_str(ok(run("2", &[])).trim()).unwrap();
    assert_eq!(summary["steps"], 2);
    let log = std::fs::read_to_string(out.join("grpo_log.jsonl")).unwrap();
    let steps: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(steps.len(), 2);
    for s in &steps {
        for key in [
            "reward_mean",
            "accuracy",
            "call_rate",
            "call_ratio",
            "kl",
            "loss",
            "scenarios",
            "rollout_tokens",
            "rollout_tok_s",
            "logprob_s",
            "update_s",
        ] {
            assert!(s.get(key).is_some(), "{key} missing from {s}");
        }
    }
    let rollouts = std::fs::read_to_string(out.join("rollouts.jsonl")).unwrap();
    assert_eq!(
        rollouts.lines().count(),
        2 * 2 * 2,
        "steps x prompts x group"
    );

    // A second run into the same folder refuses without --resume, and continues with it.
    let again = run("3", &[]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--resume"));
    // Rollouts one at a time now: a speed knob, not a setting the resume checks.
    let summary: Value =
        serde_json::from_str(ok(run("3", &["--resume", "--rollout-concurrency", "1"])).trim())
            .unwrap();
    assert_eq!(summary["steps"], 3);
    assert_eq!(summary["resumed_from"], 2);
    let log = std::fs::read_to_string(out.join("grpo_log.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 3);

    // Changed settings do not resume silently.
    let changed = run("4", &["--resume", "--kl-coef", "0.5"]);
    assert!(!changed.status.success());
    assert!(String::from_utf8_lossy(&changed.stderr).contains("settings differ"));

    // The curves.
    ok(bin().arg("report").arg(&out).output().unwrap());
    assert!(out.join("curves.svg").exists() && out.join("curves.png").exists());

    // Bad input: no such data, and a wrong line.
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"problem\": \"x\"}\n").unwrap();
    let o = bin()
        .args(["train", "grpo", "--slm"])
        .arg(&slm)
        .arg("--llm")
        .arg(&llm)
        .arg("--data")
        .arg(&bad)
        .arg("--out")
        .arg(dir.path().join("bad-run"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("bad.jsonl:1") && err.contains("answer") && !err.contains("panicked"),
        "{err}"
    );
}

/// `bench train` as `make bench-train` runs it: one JSON line with the timed parts, and the
/// hand-written LoRA pass takes the same first step as candle's autograd (same loss); bad
/// arguments are refused with a message.
#[test]
fn bench_train_times_a_step_and_both_paths_agree() {
    let dir = tempfile::tempdir().unwrap();
    let (slm, _) = write_tiny_pair(dir.path(), 512);
    let text = dir.path().join("text.txt");
    std::fs::write(
        &text,
        "three plus five is eight, and half of eight is four. ",
    )
    .unwrap();
    let run = |extra: &[&str]| -> serde_json::Value {
        let out = ok(bin()
            .args(["bench", "train", "--model"])
            .arg(&slm)
            .args([
                "--tokens",
                "40",
                "--runs",
                "1",
                "--lora-rank",
                "4",
                "--json",
            ])
            .arg("--text-file")
            .arg(&text)
            .args(extra)
            .output()
            .unwrap());
        serde_json::from_str(out.trim().lines().last().unwrap()).unwrap()
    };
    let hand = run(&[]);
    let auto = run(&["--autograd"]);
    assert_eq!(hand["impl"], "relayllm");
    assert_eq!(auto["impl"], "relayllm-autograd");
    for r in [&hand, &auto] {
        assert_eq!(r["tokens"], 40);
        for k in [
            "forward_s",
            "backward_s",
            "optimizer_s",
            "step_s",
            "tokens_per_s",
            "peak_rss_mib",
        ] {
            assert!(r[k].as_f64().is_some_and(|v| v > 0.0), "{k} in {r}");
        }
    }
    let (a, b) = (
        hand["loss"].as_f64().unwrap(),
        auto["loss"].as_f64().unwrap(),
    );
    assert!(a > 0.5 && (a - b).abs() < 1e-4, "losses {a} and {b}");
    let out = bin()
        .args(["bench", "train", "--model"])
        .arg(&slm)
        .args(["--tokens", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tokens at least 2"));
}
