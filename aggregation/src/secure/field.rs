//! The prime field GF(p), p = 2^61 − 1 (a Mersenne prime), that Shamir sharing works in.

use rand::RngCore;
use std::ops::{Add, Mul, Sub};

/// The field's modulus, 2^61 − 1.
pub(crate) const P: u64 = (1 << 61) - 1;

/// An element of GF(2^61 − 1), always reduced (`0 <= value < P`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Fp(u64);

impl Fp {
    pub(crate) const ZERO: Fp = Fp(0);
    pub(crate) const ONE: Fp = Fp(1);

    /// The element with this value, if it is reduced (the check for values read from a peer).
    pub(crate) fn new(value: u64) -> Option<Self> {
        (value < P).then_some(Self(value))
    }

    /// `value mod P`.
    pub(crate) fn reduced(value: u64) -> Self {
        Self::reduce(u128::from(value))
    }

    /// The element's value in `0..P`.
    pub(crate) fn value(self) -> u64 {
        self.0
    }

    /// A uniformly random element (rejection sampling on 61 random bits).
    pub(crate) fn random(rng: &mut (impl RngCore + ?Sized)) -> Self {
        loop {
            if let Some(element) = Self::new(rng.next_u64() >> 3) {
                return element;
            }
        }
    }

    /// `2^61 · hi + lo ≡ hi + lo (mod P)`: folds a value below 2^122 into the field.
    fn reduce(wide: u128) -> Self {
        let folded = (wide & u128::from(P)) + (wide >> 61);
        let folded = ((folded & u128::from(P)) + (folded >> 61)) as u64;
        Self(if folded >= P { folded - P } else { folded })
    }

    /// `self^exponent` by square and multiply.
    pub(crate) fn pow(self, mut exponent: u64) -> Self {
        let (mut base, mut result) = (self, Self::ONE);
        while exponent > 0 {
            if exponent & 1 == 1 {
                result = result * base;
            }
            base = base * base;
            exponent >>= 1;
        }
        result
    }

    /// The multiplicative inverse (Fermat: `self^(P−2)`); `None` for zero.
    pub(crate) fn inverse(self) -> Option<Self> {
        (self != Self::ZERO).then(|| self.pow(P - 2))
    }
}

impl Add for Fp {
    type Output = Fp;
    fn add(self, other: Fp) -> Fp {
        let sum = self.0 + other.0;
        Fp(if sum >= P { sum - P } else { sum })
    }
}

impl Sub for Fp {
    type Output = Fp;
    fn sub(self, other: Fp) -> Fp {
        Fp(if self.0 >= other.0 { self.0 - other.0 } else { self.0 + P - other.0 })
    }
}

impl Mul for Fp {
    type Output = Fp;
    fn mul(self, other: Fp) -> Fp {
        Fp::reduce(u128::from(self.0) * u128::from(other.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    #[test]
    fn new_refuses_unreduced_values() {
        assert_eq!(Fp::new(P), None);
        assert_eq!(Fp::new(u64::MAX), None);
        assert_eq!(Fp::new(P - 1).map(Fp::value), Some(P - 1));
    }

    #[test]
    fn arithmetic_wraps_at_the_modulus() {
        let minus_one = Fp(P - 1);
        assert_eq!(minus_one + Fp::ONE, Fp::ZERO);
        assert_eq!(Fp::ZERO - Fp::ONE, minus_one);
        assert_eq!(minus_one * minus_one, Fp::ONE);
        assert_eq!(Fp(1 << 60) * Fp(4), Fp(2), "2^62 = 2·2^61 ≡ 2");
    }

    #[test]
    fn multiplication_matches_u128_reference_and_inverses_invert() {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        for _ in 0..1000 {
            let (a, b) = (Fp::random(&mut rng), Fp::random(&mut rng));
            let reference = (u128::from(a.0) * u128::from(b.0) % u128::from(P)) as u64;
            assert_eq!((a * b).0, reference);
            if let Some(inverse) = a.inverse() {
                assert_eq!(a * inverse, Fp::ONE);
            }
            assert_eq!(a - b + b, a);
        }
        assert_eq!(Fp::ZERO.inverse(), None);
    }
}
