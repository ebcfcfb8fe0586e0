//! The vocabulary of the project's tiny test models: a real byte-level BPE (GPT-2 byte table,
//! Qwen2 pre-tokenizer) small enough for a random-weight model, with merges so that common
//! words, `<call`/`</`/`call` and chat-format words become multi-character tokens — tests of
//! the call-tag parser then see tags split over tokens the way real models split them.
//!
//! It is written two ways — GGUF metadata ([`gguf_metadata`]) and HF files
//! ([`write_tokenizer_files`]) — that load to the same tokenizer, as the real models' do.
//! Note that Qwen's pre-tokenizer isolates every digit, so no merge can join digits.

use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use serde_json::json;

use crate::chat::QWEN2_5_CHAT_TEMPLATE;
use crate::error::Result;
use crate::tokenizer::{byte_level_bytes, bytes_to_byte_level};

/// Merges in priority order, written as byte-level token strings (`Ġ` is a space, `Ċ` a
/// newline). Each joins two tokens that exist by then; the result gets the next id after the
/// 256 byte tokens.
const MERGES: [(&str, &str); 61] = [
    ("c", "a"),
    ("l", "l"),
    ("ca", "ll"),
    ("Ġ", "t"),
    ("Ġ", "a"),
    ("h", "e"),
    ("i", "n"),
    ("r", "e"),
    ("o", "n"),
    ("Ġt", "he"),
    ("e", "r"),
    ("Ġ", "s"),
    ("a", "t"),
    ("Ġ", "w"),
    ("Ġ", "o"),
    ("e", "n"),
    ("Ġ", "c"),
    ("i", "s"),
    ("a", "n"),
    ("o", "r"),
    ("e", "s"),
    ("Ġ", "p"),
    ("in", "g"),
    ("Ġ", "i"),
    ("a", "l"),
    ("Ġo", "f"),
    ("Ġ", "b"),
    ("Ġa", "n"),
    ("Ġan", "d"),
    ("Ġi", "s"),
    ("Ġt", "o"),
    ("Ġ", "Ġ"),
    ("ĠĠ", "ĠĠ"),
    ("Ċ", "Ċ"),
    ("<", "call"),
    ("<", "/"),
    ("Ġ", "<"),
    ("Ġ", "="),
    ("Ġ", "+"),
    ("Ġ", "$"),
    ("b", "o"),
    ("bo", "x"),
    ("e", "d"),
    ("box", "ed"),
    ("\\", "boxed"),
    ("u", "s"),
    ("us", "er"),
    ("a", "s"),
    ("as", "s"),
    ("is", "t"),
    ("ass", "ist"),
    ("assist", "an"),
    ("assistan", "t"),
    ("s", "y"),
    ("s", "t"),
    ("e", "m"),
    ("sy", "st"),
    ("syst", "em"),
    ("Ġan", "s"),
    ("w", "er"),
    ("Ġans", "wer"),
];

/// `<|endoftext|>`: BOS and padding, like Qwen.
pub const ENDOFTEXT_ID: u32 = 256 + MERGES.len() as u32;
pub const IM_START_ID: u32 = ENDOFTEXT_ID + 1;
/// `<|im_end|>`: the EOS of the tiny models (as of Qwen instruct models).
pub const IM_END_ID: u32 = ENDOFTEXT_ID + 2;
/// Ids 0..TINY_VOCAB_SIZE are all used: bytes, merges, then the three specials.
pub const TINY_VOCAB_SIZE: usize = IM_END_ID as usize + 1;

const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// llama.cpp token types.
const TOKEN_TYPE_NORMAL: i32 = 1;
const TOKEN_TYPE_CONTROL: i32 = 3;

/// Qwen2.5's `tokenizer.json` split pattern (candle's GGUF converter uses its own copy of the
/// same regex for `pre = "qwen2"`; writing the original here lets the tests compare the two).
const QWEN2_SPLIT_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Every token string, by id.
pub fn tokens() -> Vec<String> {
    let mut tokens: Vec<String> = (0..=255u8).map(|b| bytes_to_byte_level(&[b])).collect();
    tokens.extend(MERGES.iter().map(|(a, b)| format!("{a}{b}")));
    tokens.extend(SPECIALS.iter().map(|s| s.to_string()));
    debug_assert_eq!(tokens.len(), TINY_VOCAB_SIZE);
    tokens
}

