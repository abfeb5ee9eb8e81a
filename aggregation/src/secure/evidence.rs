//! Auditing a secure round: a trainer signs its masked input with the quantizer it used, and
//! an auditor, given a survivor's masked input, keys and the secrets the round revealed (its
//! self-mask seed, its dropped neighbours' mask keys), removes those masks after checking each
//! secret against the keys the trainers signed. Summed over the survivors, what is left is the
//! round's exact sum: the masks survivors share cancel, and nothing else is learnt.

use super::error::SecAggError;
use super::keys::{RoundKeys, agree, pairwise_seed, self_mask_commitment};
use super::masking::{Sign, apply_mask, pairwise_sign};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use fedmesh_protocol::{Identity, JobId, MemberId, Round};
use x25519_dalek::{PublicKey, StaticSecret};

const STATEMENT_CONTEXT: &str = "fedmesh secagg 2026 masked input statement v1";

/// What a trainer vouches for when it sends its masked input: the opening, its weight, the
/// quantizer it used (its weight bound and the summands it allows for) and the masked values.
#[derive(Debug, Clone, Copy)]
pub struct MaskedStatement<'a> {
    pub job: JobId,
    pub round: Round,
    pub opened_at_ms: u64,
    pub member: MemberId,
    pub samples: u64,
    pub max_weight: u64,
    pub summands: u32,
    pub masked: &'a [u64],
}

impl MaskedStatement<'_> {
    fn digest(&self) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new_derive_key(STATEMENT_CONTEXT);
        hasher.update(&self.job.0.0);
        for word in [self.round, self.opened_at_ms, self.samples, self.max_weight] {
            hasher.update(&word.to_le_bytes());
        }
        hasher.update(&self.summands.to_le_bytes());
        hasher.update(&self.member.0);
        for value in self.masked {
            hasher.update(&value.to_le_bytes());
        }
        *hasher.finalize().as_bytes()
    }

    /// The trainer's signature (its identity must be `member`'s).
    pub fn sign(&self, identity: &Identity) -> [u8; 64] {
        SigningKey::from_bytes(&identity.seed()).sign(&self.digest()).to_bytes()
    }

    /// Checks that `member` signed this statement.
    pub fn verify(&self, signature: &[u8; 64]) -> Result<(), SecAggError> {
        let key = VerifyingKey::from_bytes(&self.member.0)
            .map_err(|_| SecAggError::InvalidMemberKey(self.member))?;
        key.verify_strict(&self.digest(), &Signature::from_bytes(signature))
            .map_err(|_| SecAggError::BadSignature(self.member))
    }
}

/// The secrets a secure round revealed about one survivor's masks: its self-mask seed, and for
/// each neighbour that dropped after dealing shares, that neighbour's keys and mask secret key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmasking {
    pub keys: RoundKeys,
    pub self_mask_seed: [u8; 32],
    pub dropped: Vec<(RoundKeys, [u8; 32])>,
}

impl Unmasking {
    /// `masked` less the survivor's self-mask and the masks it shares with its dropped
    /// neighbours: its quantized update plus the masks it shares with surviving neighbours
    /// (which cancel in the round's sum). Every key must be signed for this job and round, the
    /// seed must open the survivor's commitment, and each mask secret must be its public key's.
    pub fn strip(
        &self,
        job: &JobId,
        round: Round,
        masked: &[u64],
    ) -> Result<Vec<u64>, SecAggError> {
        let survivor = self.keys.member;
        self.keys.verify(job, round)?;
        if self_mask_commitment(&self.self_mask_seed, job, round, &survivor)
            != self.keys.self_mask_commitment
        {
            return Err(SecAggError::ReconstructionMismatch(survivor));
        }
        let mut values = masked.to_vec();
        apply_mask(&mut values, &self.self_mask_seed, Sign::Minus);
        for (keys, secret) in &self.dropped {
            keys.verify(job, round)?;
            let secret = StaticSecret::from(*secret);
            if PublicKey::from(&secret).to_bytes() != keys.mask_key {
                return Err(SecAggError::ReconstructionMismatch(keys.member));
            }
            let shared = agree(&secret, &self.keys.mask_key, survivor)?;
            let seed = pairwise_seed(&shared, job, round, &keys.member, &survivor);
            apply_mask(&mut values, &seed, pairwise_sign(&survivor, &keys.member).flipped());
        }
        Ok(values)
    }
}

/// Adds `part` to `sum` in Z/2^64.
pub fn add_to_sum(sum: &mut [u64], part: &[u64]) -> Result<(), SecAggError> {
    if sum.len() != part.len() {
        return Err(SecAggError::WrongLength { expected: sum.len(), found: part.len() });
    }
    sum.iter_mut().zip(part).for_each(|(s, p)| *s = s.wrapping_add(*p));
    Ok(())
}
