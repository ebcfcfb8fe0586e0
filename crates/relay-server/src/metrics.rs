//! Counters for `/metrics`, written by hand in the Prometheus text format (few enough that a
//! registry crate would be more code than it saves).
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;

/// Upper bounds (seconds) of the time-to-first-token histogram.
const TTFT_BUCKETS: [f64; 8] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

#[derive(Default)]
pub struct Metrics {
    outcomes: Mutex<Vec<(String, u64)>>,
    pub slm_tokens: AtomicU64,
    pub llm_tokens: AtomicU64,
    pub calls: AtomicU64,
    pub call_errors: AtomicU64,
    pub queue_depth: AtomicUsize,
    pub running: AtomicUsize,
    ttft: Mutex<(Vec<u64>, f64, u64)>,
}

impl Metrics {
    /// One finished request, by outcome label (`ok`, `cancelled`, an error's kind, …).
    pub fn request(&self, outcome: &str) {
        let mut o = self.outcomes.lock().unwrap();
        match o.iter_mut().find(|(k, _)| k == outcome) {
            Some((_, n)) => *n += 1,
            None => o.push((outcome.to_string(), 1)),
        }
    }

    pub fn first_token(&self, seconds: f64) {
        let mut t = self.ttft.lock().unwrap();
        if t.0.is_empty() {
            t.0 = vec![0; TTFT_BUCKETS.len()];
        }
        for (i, b) in TTFT_BUCKETS.iter().enumerate() {
            if seconds <= *b {
                t.0[i] += 1;
            }
        }
        t.1 += seconds;
        t.2 += 1;
    }

    pub fn tokens(&self, trace: &relay_core::RelayTrace) {
        self.slm_tokens.fetch_add(trace.tokens.slm as u64, Relaxed);
        self.llm_tokens.fetch_add(trace.tokens.llm as u64, Relaxed);
        self.calls.fetch_add(
            trace.calls.iter().filter(|c| c.served > 0).count() as u64,
            Relaxed,
        );
        self.call_errors.fetch_add(
            trace.calls.iter().filter(|c| c.llm_error.is_some()).count() as u64,
            Relaxed,
        );
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        s.push_str("# HELP relay_requests_total Finished requests by outcome.\n# TYPE relay_requests_total counter\n");
        for (k, n) in self.outcomes.lock().unwrap().iter() {
            let _ = writeln!(s, "relay_requests_total{{outcome=\"{k}\"}} {n}");
        }
        let (slm, llm) = (self.slm_tokens.load(Relaxed), self.llm_tokens.load(Relaxed));
        s.push_str("# HELP relay_tokens_total Response tokens written, by model.\n# TYPE relay_tokens_total counter\n");
        let _ = writeln!(
            s,
            "relay_tokens_total{{model=\"slm\"}} {slm}\nrelay_tokens_total{{model=\"llm\"}} {llm}"
        );
        s.push_str("# HELP relay_calls_total LLM calls that served tokens.\n# TYPE relay_calls_total counter\n");
        let _ = writeln!(s, "relay_calls_total {}", self.calls.load(Relaxed));
        s.push_str("# HELP relay_call_errors_total LLM calls that failed.\n# TYPE relay_call_errors_total counter\n");
        let _ = writeln!(
            s,
            "relay_call_errors_total {}",
            self.call_errors.load(Relaxed)
        );
        let ratio = if slm + llm == 0 {
            0.0
        } else {
            llm as f64 / (slm + llm) as f64
        };
        s.push_str("# HELP relay_call_ratio LLM tokens / response tokens since start.\n# TYPE relay_call_ratio gauge\n");
        let _ = writeln!(s, "relay_call_ratio {ratio}");
        s.push_str("# HELP relay_queue_depth Requests waiting for a slot.\n# TYPE relay_queue_depth gauge\n");
        let _ = writeln!(s, "relay_queue_depth {}", self.queue_depth.load(Relaxed));
        s.push_str("# HELP relay_running Requests decoding now.\n# TYPE relay_running gauge\n");
        let _ = writeln!(s, "relay_running {}", self.running.load(Relaxed));
        s.push_str("# HELP relay_time_to_first_token_seconds Time to first streamed token.\n# TYPE relay_time_to_first_token_seconds histogram\n");
        let t = self.ttft.lock().unwrap();
        for (i, b) in TTFT_BUCKETS.iter().enumerate() {
            let _ = writeln!(
                s,
                "relay_time_to_first_token_seconds_bucket{{le=\"{b}\"}} {}",
                t.0.get(i).copied().unwrap_or(0)
            );
        }
        let _ = writeln!(
            s,
            "relay_time_to_first_token_seconds_bucket{{le=\"+Inf\"}} {}",
            t.2
        );
        let _ = writeln!(
            s,
            "relay_time_to_first_token_seconds_sum {}\nrelay_time_to_first_token_seconds_count {}",
            t.1, t.2
        );
        s
    }
}
