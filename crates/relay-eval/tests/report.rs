//! Reports: the table's numbers, a well-formed SVG, a real PNG with drawn text, and refusal
//! to mix benchmarks.

mod common;

use common::*;
use relay_eval::report::{report_from_summaries, write_report};
use relay_eval::{
    report, run, CostReduction, Dataset, Problem, Solution, SolveError, Solver, Summary,
};
use std::path::{Path, PathBuf};

/// Right on problems below `right` (out of 10); writes `llm_share` of 100 tokens by the LLM.
struct Fixed {
    right: usize,
    llm_share: f64,
}

impl Solver for Fixed {
    fn solve(&self, p: &Problem, _: usize) -> Result<Solution, SolveError> {
        let answer = if p.index < self.right {
            p.answer.clone()
        } else {
            "-1".into()
        };
        let llm = (self.llm_share * 100.0).round() as usize;
        Ok(Solution {
            text: format!("\\boxed{{{answer}}}"),
            slm_tokens: 100 - llm,
            llm_tokens: llm,
            ..Default::default()
        })
    }
}

fn run_policy(
    dir: &Path,
    ds: &Dataset,
    policy: &str,
    threshold: Option<f64>,
    solver: Fixed,
) -> (PathBuf, Summary) {
    let out = dir.join(match threshold {
        Some(t) => format!("{policy}-{t}"),
        None => policy.to_string(),
    });
    let mut s = settings(ds);
    s.policy = policy.into();
    s.threshold = threshold;
    let summary = run(ds, &solver, &s, &options(&out, None, 1, 1)).unwrap();
    (out, summary)
}

/// SLM 30%, LLM 70%, and two relay runs: 50% at 10% LLM share, 60% at 40%.
fn four_runs(dir: &Path) -> Vec<PathBuf> {
    let ds = Dataset::load(write_dataset(dir, 10)).unwrap();
    vec![
        run_policy(
            dir,
            &ds,
            "confidence",
            Some(0.9),
            Fixed {
                right: 6,
                llm_share: 0.4,
            },
        )
        .0,
        run_policy(
            dir,
            &ds,
            "llm-only",
            None,
            Fixed {
                right: 7,
                llm_share: 1.0,
            },
        )
        .0,
        run_policy(
            dir,
            &ds,
            "slm-only",
            None,
            Fixed {
                right: 3,
                llm_share: 0.0,
            },
        )
        .0,
        run_policy(
            dir,
            &ds,
            "confidence",
            Some(0.5),
            Fixed {
                right: 5,
                llm_share: 0.1,
            },
        )
        .0,
    ]
}

#[test]
fn table_has_gap_recovered_and_cost_reduction() {
    let tmp = tempfile::tempdir().unwrap();
    let r = report(&four_runs(tmp.path())).unwrap();
    let policies: Vec<_> = r.rows.iter().map(|row| row.label.as_str()).collect();
    assert_eq!(
        policies,
        vec![
            "slm-only",
            "confidence τ=0.5",
            "confidence τ=0.9",
            "llm-only"
        ],
        "SLM, relay runs by share, LLM"
    );
    let half = &r.rows[1];
    assert!((half.gap_recovered.unwrap() - 0.5).abs() < 1e-9);
    assert!(
        (half.router_accuracy.unwrap() - 0.34).abs() < 1e-9,
        "router at 10% share: 30 + 0.1·40"
    );
    match half.cost_reduction {
        CostReduction::Reduction(v) => assert!((v - 0.8).abs() < 1e-9, "1 − 0.1/0.5, got {v}"),
        other => panic!("{other:?}"),
    }
    let md = &r.markdown;
    assert!(
        md.contains(
            "| confidence-0.5 | confidence | 0.5 | 10 | 50.0% | 10.0% | 50.0% | 34.0% | 80.0% |"
        ),
        "{md}"
    );
    assert!(
        md.contains(
            "| confidence-0.9 | confidence | 0.9 | 10 | 60.0% | 40.0% | 75.0% | 46.0% | 46.7% |"
        ),
        "{md}"
    );
    assert!(md.contains("SLM only: 30.0%, LLM only: 70.0%"), "{md}");
    assert!(
        md.contains(
            "| slm-only | slm-only | – | 10 | 30.0% | 0.0% | 0.0% | 30.0% | n/a (not above SLM) |"
        ),
        "{md}"
    );
}