/// Merges as `"left right"` lines, in priority order.
pub fn merges() -> Vec<String> {
    MERGES.iter().map(|(a, b)| format!("{a} {b}")).collect()
}

/// The `tokenizer.*` GGUF metadata of the tiny vocabulary (and the real Qwen2.5 chat
/// template), for `tiny::write_gguf`'s extra metadata.
pub fn gguf_metadata() -> Vec<(String, Value)> {
    let tokens = tokens();
    let types = (0..TINY_VOCAB_SIZE)
        .map(|id| {
            Value::I32(if id >= ENDOFTEXT_ID as usize {
                TOKEN_TYPE_CONTROL
            } else {
                TOKEN_TYPE_NORMAL
            })
        })
        .collect();
    let strings = |xs: Vec<String>| Value::Array(xs.into_iter().map(Value::String).collect());
    vec![
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("qwen2".into())),
        ("tokenizer.ggml.tokens".into(), strings(tokens)),
        ("tokenizer.ggml.token_type".into(), Value::Array(types)),
        ("tokenizer.ggml.merges".into(), strings(merges())),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(IM_END_ID)),
        (
            "tokenizer.ggml.padding_token_id".into(),
            Value::U32(ENDOFTEXT_ID),
        ),
        (
            "tokenizer.ggml.bos_token_id".into(),
            Value::U32(ENDOFTEXT_ID),
        ),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
        (
            "tokenizer.chat_template".into(),
            Value::String(QWEN2_5_CHAT_TEMPLATE.into()),
        ),
    ]
}

/// The HF `tokenizer.json` of the tiny vocabulary, laid out like Qwen2.5's.
pub fn tokenizer_json() -> serde_json::Value {
    let tokens = tokens();
    let vocab: serde_json::Map<String, serde_json::Value> = tokens[..ENDOFTEXT_ID as usize]
        .iter()
        .enumerate()
        .map(|(id, t)| (t.clone(), json!(id)))
        .collect();
    let added: Vec<serde_json::Value> = SPECIALS
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({
                "id": ENDOFTEXT_ID as usize + i, "content": s, "single_word": false,
                "lstrip": false, "rstrip": false, "normalized": false, "special": true
            })
        })
        .collect();
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false});
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT_REGEX}, "behavior": "Isolated", "invert": false},
            byte_level,
        ]},
        "post_processor": byte_level,
        "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
            "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges(),
        },
    })
}

/// The HF `tokenizer_config.json`: special tokens and the chat template.
pub fn tokenizer_config_json() -> serde_json::Value {
    let added: serde_json::Map<String, serde_json::Value> = SPECIALS
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let entry = json!({"content": s, "lstrip": false, "normalized": false, "rstrip": false,
                               "single_word": false, "special": true});
            ((ENDOFTEXT_ID as usize + i).to_string(), entry)
        })
        .collect();
    json!({
        "add_bos_token": false,
        "add_prefix_space": false,
        "added_tokens_decoder": added,
        "bos_token": null,
        "chat_template": QWEN2_5_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": false,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 32768,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": false,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": null,
    })
}

/// Writes `tokenizer.json` and `tokenizer_config.json` into `dir` (created if needed).
pub fn write_tokenizer_files(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).expect("json");
    std::fs::write(dir.join("tokenizer.json"), pretty(&tokenizer_json()))?;
    std::fs::write(
        dir.join("tokenizer_config.json"),
        pretty(&tokenizer_config_json()),
    )?;
    Ok(())
}

/// Bytes of a token (tests and debugging).
pub fn token_bytes(id: u32) -> Option<Vec<u8>> {
    tokens().get(id as usize).map(|t| byte_level_bytes(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_build_on_existing_tokens_and_are_unique() {
        let tokens = tokens();
        assert_eq!(tokens.len(), TINY_VOCAB_SIZE);
        assert!(TINY_VOCAB_SIZE <= 512);
        let mut seen = std::collections::HashSet::new();
        for t in &tokens {
            assert!(seen.insert(t.clone()), "duplicate token {t:?}");
        }
        for (i, (a, b)) in MERGES.iter().enumerate() {
            let known = &tokens[..256 + i];
            assert!(
                known.iter().any(|t| t == a),
                "merge {i}: {a:?} not yet a token"
            );
            assert!(
                known.iter().any(|t| t == b),
                "merge {i}: {b:?} not yet a token"
            );
        }
        assert_eq!(tokens[IM_END_ID as usize], "<|im_end|>");
    }
}
