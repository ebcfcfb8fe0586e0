//! `generate`: the tiny model with the tiny vocabulary (seeded sampling is reproducible, greedy
//! equals a hand-written argmax loop, stop strings spanning tokens), and a scripted engine for
//! the endings a random model cannot be made to hit (EOS, context length, engine errors).

use std::collections::HashSet;
use std::sync::Mutex;

use relay_engine::generate::{generate, FinishReason, GenerateOutput, GenerateParams};
use relay_engine::sampling::{argmax, SamplingParams};
use relay_engine::tiny::{write_gguf, TinyConfig};
use relay_engine::tiny_vocab::{self, IM_END_ID, TINY_VOCAB_SIZE};
use relay_engine::tokenizer::Tokenizer;
use relay_engine::{CandleEngine, Engine, EngineError, LoadOptions, ModelInfo, SeqId};

/// A tiny Qwen2 model written with the tiny vocabulary, loaded with its tokenizer.
fn tiny() -> (CandleEngine, Tokenizer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    // Untied output weights: with tied random embeddings the model only repeats its last token.
    let cfg = TinyConfig {
        vocab_size: TINY_VOCAB_SIZE,
        eos_token_id: IM_END_ID,
        tie_embeddings: false,
        ..TinyConfig::qwen2()
    };
    write_gguf(&path, &cfg, &tiny_vocab::gguf_metadata()).unwrap();
    let engine = CandleEngine::load(&path, LoadOptions::default()).unwrap();
    let tokenizer = Tokenizer::load_for_model(&path).unwrap();
    (engine, tokenizer, dir)
}

fn prompt(tok: &Tokenizer) -> Vec<u32> {
    tok.encode(
        "<|im_start|>user\nWhat is the answer? <call>4</call><|im_end|>\n<|im_start|>assistant\n",
        false,
    )
    .unwrap()
}

/// Runs `generate` and checks what every run must satisfy: the streamed chunks add up to the
/// text, and no sequence is left behind.
fn run(
    engine: &CandleEngine,
    tok: &Tokenizer,
    prompt: &[u32],
    params: &GenerateParams,
) -> GenerateOutput {
    let mut streamed = String::new();
    let out = generate(engine, tok, prompt, params, |chunk| {
        assert!(!chunk.is_empty());
        streamed.push_str(chunk);
    })
    .unwrap();
    assert_eq!(streamed, out.text);
    assert_eq!(engine.num_sequences(), 0, "generate must free its sequence");
    out
}

fn sampled(seed: u64, max_tokens: usize) -> GenerateParams {
    GenerateParams {
        max_tokens,
        sampling: SamplingParams {
            temperature: 1.0,
            top_p: 0.95,
            top_k: 0,
            seed,
        },
        stop: vec![],
    }
}

#[test]
fn same_seed_same_output() {
    let (engine, tok, _dir) = tiny();
    let p = prompt(&tok);
    let a = run(&engine, &tok, &p, &sampled(5, 24));
    let b = run(&engine, &tok, &p, &sampled(5, 24));
    assert_eq!(a, b);
    let others: HashSet<Vec<u32>> = (6..10)
        .map(|seed| run(&engine, &tok, &p, &sampled(seed, 24)).tokens)
        .collect();
    assert!(
        others.iter().any(|t| t != &a.tokens),
        "other seeds should give other samples"
    );
}

