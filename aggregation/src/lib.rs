//! Aggregation strategies over flat f32 parameter vectors: streaming weighted FedAvg with
//! composable partial aggregates, server optimizers (FedAvgM, FedAdam, FedYogi, FedAdagrad),
//! robust rules (median, trimmed mean, Krum, Multi-Krum), clipping and DP noise, and the
//! cryptographic core of secure aggregation (pairwise masking with Shamir-shared seeds), and the
//! deterministic recomputation verifiable jobs are audited by. Pure: no I/O.

mod error;
pub mod fedavg;
pub mod optimizer;
pub mod privacy;
pub mod robust;
pub mod secure;
pub mod strategy;
pub mod verifiable;

pub use error::AggregationError;
pub use fedavg::PartialAggregate;
pub use optimizer::{OptimizerStateError, ServerOptimizer};
pub use strategy::{AggregateOutcome, Aggregator};
pub use verifiable::{Recomputation, recompute};
