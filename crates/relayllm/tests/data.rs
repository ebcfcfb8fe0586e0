//! `relayllm data warmup` as a user runs it, on tiny models the test writes.

use relay_engine::testing::write_tiny_pair;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_relayllm"))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

const PROBLEMS: &str = r#"{"problem": "Janet has 16 eggs and eats 3 and bakes with 4. She sells the rest at $2. How much does she make?", "answer": "18", "solution": "16 - 3 - 4 = <<16-3-4=9>>9 eggs.\n9 * 2 = $<<9*2=18>>18.\n#### 18"}
{"problem": "What is 2 + 3?", "answer": "5", "solution": "2 + 3 = 5.\n#### 5"}
{"problem": "What is 7 * 6?", "answer": "42", "solution": "7 * 6 = 41.\n#### 41"}
{"problem": "What is 10 - 4?", "answer": "6", "solution": "10 - 4 = 6, so the answer is $\\boxed{6}$."}
"#;

#[test]
fn warmup_from_reference_solutions_writes_masked_examples() {
    let dir = tempfile::tempdir().unwrap();
    let (slm, llm) = write_tiny_pair(dir.path(), 1024);
    let problems = dir.path().join("problems.jsonl");
    std::fs::write(&problems, PROBLEMS).unwrap();
    let out_path = dir.path().join("warmup/out.jsonl");
    let run = |extra: &[&str]| {
        let mut c = bin();
        c.args(["data", "warmup", "--problems"]).arg(&problems);
        c.arg("--solutions").arg(&problems);
        c.arg("--model").arg(&slm).arg("--out").arg(&out_path);
        c.args(["--calls", "1-2", "--n-dist", "fixed:3", "--seed", "4"]);
        c.args(extra);
        c.output().unwrap()
    };
    let out = run(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let records = lines(&out_path);
    // The third solution's answer is wrong and is dropped.
    let indices: Vec<u64> = records
        .iter()
        .map(|r| r["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indices, vec![0, 1, 3], "{}", stderr(&out));
    for r in &records {
        let ids = r["input_ids"].as_array().unwrap();
        let mask = r["loss_mask"].as_array().unwrap();
        assert_eq!(ids.len(), mask.len());
        let prompt = r["prompt_tokens"].as_u64().unwrap() as usize;
        assert!(
            mask[..prompt].iter().all(|m| m == 0),
            "the prompt is not learned"
        );
        assert_eq!(
            prompt + r["response_tokens"].as_u64().unwrap() as usize,
            ids.len()
        );
        let calls = r["calls"].as_array().unwrap();
        assert!((1..=2).contains(&calls.len()));
        let masked_out = mask[prompt..].iter().filter(|m| **m == 0).count() as u64;
        assert_eq!(
            masked_out,
            r["llm_tokens"].as_u64().unwrap(),
            "LLM tokens are masked"
        );
        assert_eq!(
            r["llm_tokens"].as_u64().unwrap(),
            calls
                .iter()
                .map(|c| c["served"].as_u64().unwrap())
                .sum::<u64>()
        );
        let content = r["messages"][1]["content"].as_str().unwrap();
        assert_eq!(
            content.matches("<call>3</call>").count(),
            calls.len(),
            "{content}"
        );
        let plain = content.replace("<call>3</call>", "");
        assert!(
            !plain.contains("<<"),
            "calculator notes are dropped: {content}"
        );
        assert!(plain.contains("\\boxed{"), "{content}");
        assert_eq!(r["solution_source"], "file");
        assert_eq!(r["teacher"], false);
    }
    let summary: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("warmup/out.summary.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(summary["examples"], 3);
    assert_eq!(summary["solutions_graded_wrong"], 1);
    assert!(!dir.path().join("warmup/out.jsonl.partial").exists());

    // Same seed, same file.
    let first = std::fs::read(&out_path).unwrap();
    assert!(run(&[]).status.success());
    assert_eq!(std::fs::read(&out_path).unwrap(), first);

    // --max-len leaves long examples out (and counts them): a limit at the shortest example
    // keeps it and drops the longest.
    let lens: Vec<usize> = records
        .iter()
        .map(|r| r["input_ids"].as_array().unwrap().len())
        .collect();
    let limit = lens.iter().min().unwrap().to_string();
    assert!(lens.iter().max() > lens.iter().min());
    let out = run(&["--max-len", &limit]);
    assert!(out.status.success(), "{}", stderr(&out));
    let short = lines(&out_path);
    assert!(!short.is_empty() && short.len() < 3);
    assert!(short
        .iter()
        .all(|r| r["input_ids"].as_array().unwrap().len() <= limit.parse().unwrap()));
    let summary: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("warmup/out.summary.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        summary["too_long"].as_u64().unwrap() + short.len() as u64,
        3,
        "{summary}"
    );

    // With the LLM as teacher: its own tokens follow each command.
    let out = run(&["--teacher", llm.to_str().unwrap()]);
    let summary: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("warmup/out.summary.json")).unwrap(),
    )
    .unwrap();
    let written = summary["examples"].as_u64().unwrap();
    assert_eq!(
        written + summary["teacher_changed_answer"].as_u64().unwrap(),
        3,
        "{}",
        stderr(&out)
    );
    if written > 0 {
        assert!(lines(&out_path).iter().all(|r| r["teacher"] == true));
    }
}

#[test]
fn informed_placements_put_commands_only_where_a_token_qualifies() {
    let dir = tempfile::tempdir().unwrap();
    let (slm, llm) = write_tiny_pair(dir.path(), 1024);
    let problems = dir.path().join("problems.jsonl");
    std::fs::write(&problems, PROBLEMS).unwrap();
    let out_path = dir.path().join("out.jsonl");
    let run = |extra: &[&str]| {
        let mut c = bin();
        c.args(["data", "warmup", "--problems"]).arg(&problems);
        c.arg("--solutions").arg(&problems);
        c.arg("--model").arg(&slm).arg("--out").arg(&out_path);
        c.args(["--calls", "2", "--n-dist", "fixed:2", "--seed", "4"]);
        c.args(extra);
        c.output().unwrap()
    };
    let summary = || -> Value {
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("out.summary.json")).unwrap())
            .unwrap()
    };
    // Below 0.5 the tiny SLM leaves enough qualifying tokens in every solution for the two
    // commands --calls asks for; below 1e-30 none qualifies, and no example calls.
    let out = run(&["--placement", "unsure:0.5"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let records = lines(&out_path);
    assert_eq!(records.len(), 3);
    for r in &records {
        assert_eq!(r["calls"].as_array().unwrap().len(), 2, "{r}");
    }
    assert_eq!(summary()["placement"], "unsure:0.5");
    let out = run(&["--placement", "unsure:1e-30"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(lines(&out_path)
        .iter()
        .all(|r| r["calls"].as_array().unwrap().is_empty()));
    assert_eq!(summary()["calls"], 0);

    // gap reads the LLM's log-probs: without an LLM it says so; with --llm it places commands
    // and the LLM's tokens stay the solution's; with --teacher they are the teacher's.
    let out = run(&["--placement", "gap"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--llm"), "{}", stderr(&out));
    let out = run(&["--placement", "gap:0", "--llm", llm.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(summary()["placement"], "gap:0");
    assert!(summary()["calls"].as_u64().unwrap() > 0, "{}", summary());
    assert!(lines(&out_path).iter().all(|r| r["teacher"] == false));
    let out = run(&["--placement", "gap:0", "--teacher", llm.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(&["--placement", "unsure:2"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("(0, 1]"), "{}", stderr(&out));
}

#[test]
fn warmup_reads_eval_results_and_explains_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let (slm, _) = write_tiny_pair(dir.path(), 1024);
    let problems = dir.path().join("problems.jsonl");
    std::fs::write(&problems, PROBLEMS).unwrap();
    let out_path = dir.path().join("out.jsonl");

    // An eval run's results: only correct responses count.
    let results = dir.path().join("results.jsonl");
    std::fs::write(
        &results,
        concat!(
            r#"{"index":1,"sample":0,"response":"2 + 3 = \\boxed{5}","correct":true}"#,
            "\n",
            r#"{"index":1,"sample":1,"response":"2 + 3 = \\boxed{6}","correct":false}"#,
            "\n",
            r#"{"index":2,"sample":0,"response":"7 * 6 = \\boxed{42}","correct":true}"#,
            "\n",
        ),
    )
    .unwrap();
    let out = bin()
        .args(["data", "warmup", "--problems"])
        .arg(&problems)
        .arg("--solutions")
        .arg(&results)
        .arg("--model")
        .arg(&slm)
        .arg("--out")
        .arg(&out_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let records = lines(&out_path);
    assert_eq!(records.len(), 2);
    assert!(records.iter().all(|r| r["solution_source"] == "slm"));

    // No source of solutions.
    let out = bin()
        .args(["data", "warmup", "--problems"])
        .arg(&problems)
        .arg("--out")
        .arg(&out_path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--solutions FILE or --sample-from MODEL"),
        "{}",
        stderr(&out)
    );

    // A broken solutions line names its line.
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"solution\": \"x\"}\n{\"text\": 3}\n").unwrap();
    let out = bin()
        .args(["data", "warmup", "--problems"])
        .arg(&problems)
        .arg("--solutions")
        .arg(&bad)
        .arg("--model")
        .arg(&slm)
        .arg("--out")
        .arg(&out_path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("bad.jsonl:2") && !err.contains("panicked"),
        "{err}"
    );
    // A bad distribution is refused by the flag parser.
    let out = bin()
        .args(["data", "warmup", "--problems"])
        .arg(&problems)
        .args(["--solutions"])
        .arg(&problems)
        .args(["--out", "x.jsonl", "--n-dist", "uniform:9-3"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("LO is above HI"), "{}", stderr(&out));
}

#[test]
fn warmup_samples_from_the_slm_through_the_eval_harness() {
    let dir = tempfile::tempdir().unwrap();
    let (slm, _) = write_tiny_pair(dir.path(), 1024);
    let problems = dir.path().join("problems.jsonl");
    std::fs::write(&problems, PROBLEMS).unwrap();
    let out_path = dir.path().join("out.jsonl");
    let out = bin()
        .args(["data", "warmup", "--problems"])
        .arg(&problems)
        .arg("--sample-from")
        .arg(&slm)
        .arg("--out")
        .arg(&out_path)
        .args([
            "--samples",
            "2",
            "--max-tokens",
            "8",
            "--limit",
            "2",
            "--no-progress",
        ])
        .output()
        .unwrap();
    // A random tiny model answers nothing right: the run says so rather than writing nothing silently.
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no example written"),
        "{}",
        stderr(&out)
    );
    let samples = lines(&dir.path().join("out.samples/results.jsonl"));
    assert_eq!(samples.len(), 4, "2 problems x 2 samples");
    assert!(samples
        .iter()
        .all(|s| s["slm_tokens"].as_u64().unwrap() <= 8));
}
