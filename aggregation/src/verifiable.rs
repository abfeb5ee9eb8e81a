//! Deterministic recomputation of a round's model from its contributions: the one path by which
//! a verifiable job's aggregator makes its result and every auditor checks it, bit for bit.
//!
//! The arithmetic is specified, not left to the order updates arrive in:
//!
//! - **FedAvg** is exact fixed-point accumulation. Each value is rounded (to nearest, ties away
//!   from zero) to a multiple of 2^-[`FRACTION_BITS`] as an `i64`, multiplied by its member's
//!   integer weight (its sample count) and added into an `i128` per parameter. Integer addition
//!   is associative, so the sum is the same whatever the order of the updates or the
//!   parallelism. The new parameter is then `(base as f64 + sum as f64 / (total_weight as f64 ·
//!   2^FRACTION_BITS)) as f32`: one fixed sequence of IEEE operations per parameter.
//! - **Median** and **trimmed mean** sort each coordinate's values (by `total_cmp`) before they
//!   combine them, so they do not depend on order either; the updates are buffered (by member
//!   key) and the combined delta is added to the base in f32.
//! - `clip_norm` scales an update by its L2 norm, summed sequentially in f64.
//!
//! Server optimizers (the audit path does not fetch the state the round resumed from, though
//! the result before names it), central DP noise (drawn from the
//! aggregator's secret) and Krum (its distances are summed in parallel, in no fixed order)
//! cannot be recomputed: [`Recomputation::new`] refuses them.

use crate::AggregationError;
use crate::privacy::clip;
use crate::robust::{median, trimmed_count, trimmed_mean};
use fedmesh_protocol::ids::MemberId;
use fedmesh_protocol::strategy::{AggregationRule, StrategySpec};
use rayon::prelude::*;
use std::collections::BTreeMap;

/// Fraction bits of the fixed-point values: 2^-40 ≈ 9·10^-13, far below an f32's precision at
/// the size of any useful update value.
pub const FRACTION_BITS: i32 = 40;
/// The largest magnitude a value may have (2^20 ≈ 10^6, the bound the round rules put on every
/// update): with `FRACTION_BITS`, a fixed-point value fits in 61 bits.
pub const MAX_VALUE: f32 = (1u32 << 20) as f32;
/// The largest weight one update may have (2^40 samples).
pub const MAX_WEIGHT: u64 = 1 << 40;
/// The most updates one recomputation folds: with `MAX_VALUE` and `MAX_WEIGHT`, the sum of
/// 2^16 of them stays below 2^117, inside an `i128`.
pub const MAX_UPDATES: usize = 1 << 16;

/// Parameters per parallel chunk when folding.
const CHUNK: usize = 1 << 14;

/// How the updates are combined, with what it keeps meanwhile.
enum Combine {
    /// The exact weighted sum, per parameter, in units of 2^-FRACTION_BITS.
    FedAvg {
        sums: Vec<i128>,
    },
    /// Every update by member key, combined coordinate-wise at the end.
    Median {
        updates: BTreeMap<MemberId, Vec<f32>>,
    },
    TrimmedMean {
        beta: f32,
        updates: BTreeMap<MemberId, Vec<f32>>,
    },
}

/// One round's deterministic recomputation: updates are added in any order, and
/// [`finish`](Self::finish) gives the same parameters for the same set of updates.
pub struct Recomputation {
    combine: Combine,
    clip_norm: Option<f32>,
    num_params: usize,
    /// Each member counted, with its weight.
    weights: BTreeMap<MemberId, u64>,
    total_weight: u128,
}

/// Refuses a strategy whose result cannot be recomputed by another member, saying why.
pub fn check_recomputable(strategy: &StrategySpec) -> Result<(), AggregationError> {
    let refuse = |why: &str| Err(AggregationError::Invalid(why.to_owned()));
    if strategy.server.is_some() {
        return refuse("a server optimizer's step needs the state before it: not audited yet");
    }
    if strategy.noise_multiplier.is_some_and(|noise| noise > 0.0) {
        return refuse("central DP noise is drawn from the aggregator's secret: not recomputable");
    }
    if let AggregationRule::Krum { .. } | AggregationRule::MultiKrum { .. } = strategy.rule {
        return refuse("krum sums its distances in no fixed order: not recomputable bit for bit");
    }
    Ok(())
}

impl Recomputation {
    /// An empty recomputation of a model of `num_params` parameters under `strategy`.
    pub fn new(strategy: &StrategySpec, num_params: usize) -> Result<Self, AggregationError> {
        check_recomputable(strategy)?;
        let combine = match strategy.rule {
            AggregationRule::FedAvg => Combine::FedAvg { sums: Vec::new() },
            AggregationRule::Median => Combine::Median { updates: BTreeMap::new() },
            AggregationRule::TrimmedMean { beta } => {
                Combine::TrimmedMean { beta, updates: BTreeMap::new() }
            }
            AggregationRule::Krum { .. } | AggregationRule::MultiKrum { .. } => {
                return Err(AggregationError::Invalid("krum is not recomputable".to_owned()));
            }
        };
        Ok(Self {
            combine,
            clip_norm: strategy.clip_norm,
            num_params,
            weights: BTreeMap::new(),
            total_weight: 0,
        })
    }

