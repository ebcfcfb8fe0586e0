//! Progress of a long run on stderr, shared by the eval runner and the pool filter so both
//! look alike: a bar with ETA on a terminal; elsewhere (a log file, `--no-progress`) plain
//! lines, one per tenth of the work, so a long run in the background still says where it is.

use indicatif::{ProgressBar, ProgressStyle};
use std::time::Instant;

pub(crate) struct Progress {
    bar: ProgressBar,
    total: usize,
    unit: &'static str,
    started: Instant,
    logged_tenths: usize,
}

impl Progress {
    /// `total` units of work, named `unit` (plural) in the bar and the log lines.
    pub(crate) fn new(show: bool, total: usize, unit: &'static str) -> Progress {
        let bar = if show {
            ProgressBar::new(total as u64)
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template(&format!(
                "{{bar:30}} {{pos}}/{{len}} {unit}  {{elapsed_precise}} elapsed, ETA {{eta_precise}}  {{msg}}"
            ))
            .expect("static template")
            .progress_chars("##-"),
        );
        Progress {
            bar,
            total,
            unit,
            started: Instant::now(),
            logged_tenths: 0,
        }
    }

    pub(crate) fn println(&self, line: String) {
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }

    /// One more unit done, `done` of them so far in this invocation; `message` says how it
    /// goes (accuracy, problems kept).
    pub(crate) fn inc(&mut self, done: usize, message: String) {
        self.bar.inc(1);
        let tenths = done * 10 / self.total.max(1);
        if self.bar.is_hidden() && tenths > self.logged_tenths {
            self.logged_tenths = tenths;
            let elapsed = self.started.elapsed().as_secs_f64();
            let eta = elapsed / done as f64 * (self.total - done.min(self.total)) as f64;
            eprintln!(
                "{done}/{} {}, {message}, {elapsed:.0}s elapsed, ETA {eta:.0}s",
                self.total, self.unit
            );
        }
        self.bar.set_message(message);
    }

    pub(crate) fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
