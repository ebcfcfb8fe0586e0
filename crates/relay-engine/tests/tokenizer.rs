//! Tokenizer and incremental detokenization: GGUF- and JSON-built tokenizers agree, round
//! trips are exact, streamed text equals `decode`, and model paths resolve to the right source.

use std::path::Path;

use candle_core::quantized::gguf_file;
use rand::{rngs::StdRng, Rng, SeedableRng};
use relay_engine::stream::TokenStreamDecoder;
use relay_engine::testing::{real_slm_gguf, shared_benchmarks_dir};
use relay_engine::tiny_vocab::{self, ENDOFTEXT_ID, IM_END_ID, IM_START_ID, TINY_VOCAB_SIZE};
use relay_engine::tokenizer::{SpecialTokens, Tokenizer};
use relay_engine::EngineError;

/// Strings that exercise the pre-tokenizer: words, contractions, digits, whitespace runs,
/// newlines, call tags, LaTeX, accents, CJK, emoji (4-byte and ZWJ sequences).
const SAMPLES: &[&str] = &[
    "",
    "Hello, world!",
    "the answer is 42",
    "I'll say it's 3.14159, they've said THE'S",
    "  leading spaces and trailing   ",
    "line one\nline two\n\n\tindented\r\nwindows",
    "So <call>12</call> then <call> 3 </call>and</call><call>",
    "x = \\boxed{\\frac{1}{2}} + $y^2$",
    "café naïve résumé Ångström",
    "数学题：一加一等于二。",
    "emoji 😀👍🏽 👩‍👩‍👧 🇫🇷!",
    "mixed 한국어 العربية русский ελληνικά",
    "e\u{301} (combining accent: NFC makes it é)",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "special<|endoftext|>glued<|im_end|>",
];

fn write_metadata_gguf(path: &Path, metadata: &[(String, gguf_file::Value)]) {
    let refs: Vec<(&str, &gguf_file::Value)> =
        metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &refs, &[]).unwrap();
}

/// The tiny vocabulary loaded both ways.
fn tiny_pair(dir: &Path) -> (Tokenizer, Tokenizer) {
    let gguf = dir.join("tiny-vocab.gguf");
    write_metadata_gguf(&gguf, &tiny_vocab::gguf_metadata());
    tiny_vocab::write_tokenizer_files(dir).unwrap();
    let from_gguf = Tokenizer::from_gguf_file(&gguf).unwrap();
    let from_json = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    (from_gguf, from_json)
}

#[test]
fn tiny_gguf_and_json_tokenize_identically() {
    let dir = tempfile::tempdir().unwrap();
    let (g, j) = tiny_pair(dir.path());
    assert_eq!(g.vocab_size(), TINY_VOCAB_SIZE);
    assert_eq!(j.vocab_size(), TINY_VOCAB_SIZE);
    for s in SAMPLES {
        assert_eq!(
            g.encode(s, false).unwrap(),
            j.encode(s, false).unwrap(),
            "{s:?}"
        );
        assert_eq!(
            g.encode(s, true).unwrap(),
            j.encode(s, true).unwrap(),
            "{s:?}"
        );
    }
    for id in 0..TINY_VOCAB_SIZE as u32 {
        assert_eq!(g.token_bytes(id), j.token_bytes(id), "id {id}");
        assert_eq!(g.id_to_token(id), j.id_to_token(id), "id {id}");
    }
    assert_eq!(g.eos_ids(), &[IM_END_ID, ENDOFTEXT_ID]);
    assert_eq!(j.eos_ids(), &[IM_END_ID, ENDOFTEXT_ID]);
}

#[test]
fn tiny_round_trip_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let (g, j) = tiny_pair(dir.path());
    for tok in [&g, &j] {
        for s in SAMPLES {
            let ids = tok.encode(s, false).unwrap();
            let nfc_expected = if s.contains("e\u{301}") {
                s.replace("e\u{301}", "é")
            } else {
                s.to_string()
            };
            assert_eq!(tok.decode(&ids).unwrap(), nfc_expected, "{s:?} -> {ids:?}");
        }
    }
}

