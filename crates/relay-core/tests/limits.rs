//! The relay protocol's rules, driven through a scripted fake SLM and LLM: calls, n = 0,
//! malformed tags, the three limits, LLM EOS both ways, LLM failures, and the KV reuse
//! contract (the LLM is only ever sent what it has not seen).

mod common;

use common::*;
use relay_core::{
    Action, CallRecord, LlmToken, OnLlmEos, RelayError, RelaySession, SlmOutcome, SlmToken, Source,
    StopReason, ViewPiece,
};

fn call(at: usize, tag_start: usize, requested_n: u64, served: usize) -> CallRecord {
    CallRecord {
        at,
        tag_start: Some(tag_start),
        requested_n,
        served,
        llm_error: None,
    }
}

#[test]
fn a_tag_calls_the_llm_for_n_tokens() {
    let s = slm(&["The", " sum", " <call>", "3", "</call>", " is", " 7", EOS]);
    let run = drive(&config("tag"), &s, &llm(&["A", "B", "C", "D"]));
    assert_invariants(&run);
    assert_eq!(run.trace.calls, vec![call(5, 2, 3, 3)]);
    assert_eq!(run.text(), "The sum <call>3</call>ABC is 7");
    assert_eq!(run.llm_view(), "The sum ABC is 7");
    assert_eq!(run.trace.stop, Some(StopReason::SlmEos));
    assert_eq!((run.trace.tokens.slm, run.trace.tokens.llm), (8, 3));
    // The SLM token carrying " <call>" is cut: its space reaches the LLM as text.
    assert_eq!(
        run.deltas[0].pieces,
        vec![
            ViewPiece::Token {
                id: 1000,
                text: "The".into(),
                source: Source::Slm
            },
            ViewPiece::Token {
                id: 1001,
                text: " sum".into(),
                source: Source::Slm
            },
            ViewPiece::Text { text: " ".into() },
        ]
    );
    assert!(run.deltas[0].first_call);
}

/// All ways to cut `text` into tokens at one or two places, plus one char per token.
fn tokenizations(text: &str) -> Vec<Vec<String>> {
    let bounds: Vec<usize> = text.char_indices().map(|(i, _)| i).skip(1).collect();
    let mut out = vec![text.chars().map(String::from).collect()];
    for (i, &a) in bounds.iter().enumerate() {
        out.push(vec![text[..a].into(), text[a..].into()]);
        for &b in &bounds[i + 1..] {
            out.push(vec![text[..a].into(), text[a..b].into(), text[b..].into()]);
        }
    }
    out
}

#[test]
fn a_tag_split_at_any_token_boundary_makes_the_same_call() {
    let text = "x <call> 4 </call> y";
    for tokens in tokenizations(text) {
        let mut parts: Vec<&str> = tokens.iter().map(String::as_str).collect();
        parts.push(EOS);
        let run = drive(
            &config("tag"),
            &slm(&parts),
            &llm(&["L1", "L2", "L3", "L4", "L5"]),
        );
        assert_invariants(&run);
        assert_eq!(run.trace.calls.len(), 1, "{tokens:?}");
        assert_eq!(run.trace.calls[0].requested_n, 4);
        assert_eq!(run.trace.calls[0].served, 4);
        // The call comes right after the token that closed the tag; text after the close in
        // that same token stays before the LLM's tokens, in both views.
        let closing = (0..tokens.len())
            .find(|&i| tokens[..=i].concat().contains("</call>"))
            .unwrap();
        let before: String = tokens[..=closing].concat();
        let after: String = tokens[closing + 1..].concat();
        assert_eq!(run.text(), format!("{before}L1L2L3L4{after}"), "{tokens:?}");
        let strip = |s: &str| s.replace("<call> 4 </call>", "");
        assert_eq!(
            run.llm_view(),
            format!("{}L1L2L3L4{}", strip(&before), strip(&after)),
            "{tokens:?}"
        );
        assert_eq!(
            run.trace.calls[0].tag_start,
            Some(
                tokens
                    .iter()
                    .scan(0, |n, t| {
                        *n += t.len();
                        Some(*n)
                    })
                    .position(|end| end > 2)
                    .unwrap()
            )
        );
    }
}

#[test]
fn trailing_text_in_the_closing_token_stays_before_the_llm() {
    let s = slm(&["So", " <call>2", "</call>, so", " done", EOS]);
    let run = drive(&config("tag"), &s, &llm(&["P", "Q"]));
    assert_invariants(&run);
    assert_eq!(run.text(), "So <call>2</call>, soPQ done");
    assert_eq!(run.llm_view(), "So , soPQ done");
    assert_eq!(
        run.deltas[0].pieces.last(),
        Some(&ViewPiece::Text {
            text: ", so".into()
        })
    );
}

