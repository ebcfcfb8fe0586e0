//! Plain generation with one engine: prefill a prompt, sample until EOS, a stop string or the
//! token budget, and stream the text as it is decided. This is what `relayllm generate` and the
//! single-model baselines run; the relay has its own loop over two engines.

use crate::engine::{Engine, SeqId};
use crate::error::{EngineError, Result};
use crate::sampling::{Sampler, SamplingParams};
use crate::stream::TokenStreamDecoder;
use crate::tokenizer::Tokenizer;

/// What to generate.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GenerateParams {
    /// Most tokens to generate (the EOS token, when sampled, counts).
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation ends when the text contains one of these; the text from the stop string on is
    /// not returned. Empty strings are ignored.
    pub stop: Vec<String>,
}

impl Default for GenerateParams {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model produced an end-of-sequence token.
    Eos,
    /// `max_tokens` reached, or the sequence reached the model's context length.
    Length,
    /// A stop string appeared in the text.
    Stop,
}

impl FinishReason {
    /// OpenAI's `finish_reason` for it.
    pub fn openai(self) -> &'static str {
        match self {
            Self::Eos | Self::Stop => "stop",
            Self::Length => "length",
        }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GenerateOutput {
    /// Every sampled token id, in order: the EOS token included (it was generated), and the
    /// tokens that formed a stop string included.
    pub tokens: Vec<u32>,
    /// The streamed text, concatenated: decoded tokens without the EOS token, cut before a stop
    /// string.
    pub text: String,
    pub finish_reason: FinishReason,
}

/// Generates a continuation of `prompt_ids` with `engine`, calling `on_text` with each newly
/// decided piece of text (never half a character, never text a stop string may still claim).
/// The sequence it creates is freed before returning, on errors too.
pub fn generate(
    engine: &dyn Engine,
    tokenizer: &Tokenizer,
    prompt_ids: &[u32],
    params: &GenerateParams,
    mut on_text: impl FnMut(&str),
) -> Result<GenerateOutput> {
    if prompt_ids.is_empty() {
        return Err(EngineError::InvalidInput(
            "generate needs a non-empty prompt".into(),
        ));
    }
    let seq = SequenceGuard {
        engine,
        seq: Some(engine.create_sequence()?),
    };
    let out = run(
        engine,
        seq.id(),
        tokenizer,
        prompt_ids,
        params,
        &mut on_text,
    )?;
    seq.free()?;
    Ok(out)
}

fn run(
    engine: &dyn Engine,
    seq: SeqId,
    tokenizer: &Tokenizer,
    prompt_ids: &[u32],
    params: &GenerateParams,
    on_text: &mut dyn FnMut(&str),
) -> Result<GenerateOutput> {
    let info = engine.info();
    let is_eos = |t: u32| info.eos_token_ids.contains(&t) || tokenizer.is_eos(t);
    let mut sampler = Sampler::new(params.sampling.clone());
    let mut decoder = TokenStreamDecoder::new(tokenizer);
    let mut text = StopScan::new(&params.stop);
    let mut tokens = Vec::new();

    if params.max_tokens == 0 {
        return Ok(GenerateOutput {
            tokens,
            text: String::new(),
            finish_reason: FinishReason::Length,
        });
    }
    let mut logits = engine.prefill(seq, prompt_ids)?;
    let mut cached = prompt_ids.len();
    let finish_reason = loop {
        let token = sampler.sample(&logits);
        tokens.push(token);
        if is_eos(token) {
            break FinishReason::Eos;
        }
        let piece = decoder.push(token)?;
        if text.push(&piece, on_text) {
            break FinishReason::Stop;
        }
        if tokens.len() >= params.max_tokens || cached >= info.context_length {
            break FinishReason::Length;
        }
        logits = engine.step(&[(seq, token)])?.pop().ok_or_else(|| {
            EngineError::Internal("engine returned no logits for a one-sequence step".into())
        })?;
        cached += 1;
    };
    let finish_reason = match finish_reason {
        FinishReason::Stop => FinishReason::Stop,
        other => {
            // An unfinished character at the very end becomes U+FFFD, as `decode` would print it;
            // it might still complete a stop string.
            let stopped = text.push(&decoder.finish(), on_text);
            text.flush(on_text);
            if stopped {
                FinishReason::Stop
            } else {
                other
            }
        }
    };
    Ok(GenerateOutput {
        tokens,
        text: text.into_text(),
        finish_reason,
    })
}

/// Frees the sequence when dropped (errors and panics included); [`SequenceGuard::free`] frees it
/// on the success path and reports a failure.
struct SequenceGuard<'a> {
    engine: &'a dyn Engine,
    seq: Option<SeqId>,
}

