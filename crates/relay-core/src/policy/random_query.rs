//! `random-query`: the query router baseline. With probability `p` the whole query goes to
//! the LLM, else the SLM answers alone; its accuracy is SLM + p·(LLM − SLM).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{CallLength, CallPolicy};

#[derive(Debug, Clone)]
pub struct RandomQueryPolicy {
    p: f64,
    rng: StdRng,
}

impl RandomQueryPolicy {
    /// `p` must be in [0, 1] (checked by `PolicyConfig::build`).
    pub fn new(p: f64, seed: u64) -> Self {
        RandomQueryPolicy {
            p,
            rng: StdRng::seed_from_u64(seed),
        }
    }
}

impl CallPolicy for RandomQueryPolicy {
    fn name(&self) -> &'static str {
        "random-query"
    }

    fn on_start(&mut self) -> Option<CallLength> {
        self.rng
            .gen_bool(self.p)
            .then_some(CallLength::RestOfResponse)
    }
}
