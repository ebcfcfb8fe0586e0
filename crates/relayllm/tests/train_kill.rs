//! `train sft` and `train grpo` killed with SIGKILL in the middle of a run (a child process,
//! as an OOM killer or a pulled plug would end it), then continued with `--resume`: the final
//! weights equal an uninterrupted run's, bit for bit. Saves are every step, so a kill often
//! lands inside one (a temporary file left behind is never taken for a checkpoint).

use relay_engine::testing::write_tiny_pair;
use relay_train::checkpoint;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_relayllm"))
}

/// Lines in a step log (0 when it does not exist yet).
fn logged_steps(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// Runs `cmd` to the end; panics with its stderr when it fails.
fn finish(mut cmd: Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts `cmd` and SIGKILLs it once `log` has at least `at` lines. Returns the lines logged
/// when it died; panics if the run ended on its own first (the kill must land mid-run).
fn kill_at(mut cmd: Command, log: &Path, at: usize) -> usize {
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while logged_steps(log) < at {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before step {at}: nothing was killed");
        }
        assert!(Instant::now() < deadline, "no step {at} in 300 s");
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap(); // SIGKILL on Unix: no handler runs, nothing is flushed.
    let status = child.wait().unwrap();
    assert!(!status.success(), "killed, not finished: {status}");
    logged_steps(log)
}

/// The newest checkpoint's weights and optimizer moments, by name.
fn final_state(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let all = state(dir);
    assert!(
        all.iter().any(|(_, v)| v.iter().any(|&x| x != 0.0)),
        "nothing trained: the comparison would mean nothing"
    );
    all
}

fn state(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let c = checkpoint::load(&checkpoint::resolve(dir).unwrap()).unwrap();
    let mut all: Vec<(String, Vec<f32>)> = c
        .params
        .iter()
        .map(|(n, t)| (format!("param.{n}"), t))
        .chain(c.optimizer.iter().map(|(n, t)| (n.clone(), t)))
        .map(|(n, t)| (n, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

/// Kills the run made by `cmd(out, resume)` at each of `kills` logged steps, resuming in
/// between, then lets it finish; returns its folder.
fn killed_and_resumed(
    dir: &Path,
    log_name: &str,
    kills: &[usize],
    cmd: impl Fn(&Path, bool) -> Command,
) -> PathBuf {
    let out = dir.join("killed");
    let log = out.join(log_name);
    let mut last = 0;
    for (i, &at) in kills.iter().enumerate() {
        let logged = kill_at(cmd(&out, i > 0), &log, at);
        assert!(logged >= last, "the log went back: {logged} < {last}");
        last = logged;
    }
    finish(cmd(&out, true));
    out
}

#[test]
fn sft_killed_mid_run_resumes_to_the_uninterrupted_result() {
    let dir = tempfile::tempdir().unwrap();
    let (slm, _) = write_tiny_pair(dir.path(), 512);
    let data = dir.path().join("sft.jsonl");
    let lines: Vec<String> = (0..8)
        .map(|i| {
            serde_json::json!({"messages": [
                {"role": "user", "content": format!("Count to {i}.")},
                {"role": "assistant", "content": format!("{i} and done!")}]})
            .to_string()
        })
        .collect();
    std::fs::write(&data, lines.join("\n") + "\n").unwrap();
    let cmd = |out: &Path, resume: bool| {
        let mut c = bin();
        c.args(["train", "sft", "--model"]).arg(&slm);
        c.arg("--data").arg(&data).arg("--out").arg(out);
        c.args(["--lora-rank", "4", "--epochs", "40", "--lr", "0.01"]);
        c.args(["--grad-accum", "2", "--save-every", "1", "--seed", "3"]);
        c.args(["--threads", "1"]);
        if resume {
            c.arg("--resume");
        }
        c
    };
    let straight = dir.path().join("straight");
    finish(cmd(&straight, false));
    assert_eq!(logged_steps(&straight.join("train_log.jsonl")), 160);

    let killed = killed_and_resumed(dir.path(), "train_log.jsonl", &[20, 70, 120], cmd);
    assert_eq!(final_state(&straight), final_state(&killed));
    // The log reads as one run.
    let losses = |d: &Path| std::fs::read_to_string(d.join("train_log.jsonl")).unwrap();
    let strip = |s: String| -> Vec<String> {
        s.lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                format!("{} {}", v["step"], v["loss"])
            })
            .collect()
    };
    assert_eq!(strip(losses(&straight)), strip(losses(&killed)));
}

#[test]
fn grpo_killed_mid_run_resumes_to_the_uninterrupted_result() {
    let dir = tempfile::tempdir().unwrap();
    let (slm, llm) = write_tiny_pair(dir.path(), 512);
    let data = dir.path().join("prompts.jsonl");
    std::fs::write(
        &data,
        "{\"problem\": \"E3:\", \"answer\": \"3\"}\n{\"problem\": \"H3:\", \"answer\": 64}\n{\"problem\": \"E5:\", \"answer\": \"5\"}\n",
    )
    .unwrap();
    let cmd = |out: &Path, resume: bool| {
        let mut c = bin();
        c.args(["train", "grpo", "--slm"])
            .arg(&slm)
            .arg("--llm")
            .arg(&llm);
        c.arg("--data").arg(&data).arg("--out").arg(out);
        c.args(["--steps", "12", "--group", "2", "--prompts-per-step", "2"]);
        c.args(["--max-tokens", "6", "--no-chat", "--no-instruction"]);
        c.args(["--lora-rank", "2", "--lr", "0.01", "--save-every", "1"]);
        c.args(["--temperature", "1.0", "--threads", "1"]);
        if resume {
            c.arg("--resume");
        }
        c
    };
    let straight = dir.path().join("straight");
    finish(cmd(&straight, false));
    assert_eq!(logged_steps(&straight.join("grpo_log.jsonl")), 12);

    let killed = killed_and_resumed(dir.path(), "grpo_log.jsonl", &[3, 7], cmd);
    // The untrained tiny SLM rarely earns a reward that differs within a group, so its weights
    // may not move; the rollouts (prompt order, sampled tokens, rewards) are what resuming
    // has to get right here, and they are compared whole.
    assert_eq!(state(&straight), state(&killed));
    assert_eq!(logged_steps(&killed.join("grpo_log.jsonl")), 12);
    let rollouts = |d: &Path| std::fs::read_to_string(d.join("rollouts.jsonl")).unwrap();
    assert_eq!(rollouts(&straight).lines().count(), 12 * 2 * 2);
    assert_eq!(rollouts(&straight), rollouts(&killed));
}
