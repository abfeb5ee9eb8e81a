//! Update norm clipping and Gaussian noise for central differential privacy.

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Normal};

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

/// The noise standard deviation for a mean of `n` clipped updates: `multiplier * clip_norm / n`.
pub fn noise_std(noise_multiplier: f32, clip_norm: f32, n: usize) -> f32 {
    noise_multiplier * clip_norm / n.max(1) as f32
}

/// Adds seeded Gaussian noise of standard deviation `std` to every coordinate.
pub fn add_gaussian_noise(values: &mut [f32], std: f32, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    if let Ok(normal) = Normal::new(0.0f32, std) {
        values.iter_mut().for_each(|v| *v += normal.sample(&mut rng));
    }
}
