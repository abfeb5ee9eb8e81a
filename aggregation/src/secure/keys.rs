//! Round keys: each member's signed per-round X25519 public keys, the secrets behind them, and
//! the key derivations (BLAKE3 `derive_key`) from X25519 agreements to mask seeds and share keys.

use super::error::SecAggError;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use fedmesh_protocol::{Identity, JobId, MemberId, Round};
use rand::CryptoRng;
use serde::{Deserialize, Serialize};
use x25519_dalek::{PublicKey, StaticSecret};

const SIGNATURE_CONTEXT: &str = "fedmesh secagg 2026 round keys signature v1";
const COMMITMENT_CONTEXT: &str = "fedmesh secagg 2026 self-mask commitment v1";
const MASK_SEED_CONTEXT: &str = "fedmesh secagg 2026 pairwise mask seed v1";
const SHARE_KEY_CONTEXT: &str = "fedmesh secagg 2026 share encryption key v1";

/// A member's public keys for one round, signed with its ed25519 identity.
///
/// Two X25519 keys, as in Bonawitz et al.: the mask key's secret is Shamir-shared and revealed if
/// the member drops out, which must not also expose the channel its shares travelled on, so the
/// share-encryption key is a separate one that is never revealed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundKeys {
    /// The job the keys are for.
    pub job: JobId,
    /// The round the keys are for.
    pub round: Round,
    /// The member publishing (and signing) the keys.
    pub member: MemberId,
    /// X25519 public key for pairwise mask agreement.
    pub mask_key: [u8; 32],
    /// X25519 public key for encrypting Shamir shares to this member.
    pub encryption_key: [u8; 32],
    /// BLAKE3 commitment to the self-mask seed, so its reconstruction can be checked.
    pub self_mask_commitment: [u8; 32],
    /// ed25519 signature by `member` over all of the above and a domain tag.
    #[serde(with = "serde_bytes")]
    pub signature: [u8; 64],
}

impl RoundKeys {
    /// The digest the signature covers: a domain tag, the job id, the round, the member and the
    /// three keys.
    fn digest(&self) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new_derive_key(SIGNATURE_CONTEXT);
        hasher.update(&self.job.0.0);
        hasher.update(&self.round.to_le_bytes());
        hasher.update(&self.member.0);
        hasher.update(&self.mask_key);
        hasher.update(&self.encryption_key);
        hasher.update(&self.self_mask_commitment);
        *hasher.finalize().as_bytes()
    }

    /// Checks that the keys are for this job and round and signed by the member they name.
    pub fn verify(&self, job: &JobId, round: Round) -> Result<(), SecAggError> {
        if &self.job != job {
            return Err(SecAggError::WrongJob);
        }
        if self.round != round {
            return Err(SecAggError::WrongRound { expected: round, found: self.round });
        }
        let key = VerifyingKey::from_bytes(&self.member.0)
            .map_err(|_| SecAggError::InvalidMemberKey(self.member))?;
        key.verify_strict(&self.digest(), &Signature::from_bytes(&self.signature))
            .map_err(|_| SecAggError::BadSignature(self.member))
    }
}

/// A member's secrets for one round. The X25519 secrets zeroize on drop.
pub(crate) struct RoundSecrets {
    /// Mask agreement secret (shared with neighbours so a dropout's masks can be removed).
    pub(crate) mask: StaticSecret,
    /// Share-encryption secret (never revealed).
    pub(crate) encryption: StaticSecret,
    /// Seed of the self-mask (shared with neighbours, revealed for survivors only).
    pub(crate) self_mask_seed: [u8; 32],
}

impl RoundSecrets {
    /// Fresh secrets from 32 random bytes each.
    pub(crate) fn generate(rng: &mut (impl CryptoRng + ?Sized)) -> Self {
        let mut draw = || {
            let mut bytes = [0u8; 32];
            rng.fill_bytes(&mut bytes);
            bytes
        };
        Self {
            mask: StaticSecret::from(draw()),
            encryption: StaticSecret::from(draw()),
            self_mask_seed: draw(),
        }
    }

    /// The signed public keys for these secrets.
    pub(crate) fn round_keys(&self, identity: &Identity, job: JobId, round: Round) -> RoundKeys {
        let member = identity.member_id();
        let mut keys = RoundKeys {
            job,
            round,
            member,
            mask_key: PublicKey::from(&self.mask).to_bytes(),
            encryption_key: PublicKey::from(&self.encryption).to_bytes(),
            self_mask_commitment: self_mask_commitment(&self.self_mask_seed, &job, round, &member),
            signature: [0u8; 64],
        };
        keys.signature = SigningKey::from_bytes(&identity.seed()).sign(&keys.digest()).to_bytes();
        keys
    }
}

