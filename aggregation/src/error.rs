//! Aggregation errors, each naming the numbers that are wrong.

/// Why an update or a configuration was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AggregationError {
    #[error("update from {contributor} has {found} parameters, the model has {expected}")]
    WrongLength { contributor: String, expected: usize, found: usize },
    #[error("update from {contributor} contains a value that is not finite (NaN or infinity)")]
    NotFinite { contributor: String },
    #[error("update from {contributor} has weight {weight}; weights must be positive")]
    BadWeight { contributor: String, weight: f64 },
    #[error("{contributor} already contributed to this aggregate")]
    Duplicate { contributor: String },
    #[error("no updates to aggregate")]
    Empty,
    #[error("{rule} with {n} updates gives no guarantee: {requirement}")]
    NoGuarantee { rule: &'static str, n: usize, requirement: String },
    #[error("invalid strategy: {0}")]
    Invalid(String),
}
