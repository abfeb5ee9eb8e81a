//! The aggregator's side of one secure-aggregation round: it collects keys, relays encrypted
//! shares, sums masked inputs as they arrive (it never keeps an individual one), and removes the
//! masks from revealed shares to give the exact ring sum of the survivors' updates.

use super::config::RoundConfig;
use super::error::SecAggError;
use super::evidence::Unmasking;
use super::field::Fp;
use super::keys::{RoundKeys, agree, pairwise_seed, self_mask_commitment};
use super::masking::{Sign, apply_mask, pairwise_sign};
use super::shamir::{self, SECRET_LEN, Share};
use super::shares::{CIPHERTEXT_LEN, EncryptedShare, RevealedShare, UnmaskingShares};
use fedmesh_protocol::MemberId;
use std::collections::{BTreeMap, BTreeSet};
use x25519_dalek::{PublicKey, StaticSecret};

/// Where the aggregator is in the round; each phase is closed explicitly by the driver (on
/// receiving everything, or at a deadline).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Keys,
    Shares,
    Inputs,
    Unmasking,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Keys => "keys",
            Phase::Shares => "shares",
            Phase::Inputs => "inputs",
            Phase::Unmasking => "unmasking",
        }
    }
}

/// Who sent a masked input and who dealt shares but did not: what each survivor is asked to
/// reveal shares for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropouts {
    /// Members whose masked input was received, sorted.
    pub survivors: Vec<MemberId>,
    /// Members who dealt shares but sent no masked input, sorted.
    pub dropped: Vec<MemberId>,
}

/// Shares of one member's secret collected so far, by the holder's evaluation point.
type Collected = BTreeMap<MemberId, Vec<(Fp, Share)>>;

/// The aggregator's secure-aggregation state for one round. Drive it in order:
/// [`add_keys`](Self::add_keys) then [`close_keys`](Self::close_keys);
/// [`add_shares`](Self::add_shares) then [`close_shares`](Self::close_shares);
/// [`add_masked_input`](Self::add_masked_input) then [`close_inputs`](Self::close_inputs);
/// [`add_unmasking_shares`](Self::add_unmasking_shares) then [`sum`](Self::sum). Everything
/// added is checked as hostile input; a refused input changes nothing.
pub struct AggregatorRound {
    config: RoundConfig,
    phase: Phase,
    keys: BTreeMap<MemberId, RoundKeys>,
    /// Encrypted shares by sender.
    shares: BTreeMap<MemberId, Vec<EncryptedShare>>,
    /// The running sum of the masked inputs received.
    masked_sum: Vec<u64>,
    survivors: BTreeSet<MemberId>,
    dropped: BTreeSet<MemberId>,
    /// Survivors whose unmasking shares were received.
    answered: BTreeSet<MemberId>,
    self_mask_shares: Collected,
    mask_key_shares: Collected,
}

impl AggregatorRound {
    /// An empty round, collecting keys.
    pub fn new(config: RoundConfig) -> Self {
        let masked_sum = vec![0; config.length()];
        Self {
            config,
            phase: Phase::Keys,
            keys: BTreeMap::new(),
            shares: BTreeMap::new(),
            masked_sum,
            survivors: BTreeSet::new(),
            dropped: BTreeSet::new(),
            answered: BTreeSet::new(),
            self_mask_shares: Collected::new(),
            mask_key_shares: Collected::new(),
        }
    }

    /// The members whose round keys were accepted.
    pub fn keyed(&self) -> Vec<MemberId> {
        self.keys.keys().copied().collect()
    }

    /// The members whose shares were accepted.
    pub fn dealers(&self) -> Vec<MemberId> {
        self.shares.keys().copied().collect()
    }

    /// The round's parameters.
    pub fn config(&self) -> &RoundConfig {
        &self.config
    }

    fn expect(&self, phase: Phase, action: &'static str) -> Result<(), SecAggError> {
        if self.phase == phase {
            Ok(())
        } else {
            Err(SecAggError::WrongPhase { action, phase: self.phase.name() })
        }
    }

