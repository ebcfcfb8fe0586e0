//! `random-token`: a call of `n` tokens at each SLM position with probability `p` — the
//! baseline that tells whether *where* the SLM calls matters, at the same call ratio.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{CallLength, CallPolicy, TokenInfo};

#[derive(Debug, Clone)]
pub struct RandomTokenPolicy {
    p: f64,
    n: u64,
    rng: StdRng,
}

impl RandomTokenPolicy {
    /// `p` must be in [0, 1] (checked by `PolicyConfig::build`).
    pub fn new(p: f64, n: u64, seed: u64) -> Self {
        RandomTokenPolicy {
            p,
            n,
            rng: StdRng::seed_from_u64(seed),
        }
    }
}

impl CallPolicy for RandomTokenPolicy {
    fn name(&self) -> &'static str {
        "random-token"
    }

    fn before_slm_token(&mut self, _token: &TokenInfo<'_>) -> Option<CallLength> {
        // One draw per position, whatever happens next, so a seed fixes the whole schedule.
        self.rng
            .gen_bool(self.p)
            .then_some(CallLength::Tokens(self.n))
    }
}
