//! Bad input gives a clear `EngineError` variant, never a panic, and a failed call leaves
//! every sequence as it was: on every engine this build has (candle; llama.cpp with the
//! `llama-cpp` feature), with the same variants.

use candle_core::quantized::gguf_file::Value;
use relay_engine::model::load_engine;
use relay_engine::tiny::{tiny_engines, write_gguf, write_safetensors, TinyConfig};
use relay_engine::{CandleEngine, Engine, EngineError, EngineKind, LoadOptions, SeqId};
use std::sync::Arc;

/// Every engine of this build on the default tiny model.
fn tiny_opts(opts: LoadOptions) -> (Vec<(EngineKind, Arc<dyn Engine>)>, tempfile::TempDir) {
    tiny_engines(&TinyConfig::qwen2(), opts).unwrap()
}

fn tiny() -> (Vec<(EngineKind, Arc<dyn Engine>)>, tempfile::TempDir) {
    tiny_opts(LoadOptions::default())
}

/// The candle engine's error loading `path` (safetensors folders are candle's alone).
fn load_err(path: &std::path::Path) -> EngineError {
    match CandleEngine::load(path, LoadOptions::default()) {
        Ok(_) => panic!("loading {} should fail", path.display()),
        Err(e) => e,
    }
}

/// Each engine's error loading the GGUF file `path`.
fn load_errs(path: &std::path::Path) -> Vec<(EngineKind, EngineError)> {
    EngineKind::built()
        .into_iter()
        .map(|kind| {
            let opts = LoadOptions {
                engine: kind,
                ..LoadOptions::default()
            };
            match load_engine(path, opts) {
                Ok(_) => panic!("{kind:?}: loading {} should fail", path.display()),
                Err(e) => (kind, e),
            }
        })
        .collect()
}

#[test]
fn unknown_sequence() {
    let (es, _d) = tiny();
    for (kind, e) in &es {
        let e: &dyn Engine = e.as_ref();
        eprintln!("engine: {kind:?}"); // names the engine in a failure's output
        let ghost = SeqId(999_999);
        assert!(
            matches!(e.prefill(ghost, &[1]), Err(EngineError::UnknownSequence(s)) if s == ghost)
        );
        assert!(matches!(
            e.step(&[(ghost, 1)]),
            Err(EngineError::UnknownSequence(_))
        ));
        assert!(matches!(
            e.seq_len(ghost),
            Err(EngineError::UnknownSequence(_))
        ));
        assert!(matches!(
            e.truncate(ghost, 0),
            Err(EngineError::UnknownSequence(_))
        ));
        assert!(matches!(
            e.fork(ghost),
            Err(EngineError::UnknownSequence(_))
        ));
        assert!(matches!(
            e.free(ghost),
            Err(EngineError::UnknownSequence(_))
        ));
        // A freed sequence is unknown from then on.
        let s = e.create_sequence().unwrap();
        e.free(s).unwrap();
        assert!(matches!(e.free(s), Err(EngineError::UnknownSequence(_))));
        assert!(matches!(
            e.prefill(s, &[1]),
            Err(EngineError::UnknownSequence(_))
        ));
        assert_eq!(EngineError::UnknownSequence(s).label(), "unknown_sequence");
    }
}

#[test]
fn failed_batch_leaves_sequences_unchanged() {
    let (es, _d) = tiny();
    for (kind, e) in &es {
        let e: &dyn Engine = e.as_ref();
        eprintln!("engine: {kind:?}"); // names the engine in a failure's output
        let s = e.create_sequence().unwrap();
        e.prefill(s, &[1, 2, 3]).unwrap();
        assert!(matches!(
            e.step(&[(s, 4), (SeqId(424242), 5)]),
            Err(EngineError::UnknownSequence(_))
        ));
        assert!(matches!(
            e.step(&[(s, 4), (s, 5000)]),
            Err(EngineError::TokenOutOfVocab { id: 5000, .. })
        ));
        assert_eq!(e.seq_len(s).unwrap(), 3);
    }
}

#[test]
fn token_out_of_vocab() {
    let (es, _d) = tiny();
    for (kind, e) in &es {
        let e: &dyn Engine = e.as_ref();
        eprintln!("engine: {kind:?}"); // names the engine in a failure's output
        let vocab = e.info().vocab_size;
        let s = e.create_sequence().unwrap();
        let bad = vocab as u32;
        assert!(
            matches!(e.prefill(s, &[1, bad]), Err(EngineError::TokenOutOfVocab { id, vocab_size }) if id == bad && vocab_size == vocab)
        );
        assert!(matches!(
            e.step(&[(s, bad)]),
            Err(EngineError::TokenOutOfVocab { .. })
        ));
        assert!(matches!(
            e.score(&[1, u32::MAX]),
            Err(EngineError::TokenOutOfVocab { .. })
        ));
        assert_eq!(e.seq_len(s).unwrap(), 0);
        // The largest valid id is fine.
        e.prefill(s, &[bad - 1]).unwrap();
    }
}

