//! relay-grader: answer extraction and math equivalence, in pure Rust.
//!
//! Two modes: `mathruler` (the reward grader used in training) and `verify` (the evaluation
//! grader, behaving like math-verify). Bounded work per answer; garbage in gives `false`.
