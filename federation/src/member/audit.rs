//! Verifiable aggregation (jobs whose spec sets `verification`): which results this member
//! audits, the contributions it keeps for auditors, fraud proofs published and checked, and the
//! conviction of a lying aggregator (excluded from the plans, its result discarded, the round
//! run again from the last good model).

use super::phase::Phase;
use super::{Accusation, Effect, Level, Member, OwnPayloads, Publish, Reason, Refusal};
use crate::records::RunStatus;
use fedmesh_protocol::ids::{ContentHash, MemberId, Round};
use fedmesh_protocol::message::AggregateReady;
use fedmesh_protocol::spec::Auditors;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

/// Most audits under way at once (each fetches a round's contributions and recomputes).
pub const MAX_AUDITS: usize = 16;
/// Most verdicts kept (by the audited model): a result is recomputed once, however many
/// accuse it.
const MAX_VERDICTS: usize = 256;
/// Most (result, accuser) pairs remembered: each accuser gets one proof per result.
const MAX_ACCUSED: usize = 4_096;
/// Most accusers remembered as liars.
const MAX_DISTRUSTED: usize = 1_024;
/// Most deltas kept to serve auditors.
const MAX_KEPT: usize = 1 << 16;
/// Most condemned models remembered (persisted).
pub const MAX_CONDEMNED: usize = 256;

/// An audit under way.
struct Pending {
    round: Round,
    liar: MemberId,
    result: Arc<AggregateReady>,
    /// Whether this member chose to audit the result itself (then it publishes the proof).
    own: bool,
    /// The members whose proofs wait for this recomputation.
    accusers: Vec<MemberId>,
}

/// A member's audits: under way, decided, and what it keeps for others'.
#[derive(Default)]
pub(super) struct Audits {
    /// By the audited result's model.
    pending: BTreeMap<ContentHash, Pending>,
    /// Whether each audited model is its recomputation (newest last).
    verdicts: VecDeque<(ContentHash, bool)>,
    accused: BTreeSet<(ContentHash, MemberId)>,
    distrusted: BTreeSet<MemberId>,
    /// Deltas kept to serve auditors, with when they may go (oldest first).
    kept: VecDeque<(ContentHash, u64)>,
}

impl Audits {
    fn verdict(&self, model: &ContentHash) -> Option<bool> {
        self.verdicts.iter().rev().find(|(m, _)| m == model).map(|(_, honest)| *honest)
    }

    fn decide(&mut self, model: ContentHash, honest: bool) {
        if self.verdicts.len() >= MAX_VERDICTS {
            self.verdicts.pop_front();
        }
        self.verdicts.push_back((model, honest));
    }
}

impl Member {
    /// Whether this job's results are audited.
    pub(super) fn verifiable(&self) -> bool {
        self.setup.spec.verification.is_some()
    }

    /// How long contributions are kept for auditors, in milliseconds.
    fn audit_window_ms(&self) -> u64 {
        self.setup.spec.verification.as_ref().map_or(0, |v| v.audit_window_secs * 1000)
    }

    /// Whether this member audits `ready`: every member, or those whose draw from a secret of
    /// their own (`Setup::noise_key`) and the result falls below the fraction. The aggregator
    /// cannot know the auditors before it signs (nor grind its model until none audits), and
    /// another draw is made for every result.
    fn audits(&self, ready: &AggregateReady) -> bool {
        let Some(verification) = &self.setup.spec.verification else { return false };
        match verification.auditors {
            Auditors::All => true,
            Auditors::Fraction(fraction) => {
                let mut material = b"fedmesh/audit".to_vec();
                material.extend_from_slice(&self.setup.noise_key);
                material.extend_from_slice(&ready.model.0);
                material.extend_from_slice(&ready.round.to_le_bytes());
                let draw = ContentHash::of(&material).0;
                let mut word = [0u8; 8];
                word.copy_from_slice(&draw[..8]);
                (u64::from_le_bytes(word) as f64) < f64::from(fraction) * 2f64.powi(64)
            }
        }
    }

    /// A verifiable job's result taken from `signer`: this member keeps its own contribution
    /// for auditors, and audits the result if it is one of its auditors.
    pub(super) fn on_result_taken(
        &mut self,
        signer: MemberId,
        ready: &Arc<AggregateReady>,
        now: u64,
    ) {
        if !self.verifiable() || signer == self.me() {
            return;
        }
        let me = self.me();
        if let Some(own) = ready.contributions.iter().find(|c| c.member == me) {
            self.keep_contributions(ready.round, vec![own.delta], None, now);
        }
        let model = ready.model;
        if !self.audits(ready)
            || self.audits.pending.contains_key(&model)
            || self.audits.verdict(&model).is_some()
            || self.audits.pending.len() >= MAX_AUDITS
        {
            return;
        }
        let pending = Pending {
            round: ready.round,
            liar: signer,
            result: ready.clone(),
            own: true,
            accusers: Vec::new(),
        };
        self.start_audit(pending);
    }

