//! Server optimizers on the round's averaged delta (the FedOpt family, Reddi et al. 2021): plain
//! application, FedAvgM, FedAdam, FedYogi and FedAdagrad, with state that persists between rounds,
//! and that state's deterministic blob (so it travels, content-addressed, with the model it
//! made: each round's aggregator resumes from its predecessor's).
//!
//! The blob: the magic `FMOS`, a version byte, the optimizer's kind byte, the rounds applied
//! (u64) and the parameter count n (u64), little-endian; then the first moment (FedAvgM, FedAdam,
//! FedYogi, FedAdagrad) and the second moment (the adaptive ones) as n little-endian f32 each.

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

/// The magic and version a state blob starts with.
const MAGIC: &[u8; 4] = b"FMOS";
const VERSION: u8 = 1;
/// The header's length: magic, version, kind, rounds, parameter count.
const HEADER_LEN: usize = 4 + 1 + 1 + 8 + 8;

/// Why a state blob was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptimizerStateError {
    #[error("optimizer state of {found} bytes is shorter than its {HEADER_LEN}-byte header")]
    TooShort { found: usize },
    #[error("not an optimizer state (wrong magic)")]
    BadMagic,
    #[error("optimizer state version {found} is not supported (this node reads {VERSION})")]
    UnsupportedVersion { found: u8 },
    #[error("optimizer state is of kind byte {found}, the job's optimizer is {expected}")]
    WrongKind { expected: &'static str, found: u8 },
    #[error("optimizer state has {found} parameters, the model has {expected}")]
    WrongParams { expected: u64, found: u64 },
    #[error("optimizer state of {params} parameters must be {expected} bytes, found {found}")]
    WrongLength { params: u64, expected: usize, found: usize },
    #[error("optimizer state value {index} is not finite")]
    NotFinite { index: usize },
}

/// The kind byte of an optimizer, and its name.
fn kind_of(spec: Option<&ServerOptimizerSpec>) -> (u8, &'static str) {
    match spec {
        None => (0, "none"),
        Some(ServerOptimizerSpec::FedAvgM { .. }) => (1, "fedavgm"),
        Some(ServerOptimizerSpec::FedAdam(_)) => (2, "fedadam"),
        Some(ServerOptimizerSpec::FedYogi(_)) => (3, "fedyogi"),
        Some(ServerOptimizerSpec::FedAdagrad(_)) => (4, "fedadagrad"),
    }
}

/// How many moment vectors an optimizer keeps: none, the first, or both.
fn moments_of(spec: Option<&ServerOptimizerSpec>) -> usize {
    match spec {
        None => 0,
        Some(ServerOptimizerSpec::FedAvgM { .. }) => 1,
        Some(_) => 2,
    }
}

impl ServerOptimizer {
    /// The state as its deterministic blob (one optimizer state, one byte string).
    pub fn encode_state(&self) -> Vec<u8> {
        let spec = self.spec.as_ref();
        let moments = [&self.momentum, &self.second];
        let kept = &moments[..moments_of(spec)];
        let params = self.momentum.len();
        let mut out = Vec::with_capacity(HEADER_LEN + kept.len() * params * 4);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[VERSION, kind_of(spec).0]);
        out.extend_from_slice(&self.rounds.to_le_bytes());
        out.extend_from_slice(&(params as u64).to_le_bytes());
        for moment in kept {
            moment.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        }
        out
    }

    /// The optimizer `spec` resumed from a state blob of a model of `num_params` parameters:
    /// its length is checked against the header before anything is allocated, and a blob of
    /// another kind, size or version, or with a value not finite, is refused.
    pub fn decode_state(
        spec: Option<&ServerOptimizerSpec>,
        num_params: usize,
        blob: &[u8],
    ) -> Result<Self, OptimizerStateError> {
        let Header { kind: found, rounds, params } = read_header(blob)?;
        let (kind, name) = kind_of(spec);
        if found != kind {
            return Err(OptimizerStateError::WrongKind { expected: name, found });
        }
        if params != num_params as u64 {
            return Err(OptimizerStateError::WrongParams {
                expected: num_params as u64,
                found: params,
            });
        }
        let moments = moments_of(spec);
        let expected = HEADER_LEN + moments * num_params * 4;
        if blob.len() != expected {
            return Err(OptimizerStateError::WrongLength { params, expected, found: blob.len() });
        }
        // The vectors an optimizer does not keep are zeros, as `apply` leaves them.
        let vector = |index: usize| match index < moments {
            true => read_f32s(
                &blob[HEADER_LEN + index * num_params * 4..][..num_params * 4],
                index * num_params,
            ),
            false => Ok(vec![0.0; num_params]),
        };
        let (momentum, second) = (vector(0)?, vector(1)?);
        Ok(Self { spec: spec.cloned(), momentum, second, rounds })
    }
}

/// A state blob's header: the optimizer's kind byte, the rounds applied, the parameter count.
struct Header {
    kind: u8,
    rounds: u64,
    params: u64,
}

fn read_header(blob: &[u8]) -> Result<Header, OptimizerStateError> {
    let header =
        blob.get(..HEADER_LEN).ok_or(OptimizerStateError::TooShort { found: blob.len() })?;
    if &header[..4] != MAGIC {
        return Err(OptimizerStateError::BadMagic);
    }
    if header[4] != VERSION {
        return Err(OptimizerStateError::UnsupportedVersion { found: header[4] });
    }
    Ok(Header {
        kind: header[5],
        rounds: read_u64(&header[6..14]),
        params: read_u64(&header[14..22]),
    })
}

fn read_u64(bytes: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(bytes);
    u64::from_le_bytes(word)
}

