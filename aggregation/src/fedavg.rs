//! Streaming weighted FedAvg: updates are folded into a running weighted sum as they arrive, so
//! memory is O(parameters), and partial sums from groups compose exactly into the flat average.

use crate::AggregationError;
use fedmesh_protocol::tensor::Decoder;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Elements per parallel chunk: large enough to amortize scheduling, small enough to balance.
const CHUNK: usize = 1 << 16;
/// Elements per chunk when folding updates: the chunk of the f64 sum (64 KiB) stays in cache
/// while every update of a batch is folded into it, a group at a time.
const FOLD_CHUNK: usize = 1 << 13;
/// Updates folded together in one sweep of a chunk of the sum.
const GROUP: usize = 4;

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
    /// An empty sum over `num_params` parameters. Its zeros are written in parallel: a page first
    /// touched by the fold's read-then-write faults twice (the read maps the shared zero page),
    /// which made folding 16 updates of 10M parameters into a new sum take 0.14 s instead of 0.06.
    pub fn new(num_params: usize) -> Self {
        let mut weighted_sum = Vec::with_capacity(num_params);
        weighted_sum.par_extend(rayon::iter::repeat_n(0.0, num_params));
        Self { weighted_sum, total_weight: 0.0, contributors: Vec::new() }
    }

    /// The partial aggregate whose mean is `mean`, over `contributors` and their weights.
    pub fn from_mean(
        mean: &[f32],
        contributors: Vec<(String, f64)>,
    ) -> Result<Self, AggregationError> {
        let total_weight: f64 = contributors.iter().map(|(_, weight)| weight).sum();
        if contributors.is_empty() {
            return Err(AggregationError::Empty);
        }
        if !(total_weight > 0.0 && total_weight.is_finite()) {
            return Err(AggregationError::BadWeight {
                contributor: "a combined update".to_owned(),
                weight: total_weight,
            });
        }
        let mut weighted_sum = Vec::with_capacity(mean.len());
        weighted_sum.par_extend(mean.par_iter().map(|&m| f64::from(m) * total_weight));
        Ok(Self { weighted_sum, total_weight, contributors })
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
    /// in the batch; the later of two is refused even if the earlier turns out not finite), or a
    /// non-finite value. The refused are left out of the sum; the others are kept.
    pub fn add_many(
        &mut self,
        updates: &[(&str, f64, &[f32])],
    ) -> Vec<Result<(), AggregationError>> {
        let mut results = self.admit_batch(updates);
        let batch: Vec<(f64, &[f32])> = updates
            .iter()
            .zip(&results)
            .filter(|(_, result)| result.is_ok())
            .map(|((_, weight, values), _)| (*weight, *values))
            .collect();
        let mut refused = self.fold_batch(&batch).into_iter();
        for ((name, weight, _), result) in updates.iter().zip(results.iter_mut()) {
            if result.is_err() {
                continue;
            }
            if refused.next() == Some(true) {
                *result = Err(AggregationError::NotFinite { contributor: (*name).to_owned() });
            } else {
                self.total_weight += weight;
                self.contributors.push(((*name).to_owned(), *weight));
            }
        }
        results
    }

    /// Folds in one encoded update a chunk at a time, never decoding a copy of it, in parallel:
    /// each chunk of the sum gets its chunk of the update decoded into scratch and folded. One
    /// pass: a non-finite value is skipped where it is met, and the update refused and taken out
    /// again by the same fold with its weight negated (as [`add_many`](Self::add_many) does),
    /// rather than every update scanned for one first.
    pub fn add_decoded(
        &mut self,
        contributor: &str,
        weight: f64,
        update: &Decoder<'_>,
    ) -> Result<(), AggregationError> {
        self.admit(contributor, weight, update.len())?;
        if self.fold_decoded(weight, update) > 0 {
            // The same fold with the weight negated skips the same non-finite values.
            self.fold_decoded(-weight, update);
            return Err(AggregationError::NotFinite { contributor: contributor.to_owned() });
        }
        self.total_weight += weight;
        self.contributors.push((contributor.to_owned(), weight));
        Ok(())
    }

    /// `sum += weight * update`, decoded a chunk at a time, skipping the positions where that is
    /// not finite; returns how many it skipped.
    fn fold_decoded(&mut self, weight: f64, update: &Decoder<'_>) -> usize {
        self.weighted_sum
            .par_chunks_mut(FOLD_CHUNK)
            .enumerate()
            .map_init(
                || vec![0.0f32; FOLD_CHUNK],
                |scratch, (chunk, sum)| {
                    let values = &mut scratch[..sum.len()];
                    update.decode_range(chunk * FOLD_CHUNK, values);
                    fold_group(sum, [(weight, &*values)])
                },
            )
            .sum()
    }

    /// `base` plus the weighted mean, the new global model, made in one pass (the mean is not
    /// kept aside).
    pub fn mean_added_to(&self, base: &[f32]) -> Result<Vec<f32>, AggregationError> {
        if self.contributors.is_empty() {
            return Err(AggregationError::Empty);
        }
        if base.len() != self.num_params() {
            return Err(AggregationError::WrongLength {
                contributor: "the base model".to_owned(),
                expected: self.num_params(),
                found: base.len(),
            });
        }
        let scale = 1.0 / self.total_weight;
        let mut out = Vec::with_capacity(base.len());
        out.par_extend(
            self.weighted_sum.par_iter().zip(base).map(|(&s, &b)| b + (s * scale) as f32),
        );
        Ok(out)
    }

    /// [`admit`](Self::admit) for each update of a batch, also refusing a contributor admitted
    /// earlier in the batch.
    fn admit_batch(&self, updates: &[(&str, f64, &[f32])]) -> Vec<Result<(), AggregationError>> {
        let mut results: Vec<Result<(), AggregationError>> = Vec::with_capacity(updates.len());
        for (index, (name, weight, values)) in updates.iter().enumerate() {
            let earlier = updates[..index]
                .iter()
                .zip(&results)
                .any(|((other, _, _), result)| other == name && result.is_ok());
            results.push(if earlier {
                Err(AggregationError::Duplicate { contributor: (*name).to_owned() })
            } else {
                self.admit(name, *weight, values.len())
            });
        }
        results
    }

    /// Folds every update of `batch` into the sum in one parallel pass over it; returns, per
    /// update, whether it was refused for a non-finite value and so taken out again. Non-finite
    /// values are folded as zero, so a refused update's contribution is finite and is taken out
    /// by subtracting it: exact to far below f32 precision, since the sum is f64.
    fn fold_batch(&mut self, batch: &[(f64, &[f32])]) -> Vec<bool> {
        if batch.is_empty() {
            return Vec::new();
        }
        let refused = self
            .weighted_sum
            .par_chunks_mut(FOLD_CHUNK)
            .enumerate()
            .map(|(chunk, sum)| fold_chunk(sum, batch, chunk * FOLD_CHUNK))
            .reduce(
                || vec![false; batch.len()],
                |a, b| a.iter().zip(&b).map(|(a, b)| *a || *b).collect(),
            );
        for ((weight, values), _) in batch.iter().zip(&refused).filter(|(_, refused)| **refused) {
            // The same fold with the weight negated skips the same non-finite values.
            self.weighted_sum.par_chunks_mut(CHUNK).zip(values.par_chunks(CHUNK)).for_each(
                |(sum, values)| {
                    fold_group(sum, [(-weight, values)]);
                },
            );
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
        out.clear();
        out.par_extend(self.weighted_sum.par_iter().map(|&s| (s * scale) as f32));
        Ok(())
    }

    /// Empties the sum for a new round, keeping its memory.
    pub fn reset(&mut self) {
        self.weighted_sum.par_chunks_mut(CHUNK).for_each(|chunk| chunk.fill(0.0));
        self.total_weight = 0.0;
        self.contributors.clear();
    }
}

/// Folds every update of `batch`, from `start` on, into `sum` (the chunk of the sum that starts
/// there), a group of updates per sweep of it; says, per update, whether its slice there has a
/// non-finite value.
fn fold_chunk(sum: &mut [f64], batch: &[(f64, &[f32])], start: usize) -> Vec<bool> {
    let range = start..start + sum.len();
    let mut non_finite = Vec::with_capacity(batch.len());
    for group in batch.chunks(GROUP) {
        let slices: Vec<(f64, &[f32])> =
            group.iter().map(|(weight, values)| (*weight, &values[range.clone()])).collect();
        let skipped = match *slices.as_slice() {
            [a, b, c, d] => fold_group(sum, [a, b, c, d]),
            [a, b, c] => fold_group(sum, [a, b, c]),
            [a, b] => fold_group(sum, [a, b]),
            _ => slices.iter().map(|&one| fold_group(sum, [one])).sum(),
        };
        if skipped == 0 {
            non_finite.resize(non_finite.len() + slices.len(), false);
        } else {
            fold_finite_values(sum, &slices);
            non_finite.extend(slices.iter().map(|(_, values)| !all_finite(values)));
        }
    }
    non_finite
}

/// `sum += w0 u0 + w1 u1 + ...` in one sweep (the sum is loaded and stored once for the group),
/// skipping the positions where that is not finite (a NaN or infinite value there); returns how
/// many it skipped. Branch-free, so the compiler vectorizes it.
fn fold_group<const N: usize>(sum: &mut [f64], group: [(f64, &[f32]); N]) -> usize {
    let n = sum.len();
    let group = group.map(|(weight, values)| (weight, &values[..n]));
    let mut skipped = 0;
    for (i, s) in sum.iter_mut().enumerate() {
        let add = weighted_at(&group, i);
        let finite = add.is_finite();
        skipped += usize::from(!finite);
        *s += if finite { add } else { 0.0 };
    }
    skipped
}

/// Where [`fold_group`] skipped a position, folds in the group's finite values there: the chunk
/// is then as if each non-finite value had been zero.
fn fold_finite_values(sum: &mut [f64], group: &[(f64, &[f32])]) {
    for (i, s) in sum.iter_mut().enumerate() {
        if !weighted_at(group, i).is_finite() {
            let finite = group.iter().filter(|(_, values)| values[i].is_finite());
            *s += finite.map(|(weight, values)| weight * f64::from(values[i])).sum::<f64>();
        }
    }
}

/// `w0 u0[i] + w1 u1[i] + ...`, always in the same order.
#[inline(always)]
fn weighted_at(group: &[(f64, &[f32])], i: usize) -> f64 {
    group.iter().fold(0.0, |add, (weight, values)| add + weight * f64::from(values[i]))
}

/// Whether no value is infinite or NaN: a branch-free count of all-ones exponents, which the
/// compiler vectorizes (an early-exit `all` it does not).
fn all_finite(values: &[f32]) -> bool {
    const EXPONENT: u32 = 0x7f80_0000;
    values.iter().map(|v| u32::from(v.to_bits() & EXPONENT == EXPONENT)).sum::<u32>() == 0
}
