//! Warm-up data: teach a stock SLM the call command before GRPO.
//!
//! From a (problem, correct solution) pair, [`build_example`] writes the chat-formatted token
//! sequence the SLM should learn, with 0–3 commands (`<call>n</call>`) inserted at random token
//! boundaries of the solution and `n` drawn from an [`NDist`]. After a command, the next `n`
//! tokens are LLM-written: either the solution's own tokens, or — with a [`Teacher`] — the
//! LLM's greedy continuation of the tag-free view at that point, as the relay would produce at
//! inference. LLM-written tokens and the prompt are masked out of the loss (`loss_mask` 0); the
//! SLM's own tokens, the commands and the final EOS are learned (`loss_mask` 1).
//!
//! Where the commands go is a [`Placement`]: at random (the paper's warm-up), or informed by
//! the models' own log-probabilities of the solution, read teacher-forced ([`solution_logprobs`]):
//! before the tokens the SLM finds unlikely (`unsure`), or where the LLM is surer of the next
//! token than the SLM (`gap`). The informed ones teach where to call, not only how.
//!
//! The ids are built by concatenating the pieces' own tokenizations (prompt, solution tokens,
//! command, LLM tokens), never by re-tokenizing the joined text: that is the sequence the SLM's
//! cache holds during a relay run, where tokens pass between the models as ids.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use relay_core::TagConfig;
use relay_engine::engine::{Engine, SeqId};
use relay_engine::sampling::argmax;
use relay_engine::EngineError;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// How many tokens a command asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum NDist {
    /// Always this many.
    Fixed(u64),
    /// Uniform over `lo..=hi`.
    Uniform { lo: u64, hi: u64 },
    /// Uniform over a list.
    Choice(Vec<u64>),
    /// Geometric with this mean (at least 1), capped at `cap`.
    Geometric { mean: f64, cap: u64 },
}

impl Default for NDist {
    fn default() -> Self {
        NDist::Uniform { lo: 8, hi: 64 }
    }
}

impl NDist {
    pub fn sample(&self, rng: &mut impl Rng) -> u64 {
        match self {
            NDist::Fixed(n) => *n,
            NDist::Uniform { lo, hi } => rng.gen_range(*lo..=*hi),
            NDist::Choice(v) => v[rng.gen_range(0..v.len())],
            NDist::Geometric { mean, cap } => {
                // Number of trials to the first success with p = 1/mean: mean `mean`, min 1.
                let p = (1.0 / mean).clamp(1e-9, 1.0);
                let u: f64 = rng.gen_range(f64::EPSILON..1.0);
                let k = (u.ln() / (1.0 - p).ln()).ceil();
                let k = if k.is_finite() { k.max(1.0) } else { 1.0 };
                (k as u64).min(*cap)
            }
        }
    }
}

impl fmt::Display for NDist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NDist::Fixed(n) => write!(f, "fixed:{n}"),
            NDist::Uniform { lo, hi } => write!(f, "uniform:{lo}-{hi}"),
            NDist::Choice(v) => {
                let parts: Vec<String> = v.iter().map(u64::to_string).collect();
                write!(f, "choice:{}", parts.join(","))
            }
            NDist::Geometric { mean, cap } => write!(f, "geometric:{mean}:{cap}"),
        }
    }
}

impl FromStr for NDist {
    type Err = String;

