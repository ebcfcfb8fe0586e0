//! `fixed-n`: the SLM decides *when* (its tags), a fixed `n` decides *how long* (ablation).
//! A tag with `n = 0` still means no call: that is the protocol, not the length.

use super::{CallLength, CallPolicy};

#[derive(Debug, Clone)]
pub struct FixedNPolicy {
    n: u64,
}

impl FixedNPolicy {
    pub fn new(n: u64) -> Self {
        FixedNPolicy { n }
    }
}

impl CallPolicy for FixedNPolicy {
    fn name(&self) -> &'static str {
        "fixed-n"
    }

    fn reads_tags(&self) -> bool {
        true
    }

    fn on_tag(&mut self, _n: u64) -> Option<CallLength> {
        Some(CallLength::Tokens(self.n))
    }
}
