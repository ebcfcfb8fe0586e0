//! relay-eval: datasets, the eval runner (resumable, per-problem JSONL), metrics (accuracy,
//! call ratio, gap recovered, cost against a random router), reports and plots.
//!
//! Not built yet: see the evaluation issue.
