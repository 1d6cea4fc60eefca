//! What went wrong reading, building or writing a model: the one error type of the models
//! layer, below every part of it.

use std::path::{Path, PathBuf};

/// What went wrong reading, building or writing a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Format(String),
    #[error("model config: {0}")]
    Config(String),
    #[error("{file} does not fit the model config:\n  {problems}")]
    Weights { file: String, problems: String },
}

impl ModelError {
    pub fn io(path: &Path, source: std::io::Error) -> ModelError {
        ModelError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
