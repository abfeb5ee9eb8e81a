//! Server optimizers on the round's averaged delta (the FedOpt family, Reddi et al. 2021): plain
//! application, FedAvgM, FedAdam, FedYogi and FedAdagrad, with state that persists between rounds.

use crate::AggregationError;
use fedmesh_protocol::strategy::{AdaptiveParams, ServerOptimizerSpec};
use serde::{Deserialize, Serialize};

/// A server optimizer and its state (serializable, so a node can keep it in its store).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerOptimizer {
    spec: Option<ServerOptimizerSpec>,
    /// First moment (momentum) per parameter; empty until first used.
    momentum: Vec<f32>,
    /// Second moment per parameter; empty until first used.
    second: Vec<f32>,
    /// Rounds applied so far.
    pub rounds: u64,
}

impl ServerOptimizer {
    /// `None`: the averaged delta is added to the model as it is (plain FedAvg).
    pub fn from_spec(spec: Option<&ServerOptimizerSpec>) -> Result<Self, AggregationError> {
        if let Some(spec) = spec {
            check(spec)?;
        }
        Ok(Self { spec: spec.cloned(), momentum: Vec::new(), second: Vec::new(), rounds: 0 })
    }

    /// Updates `global` in place with the round's averaged `delta`.
    pub fn apply(&mut self, global: &mut [f32], delta: &[f32]) -> Result<(), AggregationError> {
        if global.len() != delta.len() {
            return Err(AggregationError::WrongLength {
                contributor: "the aggregate".to_owned(),
                expected: global.len(),
                found: delta.len(),
            });
        }
        if self.momentum.len() != global.len() {
            self.momentum = vec![0.0; global.len()];
            self.second = vec![0.0; global.len()];
        }
        self.rounds += 1;
        match self.spec.clone() {
            None => global.iter_mut().zip(delta).for_each(|(x, d)| *x += d),
            Some(ServerOptimizerSpec::FedAvgM { eta, beta1 }) => {
                for ((x, v), &d) in global.iter_mut().zip(&mut self.momentum).zip(delta) {
                    *v = beta1 * *v + d;
                    *x += eta * *v;
                }
            }
            Some(ServerOptimizerSpec::FedAdam(p)) => {
                self.adaptive(global, delta, &p, |v, d2, b2| b2 * v + (1.0 - b2) * d2)
            }
            Some(ServerOptimizerSpec::FedYogi(p)) => {
                self.adaptive(global, delta, &p, |v, d2, b2| {
                    v - (1.0 - b2) * d2 * (v - d2).signum()
                })
            }
            Some(ServerOptimizerSpec::FedAdagrad(p)) => {
                self.adaptive(global, delta, &p, |v, d2, _| v + d2)
            }
        }
        Ok(())
    }

    /// `m = b1 m + (1 - b1) d; v = second(v, d^2, b2); x += eta m / (sqrt(v) + tau)`.
    fn adaptive(
        &mut self,
        global: &mut [f32],
        delta: &[f32],
        p: &AdaptiveParams,
        second: impl Fn(f32, f32, f32) -> f32,
    ) {
        for (((x, m), v), &d) in
            global.iter_mut().zip(&mut self.momentum).zip(&mut self.second).zip(delta)
        {
            *m = p.beta1 * *m + (1.0 - p.beta1) * d;
            *v = second(*v, d * d, p.beta2);
            *x += p.eta * *m / (v.sqrt() + p.tau);
        }
    }
}

fn check(spec: &ServerOptimizerSpec) -> Result<(), AggregationError> {
    let invalid = |what: String| Err(AggregationError::Invalid(what));
    match spec {
        ServerOptimizerSpec::FedAvgM { eta, beta1 } => {
            if eta.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)
                || !(0.0..1.0).contains(beta1)
            {
                return invalid(format!(
                    "fedavgm needs eta > 0 and beta1 in [0, 1), got eta {eta}, beta1 {beta1}"
                ));
            }
        }
        ServerOptimizerSpec::FedAdam(p)
        | ServerOptimizerSpec::FedYogi(p)
        | ServerOptimizerSpec::FedAdagrad(p) => {
            if p.eta.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)
                || !(0.0..1.0).contains(&p.beta1)
                || !(0.0..1.0).contains(&p.beta2)
                || p.tau.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)
            {
                return invalid(format!(
                    "adaptive optimizers need eta > 0, beta1 and beta2 in [0, 1), tau > 0; got {p:?}"
                ));
            }
        }
    }
    Ok(())
}
