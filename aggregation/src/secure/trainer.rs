//! A trainer's side of one secure-aggregation round: its secrets, the shares it deals and holds,
//! its masked input, and the shares it reveals for unmasking (never both kinds for one member).

use super::config::RoundConfig;
use super::error::SecAggError;
use super::keys::{RoundKeys, RoundSecrets, agree, pairwise_seed, share_key};
use super::masking::{Sign, apply_mask, pairwise_sign};
use super::shamir;
use super::shares::{EncryptedShare, RevealedShare, SharePair, UnmaskingShares};
use fedmesh_protocol::{Identity, MemberId};
use rand::CryptoRng;
use std::collections::{BTreeMap, BTreeSet};

/// Where a trainer is in the round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Keys published; waiting for the neighbours' keys.
    Keys,
    /// Shares dealt; waiting for the neighbours' shares and the update.
    Shared,
    /// Masked input sent; answering unmasking requests.
    Masked,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Keys => "keys",
            Phase::Shared => "shared",
            Phase::Masked => "masked",
        }
    }
}

/// What a trainer derived from a neighbour's round keys.
struct Neighbour {
    /// The pairwise mask seed `s_ij`.
    mask_seed: [u8; 32],
    /// The X25519 agreement of the two encryption keys (the share keys derive from it).
    encryption_agreement: [u8; 32],
}

/// One trainer's secure-aggregation state for one round. Drive it in order: publish
/// [`keys`](Self::keys), deal [`shares_for`](Self::shares_for) the neighbours' keys, send
/// [`masked_input`](Self::masked_input), then answer
/// [`unmasking_shares`](Self::unmasking_shares).
pub struct TrainerRound {
    config: RoundConfig,
    me: MemberId,
    secrets: RoundSecrets,
    keys: RoundKeys,
    phase: Phase,
    /// Neighbours whose keys were valid when shares were dealt.
    neighbours: BTreeMap<MemberId, Neighbour>,
    /// Shares held: this trainer's own, and those of neighbours who dealt to it (and so were
    /// masked with).
    held: BTreeMap<MemberId, SharePair>,
    /// Members whose self-mask shares this trainer has revealed.
    revealed_self_mask: BTreeSet<MemberId>,
    /// Members whose mask-key shares this trainer has revealed.
    revealed_mask_key: BTreeSet<MemberId>,
}

impl TrainerRound {
    /// Fresh secrets for this round, and the signed keys that publish them.
    pub fn new(
        config: RoundConfig,
        identity: &Identity,
        rng: &mut (impl CryptoRng + ?Sized),
    ) -> Result<Self, SecAggError> {
        let me = identity.member_id();
        config.check_member(&me)?;
        let secrets = RoundSecrets::generate(rng);
        let keys = secrets.round_keys(identity, *config.job(), config.round());
        Ok(Self {
            config,
            me,
            secrets,
            keys,
            phase: Phase::Keys,
            neighbours: BTreeMap::new(),
            held: BTreeMap::new(),
            revealed_self_mask: BTreeSet::new(),
            revealed_mask_key: BTreeSet::new(),
        })
    }

    /// The round's parameters.
    pub fn config(&self) -> &RoundConfig {
        &self.config
    }

    /// The signed round keys to publish.
    pub fn keys(&self) -> &RoundKeys {
        &self.keys
    }

    fn expect(&self, phase: Phase, action: &'static str) -> Result<(), SecAggError> {
        if self.phase == phase {
            Ok(())
        } else {
            Err(SecAggError::WrongPhase { action, phase: self.phase.name() })
        }
    }

