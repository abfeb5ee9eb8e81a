//! Streaming weighted FedAvg: updates are folded into a running weighted sum as they arrive, so
//! memory is O(parameters), and partial sums from groups compose exactly into the flat average.

use crate::AggregationError;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Elements per parallel chunk: large enough to amortize scheduling, small enough to balance.
const CHUNK: usize = 1 << 16;
/// Elements per chunk when folding updates: the chunk of the f64 sum (64 KiB) stays in cache
/// while every update of a batch is folded into it.
const FOLD_CHUNK: usize = 1 << 13;

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
        let mut results = self.add_many(&[(contributor, weight, update)]);
        results.pop().unwrap_or(Err(AggregationError::Empty))
    }

    /// Folds in several updates (contributor, weight, values) in one pass over the sum, which is
    /// what makes aggregation keep up with memory bandwidth: the sum is read and written once per
    /// batch, not once per update. Each update is admitted or refused on its own (one result per
    /// update, in order): a wrong length or weight, a contributor already counted (here or earlier
    /// in the batch), or a non-finite value. Each chunk of every update is checked while it is in
    /// cache and folded only if finite; an update found non-finite in some chunk is then taken out
    /// of the chunks it reached (exact to far below f32 precision, since the sum is f64).
    pub fn add_many(
        &mut self,
        updates: &[(&str, f64, &[f32])],
    ) -> Vec<Result<(), AggregationError>> {
        let mut results: Vec<Result<(), AggregationError>> = Vec::with_capacity(updates.len());
        for (index, (name, weight, values)) in updates.iter().enumerate() {
            let earlier = updates[..index]
                .iter()
                .zip(&results)
                .any(|((other, _, _), result)| other == name && result.is_ok());
            let admitted = if earlier {
                Err(AggregationError::Duplicate { contributor: (*name).to_owned() })
            } else {
                self.admit(name, *weight, values.len())
            };
            results.push(admitted);
        }
        let batch: Vec<(f64, &[f32])> = updates
            .iter()
            .zip(&results)
            .filter(|(_, result)| result.is_ok())
            .map(|((_, weight, values), _)| (*weight, *values))
            .collect();
        let refused = self.fold_batch(&batch);
        let mut next = batch.iter().zip(refused);
        for ((name, weight, _), result) in updates.iter().zip(results.iter_mut()) {
            if result.is_err() {
                continue;
            }
            if next.next().is_some_and(|(_, refused)| refused) {
                *result = Err(AggregationError::NotFinite { contributor: (*name).to_owned() });
            } else {
                self.total_weight += weight;
                self.contributors.push(((*name).to_owned(), *weight));
            }
        }
        results
    }

    /// Folds every finite update of `batch` into the sum in one parallel pass; returns, per
    /// update, whether it was refused for a non-finite value (and so left out of the sum).
    fn fold_batch(&mut self, batch: &[(f64, &[f32])]) -> Vec<bool> {
        if batch.is_empty() {
            return Vec::new();
        }
        let finite_per_chunk: Vec<Vec<bool>> = self
            .weighted_sum
            .par_chunks_mut(FOLD_CHUNK)
            .enumerate()
            .map(|(chunk, sum)| {
                let range = chunk * FOLD_CHUNK..chunk * FOLD_CHUNK + sum.len();
                let slices: Vec<(f64, &[f32])> = batch
                    .iter()
                    .map(|(weight, values)| (*weight, &values[range.clone()]))
                    .collect();
                let finite: Vec<bool> =
                    slices.iter().map(|(_, values)| all_finite(values)).collect();
                let good: Vec<(f64, &[f32])> =
                    slices.iter().zip(&finite).filter(|(_, ok)| **ok).map(|(s, _)| *s).collect();
                fold_all(sum, &good);
                finite
            })
            .collect();
        let refused: Vec<bool> =
            (0..batch.len()).map(|k| finite_per_chunk.iter().any(|finite| !finite[k])).collect();
        if refused.contains(&true) {
            self.weighted_sum
                .par_chunks_mut(FOLD_CHUNK)
                .zip(finite_per_chunk.par_iter())
                .enumerate()
                .for_each(|(chunk, (sum, finite))| {
                    let range = chunk * FOLD_CHUNK..chunk * FOLD_CHUNK + sum.len();
                    for (k, (weight, values)) in batch.iter().enumerate() {
                        if refused[k] && finite[k] {
                            fold(sum, &values[range.clone()], -weight);
                        }
                    }
                });
        }
        refused
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
        let mut out = Vec::new();
        self.mean_into(&mut out)?;
        Ok(out)
    }

    /// [`mean`](Self::mean) into `out` (its capacity reused: an aggregator that keeps its buffers
    /// from round to round touches no new memory).
    pub fn mean_into(&self, out: &mut Vec<f32>) -> Result<(), AggregationError> {
        if self.contributors.is_empty() {
            return Err(AggregationError::Empty);
        }
        let scale = 1.0 / self.total_weight;
        out.resize(self.num_params(), 0.0);
        out.par_chunks_mut(CHUNK).zip(self.weighted_sum.par_chunks(CHUNK)).for_each(
            |(out, sum)| {
                out.iter_mut().zip(sum).for_each(|(o, &s)| *o = (s * scale) as f32);
            },
        );
        Ok(())
    }

    /// Empties the sum for a new round, keeping its memory.
    pub fn reset(&mut self) {
        self.weighted_sum.par_chunks_mut(CHUNK).for_each(|chunk| chunk.fill(0.0));
        self.total_weight = 0.0;
        self.contributors.clear();
    }
}

/// Adds every `weight * values` to `sum`, four updates per pass over it.
fn fold_all(sum: &mut [f64], updates: &[(f64, &[f32])]) {
    for group in updates.chunks(4) {
        match group {
            [a, b, c, d] => fold4(sum, [*a, *b, *c, *d]),
            _ => group.iter().for_each(|(weight, values)| fold(sum, values, *weight)),
        }
    }
}

/// `sum += w0 u0 + w1 u1 + w2 u2 + w3 u3`, in one pass: the sum is loaded and stored once for
/// four updates.
fn fold4(sum: &mut [f64], [(w0, u0), (w1, u1), (w2, u2), (w3, u3)]: [(f64, &[f32]); 4]) {
    let n = sum.len();
    let (u0, u1, u2, u3) = (&u0[..n], &u1[..n], &u2[..n], &u3[..n]);
    for ((((s, &a), &b), &c), &d) in sum.iter_mut().zip(u0).zip(u1).zip(u2).zip(u3) {
        *s += w0 * f64::from(a) + w1 * f64::from(b) + w2 * f64::from(c) + w3 * f64::from(d);
    }
}

/// Whether no value is infinite or NaN: a branch-free count of all-ones exponents, which the
/// compiler vectorizes (an early-exit `all` it does not).
fn all_finite(values: &[f32]) -> bool {
    const EXPONENT: u32 = 0x7f80_0000;
    values.iter().map(|v| u32::from(v.to_bits() & EXPONENT == EXPONENT)).sum::<u32>() == 0
}

fn fold(sum: &mut [f64], update: &[f32], weight: f64) {
    for (s, &u) in sum.iter_mut().zip(update) {
        *s += weight * f64::from(u);
    }
}
