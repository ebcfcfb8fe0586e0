//! The CLI as a user runs it, on tiny models the test writes (GGUF with the tiny vocabulary
//! and the real Qwen2.5 chat template).

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

#[test]
fn generate_json_is_deterministic_and_matches_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let (slm, _) = write_tiny_pair(dir.path(), 512);
    let run = |json: bool| {
        let mut c = bin();
        c.args(["generate", "--model"]).arg(&slm).args([
            "--prompt",
            "2+2=",
            "--chat",
            "--max-tokens",
            "12",
        ]);
        c.args(["--temperature", "0.8", "--seed", "3"]);
        if json {
            c.arg("--json");
        }
        ok(c.output().unwrap())
    };
    let a: Value = serde_json::from_str(run(true).trim()).unwrap();
    let b: Value = serde_json::from_str(run(true).trim()).unwrap();
    assert_eq!(a["tokens"], b["tokens"], "same seed, same tokens");
    let tokens = a["tokens"].as_array().unwrap();
    assert!(!tokens.is_empty() && tokens.len() <= 12);
    assert!(a["prompt"]
        .as_str()
        .unwrap()
        .starts_with("<|im_start|>system\n"));
    let streamed = run(false);
    assert_eq!(
        streamed.trim_end_matches('\n'),
        a["text"].as_str().unwrap().trim_end_matches('\n')
    );
}

/// `relayllm relay` on a tiny pair, the confidence policy calling at every chance, plus `args`;
/// its stdout.
fn relay_on(slm: &std::path::Path, llm: &std::path::Path, args: &[&str]) -> String {
    ok(bin()
        .args(["relay", "--slm"])
        .arg(slm)
        .arg("--llm")
        .arg(llm)
        .args([
            "--prompt",
            "What is 3*4?",
            "--chat",
            "--policy",
            "confidence",
        ])
        .args(["--threshold", "0.99"])
        .args(args)
        .output()
        .unwrap())
}

#[test]
fn relay_json_has_text_tokens_and_a_consistent_trace() {
    let dir = tempfile::tempdir().unwrap();
    let (slm, llm) = write_tiny_pair(dir.path(), 512);
    let out = relay_on(
        &slm,
        &llm,
        &[
            "--call-tokens",
            "4",
            "--cooldown",
            "2",
            "--max-tokens",
            "30",
            "--json",
        ],
    );
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    let trace = &v["trace"];
    let calls = trace["calls"].as_array().unwrap();
    assert!(!calls.is_empty(), "{trace}");
    let tokens = v["tokens"].as_array().unwrap().len();
    assert_eq!(trace["response_tokens"].as_u64().unwrap() as usize, tokens);
    let llm_tokens = trace["tokens"]["llm"].as_u64().unwrap();
    let served: u64 = calls.iter().map(|c| c["served"].as_u64().unwrap()).sum();
    assert_eq!(llm_tokens, served);
    let ratio = trace["call_ratio"].as_f64().unwrap();
    assert!((ratio - llm_tokens as f64 / tokens as f64).abs() < 1e-9);
    // Human output: LLM spans bracketed, and the one-line summary.
    let text = relay_on(
        &slm,
        &llm,
        &[
            "--call-tokens",
            "4",
            "--cooldown",
            "2",
            "--max-tokens",
            "30",
            "--mark",
            "brackets",
        ],
    );
    assert!(text.contains("[[") && text.contains("]]"), "{text}");
    assert!(
        text.lines().last().unwrap().contains("call ratio"),
        "{text}"
    );
}

/// `--llm-read-ahead`: the LLM reads in the background, and the answer is the same.
#[test]
fn relay_read_ahead_gives_the_same_answer() {
    let dir = tempfile::tempdir().unwrap();
    let (slm, llm) = write_tiny_pair(dir.path(), 512);
    let run = |read_ahead: &str| -> Value {
        let out = relay_on(
            &slm,
            &llm,
            &[
                "--call-tokens",
                "2",
                "--cooldown",
                "10",
                "--max-tokens",
                "40",
                "--json",
            ]
            .into_iter()
            .chain(["--llm-read-ahead", read_ahead])
            .collect::<Vec<_>>(),
        );
        serde_json::from_str(out.trim()).unwrap()
    };
    let (plain, ahead) = (run("0"), run("3"));
    assert_eq!(plain["llm_read_ahead_tokens"], 0);
    assert!(
        ahead["llm_read_ahead_tokens"].as_u64().unwrap() > 0,
        "{ahead}"
    );
    assert!(!plain["trace"]["calls"].as_array().unwrap().is_empty());
    assert_eq!(plain["tokens"], ahead["tokens"]);
    assert_eq!(plain["text"], ahead["text"]);
    assert_eq!(
        plain["trace"]["prefill_tokens"]["llm"],
        ahead["trace"]["prefill_tokens"]["llm"]
    );
}