    /// `fixed:N`, `uniform:LO-HI`, `choice:A,B,C`, `geometric:MEAN[:CAP]` (cap default 512);
    /// every n at least 1.
    fn from_str(s: &str) -> Result<Self, String> {
        let usage = "expected fixed:N, uniform:LO-HI, choice:A,B,... or geometric:MEAN[:CAP]";
        let (kind, rest) = s.split_once(':').ok_or_else(|| format!("`{s}`: {usage}"))?;
        let int = |t: &str| -> Result<u64, String> {
            let n: u64 = t
                .trim()
                .parse()
                .map_err(|_| format!("`{s}`: `{t}` is not a whole number"))?;
            if n == 0 {
                return Err(format!("`{s}`: a command asks for at least 1 token"));
            }
            Ok(n)
        };
        match kind {
            "fixed" => Ok(NDist::Fixed(int(rest)?)),
            "uniform" => {
                let (lo, hi) = rest
                    .split_once('-')
                    .ok_or_else(|| format!("`{s}`: uniform needs LO-HI"))?;
                let (lo, hi) = (int(lo)?, int(hi)?);
                if lo > hi {
                    return Err(format!("`{s}`: LO is above HI"));
                }
                Ok(NDist::Uniform { lo, hi })
            }
            "choice" => {
                let v = rest.split(',').map(int).collect::<Result<Vec<_>, _>>()?;
                Ok(NDist::Choice(v))
            }
            "geometric" => {
                let (mean, cap) = match rest.split_once(':') {
                    Some((m, c)) => (m, int(c)?),
                    None => (rest, 512),
                };
                let mean: f64 = mean
                    .trim()
                    .parse()
                    .map_err(|_| format!("`{s}`: `{mean}` is not a number"))?;
                if !(mean >= 1.0 && mean.is_finite()) {
                    return Err(format!("`{s}`: the mean must be at least 1"));
                }
                Ok(NDist::Geometric { mean, cap })
            }
            other => Err(format!("`{s}`: unknown distribution `{other}`; {usage}")),
        }
    }
}

/// A count range written `MIN-MAX` or `N` (how many commands an example gets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallCount {
    pub min: usize,
    pub max: usize,
}

impl Default for CallCount {
    fn default() -> Self {
        CallCount { min: 0, max: 3 }
    }
}

impl FromStr for CallCount {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parse = |t: &str| {
            t.trim()
                .parse::<usize>()
                .map_err(|_| format!("`{s}`: expected N or MIN-MAX (whole numbers)"))
        };
        let (min, max) = match s.split_once('-') {
            Some((a, b)) => (parse(a)?, parse(b)?),
            None => (parse(s)?, parse(s)?),
        };
        if min > max {
            return Err(format!("`{s}`: MIN is above MAX"));
        }
        Ok(CallCount { min, max })
    }
}

impl fmt::Display for CallCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.min, self.max)
    }
}

/// The LLM writing after a command: continues the tag-free view with up to `n` tokens.
pub trait Teacher {
    /// Up to `n` greedy tokens after `view` (the LLM's prompt plus the response so far, call
    /// tags removed). Ends early at EOS, which is then the last token returned.
    fn continue_view(&mut self, view: &[u32], n: usize) -> Result<Vec<u32>, String>;
}

/// Where an example's commands go.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Placement {
    /// At uniformly random token boundaries, `--calls` of them (the paper's warm-up).
    #[default]
    Random,
    /// Before the solution tokens to which the SLM gives a probability below `below`, least
    /// likely first; as many as `--calls` draws, fewer if fewer tokens qualify.
    Unsure { below: f32 },
    /// Before the solution tokens whose log-probability under the LLM exceeds the SLM's by at
    /// least `nats`, largest gap first; as many as `--calls` draws, fewer if fewer qualify.
    Gap { nats: f32 },
}

impl Placement {
    /// Whether it reads the SLM's log-probs ([`Self::needs_llm`]: and the LLM's).
    pub fn is_informed(&self) -> bool {
        !matches!(self, Placement::Random)
    }

    pub fn needs_llm(&self) -> bool {
        matches!(self, Placement::Gap { .. })
    }

