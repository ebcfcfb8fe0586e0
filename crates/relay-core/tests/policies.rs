//! Call policies: names parse, each policy's rule, and that a new policy plugs in through the
//! trait alone.

mod common;

use common::*;
use relay_core::{
    CallLength, CallPolicy, PolicyConfig, PolicyKind, RelayError, RelayLimits, RelaySession,
    StopReason, TagConfig, TokenInfo,
};

#[test]
fn every_policy_name_parses_and_round_trips() {
    for kind in PolicyKind::ALL {
        assert_eq!(kind.name().parse::<PolicyKind>().unwrap(), kind);
        assert_eq!(kind.to_string(), kind.name());
        let json = serde_json::to_string(&kind).unwrap();
        assert_eq!(json, format!("\"{}\"", kind.name()));
        assert_eq!(serde_json::from_str::<PolicyKind>(&json).unwrap(), kind);
        assert_eq!(PolicyConfig::new(kind).build().unwrap().name(), kind.name());
    }
    assert_eq!(
        "confidence".parse::<PolicyKind>().unwrap(),
        PolicyKind::Confidence
    );
}

#[test]
fn an_unknown_policy_lists_the_valid_names() {
    let err = "confident".parse::<PolicyKind>().unwrap_err();
    assert!(matches!(err, RelayError::UnknownPolicy { .. }));
    let msg = err.to_string();
    assert!(msg.contains("`confident`"), "{msg}");
    for kind in PolicyKind::ALL {
        assert!(msg.contains(kind.name()), "{msg} should list {kind}");
    }
    let serde_err = serde_json::from_str::<PolicyKind>("\"confident\"")
        .unwrap_err()
        .to_string();
    assert!(serde_err.contains("random-token"), "{serde_err}");
}

