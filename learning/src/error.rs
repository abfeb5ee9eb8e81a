//! The learning crate's errors: each names the file, line or setting that is wrong.

use std::path::PathBuf;

/// What can go wrong loading data, building a model or training.
#[derive(Debug, thiserror::Error)]
pub enum LearningError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{path}: {problem}")]
    BadFile { path: PathBuf, problem: String },
    #[error("{path}, line {line}: {problem}")]
    BadLine { path: PathBuf, line: usize, problem: String },
    #[error("unknown data set `{0}`: use mnist5k, digits, breast-cancer, or a path to a file")]
    UnknownDataset(String),
    #[error("invalid model `{0}`: use `softmax` or `mlp:H1,H2,...` with positive sizes")]
    BadModelName(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the model has {expected} parameters but {found} were given")]
    ParameterCount { expected: usize, found: usize },
    #[error("the data has {found} features but the model expects {expected}")]
    FeatureCount { expected: usize, found: usize },
}

pub type Result<T, E = LearningError> = std::result::Result<T, E>;
