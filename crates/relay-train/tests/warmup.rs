//! Warm-up examples: the commands parse back to exactly what was planned, the ids are the
//! solution's own (or the teacher's real greedy continuation), and the loss mask teaches the
//! SLM its tokens and commands but never the LLM's.

use relay_core::{CallTagParser, TagConfig, TagEvent};
use relay_engine::engine::Engine;
use relay_engine::generate::{generate, GenerateParams};
use relay_engine::testing::write_tiny_pair;
use relay_engine::tiny_vocab::IM_END_ID;
use relay_engine::tokenizer::Tokenizer;
use relay_engine::{CandleEngine, LoadOptions};
use relay_train::warmup::{
    build_example, solution_logprobs, Built, CallCount, EngineTeacher, NDist, Teacher,
    WarmupOptions, Writer,
};

fn tiny() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (slm, llm) = write_tiny_pair(dir.path(), 512);
    (dir, slm, llm)
}

const SOLUTION: &str = "First, 16 - 3 - 4 = 9 eggs are left.\nThen 9 * 2 = 18 dollars.\nThe final answer is \\boxed{18}.";

/// Calls found by the tag parser in `text`, fed in pieces of `chunk` bytes (on char boundaries).
fn parsed_calls(text: &str, chunk: usize) -> Vec<u64> {
    let mut p = CallTagParser::new(TagConfig::default()).unwrap();
    let mut events = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    for piece in chars.chunks(chunk) {
        events.extend(p.push(&piece.iter().collect::<String>()));
    }
    events.extend(p.finish());
    events
        .into_iter()
        .filter_map(|e| match e {
            TagEvent::Call { n, .. } => Some(n),
            TagEvent::Malformed { .. } => panic!("malformed tag in {text:?}"),
            _ => None,
        })
        .collect()
}

#[test]
fn commands_parse_back_and_solution_tokens_are_kept_in_order() {
    let (_d, slm, _) = tiny();
    let tok = Tokenizer::load_for_model(&slm).unwrap();
    let mut solution = tok.encode(SOLUTION, false).unwrap();
    solution.push(IM_END_ID);
    let options = WarmupOptions {
        calls: CallCount { min: 0, max: 3 },
        n_dist: "uniform:1-12".parse().unwrap(),
        ..WarmupOptions::default()
    };
    let is_eos = |t: u32| t == IM_END_ID;
    let mut seen_counts = [0usize; 4];
    for seed in 0..300 {
        let mut enc = |n: u64| {
            tok.encode(&format!("<call>{n}</call>"), false)
                .map_err(|e| e.to_string())
        };
        let b = build_example(
            &solution,
            &is_eos,
            &mut enc,
            &[],
            None,
            &options,
            None,
            seed,
        )
        .unwrap();
        assert_eq!(b.response.len(), b.writers.len());
        assert!(b.calls.len() <= 3);
        seen_counts[b.calls.len()] += 1;
        // Without a teacher the non-command tokens are the solution itself.
        let kept: Vec<u32> = b
            .response
            .iter()
            .zip(&b.writers)
            .filter(|(_, w)| **w != Writer::Tag)
            .map(|(t, _)| *t)
            .collect();
        assert_eq!(kept, solution, "seed {seed}");
        // Each command is followed by exactly `served` LLM tokens, at most n.
        for c in &b.calls {
            let tag_len = b.writers[c.at..]
                .iter()
                .take_while(|w| **w == Writer::Tag)
                .count();
            assert!(tag_len > 0);
            let llm = b.writers[c.at + tag_len..]
                .iter()
                .take_while(|w| **w == Writer::Llm)
                .count();
            assert_eq!(llm, c.served, "seed {seed}");
            assert!(c.served as u64 <= c.requested_n && c.served > 0);
        }
        assert_eq!(
            b.llm_tokens(),
            b.calls.iter().map(|c| c.served).sum::<usize>()
        );
        // The relay's parser finds exactly the planned commands, however the text is split.
        let text = tok.decode(&b.response).unwrap();
        let want: Vec<u64> = b.calls.iter().map(|c| c.requested_n).collect();
        for chunk in [1, 3, 7, 1000] {
            assert_eq!(
                parsed_calls(&text, chunk),
                want,
                "seed {seed} chunk {chunk}"
            );
        }
        // The mask: prompt 0, LLM tokens 0, everything the SLM writes 1.
        let mask = b.loss_mask(5);
        assert_eq!(&mask[..5], &[0; 5]);
        for (m, w) in mask[5..].iter().zip(&b.writers) {
            assert_eq!(*m == 1, *w != Writer::Llm);
        }
        // The EOS stays the SLM's when no call reached it.
        if b.writers.last() == Some(&Writer::Slm) {
            assert_eq!(*b.response.last().unwrap(), IM_END_ID);
        }
    }
    assert!(
        seen_counts.iter().all(|&c| c > 30),
        "call counts {seen_counts:?}"
    );
}

