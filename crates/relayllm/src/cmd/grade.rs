//! `relayllm grade`: is a prediction right? The grader of relay-grader, from the shell.
use anyhow::{bail, Context, Result};
use clap::Args;
use relay_grader::{grade, GradeMode};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;

#[derive(Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["pred", "jsonl"])))]
pub struct GradeArgs {
    /// `verify` (evaluation, behaves like math-verify) or `mathruler` (the training reward's).
    #[arg(long, default_value = "verify")]
    pub mode: GradeMode,
    /// The reference answer (with --pred).
    #[arg(long, requires = "pred")]
    pub gold: Option<String>,
    /// A model's response or bare answer; prints `true` or `false`.
    #[arg(long, requires = "gold")]
    pub pred: Option<String>,
    /// A JSONL file (or `-` for stdin) of {"gold", "pred", ...} lines: each is written back to
    /// stdout with "correct" added, other fields kept.
    #[arg(long)]
    pub jsonl: Option<PathBuf>,
}

pub fn run(args: GradeArgs) -> Result<()> {
    if let (Some(gold), Some(pred)) = (&args.gold, &args.pred) {
        println!("{}", grade(args.mode, gold, pred));
        return Ok(());
    }
    let path = args.jsonl.expect("clap requires --pred or --jsonl");
    let reader: Box<dyn BufRead> = if path.as_os_str() == "-" {
        Box::new(BufReader::new(std::io::stdin()))
    } else {
        Box::new(BufReader::new(
            std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?,
        ))
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (i, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("reading line {}", i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let mut value: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&line)
            .with_context(|| format!("line {}: not a JSON object", i + 1))?;
        let field = |name: &str| -> Result<String> {
            match value.get(name) {
                Some(serde_json::Value::String(s)) => Ok(s.clone()),
                Some(serde_json::Value::Number(n)) => Ok(n.to_string()),
                Some(other) => bail!("line {}: \"{name}\" must be a string, got {other}", i + 1),
                None => bail!("line {}: missing \"{name}\"", i + 1),
            }
        };
        let correct = grade(args.mode, &field("gold")?, &field("pred")?);
        value.insert("correct".into(), correct.into());
        serde_json::to_writer(&mut out, &value)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}
