//! Mask expansion: a 32-byte seed drives a ChaCha20 stream of ring elements that is added to or
//! subtracted from a vector in Z/2^64.

use fedmesh_protocol::MemberId;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// Whether a mask is added or subtracted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sign {
    Plus,
    Minus,
}

impl Sign {
    /// The other sign (what removes a mask added with this one).
    pub(crate) fn flipped(self) -> Self {
        match self {
            Sign::Plus => Sign::Minus,
            Sign::Minus => Sign::Plus,
        }
    }
}

/// The sign with which `member` applies the pairwise mask it shares with `peer`: `+` towards a
/// larger member key, `−` towards a smaller one, so the two masks cancel in the sum.
pub(crate) fn pairwise_sign(member: &MemberId, peer: &MemberId) -> Sign {
    if member < peer { Sign::Plus } else { Sign::Minus }
}

/// Adds (or subtracts) the mask `PRG(seed)` to `values`, coordinate by coordinate mod 2^64.
pub(crate) fn apply_mask(values: &mut [u64], seed: &[u8; 32], sign: Sign) {
    let mut prg = ChaCha20Rng::from_seed(*seed);
    match sign {
        Sign::Plus => values.iter_mut().for_each(|v| *v = v.wrapping_add(prg.next_u64())),
        Sign::Minus => values.iter_mut().for_each(|v| *v = v.wrapping_sub(prg.next_u64())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mask_and_its_negation_cancel() {
        let original: Vec<u64> = (0..1000).map(|i| i * 31).collect();
        let mut values = original.clone();
        apply_mask(&mut values, &[5; 32], Sign::Plus);
        assert!(values.iter().zip(&original).filter(|(a, b)| a != b).count() > 990);
        apply_mask(&mut values, &[5; 32], Sign::Plus.flipped());
        assert_eq!(values, original);
    }

    #[test]
    fn pairwise_signs_are_opposite() {
        let (a, b) = (MemberId([1; 32]), MemberId([2; 32]));
        assert_eq!(pairwise_sign(&a, &b), Sign::Plus);
        assert_eq!(pairwise_sign(&b, &a), Sign::Minus);
    }
}
