//! `confidence`: training-free calling. When the SLM's top-1 probability at a position falls
//! below the threshold, the LLM writes from that position (the SLM's token is dropped) for a
//! fixed `n` or until it ends the line. No tag text is inserted. A cool-down keeps the SLM
//! writing for a few positions after each call, so one hard stretch is not a string of calls.

use super::{CallLength, CallPolicy, TokenInfo};

#[derive(Debug, Clone)]
pub struct ConfidencePolicy {
    threshold: f32,
    length: CallLength,
    cooldown: usize,
    /// SLM positions left before a call may start again.
    cooling: usize,
}

impl ConfidencePolicy {
    pub fn new(threshold: f32, length: CallLength, cooldown: usize) -> Self {
        ConfidencePolicy {
            threshold,
            length,
            cooldown,
            cooling: 0,
        }
    }
}

impl CallPolicy for ConfidencePolicy {
    fn name(&self) -> &'static str {
        "confidence"
    }

    fn before_slm_token(&mut self, token: &TokenInfo<'_>) -> Option<CallLength> {
        if self.cooling > 0 {
            self.cooling -= 1;
            return None;
        }
        (token.top1_prob < self.threshold).then_some(self.length)
    }

    fn on_call_end(&mut self) {
        self.cooling = self.cooldown;
    }
}
