//! Sampling: greedy is argmax, the same seed gives the same tokens, top-k and top-p restrict
//! the candidates; plus the log-softmax helpers.

use relay_engine::sampling::{argmax, log_softmax, top1_prob, LogitStats, Sampler, SamplingParams};

fn logits() -> Vec<f32> {
    // A spread-out distribution over 50 tokens with its maximum at 17.
    (0..50)
        .map(|i| ((i * 37 % 50) as f32) * 0.1 - if i == 17 { -10.0 } else { 0.0 })
        .collect()
}

fn draw(p: SamplingParams, n: usize, l: &[f32]) -> Vec<u32> {
    let mut s = Sampler::new(p);
    (0..n).map(|_| s.sample(l)).collect()
}

#[test]
fn greedy_is_argmax() {
    let l = logits();
    assert_eq!(argmax(&l), 17);
    assert!(draw(SamplingParams::greedy(), 20, &l)
        .iter()
        .all(|&t| t == 17));
    let flat: Vec<f32> = (0..10).map(|i| i as f32).collect();
    assert_eq!(Sampler::new(SamplingParams::default()).sample(&flat), 9);
}

#[test]
fn top_k_one_is_greedy() {
    let l: Vec<f32> = (0..30).map(|i| (i % 7) as f32 * 0.01).collect();
    let p = SamplingParams {
        temperature: 5.0,
        top_k: 1,
        top_p: 1.0,
        seed: 3,
    };
    assert!(draw(p, 50, &l).iter().all(|&t| t as usize == argmax(&l)));
}

#[test]
fn same_seed_same_tokens_other_seed_other_tokens() {
    let l: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin()).collect();
    let p = SamplingParams {
        temperature: 1.0,
        top_p: 1.0,
        top_k: 0,
        seed: 1234,
    };
    let a = draw(p.clone(), 64, &l);
    let b = draw(p.clone(), 64, &l);
    assert_eq!(a, b);
    let c = draw(SamplingParams { seed: 99, ..p }, 64, &l);
    assert_ne!(a, c);
    // Not degenerate: a near-flat distribution at t=1 yields many distinct tokens.
    let mut u = a.clone();
    u.sort();
    u.dedup();
    assert!(u.len() > 20, "{} distinct", u.len());
}

#[test]
fn top_k_restricts_candidates() {
    let l: Vec<f32> = (0..40).map(|i| i as f32 * 0.05).collect();
    let p = SamplingParams {
        temperature: 1.0,
        top_p: 1.0,
        top_k: 3,
        seed: 5,
    };
    let toks = draw(p, 300, &l);
    assert!(
        toks.iter().all(|&t| t >= 37),
        "only the 3 largest logits (ids 37..39) may appear"
    );
    for id in 37..40 {
        assert!(toks.contains(&id));
    }
}

#[test]
fn top_p_keeps_the_nucleus() {
    // Probabilities ~ [0.5, 0.3, 0.15, 0.05] (ids 0..3).
    let l: Vec<f32> = [0.5f32, 0.3, 0.15, 0.05].iter().map(|p| p.ln()).collect();
    let p = SamplingParams {
        temperature: 1.0,
        top_p: 0.75,
        top_k: 0,
        seed: 11,
    };
    let toks = draw(p.clone(), 500, &l);
    // 0.5 < 0.75 ≤ 0.8: the nucleus is {0, 1}.
    assert!(toks.iter().all(|&t| t <= 1));
    let ones = toks.iter().filter(|&&t| t == 1).count() as f32 / 500.0;
    assert!(
        (ones - 0.375).abs() < 0.08,
        "token 1 share {ones}, expected 0.3/0.8"
    );
    // Tiny top_p keeps only the best token.
    let p = SamplingParams { top_p: 0.01, ..p };
    assert!(draw(p, 50, &l).iter().all(|&t| t == 0));
    // top_p = 1 lets the tail through.
    let p = SamplingParams {
        temperature: 1.0,
        top_p: 1.0,
        top_k: 0,
        seed: 11,
    };
    assert!(draw(p, 500, &l).contains(&3));
}

#[test]
fn temperature_sharpens() {
    let l: Vec<f32> = [1.0f32, 0.0, 0.0, 0.0].to_vec();
    let cold = draw(
        SamplingParams {
            temperature: 0.1,
            top_p: 1.0,
            top_k: 0,
            seed: 2,
        },
        200,
        &l,
    );
    let hot = draw(
        SamplingParams {
            temperature: 10.0,
            top_p: 1.0,
            top_k: 0,
            seed: 2,
        },
        200,
        &l,
    );
    let share = |v: &[u32]| v.iter().filter(|&&t| t == 0).count();
    assert!(share(&cold) > 195 && share(&hot) < 100);
}

#[test]
fn log_softmax_and_top1() {
    let l = vec![2.0f32, 1.0, 0.0, -1.0];
    let lp = log_softmax(&l);
    let total: f32 = lp.iter().map(|x| x.exp()).sum();
    assert!((total - 1.0).abs() < 1e-6);
    assert!((lp[0] - lp[1] - 1.0).abs() < 1e-6);
    let (tok, p) = top1_prob(&l);
    assert_eq!(tok, 0);
    assert!((p - lp[0].exp()).abs() < 1e-6);
    let (_, p) = top1_prob(&[0.0; 4]);
    assert!((p - 0.25).abs() < 1e-6);
    // Large logits do not overflow.
    let lp = log_softmax(&[1000.0, 1000.0]);
    assert!((lp[0] - (0.5f32).ln()).abs() < 1e-6);
}

