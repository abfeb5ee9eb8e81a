//! The communication benchmark's model: `P` f32 parameters in one tensor, no data, and a
//! "training" step that is a cheap deterministic delta, so that a round costs what moving,
//! verifying and folding the parameters costs and nothing else.

use fedmesh_protocol::model::{TensorLayout, TensorSpec};

/// Largest magnitude of a delta value: small, so the model stays finite over many rounds.
const SCALE: f32 = 1e-3;

/// A benchmark model of `params` parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BenchModel {
    pub params: usize,
}

impl BenchModel {
    /// Its layout: one tensor `w` of `params` values.
    pub fn layout(&self) -> TensorLayout {
        TensorLayout::packed([TensorSpec { name: "w".to_owned(), shape: vec![self.params] }])
    }

    /// The delta a member sends: values in `[-SCALE, SCALE]` from a hash of the index and `seed`
    /// (vary it by member and round), at about memory speed.
    pub fn delta(&self, seed: u64) -> Vec<f32> {
        (0..self.params as u64).map(|index| value_at(index, seed)).collect()
    }

    /// A checksum-like figure of a model, reported as its "loss": the root mean square of its
    /// values (members holding the same model report the same figure).
    pub fn rms(params: &[f32]) -> f32 {
        let squares: f64 = params.iter().map(|v| f64::from(*v) * f64::from(*v)).sum();
        (squares / params.len().max(1) as f64).sqrt() as f32
    }
}

/// A value in `[-SCALE, SCALE]` from a cheap integer hash of `(index, seed)`.
fn value_at(index: u64, seed: u64) -> f32 {
    let mut x = index.wrapping_add(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 29;
    let unit = (x >> 40) as f32 / (1u64 << 24) as f32;
    (unit * 2.0 - 1.0) * SCALE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_are_deterministic_small_and_vary_with_the_seed() {
        let model = BenchModel { params: 200_000 };
        let a = model.delta(1);
        assert_eq!(a.len(), 200_000);
        assert_eq!(a, model.delta(1));
        assert_ne!(a, model.delta(2));
        assert!(a.iter().all(|v| v.abs() <= SCALE));
        assert!(BenchModel::rms(&a) > SCALE / 4.0);
        assert_eq!(model.layout().num_params(), 200_000);
    }
}
