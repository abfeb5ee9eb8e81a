//! Update norm clipping and Gaussian noise for central differential privacy.

use rand::Rng;
use rand_distr::{Distribution, Normal};

/// The secret a round's DP noise is drawn from: the aggregator's own randomness (never a seed
/// in the job spec, which every member could use to regenerate the noise and subtract it).
pub type NoiseSeed = [u8; 32];

/// The L2 norm of an update.
pub fn l2_norm(update: &[f32]) -> f64 {
    update.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>().sqrt()
}

/// Scales `update` down to L2 norm `clip_norm` if it is longer; returns the original norm.
pub fn clip(update: &mut [f32], clip_norm: f32) -> f64 {
    let norm = l2_norm(update);
    if norm > f64::from(clip_norm) {
        let scale = (f64::from(clip_norm) / norm) as f32;
        update.iter_mut().for_each(|v| *v *= scale);
    }
    norm
}

/// The noise standard deviation for a combination of clipped updates in which one update
/// weighs at most `largest_share` of the whole (the sensitivity: `1 / n` for an unweighted mean
/// of `n`, the largest weight over the total for a weighted one): `multiplier * clip_norm *
/// largest_share`.
pub fn noise_std(noise_multiplier: f32, clip_norm: f32, largest_share: f64) -> f32 {
    (f64::from(noise_multiplier) * f64::from(clip_norm) * largest_share) as f32
}

/// Adds Gaussian noise of standard deviation `std`, drawn from `rng`, to every coordinate.
pub fn add_gaussian_noise(values: &mut [f32], std: f32, rng: &mut impl Rng) {
    if let Ok(normal) = Normal::new(0.0f32, std) {
        values.iter_mut().for_each(|v| *v += normal.sample(rng));
    }
}
