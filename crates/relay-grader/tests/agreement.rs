//! Agreement with the Python graders on `tests/corpus/rewrites.jsonl`: rewritten forms of
//! every benchmark gold answer (equivalent and not), each labelled with math-verify's and
//! mathruler's verdicts by `scripts/grader_agreement.py rewrites`. This keeps the agreement
//! numbers from regressing without needing Python at test time.

use relay_grader::{grade, GradeMode};
use serde::Deserialize;

#[derive(Deserialize)]
struct Pair {
    gold: String,
    pred: String,
    template: String,
    math_verify: bool,
    mathruler: bool,
}

fn load() -> Vec<Pair> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus/rewrites.jsonl");
    std::fs::read_to_string(path)
        .expect("read rewrites.jsonl")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("rewrites.jsonl line"))
        .collect()
}

fn report(
    name: &str,
    pairs: &[Pair],
    mode: GradeMode,
    reference: impl Fn(&Pair) -> bool,
) -> (f64, f64) {
    let mut agree = 0usize;
    let (mut boxed_n, mut boxed_agree) = (0usize, 0usize);
    let mut shown = 0;
    for p in pairs {
        let ours = grade(mode, &p.gold, &p.pred);
        let ok = ours == reference(p);
        agree += ok as usize;
        if p.template != "bare" {
            boxed_n += 1;
            boxed_agree += ok as usize;
        }
        if !ok && shown < 15 && p.template != "bare" {
            shown += 1;
            let tail: String = p
                .pred
                .chars()
                .rev()
                .take(90)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            eprintln!("  [{name}] ours={ours} gold={:?} pred=…{tail:?}", p.gold);
        }
    }
    let all = agree as f64 / pairs.len() as f64;
    let framed = boxed_agree as f64 / boxed_n.max(1) as f64;
    eprintln!(
        "{name}: {agree}/{} = {:.2}% overall, {:.2}% on full responses (bare answers excluded)",
        pairs.len(),
        100.0 * all,
        100.0 * framed
    );
    (all, framed)
}

#[test]
fn verify_mode_agrees_with_math_verify() {
    let pairs = load();
    assert!(pairs.len() >= 1000, "only {} pairs", pairs.len());
    let (all, framed) = report("math-verify", &pairs, GradeMode::Verify, |p| p.math_verify);
    // Bare answers (no `$`, no box) are where we deliberately differ: math-verify extracts
    // nothing from them, or only a fraction or number inside them, while our API grades a
    // bare answer as written.
    assert!(
        framed >= 0.99,
        "agreement on full responses fell to {:.2}%",
        100.0 * framed
    );
    assert!(all >= 0.97, "overall agreement fell to {:.2}%", 100.0 * all);
}

#[test]
fn mathruler_mode_agrees_with_mathruler() {
    let pairs = load();
    let (all, _) = report("mathruler", &pairs, GradeMode::MathRuler, |p| p.mathruler);
    assert!(all >= 0.99, "agreement fell to {:.2}%", 100.0 * all);
}
