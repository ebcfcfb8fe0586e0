//! `teacher-free`: the trained SLM writes its tags, they stay in the text and are counted, but
//! no call is ever served (how much does the SLM get from the LLM at all?).

use super::{CallLength, CallPolicy};

#[derive(Debug, Clone, Default)]
pub struct TeacherFreePolicy;

impl CallPolicy for TeacherFreePolicy {
    fn name(&self) -> &'static str {
        "teacher-free"
    }

    fn reads_tags(&self) -> bool {
        true
    }

    fn on_tag(&mut self, _n: u64) -> Option<CallLength> {
        None
    }
}