    /// Accepts a member's round keys: a planned member's, for this job and round, signed by it,
    /// once.
    pub fn add_keys(&mut self, keys: RoundKeys) -> Result<(), SecAggError> {
        self.expect(Phase::Keys, "add round keys")?;
        self.config.check_member(&keys.member)?;
        if self.keys.contains_key(&keys.member) {
            return Err(SecAggError::Duplicate { what: "round keys", member: keys.member });
        }
        keys.verify(self.config.job(), self.config.round())?;
        self.keys.insert(keys.member, keys);
        Ok(())
    }

    /// Ends key collection: members without keys are out of the round.
    pub fn close_keys(&mut self) -> Result<(), SecAggError> {
        self.expect(Phase::Keys, "close key collection")?;
        self.phase = Phase::Shares;
        Ok(())
    }

    /// The keys of `member`'s neighbours that published keys: what it deals shares to.
    pub fn keys_for(&self, member: &MemberId) -> Result<Vec<RoundKeys>, SecAggError> {
        self.expect(Phase::Shares, "hand out keys")?;
        Ok(self
            .neighbours_with_keys(member)?
            .into_iter()
            .filter_map(|m| self.keys.get(&m).cloned())
            .collect())
    }

    /// `member`'s neighbours that published keys.
    fn neighbours_with_keys(&self, member: &MemberId) -> Result<BTreeSet<MemberId>, SecAggError> {
        let neighbours =
            self.config.pairing().neighbours(member).ok_or(SecAggError::UnknownMember(*member))?;
        Ok(neighbours.into_iter().filter(|m| self.keys.contains_key(m)).collect())
    }

    /// Accepts the shares `from` dealt: exactly one well-formed ciphertext for each of its
    /// neighbours with keys, once.
    pub fn add_shares(
        &mut self,
        from: MemberId,
        shares: Vec<EncryptedShare>,
    ) -> Result<(), SecAggError> {
        self.expect(Phase::Shares, "add shares")?;
        self.config.check_member(&from)?;
        if !self.keys.contains_key(&from) {
            return Err(SecAggError::NotParticipating { member: from, step: "key publication" });
        }
        if self.shares.contains_key(&from) {
            return Err(SecAggError::Duplicate { what: "shares", member: from });
        }
        if shares.iter().any(|s| s.sender != from || s.ciphertext.len() != CIPHERTEXT_LEN) {
            return Err(SecAggError::MalformedShare(from));
        }
        let recipients: BTreeSet<MemberId> = shares.iter().map(|s| s.recipient).collect();
        if recipients.len() != shares.len() || recipients != self.neighbours_with_keys(&from)? {
            return Err(SecAggError::WrongRecipients(from));
        }
        self.shares.insert(from, shares);
        Ok(())
    }

    /// Ends share collection: members who dealt no shares are out of the round.
    pub fn close_shares(&mut self) -> Result<(), SecAggError> {
        self.expect(Phase::Shares, "close share collection")?;
        self.phase = Phase::Inputs;
        Ok(())
    }

    /// The encrypted shares dealt to `member`: deliver exactly these to it.
    pub fn shares_for(&self, member: &MemberId) -> Result<Vec<EncryptedShare>, SecAggError> {
        self.expect(Phase::Inputs, "relay shares")?;
        self.config.check_member(member)?;
        Ok(self.shares.values().flatten().filter(|s| &s.recipient == member).cloned().collect())
    }

    /// Adds `from`'s masked input to the running sum (a member who dealt shares, once, of the
    /// round's length).
    pub fn add_masked_input(&mut self, from: MemberId, masked: &[u64]) -> Result<(), SecAggError> {
        self.expect(Phase::Inputs, "add a masked input")?;
        self.config.check_member(&from)?;
        if !self.shares.contains_key(&from) {
            return Err(SecAggError::NotParticipating { member: from, step: "share dealing" });
        }
        if self.survivors.contains(&from) {
            return Err(SecAggError::Duplicate { what: "masked input", member: from });
        }
        self.config.check_length(masked.len())?;
        self.masked_sum
            .iter_mut()
            .zip(masked)
            .for_each(|(sum, &value)| *sum = sum.wrapping_add(value));
        self.survivors.insert(from);
        Ok(())
    }