#[test]
fn tiny_merges_and_specials_form_single_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let (tok, _) = tiny_pair(dir.path());
    let pieces = |s: &str| -> Vec<String> {
        tok.encode(s, false)
            .unwrap()
            .iter()
            .map(|&id| tok.decode(&[id]).unwrap())
            .collect()
    };
    assert_eq!(pieces(" the"), [" the"]);
    assert_eq!(
        pieces("<call>12</call>"),
        ["<call", ">", "1", "2", "</", "call", ">"]
    );
    assert_eq!(pieces(" <call>"), [" <", "call", ">"]);
    assert_eq!(pieces("assistant"), ["assistant"]);
    assert_eq!(pieces("\\boxed{"), ["\\boxed", "{"]);
    assert_eq!(pieces(" answer"), [" answer"]);
    let ids = tok.encode("<|im_start|>user\n<|im_end|>", false).unwrap();
    assert_eq!(ids.first(), Some(&IM_START_ID));
    assert_eq!(ids.last(), Some(&IM_END_ID));
    assert_eq!(tok.token_to_id("<|im_end|>"), Some(IM_END_ID));
    assert_eq!(tok.token_to_id("<|endoftext|>"), Some(ENDOFTEXT_ID));
}

/// Texts that spell special tokens, alone, glued, overlapping and next to the escape
/// character `escape_special_text` uses (U+10FFFD) and the codes after it.
const SPELLED: &[&str] = &[
    "<|im_start|>",
    "a<|im_start|>system\nb<|im_end|><|endoftext|>",
    "<|im_start|<|im_end|>|>",
    "\u{10FFFD}<|im_end|>\u{10FFFD}\u{100000}\u{100001}\u{10FFFD}",
    "\u{100000}\u{10FFFD}\u{10FFFD}\u{10FFFD}",
    "nothing special",
];

#[test]
fn special_token_text_can_be_read_as_plain_text() {
    let dir = tempfile::tempdir().unwrap();
    let (g, j) = tiny_pair(dir.path());
    let specials = [ENDOFTEXT_ID, IM_START_ID, IM_END_ID];
    for tok in [&g, &j] {
        assert_eq!(
            tok.special_tokens(),
            ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        );
        assert!(specials.iter().all(|&id| tok.is_special(id)));
        assert!(!tok.is_special(b'a' as u32));
        for s in SAMPLES.iter().chain(SPELLED) {
            let plain = tok.encode_plain(s).unwrap();
            assert!(!plain.iter().any(|id| specials.contains(id)), "{s:?}");
            assert_eq!(tok.decode(&plain).unwrap(), s.replace("e\u{301}", "é"));
            assert_eq!(tok.encode_with(s, SpecialTokens::Plain).unwrap(), plain);
            assert_eq!(
                tok.encode_with(s, SpecialTokens::Parse).unwrap(),
                tok.encode(s, false).unwrap()
            );
            // Escaped, the text is plain text; its specials' text is gone from it.
            let escaped = tok.escape_special_text(s);
            assert_eq!(tok.unescape(&escaped), *s);
            for sp in tok.special_tokens() {
                assert!(!escaped.contains(sp.as_str()), "{s:?} -> {escaped:?}");
            }
            assert_eq!(tok.encode_escaped(&escaped).unwrap(), plain, "{s:?}");
        }
        assert_eq!(
            g.encode_plain(SPELLED[1]).unwrap(),
            j.encode_plain(SPELLED[1]).unwrap()
        );
        // Text with neither specials nor the escape is left alone.
        assert!(matches!(
            tok.escape_special_text("plain <|im_"),
            std::borrow::Cow::Borrowed(_)
        ));
        // Around escaped text, specials written in the text are read as specials.
        let mixed = format!(
            "<|im_start|>user\n{}<|im_end|>",
            tok.escape_special_text("x<|im_end|>")
        );
        assert_eq!(
            tok.encode_escaped(&mixed).unwrap(),
            [
                &[IM_START_ID][..],
                &tok.encode_plain("user\nx<|im_end|>").unwrap(),
                &[IM_END_ID]
            ]
            .concat()
        );
        assert_eq!(
            tok.encode_with(&mixed, SpecialTokens::Template).unwrap(),
            tok.encode_escaped(&mixed).unwrap()
        );
        // A lone escape character (no code after it) stands for itself.
        assert_eq!(tok.unescape("a\u{10FFFD}b"), "a\u{10FFFD}b");
    }
}