    /// How many updates are in.
    pub fn count(&self) -> usize {
        self.weights.len()
    }

    /// The members counted, sorted by key.
    pub fn members(&self) -> impl Iterator<Item = &MemberId> {
        self.weights.keys()
    }

    /// Adds `member`'s update with its weight (its sample count), clipped if the strategy
    /// clips. Refused (and left out): a member already in, a wrong length, a weight of 0 or
    /// past `MAX_WEIGHT`, a value not finite or past `MAX_VALUE`, more than `MAX_UPDATES`.
    pub fn add(
        &mut self,
        member: MemberId,
        weight: u64,
        values: &[f32],
    ) -> Result<(), AggregationError> {
        self.admit(&member, weight, values)?;
        let clipped;
        let values = match self.clip_norm {
            Some(norm) => {
                let mut copy = values.to_vec();
                clip(&mut copy, norm);
                clipped = copy;
                &clipped[..]
            }
            None => values,
        };
        match &mut self.combine {
            Combine::FedAvg { sums } => fold_fixed(sums, weight, values),
            Combine::Median { updates } | Combine::TrimmedMean { updates, .. } => {
                updates.insert(member, values.to_vec());
            }
        }
        self.weights.insert(member, weight);
        self.total_weight += u128::from(weight);
        Ok(())
    }

    fn admit(
        &self,
        member: &MemberId,
        weight: u64,
        values: &[f32],
    ) -> Result<(), AggregationError> {
        let contributor = || member.to_peer_id_string();
        if self.weights.contains_key(member) {
            return Err(AggregationError::Duplicate { contributor: contributor() });
        }
        if self.weights.len() >= MAX_UPDATES {
            return Err(AggregationError::Invalid(format!("more than {MAX_UPDATES} updates")));
        }
        if values.len() != self.num_params {
            return Err(AggregationError::WrongLength {
                contributor: contributor(),
                expected: self.num_params,
                found: values.len(),
            });
        }
        if weight == 0 || weight > MAX_WEIGHT {
            return Err(AggregationError::BadWeight {
                contributor: contributor(),
                weight: weight as f64,
            });
        }
        if values.iter().any(|v| !v.is_finite()) {
            return Err(AggregationError::NotFinite { contributor: contributor() });
        }
        if let Some(value) = values.iter().find(|v| v.abs() > MAX_VALUE) {
            return Err(AggregationError::Invalid(format!(
                "update from {} has value {value}, past {MAX_VALUE}",
                contributor()
            )));
        }
        Ok(())
    }

    /// The new model: `base` moved by the combination of the updates in (see the module's doc
    /// for the exact arithmetic).
    pub fn finish(&self, base: &[f32]) -> Result<Vec<f32>, AggregationError> {
        if self.weights.is_empty() {
            return Err(AggregationError::Empty);
        }
        if base.len() != self.num_params {
            return Err(AggregationError::WrongLength {
                contributor: "the base model".to_owned(),
                expected: self.num_params,
                found: base.len(),
            });
        }
        match &self.combine {
            Combine::FedAvg { sums } => {
                let scale = self.total_weight as f64 * (FRACTION_BITS as f64).exp2();
                let mut out = Vec::with_capacity(base.len());
                out.par_extend(
                    sums.par_iter()
                        .zip(base)
                        .map(|(&sum, &b)| (f64::from(b) + sum as f64 / scale) as f32),
                );
                Ok(out)
            }
            Combine::Median { updates } => added(base, median(&sorted(updates))?),
            Combine::TrimmedMean { beta, updates } => {
                let updates = sorted(updates);
                trimmed_count(updates.len(), *beta)?;
                added(base, trimmed_mean(&updates, *beta)?)
            }
        }
    }
}

/// Recomputes a round's model from `base` and its contributions (member, weight, decoded
/// delta), in any order: what an auditor runs.
pub fn recompute(
    strategy: &StrategySpec,
    base: &[f32],
    contributions: &[(MemberId, u64, &[f32])],
) -> Result<Vec<f32>, AggregationError> {
    let mut recomputation = Recomputation::new(strategy, base.len())?;
    for (member, weight, values) in contributions {
        recomputation.add(*member, *weight, values)?;
    }
    recomputation.finish(base)
}

/// `sums += weight · round(values · 2^FRACTION_BITS)`, exactly (the sum is made on first use).
fn fold_fixed(sums: &mut Vec<i128>, weight: u64, values: &[f32]) {
    if sums.len() != values.len() {
        *sums = vec![0; values.len()];
    }
    let (weight, unit) = (i128::from(weight), (FRACTION_BITS as f64).exp2());
    sums.par_chunks_mut(CHUNK).zip(values.par_chunks(CHUNK)).for_each(|(sums, values)| {
        for (sum, &value) in sums.iter_mut().zip(values) {
            // Exact: scaling by a power of two, then a value below 2^61 in magnitude.
            let fixed = (f64::from(value) * unit).round() as i64;
            *sum += i128::from(fixed) * weight;
        }
    });
}