#[test]
fn same_seed_same_example_and_zero_calls_means_the_plain_solution() {
    let (_d, slm, _) = tiny();
    let tok = Tokenizer::load_for_model(&slm).unwrap();
    let mut solution = tok.encode(SOLUTION, false).unwrap();
    solution.push(IM_END_ID);
    let is_eos = |t: u32| t == IM_END_ID;
    let mut enc = |n: u64| {
        tok.encode(&format!("<call>{n}</call>"), false)
            .map_err(|e| e.to_string())
    };
    let opts = WarmupOptions::default();
    let a = build_example(&solution, &is_eos, &mut enc, &[], None, &opts, None, 9).unwrap();
    let b = build_example(&solution, &is_eos, &mut enc, &[], None, &opts, None, 9).unwrap();
    assert_eq!(a, b);
    let none = WarmupOptions {
        calls: CallCount { min: 0, max: 0 },
        ..WarmupOptions::default()
    };
    let c = build_example(&solution, &is_eos, &mut enc, &[], None, &none, None, 9).unwrap();
    assert_eq!(c.response, solution);
    assert!(c.writers.iter().all(|w| *w == Writer::Slm));
}

#[test]
fn teacher_tokens_are_the_llms_greedy_continuation_of_the_tag_free_view() {
    let (_d, slm, llm) = tiny();
    let tok = Tokenizer::load_for_model(&slm).unwrap();
    let engine = CandleEngine::load(&llm, LoadOptions::default()).unwrap();
    let prompt = tok
        .encode(
            "<|im_start|>user\nHow many eggs?<|im_end|>\n<|im_start|>assistant\n",
            false,
        )
        .unwrap();
    let mut solution = tok.encode(SOLUTION, false).unwrap();
    solution.push(IM_END_ID);
    let options = WarmupOptions {
        calls: CallCount { min: 3, max: 3 },
        n_dist: NDist::Fixed(4),
        ..WarmupOptions::default()
    };
    let is_eos = |t: u32| t == IM_END_ID;
    let mut enc = |n: u64| {
        tok.encode(&format!("<call>{n}</call>"), false)
            .map_err(|e| e.to_string())
    };
    let mut served_any = 0;
    for seed in 0..6 {
        let mut teacher = EngineTeacher::new(&engine);
        let b = build_example(
            &solution,
            &is_eos,
            &mut enc,
            &prompt,
            Some(&mut teacher as &mut dyn Teacher),
            &options,
            None,
            seed,
        )
        .unwrap();
        drop(teacher);
        assert_eq!(engine.num_sequences(), 0, "the teacher frees its sequence");
        for c in &b.calls {
            let tag_len = b.writers[c.at..]
                .iter()
                .take_while(|w| **w == Writer::Tag)
                .count();
            let got = &b.response[c.at + tag_len..c.at + tag_len + c.served];
            // Independently: the LLM's view is the prompt and every non-command token so far.
            let mut view = prompt.clone();
            view.extend(
                b.response[..c.at]
                    .iter()
                    .zip(&b.writers)
                    .filter(|(_, w)| **w != Writer::Tag)
                    .map(|(t, _)| *t),
            );
            let params = GenerateParams {
                max_tokens: c.requested_n as usize,
                ..GenerateParams::default()
            };
            let want = generate(&engine, &tok, &view, &params, |_| {})
                .unwrap()
                .tokens;
            assert_eq!(got, want.as_slice(), "seed {seed}, call at {}", c.at);
            served_any += c.served;
        }
    }
    assert!(served_any > 0);
}

