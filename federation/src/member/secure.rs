//! Secure aggregation in a round: a trainer's keys, shares and masked update, and the collecting,
//! relaying and unmasking of the slot aggregator it sends to (its leader), so that the leader
//! learns only the sum of its slot's trainers. Under the central topology that is the round's
//! aggregator; under the hierarchical one, each group's.

use super::phase::{OpenRound, Own};
use super::{Effect, Level, LocalUpdate, Member, Reason, Refusal};
use fedmesh_aggregation::privacy::clip;
use fedmesh_aggregation::secure::{
    AggregatorRound, Dropouts, EncryptedShare, MaskedStatement, Pairing, Quantizer, RevealedShare,
    RoundConfig, RoundKeys, SecAggError, TrainerRound, Unmasking, UnmaskingShares, add_to_sum,
};
use fedmesh_protocol::codec::encode_evidence;
use fedmesh_protocol::ids::JobId;
use fedmesh_protocol::ids::{ContentHash, MemberId, Round};
use fedmesh_protocol::message::{
    Contribution, DroppedMaskKey, RevealedPart, SealedShare, SecureAggregation, SecureBody,
    SecureEvidence, SecureKeys,
};
use fedmesh_topologies::{Destination, Input};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Members up to which every trainer neighbours every other (plain SecAgg).
const COMPLETE_GRAPH_MEMBERS: usize = 16;
/// Most trainers' round keys kept for openings this member has not followed yet, and most of
/// them from one member (its keys for the next round, and for the one after).
const MAX_EARLY_KEYS: usize = 1024;
const MAX_EARLY_KEYS_PER_MEMBER: usize = 2;

/// A secure round's part of a member's machine: its trainer side and, for each slot it
/// aggregates trainers in, its leader side, for one opening of the round.
#[derive(Default)]
pub(super) struct SecureState {
    trainer: Option<SecureTrainer>,
    leaders: Vec<SecureLeader>,
}

/// Which opening of which round a secure message belongs to.
type OpeningKey = (Round, u64);

/// A trainer's side of a secure round.
struct SecureTrainer {
    opening: OpeningKey,
    leader: MemberId,
    inner: TrainerRound,
    rng: ChaCha20Rng,
    /// The quantizer's weight bound, from the leader's key relay.
    max_weight: Option<u64>,
    /// The shares the neighbours dealt it, relayed by the leader.
    shares: Option<Vec<EncryptedShare>>,
    /// Its clipped (and, under distributed noise, noised) update and its weight, once trained.
    update: Option<(u64, Vec<f32>)>,
    masked_sent: bool,
}

/// Where the leader is in its secure round.
enum Step {
    Keys,
    Shares,
    Inputs,
    Unmasking,
    /// The round failed (too many dropped); the leader's deadline opens it again.
    Failed,
    /// The sum was unmasked; late shares are no longer needed.
    Done,
}

/// A slot aggregator's side of a secure round. It keeps `AggregatorRound`'s running masked sum
/// and the weights the survivors declared, never one trainer's update.
struct SecureLeader {
    opening: OpeningKey,
    /// The slot whose trainers it sums (its index in the plan).
    slot: usize,
    /// The survivors the step to inputs needs at its deadline.
    required: usize,
    inner: AggregatorRound,
    step: Step,
    trainers: Vec<MemberId>,
    max_weight: u64,
    /// The weight each trainer's masked update declared.
    weights: BTreeMap<MemberId, u64>,
    /// Hashes of the masked updates, listed as the round's contributions.
    hashes: BTreeMap<MemberId, ContentHash>,
    /// In a verifiable job, each masked update (little-endian) and its trainer's signature,
    /// kept for the evidence auditors check.
    signed: BTreeMap<MemberId, (Vec<u8>, [u8; 64])>,
    /// Members who sent shares.
    dealt: usize,
    keys_until_ms: u64,
    shares_until_ms: u64,
    deadline_ms: u64,
}

/// The trainers who send their updates straight to `slot`, in order: those its secure round sums.
fn slot_trainers(open: &OpenRound, slot: usize) -> Vec<MemberId> {
    let mut trainers: Vec<MemberId> = open.plan.slots[slot]
        .inputs
        .iter()
        .filter_map(|input| match input {
            Input::Trainer(member) => Some(*member),
            Input::Slot(_) | Input::Ring(_) => None,
        })
        .collect();
    trainers.sort();
    trainers
}