/// The buffered updates in member-key order.
fn sorted(updates: &BTreeMap<MemberId, Vec<f32>>) -> Vec<&[f32]> {
    updates.values().map(Vec::as_slice).collect()
}

/// `base + delta`, parameter by parameter, in f32.
fn added(base: &[f32], delta: Vec<f32>) -> Result<Vec<f32>, AggregationError> {
    Ok(base.iter().zip(delta).map(|(b, d)| b + d).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedmesh_protocol::identity::Identity;
    use rand::{Rng, SeedableRng};

    fn member(seed: u8) -> MemberId {
        Identity::from_seed([seed; 32]).member_id()
    }

    fn fedavg() -> StrategySpec {
        StrategySpec::default()
    }

    fn updates(n: usize, params: usize) -> Vec<(MemberId, u64, Vec<f32>)> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        (0..n)
            .map(|i| {
                let values = (0..params).map(|_| rng.random_range(-1.0f32..1.0)).collect();
                (member(i as u8 + 1), rng.random_range(1..5000), values)
            })
            .collect()
    }

    fn run(strategy: &StrategySpec, base: &[f32], all: &[(MemberId, u64, Vec<f32>)]) -> Vec<f32> {
        let borrowed: Vec<(MemberId, u64, &[f32])> =
            all.iter().map(|(m, w, v)| (*m, *w, v.as_slice())).collect();
        recompute(strategy, base, &borrowed).unwrap()
    }

    #[test]
    fn fedavg_is_bit_identical_in_any_order() {
        let all = updates(9, 50_000);
        let base = vec![0.25f32; 50_000];
        let forward = run(&fedavg(), &base, &all);
        let mut reversed = all.clone();
        reversed.reverse();
        let mut shuffled = all.clone();
        shuffled.swap(0, 5);
        shuffled.swap(2, 7);
        for other in [reversed, shuffled] {
            let again = run(&fedavg(), &base, &other);
            let same = forward.iter().zip(&again).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "the same updates in another order give other bits");
        }
    }

    #[test]
    fn fedavg_is_the_weighted_mean_added_to_the_base() {
        let a = member(1);
        let b = member(2);
        let out = recompute(&fedavg(), &[1.0, 2.0], &[(a, 1, &[1.0, -1.0]), (b, 3, &[0.5, 0.0])])
            .unwrap();
        assert_eq!(out, vec![1.0 + (1.0 + 1.5) / 4.0, 2.0 - 0.25]);
    }

    #[test]
    fn robust_rules_are_order_independent() {
        let all = updates(7, 1000);
        let base = vec![0.0f32; 1000];
        for rule in [AggregationRule::Median, AggregationRule::TrimmedMean { beta: 0.2 }] {
            let strategy = StrategySpec { rule, ..StrategySpec::default() };
            let mut reversed = all.clone();
            reversed.reverse();
            assert_eq!(run(&strategy, &base, &all), run(&strategy, &base, &reversed));
        }
    }

    #[test]
    fn unrecomputable_strategies_are_refused_with_the_reason() {
        let noisy = StrategySpec {
            clip_norm: Some(1.0),
            noise_multiplier: Some(0.5),
            ..StrategySpec::default()
        };
        let error = Recomputation::new(&noisy, 4).err().unwrap().to_string();
        assert!(error.contains("noise"), "{error}");
        let krum = StrategySpec { rule: AggregationRule::Krum { f: 1 }, ..StrategySpec::default() };
        assert!(Recomputation::new(&krum, 4).is_err());
    }

    #[test]
    fn hostile_updates_are_refused_and_left_out() {
        let mut recomputation = Recomputation::new(&fedavg(), 2).unwrap();
        let a = member(1);
        recomputation.add(a, 2, &[1.0, 1.0]).unwrap();
        assert!(matches!(
            recomputation.add(a, 2, &[1.0, 1.0]),
            Err(AggregationError::Duplicate { .. })
        ));
        assert!(recomputation.add(member(2), 1, &[1.0]).is_err());
        assert!(recomputation.add(member(3), 0, &[1.0, 1.0]).is_err());
        assert!(recomputation.add(member(4), MAX_WEIGHT + 1, &[1.0, 1.0]).is_err());
        assert!(recomputation.add(member(5), 1, &[f32::NAN, 1.0]).is_err());
        assert!(recomputation.add(member(6), 1, &[2e6, 1.0]).is_err());
        assert_eq!(recomputation.count(), 1);
        assert_eq!(recomputation.finish(&[0.0, 0.0]).unwrap(), vec![1.0, 1.0]);
    }
}
