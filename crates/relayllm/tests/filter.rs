//! `relayllm data filter` as a user runs it, on the tiny model pair the test writes: the
//! output's fields and summary, the SLM's samples equal to `eval --policy slm-only`'s, an
//! existing output refused unless --resume, a killed run resumed to the uninterrupted file,
//! and bad input refused with a clear message.

use relay_engine::testing::write_tiny_pair;
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_relayllm"))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ok(out: Output) -> (String, String) {
    assert!(out.status.success(), "failed: {}", stderr(&out));
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// `n` problems with a `solution` field the output must carry along.
fn problems(dir: &Path, n: usize) -> PathBuf {
    let path = dir.join("train.jsonl");
    let mut f = std::fs::File::create(&path).unwrap();
    for i in 0..n {
        let line = serde_json::json!({"problem": format!("What is {i} plus {i}?"),
            "answer": (2 * i).to_string(), "solution": format!("{i} + {i} = {}", 2 * i)});
        writeln!(f, "{line}").unwrap();
    }
    path
}

fn filter(slm: &Path, llm: &Path, data: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = bin();
    c.args(["data", "filter", "--data"])
        .arg(data)
        .arg("--slm")
        .arg(slm)
        .arg("--llm")
        .arg(llm)
        .arg("--out")
        .arg(out)
        .args(["--threads", "1", "--no-progress"])
        .args(extra);
    c
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn filter_writes_a_line_per_problem_a_summary_and_the_samples_eval_would() {
    let dir = tempfile::tempdir().unwrap();
    let (slm, llm) = write_tiny_pair(dir.path(), 1024);
    let data = problems(dir.path(), 3);
    let out = dir.path().join("pool/pool.jsonl");
    let kept_path = dir.path().join("pool/kept.jsonl");
    let args = [
        "--samples",
        "2",
        "--max-tokens",
        "16",
        "--concurrency",
        "3",
        "--kept",
        kept_path.to_str().unwrap(),
    ];
    let (stdout, _) = ok(filter(&slm, &llm, &data, &out, &args).output().unwrap());

    let pool = lines(&out);
    assert_eq!(pool.len(), 3);
    for (i, l) in pool.iter().enumerate() {
        assert_eq!(l["index"], i);
        assert_eq!(l["problem"], format!("What is {i} plus {i}?"));
        assert_eq!(l["answer"], (2 * i).to_string());
        assert_eq!(l["solution"], format!("{i} + {i} = {}", 2 * i));
        assert_eq!(l["samples"], 2);
        for model in ["slm", "llm"] {
            let correct = l[format!("{model}_correct")].as_u64().unwrap();
            assert!(correct <= 2);
            assert_eq!(
                l[format!("{model}_pass_rate")].as_f64().unwrap(),
                correct as f64 / 2.0
            );
            assert_eq!(l[format!("{model}_answers")].as_array().unwrap().len(), 2);
        }
        assert_eq!(
            l["keep"].as_bool().unwrap(),
            l["llm_correct"].as_u64().unwrap() >= 1
        );
    }
    assert!(
        stdout.contains("3 problems, K = 2 samples per model"),
        "{stdout}"
    );
    assert!(stdout.contains("correct of K   LLM   SLM"), "{stdout}");
    for bucket in ["0/2", "1/2", "2/2"] {
        assert!(stdout.contains(bucket), "{stdout}");
    }
    let summary: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("pool/pool.summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["problems"], 3);
    assert_eq!(summary["samples"], 2);
    for h in ["llm_correct_histogram", "slm_correct_histogram"] {
        let counts: Vec<u64> = summary[h]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_u64().unwrap())
            .collect();
        assert_eq!(counts.len(), 3, "{h}");
        assert_eq!(counts.iter().sum::<u64>(), 3, "{h}");
    }
    let kept = pool.iter().filter(|l| l["keep"] == true).count();
    assert_eq!(summary["kept"], kept);
    // --kept: the kept problems as the data file has them, nothing of the filter's.
    let want: Vec<Value> = pool
        .iter()
        .filter(|l| l["keep"] == true)
        .map(|l| {
            serde_json::json!({"problem": l["problem"], "answer": l["answer"],
                "solution": l["solution"]})
        })
        .collect();
    assert_eq!(
        std::fs::read_to_string(&kept_path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .collect::<Vec<_>>(),
        want
    );

    // The SLM's samples are `eval --policy slm-only`'s: same prompt, seeds and grader.
    let eval_dir = dir.path().join("eval-slm");
    ok(bin()
        .args(["eval", "--policy", "slm-only", "--data"])
        .arg(&data)
        .arg("--slm")
        .arg(&slm)
        .arg("--out")
        .arg(&eval_dir)
        .args(["--samples", "2", "--temperature", "1", "--max-tokens", "16"])
        .args(["--threads", "1", "--no-progress"])
        .output()
        .unwrap());
    let mut eval_answers = vec![vec![Value::Null; 2]; 3];
    for r in lines(&eval_dir.join("results.jsonl")) {
        let (i, s) = (r["index"].as_u64().unwrap(), r["sample"].as_u64().unwrap());
        eval_answers[i as usize][s as usize] = r["extracted"].clone();
    }
    for (l, answers) in pool.iter().zip(&eval_answers) {
        assert_eq!(l["slm_answers"].as_array().unwrap(), answers);
    }

    // An existing output is not overwritten; --resume finds it done.
    let before = std::fs::read(&out).unwrap();
    let refused = filter(&slm, &llm, &data, &out, &args).output().unwrap();
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("already exists"),
        "{}",
        stderr(&refused)
    );
    assert!(
        stderr(&refused).contains("--resume"),
        "{}",
        stderr(&refused)
    );
    let mut resume = args.to_vec();
    resume.push("--resume");
    let (_, err) = ok(filter(&slm, &llm, &data, &out, &resume).output().unwrap());
    assert!(err.contains("3 of 3 problems already done"), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), before);
    // ... but not with another K.
    let other = filter(
        &slm,
        &llm,
        &data,
        &out,
        &["--samples", "3", "--max-tokens", "16", "--resume"],
    )
    .output()
    .unwrap();
    assert!(!other.status.success());
    assert!(
        stderr(&other).contains("samples: 2 (stored) → 3 (now)"),
        "{}",
        stderr(&other)
    );

    // --json: the summary on stdout.
    let json_out = dir.path().join("pool-json.jsonl");
    let mut with_json = args.to_vec();
    with_json.push("--json");
    let (stdout, _) = ok(filter(&slm, &llm, &data, &json_out, &with_json)
        .output()
        .unwrap());
    let printed: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(printed["problems"], 3);
    assert_eq!(
        printed["llm_correct_histogram"],
        summary["llm_correct_histogram"]
    );
    assert_eq!(
        std::fs::read(&json_out).unwrap(),
        before,
        "same seed, same file"
    );
}