    /// Verifies the keys of the round's members (this trainer's own and non-neighbours' are
    /// skipped) and returns, for each neighbour among them, the encrypted Shamir shares of this
    /// trainer's self-mask seed and mask secret key (it keeps a share of its own too, as in
    /// Bonawitz et al.). Needs at least `threshold` holders, itself included.
    pub fn shares_for(
        &mut self,
        keys: &[RoundKeys],
        rng: &mut (impl CryptoRng + ?Sized),
    ) -> Result<Vec<EncryptedShare>, SecAggError> {
        self.expect(Phase::Keys, "deal shares")?;
        let neighbours = self.verified_neighbours(keys)?;
        let threshold = self.config.threshold();
        let have = neighbours.len() + 1;
        if have < threshold {
            return Err(SecAggError::TooFewNeighbours { member: self.me, have, need: threshold });
        }
        let holders: Vec<MemberId> =
            std::iter::once(self.me).chain(neighbours.keys().copied()).collect();
        let points =
            holders.iter().map(|m| self.config.point_of(m)).collect::<Result<Vec<_>, _>>()?;
        let self_mask = shamir::split(&self.secrets.self_mask_seed, threshold, &points, rng);
        let mask_key = shamir::split(self.secrets.mask.as_bytes(), threshold, &points, rng);
        let mut pairs = self_mask
            .into_iter()
            .zip(mask_key)
            .map(|(self_mask, mask_key)| SharePair { self_mask, mask_key });
        let own = pairs.next().ok_or(SecAggError::TooFewNeighbours {
            member: self.me,
            have: 0,
            need: threshold,
        })?;
        let (job, round) = (self.config.job(), self.config.round());
        let encrypted = neighbours
            .iter()
            .zip(pairs)
            .map(|((&peer, neighbour), pair)| {
                let key = share_key(&neighbour.encryption_agreement, job, round, &self.me, &peer);
                pair.seal(&key, job, round, self.me, peer)
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.neighbours = neighbours;
        self.held.insert(self.me, own);
        self.phase = Phase::Shared;
        Ok(encrypted)
    }

    /// The verified keys of this trainer's neighbours, with the agreements derived from them.
    fn verified_neighbours(
        &self,
        keys: &[RoundKeys],
    ) -> Result<BTreeMap<MemberId, Neighbour>, SecAggError> {
        let (job, round) = (self.config.job(), self.config.round());
        let mut neighbours = BTreeMap::new();
        for peer_keys in keys {
            let peer = peer_keys.member;
            self.config.check_member(&peer)?;
            if peer == self.me {
                if peer_keys != &self.keys {
                    return Err(SecAggError::Duplicate { what: "round keys", member: peer });
                }
                continue;
            }
            peer_keys.verify(job, round)?;
            if !self.config.pairing().are_neighbours(&self.me, &peer) {
                continue;
            }
            let shared = agree(&self.secrets.mask, &peer_keys.mask_key, peer)?;
            let neighbour = Neighbour {
                mask_seed: pairwise_seed(&shared, job, round, &self.me, &peer),
                encryption_agreement: agree(
                    &self.secrets.encryption,
                    &peer_keys.encryption_key,
                    peer,
                )?,
            };
            if neighbours.insert(peer, neighbour).is_some() {
                return Err(SecAggError::Duplicate { what: "round keys", member: peer });
            }
        }
        Ok(neighbours)
    }

    /// Decrypts the shares the neighbours dealt to this trainer and returns the quantized update
    /// masked with the self-mask and a pairwise mask for each of those neighbours (`+` towards a
    /// larger member key, `−` towards a smaller). Needs at least `threshold` holders (this
    /// trainer and the neighbours whose shares arrived).
    pub fn masked_input(
        &mut self,
        quantized: &[u64],
        received: &[EncryptedShare],
    ) -> Result<Vec<u64>, SecAggError> {
        self.expect(Phase::Shared, "mask the update")?;
        self.config.check_length(quantized.len())?;
        let received = self.open_shares(received)?;
        let (have, need) = (received.len() + 1, self.config.threshold());
        if have < need {
            return Err(SecAggError::TooFewNeighbours { member: self.me, have, need });
        }
        let mut masked = quantized.to_vec();
        apply_mask(&mut masked, &self.secrets.self_mask_seed, Sign::Plus);
        for (peer, neighbour) in
            self.neighbours.iter().filter(|(peer, _)| received.contains_key(peer))
        {
            apply_mask(&mut masked, &neighbour.mask_seed, pairwise_sign(&self.me, peer));
        }
        self.held.extend(received);
        self.phase = Phase::Masked;
        Ok(masked)
    }

    /// Decrypts shares addressed to this trainer from its neighbours, one per sender.
    fn open_shares(
        &self,
        received: &[EncryptedShare],
    ) -> Result<BTreeMap<MemberId, SharePair>, SecAggError> {
        let (job, round) = (self.config.job(), self.config.round());
        let mut held = BTreeMap::new();
        for encrypted in received {
            let sender = encrypted.sender;
            if encrypted.recipient != self.me {
                return Err(SecAggError::WrongRecipient { sender, recipient: encrypted.recipient });
            }
            self.config.check_member(&sender)?;
            let neighbour = self
                .neighbours
                .get(&sender)
                .ok_or(SecAggError::NotNeighbour { member: sender, of: self.me })?;
            let key = share_key(&neighbour.encryption_agreement, job, round, &sender, &self.me);
            let pair = SharePair::open(encrypted, &key, job, round)?;
            if held.insert(sender, pair).is_some() {
                return Err(SecAggError::Duplicate { what: "shares", member: sender });
            }
        }
        Ok(held)
    }

    /// The shares this trainer reveals when the aggregator reports these survivors (who sent a
    /// masked input, this trainer among them) and dropped members (who dealt shares but sent no
    /// masked input): self-mask shares of survivors, mask-key shares of dropped members. Refuses
    /// a report that would, together with any earlier one, make it reveal both kinds for one
    /// member, and one with fewer than `threshold` survivors.
    pub fn unmasking_shares(
        &mut self,
        survivors: &[MemberId],
        dropped: &[MemberId],
    ) -> Result<UnmaskingShares, SecAggError> {
        self.expect(Phase::Masked, "reveal shares")?;
        let survivors = self.member_set(survivors, "survivor")?;
        let dropped = self.member_set(dropped, "dropped member")?;
        let conflict = survivors
            .iter()
            .find(|m| dropped.contains(m) || self.revealed_mask_key.contains(m))
            .or_else(|| dropped.iter().find(|m| self.revealed_self_mask.contains(m)));
        if let Some(&member) = conflict {
            return Err(SecAggError::ConflictingReveal(member));
        }
        if !survivors.contains(&self.me) {
            return Err(SecAggError::NotASurvivor);
        }
        if survivors.len() < self.config.threshold() {
            return Err(SecAggError::TooFewSurvivors {
                survivors: survivors.len(),
                need: self.config.threshold(),
            });
        }
        let mut answer = UnmaskingShares::default();
        for (&owner, pair) in &self.held {
            if survivors.contains(&owner) {
                answer
                    .self_mask
                    .push(RevealedShare { owner, share: pair.self_mask.to_bytes().to_vec() });
                self.revealed_self_mask.insert(owner);
            } else if dropped.contains(&owner) {
                answer
                    .mask_key
                    .push(RevealedShare { owner, share: pair.mask_key.to_bytes().to_vec() });
                self.revealed_mask_key.insert(owner);
            }
        }
        Ok(answer)
    }

    /// The members as a set, refusing unknown ones and repeats.
    fn member_set(
        &self,
        members: &[MemberId],
        what: &'static str,
    ) -> Result<BTreeSet<MemberId>, SecAggError> {
        let mut set = BTreeSet::new();
        for &member in members {
            self.config.check_member(&member)?;
            if !set.insert(member) {
                return Err(SecAggError::Duplicate { what, member });
            }
        }
        Ok(set)
    }
}
