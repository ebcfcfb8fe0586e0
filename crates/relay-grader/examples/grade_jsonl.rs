//! Grade a JSONL file of `{"gold", "pred"}` lines and write each line back with
//! `"correct"`: the same contract as `relayllm grade --mode M --jsonl FILE`, so the
//! agreement script (`scripts/grader_agreement.py`) can run before the CLI has it.
//!
//! `cargo run --release -p relay-grader --example grade_jsonl -- --mode verify --jsonl FILE`

use relay_grader::{grade, GradeMode};
use std::io::{BufRead, Write};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let mode: GradeMode = arg("--mode")
        .unwrap_or_else(|| "verify".into())
        .parse()
        .unwrap_or_else(|e| {
            eprintln!("{e}");
            std::process::exit(2)
        });
    let Some(path) = arg("--jsonl") else {
        eprintln!("usage: grade_jsonl --mode verify|mathruler --jsonl FILE");
        std::process::exit(2)
    };
    let file = std::fs::File::open(&path).unwrap_or_else(|e| {
        eprintln!("{path}: {e}");
        std::process::exit(1)
    });
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.expect("read line");
        if line.trim().is_empty() {
            continue;
        }
        let mut v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| {
            eprintln!("{path}:{}: {e}", n + 1);
            std::process::exit(1)
        });
        let gold = v
            .get("gold")
            .and_then(|g| g.as_str())
            .unwrap_or("")
            .to_string();
        let pred = v
            .get("pred")
            .and_then(|g| g.as_str())
            .unwrap_or("")
            .to_string();
        if let Some(obj) = v.as_object_mut() {
            obj.insert(
                "correct".into(),
                serde_json::Value::Bool(grade(mode, &gold, &pred)),
            );
        }
        writeln!(out, "{v}").expect("write");
    }
}
