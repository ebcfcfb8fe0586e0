//! `OUT/summary.json`: a run's numbers, computed from its result lines alone, so a resumed run
//! and an uninterrupted one give the same summary (apart from `timing`).

use crate::metrics::call_ratio;
use crate::results::ResultLine;
use crate::runner::{RunSettings, Selection};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Token totals over a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenTotals {
    pub slm: u64,
    pub llm: u64,
    /// slm + llm: all response tokens.
    pub response: u64,
}

/// The call tags the SLM wrote, read from the traces: how well it has learned the command.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct TagStats {
    /// Well-formed commands: served or failed calls, `n = 0`, and calls past the limit.
    pub parsed: u64,
    /// Tag-shaped text that is not a command (`<call></call>`, `<call>x</call>`, ...).
    pub malformed: u64,
    /// parsed / (parsed + malformed); 1 when no tag was written.
    pub parse_rate: f64,
}

impl TagStats {
    fn add_trace(&mut self, trace: &serde_json::Value) {
        let n = |k: &str| trace.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
        let tagged = trace
            .get("calls")
            .and_then(|c| c.as_array())
            .map_or(0, |calls| {
                calls
                    .iter()
                    .filter(|c| c.get("tag_start").is_some())
                    .count() as u64
            });
        self.parsed += tagged + n("zero_n_tags") + n("ignored_calls");
        self.malformed += n("malformed_tags");
    }

    fn finish(&mut self) {
        let all = self.parsed + self.malformed;
        self.parse_rate = if all == 0 {
            1.0
        } else {
            self.parsed as f64 / all as f64
        };
    }
}

/// How long the run took. The only part of a summary that differs between a resumed run and an
/// uninterrupted one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    /// Wall time of the invocation that wrote this summary.
    pub wall_s: f64,
    /// Σ per-item solve time over all counted items, whichever invocation solved them.
    pub solve_s: f64,
    /// Items solved by this invocation.
    pub items_run: usize,
    /// Items found done in results.jsonl and reused.
    pub items_resumed: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Problems selected.
    pub n: usize,
    /// Samples per problem (k).
    pub samples: usize,
    /// Result lines counted (n · k for a finished run).
    pub results: usize,
    /// Fraction correct; with k > 1 this is avg@k, the mean over samples of each sample's
    /// accuracy.
    pub accuracy: f64,
    /// Fraction of problems with at least one correct sample (equals `accuracy` when k = 1).
    pub pass_at_k: f64,
    /// Accuracy of each sample index 0..k.
    pub sample_accuracy: Vec<f64>,
    /// Σ LLM tokens / Σ response tokens over all counted items (micro-average).
    pub call_ratio: f64,
    pub tokens: TokenTotals,
    /// LLM calls, summed.
    pub calls: u64,
    /// Mean response length in tokens.
    pub mean_response_tokens: f64,
    /// Call tags written by the SLM (absent in summaries written before it was counted).
    #[serde(default)]
    pub tags: TagStats,
    /// Answers with at least one failed LLM call (the SLM wrote on alone there); `eval
    /// --redo-llm-errors` solves them again. Absent in summaries written before it was counted.
    #[serde(default)]
    pub llm_errors: u64,
    pub settings: RunSettings,
    pub selection: Selection,
    pub timing: Timing,
}

/// Summarises the lines whose problem index is in `indices` and whose sample is below
/// `selection.samples`; other lines (from a wider earlier selection) are left out.
pub fn summarize(
    settings: &RunSettings,
    selection: &Selection,
    indices: &[usize],
    lines: &[ResultLine],
    timing: Timing,
) -> Summary {
    let k = selection.samples.max(1);
    let wanted: std::collections::BTreeSet<usize> = indices.iter().copied().collect();
    // One line per key: the first one wins, as in the runner.
    let mut by_key: BTreeMap<(usize, usize), &ResultLine> = BTreeMap::new();
    for line in lines
        .iter()
        .filter(|l| wanted.contains(&l.index) && l.sample < k)
    {
        by_key.entry(line.key()).or_insert(line);
    }
    let mut per_sample_total = vec![0u64; k];
    let mut per_sample_correct = vec![0u64; k];
    let mut any_correct: BTreeMap<usize, bool> = BTreeMap::new();
    let mut tokens = TokenTotals::default();
    let mut calls = 0u64;
    let mut tags = TagStats::default();
    let mut solve_ms = 0.0;
    let mut llm_errors = 0u64;
    for line in by_key.values() {
        llm_errors += (line.failed_llm_calls() > 0) as u64;
        per_sample_total[line.sample] += 1;
        per_sample_correct[line.sample] += line.correct as u64;
        *any_correct.entry(line.index).or_default() |= line.correct;
        tokens.slm += line.slm_tokens as u64;
        tokens.llm += line.llm_tokens as u64;
        calls += line.calls as u64;
        tags.add_trace(&line.trace);
        solve_ms += line.wall_ms;
    }
    tokens.response = tokens.slm + tokens.llm;
    let sample_accuracy: Vec<f64> = per_sample_total
        .iter()
        .zip(&per_sample_correct)
        .map(|(&t, &c)| if t == 0 { 0.0 } else { c as f64 / t as f64 })
        .collect();
    let sampled: Vec<f64> = sample_accuracy
        .iter()
        .zip(&per_sample_total)
        .filter(|(_, &t)| t > 0)
        .map(|(&a, _)| a)
        .collect();
    let accuracy = if sampled.is_empty() {
        0.0
    } else {
        sampled.iter().sum::<f64>() / sampled.len() as f64
    };
    let pass_at_k = if any_correct.is_empty() {
        0.0
    } else {
        any_correct.values().filter(|&&c| c).count() as f64 / any_correct.len() as f64
    };
    let results = by_key.len();
    tags.finish();
    Summary {
        n: indices.len(),
        samples: k,
        results,
        accuracy,
        pass_at_k,
        sample_accuracy,
        call_ratio: call_ratio(tokens.llm, tokens.response),
        tokens,
        calls,
        mean_response_tokens: if results == 0 {
            0.0
        } else {
            tokens.response as f64 / results as f64
        },
        tags,
        llm_errors,
        settings: settings.clone(),
        selection: selection.clone(),
        timing: Timing {
            solve_s: solve_ms / 1000.0,
            ..timing
        },
    }
}

#[cfg(test)]
mod tag_tests {
    use super::TagStats;
    use serde_json::json;

    #[test]
    fn tags_count_commands_zero_n_ignored_and_malformed_but_not_tagless_calls() {
        let mut t = TagStats::default();
        t.add_trace(&json!({
            "calls": [{"at": 3, "tag_start": 1, "requested_n": 4, "served": 4},
                      {"at": 9, "requested_n": 16, "served": 16}],
            "zero_n_tags": 1, "ignored_calls": 1, "malformed_tags": 1
        }));
        t.add_trace(&json!(null));
        t.finish();
        assert_eq!((t.parsed, t.malformed), (3, 1));
        assert!((t.parse_rate - 0.75).abs() < 1e-12);
        let mut none = TagStats::default();
        none.finish();
        assert_eq!(none.parse_rate, 1.0);
    }
}
