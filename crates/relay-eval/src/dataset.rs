//! Benchmark files: JSONL, one `{"problem": ..., "answer": ...}` object a line (other fields
//! are ignored). Loading validates every line once, so the runner never meets a bad record.

use crate::error::{EvalError, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The instruction every prompt ends with (as RelayLLM evaluates). GSM8K's file lacks it; the
/// other shared benchmark files already have it.
pub const INSTRUCTION: &str =
    "Please reason step by step, and put your final answer within \\boxed{}.";

/// One benchmark problem, ready to solve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    /// 0-based position among the file's records (blank lines do not count). Results are keyed
    /// by it, so it does not move when `--offset` changes.
    pub index: usize,
    /// The prompt: the file's `problem`, with [`INSTRUCTION`] appended when absent.
    pub problem: String,
    /// The gold answer, as a bare string (numbers in the file become their JSON text).
    pub answer: String,
}

/// A loaded benchmark file.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub path: PathBuf,
    /// sha256 of the file's bytes: a run's identity, so a changed file is not resumed.
    pub sha256: String,
    pub problems: Vec<Problem>,
    /// Each problem's record as the file has it (all its fields, the instruction not added),
    /// by [`Problem::index`]: what the pool filter copies into its output.
    pub records: Vec<serde_json::Map<String, serde_json::Value>>,
}

impl Dataset {
    pub fn load(path: impl AsRef<Path>) -> Result<Dataset> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(EvalError::io(path))?;
        Dataset::from_bytes(path, &bytes)
    }

    /// Parses JSONL bytes; `path` is only used in messages and kept in the result.
    pub fn from_bytes(path: impl Into<PathBuf>, bytes: &[u8]) -> Result<Dataset> {
        let path = path.into();
        let text = std::str::from_utf8(bytes).map_err(|e| {
            let line = bytes[..e.valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1;
            EvalError::Dataset {
                path: path.clone(),
                line,
                reason: format!("not UTF-8: {e}"),
            }
        })?;
        let mut problems = Vec::new();
        let mut records = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let err = |reason: String| EvalError::Dataset {
                path: path.clone(),
                line: i + 1,
                reason,
            };
            let (record, problem, answer) = parse_record(line).map_err(err)?;
            records.push(record);
            problems.push(Problem {
                index: problems.len(),
                problem: with_instruction(&problem),
                answer,
            });
        }
        if problems.is_empty() {
            return Err(EvalError::Dataset {
                path,
                line: 0,
                reason: "no records: the file is empty".into(),
            });
        }
        Ok(Dataset {
            path,
            sha256: hex(&Sha256::digest(bytes)),
            problems,
            records,
        })
    }

    pub fn len(&self) -> usize {
        self.problems.len()
    }

    pub fn is_empty(&self) -> bool {
        self.problems.is_empty()
    }
}

/// A line's record with its problem and answer.
type Record = (serde_json::Map<String, serde_json::Value>, String, String);

fn parse_record(line: &str) -> std::result::Result<Record, String> {
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("not valid JSON: {e}"))?;
    let serde_json::Value::Object(map) = value else {
        return Err(format!(
            "expected a JSON object with `problem` and `answer`, got {}",
            kind(&value)
        ));
    };
    let problem = match map.get("problem") {
        None => return Err("missing field `problem`".into()),
        Some(serde_json::Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(serde_json::Value::String(_)) => return Err("`problem` is empty".into()),
        Some(other) => return Err(format!("`problem` must be a string, got {}", kind(other))),
    };
    let answer = match map.get("answer") {
        None => return Err("missing field `answer`".into()),
        Some(serde_json::Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(serde_json::Value::String(_)) => return Err("`answer` is empty".into()),
        Some(serde_json::Value::Number(n)) => n.to_string(),
        Some(other) => {
            return Err(format!(
                "`answer` must be a string or a number, got {}",
                kind(other)
            ))
        }
    };
    Ok((map, problem, answer))
}

fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// `problem` with [`INSTRUCTION`] on a line of its own at the end, unless it already has it.
pub fn with_instruction(problem: &str) -> String {
    if problem.contains(INSTRUCTION) {
        problem.to_string()
    } else {
        format!("{problem}\n{INSTRUCTION}")
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
