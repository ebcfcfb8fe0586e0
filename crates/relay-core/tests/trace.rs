//! The trace: spans cover the response exactly, counts add up, the JSON uses DESIGN.md's
//! names, the checker catches broken accounting, and random runs keep every invariant.

mod common;

use std::time::Duration;

use common::*;
use proptest::prelude::*;
use relay_core::{
    OnLlmEos, PolicyKind, RelaySession, RelayTrace, SlmToken, Source, Span, StopReason,
};

fn mixed_run() -> Run {
    let s = slm(&[
        "a",
        "<call>2</call>",
        "b",
        "c",
        "<call>",
        "1</call>",
        "d",
        EOS,
    ]);
    drive(&config("tag"), &s, &llm(&["A", "B", "C"]))
}

#[test]
fn spans_cover_the_response_exactly() {
    let run = mixed_run();
    assert_invariants(&run);
    let t = &run.trace;
    assert_eq!(
        t.spans,
        vec![
            Span {
                start: 0,
                end: 2,
                source: Source::Slm
            },
            Span {
                start: 2,
                end: 4,
                source: Source::Llm
            },
            Span {
                start: 4,
                end: 8,
                source: Source::Slm
            },
            Span {
                start: 8,
                end: 9,
                source: Source::Llm
            },
            Span {
                start: 9,
                end: 11,
                source: Source::Slm
            },
        ]
    );
    assert_eq!(run.session.sources().len(), t.response_tokens);
    for span in &t.spans {
        assert!(run.session.sources()[span.start..span.end]
            .iter()
            .all(|&s| s == span.source));
    }
}

#[test]
fn counts_add_up() {
    let t = mixed_run().trace;
    assert_eq!(t.response_tokens, 11);
    assert_eq!((t.tokens.slm, t.tokens.llm), (8, 3));
    assert_eq!(
        t.calls.iter().map(|c| c.served).sum::<usize>(),
        t.tokens.llm
    );
    assert_eq!(t.call_ratio, 3.0 / 11.0);
    assert_eq!(t.served_calls(), 2);
    assert_eq!(t.stop, Some(StopReason::SlmEos));
}

#[test]
fn the_json_uses_design_field_names() {
    let mut run = mixed_run();
    run.session.record_prefill(Source::Llm, 5);
    run.session
        .record_time(Source::Slm, Duration::from_millis(12));
    let json = serde_json::to_value(run.session.trace()).unwrap();
    assert_eq!(
        json["spans"][1],
        serde_json::json!({"start": 2, "end": 4, "source": "llm"})
    );
    assert_eq!(
        json["calls"][0],
        serde_json::json!({"at": 2, "tag_start": 1, "requested_n": 2, "served": 2})
    );
    assert_eq!(json["tokens"], serde_json::json!({"slm": 8, "llm": 3}));
    assert_eq!(json["prefill_tokens"]["llm"], 5);
    assert_eq!(json["time_ms"]["slm"], 12.0);
    assert_eq!(json["stop"], "slm_eos");
    assert!(json["call_ratio"].is_f64());
    let back: RelayTrace = serde_json::from_value(json).unwrap();
    assert_eq!(back, run.session.trace());
}

#[test]
fn a_failed_call_shows_its_error_in_the_json() {
    let s = slm(&["a", "<call>3</call>", "b", EOS]);
    let run = drive(&config("tag"), &s, &llm(&["A"]).failing(0, 0));
    let json = serde_json::to_value(&run.trace).unwrap();
    assert_eq!(json["calls"][0]["llm_error"], "llm backend timed out");
}

