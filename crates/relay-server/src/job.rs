//! One validated generation job run to the end on a blocking thread: the relay loop (or one
//! model alone, as the relay's `slm-only` / `llm-only` policies, so usage is attributed the
//! same way everywhere), with stop strings applied to the streamed text.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use relay_core::{PolicyKind, RelayConfig, RelayTrace, Source, StopReason};
use relay_engine::relay::{relay, LlmRetry, RelayEvent, RelayOutput, RelayPair, RelayRequest};
use relay_engine::sampling::SamplingParams;

/// Which served model a request names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelChoice {
    Relay,
    Slm,
    Llm,
}

impl ModelChoice {
    pub const ALL: [ModelChoice; 3] = [ModelChoice::Relay, ModelChoice::Slm, ModelChoice::Llm];
    pub fn name(self) -> &'static str {
        match self {
            ModelChoice::Relay => "relay",
            ModelChoice::Slm => "slm",
            ModelChoice::Llm => "llm",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == s)
    }
}

/// A request after validation: nothing downstream re-checks it.
#[derive(Debug, Clone)]
pub struct ValidJob {
    pub model: ModelChoice,
    pub slm_prompt: Vec<u32>,
    pub llm_prompt: Vec<u32>,
    pub config: RelayConfig,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    /// Choices to write (OpenAI's `n`); choice `i` samples with `seed + i`.
    pub n: usize,
}

impl ValidJob {
    /// The relay settings with the model choice applied.
    fn relay_config(&self) -> RelayConfig {
        let mut c = self.config.clone();
        match self.model {
            ModelChoice::Relay => {}
            ModelChoice::Slm => c.policy.kind = PolicyKind::SlmOnly,
            ModelChoice::Llm => {
                c.policy.kind = PolicyKind::LlmOnly;
                c.limits.max_call_tokens = c.limits.max_response_tokens;
                c.limits.max_calls = c.limits.max_calls.max(1);
            }
        }
        c
    }
}

/// What a streaming client is told as the response is written.
#[derive(Debug, Clone)]
pub enum Piece {
    Text {
        choice: usize,
        text: String,
        source: Source,
    },
    CallStart {
        choice: usize,
        at: usize,
        max_tokens: usize,
    },
    CallEnd {
        choice: usize,
        served: usize,
        error: Option<String>,
    },
}

/// One finished choice.
#[derive(Debug, Clone)]
pub struct ChoiceOutput {
    /// The text as streamed (cut before a stop string).
    pub text: String,
    /// `(text, source)` segments of `text`, in order.
    pub segments: Vec<(String, Source)>,
    pub finish_reason: &'static str,
    pub relay: RelayOutput,
}

impl ChoiceOutput {
    pub fn trace(&self) -> &RelayTrace {
        &self.relay.trace
    }
}

/// Why a job ended early.
#[derive(Debug)]
pub enum JobError {
    Cancelled,
    Engine(relay_engine::EngineError),
}

