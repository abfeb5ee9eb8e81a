//! Secure aggregation's cryptographic core: pairwise masking (Bonawitz et al. 2017) over a sparse
//! neighbour graph (SecAgg+, Bell et al. 2020), so that the aggregator learns only the sum of the
//! survivors' updates. Pure and sans-IO: [`TrainerRound`] and [`AggregatorRound`] take the
//! messages a driver delivers and return the ones it should send.
//!
//! A round, with members `M`, neighbour graph `G` and threshold `t`:
//! 1. each member publishes signed [`RoundKeys`] (two X25519 public keys and a commitment);
//! 2. each deals its neighbours [`EncryptedShare`]s of its self-mask seed `b_i` and its mask
//!    secret key;
//! 3. each sends `x_i + PRG(b_i) + Σ_{j∈N(i), j>i} PRG(s_ij) − Σ_{j∈N(i), j<i} PRG(s_ij)` in
//!    Z/2^64 ([`Quantizer`] maps f32 updates there);
//! 4. survivors reveal [`UnmaskingShares`]: of `b_u` for survivors, of mask keys for dropped
//!    members, never both for one member; the aggregator removes what is left of the masks.

/// The aggregator's side: collects, relays, sums and unmasks.
mod aggregator;
/// A round's public parameters.
mod config;
/// Typed errors.
mod error;
/// What auditors check: signed masked inputs and the masks revealed secrets remove.
mod evidence;
/// GF(2^61 − 1) arithmetic.
mod field;
/// Signed round keys, secrets and key derivations.
mod keys;
/// PRG mask expansion in Z/2^64.
mod masking;
/// The neighbour graph (Harary graph over a seeded permutation).
mod pairing;
/// f32 ↔ Z/2^64 fixed-point quantization.
mod quantize;
/// Shamir sharing of 32-byte secrets.
mod shamir;
/// Share-carrying messages and their encryption.
mod shares;
/// A trainer's side: secrets, shares, masked input, reveals.
mod trainer;

#[cfg(test)]
mod tests;

pub use aggregator::{AggregatorRound, Dropouts};
pub use config::RoundConfig;
pub use error::{SecAggError, ShamirError};
pub use evidence::{MaskedStatement, Unmasking, add_to_sum};
pub use keys::RoundKeys;
pub use pairing::Pairing;
pub use quantize::Quantizer;
pub use shamir::{SECRET_LEN, SHARE_LEN};
pub use shares::{CIPHERTEXT_LEN, EncryptedShare, RevealedShare, UnmaskingShares};
pub use trainer::TrainerRound;
