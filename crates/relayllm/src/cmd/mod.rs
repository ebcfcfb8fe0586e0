//! One module per subcommand.
pub mod bench;
pub mod common;
pub mod data;
pub mod eval;
pub mod export;
pub mod fetch;
pub mod generate;
pub mod grade;
pub mod relay;
pub mod reward;
pub mod serve;
pub mod train;
