//! A scripted driver: fake SLM and LLM token streams pushed through a `RelaySession` the way
//! relay-engine's loop does, with the two models' caches simulated as lists of texts/ids.
#![allow(dead_code)]

use relay_core::{
    Action, CallProgress, LlmDelta, LlmToken, RelayConfig, RelaySession, RelayTrace, SlmOutcome,
    SlmToken, StopReason,
};

pub const EOS: &str = "<eos>";
pub const SLM_EOS_ID: u32 = 1;
pub const LLM_EOS_ID: u32 = 2;

/// One scripted SLM position.
#[derive(Debug, Clone)]
pub struct SlmStep {
    pub text: String,
    pub top1: f32,
    pub eos: bool,
}

/// SLM tokens with confident top-1 (0.9); `EOS` marks the end-of-sequence token.
pub fn slm(parts: &[&str]) -> Vec<SlmStep> {
    parts.iter().map(|p| step(p, 0.9)).collect()
}

pub fn slm_probs(parts: &[(&str, f32)]) -> Vec<SlmStep> {
    parts.iter().map(|&(t, p)| step(t, p)).collect()
}

fn step(text: &str, top1: f32) -> SlmStep {
    let eos = text == EOS;
    SlmStep {
        text: if eos { String::new() } else { text.to_string() },
        top1,
        eos,
    }
}

/// The LLM's tokens, served in order across calls; `failures` lists (call index, tokens
/// served before the backend fails).
#[derive(Debug, Clone, Default)]
pub struct LlmScript {
    pub tokens: Vec<String>,
    pub failures: Vec<(usize, usize)>,
}

pub fn llm(parts: &[&str]) -> LlmScript {
    LlmScript {
        tokens: parts.iter().map(|s| s.to_string()).collect(),
        failures: vec![],
    }
}

impl LlmScript {
    pub fn failing(mut self, call: usize, after_tokens: usize) -> Self {
        self.failures.push((call, after_tokens));
        self
    }
}

#[derive(Debug)]
pub struct Run {
    pub session: RelaySession,
    pub trace: RelayTrace,
    pub deltas: Vec<LlmDelta>,
    /// At each call, after the prefill: (the simulated LLM cache as text, the session's LLM view).
    pub cache_checks: Vec<(String, String)>,
    /// Pieces prefilled into the LLM over all calls, and tokens it decoded and stepped.
    pub llm_prefilled: usize,
    pub llm_stepped: usize,
    /// The simulated SLM cache: accepted SLM tokens stepped, served LLM tokens prefilled.
    pub slm_cache: Vec<u32>,
    pub dropped: usize,
}

impl Run {
    pub fn text(&self) -> String {
        self.session.text()
    }

    pub fn llm_view(&self) -> String {
        self.session.llm_view_text()
    }
}

pub fn config(policy: &str) -> RelayConfig {
    let mut c = RelayConfig::default();
    c.policy.kind = policy.parse().unwrap();
    c
}

/// Drives a session to its end. SLM ids are 1000 + script index, LLM ids 5000 + index.
/// An exhausted SLM script stops the response (`Cancelled`); an exhausted LLM script ends the call.
pub fn drive(config: &RelayConfig, slm: &[SlmStep], llm: &LlmScript) -> Run {
    let mut s = RelaySession::from_config(config).expect("valid config");
    let (mut si, mut li, mut call_index) = (0, 0, 0);
    let mut llm_cache: Vec<String> = Vec::new();
    let mut run_deltas = Vec::new();
    let mut cache_checks = Vec::new();
    let (mut llm_prefilled, mut llm_stepped, mut dropped) = (0, 0, 0);
    let mut slm_cache = Vec::new();
    for _ in 0..1_000_000 {
        match s.next_action() {
            Action::Slm => {
                let Some(step) = slm.get(si) else {
                    s.stop(StopReason::Cancelled);
                    continue;
                };
                let id = if step.eos {
                    SLM_EOS_ID
                } else {
                    1000 + si as u32
                };
                si += 1;
                let token = SlmToken {
                    id,
                    text: &step.text,
                    top1_prob: step.top1,
                    eos: step.eos,
                };
                match s.push_slm_token(token).unwrap() {
                    SlmOutcome::Accepted => slm_cache.push(id),
                    SlmOutcome::Dropped => dropped += 1,
                }
            }
            Action::Llm { max_tokens } => {
                let start = s.begin_call().unwrap();
                assert_eq!(start.max_tokens, max_tokens);
                let before = llm_cache.len();
                if start.delta.first_call {
                    llm_cache.clear();
                }
                llm_cache.extend(start.delta.pieces.iter().map(|p| p.text().to_string()));
                llm_prefilled += start.delta.pieces.len();
                // Piece for piece, not just text: nothing the LLM holds is sent again.
                assert_eq!(
                    llm_cache.len(),
                    s.llm_view().len(),
                    "LLM cache and view differ in pieces"
                );
                cache_checks.push((llm_cache.concat(), s.llm_view_text()));
                let fail_after = llm.failures.iter().find(|f| f.0 == call_index).map(|f| f.1);
                let (mut decoded, mut failed) = (0, false);
                loop {
                    if fail_after == Some(decoded) {
                        failed = true;
                        break;
                    }
                    let Some(text) = llm.tokens.get(li) else {
                        break;
                    };
                    let eos = text == EOS;
                    let id = if eos { LLM_EOS_ID } else { 5000 + li as u32 };
                    li += 1;
                    decoded += 1;
                    let token = LlmToken {
                        id,
                        text: if eos { "" } else { text },
                        eos,
                    };
                    match s.push_llm_token(token).unwrap() {
                        CallProgress::More => {
                            llm_cache.push(token.text.to_string());
                            llm_stepped += 1;
                        }
                        CallProgress::Done => break,
                    }
                }
                call_index += 1;
                let served = if failed {
                    // The backend's state is unknown: back to before this call's prefill.
                    llm_cache.truncate(if start.delta.first_call { 0 } else { before });
                    s.fail_call("llm backend timed out").unwrap()
                } else {
                    s.end_call().unwrap()
                };
                run_deltas.push(start.delta);
                slm_cache.extend(&served.tokens);
            }
            Action::Stop(_) => break,
        }
    }
    assert!(s.is_done(), "the driver loop must end");
    let trace = s.trace();
    Run {
        session: s,
        trace,
        deltas: run_deltas,
        cache_checks,
        llm_prefilled,
        llm_stepped,
        slm_cache,
        dropped,
    }
}

/// The invariants every run must keep, whatever the script.
pub fn assert_invariants(run: &Run) {
    run.trace
        .check()
        .unwrap_or_else(|e| panic!("trace invariant broken: {e}\n{:#?}", run.trace));
    assert_eq!(
        run.slm_cache,
        run.session.tokens(),
        "the SLM cache must equal the response"
    );
    for (i, (cache, view)) in run.cache_checks.iter().enumerate() {
        assert_eq!(
            cache, view,
            "at call {i}, the LLM's cache must hold exactly its view"
        );
    }
    assert!(run.trace.stop.is_some());
    assert!(run.trace.response_tokens <= run.session.limits().max_response_tokens);
    assert!(run.trace.calls.len() <= run.session.limits().max_calls.max(1));
}