#[test]
fn greedy_generate_equals_manual_argmax_loop() {
    let (engine, tok, _dir) = tiny();
    let p = prompt(&tok);
    let params = GenerateParams {
        max_tokens: 32,
        ..GenerateParams::default()
    };
    let out = run(&engine, &tok, &p, &params);

    let seq = engine.create_sequence().unwrap();
    let mut logits = engine.prefill(seq, &p).unwrap();
    let mut manual = Vec::new();
    loop {
        let t = argmax(&logits) as u32;
        manual.push(t);
        if tok.is_eos(t) || manual.len() == 32 {
            break;
        }
        logits = engine.step(&[(seq, t)]).unwrap().remove(0);
    }
    engine.free(seq).unwrap();

    assert_eq!(out.tokens, manual);
    let expected_reason = if tok.is_eos(*manual.last().unwrap()) {
        FinishReason::Eos
    } else {
        FinishReason::Length
    };
    assert_eq!(out.finish_reason, expected_reason);
    let text_ids: Vec<u32> = manual.iter().copied().filter(|&t| !tok.is_eos(t)).collect();
    assert_eq!(out.text, tok.decode(&text_ids).unwrap());
}

#[test]
fn stop_string_spanning_two_tokens() {
    let (engine, tok, _dir) = tiny();
    let p = prompt(&tok);
    let free_run = run(
        &engine,
        &tok,
        &p,
        &GenerateParams {
            max_tokens: 48,
            ..GenerateParams::default()
        },
    );

    // Text after each token; a stop string made of the last char before a token boundary and
    // the first char after it, whose first occurrence is exactly there.
    let mut ends = Vec::new();
    for i in 1..=free_run.tokens.len() {
        ends.push(tok.decode(&free_run.tokens[..i]).unwrap());
    }
    let full = ends.last().unwrap().clone();
    let (boundary, stop) = (0..ends.len() - 1)
        .find_map(|i| {
            let before = &ends[i];
            if !full.starts_with(before.as_str())
                || before.is_empty()
                || !full.is_char_boundary(before.len())
            {
                return None;
            }
            let last = before.chars().last()?;
            let next = full[before.len()..].chars().next()?;
            if last == '\u{FFFD}' || next == '\u{FFFD}' {
                return None;
            }
            let stop = format!("{last}{next}");
            let at = before.len() - last.len_utf8();
            (full.find(&stop) == Some(at)).then_some((i, stop))
        })
        .expect("some token boundary gives a fresh two-character stop string");

    let params = GenerateParams {
        max_tokens: 48,
        stop: vec!["never there".into(), stop.clone()],
        ..GenerateParams::default()
    };
    let out = run(&engine, &tok, &p, &params);
    assert_eq!(out.finish_reason, FinishReason::Stop);
    let at = full.find(&stop).unwrap();
    assert_eq!(out.text, full[..at], "text stops right before {stop:?}");
    // Generation ended with the token that completed the stop string: the one after the boundary.
    let completing = (boundary + 1..ends.len())
        .find(|&i| ends[i].len() >= at + stop.len())
        .unwrap();
    assert_eq!(out.tokens, free_run.tokens[..=completing]);
}

#[test]
fn max_tokens_zero_and_empty_prompt() {
    let (engine, tok, _dir) = tiny();
    let out = run(
        &engine,
        &tok,
        &prompt(&tok),
        &GenerateParams {
            max_tokens: 0,
            ..GenerateParams::default()
        },
    );
    assert_eq!(
        (out.tokens.len(), out.text.as_str(), out.finish_reason),
        (0, "", FinishReason::Length)
    );
    let err = generate(&engine, &tok, &[], &GenerateParams::default(), |_| {}).unwrap_err();
    assert!(matches!(err, EngineError::InvalidInput(_)));
}

#[test]
fn errors_free_the_sequence() {
    let (engine, tok, _dir) = tiny();
    let bad = [1, TINY_VOCAB_SIZE as u32 + 5];
    let err = generate(&engine, &tok, &bad, &GenerateParams::default(), |_| {}).unwrap_err();
    assert!(
        matches!(err, EngineError::TokenOutOfVocab { .. }),
        "{err:?}"
    );
    assert_eq!(engine.num_sequences(), 0);
}

/// An engine that "predicts" a fixed script of tokens (one-hot logits), for exact endings.
struct ScriptedEngine {
    info: ModelInfo,
    script: Vec<u32>,
    fail_at_step: Option<usize>,
    state: Mutex<ScriptState>,
}