    /// Solution positions where a command may go, best first, from the models' log-probs of
    /// each solution token given what precedes it (`slm[j]`, `llm[j]`). Positions past `body`
    /// (the EOS) never qualify. Empty for [`Placement::Random`].
    pub fn rank_sites(&self, slm: &[f32], llm: Option<&[f32]>, body: usize) -> Vec<usize> {
        let body = body.min(slm.len());
        let mut scored: Vec<(usize, f32)> = match *self {
            Placement::Random => return Vec::new(),
            Placement::Unsure { below } => {
                let cut = below.ln();
                (0..body)
                    .filter(|&j| slm[j] < cut)
                    .map(|j| (j, -slm[j]))
                    .collect()
            }
            Placement::Gap { nats } => {
                let Some(llm) = llm else { return Vec::new() };
                (0..body.min(llm.len()))
                    .map(|j| (j, llm[j] - slm[j]))
                    .filter(|&(_, g)| g >= nats)
                    .collect()
            }
        };
        // Best first; ties (and NaN, which never passes the filters) by position.
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        scored.into_iter().map(|(j, _)| j).collect()
    }
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Placement::Random => write!(f, "random"),
            Placement::Unsure { below } => write!(f, "unsure:{below}"),
            Placement::Gap { nats } => write!(f, "gap:{nats}"),
        }
    }
}

impl FromStr for Placement {
    type Err = String;

    /// `random`, `unsure[:P]` (P in (0, 1], default 0.3) or `gap[:NATS]` (default 1.0).
    fn from_str(s: &str) -> Result<Self, String> {
        let usage = "expected random, unsure[:P] or gap[:NATS]";
        let (kind, arg) = match s.split_once(':') {
            Some((k, a)) => (k, Some(a)),
            None => (s, None),
        };
        let num = |a: &str| -> Result<f32, String> {
            a.trim()
                .parse::<f32>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| format!("`{s}`: `{a}` is not a number; {usage}"))
        };
        match (kind, arg) {
            ("random", None) => Ok(Placement::Random),
            ("unsure", a) => {
                let below = a.map(num).transpose()?.unwrap_or(0.3);
                if !(below > 0.0 && below <= 1.0) {
                    return Err(format!("`{s}`: P is a probability in (0, 1]"));
                }
                Ok(Placement::Unsure { below })
            }
            ("gap", a) => {
                let nats = a.map(num).transpose()?.unwrap_or(1.0);
                if nats < 0.0 {
                    return Err(format!("`{s}`: NATS is at least 0"));
                }
                Ok(Placement::Gap { nats })
            }
            _ => Err(format!("`{s}`: {usage}")),
        }
    }
}

/// Log-probability of each `solution` token given the prompt and the solution before it, read
/// teacher-forced in one pass (`solution.len()` values). The informed placements' input.
pub fn solution_logprobs(
    engine: &dyn Engine,
    prompt: &[u32],
    solution: &[u32],
) -> relay_engine::Result<Vec<f32>> {
    if prompt.is_empty() {
        return Err(EngineError::InvalidInput(
            "scoring a solution needs a non-empty prompt".into(),
        ));
    }
    let mut ids = Vec::with_capacity(prompt.len() + solution.len());
    ids.extend_from_slice(prompt);
    ids.extend_from_slice(solution);
    let all = engine.score(&ids)?;
    match all.get(prompt.len() - 1..) {
        Some(tail) if tail.len() == solution.len() => Ok(tail.to_vec()),
        _ => Err(EngineError::Internal(format!(
            "engine contract broken: score gave {} log-probs for {} tokens",
            all.len(),
            ids.len()
        ))),
    }
}

/// An informed [`Placement`] with the engines whose log-probs it reads.
pub struct Placer<'a> {
    pub placement: Placement,
    pub slm: &'a dyn Engine,
    /// Needed by [`Placement::Gap`].
    pub llm: Option<&'a dyn Engine>,
}

impl Placer<'_> {
    /// The ranked sites for one example (`solution` ends with its EOS, which is never a site),
    /// ready for [`build_example`].
    pub fn sites(
        &self,
        prompt: &[u32],
        solution: &[u32],
        is_eos: &dyn Fn(u32) -> bool,
    ) -> relay_engine::Result<Vec<usize>> {
        let body = solution.iter().take_while(|&&t| !is_eos(t)).count();
        let slm = solution_logprobs(self.slm, prompt, solution)?;
        let llm = match (self.placement.needs_llm(), self.llm) {
            (false, _) => None,
            (true, Some(e)) => Some(solution_logprobs(e, prompt, solution)?),
            (true, None) => {
                return Err(EngineError::InvalidInput(format!(
                    "placement {} reads the LLM's log-probs: give it the LLM",
                    self.placement
                )))
            }
        };
        Ok(self.placement.rank_sites(&slm, llm.as_deref(), body))
    }
}