#[test]
fn text_held_back_as_a_possible_tag_reaches_the_llm_before_the_call() {
    // "<" after the close might start another tag; the call interrupts the SLM's text, so it
    // is decided as text then, and goes to the LLM in its place before the LLM's tokens.
    let s = slm(&["a", "<call>1</call> <", "call", EOS]);
    let run = drive(&config("tag"), &s, &llm(&["L"]));
    assert_invariants(&run);
    assert_eq!(run.deltas[0].text(), "a <");
    assert_eq!(run.text(), "a<call>1</call> <Lcall");
    assert_eq!(run.llm_view(), "a <Lcall");
}

#[test]
fn n_zero_is_no_call() {
    let s = slm(&["a", "<call>0</call>", "b", EOS]);
    let run = drive(&config("tag"), &s, &llm(&["L"]));
    assert_invariants(&run);
    assert!(run.trace.calls.is_empty());
    assert_eq!(
        (
            run.trace.zero_n_tags,
            run.trace.ignored_calls,
            run.trace.malformed_tags
        ),
        (1, 0, 0)
    );
    assert_eq!(run.llm_view(), "ab");
}

#[test]
fn malformed_tags_make_no_call_and_are_counted() {
    let s = slm(&[
        "<call></call>",
        "a",
        "<call>x</call>",
        "<call>",
        "-3</call>",
        "<call><call>5</call>",
        "b",
        "<call>9",
        EOS,
    ]);
    let run = drive(&config("tag"), &s, &llm(&["L"]));
    assert_invariants(&run);
    assert!(run.trace.calls.is_empty());
    assert_eq!(
        run.trace.malformed_tags, 5,
        "empty, x, -3, nested, unclosed at the end"
    );
    assert_eq!(
        run.text(),
        "<call></call>a<call>x</call><call>-3</call><call><call>5</call>b<call>9"
    );
    // Tag-shaped text is markup, not content: the LLM never sees it (an unclosed open string
    // loses only the open string).
    assert_eq!(run.llm_view(), "ab9");
}

#[test]
fn absurd_n_is_clamped_to_the_per_call_limit() {
    let s = slm(&["<call>99999999999</call>", EOS]);
    let long: Vec<String> = (0..600).map(|i| format!("t{i}")).collect();
    let run = drive(
        &config("tag"),
        &s,
        &LlmScript {
            tokens: long,
            failures: vec![],
        },
    );
    assert_invariants(&run);
    assert_eq!(run.trace.calls[0].requested_n, 99_999_999_999);
    assert_eq!(run.trace.calls[0].served, 512);
}

#[test]
fn max_call_tokens_caps_each_call() {
    let mut c = config("tag");
    c.limits.max_call_tokens = 2;
    let run = drive(
        &c,
        &slm(&["<call>10</call>", "x", EOS]),
        &llm(&["A", "B", "C"]),
    );
    assert_invariants(&run);
    assert_eq!(run.trace.calls, vec![call(1, 0, 10, 2)]);
    assert_eq!(run.text(), "<call>10</call>ABx");
}

#[test]
fn max_calls_reached_ignores_further_tags() {
    let mut c = config("tag");
    c.limits.max_calls = 2;
    let s = slm(&[
        "<call>1</call>",
        "<call>1</call>",
        "<call>1</call>",
        "<call>1</call>",
        EOS,
    ]);
    let run = drive(&c, &s, &llm(&["A", "B", "C", "D"]));
    assert_invariants(&run);
    assert_eq!(run.trace.calls.len(), 2);
    assert_eq!(run.trace.ignored_calls, 2);
    assert_eq!(
        run.text(),
        "<call>1</call>A<call>1</call>B<call>1</call><call>1</call>"
    );
    // Ignored tags are still markup: removed from the LLM view.
    assert_eq!(run.llm_view(), "AB");
}

#[test]
fn no_call_may_come_from_a_policy_that_never_calls_or_once_the_budget_is_spent() {
    let script = slm(&["<call>1</call>", " x", EOS]);
    let one_call = drive(&config("tag"), &script, &llm(&["A"]));
    assert_eq!(one_call.trace.calls.len(), 1);
    assert!(one_call.session.may_call(), "budget left after one call");
    let mut c = config("tag");
    c.limits.max_calls = 1;
    let spent = drive(&c, &script, &llm(&["A"]));
    assert_eq!(spent.trace.calls.len(), 1);
    assert!(!spent.session.may_call(), "the one budgeted call is spent");
    let never = drive(&config("slm-only"), &script, &llm(&["A"]));
    assert!(never.trace.calls.is_empty());
    assert!(!never.session.may_call(), "slm-only never calls");
}

