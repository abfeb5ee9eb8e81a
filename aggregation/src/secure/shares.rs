//! The messages that carry Shamir shares: encrypted share pairs relayed from member to member
//! through the aggregator (ChaCha20-Poly1305), and the shares a survivor reveals for unmasking.

use super::error::SecAggError;
use super::shamir::{SHARE_LEN, Share};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use fedmesh_protocol::{JobId, MemberId, Round};
use serde::{Deserialize, Serialize};

/// Bytes of a ciphertext: two shares and the Poly1305 tag.
pub const CIPHERTEXT_LEN: usize = 2 * SHARE_LEN + 16;

/// A sender's shares of its self-mask seed and its mask key for one recipient, encrypted to the
/// recipient, so the aggregator relaying it learns nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptedShare {
    /// The member whose secrets are shared.
    pub sender: MemberId,
    /// The neighbour who holds the shares.
    pub recipient: MemberId,
    /// ChaCha20-Poly1305 ciphertext of both shares, with the job, round, sender and recipient
    /// as associated data.
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
}

/// One share a survivor reveals to the aggregator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevealedShare {
    /// The member whose secret this is a share of.
    pub owner: MemberId,
    /// The share (the survivor's evaluation point is implied by who sends it).
    #[serde(with = "serde_bytes")]
    pub share: Vec<u8>,
}

/// A survivor's answer to the unmasking request: shares of survivors' self-mask seeds and of
/// dropped members' mask keys, never both kinds for one member.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnmaskingShares {
    /// Shares of the self-mask seeds of survivors.
    pub self_mask: Vec<RevealedShare>,
    /// Shares of the mask secret keys of dropped members.
    pub mask_key: Vec<RevealedShare>,
}

/// What a recipient holds from one sender after decryption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SharePair {
    pub(crate) self_mask: Share,
    pub(crate) mask_key: Share,
}

/// The associated data binding a ciphertext to its job, round, sender and recipient.
fn associated_data(job: &JobId, round: Round, sender: &MemberId, recipient: &MemberId) -> Vec<u8> {
    [&job.0.0[..], &round.to_le_bytes(), &sender.0, &recipient.0].concat()
}

impl SharePair {
    /// Encrypts the pair under `key` (used for this one message only, hence the zero nonce).
    pub(crate) fn seal(
        self,
        key: &[u8; 32],
        job: &JobId,
        round: Round,
        sender: MemberId,
        recipient: MemberId,
    ) -> Result<EncryptedShare, SecAggError> {
        let plaintext = [self.self_mask.to_bytes(), self.mask_key.to_bytes()].concat();
        let aad = associated_data(job, round, &sender, &recipient);
        let ciphertext = ChaCha20Poly1305::new(Key::from_slice(key))
            .encrypt(Nonce::from_slice(&[0u8; 12]), Payload { msg: &plaintext, aad: &aad })
            .map_err(|_| SecAggError::Encryption)?;
        Ok(EncryptedShare { sender, recipient, ciphertext })
    }

    /// Decrypts and parses a pair, refusing a wrong length, a failed tag or malformed shares.
    pub(crate) fn open(
        encrypted: &EncryptedShare,
        key: &[u8; 32],
        job: &JobId,
        round: Round,
    ) -> Result<Self, SecAggError> {
        let sender = encrypted.sender;
        if encrypted.ciphertext.len() != CIPHERTEXT_LEN {
            return Err(SecAggError::MalformedShare(sender));
        }
        let aad = associated_data(job, round, &sender, &encrypted.recipient);
        let plaintext = ChaCha20Poly1305::new(Key::from_slice(key))
            .decrypt(
                Nonce::from_slice(&[0u8; 12]),
                Payload { msg: &encrypted.ciphertext, aad: &aad },
            )
            .map_err(|_| SecAggError::DecryptionFailed(sender))?;
        let (self_mask, mask_key) = plaintext.split_at(SHARE_LEN);
        match (Share::from_bytes(self_mask), Share::from_bytes(mask_key)) {
            (Some(self_mask), Some(mask_key)) => Ok(Self { self_mask, mask_key }),
            _ => Err(SecAggError::MalformedShare(sender)),
        }
    }
}
