//! Tiny models with the tiny vocabulary and the real Qwen2.5 chat template, in both file forms.
#![allow(dead_code)]

use relay_engine::candle::Arch;
use relay_engine::tiny::{write_gguf, write_safetensors, TinyConfig};
use relay_engine::tiny_vocab;
use std::path::{Path, PathBuf};

pub fn tiny_config(arch: Arch) -> TinyConfig {
    let base = match arch {
        Arch::Qwen2 => TinyConfig::qwen2(),
        Arch::Qwen3 => TinyConfig::qwen3(),
    };
    TinyConfig {
        vocab_size: tiny_vocab::TINY_VOCAB_SIZE,
        eos_token_id: tiny_vocab::IM_END_ID,
        context_length: 512,
        ..base
    }
}

/// A tiny GGUF (F32 weights) with tokenizer metadata and chat template.
pub fn tiny_gguf(dir: &Path, arch: Arch) -> PathBuf {
    let p = dir.join(format!("tiny-{}.gguf", arch.name()));
    write_gguf(&p, &tiny_config(arch), &tiny_vocab::gguf_metadata()).unwrap();
    p
}

/// The same weights as an HF folder with tokenizer files.
pub fn tiny_hf(dir: &Path, arch: Arch) -> PathBuf {
    let p = dir.join(format!("tiny-{}-hf", arch.name()));
    write_safetensors(&p, &tiny_config(arch)).unwrap();
    tiny_vocab::write_tokenizer_files(&p).unwrap();
    p
}

/// Deterministic pseudo-random token ids below the specials.
pub fn ids(n: usize, seed: u64) -> Vec<u32> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 33) % tiny_vocab::ENDOFTEXT_ID as u64) as u32
        })
        .collect()
}