    fn start_audit(&mut self, pending: Pending) {
        let (round, result) = (pending.round, pending.result.clone());
        let (aggregator, from) = (pending.liar, vec![pending.liar]);
        self.audits.pending.insert(result.model, pending);
        self.effects.push(Effect::Audit { round, result, aggregator, from });
    }

    /// Keeps deltas of `round` for auditors for the audit window (from now).
    pub(super) fn keep_contributions(
        &mut self,
        round: Round,
        deltas: Vec<ContentHash>,
        own: Option<Arc<Vec<f32>>>,
        now: u64,
    ) {
        self.keep_kept(round, deltas, (own, Vec::new()), now);
    }

    /// Keeps a secure round's evidence (by the hashes of `records`, listed as its
    /// contributions) for auditors for the audit window.
    pub(super) fn keep_evidence(
        &mut self,
        round: Round,
        hashes: Vec<ContentHash>,
        records: Vec<Arc<Vec<u8>>>,
        now: u64,
    ) {
        self.keep_kept(round, hashes, (None, records), now);
    }

    fn keep_kept(
        &mut self,
        round: Round,
        deltas: Vec<ContentHash>,
        (own, evidence): OwnPayloads,
        now: u64,
    ) {
        let until_ms = now + self.audit_window_ms();
        let kept = &mut self.audits.kept;
        kept.retain(|(_, until)| *until >= now);
        for hash in &deltas {
            if kept.len() >= MAX_KEPT {
                kept.pop_front();
            }
            kept.push_back((*hash, until_ms));
        }
        self.effects.push(Effect::KeepContributions { round, deltas, own, evidence, until_ms });
    }

    /// A member asks for a kept contribution: served to the job's members while it is kept.
    pub(super) fn on_contribution_asked(
        &mut self,
        from: MemberId,
        hash: ContentHash,
        request: u64,
        now: u64,
    ) {
        let outcome = if !self.may_learn_of_job(&from) || !self.state.members.contains(&from) {
            Err(Refusal::new(Reason::NotAMember, format!("{from} is not a member of the job")))
        } else if self.audits.kept.iter().any(|(kept, until)| *kept == hash && *until >= now) {
            Ok(())
        } else {
            Err(Refusal::new(Reason::NotKept, format!("contribution {hash} is not kept here")))
        };
        self.effects.push(Effect::ServeContribution { request, to: from, hash, outcome });
    }

    /// A fraud proof from `accuser`: believed only once this member's own recomputation of the
    /// result disagrees with its model. One recomputation per result however many accuse it,
    /// one proof per result and accuser, and none from an accuser caught lying.
    pub(super) fn on_accusation(
        &mut self,
        accuser: MemberId,
        accusation: Arc<Accusation>,
        now: u64,
    ) {
        let result = accusation.result.clone();
        let (round, model) = (result.round, result.model);
        if !self.verifiable() {
            let detail = format!("{accuser}'s fraud proof in a job without verification");
            return self.reject(Reason::NotVerifiable, detail);
        }
        if result.job != self.setup.job || accusation.recomputed == model {
            return self
                .reject(Reason::BadMessage, format!("{accuser}'s fraud proof is malformed"));
        }
        if self.audits.distrusted.contains(&accuser) {
            let detail = format!("{accuser} sent a false fraud proof before");
            return self.reject(Reason::FalseFraudProof, detail);
        }
        if !self.audits.accused.insert((model, accuser)) {
            let detail = format!("{accuser} already accused the result of round {round}");
            return self.reject(Reason::Duplicate, detail);
        }
        if self.audits.accused.len() > MAX_ACCUSED {
            self.audits.accused.clear();
        }
        match self.audits.verdict(&model) {
            Some(false) => return self.convict(accusation.liar, &result, now),
            Some(true) => return self.refute(accuser, round),
            None => {}
        }
        if let Some(pending) = self.audits.pending.get_mut(&model) {
            if pending.liar == accusation.liar && pending.accusers.len() < MAX_ACCUSED {
                pending.accusers.push(accuser);
            }
            return;
        }
        if self.audits.pending.len() >= MAX_AUDITS {
            let detail = format!("{MAX_AUDITS} audits under way; {accuser}'s proof is not checked");
            self.audits.accused.remove(&(model, accuser));
            return self.reject(Reason::TooManyAudits, detail);
        }
        let liar = accusation.liar;
        self.log(Level::Warn, round, format!("{accuser} accuses {liar}; recomputing its result"));
        self.start_audit(Pending { round, liar, result, own: false, accusers: vec![accuser] });
    }