/// Little-endian f32s, every one finite (`first` is the index of the first in the blob's values).
fn read_f32s(bytes: &[u8], first: usize) -> Result<Vec<f32>, OptimizerStateError> {
    let values: Vec<f32> =
        bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    match values.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(OptimizerStateError::NotFinite { index: first + index }),
        None => Ok(values),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn every_optimizer() -> Vec<ServerOptimizerSpec> {
        let adaptive = AdaptiveParams { eta: 0.05, beta1: 0.9, beta2: 0.99, tau: 1e-3 };
        vec![
            ServerOptimizerSpec::FedAvgM { eta: 1.0, beta1: 0.9 },
            ServerOptimizerSpec::FedAdam(adaptive.clone()),
            ServerOptimizerSpec::FedYogi(adaptive.clone()),
            ServerOptimizerSpec::FedAdagrad(adaptive),
        ]
    }

    /// Round `round`'s averaged delta: values of both signs and many magnitudes.
    fn delta(round: u64, params: usize) -> Vec<f32> {
        (0..params)
            .map(|i| ((round as f32 + 1.0) * (i as f32 - 3.5)).sin() / (1.0 + i as f32))
            .collect()
    }

    #[test]
    fn a_state_passed_on_each_round_equals_one_optimizers_bit_for_bit() {
        const PARAMS: usize = 9;
        for spec in every_optimizer() {
            let mut single = ServerOptimizer::from_spec(Some(&spec)).unwrap();
            let mut single_model = vec![0.25f32; PARAMS];
            let mut rotating_model = single_model.clone();
            let mut blob: Option<Vec<u8>> = None;
            for round in 1..=12 {
                let delta = delta(round, PARAMS);
                single.apply(&mut single_model, &delta).unwrap();
                // Each round's aggregator resumes from the blob its predecessor stored.
                let mut aggregator = match &blob {
                    None => ServerOptimizer::from_spec(Some(&spec)).unwrap(),
                    Some(blob) => ServerOptimizer::decode_state(Some(&spec), PARAMS, blob).unwrap(),
                };
                aggregator.apply(&mut rotating_model, &delta).unwrap();
                blob = Some(aggregator.encode_state());
            }
            let blob = blob.unwrap();
            assert_eq!(blob, single.encode_state(), "{spec:?}: the states differ");
            let bits = |model: &[f32]| model.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&rotating_model), bits(&single_model), "{spec:?}: the models differ");
            let resumed = ServerOptimizer::decode_state(Some(&spec), PARAMS, &blob).unwrap();
            assert_eq!(resumed, single, "{spec:?}: decoding gives another optimizer");
            assert_eq!(resumed.rounds, 12);
        }
    }

    #[test]
    fn the_blob_is_its_header_and_the_moments_the_optimizer_keeps() {
        let mut momentum = ServerOptimizer::from_spec(Some(&every_optimizer()[0])).unwrap();
        momentum.apply(&mut [0.0; 3], &[1.0, 2.0, 3.0]).unwrap();
        let blob = momentum.encode_state();
        assert_eq!(&blob[..6], b"FMOS\x01\x01");
        assert_eq!(blob.len(), HEADER_LEN + 3 * 4, "fedavgm keeps its first moment only");
        assert_eq!(&blob[HEADER_LEN..HEADER_LEN + 4], &1.0f32.to_le_bytes());
        let mut adam = ServerOptimizer::from_spec(Some(&every_optimizer()[1])).unwrap();
        adam.apply(&mut [0.0; 3], &[1.0, 2.0, 3.0]).unwrap();
        assert_eq!(adam.encode_state().len(), HEADER_LEN + 2 * 3 * 4);
    }

    #[test]
    fn malformed_or_mismatched_blobs_are_refused_with_their_reason() {
        let specs = every_optimizer();
        let mut adam = ServerOptimizer::from_spec(Some(&specs[1])).unwrap();
        adam.apply(&mut [0.0; 4], &[0.5; 4]).unwrap();
        let blob = adam.encode_state();
        let decode = |spec: &ServerOptimizerSpec, params: usize, blob: &[u8]| {
            ServerOptimizer::decode_state(Some(spec), params, blob).unwrap_err()
        };
        assert_eq!(decode(&specs[1], 4, &blob[..10]), OptimizerStateError::TooShort { found: 10 });
        let mut bad_magic = blob.clone();
        bad_magic[0] = b'X';
        assert_eq!(decode(&specs[1], 4, &bad_magic), OptimizerStateError::BadMagic);
        let mut newer = blob.clone();
        newer[4] = 2;
        assert_eq!(
            decode(&specs[1], 4, &newer),
            OptimizerStateError::UnsupportedVersion { found: 2 }
        );
        let wrong_kind = OptimizerStateError::WrongKind { expected: "fedyogi", found: 2 };
        assert_eq!(decode(&specs[2], 4, &blob), wrong_kind);
        assert_eq!(
            decode(&specs[1], 5, &blob),
            OptimizerStateError::WrongParams { expected: 5, found: 4 }
        );
        let truncated = &blob[..blob.len() - 1];
        let wrong_length = OptimizerStateError::WrongLength {
            params: 4,
            expected: blob.len(),
            found: blob.len() - 1,
        };
        assert_eq!(decode(&specs[1], 4, truncated), wrong_length);
        let mut huge = blob.clone();
        huge[14..22].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(decode(&specs[1], 4, &huge), OptimizerStateError::WrongParams { .. }));
        let mut not_finite = blob.clone();
        let second_value = HEADER_LEN + 4 * 4 + 4;
        not_finite[second_value..second_value + 4].copy_from_slice(&f32::NAN.to_le_bytes());
        assert_eq!(decode(&specs[1], 4, &not_finite), OptimizerStateError::NotFinite { index: 5 });
    }
}