/// A slot's secure round's public parameters, as every member derives them from the opening:
/// the slot's trainers, a pairing seeded by the opening and the slot, a degree of
/// `2⌈log₂ n⌉ + 1` (all for small rounds) and the smallest threshold `RoundConfig::new` allows.
fn round_config(open: &OpenRound, slot: usize, length: usize) -> Result<RoundConfig, SecAggError> {
    let trainers = slot_trainers(open, slot);
    let n = trainers.len();
    let degree = if n <= COMPLETE_GRAPH_MEMBERS {
        n.saturating_sub(1)
    } else {
        let log = usize::BITS - (n - 1).leading_zeros();
        (2 * log as usize + 1).min(n - 1)
    };
    let seed = opening_seed(b"secure aggregation pairing", &(slot as u64).to_le_bytes(), open);
    let pairing = Pairing::new(&seed, &trainers, degree)?;
    let (_, max_degree) = pairing.degree_range();
    let threshold = max_degree.div_ceil(2) + 1;
    RoundConfig::new(open.opening.job, open.round, pairing, threshold, length)
}

/// A seed bound to the job, the round, its opening and its base.
fn opening_seed(domain: &[u8], secret: &[u8], open: &OpenRound) -> [u8; 32] {
    let mut material = domain.to_vec();
    material.extend_from_slice(secret);
    material.extend_from_slice(&open.opening.job.0.0);
    material.extend_from_slice(&open.round.to_le_bytes());
    material.extend_from_slice(&open.opened_at_ms.to_le_bytes());
    material.extend_from_slice(&open.base.0);
    ContentHash::of(&material).0
}

/// The quantizer every member of the round derives alike.
fn quantizer(clip_norm: f32, max_weight: u64, trainers: usize) -> Result<Quantizer, SecAggError> {
    Quantizer::new(clip_norm, max_weight as f32, trainers)
}

/// The mean of a secure round's survivors' updates from the ring sum of their quantized,
/// weighted updates: what the leader folds in and an auditor recomputes, bit for bit.
pub fn secure_mean(
    clip_norm: f32,
    max_weight: u64,
    summands: usize,
    sum: &[u64],
    contributions: &[Contribution],
) -> Result<Vec<f32>, SecAggError> {
    let quantizer = quantizer(clip_norm, max_weight, summands)?;
    let total: u64 = contributions.iter().map(|c| c.samples).sum();
    let mut mean = quantizer.dequantize(sum);
    mean.iter_mut().for_each(|v| *v /= total.max(1) as f32);
    Ok(mean)
}

/// A verifiable secure round's model, recomputed from `base` and each contribution's evidence
/// as an auditor does: every masked update must be signed by its trainer with the round's
/// quantizer, every revealed secret must match the keys its owner signed, and the survivors'
/// inputs, stripped of their masks, sum to the round's exact sum.
pub fn recompute_secure(
    (job, round): (JobId, Round),
    clip_norm: f32,
    base: &[f32],
    evidence: &[(Contribution, SecureEvidence)],
) -> Result<Vec<f32>, String> {
    let Some((_, first)) = evidence.first() else {
        return Err("a secure round's result lists no contribution".into());
    };
    let (opened_at_ms, max_weight, summands) =
        (first.opened_at_ms, first.max_weight, first.summands);
    let mut sum = vec![0u64; base.len()];
    for (contribution, record) in evidence {
        let member = contribution.member;
        let keys = from_wire_keys(job, round, record.keys.clone()).map_err(|r| r.detail)?;
        if keys.member != member || record.samples != contribution.samples {
            return Err(format!("the evidence of {member} is another member's or weight's"));
        }
        if (record.opened_at_ms, record.max_weight, record.summands)
            != (opened_at_ms, max_weight, summands)
        {
            return Err(format!("the evidence of {member} is of another opening or quantizer"));
        }
        let masked: Vec<u64> = record
            .masked
            .chunks_exact(8)
            .map(|word| u64::from_le_bytes(word.try_into().unwrap_or([0; 8])))
            .collect();
        let signature: [u8; 64] = record
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| format!("{member}'s masked update signature is not 64 bytes"))?;
        let statement = MaskedStatement {
            job,
            round,
            opened_at_ms,
            member,
            samples: record.samples,
            max_weight,
            summands,
            masked: &masked,
        };
        statement.verify(&signature).map_err(|e| e.to_string())?;
        let mut dropped = Vec::with_capacity(record.dropped.len());
        for entry in &record.dropped {
            let keys = from_wire_keys(job, round, entry.keys.clone()).map_err(|r| r.detail)?;
            dropped.push((keys, entry.mask_secret));
        }
        let unmasking = Unmasking { keys, self_mask_seed: record.self_mask_seed, dropped };
        let input = unmasking.strip(&job, round, &masked).map_err(|e| e.to_string())?;
        add_to_sum(&mut sum, &input).map_err(|e| e.to_string())?;
    }
    let contributions: Vec<Contribution> = evidence.iter().map(|(c, _)| *c).collect();
    let mean = secure_mean(clip_norm, max_weight, summands as usize, &sum, &contributions)
        .map_err(|e| e.to_string())?;
    crate::collect::secure_part(&mean, &contributions)
        .and_then(|part| part.mean_added_to(base).map_err(|e| e.to_string()))
}