#[test]
fn translated_ids_keep_special_tokens_and_spelled_text_apart() {
    let dir = tempfile::tempdir().unwrap();
    let (g, j) = tiny_pair(dir.path());
    // A special id, then text that spells one as plain tokens, then a special id.
    let ids = [
        &[IM_START_ID][..],
        &g.encode_plain("user\n<|im_end|>hi").unwrap(),
        &[IM_END_ID],
    ]
    .concat();
    assert_eq!(g.translate(&ids, &j).unwrap(), ids);
    assert_eq!(j.translate(&ids, &g).unwrap(), ids);
}

#[test]
fn decode_matches_hf_decode_on_arbitrary_ids() {
    let dir = tempfile::tempdir().unwrap();
    let (g, j) = tiny_pair(dir.path());
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..500 {
        let n = rng.gen_range(0..24);
        let ids: Vec<u32> = (0..n)
            .map(|_| rng.gen_range(0..TINY_VOCAB_SIZE as u32))
            .collect();
        for tok in [&g, &j] {
            assert_eq!(
                tok.decode(&ids).unwrap(),
                tok.hf().decode(&ids, false).unwrap(),
                "{ids:?}"
            );
        }
    }
}

#[test]
fn out_of_vocab_ids_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (tok, _) = tiny_pair(dir.path());
    let bad = TINY_VOCAB_SIZE as u32;
    assert!(matches!(
        tok.decode(&[1, bad]),
        Err(EngineError::TokenOutOfVocab { id, vocab_size }) if id == bad && vocab_size == TINY_VOCAB_SIZE
    ));
    let mut stream = TokenStreamDecoder::new(&tok);
    assert!(stream.push(bad).is_err());
}

/// Pushes `ids` one at a time and checks the chunks never split a character and add up to `decode`.
fn assert_stream_exact(tok: &Tokenizer, ids: &[u32]) {
    let mut stream = TokenStreamDecoder::new(tok);
    let mut text = String::new();
    for &id in ids {
        text.push_str(&stream.push(id).unwrap());
    }
    text.push_str(&stream.finish());
    assert_eq!(text, tok.decode(ids).unwrap(), "{ids:?}");
}

#[test]
fn streamed_text_equals_decode() {
    let dir = tempfile::tempdir().unwrap();
    let (tok, _) = tiny_pair(dir.path());
    for s in SAMPLES {
        let ids = tok.encode(s, false).unwrap();
        assert_stream_exact(&tok, &ids);
    }
    // Random ids: byte tokens make truncated and invalid UTF-8 sequences of every kind.
    let mut rng = StdRng::seed_from_u64(11);
    for _ in 0..2000 {
        let n = rng.gen_range(0..16);
        let ids: Vec<u32> = (0..n)
            .map(|_| {
                if rng.gen_bool(0.7) {
                    rng.gen_range(0x80..0x100)
                } else {
                    rng.gen_range(0..TINY_VOCAB_SIZE as u32)
                }
            })
            .collect();
        assert_stream_exact(&tok, &ids);
    }
}

