//! Training curves: `relayllm report` on a training folder plots its step log — GRPO's
//! `grpo_log.jsonl` (reward, accuracy, call rate, call ratio, KL) or SFT's `train_log.jsonl`
//! (loss) — and writes `curves.md`, `curves.svg`, `curves.png` next to it.

use crate::error::{EvalError, Result};
use crate::report::{encode_png, register_font, FONT_FAMILY};
use crate::runner::write_atomic;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

pub const GRPO_LOG: &str = "grpo_log.jsonl";
pub const SFT_LOG: &str = "train_log.jsonl";
const SIZE: (u32, u32) = (1000, 700);

/// Series drawn for each kind of log: (field, panel title).
const GRPO_SERIES: [(&str, &str); 5] = [
    ("reward_mean", "mean reward"),
    ("accuracy", "accuracy"),
    ("call_rate", "rollouts with a call"),
    ("call_ratio", "LLM token share"),
    ("kl", "KL to start (k3)"),
];
const SFT_SERIES: [(&str, &str); 2] = [("loss", "loss"), ("lr", "learning rate")];

/// Whether `dir` holds a training log `report` can plot.
pub fn is_training_dir(dir: &Path) -> bool {
    dir.join(GRPO_LOG).is_file() || dir.join(SFT_LOG).is_file()
}

pub struct Curves {
    pub markdown: String,
    pub svg: String,
    pub png: Vec<u8>,
    /// (field, points) drawn.
    pub series: Vec<(String, Vec<(f64, f64)>)>,
}

/// Reads the log in `dir` and draws its curves.
pub fn training_curves(dir: &Path) -> Result<Curves> {
    let (file, wanted): (&str, &[(&str, &str)]) = if dir.join(GRPO_LOG).is_file() {
        (GRPO_LOG, &GRPO_SERIES)
    } else {
        (SFT_LOG, &SFT_SERIES)
    };
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path).map_err(EvalError::io(&path))?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(v) => rows.push(v),
            // A torn last line of a run still writing is skipped; anything else is an error.
            Err(_) if i + 1 == text.lines().count() => {}
            Err(e) => {
                return Err(EvalError::Plot(format!(
                    "{}:{}: not JSON: {e}",
                    path.display(),
                    i + 1
                )))
            }
        }
    }
    if rows.is_empty() {
        return Err(EvalError::Plot(format!(
            "{} has no steps yet",
            path.display()
        )));
    }
    let step_of = |i: usize, r: &serde_json::Value| {
        r.get("step").and_then(|s| s.as_f64()).unwrap_or(i as f64)
    };
    let series: Vec<(String, Vec<(f64, f64)>)> = wanted
        .iter()
        .filter_map(|(field, _)| {
            let pts: Vec<(f64, f64)> = rows
                .iter()
                .enumerate()
                .filter_map(|(i, r)| Some((step_of(i, r), r.get(*field)?.as_f64()?)))
                .filter(|(_, y)| y.is_finite())
                .collect();
            (!pts.is_empty()).then(|| (field.to_string(), pts))
        })
        .collect();
    let titles: Vec<(String, String, Vec<(f64, f64)>)> = series
        .iter()
        .map(|(f, pts)| {
            let title = wanted
                .iter()
                .find(|(w, _)| w == f)
                .map_or(f.clone(), |(_, t)| t.to_string());
            (f.clone(), title, pts.clone())
        })
        .collect();
    let name = dir
        .file_name()
        .map_or("training".into(), |n| n.to_string_lossy().into_owned());
    let svg = render_svg(&name, &titles)?;
    let png = render_png(&name, &titles)?;
    let markdown = markdown(&name, file, &rows, &series);
    Ok(Curves {
        markdown,
        svg,
        png,
        series,
    })
}

/// Writes curves.md, curves.svg and curves.png into `dir`.
pub fn write_curves(curves: &Curves, dir: &Path) -> Result<Vec<PathBuf>> {
    [
        ("curves.md", curves.markdown.as_bytes()),
        ("curves.svg", curves.svg.as_bytes()),
        ("curves.png", curves.png.as_slice()),
    ]
    .iter()
    .map(|(n, b)| {
        let p = dir.join(n);
        write_atomic(&p, b)?;
        Ok(p)
    })
    .collect()
}

fn markdown(
    name: &str,
    file: &str,
    rows: &[serde_json::Value],
    series: &[(String, Vec<(f64, f64)>)],
) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# {name}: {} steps of `{file}`\n", rows.len());
    let _ = writeln!(md, "| series | first | last | min | max |");
    let _ = writeln!(md, "|---|---:|---:|---:|---:|");
    for (field, pts) in series {
        let ys: Vec<f64> = pts.iter().map(|p| p.1).collect();
        let lo = ys.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = ys.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let _ = writeln!(
            md,
            "| {field} | {} | {} | {} | {} |",
            num(ys[0]),
            num(ys[ys.len() - 1]),
            num(lo),
            num(hi)
        );
    }
    md
}

