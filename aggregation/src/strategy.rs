//! One aggregator per round, configured from a job's strategy section: it clips, checks and
//! collects updates (streaming for FedAvg, buffered for robust rules), then produces the round's
//! delta with the list of contributions it includes.

use crate::AggregationError;
use crate::fedavg::PartialAggregate;
use crate::privacy::{NoiseSeed, add_seeded_gaussian_noise, clip, noise_std};
use crate::robust::{median, multi_krum_selection, trimmed_count, trimmed_mean};
use fedmesh_protocol::strategy::{AggregationRule, StrategySpec};
use fedmesh_protocol::tensor::Decoder;

/// The round's result.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregateOutcome {
    /// The combined delta to apply to the global model (through the server optimizer).
    pub delta: Vec<f32>,
    /// The contributions it includes, with their weights.
    pub included: Vec<(String, f64)>,
    /// The standard deviation of the DP noise added, if any.
    pub noise_std: Option<f32>,
}

/// A combined delta and the contributions it includes.
type Combined = (Vec<f32>, Vec<(String, f64)>);

/// Collects one round's updates under a strategy.
pub struct Aggregator {
    spec: StrategySpec,
    num_params: usize,
    streaming: PartialAggregate,
    buffered: Vec<(String, f64, Vec<f32>)>,
    noise_seed: NoiseSeed,
}

impl Aggregator {
    /// An aggregator for a model of `num_params` parameters, drawing its DP noise (if the
    /// strategy adds any) from `noise_seed`.
    pub fn from_spec(
        spec: &StrategySpec,
        num_params: usize,
        noise_seed: NoiseSeed,
    ) -> Result<Self, AggregationError> {
        if let Some(clip_norm) = spec.clip_norm
            && !(clip_norm > 0.0 && clip_norm.is_finite())
        {
            return Err(AggregationError::Invalid(format!(
                "clip_norm {clip_norm} must be a positive number"
            )));
        }
        if spec.noise_multiplier.is_some() && spec.clip_norm.is_none() {
            return Err(AggregationError::Invalid(
                "noise_multiplier needs clip_norm (noise is scaled by it)".to_owned(),
            ));
        }
        Ok(Self {
            spec: spec.clone(),
            num_params,
            // The sum is made when the first update arrives: an aggregator opened for a large
            // model holds no zeros while it waits.
            streaming: PartialAggregate::new(0),
            buffered: Vec::new(),
            noise_seed,
        })
    }

    /// How many updates are in.
    pub fn count(&self) -> usize {
        self.streaming.contributors.len() + self.buffered.len()
    }

    /// Checks, clips and takes one update with its weight (sample count).
    pub fn add(
        &mut self,
        contributor: &str,
        weight: f64,
        update: &[f32],
    ) -> Result<(), AggregationError> {
        let mut results = self.add_many(&[(contributor, weight, update)]);
        results.pop().unwrap_or(Err(AggregationError::Empty))
    }

    /// [`add`](Self::add) for several updates (contributor, weight, values), one result each. Plain
    /// FedAvg folds them all in one pass over its sum (see [`PartialAggregate::add_many`]).
    pub fn add_many(
        &mut self,
        updates: &[(&str, f64, &[f32])],
    ) -> Vec<Result<(), AggregationError>> {
        if self.spec.rule == AggregationRule::FedAvg && self.spec.clip_norm.is_none() {
            return self.streaming().add_many(updates);
        }
        updates.iter().map(|(name, weight, values)| self.add_one(name, *weight, values)).collect()
    }

    /// [`add`](Self::add) for an encoded update: plain FedAvg folds it a chunk at a time (see
    /// [`PartialAggregate::add_decoded`]); other rules need it whole and decode it.
    pub fn add_decoded(
        &mut self,
        contributor: &str,
        weight: f64,
        update: &Decoder<'_>,
    ) -> Result<(), AggregationError> {
        if self.spec.rule == AggregationRule::FedAvg && self.spec.clip_norm.is_none() {
            return self.streaming().add_decoded(contributor, weight, update);
        }
        let mut values = vec![0.0f32; update.len()];
        update.decode_range(0, &mut values);
        self.add_one(contributor, weight, &values)
    }

    /// The streaming sum, made on first use.
    fn streaming(&mut self) -> &mut PartialAggregate {
        if self.streaming.num_params() != self.num_params {
            self.streaming = PartialAggregate::new(self.num_params);
        }
        &mut self.streaming
    }

