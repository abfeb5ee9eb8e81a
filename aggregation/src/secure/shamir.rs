//! Shamir secret sharing of 32-byte secrets over GF(2^61 − 1): a secret is cut into five chunks
//! of at most 7 bytes, each shared with its own random polynomial of degree `threshold − 1`.

use super::error::ShamirError;
use super::field::Fp;
use rand::RngCore;

/// Bytes of a shared secret (an X25519 secret key or a self-mask seed).
pub const SECRET_LEN: usize = 32;
/// Bytes of one secret chunk: 7 bytes (< 2^56) always fit in the 61-bit field.
const CHUNK_BYTES: usize = 7;
/// Chunks per secret: 4 of 7 bytes and one of 4.
const CHUNKS: usize = SECRET_LEN.div_ceil(CHUNK_BYTES);
/// Bytes of one encoded share: a little-endian u64 per chunk.
pub const SHARE_LEN: usize = CHUNKS * 8;

/// One holder's share of a secret: the value of each chunk's polynomial at the holder's point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Share([Fp; CHUNKS]);

impl Share {
    /// The share's wire form: each chunk as a little-endian u64.
    pub(crate) fn to_bytes(self) -> [u8; SHARE_LEN] {
        let mut out = [0u8; SHARE_LEN];
        for (bytes, value) in out.chunks_exact_mut(8).zip(self.0) {
            bytes.copy_from_slice(&value.value().to_le_bytes());
        }
        out
    }

    /// Parses a share, refusing a wrong length or an unreduced field element.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != SHARE_LEN {
            return None;
        }
        let mut chunks = [Fp::ZERO; CHUNKS];
        for (chunk, raw) in chunks.iter_mut().zip(bytes.chunks_exact(8)) {
            *chunk = Fp::new(u64::from_le_bytes(raw.try_into().ok()?))?;
        }
        Some(Self(chunks))
    }
}

/// The secret's chunks as field elements.
fn chunks_of(secret: &[u8; SECRET_LEN]) -> [Fp; CHUNKS] {
    let mut chunks = [Fp::ZERO; CHUNKS];
    for (chunk, bytes) in chunks.iter_mut().zip(secret.chunks(CHUNK_BYTES)) {
        let mut wide = [0u8; 8];
        wide[..bytes.len()].copy_from_slice(bytes);
        // At most 7 bytes: the value is below 2^56 < P, so reducing leaves it as it is.
        *chunk = Fp::reduced(u64::from_le_bytes(wide));
    }
    chunks
}

/// The secret from its chunks; `None` if a chunk is too large to be one (tampered shares).
fn secret_of(chunks: &[Fp; CHUNKS]) -> Option<[u8; SECRET_LEN]> {
    let mut secret = [0u8; SECRET_LEN];
    for (bytes, chunk) in secret.chunks_mut(CHUNK_BYTES).zip(chunks) {
        let wide = chunk.value().to_le_bytes();
        if wide[bytes.len()..].iter().any(|&byte| byte != 0) {
            return None;
        }
        bytes.copy_from_slice(&wide[..bytes.len()]);
    }
    Some(secret)
}

/// Splits `secret` into one share per point of `points` (distinct and non-zero; the caller's
/// member indices + 1), any `threshold` of which reconstruct it and fewer reveal nothing.
pub(crate) fn split(
    secret: &[u8; SECRET_LEN],
    threshold: usize,
    points: &[Fp],
    rng: &mut (impl RngCore + ?Sized),
) -> Vec<Share> {
    let polynomials: Vec<Vec<Fp>> = chunks_of(secret)
        .into_iter()
        .map(|constant| {
            let random = (1..threshold).map(|_| Fp::random(rng));
            std::iter::once(constant).chain(random).collect()
        })
        .collect();
    points
        .iter()
        .map(|&x| {
            let mut share = [Fp::ZERO; CHUNKS];
            for (value, coefficients) in share.iter_mut().zip(&polynomials) {
                *value = coefficients.iter().rev().fold(Fp::ZERO, |acc, &c| acc * x + c);
            }
            Share(share)
        })
        .collect()
}

/// The Lagrange basis of `xs` evaluated at `z`; `None` if two points coincide.
fn lagrange_basis(xs: &[Fp], z: Fp) -> Option<Vec<Fp>> {
    xs.iter()
        .enumerate()
        .map(|(j, &xj)| {
            let (numerator, denominator) = xs
                .iter()
                .enumerate()
                .filter(|&(m, _)| m != j)
                .fold((Fp::ONE, Fp::ONE), |(num, den), (_, &xm)| (num * (z - xm), den * (xj - xm)));
            Some(numerator * denominator.inverse()?)
        })
        .collect()
}

