use relay_engine::candle::bench::bench_decode;
use relay_engine::{CandleEngine, Engine, LoadOptions};
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let path = std::path::PathBuf::from(&a[1]);
    let prompt: usize = a.get(2).map_or(128, |s| s.parse().unwrap());
    let gen: usize = a.get(3).map_or(32, |s| s.parse().unwrap());
    let runs: usize = a.get(4).map_or(3, |s| s.parse().unwrap());
    let requantize = std::env::var("REQUANT").map_or(true, |v| v != "0");
    let t = std::time::Instant::now();
    let e = CandleEngine::load(
        &path,
        LoadOptions {
            threads: Some(std::env::var("THREADS").map_or(2, |v| v.parse().unwrap())),
            max_context: Some(4096),
            requantize,
            native_kernels: std::env::var("NATIVE").map_or(true, |v| v != "0"),
            ..LoadOptions::default()
        },
    )
    .unwrap();
    eprintln!(
        "loaded {:?} in {:.1}s: {:?}",
        e.info().name,
        t.elapsed().as_secs_f64(),
        e.config()
    );
    let r = bench_decode(&e, prompt, gen, runs).unwrap();
    println!("{}", serde_json::to_string(&r).unwrap());
}