#[test]
fn budget_reached_mid_call_cuts_the_call_and_ends_the_response() {
    let mut c = config("tag");
    c.limits.max_response_tokens = 6;
    let s = slm(&["a", "<call>", "20", "</call>", "b", EOS]);
    let run = drive(&c, &s, &llm(&["A", "B", "C", "D"]));
    assert_invariants(&run);
    assert_eq!(run.trace.calls, vec![call(4, 1, 20, 2)]);
    assert_eq!(run.trace.stop, Some(StopReason::TokenBudget));
    assert_eq!(run.trace.response_tokens, 6);
    assert_eq!(run.text(), "a<call>20</call>AB");
}

#[test]
fn budget_reached_by_the_slm_stops() {
    let mut c = config("tag");
    c.limits.max_response_tokens = 3;
    let run = drive(&c, &slm(&["a", "b", "c", "d", EOS]), &llm(&[]));
    assert_invariants(&run);
    assert_eq!(run.trace.stop, Some(StopReason::TokenBudget));
    assert_eq!(run.text(), "abc");
}

#[test]
fn a_tag_closing_on_the_last_budgeted_token_is_ignored() {
    let mut c = config("tag");
    c.limits.max_response_tokens = 2;
    let run = drive(&c, &slm(&["a", "<call>5</call>", "b"]), &llm(&["A"]));
    assert_invariants(&run);
    assert!(run.trace.calls.is_empty());
    assert_eq!(run.trace.ignored_calls, 1);
    assert_eq!(run.trace.stop, Some(StopReason::TokenBudget));
}

#[test]
fn a_tag_at_the_very_end_of_the_slm_text_is_served() {
    // The SLM's last text is a tag: the LLM writes, then the SLM ends.
    let run = drive(
        &config("tag"),
        &slm(&["Answer:", "<call>2</call>", EOS]),
        &llm(&[" 4", "2"]),
    );
    assert_invariants(&run);
    assert_eq!(run.trace.calls, vec![call(2, 1, 2, 2)]);
    assert_eq!(run.text(), "Answer:<call>2</call> 42");
}

#[test]
fn llm_eos_ends_the_response_by_default() {
    let s = slm(&["a", "<call>5</call>", "never", EOS]);
    let run = drive(&config("tag"), &s, &llm(&["A", "B", EOS, "C"]));
    assert_invariants(&run);
    assert_eq!(run.trace.stop, Some(StopReason::LlmEos));
    // The EOS is part of the response (the LLM wrote it), so training sees where it stopped.
    assert_eq!(run.trace.calls, vec![call(2, 1, 5, 3)]);
    assert_eq!(run.session.tokens().last(), Some(&LLM_EOS_ID));
    assert_eq!(run.text(), "a<call>5</call>AB");
}

#[test]
fn llm_eos_can_hand_back_to_the_slm() {
    let mut c = config("tag");
    c.limits.on_llm_eos = OnLlmEos::HandBack;
    let s = slm(&["a", "<call>5</call>", "b", "<call>1</call>", EOS]);
    let run = drive(&c, &s, &llm(&["A", "B", EOS, "C"]));
    assert_invariants(&run);
    assert_eq!(run.trace.stop, Some(StopReason::SlmEos));
    assert_eq!(run.trace.calls, vec![call(2, 1, 5, 2), call(6, 5, 1, 1)]);
    assert!(!run.session.tokens().contains(&LLM_EOS_ID));
    assert_eq!(run.text(), "a<call>5</call>ABb<call>1</call>C");
    // B was stepped into the LLM (More); the dropped EOS never was: the next delta is just "b".
    assert_eq!(run.deltas[1].text(), "b");
}

#[test]
fn an_llm_error_leaves_the_slm_to_finish_and_is_recorded() {
    let s = slm(&["a", "<call>3</call>", "b", EOS]);
    let run = drive(&config("tag"), &s, &llm(&["A", "B", "C"]).failing(0, 0));
    assert_invariants(&run);
    assert_eq!(run.trace.stop, Some(StopReason::SlmEos));
    assert_eq!(run.trace.calls.len(), 1);
    assert_eq!(run.trace.calls[0].served, 0);
    assert_eq!(
        run.trace.calls[0].llm_error.as_deref(),
        Some("llm backend timed out")
    );
    assert_eq!(run.text(), "a<call>3</call>b");
}

#[test]
fn after_a_failed_call_the_next_delta_resends_what_the_llm_lost() {
    // Call 0 serves one token then the backend dies (a hang cut by the driver's timeout looks
    // the same); call 1 must get everything since before call 0, the served token included.
    let s = slm(&["a", "<call>3</call>", "b", "<call>1</call>", EOS]);
    let run = drive(&config("tag"), &s, &llm(&["A", "B", "C"]).failing(0, 1));
    assert_invariants(&run);
    assert_eq!(run.trace.calls[0].served, 1);
    assert!(run.trace.calls[0].llm_error.is_some());
    assert_eq!(run.trace.calls[1].served, 1);
    assert!(
        run.deltas[1].first_call,
        "the first call failed, so the LLM's sequence starts over"
    );
    assert_eq!(run.deltas[1].text(), "aAb");
    assert_eq!(run.text(), "a<call>3</call>Ab<call>1</call>B");
}