fn refused(error: SecAggError) -> Refusal {
    Refusal::new(Reason::RejectedUpdate, error.to_string())
}

impl Member {
    /// Whether the job's rounds aggregate securely.
    pub(super) fn secure(&self) -> bool {
        self.setup.spec.privacy.secure_aggregation
    }

    /// The job's clip, which secure aggregation requires (validation refuses a job without).
    fn secure_clip(&self) -> f32 {
        self.setup.spec.strategy.clip_norm.unwrap_or(1.0)
    }

    /// Starts the secure rounds of the opening just entered: a leader's collection for each slot
    /// this member aggregates trainers in, and this member's keys when it trains.
    pub(super) fn enter_secure(&mut self, now: u64) {
        self.secure_state = SecureState::default();
        let Some(open) = self.phase.open() else { return };
        let me = self.me();
        let led: Vec<(usize, u64, Option<MemberId>)> =
            open.slots.iter().map(|s| (s.slot, s.deadline_ms, s.parent)).collect();
        for (slot, deadline_ms, parent) in led {
            self.start_secure_leader(slot, deadline_ms, parent.is_none());
        }
        self.take_early_keys(now);
        let Some(open) = self.phase.open() else { return };
        if let Some(Destination::Slot(slot)) = open.plan.destination(&me) {
            self.start_secure_trainer(slot, now);
        }
    }

    /// Leads the secure round of `slot`, which this member aggregates, if trainers send to it.
    fn start_secure_leader(&mut self, slot: usize, deadline_ms: u64, top: bool) {
        let Some(open) = self.phase.open() else { return };
        let trainers = slot_trainers(open, slot);
        if trainers.is_empty() {
            return; // it takes only partial aggregates
        }
        let config = match round_config(open, slot, self.params.len()) {
            Ok(config) => config,
            Err(error) => {
                let round = open.round;
                let text = format!("no secure round for slot {slot}: {error}");
                return self.log(Level::Warn, round, text);
            }
        };
        let span = deadline_ms.saturating_sub(open.opened_at_ms);
        let required = match (top, open.leading.as_ref()) {
            (true, Some(leading)) => leading.required,
            _ => 1, // a group sends what it has at its deadline
        };
        let max_weight = trainers.iter().map(|t| self.weight_bound(t)).max().unwrap_or(1);
        let leader = SecureLeader {
            opening: (open.round, open.opened_at_ms),
            slot,
            required,
            inner: AggregatorRound::new(config),
            step: Step::Keys,
            trainers,
            max_weight: max_weight.max(1),
            weights: BTreeMap::new(),
            hashes: BTreeMap::new(),
            signed: BTreeMap::new(),
            dealt: 0,
            keys_until_ms: open.opened_at_ms + span / 5,
            shares_until_ms: open.opened_at_ms + 2 * span / 5,
            deadline_ms,
        };
        self.wake_at(leader.keys_until_ms);
        self.wake_at(leader.shares_until_ms);
        self.secure_state.leaders.push(leader);
    }

    /// This trainer's fresh round keys, sent to the aggregator of `slot`, where its update goes.
    fn start_secure_trainer(&mut self, slot: usize, now: u64) {
        let Some(open) = self.phase.open() else { return };
        let (round, leader) = (open.round, open.plan.slots[slot].aggregator());
        let Some(identity) = self.setup.identity.clone() else {
            return self.log(Level::Warn, round, "no signing key for secure aggregation");
        };
        let config = match round_config(open, slot, self.params.len()) {
            Ok(config) => config,
            Err(error) => {
                let text = format!("no secure round (this update is left out): {error}");
                return self.log(Level::Warn, round, text);
            }
        };
        let mut rng = ChaCha20Rng::from_seed(opening_seed(
            b"secure aggregation secrets",
            &self.setup.noise_key,
            open,
        ));
        let opening = (open.round, open.opened_at_ms);
        let inner = match TrainerRound::new(config, &identity, &mut rng) {
            Ok(inner) => inner,
            Err(error) => return self.log(Level::Warn, round, format!("no secure round: {error}")),
        };
        let keys = to_wire_keys(inner.keys());
        self.secure_state.trainer = Some(SecureTrainer {
            opening,
            leader,
            inner,
            rng,
            max_weight: None,
            shares: None,
            update: None,
            masked_sent: false,
        });
        self.secure_send(leader, opening, SecureBody::Keys(keys), now);
    }

