//! `relayllm report`: every run of one benchmark in one table and one plot of accuracy against
//! the LLM's share of response tokens, with the SLM-only and LLM-only runs as the two ends of
//! the random-router line (DESIGN.md, "Evaluation").
//!
//! Runs are read from their `summary.json`. The SLM and LLM baselines are the runs whose policy
//! is `slm-only` and `llm-only`; without them the gap columns say n/a and the plot has no
//! router line.

use crate::error::{EvalError, Result};
use crate::metrics::{cost_reduction, gap_recovered, random_router_accuracy, CostReduction};
use crate::runner::{write_atomic, SUMMARY_FILE};
use crate::summary::Summary;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The plot's text font: DejaVu Sans cut to ASCII and a few symbols (assets/make_font.sh), so
/// PNG text renders on any machine without system fonts.
pub(crate) const FONT: &[u8] = include_bytes!("../assets/DejaVuSans-subset.ttf");
pub(crate) const FONT_FAMILY: &str = "sans-serif";
const PLOT_SIZE: (u32, u32) = (900, 620);

/// One run as the report shows it.
#[derive(Debug, Clone)]
pub struct ReportRow {
    pub dir: PathBuf,
    pub label: String,
    pub summary: Summary,
    pub gap_recovered: Option<f64>,
    /// A random router's accuracy at this run's LLM token share.
    pub router_accuracy: Option<f64>,
    pub cost_reduction: CostReduction,
}

/// A finished report: the Markdown table and the plot in both formats.
#[derive(Debug, Clone)]
pub struct Report {
    pub markdown: String,
    pub svg: String,
    pub png: Vec<u8>,
    pub rows: Vec<ReportRow>,
}

/// Reads `DIR/summary.json`.
pub fn load_summary(dir: &Path) -> Result<Summary> {
    let path = dir.join(SUMMARY_FILE);
    let bytes = std::fs::read(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            EvalError::Report(format!("{} has no {SUMMARY_FILE}: is the run finished? (rerun `relayllm eval` with the same --out to finish it)", dir.display()))
        } else {
            EvalError::Io { path: path.clone(), source: e }
        }
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| EvalError::Report(format!("{}: not a summary: {e}", path.display())))
}

/// The report for the runs in `dirs`, which must all be on the same data file and problems.
pub fn report(dirs: &[PathBuf]) -> Result<Report> {
    let runs = dirs
        .iter()
        .map(|d| Ok((d.clone(), load_summary(d)?)))
        .collect::<Result<Vec<_>>>()?;
    report_from_summaries(runs)
}

/// As [`report`], from summaries already in memory.
pub fn report_from_summaries(runs: Vec<(PathBuf, Summary)>) -> Result<Report> {
    let Some((first_dir, first)) = runs.first().cloned() else {
        return Err(EvalError::Report("no runs given".into()));
    };
    for (dir, s) in &runs[1..] {
        if s.settings.data_sha256 != first.settings.data_sha256 {
            return Err(EvalError::Report(format!(
                "{} ran on {} but {} ran on {} (different file contents): report one benchmark at a time",
                first_dir.display(),
                first.settings.data,
                dir.display(),
                s.settings.data
            )));
        }
        if (s.selection.offset, s.n) != (first.selection.offset, first.n) {
            return Err(EvalError::Report(format!(
                "{} covers problems {}..{} but {} covers {}..{}: accuracies on different problems do not compare",
                first_dir.display(),
                first.selection.offset,
                first.selection.offset + first.n,
                dir.display(),
                s.selection.offset,
                s.selection.offset + s.n
            )));
        }
    }
    let slm = runs
        .iter()
        .find(|(_, s)| s.settings.policy == "slm-only")
        .map(|(_, s)| s.accuracy);
    let llm = runs
        .iter()
        .find(|(_, s)| s.settings.policy == "llm-only")
        .map(|(_, s)| s.accuracy);
    let mut rows: Vec<ReportRow> = runs
        .into_iter()
        .map(|(dir, summary)| {
            let (acc, ratio) = (summary.accuracy, summary.call_ratio);
            let (gap, router, cost) = match (slm, llm) {
                (Some(s), Some(l)) => (
                    gap_recovered(s, l, acc),
                    Some(random_router_accuracy(s, l, ratio)),
                    cost_reduction(s, l, acc, ratio),
                ),
                _ => (None, None, CostReduction::NoGap),
            };
            ReportRow {
                label: run_label(&summary),
                dir,
                summary,
                gap_recovered: gap,
                router_accuracy: router,
                cost_reduction: cost,
            }
        })
        .collect();
    rows.sort_by(|a, b| {
        let rank = |r: &ReportRow| match r.summary.settings.policy.as_str() {
            "slm-only" => 0,
            "llm-only" => 2,
            _ => 1,
        };
        rank(a)
            .cmp(&rank(b))
            .then(a.summary.call_ratio.total_cmp(&b.summary.call_ratio))
            .then(a.label.cmp(&b.label))
    });
    let markdown = markdown(&rows, slm, llm);
    let plot = PlotData::new(&rows, slm, llm, &first);
    let svg = render_svg(&plot)?;
    let png = render_png(&plot)?;
    Ok(Report {
        markdown,
        svg,
        png,
        rows,
    })
}