#[test]
fn the_llm_is_never_sent_what_it_already_holds() {
    let s = slm(&[
        "Let",
        " <call>2</call>",
        " x",
        " =",
        "<call>",
        "3",
        "</call>",
        " so",
        "<call>1</call>",
        EOS,
    ]);
    let run = drive(&config("tag"), &s, &llm(&["A", "B", "C", "D", "E", "F"]));
    assert_invariants(&run);
    assert_eq!(run.trace.calls.len(), 3);
    // Prefilled pieces + stepped tokens = the LLM view at the last call, not the sum of its
    // lengths at every call.
    let view_at_last_call = run.cache_checks.last().unwrap().1.clone();
    assert_eq!(view_at_last_call, "Let AB x =CDE so");
    let pieces_at_last_call = 10; // Let, " ", A, B, " x", " =", C, D, E, " so"
    assert_eq!(run.llm_prefilled + run.llm_stepped, pieces_at_last_call);
    assert_eq!(run.deltas.iter().filter(|d| d.first_call).count(), 1);
    assert_eq!(
        run.deltas[1].text(),
        "B x =",
        "starts with the previous call's unstepped last token"
    );
}

#[test]
fn a_second_tag_closed_by_the_same_token_is_ignored() {
    let run = drive(
        &config("tag"),
        &slm(&["<call>1</call>x<call>2</call>", EOS]),
        &llm(&["A", "B"]),
    );
    assert_invariants(&run);
    assert_eq!(run.trace.calls, vec![call(1, 0, 1, 1)]);
    assert_eq!(run.trace.ignored_calls, 1);
    assert_eq!(run.llm_view(), "xA");
}

#[test]
fn driver_stop_ends_the_response() {
    let mut session = RelaySession::from_config(&config("tag")).unwrap();
    session
        .push_slm_token(SlmToken {
            id: 7,
            text: "hi",
            top1_prob: 1.0,
            eos: false,
        })
        .unwrap();
    session.stop(StopReason::ContextFull);
    assert_eq!(session.next_action(), Action::Stop(StopReason::ContextFull));
    assert_eq!(session.trace().stop, Some(StopReason::ContextFull));
    session.stop(StopReason::Cancelled);
    assert_eq!(
        session.trace().stop,
        Some(StopReason::ContextFull),
        "stopping twice keeps the first reason"
    );
}

#[test]
fn pushing_out_of_turn_is_an_error() {
    let mut session = RelaySession::from_config(&config("tag")).unwrap();
    let llm_token = LlmToken {
        id: 1,
        text: "x",
        eos: false,
    };
    assert!(matches!(
        session.push_llm_token(llm_token),
        Err(RelayError::WrongPhase {
            action: "push_llm_token",
            ..
        })
    ));
    assert!(matches!(
        session.begin_call(),
        Err(RelayError::WrongPhase { .. })
    ));
    assert!(matches!(
        session.end_call(),
        Err(RelayError::WrongPhase { .. })
    ));
    let out = session
        .push_slm_token(SlmToken {
            id: 7,
            text: "<call>2</call>",
            top1_prob: 1.0,
            eos: false,
        })
        .unwrap();
    assert_eq!(out, SlmOutcome::Accepted);
    assert_eq!(session.next_action(), Action::Llm { max_tokens: 2 });
    let slm_token = SlmToken {
        id: 8,
        text: "y",
        top1_prob: 1.0,
        eos: false,
    };
    assert!(matches!(
        session.push_slm_token(slm_token),
        Err(RelayError::WrongPhase { .. })
    ));
    session.begin_call().unwrap();
    assert!(matches!(
        session.push_slm_token(slm_token),
        Err(RelayError::WrongPhase { .. })
    ));
    session.push_llm_token(llm_token).unwrap();
    session.push_llm_token(llm_token).unwrap();
    assert!(
        matches!(
            session.push_llm_token(llm_token),
            Err(RelayError::WrongPhase { .. })
        ),
        "the call is full"
    );
    assert_eq!(session.next_action(), Action::Llm { max_tokens: 0 });
    session.end_call().unwrap();
    assert_eq!(session.next_action(), Action::Slm);
}

#[test]
fn invalid_limits_are_rejected() {
    let mut c = config("tag");
    c.limits.max_response_tokens = 0;
    assert!(matches!(
        RelaySession::from_config(&c),
        Err(RelayError::InvalidConfig { .. })
    ));
}