    /// Ends input collection and tells who survived and who dropped. Refuses (and stays open)
    /// if too many dropped for some needed secret to be reconstructed: a survivor's self-mask
    /// seed, or the mask key of a dropped member who neighbours a survivor, each needs
    /// `threshold` surviving holders (the member itself, if it survived, and its neighbours).
    pub fn close_inputs(&mut self) -> Result<Dropouts, SecAggError> {
        self.expect(Phase::Inputs, "close input collection")?;
        let threshold = self.config.threshold();
        if self.survivors.len() < threshold {
            return Err(SecAggError::TooFewSurvivors {
                survivors: self.survivors.len(),
                need: threshold,
            });
        }
        let dropped: BTreeSet<MemberId> =
            self.shares.keys().filter(|m| !self.survivors.contains(m)).copied().collect();
        for member in self.survivors.iter().chain(&dropped) {
            let holders = self.surviving_neighbours(member).len()
                + usize::from(self.survivors.contains(member));
            let needed = self.survivors.contains(member) || holders > 0;
            if needed && holders < threshold {
                return Err(SecAggError::TooManyDropouts {
                    member: *member,
                    holders,
                    need: threshold,
                });
            }
        }
        self.dropped = dropped;
        self.phase = Phase::Unmasking;
        Ok(Dropouts {
            survivors: self.survivors.iter().copied().collect(),
            dropped: self.dropped.iter().copied().collect(),
        })
    }

    /// `member`'s neighbours that sent a masked input.
    fn surviving_neighbours(&self, member: &MemberId) -> Vec<MemberId> {
        let neighbours = self.config.pairing().neighbours(member).unwrap_or_default();
        neighbours.into_iter().filter(|m| self.survivors.contains(m)).collect()
    }

    /// Accepts a survivor's revealed shares, once: self-mask shares only of survivors, mask-key
    /// shares only of dropped members, each of the survivor itself or a neighbour, well-formed.
    pub fn add_unmasking_shares(
        &mut self,
        from: MemberId,
        shares: &UnmaskingShares,
    ) -> Result<(), SecAggError> {
        self.expect(Phase::Unmasking, "add unmasking shares")?;
        self.config.check_member(&from)?;
        if !self.survivors.contains(&from) {
            return Err(SecAggError::NotParticipating { member: from, step: "masked inputs" });
        }
        if self.answered.contains(&from) {
            return Err(SecAggError::Duplicate { what: "unmasking shares", member: from });
        }
        let point = self.config.point_of(&from)?;
        let self_mask = self.parse_revealed(
            from,
            &shares.self_mask,
            "self-mask",
            &self.survivors,
            "a survivor",
        )?;
        let mask_key = self.parse_revealed(
            from,
            &shares.mask_key,
            "mask-key",
            &self.dropped,
            "a dropped member",
        )?;
        for (collected, parsed) in
            [(&mut self.self_mask_shares, self_mask), (&mut self.mask_key_shares, mask_key)]
        {
            for (owner, share) in parsed {
                collected.entry(owner).or_default().push((point, share));
            }
        }
        self.answered.insert(from);
        Ok(())
    }

    /// Parses revealed shares of one kind, each of a distinct owner in `owners` that is `holder`
    /// or its neighbour.
    fn parse_revealed(
        &self,
        holder: MemberId,
        revealed: &[RevealedShare],
        kind: &'static str,
        owners: &BTreeSet<MemberId>,
        expected: &'static str,
    ) -> Result<BTreeMap<MemberId, Share>, SecAggError> {
        let mut parsed = BTreeMap::new();
        for RevealedShare { owner, share } in revealed {
            if !owners.contains(owner) {
                return Err(SecAggError::UnexpectedShare { holder, owner: *owner, kind, expected });
            }
            if owner != &holder && !self.config.pairing().are_neighbours(&holder, owner) {
                return Err(SecAggError::NotNeighbour { member: holder, of: *owner });
            }
            let share = Share::from_bytes(share).ok_or(SecAggError::MalformedShare(holder))?;
            if parsed.insert(*owner, share).is_some() {
                return Err(SecAggError::Duplicate { what: "revealed share", member: *owner });
            }
        }
        Ok(parsed)
    }