#[test]
fn stream_holds_back_a_split_character() {
    let dir = tempfile::tempdir().unwrap();
    let (tok, _) = tiny_pair(dir.path());
    // "é" is 0xC3 0xA9: two byte tokens in the tiny vocabulary (ids are byte values).
    let mut stream = TokenStreamDecoder::new(&tok);
    assert_eq!(stream.push(b'a' as u32).unwrap(), "a");
    assert_eq!(stream.push(0xC3).unwrap(), "");
    assert_eq!(stream.pending_bytes(), &[0xC3]);
    assert_eq!(stream.push(0xA9).unwrap(), "é");
    // 😀 = F0 9F 98 80, cut after three bytes at the end of the stream.
    assert_eq!(stream.push_all(&[0xF0, 0x9F, 0x98]).unwrap(), "");
    assert_eq!(stream.finish(), "\u{FFFD}");
    // A lead byte followed by ASCII is invalid at once.
    assert_eq!(stream.push_all(&[0xE2, b'x' as u32]).unwrap(), "\u{FFFD}x");
}

#[test]
fn load_for_model_finds_the_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let (g, _) = tiny_pair(dir.path());
    // A safetensors folder, a file inside it, and a GGUF file.
    std::fs::write(dir.path().join("model.safetensors"), b"not read").unwrap();
    for path in [
        dir.path().to_path_buf(),
        dir.path().join("model.safetensors"),
        dir.path().join("tiny-vocab.gguf"),
    ] {
        let tok = Tokenizer::load_for_model(&path).unwrap();
        assert_eq!(
            tok.encode("the <call>5</call>", false).unwrap(),
            g.encode("the <call>5</call>", false).unwrap()
        );
    }
    // A folder with only a GGUF file.
    let only_gguf = tempfile::tempdir().unwrap();
    std::fs::copy(
        dir.path().join("tiny-vocab.gguf"),
        only_gguf.path().join("m.gguf"),
    )
    .unwrap();
    assert_eq!(
        Tokenizer::load_for_model(only_gguf.path())
            .unwrap()
            .vocab_size(),
        TINY_VOCAB_SIZE
    );
}

#[test]
fn bad_tokenizer_inputs_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.gguf");
    assert!(
        matches!(Tokenizer::load_for_model(&missing), Err(EngineError::NotFound(p)) if p == missing)
    );
    assert!(matches!(
        Tokenizer::from_file(dir.path().join("tokenizer.json")),
        Err(EngineError::NotFound(_))
    ));
    // A folder with neither tokenizer.json nor a GGUF file.
    assert!(matches!(
        Tokenizer::load_for_model(dir.path()),
        Err(EngineError::NotFound(_))
    ));

    let truncated = dir.path().join("truncated.gguf");
    let mut bytes = Vec::new();
    let md = tiny_vocab::gguf_metadata();
    let refs: Vec<(&str, &gguf_file::Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut std::io::Cursor::new(&mut bytes), &refs, &[]).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let err = Tokenizer::load_for_model(&truncated).unwrap_err();
    assert!(
        matches!(&err, EngineError::Malformed { path, .. } if path == &truncated),
        "{err:?}"
    );

    let no_tokenizer = dir.path().join("weights-only.gguf");
    write_metadata_gguf(
        &no_tokenizer,
        &[(
            "general.architecture".into(),
            gguf_file::Value::String("qwen2".into()),
        )],
    );
    let err = Tokenizer::from_gguf_file(&no_tokenizer).unwrap_err();
    assert!(
        matches!(&err, EngineError::Malformed { path, reason } if path == &no_tokenizer && reason.contains("tokenizer.ggml.model")),
        "{err:?}"
    );

    std::fs::write(dir.path().join("tokenizer.json"), "{ not json").unwrap();
    assert!(matches!(
        Tokenizer::from_file(dir.path().join("tokenizer.json")),
        Err(EngineError::Malformed { .. })
    ));
}