/// Who wrote a response token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Writer {
    Slm,
    /// A command's tokens: the SLM writes them, the LLM never sees them.
    Tag,
    Llm,
}

/// One inserted command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarmupCall {
    /// Response-token index where the command starts.
    pub at: usize,
    pub requested_n: u64,
    /// LLM-written tokens that follow it.
    pub served: usize,
}

/// What [`build_example`] needs besides the ids.
#[derive(Debug, Clone)]
pub struct WarmupOptions {
    pub calls: CallCount,
    pub n_dist: NDist,
    pub tags: TagConfig,
}

impl Default for WarmupOptions {
    fn default() -> Self {
        Self {
            calls: CallCount::default(),
            n_dist: NDist::default(),
            tags: TagConfig::default(),
        }
    }
}

/// One built example, before it is written out.
#[derive(Debug, Clone, PartialEq)]
pub struct Built {
    /// Response ids (commands and LLM tokens included, EOS last when the solution had it).
    pub response: Vec<u32>,
    pub writers: Vec<Writer>,
    pub calls: Vec<WarmupCall>,
}

impl Built {
    /// `loss_mask` over `prompt ++ response`: 1 for what the SLM writes (its tokens and commands).
    pub fn loss_mask(&self, prompt_len: usize) -> Vec<u8> {
        let mut m = vec![0u8; prompt_len];
        m.extend(self.writers.iter().map(|w| u8::from(*w != Writer::Llm)));
        m
    }

    pub fn llm_tokens(&self) -> usize {
        self.writers.iter().filter(|w| **w == Writer::Llm).count()
    }
}

