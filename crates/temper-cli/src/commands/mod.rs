pub mod bench;
pub mod eval;
pub mod generate;
pub mod init_model;
pub mod train;
