//! Update norm clipping, Gaussian noise for differential privacy (drawn by the aggregator, or in
//! shares by the trainers), and the RDP accountant that turns rounds of it into ε at a δ.

use fedmesh_protocol::spec::JobSpec;
use rand::{Rng, SeedableRng};
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

/// Adds Gaussian noise of standard deviation `std` drawn from a generator seeded with `seed`
/// (a secret of the party drawing it).
pub fn add_seeded_gaussian_noise(values: &mut [f32], std: f32, seed: NoiseSeed) {
    add_gaussian_noise(values, std, &mut rand::rngs::StdRng::from_seed(seed));
}

/// The standard deviation of one trainer's share of the noise when the trainers draw it
/// between them (distributed DP): of the `shares` trainers whose noised updates a weighted mean
/// needs at least, each adds `multiplier * clip_norm * largest_weight / (own_weight *
/// sqrt(shares))` to its clipped update. The weighted mean of `m >= shares` such updates then
/// carries noise of at least the central standard deviation ([`noise_std`] with the largest
/// share `largest_weight / total`), and no party ever sees an update without its share.
pub fn trainer_noise_std(
    noise_multiplier: f32,
    clip_norm: f32,
    largest_weight: f64,
    own_weight: f64,
    shares: usize,
) -> f32 {
    if own_weight.is_nan() || own_weight <= 0.0 || shares == 0 {
        return 0.0;
    }
    let scale = largest_weight.max(own_weight) / (own_weight * (shares as f64).sqrt());
    (f64::from(noise_multiplier) * f64::from(clip_norm) * scale) as f32
}

/// The differential privacy a job's rounds have spent, as its members report it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spent {
    /// Spent so far, at `delta`.
    pub epsilon: f64,
    pub delta: f64,
    /// The noise's standard deviation over the sensitivity (`strategy.noise_multiplier`).
    pub noise_multiplier: f64,
    /// A member's chance to be among a round's trainers (`participation.fraction`).
    pub sampling: f64,
    /// Whether the trainers draw the noise (else the aggregator does).
    pub distributed: bool,
}

/// What `rounds` rounds of `spec` spent, member-level (each member's whole update is clipped
/// to `clip_norm`): `None` when the job adds no noise. The sampling is the selected fraction;
/// trainers are a seeded sample rather than Poisson's, which the accountant assumes.
pub fn spent(spec: &JobSpec, rounds: u64) -> Option<Spent> {
    let strategy = &spec.strategy;
    let multiplier = f64::from(strategy.noise_multiplier.filter(|m| *m > 0.0)?);
    strategy.clip_norm?;
    let sampling = f64::from(spec.participation.fraction);
    let delta = spec.privacy.delta;
    Some(Spent {
        epsilon: epsilon(sampling, multiplier, rounds, delta),
        delta,
        noise_multiplier: multiplier,
        sampling,
        distributed: spec.privacy.distributed(),
    })
}

/// The Rényi orders the accountant tries (integers, for which the sampled Gaussian's RDP has
/// a closed form).
const RDP_ORDERS: std::ops::RangeInclusive<u32> = 2..=256;

/// The Rényi differential privacy, at integer order `alpha`, of one round of the sampled
/// Gaussian mechanism: each member's clipped update is in the round with probability
/// `sampling` (its chance to be selected), and the noise is `noise_multiplier` times the
/// sensitivity (Mironov, Talwar and Zhang 2019, for integer orders):
/// `log(Σ_k C(α,k) (1−q)^(α−k) q^k exp((k²−k) / (2σ²))) / (α−1)`.
pub fn sampled_gaussian_rdp(sampling: f64, noise_multiplier: f64, alpha: u32) -> f64 {
    let (q, sigma) = (sampling.clamp(0.0, 1.0), noise_multiplier);
    if q == 0.0 {
        return 0.0;
    }
    if sigma <= 0.0 {
        return f64::INFINITY;
    }
    let a = f64::from(alpha);
    if q == 1.0 {
        return a / (2.0 * sigma * sigma);
    }
    let ln_factorials = ln_factorials(alpha);
    let ln_binomial = |k: usize| {
        ln_factorials[alpha as usize] - ln_factorials[k] - ln_factorials[alpha as usize - k]
    };
    let terms = (0..=alpha as usize).map(|k| {
        let kf = k as f64;
        ln_binomial(k)
            + (a - kf) * (1.0 - q).ln()
            + kf * q.ln()
            + (kf * kf - kf) / (2.0 * sigma * sigma)
    });
    log_sum_exp(terms) / (a - 1.0)
}