/// The fast log-sum-exp (polynomial exp, lanes, f32 partial sums) against an f64 reference on
/// a vocabulary-sized vector spanning the whole useful range, plus the one-pass stats.
#[test]
fn log_softmax_matches_an_f64_reference_over_a_real_sized_vocabulary() {
    let mut x = 0x2545F4914F6CDD1Du64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 40) as f32 / (1u64 << 24) as f32
    };
    for (n, spread) in [(151_936usize, 30.0f32), (1_000, 200.0), (17, 5.0), (1, 1.0)] {
        let l: Vec<f32> = (0..n).map(|_| (next() - 0.5) * spread).collect();
        let max = l.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let ln_sum = l.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
        let got = log_softmax(&l);
        for (i, (&g, &v)) in got.iter().zip(&l).enumerate() {
            let want = (v as f64 - max) - ln_sum;
            assert!(
                (g as f64 - want).abs() <= 2e-5 * want.abs().max(1.0),
                "n={n} [{i}]: {g} vs {want}"
            );
        }
        let stats = LogitStats::new(&l);
        assert_eq!(stats.argmax as usize, argmax(&l));
        let (top, p1) = top1_prob(&l);
        assert_eq!(top, stats.argmax);
        assert!((stats.top1_prob(&l) - p1).abs() < 1e-6);
        assert_eq!(
            stats.logprob(&l, 3.min(n as u32 - 1)),
            Some(got[3.min(n - 1)])
        );
        assert_eq!(stats.logprob(&l, n as u32), None);
        // Probabilities sum to one.
        let total: f64 = got.iter().map(|&g| (g as f64).exp()).sum();
        assert!((total - 1.0).abs() < 1e-4, "n={n}: Σp = {total}");
    }
    // Extremes: logits far below the max underflow to probability 0, not NaN.
    let l = [0.0f32, -1e4, -90.0, -86.0, f32::MIN];
    let got = log_softmax(&l);
    assert!(
        got.iter().all(|g| !g.is_nan()) && got[0].abs() < 1e-6,
        "{got:?}"
    );
}

/// The sampler written plainly: every candidate sorted before the walk. The sampler sorts only
/// the head up front and the rest when a walk reaches it; both must pick the same token for the
/// same draw.
fn full_sort_choose(p: &SamplingParams, logits: &[f32], u: f32) -> u32 {
    let mut idx: Vec<usize> = (0..logits.len()).filter(|&i| !logits[i].is_nan()).collect();
    let k = if p.top_k == 0 {
        idx.len()
    } else {
        p.top_k.min(idx.len())
    };
    let cmp = |a: &usize, b: &usize| logits[*b].total_cmp(&logits[*a]).then(a.cmp(b));
    idx.sort_by(cmp);
    idx.truncate(k);
    let max = logits[idx[0]];
    let mut probs: Vec<f32> = idx
        .iter()
        .map(|&i| ((logits[i] - max) / p.temperature).exp())
        .collect();
    let sum = probs.iter().map(|&x| f64::from(x)).sum::<f64>() as f32;
    probs.iter_mut().for_each(|x| *x /= sum);
    if p.top_p < 1.0 {
        let mut acc = 0.0f64;
        let mut keep = probs.len();
        for (i, &pr) in probs.iter().enumerate() {
            acc += f64::from(pr);
            if acc >= f64::from(p.top_p) {
                keep = i + 1;
                break;
            }
        }
        probs.truncate(keep.max(1));
    }
    let total: f64 = probs.iter().map(|&x| f64::from(x)).sum();
    let mut r = f64::from(u) * total;
    for (j, &pr) in probs.iter().enumerate() {
        r -= f64::from(pr);
        if r <= 0.0 {
            return idx[j] as u32;
        }
    }
    idx[probs.len() - 1] as u32
}

#[test]
fn sorting_only_the_head_picks_what_sorting_everything_picks() {
    use rand::{rngs::StdRng, Rng, SeedableRng};
    // Vocabularies past the sorted head (256), peaked and flat ones (the flat ones send most
    // draws and nuclei into the tail), ties, NaNs, every truncation.
    let mut gen = StdRng::seed_from_u64(7);
    let mut tail_draws = 0;
    let mut cases = 0;
    for case in 0..120u64 {
        let n = [300, 1000, 5000][case as usize % 3];
        let spread = [0.05f32, 1.0, 4.0, 12.0][(case / 3) as usize % 4];
        let mut logits: Vec<f32> = (0..n).map(|_| gen.gen::<f32>() * spread).collect();
        if case % 5 == 0 {
            for l in logits.iter_mut().step_by(7) {
                *l = 0.5 * spread; // ties
            }
        }
        if case % 11 == 0 {
            logits[3] = f32::NAN;
        }
        let p = SamplingParams {
            temperature: [0.7, 1.0, 1.5][case as usize % 3],
            top_p: [1.0, 0.9, 0.999][(case / 2) as usize % 3],
            top_k: [0, 50, 400][(case / 5) as usize % 3],
            seed: case,
        };
        let mut sampler = Sampler::new(p.clone());
        let mut draws = StdRng::seed_from_u64(case);
        let mut order: Vec<usize> = (0..n).filter(|&i| !logits[i].is_nan()).collect();
        order.sort_by(|a, b| logits[*b].total_cmp(&logits[*a]).then(a.cmp(b)));
        for _ in 0..40 {
            let u: f32 = draws.gen();
            let want = full_sort_choose(&p, &logits, u);
            assert_eq!(sampler.sample(&logits), want, "case {case} {p:?}");
            if order.iter().position(|&i| i == want as usize).unwrap() >= 256 {
                tail_draws += 1;
            }
            cases += 1;
        }
    }
    assert!(
        tail_draws > 100,
        "only {tail_draws} of {cases} draws reached the tail"
    );
}