/// Inserts commands into one solution. `solution` is the response as the SLM would write it
/// (ending with EOS if it should learn to stop); `eos` tells which ids end a response;
/// `encode_tag(n)` tokenizes a command. With a teacher, `llm_prompt` starts the LLM's view.
///
/// `sites`: `None` places `options.calls` commands at random; `Some(ranked)` (from
/// [`Placement::rank_sites`]) draws how many the same way and takes that many sites best first,
/// skipping any that would fall inside a command taken before it (or take one inside its own
/// tokens); fewer when fewer sites qualify.
#[allow(clippy::too_many_arguments)]
pub fn build_example(
    solution: &[u32],
    is_eos: &dyn Fn(u32) -> bool,
    encode_tag: &mut dyn FnMut(u64) -> Result<Vec<u32>, String>,
    llm_prompt: &[u32],
    mut teacher: Option<&mut dyn Teacher>,
    options: &WarmupOptions,
    sites: Option<&[usize]>,
    seed: u64,
) -> Result<Built, String> {
    let mut rng = StdRng::seed_from_u64(seed);
    // Commands go before a solution token that is not its EOS.
    let body = solution.iter().take_while(|&&t| !is_eos(t)).count();
    // (start, n): random starts draw their n in order below, informed ones while choosing.
    let plan: Vec<(usize, Option<u64>)> = match sites {
        None => {
            let k = rng
                .gen_range(options.calls.min..=options.calls.max)
                .min(body);
            let mut starts = rand::seq::index::sample(&mut rng, body, k).into_vec();
            starts.sort_unstable();
            starts.into_iter().map(|s| (s, None)).collect()
        }
        Some(ranked) => {
            // As many as random placement would put; only where they go differs.
            let k = rng.gen_range(options.calls.min..=options.calls.max);
            let mut chosen: Vec<(usize, u64)> = Vec::new();
            for &s in ranked.iter().filter(|&&s| s < body) {
                if chosen.len() == k {
                    break;
                }
                let n = options.n_dist.sample(&mut rng);
                let clash = chosen.iter().any(|&(c, cn)| {
                    (c..c + cn as usize).contains(&s) || (s..s + n as usize).contains(&c)
                });
                if !clash {
                    chosen.push((s, n));
                }
            }
            chosen.sort_unstable();
            chosen.into_iter().map(|(s, n)| (s, Some(n))).collect()
        }
    };
    let k = plan.len();

    let mut out = Built {
        response: Vec::with_capacity(solution.len() + 16 * k),
        writers: Vec::with_capacity(solution.len() + 16 * k),
        calls: Vec::with_capacity(k),
    };
    let mut i = 0; // next solution token
    for (start, n) in plan {
        if start < i {
            continue; // inside the previous call's tokens
        }
        push(&mut out, &solution[i..start], Writer::Slm);
        i = start;
        let n = n.unwrap_or_else(|| options.n_dist.sample(&mut rng));
        let at = out.response.len();
        push(&mut out, &encode_tag(n)?, Writer::Tag);
        let served = match teacher.as_deref_mut() {
            Some(t) => {
                let mut view = llm_prompt.to_vec();
                view.extend(
                    out.response
                        .iter()
                        .zip(&out.writers)
                        .filter(|(_, w)| **w != Writer::Tag)
                        .map(|(id, _)| *id),
                );
                let tokens = t.continue_view(&view, n as usize)?;
                if tokens.len() > n as usize {
                    return Err(format!(
                        "teacher returned {} tokens for a call of {n}",
                        tokens.len()
                    ));
                }
                push(&mut out, &tokens, Writer::Llm);
                // The replaced solution tokens are skipped; an EOS from the LLM ends the answer.
                i = (i + n as usize).min(solution.len());
                if tokens.last().is_some_and(|&t| is_eos(t)) {
                    i = solution.len();
                }
                tokens.len()
            }
            None => {
                let end = (i + n as usize).min(solution.len());
                push(&mut out, &solution[i..end], Writer::Llm);
                let served = end - i;
                i = end;
                served
            }
        };
        out.calls.push(WarmupCall {
            at,
            requested_n: n,
            served,
        });
        if i >= solution.len() {
            break;
        }
    }
    push(&mut out, &solution[i.min(solution.len())..], Writer::Slm);
    Ok(out)
}

fn push(out: &mut Built, ids: &[u32], w: Writer) {
    out.response.extend_from_slice(ids);
    out.writers.extend(std::iter::repeat_n(w, ids.len()));
}

/// A [`Teacher`] on an [`Engine`]: one sequence per example, reused across its calls (each
/// call prefills only what the view gained since the last one, like the relay's LLM).
pub struct EngineTeacher<'a> {
    engine: &'a dyn Engine,
    seq: Option<SeqId>,
    /// The ids the sequence's cache holds.
    cached: Vec<u32>,
}

impl<'a> EngineTeacher<'a> {
    pub fn new(engine: &'a dyn Engine) -> Self {
        Self {
            engine,
            seq: None,
            cached: Vec::new(),
        }
    }

    fn is_eos(&self, t: u32) -> bool {
        self.engine.info().eos_token_ids.contains(&t)
    }

    fn run(&mut self, view: &[u32], n: usize) -> relay_engine::Result<Vec<u32>> {
        let seq = match self.seq {
            Some(s) => s,
            None => {
                let s = self.engine.create_sequence()?;
                self.seq = Some(s);
                s
            }
        };
        // Keep the common prefix (at least one token must be fed to get logits).
        let common = self
            .cached
            .iter()
            .zip(view)
            .take_while(|(a, b)| a == b)
            .count()
            .min(view.len().saturating_sub(1));
        if common < self.cached.len() {
            self.engine.truncate(seq, common)?;
            self.cached.truncate(common);
        }
        let fresh = &view[common..];
        if let Some(out) = self.engine.generate_greedy(seq, fresh, n) {
            let out = out?;
            self.cached.extend_from_slice(fresh);
            self.cached.extend_from_slice(&out);
            return Ok(out);
        }
        let mut logits = self.engine.prefill(seq, fresh)?;
        self.cached.extend_from_slice(fresh);
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let t = argmax(&logits) as u32;
            out.push(t);
            if self.is_eos(t) || out.len() == n {
                break;
            }
            logits = self
                .engine
                .step(&[(seq, t)])?
                .pop()
                .ok_or_else(|| EngineError::Internal("engine returned no logits".into()))?;
            self.cached.push(t);
        }
        Ok(out)
    }
}