/// Writes report.md, plot.svg and plot.png into `out` (atomically); returns their paths.
pub fn write_report(report: &Report, out: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out).map_err(EvalError::io(out))?;
    let files = [
        ("report.md", report.markdown.as_bytes()),
        ("plot.svg", report.svg.as_bytes()),
        ("plot.png", report.png.as_slice()),
    ];
    files
        .iter()
        .map(|(name, bytes)| {
            let path = out.join(name);
            write_atomic(&path, bytes)?;
            Ok(path)
        })
        .collect()
}

/// `confidence τ=0.7`, `slm-only`.
fn run_label(s: &Summary) -> String {
    match s.settings.threshold {
        Some(t) => format!("{} τ={}", s.settings.policy, threshold_text(t)),
        None => s.settings.policy.clone(),
    }
}

/// Thresholds come from an f32 flag: show the shortest text of that f32 (0.4, not
/// 0.4000000059604645).
fn threshold_text(t: f64) -> String {
    (t as f32).to_string()
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

fn markdown(rows: &[ReportRow], slm: Option<f64>, llm: Option<f64>) -> String {
    let first = &rows[0].summary;
    let data_name = Path::new(&first.settings.data)
        .file_name()
        .map_or(first.settings.data.clone(), |n| {
            n.to_string_lossy().into_owned()
        });
    let k = rows.iter().map(|r| r.summary.samples).max().unwrap_or(1);
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# {data_name}: accuracy against the LLM's token share\n"
    );
    let _ = writeln!(
        md,
        "Data `{}` (sha256 {}…), problems {}..{} ({}), grader `{}`{}.\n",
        first.settings.data,
        &first.settings.data_sha256[..first.settings.data_sha256.len().min(12)],
        first.selection.offset,
        first.selection.offset + first.n,
        first.n,
        first.settings.grader,
        if k > 1 {
            format!(", accuracy is avg@k over up to {k} samples")
        } else {
            String::new()
        },
    );
    match (slm, llm) {
        (Some(s), Some(l)) => {
            let _ = writeln!(
                md,
                "SLM only: {}, LLM only: {} (gap {:+.1} points).\n",
                pct(s),
                pct(l),
                (l - s) * 100.0
            );
        }
        _ => {
            let _ = writeln!(
                md,
                "No `slm-only` and `llm-only` runs among these, so gap and cost columns are n/a.\n"
            );
        }
    }
    let _ = writeln!(md, "| run | policy | threshold | n | accuracy | LLM token share | gap recovered | random router at this share | cost reduction vs random router |");
    let _ = writeln!(md, "|---|---|---|---:|---:|---:|---:|---:|---|");
    for r in rows {
        let s = &r.summary;
        let dir = r.dir.file_name().map_or(r.dir.display().to_string(), |n| {
            n.to_string_lossy().into_owned()
        });
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            dir,
            s.settings.policy,
            s.settings.threshold.map_or("–".into(), threshold_text),
            s.n,
            pct(s.accuracy),
            pct(s.call_ratio),
            r.gap_recovered.map_or("n/a".into(), pct),
            r.router_accuracy.map_or("n/a".into(), pct),
            r.cost_reduction,
        );
    }
    let _ = writeln!(
        md,
        "\nLLM token share = Σ LLM tokens / Σ response tokens (the call ratio, micro-averaged). \
         Gap recovered = (relay − SLM) / (LLM − SLM). A random router that sends a share p of the \
         queries to the LLM scores SLM + p·(LLM − SLM); it matches the relay's accuracy at \
         p = gap recovered, so the cost reduction at equal accuracy is 1 − call ratio / p."
    );
    md
}

/// What the plot draws, in plot units (share in [0, 1], accuracy in percent).
struct PlotData {
    title: String,
    slm: Option<f64>,
    llm: Option<f64>,
    runs: Vec<(f64, f64, String)>,
}

impl PlotData {
    fn new(rows: &[ReportRow], slm: Option<f64>, llm: Option<f64>, first: &Summary) -> PlotData {
        let name = Path::new(&first.settings.data)
            .file_stem()
            .map_or("benchmark".into(), |n| n.to_string_lossy().into_owned());
        let runs = rows
            .iter()
            .filter(|r| !matches!(r.summary.settings.policy.as_str(), "slm-only" | "llm-only"))
            .map(|r| {
                (
                    r.summary.call_ratio,
                    r.summary.accuracy * 100.0,
                    r.label.clone(),
                )
            })
            .collect();
        PlotData {
            title: format!("{name} (n = {}): accuracy vs LLM token share", first.n),
            slm: slm.map(|a| a * 100.0),
            llm: llm.map(|a| a * 100.0),
            runs,
        }
    }