#[test]
fn policy_config_round_trips_with_defaults() {
    let c: PolicyConfig =
        serde_json::from_str(r#"{"kind": "confidence", "threshold": 0.3}"#).unwrap();
    assert_eq!(c.kind, PolicyKind::Confidence);
    assert_eq!(c.threshold, 0.3);
    assert_eq!(c.cooldown, PolicyConfig::default().cooldown);
    assert_eq!(
        serde_json::from_str::<PolicyConfig>(&serde_json::to_string(&c).unwrap()).unwrap(),
        c
    );
}

#[test]
fn out_of_range_knobs_are_rejected() {
    let bad = [
        PolicyConfig {
            threshold: 1.5,
            ..PolicyConfig::new(PolicyKind::Confidence)
        },
        PolicyConfig {
            call_tokens: 0,
            ..PolicyConfig::new(PolicyKind::Confidence)
        },
        PolicyConfig {
            token_probability: -0.1,
            ..PolicyConfig::new(PolicyKind::RandomToken)
        },
        PolicyConfig {
            query_probability: 2.0,
            ..PolicyConfig::new(PolicyKind::RandomQuery)
        },
        PolicyConfig {
            call_tokens: 0,
            ..PolicyConfig::new(PolicyKind::FixedN)
        },
    ];
    for c in bad {
        assert!(
            matches!(c.build(), Err(RelayError::InvalidConfig { .. })),
            "{c:?}"
        );
    }
}

fn confidence(threshold: f32, call_tokens: u64, cooldown: usize) -> relay_core::RelayConfig {
    let mut c = config("confidence");
    c.policy.threshold = threshold;
    c.policy.call_tokens = call_tokens;
    c.policy.cooldown = cooldown;
    c
}

#[test]
fn confidence_calls_where_the_slm_is_unsure_and_drops_its_token() {
    let s = slm_probs(&[
        ("2", 0.9),
        (" +", 0.9),
        (" 2", 0.95),
        (" =", 0.2),
        (" 5", 0.9),
        (".", 0.9),
        (EOS, 0.9),
    ]);
    let run = drive(&confidence(0.5, 2, 0), &s, &llm(&[" =", " 4"]));
    assert_invariants(&run);
    assert_eq!(run.dropped, 1);
    assert_eq!(run.trace.calls.len(), 1);
    let call = &run.trace.calls[0];
    assert_eq!(
        (call.at, call.tag_start, call.requested_n, call.served),
        (3, None, 2, 2)
    );
    // No tag text: the SLM's " =" at position 3 was replaced by the LLM's tokens.
    assert_eq!(run.text(), "2 + 2 = 4 5.");
    assert_eq!(run.llm_view(), run.text());
}

#[test]
fn confidence_cools_down_after_a_call() {
    let low = |t: &'static str| (t, 0.1f32);
    let s = slm_probs(&[low("a"), low("b"), low("c"), low("d"), low("e"), (EOS, 0.9)]);
    let mut c = confidence(0.5, 1, 2);
    c.limits.max_calls = 10;
    let run = drive(&c, &s, &llm(&["A", "B", "C"]));
    assert_invariants(&run);
    // a → call; b, c cool down (kept); d → call; e cools down; EOS is low? no: 0.9.
    assert_eq!(run.text(), "AbcBe");
    assert_eq!(
        run.trace.calls.iter().map(|c| c.at).collect::<Vec<_>>(),
        vec![0, 3]
    );
}

#[test]
fn confidence_can_call_until_the_llm_ends_the_line() {
    let mut c = confidence(0.5, 10, 0);
    c.policy.until_newline = true;
    let s = slm_probs(&[("Step", 0.3), ("s", 0.9), (EOS, 0.9)]);
    let run = drive(&c, &s, &llm(&["x", " = ", "4.\n", "never"]));
    assert_invariants(&run);
    assert_eq!(run.trace.calls[0].served, 3);
    assert_eq!(run.trace.calls[0].requested_n, 10);
    assert_eq!(run.text(), "x = 4.\ns");
}

#[test]
fn confidence_respects_max_calls_and_keeps_the_token_when_refused() {
    let mut c = confidence(0.5, 1, 0);
    c.limits.max_calls = 1;
    let s = slm_probs(&[("a", 0.1), ("b", 0.1), (EOS, 0.9)]);
    let run = drive(&c, &s, &llm(&["A", "B"]));
    assert_invariants(&run);
    assert_eq!(run.text(), "Ab");
    assert_eq!(run.trace.ignored_calls, 1);
}

#[test]
fn confidence_ignores_tag_text() {
    let s = slm_probs(&[("<call>3</call>", 0.9), (EOS, 0.9)]);
    let run = drive(&confidence(0.5, 1, 0), &s, &llm(&["A"]));
    assert_invariants(&run);
    assert!(run.trace.calls.is_empty());
    assert_eq!(
        run.trace.malformed_tags + run.trace.zero_n_tags + run.trace.ignored_calls,
        0
    );
    assert_eq!(
        run.llm_view(),
        "<call>3</call>",
        "tags are plain text to a policy that does not read them"
    );
}

fn random_token(p: f64, seed: u64) -> relay_core::RelayConfig {
    let mut c = config("random-token");
    c.policy.token_probability = p;
    c.policy.call_tokens = 1;
    c.policy.seed = seed;
    c.limits.max_calls = 1000;
    c
}

#[test]
fn random_token_is_reproducible_by_seed_and_follows_p() {
    let words: Vec<String> = (0..400).map(|i| format!(" w{i}")).collect();
    let mut parts: Vec<&str> = words.iter().map(String::as_str).collect();
    parts.push(EOS);
    let s = slm(&parts);
    let l: Vec<String> = (0..1000).map(|i| format!(" L{i}")).collect();
    let l = LlmScript {
        tokens: l,
        failures: vec![],
    };
    let a = drive(&random_token(0.2, 7), &s, &l);
    let b = drive(&random_token(0.2, 7), &s, &l);
    let other = drive(&random_token(0.2, 8), &s, &l);
    assert_invariants(&a);
    assert_eq!(a.trace, b.trace);
    assert_ne!(a.trace.calls, other.trace.calls);
    let calls = a.trace.calls.len();
    assert!(
        (40..=140).contains(&calls),
        "about 20% of positions call: {calls}"
    );
    assert!(drive(&random_token(0.0, 7), &s, &l).trace.calls.is_empty());
    let always = drive(&random_token(1.0, 7), &s, &l);
    assert!(
        always.trace.calls.len() > 390,
        "p = 1 calls at every position"
    );
}

fn random_query(p: f64, seed: u64) -> relay_core::RelayConfig {
    let mut c = config("random-query");
    c.policy.query_probability = p;
    c.policy.seed = seed;
    c
}

#[test]
fn random_query_sends_the_whole_query_or_nothing() {
    let s = slm(&["s1", "s2", EOS]);
    let l = llm(&["L1", "L2", "L3", EOS]);
    let all = drive(&random_query(1.0, 0), &s, &l);
    assert_invariants(&all);
    assert_eq!(all.text(), "L1L2L3");
    assert_eq!(all.trace.call_ratio, 1.0);
    assert_eq!(all.trace.stop, Some(StopReason::LlmEos));
    let none = drive(&random_query(0.0, 0), &s, &l);
    assert_eq!(none.text(), "s1s2");
    assert!(none.trace.calls.is_empty());
    // Over many requests (seed per request), about p of them go to the LLM.
    let sent = (0..400)
        .filter(|&seed| drive(&random_query(0.3, seed), &s, &l).trace.call_ratio > 0.0)
        .count();
    assert!((80..=160).contains(&sent), "{sent} of 400");
}

#[test]
fn slm_only_never_calls() {
    let s = slm(&["a", "<call>5</call>", "<call>x</call>", EOS]);
    let run = drive(&config("slm-only"), &s, &llm(&["A"]));
    assert_invariants(&run);
    assert!(run.trace.calls.is_empty());
    assert_eq!(run.trace.call_ratio, 0.0);
    assert_eq!(run.text(), "a<call>5</call><call>x</call>");
}

#[test]
fn llm_only_writes_the_whole_response_past_the_per_call_limit() {
    let mut c = config("llm-only");
    c.limits.max_call_tokens = 2;
    c.limits.max_response_tokens = 5;
    let run = drive(&c, &slm(&["s", EOS]), &llm(&["A", "B", "C", "D", "E", "F"]));
    assert_invariants(&run);
    assert_eq!(run.text(), "ABCDE");
    assert_eq!(run.trace.calls[0].requested_n, 5);
    assert_eq!(run.trace.stop, Some(StopReason::TokenBudget));
    assert!(run.deltas[0].first_call && run.deltas[0].is_empty());
}

#[test]
fn teacher_free_keeps_tags_but_never_serves() {
    let s = slm(&[
        "a",
        "<call>5</call>",
        "b",
        "<call></call>",
        "<call>0</call>",
        EOS,
    ]);
    let run = drive(&config("teacher-free"), &s, &llm(&["A"]));
    assert_invariants(&run);
    assert!(run.trace.calls.is_empty());
    assert_eq!(
        (
            run.trace.ignored_calls,
            run.trace.malformed_tags,
            run.trace.zero_n_tags
        ),
        (1, 1, 1)
    );
    assert_eq!(run.text(), "a<call>5</call>b<call></call><call>0</call>");
}

#[test]
fn fixed_n_overrides_the_requested_n_but_not_n_zero() {
    let mut c = config("fixed-n");
    c.policy.call_tokens = 2;
    let s = slm(&["<call>100</call>", "x", "<call>0</call>", "y", EOS]);
    let run = drive(&c, &s, &llm(&["A", "B", "C"]));
    assert_invariants(&run);
    assert_eq!(run.trace.calls.len(), 1);
    assert_eq!(
        (run.trace.calls[0].requested_n, run.trace.calls[0].served),
        (2, 2)
    );
    assert_eq!(run.trace.zero_n_tags, 1);
    assert_eq!(run.text(), "<call>100</call>ABx<call>0</call>y");
}

/// A policy written in a test, as a new file in src/policy/ would be: calls every 3rd position.
#[derive(Debug, Default)]
struct EveryThird {
    seen: usize,
}

impl CallPolicy for EveryThird {
    fn name(&self) -> &'static str {
        "every-third"
    }

    fn before_slm_token(&mut self, token: &TokenInfo<'_>) -> Option<CallLength> {
        self.seen = (self.seen + 1) % 3;
        assert!(token.top1_prob > 0.0);
        (self.seen == 0).then_some(CallLength::Tokens(1))
    }
}

#[test]
fn a_new_policy_plugs_in_through_the_trait() {
    let mut session = RelaySession::new(
        RelayLimits::default(),
        TagConfig::default(),
        Box::new(EveryThird::default()),
    )
    .unwrap();
    use relay_core::{Action, LlmToken, SlmToken};
    let mut dropped = 0;
    for i in 0..5u32 {
        assert_eq!(session.next_action(), Action::Slm);
        if session
            .push_slm_token(SlmToken {
                id: i,
                text: "s",
                top1_prob: 0.9,
                eos: false,
            })
            .unwrap()
            == relay_core::SlmOutcome::Dropped
        {
            dropped += 1;
            session.begin_call().unwrap();
            session
                .push_llm_token(LlmToken {
                    id: 99,
                    text: "L",
                    eos: false,
                })
                .unwrap();
            session.end_call().unwrap();
        }
    }
    assert_eq!(dropped, 1);
    assert_eq!(session.text(), "ssLss");
    assert_eq!(session.trace().policy, "every-third");
}
