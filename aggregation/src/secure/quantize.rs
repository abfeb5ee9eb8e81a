//! Fixed-point quantization of f32 updates into the ring Z/2^64, and back for the sum.
//!
//! A member's update is clipped to L2 norm `clip_norm` and multiplied by its weight (at most
//! `max_weight`), so every coordinate lies in `[-B, B]` with `B = clip_norm · max_weight`. With at
//! most `n` summands, each coordinate is mapped to `round(x · scale)` with
//! `scale = floor((2^63 − 1) / n) / B`, clamped to `±floor((2^63 − 1) / n)`, and stored in two's
//! complement. A sum of at most `n` such values therefore stays within `±(2^63 − 1)`: it never
//! wraps, and reading the ring sum as an `i64` gives it back exactly.
//!
//! Rounding is deterministic (to nearest), so the error of each member's coordinate is at most
//! `1 / (2 · scale)` and that of a sum of `n` at most `n / (2 · scale)`, i.e.
//! `n² · B / 2^64` (for `B = 10⁵`, `n = 10⁴`: about 5·10⁻¹² — far below f32's own precision).

use super::error::SecAggError;

/// Maps f32 coordinates to ring elements and ring sums back to f32.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quantizer {
    /// Ring units per unit of the update.
    scale: f64,
    /// The largest magnitude, in ring units, that one member's coordinate may take.
    limit: i64,
}

impl Quantizer {
    /// A quantizer for updates whose coordinates lie in `±clip_norm · max_weight`, summed over at
    /// most `max_summands` members.
    pub fn new(clip_norm: f32, max_weight: f32, max_summands: usize) -> Result<Self, SecAggError> {
        let bound = f64::from(clip_norm) * f64::from(max_weight);
        if !(bound.is_finite() && bound > 0.0) {
            return Err(SecAggError::InvalidQuantizer(
                "clip_norm · max_weight must be finite and positive",
            ));
        }
        let summands = i64::try_from(max_summands)
            .ok()
            .filter(|&n| n > 0)
            .ok_or(SecAggError::InvalidQuantizer("max_summands must be positive"))?;
        let limit = i64::MAX / summands;
        Ok(Self { scale: limit as f64 / bound, limit })
    }

    /// Ring units per unit of the update; the rounding error per coordinate is at most
    /// `0.5 / scale`.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// The update's coordinates as ring elements. Values beyond the bound (which only f32
    /// rounding in the caller's clipping can produce) are clamped to it.
    pub fn quantize(&self, update: &[f32]) -> Result<Vec<u64>, SecAggError> {
        update
            .iter()
            .enumerate()
            .map(|(index, &x)| {
                if !x.is_finite() {
                    return Err(SecAggError::NotFinite { index });
                }
                let units = (f64::from(x) * self.scale).round();
                // In range after the clamp, so the cast is exact up to f64's rounding.
                let units = units.clamp(-(self.limit as f64), self.limit as f64) as i64;
                Ok(units.clamp(-self.limit, self.limit) as u64)
            })
            .collect()
    }

    /// A ring sum of at most `max_summands` quantized updates, back as f32.
    pub fn dequantize(&self, sum: &[u64]) -> Vec<f32> {
        sum.iter().map(|&units| (units as i64 as f64 / self.scale) as f32).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha20Rng;

    #[test]
    fn round_trip_error_is_within_half_a_unit() {
        let quantizer = Quantizer::new(5.0, 100.0, 1000).unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let update: Vec<f32> = (0..10_000).map(|_| rng.random_range(-500.0..500.0)).collect();
        let back = quantizer.dequantize(&quantizer.quantize(&update).unwrap());
        for (x, y) in update.iter().zip(&back) {
            let bound = 0.5 / quantizer.scale() + f64::from(x.abs()) * f64::from(f32::EPSILON);
            assert!(f64::from((x - y).abs()) <= bound, "{x} came back as {y}");
        }
    }

    #[test]
    fn negative_values_are_twos_complement() {
        let quantizer = Quantizer::new(1.0, 1.0, 2).unwrap();
        let q = quantizer.quantize(&[-1.0, -0.5, 0.0]).unwrap();
        assert!(q[0] > u64::MAX / 2 && q[1] > u64::MAX / 2, "negative values have the top bit");
        assert_eq!(q[2], 0);
        assert_eq!(quantizer.dequantize(&q), vec![-1.0, -0.5, 0.0]);
    }

    #[test]
    fn the_sum_of_the_maximum_number_of_extreme_values_does_not_wrap() {
        let n = 1000;
        let quantizer = Quantizer::new(2.0, 3.0, n).unwrap();
        for extreme in [6.0f32, -6.0, 7.0, -1e30] {
            let q = quantizer.quantize(&[extreme]).unwrap()[0];
            let sum = (0..n).fold(0u64, |acc, _| acc.wrapping_add(q));
            let expected = f64::from(extreme.clamp(-6.0, 6.0)) * n as f64;
            let got = f64::from(quantizer.dequantize(&[sum])[0]);
            assert!((got - expected).abs() <= expected.abs() * 1e-6, "{got} vs {expected}");
        }
    }

    #[test]
    fn the_ring_sum_is_the_exact_sum_of_the_quantized_values() {
        let n = 500;
        let quantizer = Quantizer::new(1.0, 10.0, n).unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let updates: Vec<Vec<f32>> =
            (0..n).map(|_| (0..64).map(|_| rng.random_range(-10.0..10.0)).collect()).collect();
        let quantized: Vec<Vec<u64>> =
            updates.iter().map(|u| quantizer.quantize(u).unwrap()).collect();
        for c in 0..64 {
            let ring = quantized.iter().fold(0u64, |acc, q| acc.wrapping_add(q[c]));
            let exact: i128 = quantized.iter().map(|q| i128::from(q[c] as i64)).sum();
            assert_eq!(i128::from(ring as i64), exact, "no wrap-around");
            let float: f64 = updates.iter().map(|u| f64::from(u[c])).sum();
            let error = (f64::from(quantizer.dequantize(&[ring])[0]) - float).abs();
            assert!(error <= n as f64 * 0.5 / quantizer.scale() + float.abs() * 1e-6);
        }
    }

    #[test]
    fn bad_parameters_and_non_finite_values_are_refused() {
        assert!(Quantizer::new(0.0, 1.0, 3).is_err());
        assert!(Quantizer::new(1.0, f32::INFINITY, 3).is_err());
        assert!(Quantizer::new(1.0, 1.0, 0).is_err());
        let quantizer = Quantizer::new(1.0, 1.0, 3).unwrap();
        assert_eq!(quantizer.quantize(&[0.0, f32::NAN]), Err(SecAggError::NotFinite { index: 1 }));
    }
}