    /// Sends a secure message of this opening: to itself directly, else as an effect.
    fn secure_send(&mut self, to: MemberId, opening: OpeningKey, body: SecureBody, now: u64) {
        let message = SecureAggregation {
            job: self.setup.job,
            round: opening.0,
            opened_at_ms: opening.1,
            sender: self.me(),
            body,
        };
        if to == self.me() {
            if let Err(refusal) = self.on_secure(self.me(), message, now) {
                self.log(Level::Warn, opening.0, refusal.detail);
            }
            return;
        }
        let until_ms = self.phase.open().map_or(now, |o| o.deadline_ms);
        self.effects.push(Effect::SendSecure { to, message, until_ms });
    }

    /// A verified secure message: for this member's trainer side or its leader side, of the
    /// opening it follows.
    pub(super) fn on_secure(
        &mut self,
        signer: MemberId,
        message: SecureAggregation,
        now: u64,
    ) -> Result<(), Refusal> {
        if signer != message.sender || message.job != self.setup.job {
            let detail = format!("a secure message signed by {signer} for another sender or job");
            return Err(Refusal::new(Reason::RejectedUpdate, detail));
        }
        if self.keeps_early_keys(&signer, &message) {
            self.keep_early_keys(signer, message);
            return Ok(());
        }
        let opening = (message.round, message.opened_at_ms);
        match message.body {
            SecureBody::Keys(keys) => self.leader_keys(signer, opening, keys, now),
            SecureBody::Shares(shares) => self.leader_shares(signer, opening, shares, now),
            SecureBody::Masked { samples, values, signature } => {
                self.leader_masked(signer, opening, samples, values, &signature, now)
            }
            SecureBody::Unmasking { self_mask, mask_key } => {
                let shares = UnmaskingShares {
                    self_mask: self_mask.into_iter().map(from_wire_part).collect(),
                    mask_key: mask_key.into_iter().map(from_wire_part).collect(),
                };
                self.leader_unmasking(signer, opening, shares, now)
            }
            SecureBody::RelayKeys { max_weight, keys } => {
                self.trainer_keys(signer, opening, max_weight, keys, now)
            }
            SecureBody::RelayShares(shares) => self.trainer_shares(signer, opening, shares, now),
            SecureBody::Unmask { survivors, dropped } => {
                self.trainer_unmask(signer, opening, &survivors, &dropped, now)
            }
        }
    }

    /// Whether a secure message is a member's round keys, the first message a trainer sends its
    /// leader, for a round whose opening this member has not followed yet: trainers may hear
    /// an opening before their leader does (see `keeps_early`).
    fn keeps_early_keys(&self, signer: &MemberId, message: &SecureAggregation) -> bool {
        let completed = self.state.completed_round;
        let ahead = (completed + 1..=completed + 2).contains(&message.round);
        let unseen = self.phase.open().is_none_or(|o| o.round < message.round);
        let keys = matches!(message.body, SecureBody::Keys(_));
        let member = self.state.members.contains(signer);
        keys && ahead && unseen && self.secure() && self.is_active() && member
    }

    /// Keeps round keys until their opening is followed: the oldest of the same member's go
    /// while it would have more than [`MAX_EARLY_KEYS_PER_MEMBER`] kept, the oldest of all
    /// while all would be more than [`MAX_EARLY_KEYS`].
    fn keep_early_keys(&mut self, signer: MemberId, message: SecureAggregation) {
        let kept = &mut self.early_keys;
        while kept.iter().filter(|(from, _)| *from == signer).count() >= MAX_EARLY_KEYS_PER_MEMBER {
            let Some(oldest) = kept.iter().position(|(from, _)| *from == signer) else { break };
            kept.remove(oldest);
        }
        while kept.len() >= MAX_EARLY_KEYS {
            kept.pop_front();
        }
        kept.push_back((signer, message));
    }

    /// Takes in the round keys kept for the round just entered; those for a later one stay.
    fn take_early_keys(&mut self, now: u64) {
        let Some(round) = self.phase.open().map(|o| o.round) else { return };
        for (signer, message) in std::mem::take(&mut self.early_keys) {
            if message.round > round {
                self.early_keys.push_back((signer, message));
            } else if message.round == round
                && let Err(refusal) = self.on_secure(signer, message, now)
            {
                self.log(Level::Warn, round, refusal.detail);
            }
        }
    }

