//! relayllm: the command-line interface that wires the crates together.
fn main() {}