impl Teacher for EngineTeacher<'_> {
    fn continue_view(&mut self, view: &[u32], n: usize) -> Result<Vec<u32>, String> {
        if view.is_empty() || n == 0 {
            return Ok(Vec::new());
        }
        self.run(view, n).map_err(|e| {
            // The cache may hold a half-done call: start clean next time.
            if let Some(s) = self.seq.take() {
                let _ = self.engine.free(s);
            }
            self.cached.clear();
            format!("teacher: {e}")
        })
    }
}

impl Drop for EngineTeacher<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.seq.take() {
            let _ = self.engine.free(s);
        }
    }
}

/// A dataset's reference solution in the form the SLM is asked for: GSM8K's `<<48/2=24>>`
/// calculator notes dropped and its `#### 72` line turned into a boxed final answer. Other
/// solutions (MATH's, already boxed) pass unchanged.
pub fn normalize_reference_solution(solution: &str) -> String {
    let mut s = String::with_capacity(solution.len());
    let mut rest = solution;
    while let Some(open) = rest.find("<<") {
        match rest[open..].find(">>") {
            Some(close) => {
                s.push_str(&rest[..open]);
                rest = &rest[open + close + 2..];
            }
            None => break,
        }
    }
    s.push_str(rest);
    match s.rsplit_once("####") {
        Some((body, answer)) if !answer.trim().is_empty() && !answer.contains('\n') => {
            format!(
                "{}\nThe final answer is \\boxed{{{}}}.",
                body.trim_end(),
                answer.trim()
            )
        }
        _ => s,
    }
}

