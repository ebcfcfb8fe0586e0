//! `llm-only`: the LLM writes the whole response (one call at position 0).

use super::{CallLength, CallPolicy};

#[derive(Debug, Clone, Default)]
pub struct LlmOnlyPolicy;

impl CallPolicy for LlmOnlyPolicy {
    fn name(&self) -> &'static str {
        "llm-only"
    }

    fn on_start(&mut self) -> Option<CallLength> {
        Some(CallLength::RestOfResponse)
    }
}