/// The commitment to a self-mask seed published in [`RoundKeys`].
pub(crate) fn self_mask_commitment(
    seed: &[u8; 32],
    job: &JobId,
    round: Round,
    member: &MemberId,
) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_derive_key(COMMITMENT_CONTEXT);
    hasher.update(seed);
    hasher.update(&job.0.0);
    hasher.update(&round.to_le_bytes());
    hasher.update(&member.0);
    *hasher.finalize().as_bytes()
}

/// X25519 agreement with `peer`'s public key, refusing a low-order key (whose result would be
/// known to anyone).
pub(crate) fn agree(
    secret: &StaticSecret,
    public: &[u8; 32],
    peer: MemberId,
) -> Result<[u8; 32], SecAggError> {
    let shared = secret.diffie_hellman(&PublicKey::from(*public));
    if shared.was_contributory() {
        Ok(shared.to_bytes())
    } else {
        Err(SecAggError::NonContributoryKey(peer))
    }
}

/// KDF over an agreement, bound to the job, the round and an ordered pair of members.
fn derive(
    context: &str,
    shared: &[u8; 32],
    job: &JobId,
    round: Round,
    first: &MemberId,
    second: &MemberId,
) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_derive_key(context);
    hasher.update(shared);
    hasher.update(&job.0.0);
    hasher.update(&round.to_le_bytes());
    hasher.update(&first.0);
    hasher.update(&second.0);
    *hasher.finalize().as_bytes()
}

/// The pairwise mask seed `s_ij` of members `a` and `b` (symmetric in them).
pub(crate) fn pairwise_seed(
    shared: &[u8; 32],
    job: &JobId,
    round: Round,
    a: &MemberId,
    b: &MemberId,
) -> [u8; 32] {
    let (low, high) = if a < b { (a, b) } else { (b, a) };
    derive(MASK_SEED_CONTEXT, shared, job, round, low, high)
}

/// The AEAD key for the one message `sender` encrypts to `recipient` in this round (directional,
/// so the two directions never share a key and a fixed nonce is safe).
pub(crate) fn share_key(
    shared: &[u8; 32],
    job: &JobId,
    round: Round,
    sender: &MemberId,
    recipient: &MemberId,
) -> [u8; 32] {
    derive(SHARE_KEY_CONTEXT, shared, job, round, sender, recipient)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedmesh_protocol::ContentHash;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn signed(identity: &Identity) -> RoundKeys {
        let secrets = RoundSecrets::generate(&mut ChaCha20Rng::seed_from_u64(1));
        secrets.round_keys(identity, JobId(ContentHash([4; 32])), 7)
    }

    #[test]
    fn genuine_keys_verify() {
        let keys = signed(&Identity::from_seed([1; 32]));
        assert_eq!(keys.verify(&keys.job.clone(), 7), Ok(()));
    }

    #[test]
    fn forged_or_misattributed_keys_are_refused() {
        let alice = Identity::from_seed([1; 32]);
        let mallory = Identity::from_seed([2; 32]);
        let job = JobId(ContentHash([4; 32]));
        let mut posing = signed(&mallory);
        posing.member = alice.member_id();
        assert_eq!(posing.verify(&job, 7), Err(SecAggError::BadSignature(alice.member_id())));
        let mut swapped = signed(&alice);
        swapped.mask_key[0] ^= 1;
        assert_eq!(swapped.verify(&job, 7), Err(SecAggError::BadSignature(alice.member_id())));
        let mut garbage = signed(&alice);
        garbage.signature = [0xFF; 64];
        assert_eq!(garbage.verify(&job, 7), Err(SecAggError::BadSignature(alice.member_id())));
    }

    #[test]
    fn keys_from_another_job_or_round_are_refused() {
        let keys = signed(&Identity::from_seed([1; 32]));
        assert_eq!(keys.verify(&JobId(ContentHash([5; 32])), 7), Err(SecAggError::WrongJob));
        assert_eq!(
            keys.verify(&keys.job.clone(), 8),
            Err(SecAggError::WrongRound { expected: 8, found: 7 })
        );
    }

    #[test]
    fn low_order_public_keys_are_refused() {
        let secret = StaticSecret::from([3u8; 32]);
        let peer = MemberId([1; 32]);
        assert_eq!(agree(&secret, &[0u8; 32], peer), Err(SecAggError::NonContributoryKey(peer)));
    }

    #[test]
    fn pairwise_seeds_are_symmetric_and_share_keys_directional() {
        let (a, b) = (MemberId([1; 32]), MemberId([2; 32]));
        let job = JobId(ContentHash([0; 32]));
        let shared = [9u8; 32];
        assert_eq!(
            pairwise_seed(&shared, &job, 1, &a, &b),
            pairwise_seed(&shared, &job, 1, &b, &a)
        );
        assert_ne!(share_key(&shared, &job, 1, &a, &b), share_key(&shared, &job, 1, &b, &a));
        assert_ne!(
            pairwise_seed(&shared, &job, 1, &a, &b),
            pairwise_seed(&shared, &job, 2, &a, &b)
        );
    }
}
