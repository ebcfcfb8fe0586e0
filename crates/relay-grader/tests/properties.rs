//! Metamorphic properties: a number graded against itself (in the forms models write it)
//! is right, and against a different number is wrong, in both modes.

use proptest::prelude::*;
use relay_grader::{grade, GradeMode};

/// Grade `answer` (boxed in a short response) against `gold`.
fn check(mode: GradeMode, gold: &str, answer: &str) -> bool {
    grade(
        mode,
        gold,
        &format!("Working...\nSo the answer is $\\boxed{{{answer}}}$."),
    )
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 {
        a.abs()
    } else {
        gcd(b, a % b)
    }
}

fn with_separators(n: i64) -> String {
    let s = n.unsigned_abs().to_string();
    let groups: Vec<&str> = s
        .as_bytes()
        .rchunks(3)
        .rev()
        .map(|g| std::str::from_utf8(g).unwrap_or(""))
        .collect();
    let out = groups.join(",");
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// p/q to six decimals, half to even, from exact integer arithmetic.
fn six_decimals(p: i64, q: i64, neg: bool) -> String {
    let (scaled, rem) = (p * 1_000_000 / q, p * 1_000_000 % q);
    let up = 2 * rem > q || 2 * rem == q && scaled % 2 == 1;
    let n = scaled + i64::from(up);
    format!(
        "{}{}.{:06}",
        if neg { "-" } else { "" },
        n / 1_000_000,
        n % 1_000_000
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn integers(n in -1_000_000i64..1_000_000, d in 1i64..1000) {
        let gold = n.to_string();
        let other = (n + d).to_string();
        for mode in [GradeMode::MathRuler, GradeMode::Verify] {
            prop_assert!(check(mode, &gold, &gold), "{mode}: {gold} vs itself");
            prop_assert!(!check(mode, &gold, &other), "{mode}: {gold} vs {other}");
        }
        // Thousands separators and a trailing `.0` are the same integer to math-verify.
        let sep = with_separators(n);
        let dot0 = format!("{n}.0");
        prop_assert!(check(GradeMode::Verify, &gold, &sep), "{gold} vs {sep}");
        prop_assert!(check(GradeMode::Verify, &gold, &dot0), "{gold} vs {dot0}");
    }

    #[test]
    fn fractions(p in 1i64..5000, q in 2i64..2000, neg in any::<bool>()) {
        // Reduce, keeping a proper fraction (q > 1) without rejecting cases.
        let g = gcd(p, q);
        let (p, q) = if q / g == 1 { (2 * (p / g) + 1, 2) } else { (p / g, q / g) };
        let s = if neg { "-" } else { "" };
        let gold = format!("{s}\\frac{{{p}}}{{{q}}}");
        let dfrac = format!("{s}\\dfrac{{{p}}}{{{q}}}");
        let slash = format!("{s}{p}/{q}");
        let other = format!("{s}\\frac{{{}}}{{{}}}", p + 1, q);
        for mode in [GradeMode::MathRuler, GradeMode::Verify] {
            prop_assert!(check(mode, &gold, &dfrac), "{mode}: {gold} vs {dfrac}");
            prop_assert!(check(mode, &gold, &slash), "{mode}: {gold} vs {slash}");
            prop_assert!(!check(mode, &gold, &other), "{mode}: {gold} vs {other}");
        }
        // Unreduced: the same value to math-verify, wrong as written to mathruler.
        let unreduced = format!("{s}\\frac{{{}}}{{{}}}", 2 * p, 2 * q);
        prop_assert!(check(GradeMode::Verify, &gold, &unreduced), "{gold} vs {unreduced}");
        prop_assert!(!check(GradeMode::MathRuler, &gold, &unreduced), "mathruler: {gold} vs {unreduced}");
        // Six decimals stand for the fraction in verify mode (1/3 ≈ 0.333333), rounded half
        // to even on the exact value as sympy does (439/640 = 0.6859375 → 0.685938).
        let dec = six_decimals(p, q, neg);
        prop_assert!(check(GradeMode::Verify, &gold, &dec), "{gold} vs {dec}");
    }

    #[test]
    fn polynomials(a in -20i64..20, b in -20i64..20) {
        prop_assume!(a != 0 && b != 0);
        // (x + a)(x + b) expanded is the same expression; with b's sign flipped it is not.
        let gold = format!("(x{a:+})(x{b:+})");
        let expanded = format!("x^2{:+}x{:+}", a + b, a * b);
        let wrong = format!("x^2{:+}x{:+}", a - b, -a * b);
        prop_assert!(check(GradeMode::Verify, &gold, &expanded), "{gold} vs {expanded}");
        prop_assert!(!check(GradeMode::Verify, &gold, &wrong), "{gold} vs {wrong}");
    }
}