#[test]
fn a_killed_filter_resumes_to_the_file_of_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let (slm, llm) = write_tiny_pair(dir.path(), 1024);
    let n = 24;
    let data = problems(dir.path(), n);
    let args = ["--samples", "2", "--max-tokens", "96", "--concurrency", "2"];

    let whole = dir.path().join("whole.jsonl");
    ok(filter(&slm, &llm, &data, &whole, &args).output().unwrap());

    let killed = dir.path().join("killed.jsonl");
    let mut child = filter(&slm, &llm, &data, &killed, &args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let complete_lines = |p: &Path| {
        std::fs::read_to_string(p)
            .map(|s| s.matches('\n').count())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while complete_lines(&killed) < 2 {
        assert!(Instant::now() < deadline, "no lines after 60 s");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let done_at_kill = complete_lines(&killed);
    assert!(
        done_at_kill < n,
        "the run finished before it was killed; make it longer"
    );

    let mut resume = args.to_vec();
    resume.push("--resume");
    let (stdout, stderr) = ok(filter(&slm, &llm, &data, &killed, &resume)
        .output()
        .unwrap());
    assert!(stderr.contains("problems already done"), "{stderr}");
    assert!(stdout.contains(&format!("{n} problems")), "{stdout}");
    assert_eq!(
        std::fs::read(&killed).unwrap(),
        std::fs::read(&whole).unwrap()
    );
}

#[test]
fn filter_refuses_bad_input_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let (slm, llm) = write_tiny_pair(dir.path(), 1024);
    let data = problems(dir.path(), 2);
    let out = dir.path().join("pool.jsonl");
    let fails = |c: &mut Command| {
        let o = c.output().unwrap();
        let err = stderr(&o);
        assert!(!o.status.success(), "succeeded: {err}");
        assert!(!err.contains("panicked"), "{err}");
        err
    };

    let zero = fails(&mut filter(&slm, &llm, &data, &out, &["--samples", "0"]));
    assert!(zero.contains("--samples must be at least 1"), "{zero}");
    assert!(!out.exists());

    let missing = dir.path().join("nope.jsonl");
    let err = fails(&mut filter(&slm, &llm, &missing, &out, &["--samples", "2"]));
    assert!(err.contains("nope.jsonl"), "{err}");
    assert!(err.contains("No such file"), "{err}");

    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"problem\": \"What is 1 plus 1?\", \"answer\": \"2\"}\n{\"problem\": oops}\n",
    )
    .unwrap();
    let err = fails(&mut filter(&slm, &llm, &bad, &out, &["--samples", "2"]));
    assert!(err.contains("bad.jsonl:2:"), "{err}");
    assert!(err.contains("not valid JSON"), "{err}");

    let no_k = fails(
        bin()
            .args(["data", "filter", "--data"])
            .arg(&data)
            .arg("--out")
            .arg(&out),
    );
    assert!(no_k.contains("--samples"), "{no_k}");

    let help = ok(bin().args(["data", "filter", "--help"]).output().unwrap()).0;
    for flag in [
        "--data",
        "--slm",
        "--llm",
        "--samples",
        "--out",
        "--resume",
        "--drop-slm-solved",
        "--temperature",
        "--max-tokens",
        "--limit",
        "--concurrency",
        "--seed",
        "--json",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}