    fn add_one(
        &mut self,
        contributor: &str,
        weight: f64,
        update: &[f32],
    ) -> Result<(), AggregationError> {
        if update.len() != self.num_params {
            return Err(AggregationError::WrongLength {
                contributor: contributor.to_owned(),
                expected: self.num_params,
                found: update.len(),
            });
        }
        if update.iter().any(|v| !v.is_finite()) {
            return Err(AggregationError::NotFinite { contributor: contributor.to_owned() });
        }
        let clipped;
        let update = match self.spec.clip_norm {
            Some(norm) => {
                let mut copy = update.to_vec();
                clip(&mut copy, norm);
                clipped = copy;
                &clipped[..]
            }
            None => update,
        };
        match self.spec.rule {
            AggregationRule::FedAvg => self.streaming().add(contributor, weight, update),
            _ => {
                if self.buffered.iter().any(|(name, _, _)| name == contributor) {
                    return Err(AggregationError::Duplicate {
                        contributor: contributor.to_owned(),
                    });
                }
                if !(weight > 0.0 && weight.is_finite()) {
                    return Err(AggregationError::BadWeight {
                        contributor: contributor.to_owned(),
                        weight,
                    });
                }
                self.buffered.push((contributor.to_owned(), weight, update.to_vec()));
                Ok(())
            }
        }
    }

    /// The most one update weighs in the combination: its weight over the total in a weighted
    /// mean, one over their number under a robust rule (which weighs each update alike).
    fn largest_share(&self) -> f64 {
        let weights = &self.streaming.contributors;
        let largest = weights.iter().map(|(_, weight)| *weight).fold(0.0, f64::max);
        match self.spec.rule {
            AggregationRule::FedAvg if self.streaming.total_weight > 0.0 => {
                largest / self.streaming.total_weight
            }
            _ => 1.0 / self.count().max(1) as f64,
        }
    }

    /// Combines the updates by the strategy's rule and adds DP noise if configured.
    pub fn finish(self) -> Result<AggregateOutcome, AggregationError> {
        let largest_share = self.largest_share();
        let (mut delta, included) = match self.spec.rule {
            AggregationRule::FedAvg => {
                (self.streaming.mean()?, self.streaming.contributors.clone())
            }
            ref rule => self.robust(rule)?,
        };
        let noise_std = match (self.spec.noise_multiplier, self.spec.clip_norm) {
            (Some(multiplier), Some(clip_norm)) => {
                let std = noise_std(multiplier, clip_norm, largest_share);
                add_seeded_gaussian_noise(&mut delta, std, self.noise_seed);
                Some(std)
            }
            _ => None,
        };
        Ok(AggregateOutcome { delta, included, noise_std })
    }

    /// [`finish`](Self::finish) as a partial aggregate to send up a tier: plain FedAvg hands over
    /// its exact weighted sum; other rules their combined delta, weighted by the included weight.
    pub fn finish_partial(self) -> Result<PartialAggregate, AggregationError> {
        let exact =
            self.spec.rule == AggregationRule::FedAvg && self.spec.noise_multiplier.is_none();
        if exact && self.buffered.is_empty() {
            if self.streaming.contributors.is_empty() {
                return Err(AggregationError::Empty);
            }
            return Ok(self.streaming);
        }
        let outcome = self.finish()?;
        PartialAggregate::from_mean(&outcome.delta, outcome.included)
    }

    fn robust(&self, rule: &AggregationRule) -> Result<Combined, AggregationError> {
        let updates: Vec<&[f32]> = self.buffered.iter().map(|(_, _, u)| u.as_slice()).collect();
        let everyone =
            || self.buffered.iter().map(|(name, weight, _)| (name.clone(), *weight)).collect();
        match *rule {
            AggregationRule::Median => Ok((median(&updates)?, everyone())),
            AggregationRule::TrimmedMean { beta } => {
                trimmed_count(updates.len(), beta)?;
                Ok((trimmed_mean(&updates, beta)?, everyone()))
            }
            AggregationRule::Krum { f } => self.select(&updates, f, 1),
            AggregationRule::MultiKrum { f, m } => self.select(&updates, f, m),
            AggregationRule::FedAvg => {
                Err(AggregationError::Invalid("FedAvg is not a robust rule".to_owned()))
            }
        }
    }

    /// The plain mean of the updates Multi-Krum selects (Krum: the single best).
    fn select(&self, updates: &[&[f32]], f: usize, m: usize) -> Result<Combined, AggregationError> {
        let chosen = multi_krum_selection(updates, f, m)?;
        let mut mean = PartialAggregate::new(self.num_params);
        for &i in &chosen {
            let (name, _, update) = &self.buffered[i];
            mean.add(name, 1.0, update)?;
        }
        let included =
            chosen.iter().map(|&i| (self.buffered[i].0.clone(), self.buffered[i].1)).collect();
        Ok((mean.mean()?, included))
    }
}