/// Runs every choice of `job`. `cancel` is set from outside (a client gone, a timeout).
pub fn run_job(
    pair: &RelayPair,
    job: &ValidJob,
    cancel: &Arc<AtomicBool>,
    mut on_piece: impl FnMut(Piece),
) -> Result<Vec<ChoiceOutput>, JobError> {
    let config = job.relay_config();
    let mut out = Vec::with_capacity(job.n);
    for choice in 0..job.n {
        if cancel.load(Ordering::Relaxed) {
            return Err(JobError::Cancelled);
        }
        // A stop string stops this choice only: its own flag, or'ed with the client's.
        let stop_hit = Arc::new(AtomicBool::new(false));
        let choice_cancel = Arc::new(AtomicBool::new(false));
        let mut sampling = job.sampling.clone();
        sampling.seed = sampling.seed.wrapping_add(choice as u64);
        let mut config = config.clone();
        config.policy.seed = config.policy.seed.wrapping_add(choice as u64);
        let request = RelayRequest {
            slm_prompt: job.slm_prompt.clone(),
            llm_prompt: job.llm_prompt.clone(),
            config,
            sampling,
            retry: LlmRetry::default(),
            cancel: Some(choice_cancel.clone()),
        };
        let mut filter = StopFilter::new(&job.stop);
        let mut segments: Vec<(String, Source)> = Vec::new();
        let mut emit = |segs: Vec<(String, Source)>, on_piece: &mut dyn FnMut(Piece)| {
            for (text, source) in segs {
                on_piece(Piece::Text {
                    choice,
                    text: text.clone(),
                    source,
                });
                match segments.last_mut() {
                    Some((t, s)) if *s == source => t.push_str(&text),
                    _ => segments.push((text, source)),
                }
            }
        };
        let result = relay(pair, &request, |event| {
            if cancel.load(Ordering::Relaxed) {
                choice_cancel.store(true, Ordering::Relaxed);
            }
            if filter.done {
                return;
            }
            match event {
                RelayEvent::Text { text, source } => {
                    let segs = filter.push(&text, source);
                    if filter.done {
                        stop_hit.store(true, Ordering::Relaxed);
                        choice_cancel.store(true, Ordering::Relaxed);
                    }
                    emit(segs, &mut on_piece);
                }
                RelayEvent::CallStart { at, max_tokens } => on_piece(Piece::CallStart {
                    choice,
                    at,
                    max_tokens,
                }),
                RelayEvent::CallEnd { served, error } => on_piece(Piece::CallEnd {
                    choice,
                    served,
                    error,
                }),
            }
        });
        let relay_out = result.map_err(JobError::Engine)?;
        if cancel.load(Ordering::Relaxed) {
            return Err(JobError::Cancelled);
        }
        if !filter.done {
            emit(filter.flush(), &mut on_piece);
        }
        let finish_reason = if stop_hit.load(Ordering::Relaxed) {
            "stop"
        } else {
            match relay_out.trace.stop {
                Some(StopReason::TokenBudget) | Some(StopReason::ContextFull) => "length",
                _ => "stop",
            }
        };
        let text = segments.iter().map(|(t, _)| t.as_str()).collect();
        out.push(ChoiceOutput {
            text,
            segments,
            finish_reason,
            relay: relay_out,
        });
    }
    Ok(out)
}

/// Holds back streamed text that a stop string may still claim, and cuts at the first stop.
struct StopFilter {
    stops: Vec<String>,
    text: String,
    /// Byte ends of same-source runs of `text`.
    runs: Vec<(usize, Source)>,
    emitted: usize,
    done: bool,
}

impl StopFilter {
    fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.to_vec(),
            text: String::new(),
            runs: Vec::new(),
            emitted: 0,
            done: false,
        }
    }

    fn push(&mut self, piece: &str, source: Source) -> Vec<(String, Source)> {
        let search_from = self.emitted;
        self.text.push_str(piece);
        match self.runs.last_mut() {
            Some((end, s)) if *s == source => *end = self.text.len(),
            _ => self.runs.push((self.text.len(), source)),
        }
        let hit = self
            .stops
            .iter()
            .filter_map(|s| self.text[search_from..].find(s.as_str()))
            .min();
        if let Some(pos) = hit {
            self.done = true;
            return self.take(search_from + pos);
        }
        let hold = self
            .stops
            .iter()
            .map(|s| s.len().saturating_sub(1))
            .max()
            .unwrap_or(0);
        let mut safe = self.text.len().saturating_sub(hold).max(self.emitted);
        while !self.text.is_char_boundary(safe) {
            safe -= 1;
        }
        self.take(safe.max(self.emitted))
    }

    fn flush(&mut self) -> Vec<(String, Source)> {
        self.take(self.text.len())
    }

    /// Text `emitted..upto`, split by source.
    fn take(&mut self, upto: usize) -> Vec<(String, Source)> {
        let mut out = Vec::new();
        let mut start = self.emitted;
        let mut run_start = 0;
        for &(end, source) in &self.runs {
            let (a, b) = (start.max(run_start), end.min(upto));
            if a < b {
                out.push((self.text[a..b].to_string(), source));
                start = b;
            }
            run_start = end;
        }
        self.emitted = upto.max(self.emitted);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_filter_cuts_across_pieces_and_keeps_sources() {
        let mut f = StopFilter::new(&["END".to_string()]);
        let mut all = f.push("abc E", Source::Slm);
        all.extend(f.push("Nx", Source::Llm));
        assert!(!f.done);
        all.extend(f.flush());
        let text: String = all.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(text, "abc ENx", "no stop: everything comes out");
        assert_eq!(all.last().unwrap().1, Source::Llm);
        let mut f = StopFilter::new(&["END".to_string()]);
        let mut all = f.push("abc E", Source::Slm);
        all.extend(f.push("N", Source::Llm));
        all.extend(f.push("D!", Source::Llm));
        assert!(f.done);
        let text: String = all.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(text, "abc ", "cut before the stop string across pieces");
        let mut g = StopFilter::new(&[]);
        assert_eq!(
            g.push("héllo", Source::Slm),
            vec![("héllo".to_string(), Source::Slm)]
        );
    }
}