#[derive(Default)]
struct ScriptState {
    live: HashSet<u64>,
    next: u64,
    len: usize,
    steps: usize,
}

impl ScriptedEngine {
    fn new(script: &[u32], context_length: usize) -> Self {
        Self {
            info: ModelInfo {
                name: "scripted".into(),
                architecture: "qwen2".into(),
                vocab_size: TINY_VOCAB_SIZE,
                context_length,
                eos_token_ids: vec![IM_END_ID],
            },
            script: script.to_vec(),
            fail_at_step: None,
            state: Mutex::default(),
        }
    }

    fn logits(&self, generated: usize) -> Vec<f32> {
        let mut l = vec![0.0; TINY_VOCAB_SIZE];
        l[self.script[generated.min(self.script.len() - 1)] as usize] = 10.0;
        l
    }
}

impl Engine for ScriptedEngine {
    fn info(&self) -> &ModelInfo {
        &self.info
    }
    fn create_sequence(&self) -> relay_engine::Result<SeqId> {
        let mut s = self.state.lock().unwrap();
        s.next += 1;
        s.steps = 0;
        let id = s.next;
        s.live.insert(id);
        Ok(SeqId(id))
    }
    fn prefill(&self, _seq: SeqId, tokens: &[u32]) -> relay_engine::Result<Vec<f32>> {
        let mut s = self.state.lock().unwrap();
        if tokens.len() > self.info.context_length {
            return Err(EngineError::ContextOverflow {
                len: tokens.len(),
                context_length: self.info.context_length,
            });
        }
        s.len = tokens.len();
        Ok(self.logits(0))
    }
    fn step(&self, batch: &[(SeqId, u32)]) -> relay_engine::Result<Vec<Vec<f32>>> {
        let mut s = self.state.lock().unwrap();
        s.steps += 1;
        if Some(s.steps) == self.fail_at_step {
            return Err(EngineError::InvalidInput("scripted failure".into()));
        }
        assert!(
            s.len < self.info.context_length,
            "generate stepped past the context length"
        );
        s.len += 1;
        Ok(batch.iter().map(|_| self.logits(s.steps)).collect())
    }
    fn seq_len(&self, _seq: SeqId) -> relay_engine::Result<usize> {
        Ok(self.state.lock().unwrap().len)
    }
    fn truncate(&self, _seq: SeqId, _len: usize) -> relay_engine::Result<()> {
        unimplemented!()
    }
    fn fork(&self, _seq: SeqId) -> relay_engine::Result<SeqId> {
        unimplemented!()
    }
    fn free(&self, seq: SeqId) -> relay_engine::Result<()> {
        match self.state.lock().unwrap().live.remove(&seq.0) {
            true => Ok(()),
            false => Err(EngineError::UnknownSequence(seq)),
        }
    }
    fn score(&self, _tokens: &[u32]) -> relay_engine::Result<Vec<f32>> {
        unimplemented!()
    }
}

fn tiny_tokenizer() -> (Tokenizer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    tiny_vocab::write_tokenizer_files(dir.path()).unwrap();
    (
        Tokenizer::from_file(dir.path().join("tokenizer.json")).unwrap(),
        dir,
    )
}

fn scripted_run(
    engine: &ScriptedEngine,
    tok: &Tokenizer,
    params: &GenerateParams,
) -> (GenerateOutput, Vec<String>) {
    let mut chunks = Vec::new();
    let out = generate(engine, tok, &[1, 2, 3], params, |c| {
        chunks.push(c.to_string())
    })
    .unwrap();
    assert!(engine.state.lock().unwrap().live.is_empty());
    (out, chunks)
}