/// Four decimals, or scientific notation for small magnitudes (learning rates).
fn num(x: f64) -> String {
    if x != 0.0 && x.abs() < 1e-3 {
        format!("{x:.2e}")
    } else {
        format!("{x:.4}")
    }
}

type Panels = [(String, String, Vec<(f64, f64)>)];

fn render_svg(name: &str, panels: &Panels) -> Result<String> {
    register_font();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        draw(&root, name, panels).map_err(|e| EvalError::Plot(e.to_string()))?;
        root.present().map_err(|e| EvalError::Plot(e.to_string()))?;
    }
    Ok(svg)
}

fn render_png(name: &str, panels: &Panels) -> Result<Vec<u8>> {
    register_font();
    let mut rgb = vec![0u8; (SIZE.0 * SIZE.1 * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, SIZE).into_drawing_area();
        draw(&root, name, panels).map_err(|e| EvalError::Plot(e.to_string()))?;
        root.present().map_err(|e| EvalError::Plot(e.to_string()))?;
    }
    encode_png(&rgb, SIZE)
}

type DrawResult<DB> =
    std::result::Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    name: &str,
    panels: &Panels,
) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    let root = root.titled(&format!("{name}: training curves"), (FONT_FAMILY, 22))?;
    let cols = if panels.len() > 2 {
        3
    } else {
        panels.len().max(1)
    };
    let rows = panels.len().div_ceil(cols).max(1);
    let areas = root.split_evenly((rows, cols));
    let blue = RGBColor(31, 119, 180);
    for ((_, title, pts), area) in panels.iter().zip(areas.iter()) {
        let x0 = pts.first().map_or(0.0, |p| p.0);
        let x1 = pts.last().map_or(1.0, |p| p.0).max(x0 + 1.0);
        let lo = pts.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
        let hi = pts.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
        let pad = ((hi - lo) * 0.1).max(1e-3);
        let mut chart = ChartBuilder::on(area)
            .caption(title, (FONT_FAMILY, 17))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(55)
            .build_cartesian_2d(x0..x1, (lo - pad)..(hi + pad))?;
        chart
            .configure_mesh()
            .x_desc("step")
            // Steps are whole numbers; at most ~8 labels, none repeated.
            .x_labels(((x1 - x0) as usize + 1).min(8))
            .x_label_formatter(&|x| format!("{:.0}", x))
            .y_label_formatter(&|y| {
                let s = format!("{:.3}", y);
                let s = s.trim_end_matches('0').trim_end_matches('.');
                if s == "-0" {
                    "0".to_string()
                } else {
                    s.to_string()
                }
            })
            .label_style((FONT_FAMILY, 12))
            .axis_desc_style((FONT_FAMILY, 13))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()?;
        chart.draw_series(LineSeries::new(pts.iter().copied(), blue.stroke_width(2)))?;
        if pts.len() <= 60 {
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, blue.filled())))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpo_logs_become_curves_and_a_torn_tail_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = String::new();
        for s in 0..5 {
            log.push_str(&format!(
                "{{\"step\":{s},\"reward_mean\":{},\"accuracy\":0.5,\"call_rate\":0.2,\"call_ratio\":0.05,\"kl\":0.0}}\n",
                s as f64 * 0.1
            ));
        }
        log.push_str("{\"step\":5,\"rew");
        std::fs::write(dir.path().join(GRPO_LOG), log).unwrap();
        assert!(is_training_dir(dir.path()));
        let c = training_curves(dir.path()).unwrap();
        let reward = &c.series.iter().find(|s| s.0 == "reward_mean").unwrap().1;
        assert_eq!(reward.len(), 5);
        assert!((reward[4].1 - 0.4).abs() < 1e-9);
        assert!(c.svg.contains("mean reward") && c.png.starts_with(b"\x89PNG"));
        assert!(
            c.markdown.contains("| reward_mean | 0.0000 | 0.4000 |"),
            "{}",
            c.markdown
        );
        let files = write_curves(&c, dir.path()).unwrap();
        assert!(files.iter().all(|f| f.exists()));
    }

    #[test]
    fn a_broken_line_in_the_middle_is_an_error_and_an_empty_log_says_so() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(SFT_LOG),
            "{\"step\":0,\"loss\":1}\nnope\n{\"step\":1,\"loss\":0.5}\n",
        )
        .unwrap();
        let err = training_curves(dir.path()).err().unwrap().to_string();
        assert!(err.contains("train_log.jsonl:2"), "{err}");
        std::fs::write(dir.path().join(SFT_LOG), "").unwrap();
        let err = training_curves(dir.path()).err().unwrap().to_string();
        assert!(err.contains("no steps"), "{err}");
    }
}
