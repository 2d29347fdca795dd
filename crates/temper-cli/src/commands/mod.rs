pub mod eval;
pub mod generate;
pub mod preprocess;
pub mod train;