#[test]
fn without_baselines_the_gap_columns_are_na() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs = four_runs(tmp.path());
    let relay_only: Vec<PathBuf> = dirs
        .into_iter()
        .filter(|d| d.to_string_lossy().contains("confidence"))
        .collect();
    let r = report(&relay_only).unwrap();
    assert!(r
        .rows
        .iter()
        .all(|row| row.gap_recovered.is_none() && row.cost_reduction == CostReduction::NoGap));
    assert!(r.markdown.contains("n/a"));
    assert!(r.svg.contains("</svg>"));
}

#[test]
fn svg_is_well_formed_and_labels_every_point() {
    let tmp = tempfile::tempdir().unwrap();
    let r = report(&four_runs(tmp.path())).unwrap();
    let svg = r.svg.trim();
    assert!(
        svg.starts_with("<svg") && svg.ends_with("</svg>"),
        "{}",
        &svg[..200.min(svg.len())]
    );
    // Balanced tags: every opened element is closed or self-closing.
    let opened =
        svg.matches('<').count() - svg.matches("</").count() * 2 - svg.matches("/>").count();
    assert_eq!(opened, 0, "unbalanced tags");
    for text in [
        "confidence τ=0.5 (50.0%)",
        "confidence τ=0.9 (60.0%)",
        "SLM only 30.0%",
        "LLM only 70.0%",
        "random query router",
        "LLM share of response tokens",
        "accuracy (%)",
    ] {
        assert!(svg.contains(text), "missing label {text:?}");
    }
    assert!(
        svg.contains("stroke-dasharray")
            || svg.matches("<line").count() + svg.matches("<polyline").count() > 5
    );
}

#[test]
fn png_is_a_png_with_text_drawn() {
    let tmp = tempfile::tempdir().unwrap();
    let r = report(&four_runs(tmp.path())).unwrap();
    assert_eq!(&r.png[..8], b"\x89PNG\r\n\x1a\n");
    let decoder = png::Decoder::new(std::io::Cursor::new(&r.png));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (900, 620));
    // The caption sits in the top band, above the chart: dark pixels there are drawn glyphs,
    // so the compiled-in font rendered.
    let row_bytes = info.width as usize * 3;
    let caption_band = &buf[5 * row_bytes..40 * row_bytes];
    let dark = caption_band
        .chunks(3)
        .filter(|px| px.iter().all(|&c| c < 100))
        .count();
    assert!(
        dark > 200,
        "only {dark} dark pixels where the caption should be"
    );
    // And the run points are drawn in blue.
    let blue = buf.chunks(3).filter(|px| px == &[31, 119, 180]).count();
    assert!(blue > 50, "{blue} blue pixels");
}

#[test]
fn write_report_writes_the_three_files() {
    let tmp = tempfile::tempdir().unwrap();
    let r = report(&four_runs(tmp.path())).unwrap();
    let out = tmp.path().join("report");
    let files = write_report(&r, &out).unwrap();
    assert_eq!(files.len(), 3);
    assert_eq!(
        std::fs::read_to_string(out.join("report.md")).unwrap(),
        r.markdown
    );
    assert_eq!(std::fs::read(out.join("plot.png")).unwrap(), r.png);
    assert_eq!(
        std::fs::read_to_string(out.join("plot.svg")).unwrap(),
        r.svg
    );
}

#[test]
fn runs_on_different_benchmarks_or_problems_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let ds_a = Dataset::load(write_dataset(&a, 10)).unwrap();
    let ds_b = Dataset::load(write_dataset(&b, 11)).unwrap();
    let one = run_policy(
        &a,
        &ds_a,
        "slm-only",
        None,
        Fixed {
            right: 3,
            llm_share: 0.0,
        },
    );
    let other = run_policy(
        &b,
        &ds_b,
        "llm-only",
        None,
        Fixed {
            right: 7,
            llm_share: 1.0,
        },
    );
    let err = report_from_summaries(vec![one.clone(), other]).unwrap_err();
    assert!(err.to_string().contains("different file contents"), "{err}");

    let mut fewer = one.1.clone();
    fewer.n = 5;
    let err = report_from_summaries(vec![one, (a.join("x"), fewer)]).unwrap_err();
    assert!(err.to_string().contains("different problems"), "{err}");
}

#[test]
fn an_unfinished_run_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let err = report(&[tmp.path().to_path_buf()]).unwrap_err();
    assert!(err.to_string().contains("no summary.json"), "{err}");
}

/// Writes the sample report to $RELAY_EVAL_REPORT_DIR for a look by eye.
#[test]
#[ignore = "writes a sample report for inspection"]
fn sample_report_for_inspection() {
    let Some(dir) = std::env::var_os("RELAY_EVAL_REPORT_DIR") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let r = report(&four_runs(tmp.path())).unwrap();
    write_report(&r, Path::new(&dir)).unwrap();
}
