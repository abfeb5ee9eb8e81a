//! The aggregation strategy section of a job spec. The strategies themselves live in
//! `fedmesh-aggregation`; this is only what a job states.

use serde::{Deserialize, Serialize};

/// How the aggregator turns the round's updates into the next global model.
///
/// JSON: `{"rule": "fedavg"}`, `{"rule": "trimmed_mean", "beta": 0.1}`,
/// `{"rule": "fedavg", "server": {"optimizer": "fedadam", "eta": 0.01}, "clip_norm": 5.0}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StrategySpec {
    /// How updates are combined.
    #[serde(flatten)]
    pub rule: AggregationRule,
    /// An optional server optimizer applied to the combined delta (the FedOpt family).
    #[serde(default)]
    pub server: Option<ServerOptimizerSpec>,
    /// Clip each update to this L2 norm before combining.
    #[serde(default)]
    pub clip_norm: Option<f32>,
    /// Central differential privacy: Gaussian noise with std `noise_multiplier * clip_norm *`
    /// the largest share one update weighs (drawn from the aggregator's own randomness).
    #[serde(default)]
    pub noise_multiplier: Option<f32>,
}

impl Default for StrategySpec {
    fn default() -> Self {
        Self {
            rule: AggregationRule::FedAvg,
            server: None,
            clip_norm: None,
            noise_multiplier: None,
        }
    }
}

/// The rule that combines updates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "snake_case")]
pub enum AggregationRule {
    /// Weighted mean by sample count.
    #[serde(rename = "fedavg")]
    FedAvg,
    /// Coordinate-wise median.
    Median,
    /// Coordinate-wise mean after dropping the `beta` fraction at each end.
    TrimmedMean { beta: f32 },
    /// The single update closest to its n - f - 2 neighbours.
    Krum { f: usize },
    /// The mean of the `m` updates with the best Krum scores.
    MultiKrum { f: usize, m: usize },
}

/// A server-side optimizer over the averaged delta (Reddi et al., "Adaptive Federated Optimization").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "optimizer", rename_all = "lowercase")]
pub enum ServerOptimizerSpec {
    /// Server momentum: `v = beta1 v + delta; x += eta v`.
    FedAvgM {
        #[serde(default = "defaults::eta_one")]
        eta: f32,
        #[serde(default = "defaults::momentum")]
        beta1: f32,
    },
    FedAdam(AdaptiveParams),
    FedYogi(AdaptiveParams),
    FedAdagrad(AdaptiveParams),
}

/// The parameters shared by FedAdam, FedYogi and FedAdagrad.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdaptiveParams {
    #[serde(default = "defaults::eta")]
    pub eta: f32,
    #[serde(default = "defaults::beta1")]
    pub beta1: f32,
    #[serde(default = "defaults::beta2")]
    pub beta2: f32,
    #[serde(default = "defaults::tau")]
    pub tau: f32,
}

mod defaults {
    pub fn eta_one() -> f32 {
        1.0
    }
    pub fn momentum() -> f32 {
        0.9
    }
    pub fn eta() -> f32 {
        0.01
    }
    pub fn beta1() -> f32 {
        0.9
    }
    pub fn beta2() -> f32 {
        0.99
    }
    pub fn tau() -> f32 {
        1e-3
    }
}