#[test]
fn context_overflow() {
    let (es, _d) = tiny_opts(LoadOptions {
        max_context: Some(8),
        ..Default::default()
    });
    for (kind, e) in &es {
        let e: &dyn Engine = e.as_ref();
        eprintln!("engine: {kind:?}"); // names the engine in a failure's output
        let s = e.create_sequence().unwrap();
        let long: Vec<u32> = (0..9).collect();
        assert!(matches!(
            e.prefill(s, &long),
            Err(EngineError::ContextOverflow {
                len: 9,
                context_length: 8
            })
        ));
        assert!(matches!(
            e.score(&long),
            Err(EngineError::ContextOverflow { .. })
        ));
        e.prefill(s, &long[..6]).unwrap();
        assert!(matches!(
            e.prefill(s, &[1, 2, 3]),
            Err(EngineError::ContextOverflow { len: 9, .. })
        ));
        e.step(&[(s, 1)]).unwrap();
        e.step(&[(s, 1)]).unwrap();
        assert!(matches!(
            e.step(&[(s, 1)]),
            Err(EngineError::ContextOverflow { len: 9, .. })
        ));
        assert_eq!(e.seq_len(s).unwrap(), 8);
        // Truncating makes room again.
        e.truncate(s, 7).unwrap();
        e.step(&[(s, 1)]).unwrap();
    }
}

#[test]
fn empty_prefill_and_bad_truncate() {
    let (es, _d) = tiny();
    for (kind, e) in &es {
        let e: &dyn Engine = e.as_ref();
        eprintln!("engine: {kind:?}"); // names the engine in a failure's output
        let s = e.create_sequence().unwrap();
        assert!(matches!(
            e.prefill(s, &[]),
            Err(EngineError::InvalidInput(_))
        ));
        assert!(matches!(e.score(&[]), Err(EngineError::InvalidInput(_))));
        e.prefill(s, &[1, 2]).unwrap();
        assert!(matches!(
            e.truncate(s, 3),
            Err(EngineError::InvalidInput(_))
        ));
        assert_eq!(e.seq_len(s).unwrap(), 2);
    }
}

#[test]
fn missing_files() {
    let dir = tempfile::tempdir().unwrap();
    for (kind, err) in load_errs(&dir.path().join("nope.gguf")) {
        assert!(matches!(err, EngineError::NotFound(_)), "{kind:?}: {err}");
    }
    // A directory without config.json.
    assert!(matches!(load_err(dir.path()), EngineError::NotFound(p) if p.ends_with("config.json")));
    // config.json but no weights.
    let hf = dir.path().join("hf");
    write_safetensors(&hf, &TinyConfig::qwen2()).unwrap();
    std::fs::remove_file(hf.join("model.safetensors")).unwrap();
    assert!(matches!(load_err(&hf), EngineError::NotFound(_)));
}

#[test]
fn wrong_architecture() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("llama.gguf");
    write_gguf(
        &p,
        &TinyConfig::qwen2(),
        &[("general.architecture".into(), Value::String("llama".into()))],
    )
    .unwrap();
    for (kind, err) in load_errs(&p) {
        assert!(
            matches!(&err, EngineError::Unsupported(m) if m.contains("llama")),
            "{kind:?}: {err}"
        );
    }

    let hf = dir.path().join("hf");
    write_safetensors(&hf, &TinyConfig::qwen2()).unwrap();
    let cfg = std::fs::read_to_string(hf.join("config.json"))
        .unwrap()
        .replace("\"qwen2\"", "\"llama\"");
    std::fs::write(hf.join("config.json"), cfg).unwrap();
    assert!(matches!(load_err(&hf), EngineError::Unsupported(_)));
}

#[test]
fn truncated_or_corrupt_gguf() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tiny.gguf");
    write_gguf(&p, &TinyConfig::qwen2(), &[]).unwrap();
    let bytes = std::fs::read(&p).unwrap();
    for cut in [bytes.len() - 1, bytes.len() / 2, 100, 10, 0] {
        let q = dir.path().join(format!("cut{cut}.gguf"));
        std::fs::write(&q, &bytes[..cut]).unwrap();
        for (kind, err) in load_errs(&q) {
            assert!(
                matches!(err, EngineError::Malformed { .. }),
                "{kind:?}: cut at {cut}: {err}"
            );
        }
    }
    let q = dir.path().join("garbage.gguf");
    std::fs::write(&q, b"this is not a gguf file at all, just text").unwrap();
    for (kind, err) in load_errs(&q) {
        assert!(
            matches!(err, EngineError::Malformed { .. }),
            "{kind:?}: {err}"
        );
    }
    // Metadata that is missing a required key.
    let r = dir.path().join("nokey.gguf");
    write_gguf(
        &r,
        &TinyConfig::qwen2(),
        &[("general.architecture".into(), Value::String("qwen3".into()))],
    )
    .unwrap();
    for (kind, err) in load_errs(&r) {
        assert!(
            matches!(err, EngineError::Malformed { .. }),
            "{kind:?}: {err}"
        );
    }
}
