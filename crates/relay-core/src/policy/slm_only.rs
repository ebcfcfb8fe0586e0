//! `slm-only`: the SLM alone; tags, if any, are plain text.

use super::CallPolicy;

#[derive(Debug, Clone, Default)]
pub struct SlmOnlyPolicy;

impl CallPolicy for SlmOnlyPolicy {
    fn name(&self) -> &'static str {
        "slm-only"
    }

    fn may_call(&self) -> bool {
        false
    }
}