/// The ε that `rounds` rounds of the sampled Gaussian mechanism spend at `delta`, from their
/// RDP at the best integer order (`ε = min_α T·RDP(α) + ln(1/δ) / (α−1)`); infinite without
/// noise.
pub fn epsilon(sampling: f64, noise_multiplier: f64, rounds: u64, delta: f64) -> f64 {
    if rounds == 0 || sampling <= 0.0 {
        return 0.0;
    }
    let log_inverse_delta = (1.0 / delta).ln();
    RDP_ORDERS
        .map(|alpha| {
            let spent = rounds as f64 * sampled_gaussian_rdp(sampling, noise_multiplier, alpha);
            spent + log_inverse_delta / (f64::from(alpha) - 1.0)
        })
        .fold(f64::INFINITY, f64::min)
}

/// `ln i!` for every `i` up to `n`.
fn ln_factorials(n: u32) -> Vec<f64> {
    let mut table = Vec::with_capacity(n as usize + 1);
    let mut sum = 0.0;
    table.push(sum);
    for i in 1..=n {
        sum += f64::from(i).ln();
        table.push(sum);
    }
    table
}

/// `ln Σ exp(x)`, without overflow.
fn log_sum_exp(values: impl Iterator<Item = f64> + Clone) -> f64 {
    let largest = values.clone().fold(f64::NEG_INFINITY, f64::max);
    if !largest.is_finite() {
        return largest;
    }
    largest + values.map(|v| (v - largest).exp()).sum::<f64>().ln()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn full_participation_spends_alpha_over_two_sigma_squared_per_round() {
        for alpha in [2, 7, 64] {
            let rdp = sampled_gaussian_rdp(1.0, 2.0, alpha);
            assert!((rdp - f64::from(alpha) / 8.0).abs() < 1e-12, "{alpha}: {rdp}");
        }
        // The general sum agrees with the closed form as the sampling nears 1.
        let near = sampled_gaussian_rdp(1.0 - 1e-12, 2.0, 7);
        assert!((near - 7.0 / 8.0).abs() < 1e-6, "{near}");
    }

    #[test]
    fn one_round_of_unit_noise_costs_the_known_epsilon() {
        // min over integer α of α/2 + ln(1e5)/(α−1): 3 + 11.5129/5 at α = 6.
        let spent = epsilon(1.0, 1.0, 1, 1e-5);
        assert!((spent - (3.0 + 1e5f64.ln() / 5.0)).abs() < 1e-9, "{spent}");
    }

    #[test]
    fn sampling_amplifies_privacy_and_more_rounds_or_less_noise_spend_more() {
        let full = epsilon(1.0, 1.1, 100, 1e-5);
        let sampled = epsilon(0.1, 1.1, 100, 1e-5);
        assert!(sampled < full / 3.0, "sampled {sampled}, full {full}");
        assert!(epsilon(0.1, 1.1, 1000, 1e-5) > sampled);
        assert!(epsilon(0.1, 0.8, 100, 1e-5) > sampled);
        assert!(epsilon(0.1, 1.1, 100, 1e-8) > sampled);
        // RDP of the sampled mechanism is below the unsampled one at every order.
        for alpha in RDP_ORDERS.step_by(17) {
            let (q, one) =
                (sampled_gaussian_rdp(0.1, 1.1, alpha), sampled_gaussian_rdp(1.0, 1.1, alpha));
            assert!(q <= one + 1e-12, "order {alpha}: {q} > {one}");
        }
    }

    #[test]
    fn without_noise_nothing_is_private_and_without_rounds_nothing_is_spent() {
        assert!(epsilon(0.5, 0.0, 1, 1e-5).is_infinite());
        assert_eq!(epsilon(0.5, 1.0, 0, 1e-5), 0.0);
    }

    #[test]
    fn trainer_shares_add_up_to_at_least_the_central_noise_of_the_weighted_mean() {
        let (multiplier, clip_norm) = (1.2f32, 0.5f32);
        let weights = [10.0, 30.0, 60.0, 100.0];
        let total: f64 = weights.iter().sum();
        let largest = 100.0;
        let central = f64::from(noise_std(multiplier, clip_norm, largest / total));
        // The mean's noise variance is Σ (w_i / W)² σ_i².
        let variance: f64 = weights
            .iter()
            .map(|w| {
                let share = f64::from(trainer_noise_std(multiplier, clip_norm, largest, *w, 4));
                (w / total * share).powi(2)
            })
            .sum();
        assert!(
            (variance.sqrt() - central).abs() < 1e-6 * central,
            "{} vs {central}",
            variance.sqrt()
        );
        // Drawn: 20,000 coordinates of one share have about its standard deviation.
        let std = trainer_noise_std(multiplier, clip_norm, largest, 10.0, 4);
        let mut values = vec![0.0f32; 20_000];
        add_gaussian_noise(&mut values, std, &mut StdRng::seed_from_u64(7));
        let drawn = l2_norm(&values) / (values.len() as f64).sqrt();
        assert!((drawn / f64::from(std) - 1.0).abs() < 0.03, "{drawn} vs {std}");
        assert_eq!(trainer_noise_std(multiplier, clip_norm, largest, 0.0, 4), 0.0);
    }
}
