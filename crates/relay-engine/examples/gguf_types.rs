use candle_core::quantized::gguf_file;
fn main() {
    let p = std::env::args().nth(1).unwrap();
    let mut f = std::fs::File::open(&p).unwrap();
    let c = gguf_file::Content::read(&mut f).unwrap();
    let mut v: Vec<_> = c
        .tensor_infos
        .iter()
        .filter(|(n, _)| n.starts_with("blk.0.") || !n.starts_with("blk."))
        .map(|(n, t)| format!("{n} {:?} {:?}", t.ggml_dtype, t.shape))
        .collect();
    v.sort();
    for l in v {
        println!("{l}");
    }
    let mut counts = std::collections::BTreeMap::new();
    for t in c.tensor_infos.values() {
        *counts.entry(format!("{:?}", t.ggml_dtype)).or_insert(0) += 1;
    }
    println!("{counts:?}");
}
