//! The DESIGN.md formulas, on worked numbers and on the degenerate cases.

use relay_eval::{
    call_ratio, cost_reduction, gap_recovered, random_router_accuracy, CostReduction,
};

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

#[test]
fn gap_recovered_is_the_fraction_of_the_gap_closed() {
    assert!(close(gap_recovered(0.30, 0.70, 0.50).unwrap(), 0.5));
    assert!(close(gap_recovered(0.30, 0.70, 0.30).unwrap(), 0.0));
    assert!(close(gap_recovered(0.30, 0.70, 0.70).unwrap(), 1.0));
    assert!(
        close(gap_recovered(0.30, 0.70, 0.20).unwrap(), -0.25),
        "below the SLM is negative"
    );
    assert!(
        close(gap_recovered(0.30, 0.70, 0.80).unwrap(), 1.25),
        "above the LLM is over 1"
    );
}

#[test]
fn no_gap_gives_none_not_nan() {
    assert_eq!(gap_recovered(0.5, 0.5, 0.6), None);
    assert_eq!(gap_recovered(0.6, 0.5, 0.55), None, "LLM below SLM");
    assert_eq!(gap_recovered(f64::NAN, 0.5, 0.55), None);
    assert_eq!(gap_recovered(0.2, 0.5, f64::INFINITY), None);
}

#[test]
fn random_router_interpolates_linearly() {
    assert!(close(random_router_accuracy(0.30, 0.70, 0.0), 0.30));
    assert!(close(random_router_accuracy(0.30, 0.70, 1.0), 0.70));
    assert!(close(random_router_accuracy(0.30, 0.70, 0.25), 0.40));
    assert!(
        close(random_router_accuracy(0.30, 0.70, 1.5), 0.70),
        "share is clamped"
    );
    assert!(close(random_router_accuracy(0.30, 0.70, f64::NAN), 0.30));
    assert!(
        close(random_router_accuracy(0.70, 0.30, 0.5), 0.50),
        "defined even when LLM < SLM"
    );
}

#[test]
fn cost_reduction_at_equal_accuracy() {
    // Relay recovers half the gap (p = 0.5) with 10% LLM tokens: the router needs 50% → 80% less.
    assert_eq!(
        cost_reduction(0.30, 0.70, 0.50, 0.10),
        CostReduction::Reduction(1.0 - 0.10 / 0.5)
    );
    match cost_reduction(0.30, 0.70, 0.50, 0.10) {
        CostReduction::Reduction(v) => assert!(close(v, 0.8)),
        other => panic!("{other:?}"),
    }
    // Spending more than the router: negative.
    match cost_reduction(0.30, 0.70, 0.40, 0.50) {
        CostReduction::Reduction(v) => assert!(close(v, 1.0 - 0.5 / 0.25)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn cost_reduction_degenerate_cases_are_named() {
    assert_eq!(
        cost_reduction(0.30, 0.70, 0.30, 0.10),
        CostReduction::NotAboveSlm
    );
    assert_eq!(
        cost_reduction(0.30, 0.70, 0.25, 0.10),
        CostReduction::NotAboveSlm
    );
    assert_eq!(
        cost_reduction(0.30, 0.70, 0.80, 0.10),
        CostReduction::AboveLlm(1.0 - 0.10)
    );
    assert_eq!(cost_reduction(0.50, 0.50, 0.60, 0.10), CostReduction::NoGap);
    assert_eq!(cost_reduction(0.60, 0.50, 0.60, 0.10), CostReduction::NoGap);
    assert_eq!(
        cost_reduction(0.30, 0.70, 0.50, f64::NAN),
        CostReduction::NoGap
    );
    for c in [CostReduction::NotAboveSlm, CostReduction::NoGap] {
        assert_eq!(c.value(), None);
        assert!(c.to_string().starts_with("n/a"));
    }
    assert_eq!(CostReduction::Reduction(0.8).to_string(), "80.0%");
}

#[test]
fn call_ratio_handles_no_tokens() {
    assert_eq!(call_ratio(0, 0), 0.0);
    assert_eq!(call_ratio(1, 4), 0.25);
}