    /// The trainer side of `opening`, from its leader.
    fn trainer_for(
        &mut self,
        signer: MemberId,
        opening: OpeningKey,
    ) -> Result<&mut SecureTrainer, Refusal> {
        match self.secure_state.trainer.as_mut() {
            Some(t) if t.opening == opening && t.leader == signer => Ok(t),
            Some(t) if t.opening == opening => Err(Refusal::new(
                Reason::NotAggregating,
                format!("{signer} does not lead this secure round"),
            )),
            _ => Err(Refusal::new(Reason::StaleOpening, "not this member's secure round")),
        }
    }

    /// The leader side of `opening` that sums `signer`'s slot.
    fn leader_for(
        &mut self,
        signer: MemberId,
        opening: OpeningKey,
    ) -> Result<&mut SecureLeader, Refusal> {
        let leaders = &mut self.secure_state.leaders;
        if !leaders.iter().any(|l| l.opening == opening) {
            return Err(Refusal::new(Reason::NotAggregating, "this member leads no such round"));
        }
        leaders
            .iter_mut()
            .find(|l| l.opening == opening && l.trainers.binary_search(&signer).is_ok())
            .ok_or_else(|| {
                let detail = format!("{signer} does not send to a slot this member leads");
                Refusal::new(Reason::NotSelected, detail)
            })
    }

    /// Trainer: its neighbours' keys arrived; it deals them shares.
    fn trainer_keys(
        &mut self,
        signer: MemberId,
        opening: OpeningKey,
        max_weight: u64,
        keys: Vec<SecureKeys>,
        now: u64,
    ) -> Result<(), Refusal> {
        let job = self.setup.job;
        let trainer = self.trainer_for(signer, opening)?;
        let keys: Vec<RoundKeys> = keys
            .into_iter()
            .map(|k| from_wire_keys(job, opening.0, k))
            .collect::<Result<_, _>>()?;
        let shares = trainer.inner.shares_for(&keys, &mut trainer.rng).map_err(refused)?;
        trainer.max_weight = Some(max_weight.max(1));
        let leader = trainer.leader;
        let wire = shares.into_iter().map(to_wire_share).collect();
        self.secure_send(leader, opening, SecureBody::Shares(wire), now);
        Ok(())
    }

    /// Trainer: the shares dealt to it arrived; it masks its update once trained.
    fn trainer_shares(
        &mut self,
        signer: MemberId,
        opening: OpeningKey,
        shares: Vec<SealedShare>,
        now: u64,
    ) -> Result<(), Refusal> {
        let trainer = self.trainer_for(signer, opening)?;
        if trainer.shares.is_some() {
            return Err(Refusal::new(Reason::Duplicate, "the shares were relayed already"));
        }
        trainer.shares = Some(shares.into_iter().map(from_wire_share).collect());
        self.send_masked(now);
        Ok(())
    }

    /// Trainer: local training finished in a secure round; the update is clipped (noised under
    /// distributed DP), weighted and kept until it can be masked.
    pub(super) fn secure_trained(&mut self, trained: LocalUpdate, now: u64) {
        let Some(open) = self.phase.open() else { return };
        let samples = trained.samples.min(self.weight_bound(&self.me())).max(1);
        let values = match self.with_noise_share(open, samples, &trained.delta) {
            Some(noised) => noised,
            None => {
                let mut clipped = trained.delta.to_vec();
                clip(&mut clipped, self.secure_clip());
                clipped
            }
        };
        let round = open.round;
        let Some(trainer) = self.secure_state.trainer.as_mut() else {
            return self.log(Level::Warn, round, "trained, but in no secure round");
        };
        trainer.update = Some((samples, values));
        self.set_own(Own::Sent);
        self.send_masked(now);
    }