#[test]
fn prefill_and_time_accumulate_per_model() {
    let mut s = RelaySession::from_config(&config("tag")).unwrap();
    s.record_prefill(Source::Slm, 10);
    s.record_prefill(Source::Slm, 3);
    s.record_prefill(Source::Llm, 7);
    s.record_time(Source::Llm, Duration::from_micros(1500));
    s.record_time(Source::Llm, Duration::from_micros(500));
    let t = s.trace();
    assert_eq!((t.prefill_tokens.slm, t.prefill_tokens.llm), (13, 7));
    assert!((t.time_ms.llm - 2.0).abs() < 1e-9);
    assert_eq!(t.time_ms.slm, 0.0);
    assert_eq!(t.stop, None, "still running");
}

#[test]
fn an_empty_response_has_a_zero_ratio() {
    let mut s = RelaySession::from_config(&config("tag")).unwrap();
    s.push_slm_token(SlmToken {
        id: 1,
        text: "",
        top1_prob: 1.0,
        eos: true,
    })
    .unwrap();
    let t = s.trace();
    t.check().unwrap();
    assert_eq!((t.response_tokens, t.call_ratio), (1, 0.0));
    let empty = RelaySession::from_config(&config("tag")).unwrap().trace();
    empty.check().unwrap();
    assert_eq!(empty.call_ratio, 0.0);
}

#[test]
fn the_checker_catches_broken_accounting() {
    let good = mixed_run().trace;
    good.check().unwrap();
    let mut gap = good.clone();
    gap.spans[1].start += 1;
    let mut short = good.clone();
    short.response_tokens += 1;
    let mut counts = good.clone();
    counts.tokens.llm += 1;
    let mut served = good.clone();
    served.calls[0].served -= 1;
    let mut ratio = good.clone();
    ratio.call_ratio = 0.5;
    let mut split = good.clone();
    split.spans[0].end = 1;
    split.spans.insert(
        1,
        Span {
            start: 1,
            end: 2,
            source: Source::Slm,
        },
    );
    for (name, broken) in [
        ("gap", gap),
        ("short", short),
        ("counts", counts),
        ("served", served),
        ("ratio", ratio),
        ("split", split),
    ] {
        assert!(broken.check().is_err(), "{name} should fail the check");
    }
}

fn slm_fragment() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "a",
        " b",
        "<call>",
        "</call>",
        "<call>2</call>",
        "3",
        "0",
        " ",
        "<",
        "/call>",
        "x",
        "\n",
        "é",
        "",
        "<call>1</call>.",
        "7</call>",
    ])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_runs_keep_every_invariant(
        parts in prop::collection::vec((slm_fragment(), 0.0f32..1.0), 0..60),
        llm_len in 0usize..40,
        llm_eos_at in prop::option::of(0usize..40),
        failure in prop::option::of((0usize..4, 0usize..3)),
        policy in prop::sample::select(vec![PolicyKind::Tag, PolicyKind::Confidence, PolicyKind::RandomToken, PolicyKind::FixedN, PolicyKind::TeacherFree, PolicyKind::LlmOnly, PolicyKind::SlmOnly]),
        max_response_tokens in 1usize..50,
        max_calls in 0usize..5,
        max_call_tokens in 0usize..8,
        hand_back in any::<bool>(),
        end_with_eos in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let mut c = config(policy.name());
        c.limits.max_response_tokens = max_response_tokens;
        c.limits.max_calls = max_calls;
        c.limits.max_call_tokens = max_call_tokens;
        c.limits.on_llm_eos = if hand_back { OnLlmEos::HandBack } else { OnLlmEos::End };
        c.policy.seed = seed;
        c.policy.token_probability = 0.2;
        c.policy.cooldown = 1;
        let mut steps = slm_probs(&parts);
        if end_with_eos {
            steps.push(slm(&[EOS]).remove(0));
        }
        let mut tokens: Vec<String> = (0..llm_len).map(|i| format!("L{i}")).collect();
        if let Some(at) = llm_eos_at.filter(|&at| at < tokens.len()) {
            tokens[at] = EOS.to_string();
        }
        let script = LlmScript { tokens, failures: failure.into_iter().collect() };
        let run = drive(&c, &steps, &script);
        assert_invariants(&run);
    }
}