    /// The exact ring sum of the survivors' quantized updates: the masked sum less each
    /// survivor's self-mask and the pairwise masks survivors share with dropped members, from
    /// secrets reconstructed (and checked against the published keys) from the revealed shares.
    pub fn sum(&self) -> Result<Vec<u64>, SecAggError> {
        self.expect(Phase::Unmasking, "unmask the sum")?;
        let mut sum = self.masked_sum.clone();
        for survivor in &self.survivors {
            let seed = self.reconstruct(&self.self_mask_shares, survivor)?;
            let keys = self.published(survivor)?;
            if self_mask_commitment(&seed, self.config.job(), self.config.round(), survivor)
                != keys.self_mask_commitment
            {
                return Err(SecAggError::ReconstructionMismatch(*survivor));
            }
            apply_mask(&mut sum, &seed, Sign::Minus);
        }
        for dropped in &self.dropped {
            self.remove_pairwise_masks(&mut sum, dropped)?;
        }
        Ok(sum)
    }

    /// The secrets the round revealed about `survivor`'s masks, for auditors (see
    /// [`Unmasking::strip`]): its keys, its self-mask seed, and the keys and mask secrets of its
    /// neighbours that dropped.
    pub fn unmasking_of(&self, survivor: &MemberId) -> Result<Unmasking, SecAggError> {
        self.expect(Phase::Unmasking, "reveal a survivor's unmasking")?;
        if !self.survivors.contains(survivor) {
            return Err(SecAggError::NotASurvivor);
        }
        let mut dropped = Vec::new();
        for member in
            self.dropped.iter().filter(|d| self.config.pairing().are_neighbours(d, survivor))
        {
            let secret = self.reconstruct(&self.mask_key_shares, member)?;
            dropped.push((self.published(member)?.clone(), secret));
        }
        Ok(Unmasking {
            keys: self.published(survivor)?.clone(),
            self_mask_seed: self.reconstruct(&self.self_mask_shares, survivor)?,
            dropped,
        })
    }

    /// Removes from `sum` the masks survivors share with `dropped`, from its reconstructed key.
    fn remove_pairwise_masks(
        &self,
        sum: &mut [u64],
        dropped: &MemberId,
    ) -> Result<(), SecAggError> {
        let peers = self.surviving_neighbours(dropped);
        if peers.is_empty() {
            return Ok(());
        }
        let secret = StaticSecret::from(self.reconstruct(&self.mask_key_shares, dropped)?);
        if PublicKey::from(&secret).to_bytes() != self.published(dropped)?.mask_key {
            return Err(SecAggError::ReconstructionMismatch(*dropped));
        }
        let (job, round) = (self.config.job(), self.config.round());
        for peer in &peers {
            let shared = agree(&secret, &self.published(peer)?.mask_key, *peer)?;
            let seed = pairwise_seed(&shared, job, round, dropped, peer);
            apply_mask(sum, &seed, pairwise_sign(peer, dropped).flipped());
        }
        Ok(())
    }

    /// A member's published keys.
    fn published(&self, member: &MemberId) -> Result<&RoundKeys, SecAggError> {
        self.keys
            .get(member)
            .ok_or(SecAggError::NotParticipating { member: *member, step: "key publication" })
    }

    /// Reconstructs `owner`'s secret from the collected shares.
    fn reconstruct(
        &self,
        collected: &Collected,
        owner: &MemberId,
    ) -> Result<[u8; SECRET_LEN], SecAggError> {
        let shares = collected.get(owner).map(Vec::as_slice).unwrap_or_default();
        shamir::reconstruct(self.config.threshold(), shares)
            .map_err(|source| SecAggError::Reconstruction { member: *owner, source })
    }
}
