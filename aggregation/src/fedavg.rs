//! Streaming weighted FedAvg: updates are folded into a running weighted sum as they arrive, so
//! memory is O(parameters), and partial sums from groups compose exactly into the flat average.

use crate::AggregationError;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Elements per parallel chunk: large enough to amortize scheduling, small enough to balance.
const CHUNK: usize = 1 << 16;

/// A weighted sum of updates and the total weight, in f64 so that composition is exact to f32
/// precision whatever the order. Serializable: a group aggregator ships it up a tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartialAggregate {
    pub weighted_sum: Vec<f64>,
    pub total_weight: f64,
    /// Who contributed, with their weights, for the audit trail.
    pub contributors: Vec<(String, f64)>,
}

impl PartialAggregate {
    /// An empty sum over `num_params` parameters.
    pub fn new(num_params: usize) -> Self {
        Self { weighted_sum: vec![0.0; num_params], total_weight: 0.0, contributors: Vec::new() }
    }

    pub fn num_params(&self) -> usize {
        self.weighted_sum.len()
    }

    fn admit(&self, contributor: &str, weight: f64, len: usize) -> Result<(), AggregationError> {
        let contributor_name = || contributor.to_owned();
        if len != self.num_params() {
            return Err(AggregationError::WrongLength {
                contributor: contributor_name(),
                expected: self.num_params(),
                found: len,
            });
        }
        if !(weight > 0.0 && weight.is_finite()) {
            return Err(AggregationError::BadWeight { contributor: contributor_name(), weight });
        }
        if self.contributors.iter().any(|(name, _)| name == contributor) {
            return Err(AggregationError::Duplicate { contributor: contributor_name() });
        }
        Ok(())
    }

    /// Folds in one update with its weight (its sample count).
    pub fn add(
        &mut self,
        contributor: &str,
        weight: f64,
        update: &[f32],
    ) -> Result<(), AggregationError> {
        self.admit(contributor, weight, update.len())?;
        // One pass: each chunk is checked while it is in cache and folded only if finite. An
        // update with a non-finite value is then taken out of the chunks it reached (exact to far
        // below f32 precision, since the sum is f64), so the aggregate is as before.
        let folded: Vec<bool> = self
            .weighted_sum
            .par_chunks_mut(CHUNK)
            .zip(update.par_chunks(CHUNK))
            .map(|(sum, update)| fold_if_finite(sum, update, weight))
            .collect();
        if folded.contains(&false) {
            self.weighted_sum
                .par_chunks_mut(CHUNK)
                .zip(update.par_chunks(CHUNK))
                .zip(folded.par_iter())
                .filter(|(_, folded)| **folded)
                .for_each(|((sum, update), _)| fold(sum, update, -weight));
            return Err(AggregationError::NotFinite { contributor: contributor.to_owned() });
        }
        self.total_weight += weight;
        self.contributors.push((contributor.to_owned(), weight));
        Ok(())
    }

    /// Folds in another partial aggregate (a group's), as if its members had been added here.
    pub fn merge(&mut self, other: &PartialAggregate) -> Result<(), AggregationError> {
        if other.num_params() != self.num_params() {
            return Err(AggregationError::WrongLength {
                contributor: "a group aggregate".to_owned(),
                expected: self.num_params(),
                found: other.num_params(),
            });
        }
        for (name, weight) in &other.contributors {
            self.admit(name, *weight, other.num_params())?;
        }
        self.weighted_sum.par_chunks_mut(CHUNK).zip(other.weighted_sum.par_chunks(CHUNK)).for_each(
            |(sum, add)| {
                sum.iter_mut().zip(add).for_each(|(s, a)| *s += a);
            },
        );
        self.total_weight += other.total_weight;
        self.contributors.extend(other.contributors.iter().cloned());
        Ok(())
    }

    /// The weighted mean.
    pub fn mean(&self) -> Result<Vec<f32>, AggregationError> {
        if self.contributors.is_empty() {
            return Err(AggregationError::Empty);
        }
        let scale = 1.0 / self.total_weight;
        Ok(self.weighted_sum.par_iter().map(|&s| (s * scale) as f32).collect())
    }
}

/// Adds `weight * update` to `sum` if every value of `update` is finite; says whether it did.
fn fold_if_finite(sum: &mut [f64], update: &[f32], weight: f64) -> bool {
    let finite = update.iter().all(|v| v.is_finite());
    if finite {
        fold(sum, update, weight);
    }
    finite
}

fn fold(sum: &mut [f64], update: &[f32], weight: f64) {
    for (s, &u) in sum.iter_mut().zip(update) {
        *s += weight * f64::from(u);
    }
}
