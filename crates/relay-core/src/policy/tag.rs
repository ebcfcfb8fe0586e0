//! `tag`: the learned command. The SLM writes `<call>n</call>` and the LLM writes `n` tokens.

use super::{CallLength, CallPolicy};

#[derive(Debug, Clone, Default)]
pub struct TagPolicy;

impl CallPolicy for TagPolicy {
    fn name(&self) -> &'static str {
        "tag"
    }

    fn reads_tags(&self) -> bool {
        true
    }

    fn on_tag(&mut self, n: u64) -> Option<CallLength> {
        Some(CallLength::Tokens(n))
    }
}