    fn y_range(&self) -> std::ops::Range<f64> {
        let ys: Vec<f64> = self
            .slm
            .iter()
            .chain(self.llm.iter())
            .copied()
            .chain(self.runs.iter().map(|r| r.1))
            .collect();
        let lo = ys.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = ys.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if !lo.is_finite() {
            return 0.0..100.0;
        }
        let pad = ((hi - lo) * 0.15).max(5.0);
        (lo - pad).max(0.0)..(hi + pad).min(100.0)
    }
}

pub(crate) fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // The font is compiled in and checked by the tests; failing here is a build defect.
        let _ = plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, FONT);
    });
}

fn render_svg(plot: &PlotData) -> Result<String> {
    register_font();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, PLOT_SIZE).into_drawing_area();
        draw(&root, plot).map_err(|e| EvalError::Plot(e.to_string()))?;
        root.present().map_err(|e| EvalError::Plot(e.to_string()))?;
    }
    Ok(svg)
}

fn render_png(plot: &PlotData) -> Result<Vec<u8>> {
    register_font();
    let (w, h) = PLOT_SIZE;
    let mut rgb = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, PLOT_SIZE).into_drawing_area();
        draw(&root, plot).map_err(|e| EvalError::Plot(e.to_string()))?;
        root.present().map_err(|e| EvalError::Plot(e.to_string()))?;
    }
    encode_png(&rgb, PLOT_SIZE)
}

/// An RGB buffer as PNG bytes.
pub(crate) fn encode_png(rgb: &[u8], (w, h): (u32, u32)) -> Result<Vec<u8>> {
    let mut png_bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut png_bytes, w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder
        .write_header()
        .map_err(|e| EvalError::Plot(e.to_string()))?;
    writer
        .write_image_data(rgb)
        .map_err(|e| EvalError::Plot(e.to_string()))?;
    writer
        .finish()
        .map_err(|e| EvalError::Plot(e.to_string()))?;
    Ok(png_bytes)
}

type DrawResult<DB> =
    std::result::Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, plot: &PlotData) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(root)
        .caption(&plot.title, (FONT_FAMILY, 22))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.02f64..1.02f64, plot.y_range())?;
    chart
        .configure_mesh()
        .x_desc("LLM share of response tokens")
        .y_desc("accuracy (%)")
        .x_label_formatter(&|x| format!("{:.0}%", x * 100.0))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style((FONT_FAMILY, 15))
        .axis_desc_style((FONT_FAMILY, 17))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;

    let grey = RGBColor(120, 120, 120);
    if let (Some(slm), Some(llm)) = (plot.slm, plot.llm) {
        chart
            .draw_series(DashedLineSeries::new(
                [(0.0, slm), (1.0, llm)],
                8,
                6,
                grey.stroke_width(2),
            ))?
            .label("random query router")
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], grey.stroke_width(2)));
    }
    let ends: Vec<(f64, f64, &str)> = plot
        .slm
        .map(|a| (0.0, a, "SLM only"))
        .into_iter()
        .chain(plot.llm.map(|a| (1.0, a, "LLM only")))
        .collect();
    if !ends.is_empty() {
        chart
            .draw_series(ends.iter().map(|&(x, y, _)| {
                Rectangle::new([(x - 0.008, y - 0.5), (x + 0.008, y + 0.5)], BLACK.filled())
            }))?
            .label("single model")
            .legend(|(x, y)| Rectangle::new([(x + 5, y - 4), (x + 13, y + 4)], BLACK.filled()));
        for &(x, y, name) in &ends {
            let anchor = if x < 0.5 {
                (x + 0.02, y)
            } else {
                (x - 0.13, y)
            };
            chart.draw_series(std::iter::once(Text::new(
                format!("{name} {y:.1}%"),
                anchor,
                (FONT_FAMILY, 15),
            )))?;
        }
    }
    let blue = RGBColor(31, 119, 180);
    if !plot.runs.is_empty() {
        chart
            .draw_series(
                plot.runs
                    .iter()
                    .map(|&(x, y, _)| Circle::new((x, y), 5, blue.filled())),
            )?
            .label("relay runs")
            .legend(move |(x, y)| Circle::new((x + 10, y), 5, blue.filled()));
        for (x, y, label) in &plot.runs {
            let text = format!("{label} ({y:.1}%)");
            chart.draw_series(std::iter::once(Text::new(
                text,
                (x + 0.012, *y + 0.4),
                (FONT_FAMILY, 14),
            )))?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(200, 200, 200))
        .label_font((FONT_FAMILY, 15))
        .draw()?;
    Ok(())
}