    /// Trainer: once trained and holding its neighbours' shares, sends its masked update.
    fn send_masked(&mut self, now: u64) {
        let (clip_norm, job, me) = (self.secure_clip(), self.setup.job, self.me());
        let Some(identity) = self.setup.identity.clone() else { return };
        let Some(trainer) = self.secure_state.trainer.as_mut() else { return };
        let (Some(max_weight), Some(shares), Some((samples, values))) =
            (trainer.max_weight, trainer.shares.as_ref(), trainer.update.as_ref())
        else {
            return;
        };
        if trainer.masked_sent {
            return;
        }
        let round = trainer.opening.0;
        let samples = (*samples).min(max_weight);
        let trainers = trainer.inner_members();
        let masked = quantizer(clip_norm, max_weight, trainers)
            .and_then(|q| {
                let weighted: Vec<f32> = values.iter().map(|v| v * samples as f32).collect();
                q.quantize(&weighted)
            })
            .and_then(|quantized| trainer.inner.masked_input(&quantized, shares));
        let values = match masked {
            Ok(values) => values,
            Err(error) => {
                return self.log(Level::Warn, round, format!("cannot mask the update: {error}"));
            }
        };
        trainer.masked_sent = true;
        let (leader, opening) = (trainer.leader, trainer.opening);
        let statement = MaskedStatement {
            job,
            round,
            opened_at_ms: opening.1,
            member: me,
            samples,
            max_weight,
            summands: trainers as u32,
            masked: &values,
        };
        let signature = statement.sign(&identity).to_vec();
        let body = SecureBody::Masked { samples, values, signature };
        self.secure_send(leader, opening, body, now);
    }

    /// Trainer: the leader asks it to unmask; it reveals the shares the report allows.
    fn trainer_unmask(
        &mut self,
        signer: MemberId,
        opening: OpeningKey,
        survivors: &[MemberId],
        dropped: &[MemberId],
        now: u64,
    ) -> Result<(), Refusal> {
        let trainer = self.trainer_for(signer, opening)?;
        let shares = trainer.inner.unmasking_shares(survivors, dropped).map_err(refused)?;
        let leader = trainer.leader;
        let body = SecureBody::Unmasking {
            self_mask: shares.self_mask.into_iter().map(to_wire_part).collect(),
            mask_key: shares.mask_key.into_iter().map(to_wire_part).collect(),
        };
        self.secure_send(leader, opening, body, now);
        Ok(())
    }

    /// Leader: a trainer's round keys.
    fn leader_keys(
        &mut self,
        signer: MemberId,
        opening: OpeningKey,
        keys: SecureKeys,
        now: u64,
    ) -> Result<(), Refusal> {
        let job = self.setup.job;
        let leader = self.leader_for(signer, opening)?;
        let keys = from_wire_keys(job, opening.0, keys)?;
        if keys.member != signer {
            return Err(Refusal::new(Reason::RejectedUpdate, "round keys of another member"));
        }
        leader.inner.add_keys(keys).map_err(refused)?;
        self.advance_secure(now);
        Ok(())
    }

    /// Leader: a trainer's encrypted shares for its neighbours.
    fn leader_shares(
        &mut self,
        signer: MemberId,
        opening: OpeningKey,
        shares: Vec<SealedShare>,
        now: u64,
    ) -> Result<(), Refusal> {
        let leader = self.leader_for(signer, opening)?;
        let shares: Vec<EncryptedShare> = shares.into_iter().map(from_wire_share).collect();
        leader.inner.add_shares(signer, shares).map_err(refused)?;
        leader.dealt += 1;
        self.advance_secure(now);
        Ok(())
    }

    /// Leader: a trainer's masked update, signed with the quantizer it used, added to the
    /// running sum (and, in a verifiable job, kept as the evidence auditors check).
    fn leader_masked(
        &mut self,
        signer: MemberId,
        opening: OpeningKey,
        samples: u64,
        values: Vec<u64>,
        signature: &[u8],
        now: u64,
    ) -> Result<(), Refusal> {
        let (bound, job, verifiable) =
            (self.weight_bound(&signer), self.setup.job, self.verifiable());
        let leader = self.leader_for(signer, opening)?;
        if samples > bound.min(leader.max_weight) {
            let detail = format!("{signer}'s masked update weighs {samples}, more than its bound");
            return Err(Refusal::new(Reason::InflatedSamples, detail));
        }
        let signature: [u8; 64] = signature.try_into().map_err(|_| {
            Refusal::new(Reason::RejectedUpdate, "a masked update's signature is not 64 bytes")
        })?;
        let statement = MaskedStatement {
            job,
            round: opening.0,
            opened_at_ms: opening.1,
            member: signer,
            samples,
            max_weight: leader.max_weight,
            summands: leader.trainers.len() as u32,
            masked: &values,
        };
        statement.verify(&signature).map_err(refused)?;
        leader.inner.add_masked_input(signer, &values).map_err(refused)?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        leader.hashes.insert(signer, ContentHash::of(&bytes));
        leader.weights.insert(signer, samples);
        if verifiable {
            leader.signed.insert(signer, (bytes, signature));
        }
        self.advance_secure(now);
        Ok(())
    }

