//! Every cell of DESIGN.md's reward table, both ρ definitions, the ablations and the JSON shape.
use relay_core::reward::*;

fn r(correct: bool, calls: &[(u64, u64)], tokens: u64) -> Rollout {
    Rollout {
        correct,
        calls: calls
            .iter()
            .map(|&(requested_n, served)| RolloutCall {
                requested_n,
                served,
            })
            .collect(),
        response_tokens: tokens,
    }
}

fn rewards(rollouts: Vec<Rollout>) -> GroupReward {
    group_rewards(
        &RolloutGroup { rollouts },
        RewardKind::Difficulty,
        RhoKind::Requested,
    )
}

#[test]
fn student_solvable_row() {
    // correct no call, correct called (ρ = 10/100), wrong no call, wrong called
    let g = rewards(vec![
        r(true, &[], 100),
        r(true, &[(10, 10)], 100),
        r(false, &[], 100),
        r(false, &[(20, 20)], 100),
    ]);
    assert_eq!(g.scenario, Scenario::StudentSolvable);
    assert_eq!(g.rewards, vec![1.5, 0.9, 0.0, 0.0]);
}

#[test]
fn teacher_dependent_row() {
    let g = rewards(vec![
        r(true, &[(25, 25)], 100),
        r(false, &[], 100),
        r(false, &[(50, 50)], 100),
    ]);
    assert_eq!(g.scenario, Scenario::TeacherDependent);
    assert_eq!(g.rewards, vec![0.75, -1.0, 0.0]);
}

#[test]
fn teacher_unsolvable_row() {
    let g = rewards(vec![r(false, &[], 100), r(false, &[(30, 30)], 100)]);
    assert_eq!(g.scenario, Scenario::TeacherUnsolvable);
    assert_eq!(g.rewards, vec![0.0, 0.3]);
}

#[test]
fn scenario_is_per_group_not_per_rollout() {
    // The same wrong-without-call rollout earns −1 or 0 depending on its group.
    let wrong = r(false, &[], 100);
    assert_eq!(
        rewards(vec![wrong.clone(), r(true, &[(5, 5)], 100)]).rewards[0],
        -1.0
    );
    assert_eq!(
        rewards(vec![wrong.clone(), r(true, &[], 100)]).rewards[0],
        0.0
    );
    assert_eq!(rewards(vec![wrong]).rewards[0], 0.0);
}

#[test]
fn a_call_that_served_nothing_is_not_a_call() {
    // n = 0 or a failed call: "called" means at least one served call.
    let g = rewards(vec![r(true, &[(8, 0)], 100)]);
    assert_eq!(g.scenario, Scenario::StudentSolvable);
    assert_eq!(g.rewards, vec![1.5]);
}

#[test]
fn rho_requested_caps_each_call_and_the_total() {
    let one = r(true, &[(10_000, 20)], 10_000);
    assert!((one.rho(RhoKind::Requested) - 4096.0 / 10_000.0).abs() < 1e-12);
    assert_eq!(one.rho(RhoKind::Served), 20.0 / 10_000.0);
    let over = r(true, &[(300, 10), (300, 10)], 100);
    assert_eq!(over.rho(RhoKind::Requested), 1.0);
    assert_eq!(over.rho(RhoKind::Served), 0.2);
    assert_eq!(r(false, &[], 0).rho(RhoKind::Requested), 0.0);
}

#[test]
fn huge_calls_saturate_instead_of_wrapping() {
    // Two calls of 2^63 served tokens sum past u64::MAX: the help is all of the response.
    let half = 1u64 << 63;
    let huge = r(true, &[(half, half), (half, half)], 100);
    assert_eq!(huge.rho(RhoKind::Served), 1.0);
    assert_eq!(huge.rho(RhoKind::Requested), 1.0);
    let group = RolloutGroup {
        rollouts: vec![huge, r(false, &[(half, half), (half, half)], 100)],
    };
    let g = group_rewards(&group, RewardKind::Difficulty, RhoKind::Served);
    assert_eq!(g.scenario, Scenario::TeacherDependent);
    assert_eq!(g.rewards, vec![0.0, 0.0]);
    let simple = group_rewards(&group, RewardKind::Simple, RhoKind::Served);
    assert_eq!(simple.rewards, vec![0.0, -1.0]);
}

#[test]
fn rho_served_changes_the_reward() {
    let group = RolloutGroup {
        rollouts: vec![r(true, &[(40, 10)], 100)],
    };
    assert_eq!(
        group_rewards(&group, RewardKind::Difficulty, RhoKind::Requested).rewards,
        vec![0.6]
    );
    assert_eq!(
        group_rewards(&group, RewardKind::Difficulty, RhoKind::Served).rewards,
        vec![0.9]
    );
}

#[test]
fn ablations() {
    let group = RolloutGroup {
        rollouts: vec![
            r(true, &[(20, 20)], 100),
            r(false, &[(50, 50)], 100),
            r(false, &[], 10),
        ],
    };
    let simple = group_rewards(&group, RewardKind::Simple, RhoKind::Requested);
    assert_eq!(simple.rewards, vec![0.8, -0.5, 0.0]);
    let acc = group_rewards(&group, RewardKind::Accuracy, RhoKind::Requested);
    assert_eq!(acc.rewards, vec![1.0, 0.0, 0.0]);
}

#[test]
fn json_shape() {
    let input = r#"{"rollouts": [{"correct": true, "calls": [], "response_tokens": 12},
                                 {"correct": false, "calls": [{"requested_n": 4, "served": 4}], "response_tokens": 8}]}"#;
    let group: RolloutGroup = serde_json::from_str(input).unwrap();
    let out = serde_json::to_value(group_rewards(
        &group,
        RewardKind::Difficulty,
        RhoKind::Requested,
    ))
    .unwrap();
    assert_eq!(
        out,
        serde_json::json!({"scenario": "student-solvable", "rewards": [1.5, 0.0]})
    );
    let s = serde_json::to_value(Scenario::TeacherUnsolvable).unwrap();
    assert_eq!(s, "teacher-unsolvable");
}