/// Evaluates, chunk by chunk, the polynomial through `shares` with the given basis.
fn interpolate(basis: &[Fp], shares: &[Share]) -> [Fp; CHUNKS] {
    let mut out = [Fp::ZERO; CHUNKS];
    for (c, value) in out.iter_mut().enumerate() {
        *value = basis.iter().zip(shares).fold(Fp::ZERO, |acc, (&w, share)| acc + w * share.0[c]);
    }
    out
}

/// Reconstructs the secret from `(point, share)` pairs. Refuses fewer than `threshold` shares,
/// repeated points, and shares beyond the first `threshold` that are not on the same polynomials
/// (so one tampered share among more than `threshold` is caught, not silently used).
pub(crate) fn reconstruct(
    threshold: usize,
    points: &[(Fp, Share)],
) -> Result<[u8; SECRET_LEN], ShamirError> {
    if threshold == 0 || points.len() < threshold {
        return Err(ShamirError::NotEnoughShares { have: points.len(), need: threshold.max(1) });
    }
    let xs: Vec<Fp> = points.iter().map(|&(x, _)| x).collect();
    if (1..xs.len()).any(|i| xs[..i].contains(&xs[i])) {
        return Err(ShamirError::DuplicatePoint);
    }
    let (used, extra) = points.split_at(threshold);
    let used_xs = &xs[..threshold];
    let used_shares: Vec<Share> = used.iter().map(|&(_, share)| share).collect();
    for &(x, share) in extra {
        let basis = lagrange_basis(used_xs, x).ok_or(ShamirError::DuplicatePoint)?;
        if interpolate(&basis, &used_shares) != share.0 {
            return Err(ShamirError::Inconsistent);
        }
    }
    let basis = lagrange_basis(used_xs, Fp::ZERO).ok_or(ShamirError::DuplicatePoint)?;
    secret_of(&interpolate(&basis, &used_shares)).ok_or(ShamirError::Inconsistent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    use rand_chacha::ChaCha20Rng;

    fn points(n: u64) -> Vec<Fp> {
        (1..=n).filter_map(Fp::new).collect()
    }

    fn shared(secret: &[u8; 32], t: usize, n: u64, seed: u64) -> Vec<(Fp, Share)> {
        let xs = points(n);
        let shares = split(secret, t, &xs, &mut ChaCha20Rng::seed_from_u64(seed));
        xs.into_iter().zip(shares).collect()
    }

    #[test]
    fn reconstructs_at_exactly_the_threshold_and_with_more() {
        let secret = [0xA5u8; 32];
        let all = shared(&secret, 4, 7, 1);
        assert_eq!(reconstruct(4, &all[..4]), Ok(secret));
        assert_eq!(reconstruct(4, &all[2..6]), Ok(secret));
        assert_eq!(reconstruct(4, &all), Ok(secret));
    }

    #[test]
    fn any_subset_of_threshold_size_reconstructs() {
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        secret[31] = 0xFF;
        let mut all = shared(&secret, 3, 9, 2);
        for _ in 0..50 {
            all.shuffle(&mut rng);
            assert_eq!(reconstruct(3, &all[..3]), Ok(secret));
        }
    }

    #[test]
    fn fewer_than_threshold_is_refused() {
        let all = shared(&[7u8; 32], 5, 8, 3);
        assert_eq!(
            reconstruct(5, &all[..4]),
            Err(ShamirError::NotEnoughShares { have: 4, need: 5 })
        );
        assert!(reconstruct(0, &all).is_err());
    }

    #[test]
    fn threshold_one_shares_are_the_secret_chunks() {
        let all = shared(&[3u8; 32], 1, 3, 4);
        assert_eq!(all[0].1, all[2].1);
        assert_eq!(reconstruct(1, &all[1..2]), Ok([3u8; 32]));
    }

    #[test]
    fn duplicate_points_and_tampered_extra_shares_are_refused() {
        let all = shared(&[1u8; 32], 2, 4, 5);
        assert_eq!(reconstruct(2, &[all[0], all[0]]), Err(ShamirError::DuplicatePoint));
        let mut tampered = all.clone();
        tampered[3].1.0[2] = tampered[3].1.0[2] + Fp::ONE;
        assert_eq!(reconstruct(2, &tampered), Err(ShamirError::Inconsistent));
    }

    #[test]
    fn share_bytes_round_trip_and_refuse_bad_input() {
        let (_, share) = shared(&[9u8; 32], 2, 2, 6)[1];
        assert_eq!(Share::from_bytes(&share.to_bytes()), Some(share));
        assert_eq!(Share::from_bytes(&[0u8; SHARE_LEN - 1]), None);
        assert_eq!(Share::from_bytes(&[0xFFu8; SHARE_LEN]), None, "unreduced elements");
    }
}