    /// Leader: a survivor's revealed shares; the round closes once the sum unmasks.
    fn leader_unmasking(
        &mut self,
        signer: MemberId,
        opening: OpeningKey,
        shares: UnmaskingShares,
        now: u64,
    ) -> Result<(), Refusal> {
        let leader = self.leader_for(signer, opening)?;
        if matches!(leader.step, Step::Done) {
            return Ok(()); // the sum unmasked without them
        }
        leader.inner.add_unmasking_shares(signer, &shares).map_err(refused)?;
        self.advance_secure(now);
        Ok(())
    }

    /// Leaders: close each step that has every input, or whose time is up.
    pub(super) fn advance_secure(&mut self, now: u64) {
        for index in 0..self.secure_state.leaders.len() {
            self.advance_secure_leader(index, now);
        }
    }

    fn advance_secure_leader(&mut self, index: usize, now: u64) {
        let Some(leader) = self.secure_state.leaders.get_mut(index) else { return };
        let round = leader.opening.0;
        let outcome = match leader.step {
            Step::Keys => leader.close_keys_if_due(now),
            Step::Shares => leader.close_shares_if_due(now),
            Step::Inputs => leader.close_inputs_if_due(now),
            Step::Unmasking => return self.finish_secure(index, now),
            Step::Failed | Step::Done => return,
        };
        match outcome {
            Ok(sends) if sends.is_empty() => {}
            Ok(sends) => {
                let opening = leader.opening;
                for (to, body) in sends {
                    self.secure_send(to, opening, body, now);
                }
                self.advance_secure_leader(index, now);
            }
            Err(error) => {
                let slot = leader.slot;
                leader.step = Step::Failed;
                let text = format!(
                    "secure round of slot {slot} failed: {error}; its updates are lost this \
                     opening"
                );
                self.log(Level::Warn, round, text);
            }
        }
    }

    /// Leader: once the sum unmasks, the survivors' mean goes into the slot, which finishes as
    /// any other (the top closes the round; a group sends its partial aggregate up).
    fn finish_secure(&mut self, index: usize, now: u64) {
        let clip_norm = self.secure_clip();
        let Some(leader) = self.secure_state.leaders.get_mut(index) else { return };
        let Ok(sum) = leader.inner.sum() else { return }; // more shares to come
        let (round, slot) = (leader.opening.0, leader.slot);
        leader.step = Step::Done;
        let evidence = match leader.evidence() {
            Ok(evidence) => evidence,
            Err(error) => return self.log(Level::Warn, round, format!("no evidence: {error}")),
        };
        for (member, bytes) in &evidence {
            leader.hashes.insert(*member, ContentHash::of(bytes));
        }
        let contributions: Vec<Contribution> = leader
            .weights
            .iter()
            .map(|(member, samples)| Contribution {
                member: *member,
                delta: leader.hashes.get(member).copied().unwrap_or(ContentHash([0; 32])),
                samples: *samples,
            })
            .collect();
        let summands = leader.trainers.len();
        let mean = match secure_mean(clip_norm, leader.max_weight, summands, &sum, &contributions) {
            Ok(mean) => mean,
            Err(error) => return self.log(Level::Warn, round, format!("cannot unmask: {error}")),
        };
        if !evidence.is_empty() {
            let hashes = contributions.iter().map(|c| c.delta).collect();
            let records = evidence.into_iter().map(|(_, bytes)| Arc::new(bytes)).collect();
            self.keep_evidence(round, hashes, records, now);
        }
        let Some(open) = self.phase.open_mut() else { return };
        let Some(collecting) = open.slots.iter_mut().find(|s| s.slot == slot) else {
            return self.log(Level::Warn, round, format!("slot {slot} finished before its sum"));
        };
        if let Err(refusal) = collecting.accept_secure_mean(&mean, contributions) {
            return self.log(Level::Warn, round, refusal.detail);
        }
        self.finish_complete_slots(now);
    }

    /// Whether the secure round of `slot` is still under way (the slot's deadline waits for it).
    pub(super) fn secure_under_way(&self, slot: usize, now: u64) -> bool {
        self.secure_state.leaders.iter().any(|l| {
            l.slot == slot
                && !matches!(l.step, Step::Failed | Step::Done)
                && now
                    < l.deadline_ms
                        .saturating_add(l.deadline_ms.saturating_sub(l.shares_until_ms) / 2)
        })
    }
}

impl SecureTrainer {
    /// How many trainers the round has (the quantizer's bound on the summands).
    fn inner_members(&self) -> usize {
        self.inner.config().pairing().members().len()
    }
}

/// Messages the leader sends when it closes a step.
type Sends = Vec<(MemberId, SecureBody)>;