/// One line of the warm-up JSONL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WarmupRecord {
    /// The problem's index in the problems file.
    pub index: usize,
    pub problem: String,
    pub answer: String,
    /// `[{"role":"user",...},{"role":"assistant",...}]`: the assistant content is the response
    /// text with its commands (the EOS not included).
    pub messages: Vec<serde_json::Value>,
    /// Chat-formatted prompt ids followed by the response ids: what SFT trains on, as is.
    pub input_ids: Vec<u32>,
    /// 1 where the SLM is taught the token (its own tokens, commands, EOS); 0 on the prompt
    /// and on LLM-written tokens.
    pub loss_mask: Vec<u8>,
    pub prompt_tokens: usize,
    pub response_tokens: usize,
    pub llm_tokens: usize,
    pub calls: Vec<WarmupCall>,
    /// `file` (a dataset's or a file's solution) or `slm` (sampled from the SLM, graded correct).
    pub solution_source: String,
    /// Whether LLM-written tokens are the teacher's own continuation.
    pub teacher: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn n_dist_parses_and_samples_within_bounds() {
        let mut rng = StdRng::seed_from_u64(1);
        for (text, lo, hi) in [
            ("fixed:7", 7, 7),
            ("uniform:3-9", 3, 9),
            ("choice:4,16,64", 4, 64),
            ("geometric:20:100", 1, 100),
        ] {
            let d: NDist = text.parse().unwrap();
            assert_eq!(d.to_string().parse::<NDist>().unwrap(), d, "{text}");
            for _ in 0..500 {
                let n = d.sample(&mut rng);
                assert!((lo..=hi).contains(&n), "{text}: {n}");
            }
        }
        let g: NDist = "geometric:20".parse().unwrap();
        let mean = (0..20_000).map(|_| g.sample(&mut rng) as f64).sum::<f64>() / 20_000.0;
        assert!((mean - 20.0).abs() < 1.5, "geometric mean {mean}");
        for bad in [
            "",
            "fixed",
            "fixed:0",
            "uniform:9-3",
            "uniform:5",
            "choice:",
            "geometric:0.5",
            "zipf:2",
        ] {
            assert!(bad.parse::<NDist>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn placements_parse_with_defaults_and_refuse_nonsense() {
        assert_eq!("random".parse::<Placement>().unwrap(), Placement::Random);
        assert_eq!(
            "unsure".parse::<Placement>().unwrap(),
            Placement::Unsure { below: 0.3 }
        );
        assert_eq!(
            "unsure:0.5".parse::<Placement>().unwrap(),
            Placement::Unsure { below: 0.5 }
        );
        assert_eq!(
            "gap:2".parse::<Placement>().unwrap(),
            Placement::Gap { nats: 2.0 }
        );
        for bad in [
            "",
            "random:1",
            "unsure:0",
            "unsure:1.5",
            "unsure:x",
            "gap:-1",
            "gap:nan",
            "wild",
        ] {
            assert!(bad.parse::<Placement>().is_err(), "{bad:?} parsed");
        }
        for p in [
            Placement::Random,
            Placement::Unsure { below: 0.25 },
            Placement::Gap { nats: 1.5 },
        ] {
            assert_eq!(p.to_string().parse::<Placement>().unwrap(), p);
        }
    }

    #[test]
    fn sites_rank_by_how_much_help_each_token_needs() {
        let ln = |p: f32| p.ln();
        // SLM probabilities of five solution tokens and the EOS.
        let slm = [ln(0.9), ln(0.05), ln(0.2), ln(0.5), ln(0.01), ln(0.001)];
        // Unsure below 0.3: tokens 4, 1, 2 (least likely first); the EOS (index 5) never.
        let unsure = Placement::Unsure { below: 0.3 };
        assert_eq!(unsure.rank_sites(&slm, None, 5), vec![4, 1, 2]);
        // Gap of at least 1 nat: token 2 (ln 0.9 - ln 0.2 = 1.5) before token 1 (ln 0.1 - ln
        // 0.05 = 0.69, too small) and token 4 (ln 0.5 - ln 0.01 = 3.9) first.
        let llm = [ln(0.95), ln(0.1), ln(0.9), ln(0.5), ln(0.5), ln(0.9)];
        let gap = Placement::Gap { nats: 1.0 };
        assert_eq!(gap.rank_sites(&slm, Some(&llm), 5), vec![4, 2]);
        // Without the LLM's log-probs a gap has no sites; random placement never ranks.
        assert!(gap.rank_sites(&slm, None, 5).is_empty());
        assert!(Placement::Random.rank_sites(&slm, Some(&llm), 5).is_empty());
        // Ties go by position.
        let flat = [ln(0.1); 4];
        assert_eq!(unsure.rank_sites(&flat, None, 4), vec![0, 1, 2, 3]);
    }

    #[test]
    fn call_counts_parse() {
        assert_eq!(
            "0-3".parse::<CallCount>().unwrap(),
            CallCount { min: 0, max: 3 }
        );
        assert_eq!(
            "2".parse::<CallCount>().unwrap(),
            CallCount { min: 2, max: 2 }
        );
        assert!("3-1".parse::<CallCount>().is_err());
        assert!("x".parse::<CallCount>().is_err());
    }

    #[test]
    fn gsm8k_solutions_become_boxed_without_calculator_notes() {
        let s =
            "She has 16 - 3 - 4 = <<16-3-4=9>>9 eggs.\nShe makes 9 * 2 = $<<9*2=18>>18.\n#### 18";
        assert_eq!(
            normalize_reference_solution(s),
            "She has 16 - 3 - 4 = 9 eggs.\nShe makes 9 * 2 = $18.\nThe final answer is \\boxed{18}."
        );
        let math = "So $x = \\boxed{5}$.";
        assert_eq!(normalize_reference_solution(math), math);
        // An unclosed note is text, not a note.
        assert_eq!(normalize_reference_solution("a << b"), "a << b");
    }
}
