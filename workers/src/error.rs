use std::path::PathBuf;

/// Failures to load or run a model. Each names the file or tensor involved.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model folder {dir} has no {name}")]
    MissingFile { dir: PathBuf, name: String },
    #[error("failed to read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("invalid model config {path}: {source}")]
    Config { path: PathBuf, source: serde_json::Error },
    #[error("failed to open weights {path}: {source}")]
    Weights { path: PathBuf, source: candle_core::Error },
    #[error("failed to load model from {path}: {source}")]
    Load { path: PathBuf, source: candle_core::Error },
    #[error("invalid tokenizer {path}: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error("invalid settings: {0}")]
    Settings(String),
    #[error("model computation failed: {0}")]
    Compute(#[from] candle_core::Error),
}
