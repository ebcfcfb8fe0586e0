//! Times each matmul kernel on a few of a GGUF's weights:
//! `kernel_bench MODEL [ROWS] [REPS] [NAME,NAME,...]`.
//! Threads follow `RAYON_NUM_THREADS` / `CANDLE_NUM_THREADS` (default 2).
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let path = std::path::PathBuf::from(&a[1]);
    let m: usize = a.get(2).map_or(1, |s| s.parse().unwrap());
    let reps: usize = a.get(3).map_or(20, |s| s.parse().unwrap());
    for var in ["RAYON_NUM_THREADS", "CANDLE_NUM_THREADS"] {
        if std::env::var_os(var).is_none() {
            std::env::set_var(var, "2");
        }
    }
    let default = "blk.0.attn_q.weight,blk.0.attn_v.weight,blk.0.ffn_gate.weight,blk.0.ffn_down.weight,output.weight";
    let names: Vec<&str> = a
        .get(4)
        .map_or(default, |s| s.as_str())
        .split(',')
        .collect();
    let r = relay_engine::candle::bench::bench_kernels(&path, &names, m, reps).unwrap();
    for t in r {
        println!(
            "{:<36} {:<5} m={} {:<7} {:>9.1} us {:>6.1} GB/s",
            t.tensor, t.dtype, t.rows, t.kernel, t.micros, t.file_gb_per_s
        );
    }
}