    /// A recomputation asked for is done: the result is honest (any accuser of it lied), or
    /// its aggregator lied (this member publishes the proof if it audited of its own accord,
    /// and convicts it), or it could not be made (no proof either way).
    pub(super) fn on_audited(
        &mut self,
        model: ContentHash,
        outcome: Result<ContentHash, String>,
        now: u64,
    ) {
        let Some(pending) = self.audits.pending.remove(&model) else { return };
        let round = pending.round;
        let recomputed = match outcome {
            Ok(recomputed) => recomputed,
            Err(error) => {
                let text = format!("cannot audit the result of round {round}: {error}");
                return self.log(Level::Warn, round, text);
            }
        };
        let honest = recomputed == model;
        self.audits.decide(model, honest);
        if honest {
            return pending.accusers.into_iter().for_each(|accuser| self.refute(accuser, round));
        }
        if pending.own {
            let accusation =
                Accusation { liar: pending.liar, result: pending.result.clone(), recomputed };
            self.effects.push(Effect::Publish(Publish::FraudProof(accusation)));
        }
        self.convict(pending.liar, &pending.result, now);
    }

    /// An accuser whose proof recomputed to the model announced: refused, and not heard again.
    fn refute(&mut self, accuser: MemberId, round: Round) {
        if self.audits.distrusted.len() < MAX_DISTRUSTED {
            self.audits.distrusted.insert(accuser);
        }
        let detail = format!("{accuser}'s fraud proof of round {round} recomputes to its model");
        self.log(Level::Warn, round, detail.clone());
        let refusal = Refusal::new(Reason::FalseFraudProof, detail);
        self.effects.push(Effect::ProofRefuted { accuser, refusal });
    }

    /// `liar` signed `result`, which is not the recomputation of its contributions: it is left
    /// out of every plan from now on, its model (and any taken here on top of it) is condemned,
    /// and this member goes back to the result's base model to run the round again.
    fn convict(&mut self, liar: MemberId, result: &AggregateReady, now: u64) {
        if let Err(position) = self.state.excluded.binary_search(&liar) {
            self.state.excluded.insert(position, liar);
            self.plans.clear();
            let text = format!("{liar} announced a model that is not its recomputation: excluded");
            self.log(Level::Warn, result.round, text);
        }
        self.condemn(result.model);
        let took_it = self.rounds.get(&result.round).and_then(|r| r.model) == Some(result.model);
        if took_it || self.fetching.contains_key(&result.model) {
            self.roll_back(result, now);
        }
        self.persist();
        self.wake_at(now);
    }

    fn condemn(&mut self, model: ContentHash) {
        let condemned = &mut self.state.condemned;
        if !condemned.contains(&model) {
            if condemned.len() >= MAX_CONDEMNED {
                condemned.remove(0);
            }
            condemned.push(model);
        }
    }

    /// Whether a model was proven wrong (or built on one) here.
    pub(super) fn is_condemned(&self, model: &ContentHash) -> bool {
        self.state.condemned.contains(model)
    }

    /// Whether a fraud proof convicted `member`.
    pub(super) fn is_excluded(&self, member: &MemberId) -> bool {
        self.state.excluded.binary_search(member).is_ok()
    }

    /// Discards `bad` and everything taken on top of it: the rounds from its on are forgotten
    /// (their models condemned), and the head goes back to its base model, fetched from the
    /// store (no training or opening until it is back: see `restoring`).
    fn roll_back(&mut self, bad: &AggregateReady, now: u64) {
        let round = bad.round;
        let later: Vec<ContentHash> =
            self.rounds.range(round..).filter_map(|(_, record)| record.model).collect();
        later.into_iter().for_each(|model| self.condemn(model));
        self.rounds.retain(|r, _| *r < round);
        self.taken.retain(|(_, ready)| ready.round < round);
        self.fetching.retain(|_, r| *r < round);
        if self.announced.as_ref().is_some_and(|ready| ready.round >= round) {
            self.announced = None;
        }
        if self.last_update.as_ref().is_some_and(|(update, _)| update.round >= round) {
            self.last_update = None;
        }
        self.training = None;
        if self.phase.round().is_some_and(|r| r >= round) || self.state.completed_round >= round {
            self.phase = Phase::Waiting;
        }
        if self.state.completed_round >= round {
            if self.state.status == RunStatus::Completed {
                // It completed on the lie (the job's last round): the round runs again.
                self.state.status = RunStatus::Running;
            }
            self.state.completed_round = round - 1;
            self.state.model = bad.base_model;
            self.restoring = Some(bad.base_model);
            self.vet_from_taken();
            let text =
                format!("back to the model of round {} to run round {round} again", round - 1);
            self.log(Level::Warn, round, text);
            let me = self.me();
            self.fetch(round - 1, bad.base_model, me);
        }
        self.furthest_heard = self.furthest_heard.min(round);
        self.next_open_check_ms = now;
    }

    /// The model this member rolled back to arrived: it is the current model's parameters.
    /// Says whether `model` was that.
    pub(super) fn on_restored(&mut self, model: ContentHash, params: &Arc<Vec<f32>>) -> bool {
        if self.restoring != Some(model) {
            return false;
        }
        self.restoring = None;
        if self.state.model == model && params.len() == self.params.len() {
            self.params = params.clone();
            self.start_training();
        }
        true
    }
}