#[test]
fn bad_input_gives_a_clear_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let missing = bin()
        .args([
            "generate",
            "--model",
            "/nonexistent/model.gguf",
            "--prompt",
            "x",
        ])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains("not found") && !err.contains("panicked"),
        "{err}"
    );

    let garbage = dir.path().join("garbage.gguf");
    std::fs::write(&garbage, b"GGUF\x03\x00\x00\x00 truncated").unwrap();
    let out = bin()
        .args(["generate", "--model"])
        .arg(&garbage)
        .args(["--prompt", "x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error:") && !err.contains("panicked"),
        "{err}"
    );

    let out = bin()
        .args(["relay", "--prompt", "x", "--policy", "sometimes"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("confidence"),
        "lists valid policies: {err}"
    );

    // `--engine llama-cpp` in a build without the feature says how to get it; `--engine`
    // with an unknown name lists the engines.
    let (slm, llm) = write_tiny_pair(dir.path(), 128);
    let out = bin()
        .args(["relay", "--prompt", "x", "--engine", "llama-cpp", "--slm"])
        .arg(&slm)
        .arg("--llm")
        .arg(&llm)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if cfg!(feature = "llama-cpp") {
        assert!(out.status.success(), "{err}");
    } else {
        assert!(
            !out.status.success()
                && err.contains("--features llama-cpp")
                && !err.contains("panicked"),
            "{err}"
        );
    }
    let out = bin()
        .args([
            "generate", "--model", "slm", "--prompt", "x", "--engine", "vllm",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("llama-cpp"), "{err}");

    // `slm` before `fetch models`: says what to do.
    let out = bin()
        .args([
            "generate",
            "--model",
            "slm",
            "--prompt",
            "x",
            "--models-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("fetch models"),
        "{err}"
    );
}

#[test]
fn grade_prints_a_verdict_and_annotates_jsonl() {
    let verdict = |gold: &str, pred: &str| {
        ok(bin()
            .args(["grade", "--mode", "verify", "--gold", gold, "--pred", pred])
            .output()
            .unwrap())
    };
    assert_eq!(
        verdict("18", "So she makes \\boxed{18} dollars.").trim(),
        "true"
    );
    assert_eq!(verdict("18", "\\boxed{19}").trim(), "false");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pairs.jsonl");
    std::fs::write(&file, "{\"gold\":\"1/2\",\"pred\":\"\\\\boxed{0.5}\",\"id\":7}\n\n{\"gold\":\"3\",\"pred\":\"\\\\boxed{4}\"}\n").unwrap();
    let out = ok(bin()
        .args(["grade", "--mode", "verify", "--jsonl"])
        .arg(&file)
        .output()
        .unwrap());
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(
        (lines[0]["correct"].as_bool(), lines[0]["id"].as_i64()),
        (Some(true), Some(7))
    );
    assert_eq!(lines[1]["correct"].as_bool(), Some(false));
    std::fs::write(&file, "{\"gold\":\"1\"}\n").unwrap();
    let out = bin()
        .args(["grade", "--jsonl"])
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("line 1") && err.contains("pred"),
        "{err}"
    );
}

#[test]
fn bench_relay_accounts_for_its_wall_time() {
    let dir = tempfile::tempdir().unwrap();
    let (slm, llm) = write_tiny_pair(dir.path(), 512);
    let out = ok(bin()
        .args(["bench", "relay", "--slm"])
        .arg(&slm)
        .arg("--llm")
        .arg(&llm)
        .args([
            "--problems",
            "2",
            "--max-tokens",
            "24",
            "--policy",
            "confidence",
        ])
        .args([
            "--threshold",
            "0.99",
            "--call-tokens",
            "3",
            "--cooldown",
            "2",
        ])
        .args(["--threads", "1", "--json"])
        .output()
        .unwrap());
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    let f = |k: &str| v[k].as_f64().unwrap_or_else(|| panic!("{k} missing: {v}"));
    let u = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} missing: {v}"));
    assert_eq!(u("problems"), 2);
    assert!(u("calls") > 0, "threshold 0.99 calls on the tiny pair: {v}");
    let (slm_t, llm_t) = (u("slm_tokens"), u("llm_tokens"));
    assert!((f("call_ratio") - llm_t as f64 / (slm_t + llm_t) as f64).abs() < 1e-12);
    assert!((f("overhead_ratio") - f("relay_wall_s") / f("decoded_alone_s")).abs() < 1e-9);
    // KV reuse: the LLM never prefills more than re-sending would.
    assert!(u("llm_prefill_tokens") <= u("resend_prefill_tokens"), "{v}");
    assert!(u("llm_prefill_tokens") > 0);
    // The measured split: the two engines' clocks plus the loop's own time are the wall time,
    // each part is a real duration, and the baseline is the two models' parts.
    let m = &v["measured"];
    let g = |k: &str| m[k].as_f64().unwrap_or_else(|| panic!("{k} missing: {m}"));
    for k in [
        "slm_in_relay_s",
        "slm_alone_s",
        "llm_in_relay_s",
        "llm_alone_s",
    ] {
        assert!(g(k) > 0.0, "{k}: {m}");
    }
    assert!(g("loop_s") >= 0.0, "{m}");
    let parts = g("slm_in_relay_s") + g("llm_in_relay_s") + g("loop_s");
    assert!((parts - f("relay_wall_s")).abs() < 1e-6, "{m} vs {v}");
    assert!((g("slm_alone_s") + g("llm_alone_s") - f("decoded_alone_s")).abs() < 1e-9);
}