impl SequenceGuard<'_> {
    fn id(&self) -> SeqId {
        self.seq.expect("freed only by free() or drop")
    }

    fn free(mut self) -> Result<()> {
        match self.seq.take() {
            Some(seq) => self.engine.free(seq),
            None => Ok(()),
        }
    }
}

impl Drop for SequenceGuard<'_> {
    fn drop(&mut self) {
        if let Some(seq) = self.seq.take() {
            let _ = self.engine.free(seq);
        }
    }
}

/// The generated text with stop-string detection across token boundaries. Text is released
/// only once no stop string can start inside it: the longest tail that is a prefix of a stop
/// string is held back until later text decides it.
struct StopScan<'a> {
    stops: Vec<&'a str>,
    text: String,
    /// Bytes of `text` already handed to the callback.
    emitted: usize,
    stopped: bool,
}

impl<'a> StopScan<'a> {
    fn new(stops: &'a [String]) -> Self {
        let stops = stops
            .iter()
            .map(String::as_str)
            .filter(|s| !s.is_empty())
            .collect();
        Self {
            stops,
            text: String::new(),
            emitted: 0,
            stopped: false,
        }
    }

    /// Appends `piece` and releases what is decided; true when a stop string completed (the text
    /// is then cut before it).
    fn push(&mut self, piece: &str, on_text: &mut dyn FnMut(&str)) -> bool {
        if self.stopped {
            return true;
        }
        self.text.push_str(piece);
        // No stop string starts before `emitted` (that text would have been held back).
        let tail = &self.text[self.emitted..];
        if let Some(at) = self.stops.iter().filter_map(|s| tail.find(s)).min() {
            let end = self.emitted + at;
            self.release(end, on_text);
            self.text.truncate(end);
            self.stopped = true;
            return true;
        }
        let held = self
            .stops
            .iter()
            .map(|s| held_prefix_len(tail, s))
            .max()
            .unwrap_or(0);
        self.release(self.text.len() - held, on_text);
        false
    }

    /// Releases everything still held (the stream ended without completing a stop string).
    fn flush(&mut self, on_text: &mut dyn FnMut(&str)) {
        self.release(self.text.len(), on_text);
    }

    fn release(&mut self, end: usize, on_text: &mut dyn FnMut(&str)) {
        if end > self.emitted {
            on_text(&self.text[self.emitted..end]);
            self.emitted = end;
        }
    }

    fn into_text(self) -> String {
        self.text
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of `stop`.
fn held_prefix_len(text: &str, stop: &str) -> usize {
    (1..stop.len().min(text.len() + 1))
        .rev()
        .find(|&k| stop.is_char_boundary(k) && text.ends_with(&stop[..k]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(stops: &[&str], pieces: &[&str]) -> (Vec<String>, String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut s = StopScan::new(&stops);
        let mut chunks = Vec::new();
        let mut stopped = false;
        for p in pieces {
            if s.push(p, &mut |c| chunks.push(c.to_string())) {
                stopped = true;
                break;
            }
        }
        if !stopped {
            s.flush(&mut |c| chunks.push(c.to_string()));
        }
        (chunks, s.into_text(), stopped)
    }

    #[test]
    fn stop_string_spanning_pieces_is_cut_and_never_emitted() {
        let (chunks, text, stopped) = scan(&["</call>"], &["ab<", "/ca", "ll>tail"]);
        assert!(stopped);
        assert_eq!(text, "ab");
        assert_eq!(chunks, ["ab"]);
    }

    #[test]
    fn a_false_start_is_released_once_decided() {
        let (chunks, text, stopped) = scan(&["STOP"], &["x ST", "ART", " y"]);
        assert!(!stopped);
        assert_eq!(text, "x START y");
        assert_eq!(chunks, ["x ", "START", " y"]);
    }

    #[test]
    fn earliest_of_several_stops_wins_and_held_tail_flushes_at_end() {
        let (_, text, stopped) = scan(&["bb", "a"], &["xbba"]);
        assert!(stopped);
        assert_eq!(text, "x");
        let (chunks, text, stopped) = scan(&["\n\n"], &["end\n"]);
        assert!(!stopped);
        assert_eq!(
            (chunks, text),
            (
                vec!["end".to_string(), "\n".to_string()],
                "end\n".to_string()
            )
        );
    }

    #[test]
    fn multibyte_stop_prefixes_respect_char_boundaries() {
        assert_eq!(held_prefix_len("abc\u{e9}", "\u{e9}t"), 2);
        assert_eq!(held_prefix_len("abc", "\u{e9}t"), 0);
        assert_eq!(held_prefix_len("ab", "abc"), 2);
        assert_eq!(held_prefix_len("", "abc"), 0);
    }
}
