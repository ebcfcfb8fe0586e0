//! `OUT/results.jsonl`: one line per (problem, sample), appended as items finish. Reading it
//! back is how a run resumes: a line is done when it is complete and parses; a torn last line
//! (the process died mid-write) is dropped and redone. The reading and appending work on any
//! line type ([`read_jsonl`]), so the pool filter's output resumes the same way.

use crate::error::{EvalError, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::io::{Seek, Write};
use std::path::Path;

/// One solved and graded item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultLine {
    /// The problem's index in the data file ([`Problem::index`](crate::Problem::index)).
    pub index: usize,
    /// Which of the `--samples` attempts this is (0-based).
    pub sample: usize,
    pub problem: String,
    pub gold: String,
    /// The full response text.
    pub response: String,
    /// The answer the grader took from the response (`null` when it found none).
    pub extracted: Option<String>,
    pub correct: bool,
    /// Response tokens written by each model.
    pub slm_tokens: usize,
    pub llm_tokens: usize,
    /// LLM calls made.
    pub calls: usize,
    /// Time spent solving this item (measured by the runner).
    pub wall_ms: f64,
    /// The relay trace (`relay_core::RelayTrace` as JSON), or `null`.
    #[serde(default)]
    pub trace: serde_json::Value,
}

impl ResultLine {
    pub fn key(&self) -> (usize, usize) {
        (self.index, self.sample)
    }

    pub fn response_tokens(&self) -> usize {
        self.slm_tokens + self.llm_tokens
    }

    /// LLM calls that failed (the trace's calls with an `llm_error`); the SLM wrote on alone
    /// where they would have written.
    pub fn failed_llm_calls(&self) -> usize {
        self.trace
            .get("calls")
            .and_then(|c| c.as_array())
            .map_or(0, |calls| {
                calls
                    .iter()
                    .filter(|c| c.get("llm_error").is_some())
                    .count()
            })
    }
}

/// What an appended JSONL file holds.
#[derive(Debug)]
pub struct JsonlFile<T> {
    pub lines: Vec<T>,
    /// Bytes of the file up to the end of its last good line; what follows is a torn write.
    pub valid_len: u64,
    /// Whether a torn or unreadable last line was found (and will be redone).
    pub torn_tail: bool,
}

impl<T> Default for JsonlFile<T> {
    fn default() -> Self {
        JsonlFile {
            lines: Vec::new(),
            valid_len: 0,
            torn_tail: false,
        }
    }
}

/// What a results file holds.
pub type ResultsFile = JsonlFile<ResultLine>;

/// Reads an eval run's `results.jsonl` (see [`read_jsonl`]).
pub fn read_results(path: &Path) -> Result<ResultsFile> {
    read_jsonl(path)
}

/// Reads `path` (absent = empty). Only the last line may be damaged: it lacks its newline or
/// does not parse. Damage anywhere else is an error with its line number, since no crash of
/// ours can cause it and silently redoing it could hide a real problem.
pub fn read_jsonl<T: DeserializeOwned>(path: &Path) -> Result<JsonlFile<T>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(JsonlFile::default()),
        Err(e) => {
            return Err(EvalError::Io {
                path: path.to_path_buf(),
                source: e,
            })
        }
    };
    let mut out = JsonlFile::default();
    let mut start = 0usize;
    let mut line_no = 0usize;
    while start < bytes.len() {
        line_no += 1;
        let (end, complete) = match bytes[start..].iter().position(|&b| b == b'\n') {
            Some(i) => (start + i + 1, true),
            None => (bytes.len(), false),
        };
        let is_last = end == bytes.len();
        let raw = &bytes[start..end];
        if raw.iter().all(|b| b.is_ascii_whitespace()) && complete {
            out.valid_len = end as u64;
            start = end;
            continue;
        }
        let parsed = if complete {
            serde_json::from_slice::<T>(raw).map_err(|e| e.to_string())
        } else {
            Err("no newline at the end (torn write)".to_string())
        };
        match parsed {
            Ok(line) => {
                out.lines.push(line);
                out.valid_len = end as u64;
            }
            Err(_) if is_last => out.torn_tail = true,
            Err(reason) => {
                return Err(EvalError::CorruptResults {
                    path: path.to_path_buf(),
                    line: line_no,
                    reason,
                })
            }
        }
        start = end;
    }
    Ok(out)
}

/// Opens `path` (created if absent) for appending after its first `valid_len` bytes: a torn
/// tail beyond them is cut off first, so the next line starts on a line of its own.
pub(crate) fn open_append(
    path: &Path,
    valid_len: u64,
) -> Result<std::io::BufWriter<std::fs::File>> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(EvalError::io(path))?;
    file.set_len(valid_len).map_err(EvalError::io(path))?;
    let mut writer = std::io::BufWriter::new(file);
    writer
        .seek(std::io::SeekFrom::End(0))
        .map_err(EvalError::io(path))?;
    Ok(writer)
}

/// One JSON line, newline included, in a single write, then flushed to the OS.
pub(crate) fn append_line(writer: &mut impl Write, line: &impl Serialize) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(line).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    writer.write_all(&bytes)?;
    writer.flush()
}
