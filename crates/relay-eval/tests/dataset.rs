//! Benchmark file parsing: good records load (with the instruction appended once), bad ones
//! fail with the file, the line number and what is wrong.

use relay_eval::{Dataset, EvalError, INSTRUCTION};

fn load(text: &str) -> Result<Dataset, EvalError> {
    Dataset::from_bytes("bench.jsonl", text.as_bytes())
}

fn error_at(text: &str) -> (usize, String) {
    match load(text) {
        Err(EvalError::Dataset { line, reason, .. }) => (line, reason),
        other => panic!("expected a dataset error, got {other:?}"),
    }
}

#[test]
fn loads_records_and_appends_the_instruction_once() {
    let text = format!(
        "{{\"problem\": \"What is 1+1?\", \"answer\": \"2\", \"solution\": \"1+1=2 #### 2\"}}\n\n\
         {{\"problem\": \"Find x.\\n{}\", \"answer\": \"\\\\frac{{1}}{{2}}\"}}\n\
         {{\"problem\": \"AIME\", \"answer\": 204}}\n",
        INSTRUCTION.replace('\\', "\\\\")
    );
    let ds = load(&text).unwrap();
    assert_eq!(ds.len(), 3);
    assert_eq!(
        ds.problems[0].problem,
        format!("What is 1+1?\n{INSTRUCTION}")
    );
    assert_eq!(ds.problems[0].answer, "2");
    assert_eq!(
        ds.problems[1].problem,
        format!("Find x.\n{INSTRUCTION}"),
        "already there: not appended twice"
    );
    assert_eq!(ds.problems[1].answer, "\\frac{1}{2}");
    assert_eq!(
        ds.problems[2].answer, "204",
        "a numeric answer becomes its text"
    );
    // Indices count records, not lines: the blank line does not shift them.
    assert_eq!(
        ds.problems.iter().map(|p| p.index).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert_eq!(ds.sha256.len(), 64);
}

#[test]
fn missing_answer_names_the_line_and_field() {
    let (line, reason) =
        error_at("{\"problem\": \"a\", \"answer\": \"1\"}\n{\"problem\": \"b\"}\n");
    assert_eq!(line, 2);
    assert!(reason.contains("missing field `answer`"), "{reason}");
}

#[test]
fn missing_problem_names_the_field() {
    let (line, reason) = error_at("{\"question\": \"a\", \"answer\": \"1\"}\n");
    assert_eq!(line, 1);
    assert!(reason.contains("missing field `problem`"), "{reason}");
}

#[test]
fn invalid_json_names_the_line() {
    let (line, reason) =
        error_at("{\"problem\": \"a\", \"answer\": \"1\"}\n\n{\"problem\": \"b\", \"answer\": \n");
    assert_eq!(line, 3, "blank lines still count for the line number");
    assert!(reason.contains("not valid JSON"), "{reason}");
}

#[test]
fn wrong_types_are_named() {
    let (_, reason) = error_at("{\"problem\": 5, \"answer\": \"1\"}\n");
    assert!(
        reason.contains("`problem` must be a string, got a number"),
        "{reason}"
    );
    let (_, reason) = error_at("{\"problem\": \"a\", \"answer\": [1]}\n");
    assert!(
        reason.contains("`answer` must be a string or a number, got an array"),
        "{reason}"
    );
    let (_, reason) = error_at("[\"a\", \"1\"]\n");
    assert!(reason.contains("expected a JSON object"), "{reason}");
    let (_, reason) = error_at("{\"problem\": \"a\", \"answer\": \" \"}\n");
    assert!(reason.contains("`answer` is empty"), "{reason}");
}

#[test]
fn empty_file_is_an_error() {
    let (line, reason) = error_at("\n\n");
    assert_eq!(line, 0);
    assert!(reason.contains("empty"), "{reason}");
}

#[test]
fn error_message_has_path_and_line() {
    let err = load("{\"problem\": \"a\"}\n").unwrap_err();
    assert_eq!(err.to_string(), "bench.jsonl:1: missing field `answer`");
    assert_eq!(err.label(), "dataset");
}

#[test]
fn shared_benchmarks_load() {
    // The shared benchmark files sit beside the repository (../shared).
    let Some(dir) = relay_engine::testing::shared_benchmarks_dir() else {
        return;
    };
    for (name, n) in [
        ("gsm8k.jsonl", 1319),
        ("math500.jsonl", 500),
        ("aime24.jsonl", 30),
    ] {
        let ds = Dataset::load(dir.join(name)).unwrap();
        assert_eq!(ds.len(), n, "{name}");
        for p in &ds.problems {
            assert_eq!(
                p.problem.matches(INSTRUCTION).count(),
                1,
                "{name} #{}",
                p.index
            );
        }
    }
}
