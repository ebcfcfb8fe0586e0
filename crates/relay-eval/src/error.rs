//! The crate's one error type. Each variant says what was expected and what came instead,
//! and carries a short machine label ([`EvalError::label`]) for logs.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A dataset line that is not a `{problem, answer}` record.
    #[error("{path}:{line}: {reason}", path = path.display())]
    Dataset {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("{path}: {source}", path = path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `OUT/run.json` was written by a run with other settings.
    #[error(
        "{path} belongs to a run with different settings:\n{diff}\n\
         results of different settings must not be mixed: pass another --out, \
         or delete that folder to start over",
        path = path.display()
    )]
    SettingsMismatch { path: PathBuf, diff: String },
    /// A results line other than the last one is not valid JSON (the last one may be a torn
    /// write and is redone instead).
    #[error("{path}:{line}: corrupt results line: {reason}; fix or remove that line and rerun", path = path.display())]
    CorruptResults {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    /// An output file that holds results already, written without asking to resume.
    #[error(
        "{path} already exists: pass --resume to continue it (with the same settings), \
         or choose another output file",
        path = path.display()
    )]
    OutputExists { path: PathBuf },
    /// An output file to resume whose settings file is missing, so nothing says what wrote it.
    #[error(
        "{path} exists but {run} does not: nothing says which settings wrote it, so it \
         cannot be resumed; choose another output file, or move it away to start over",
        path = path.display(),
        run = run.display()
    )]
    MissingRunFile { path: PathBuf, run: PathBuf },
    /// Options that cannot run (no samples, an output that is the input, ...).
    #[error("{0}")]
    Options(String),
    #[error("offset {offset} selects nothing: {path} has {len} problems", path = path.display())]
    EmptySelection {
        path: PathBuf,
        offset: usize,
        len: usize,
    },
    /// The solver failed on one item; the run stops, what was finished is kept.
    #[error("solving problem {index} (sample {sample}) failed: {message}")]
    Solver {
        index: usize,
        sample: usize,
        message: String,
    },
    #[error("the solver panicked on problem {index} (sample {sample}): {message}")]
    SolverPanic {
        index: usize,
        sample: usize,
        message: String,
    },
    /// Runs that cannot share one report.
    #[error("cannot report these runs together: {0}")]
    Report(String),
    #[error("drawing the plot failed: {0}")]
    Plot(String),
    /// A record in the benchmark source data that does not have the expected shape.
    #[error("{source_name}, record {record}: {reason}")]
    Convert {
        source_name: String,
        record: usize,
        reason: String,
    },
    #[error(transparent)]
    Fetch(#[from] relay_engine::fetch::FetchError),
}

impl EvalError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> EvalError {
        let path = path.into();
        move |source| EvalError::Io { path, source }
    }

    /// A short, stable label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            EvalError::Dataset { .. } => "dataset",
            EvalError::Io { .. } => "io",
            EvalError::SettingsMismatch { .. } => "settings_mismatch",
            EvalError::CorruptResults { .. } => "corrupt_results",
            EvalError::EmptySelection { .. } => "empty_selection",
            EvalError::OutputExists { .. } => "output_exists",
            EvalError::MissingRunFile { .. } => "missing_run_file",
            EvalError::Options(_) => "options",
            EvalError::Solver { .. } => "solver",
            EvalError::SolverPanic { .. } => "solver_panic",
            EvalError::Report(_) => "report",
            EvalError::Plot(_) => "plot",
            EvalError::Convert { .. } => "convert",
            EvalError::Fetch(_) => "fetch",
        }
    }
}

pub type Result<T, E = EvalError> = std::result::Result<T, E>;