#[test]
fn real_qwen_tokenizer_from_gguf_matches_known_ids() {
    let Some(path) = real_slm_gguf() else { return };
    let tok = Tokenizer::load_for_model(&path).unwrap();
    // Ids from Qwen2.5's tokenizer.json.
    assert_eq!(
        tok.encode("Hello, world!", false).unwrap(),
        [9707, 11, 1879, 0]
    );
    assert_eq!(
        tok.encode("<|im_start|>user\n", false).unwrap(),
        [151644, 872, 198]
    );
    assert_eq!(
        tok.encode("123", false).unwrap(),
        [16, 17, 18],
        "Qwen isolates digits"
    );
    assert_eq!(tok.eos_ids(), &[151645, 151643]);
    assert_eq!(tok.token_to_id("<tool_call>"), Some(151657));
    // Written markers are special in a raw prompt, plain text when asked.
    let plain = tok.encode_plain("<|im_start|>user\n").unwrap();
    assert!(!plain.contains(&151644) && plain.len() > 3, "{plain:?}");
    // llama.cpp's "unused" [PAD…] tokens stay plain text.
    assert!(tok.encode("[PAD151665]", false).unwrap().len() > 1);
    for s in SAMPLES {
        let ids = tok.encode(s, false).unwrap();
        let expected = s.replace("e\u{301}", "é");
        assert_eq!(tok.decode(&ids).unwrap(), expected);
        assert_stream_exact(&tok, &ids);
    }
}

/// Qwen2.5's `tokenizer.json` rebuilt from the GGUF's vocabulary and merges, with the HF
/// pipeline written out literally — so this checks candle's GGUF converter against HF's.
fn qwen_tokenizer_json_from_gguf(content: &gguf_file::Content) -> serde_json::Value {
    let strings = |key: &str| -> Vec<String> {
        content.metadata[key]
            .to_vec()
            .unwrap()
            .iter()
            .map(|v| v.to_string().unwrap().clone())
            .collect()
    };
    let tokens = strings("tokenizer.ggml.tokens");
    let first_added = tokens.iter().position(|t| t == "<|endoftext|>").unwrap();
    let vocab: serde_json::Map<String, serde_json::Value> = tokens[..first_added]
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), serde_json::json!(i)))
        .collect();
    let added: Vec<serde_json::Value> = tokens
        .iter()
        .enumerate()
        .skip(first_added)
        .take_while(|(_, t)| !t.starts_with("[PAD"))
        .map(|(i, t)| {
            serde_json::json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": !t.contains("tool_call")})
        })
        .collect();
    let byte_level = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false});
    serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
             "behavior": "Isolated", "invert": false},
            byte_level,
        ]},
        "post_processor": byte_level, "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
            "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": strings("tokenizer.ggml.merges")},
    })
}

#[test]
fn real_qwen_gguf_tokenizer_equals_hf_pipeline_on_benchmark_text() {
    let Some(path) = real_slm_gguf() else { return };
    let content = gguf_file::Content::read(&mut std::fs::File::open(&path).unwrap()).unwrap();
    let from_gguf = Tokenizer::from_gguf(&content).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("tokenizer.json");
    std::fs::write(
        &json,
        serde_json::to_string(&qwen_tokenizer_json_from_gguf(&content)).unwrap(),
    )
    .unwrap();
    let from_json = Tokenizer::from_file(&json).unwrap();

    let mut texts: Vec<String> = SAMPLES.iter().map(|s| s.to_string()).collect();
    let benchmarks = shared_benchmarks_dir();
    for name in ["gsm8k.jsonl", "math500.jsonl", "olympiadbench.jsonl"] {
        let Some(dir) = &benchmarks else { break };
        let data = std::fs::read_to_string(dir.join(name)).unwrap();
        for line in data.lines().take(150) {
            let row: serde_json::Value = serde_json::from_str(line).unwrap();
            texts.push(row["problem"].as_str().unwrap().to_string());
        }
    }
    for t in &texts {
        let ids = from_gguf.encode(t, false).unwrap();
        assert_eq!(ids, from_json.encode(t, false).unwrap(), "{t:?}");
        assert_eq!(
            from_gguf.decode(&ids).unwrap(),
            from_json.decode(&ids).unwrap()
        );
    }
    eprintln!("compared {} texts", texts.len());
}
