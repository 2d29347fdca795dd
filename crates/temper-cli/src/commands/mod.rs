pub mod eval;
pub mod generate;
pub mod train;