#[test]
fn eos_ends_generation_and_is_not_text() {
    let (tok, _dir) = tiny_tokenizer();
    let mut script = tok.encode("the answer", false).unwrap();
    script.push(IM_END_ID);
    script.extend(tok.encode("never", false).unwrap());
    let engine = ScriptedEngine::new(&script, 64);
    let (out, chunks) = scripted_run(
        &engine,
        &tok,
        &GenerateParams {
            max_tokens: 50,
            ..Default::default()
        },
    );
    assert_eq!(out.finish_reason, FinishReason::Eos);
    assert_eq!(out.text, "the answer");
    assert_eq!(chunks.concat(), "the answer");
    assert_eq!(
        out.tokens,
        script[..script.iter().position(|&t| t == IM_END_ID).unwrap() + 1]
    );
}

#[test]
fn stop_inside_one_token_and_text_after_it_withheld() {
    let (tok, _dir) = tiny_tokenizer();
    // " the" is one token in the tiny vocabulary: the stop string "th" lies inside it.
    let script = tok.encode("go the rest", false).unwrap();
    let engine = ScriptedEngine::new(&script, 64);
    let params = GenerateParams {
        max_tokens: 50,
        stop: vec!["th".into()],
        ..Default::default()
    };
    let (out, chunks) = scripted_run(&engine, &tok, &params);
    assert_eq!(out.finish_reason, FinishReason::Stop);
    assert_eq!(out.text, "go ");
    assert_eq!(chunks.concat(), "go ");
    assert_eq!(out.tokens, tok.encode("go the", false).unwrap());
}

#[test]
fn split_utf8_character_streams_whole_and_completes_a_stop() {
    let (tok, _dir) = tiny_tokenizer();
    // "é!" as three byte tokens (0xC3, 0xA9, '!'): the stop "é" completes on the second.
    let script = [0xC3, 0xA9, b'!' as u32, b'?' as u32];
    let engine = ScriptedEngine::new(&script, 64);
    let (out, chunks) = scripted_run(
        &engine,
        &tok,
        &GenerateParams {
            max_tokens: 4,
            ..Default::default()
        },
    );
    assert_eq!(
        (out.text.as_str(), out.finish_reason),
        ("é!?", FinishReason::Length)
    );
    assert!(chunks.iter().all(|c| !c.contains('\u{FFFD}')), "{chunks:?}");
    let params = GenerateParams {
        max_tokens: 4,
        stop: vec!["é".into()],
        ..Default::default()
    };
    let (out, chunks) = scripted_run(&engine, &tok, &params);
    assert_eq!(
        (out.text.as_str(), out.tokens.len(), out.finish_reason),
        ("", 2, FinishReason::Stop)
    );
    assert!(chunks.is_empty());
}

#[test]
fn context_length_ends_generation_with_length() {
    let (tok, _dir) = tiny_tokenizer();
    let script = tok.encode("abcdefghij", false).unwrap();
    // Prompt of 3 in a context of 6: tokens 4..=6 are stepped in, the 4th generated can't be.
    let engine = ScriptedEngine::new(&script, 6);
    let (out, _) = scripted_run(
        &engine,
        &tok,
        &GenerateParams {
            max_tokens: 50,
            ..Default::default()
        },
    );
    assert_eq!(out.finish_reason, FinishReason::Length);
    assert_eq!(out.tokens.len(), 4);
    let too_long =
        generate(&engine, &tok, &[1; 7], &GenerateParams::default(), |_| {}).unwrap_err();
    assert!(matches!(too_long, EngineError::ContextOverflow { .. }));
    assert!(engine.state.lock().unwrap().live.is_empty());
}

#[test]
fn engine_error_mid_generation_frees_the_sequence() {
    let (tok, _dir) = tiny_tokenizer();
    let mut engine = ScriptedEngine::new(&tok.encode("abcdefgh", false).unwrap(), 64);
    engine.fail_at_step = Some(3);
    let err = generate(&engine, &tok, &[1, 2], &GenerateParams::default(), |_| {}).unwrap_err();
    assert!(matches!(err, EngineError::InvalidInput(m) if m == "scripted failure"));
    assert!(engine.state.lock().unwrap().live.is_empty());
}
