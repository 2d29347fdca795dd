pub mod bench;
pub mod eval;
pub mod generate;
pub mod import_gguf;
pub mod init_model;
pub mod plan;
pub mod preprocess;
pub mod train;