/// Where each command went, in solution tokens: the SLM and LLM tokens before it.
fn command_sites(b: &Built) -> Vec<usize> {
    b.calls
        .iter()
        .map(|c| {
            b.writers[..c.at]
                .iter()
                .filter(|w| **w != Writer::Tag)
                .count()
        })
        .collect()
}

#[test]
fn informed_sites_become_the_commands_best_first_without_overlap() {
    let (_d, slm, _) = tiny();
    let tok = Tokenizer::load_for_model(&slm).unwrap();
    let mut solution = tok.encode(SOLUTION, false).unwrap();
    solution.push(IM_END_ID);
    let body = solution.len() - 1;
    let is_eos = |t: u32| t == IM_END_ID;
    let mut enc = |n: u64| {
        tok.encode(&format!("<call>{n}</call>"), false)
            .map_err(|e| e.to_string())
    };
    let options = WarmupOptions {
        calls: CallCount { min: 2, max: 2 },
        n_dist: NDist::Fixed(5),
        ..WarmupOptions::default()
    };
    // Site 3 first; 5 falls inside its 5 tokens (3..8) and is skipped; 12 is taken; two
    // commands leave 20 out; the EOS position is never a site.
    let ranked = [body, 3, 5, 12, 20];
    let b = build_example(
        &solution,
        &is_eos,
        &mut enc,
        &[],
        None,
        &options,
        Some(&ranked),
        0,
    )
    .unwrap();
    let text = tok.decode(&b.response).unwrap();
    assert_eq!(parsed_calls(&text, 7), vec![5, 5]);
    assert_eq!(command_sites(&b), vec![3, 12]);
    // No teacher: the solution's tokens come back in order, commands aside.
    let kept: Vec<u32> = b
        .response
        .iter()
        .zip(&b.writers)
        .filter(|(_, w)| **w != Writer::Tag)
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(kept, solution);

    // No site at all: the plain solution, however many commands --calls asks for.
    let none = build_example(
        &solution,
        &is_eos,
        &mut enc,
        &[],
        None,
        &options,
        Some(&[]),
        0,
    )
    .unwrap();
    assert_eq!(none.response, solution);

    // How many is drawn from --calls as random placement draws it: 0, 1 and 2 all occur, and
    // the ones placed are the best sites.
    let zero_to_two = WarmupOptions {
        calls: CallCount { min: 0, max: 2 },
        ..options.clone()
    };
    let mut seen = [0usize; 3];
    for seed in 0..60 {
        let b = build_example(
            &solution,
            &is_eos,
            &mut enc,
            &[],
            None,
            &zero_to_two,
            Some(&ranked),
            seed,
        )
        .unwrap();
        let starts = command_sites(&b);
        assert_eq!(starts, [3, 12][..starts.len()], "seed {seed}");
        seen[starts.len()] += 1;
    }
    assert!(seen.iter().all(|&c| c > 5), "call counts {seen:?}");
}

#[test]
fn solution_logprobs_are_the_engines_next_token_logprobs_one_prefix_at_a_time() {
    let (_d, slm, _) = tiny();
    let tok = Tokenizer::load_for_model(&slm).unwrap();
    let engine = CandleEngine::load(&slm, LoadOptions::default()).unwrap();
    let prompt = tok
        .encode(
            "<|im_start|>user\nHow many eggs?<|im_end|>\n<|im_start|>assistant\n",
            false,
        )
        .unwrap();
    let mut solution = tok.encode("16 - 3 - 4 = 9 eggs.", false).unwrap();
    solution.push(IM_END_ID);
    let got = solution_logprobs(&engine, &prompt, &solution).unwrap();
    assert_eq!(got.len(), solution.len());
    // Independently: prefill the prompt, then feed the solution one token at a time, reading
    // each next token's log-softmax from the logits the engine returns.
    let seq = engine.create_sequence().unwrap();
    let mut logits = engine.prefill(seq, &prompt).unwrap();
    for (j, &t) in solution.iter().enumerate() {
        let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let lse = max + logits.iter().map(|l| (l - max).exp()).sum::<f32>().ln();
        let want = logits[t as usize] - lse;
        assert!(
            (got[j] - want).abs() < 1e-3,
            "token {j}: {} vs {want}",
            got[j]
        );
        logits = engine.step(&[(seq, t)]).unwrap().pop().unwrap();
    }
    engine.free(seq).unwrap();
    assert!(solution_logprobs(&engine, &[], &solution).is_err());
}