impl SecureLeader {
    /// In a verifiable job, each survivor's evidence, encoded (none otherwise).
    fn evidence(&self) -> Result<Vec<(MemberId, Vec<u8>)>, String> {
        let mut records = Vec::with_capacity(self.signed.len());
        for (member, (masked, signature)) in &self.signed {
            let unmasking = self.inner.unmasking_of(member).map_err(|e| e.to_string())?;
            let evidence = SecureEvidence {
                opened_at_ms: self.opening.1,
                samples: self.weights.get(member).copied().unwrap_or(0),
                max_weight: self.max_weight,
                summands: self.trainers.len() as u32,
                masked: masked.clone(),
                signature: signature.to_vec(),
                keys: to_wire_keys(&unmasking.keys),
                self_mask_seed: unmasking.self_mask_seed,
                dropped: unmasking
                    .dropped
                    .iter()
                    .map(|(keys, mask_secret)| DroppedMaskKey {
                        keys: to_wire_keys(keys),
                        mask_secret: *mask_secret,
                    })
                    .collect(),
            };
            records.push((*member, encode_evidence(&evidence).map_err(|e| e.to_string())?));
        }
        Ok(records)
    }

    fn close_keys_if_due(&mut self, now: u64) -> Result<Sends, SecAggError> {
        if self.inner.keyed().len() < self.trainers.len() && now < self.keys_until_ms {
            return Ok(Vec::new());
        }
        self.inner.close_keys()?;
        self.step = Step::Shares;
        let mut sends = Vec::new();
        for trainer in self.inner.keyed() {
            let keys = self.inner.keys_for(&trainer)?;
            let keys = keys.iter().map(to_wire_keys).collect();
            sends.push((trainer, SecureBody::RelayKeys { max_weight: self.max_weight, keys }));
        }
        Ok(sends)
    }

    fn close_shares_if_due(&mut self, now: u64) -> Result<Sends, SecAggError> {
        if self.dealt < self.inner.keyed().len() && now < self.shares_until_ms {
            return Ok(Vec::new());
        }
        self.inner.close_shares()?;
        self.step = Step::Inputs;
        let mut sends = Vec::new();
        for trainer in self.inner.dealers() {
            let shares = self.inner.shares_for(&trainer)?;
            sends.push((
                trainer,
                SecureBody::RelayShares(shares.into_iter().map(to_wire_share).collect()),
            ));
        }
        Ok(sends)
    }

    fn close_inputs_if_due(&mut self, now: u64) -> Result<Sends, SecAggError> {
        let received = self.weights.len();
        let all = received == self.inner.dealers().len();
        if !all && (now < self.deadline_ms || received < self.required.max(1)) {
            return Ok(Vec::new());
        }
        let Dropouts { survivors, dropped } = self.inner.close_inputs()?;
        self.step = Step::Unmasking;
        let body = SecureBody::Unmask { survivors: survivors.clone(), dropped };
        Ok(survivors.into_iter().map(|s| (s, body.clone())).collect())
    }
}

fn to_wire_keys(keys: &RoundKeys) -> SecureKeys {
    SecureKeys {
        member: keys.member,
        mask_key: keys.mask_key,
        encryption_key: keys.encryption_key,
        self_mask_commitment: keys.self_mask_commitment,
        signature: keys.signature.to_vec(),
    }
}

/// A peer's wire keys as round keys of this job and round (their signature is checked where
/// they are used).
fn from_wire_keys(job: JobId, round: Round, keys: SecureKeys) -> Result<RoundKeys, Refusal> {
    let signature: [u8; 64] = keys.signature.as_slice().try_into().map_err(|_| {
        Refusal::new(Reason::RejectedUpdate, "a round keys signature is not 64 bytes")
    })?;
    Ok(RoundKeys {
        job,
        round,
        member: keys.member,
        mask_key: keys.mask_key,
        encryption_key: keys.encryption_key,
        self_mask_commitment: keys.self_mask_commitment,
        signature,
    })
}

fn to_wire_share(share: EncryptedShare) -> SealedShare {
    SealedShare { sender: share.sender, recipient: share.recipient, ciphertext: share.ciphertext }
}

fn from_wire_share(share: SealedShare) -> EncryptedShare {
    EncryptedShare {
        sender: share.sender,
        recipient: share.recipient,
        ciphertext: share.ciphertext,
    }
}

fn to_wire_part(part: RevealedShare) -> RevealedPart {
    RevealedPart { owner: part.owner, share: part.share }
}

fn from_wire_part(part: RevealedPart) -> RevealedShare {
    RevealedShare { owner: part.owner, share: part.share }
}
