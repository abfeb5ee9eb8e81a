//! One aggregation slot while its aggregator collects: checking each update (sender, selection,
//! round, base model, opening, layout) against the round's plan, folding it into the job's
//! strategy, carrying what is in over a re-opening, and combining the slot's result.

use crate::member::{Reason, Refusal};
use fedmesh_aggregation::privacy::NoiseSeed;
use fedmesh_aggregation::{AggregationError, Aggregator, PartialAggregate as Sum, Recomputation};
use fedmesh_protocol::ids::{ContentHash, MemberId, Round};
use fedmesh_protocol::message::{Contribution, Feedback, ModelDelta, PartialAggregate};
use fedmesh_protocol::spec::{JobSpec, Staleness};
use fedmesh_protocol::tensor::{Decoder, hash_f32};
use fedmesh_topologies::{Input, RoundPlan};
use std::collections::{BTreeMap, BTreeSet};

/// One slot a member aggregates in the round it follows (one opening of it).
pub struct Collecting {
    pub round: Round,
    pub base: ContentHash,
    pub num_params: usize,
    /// The opening it belongs to.
    pub opened_at_ms: u64,
    /// The slot's index in the plan, and its group label.
    pub slot: usize,
    pub label: String,
    /// The aggregator of the slot above, which gets this slot's partial aggregate; none for the
    /// top slot, whose result is the round's model.
    pub parent: Option<MemberId>,
    /// Takes the trainers' deltas sent here directly.
    aggregator: Fold,
    /// The partial aggregates of the slots below, combined.
    lower: Option<Sum>,
    /// The trainers whose deltas come here directly.
    pub direct: BTreeSet<MemberId>,
    /// The senders of lower partial aggregates (aggregator and group label), with the trainers
    /// each may include.
    pub lower_senders: BTreeMap<(MemberId, String), BTreeSet<MemberId>>,
    /// The lower senders heard from.
    lower_received: BTreeSet<(MemberId, String)>,
    /// Every update folded in, directly or through a partial aggregate.
    pub contributions: Vec<Contribution>,
    /// What this aggregator saw of the updates sent here directly (an `oort` job's selector
    /// learns from it): each one's reported loss and arrival after the opening.
    pub feedback: BTreeMap<MemberId, Feedback>,
    /// When a lower slot sends what it has up (the top slot's is the round's deadline).
    pub deadline_ms: u64,
    /// An asynchronous job's: the older versions it takes updates of, and how many direct
    /// updates complete it.
    asynchronous: Option<AsyncSlot>,
}

/// What an asynchronous job's slot takes and waits for.
struct AsyncSlot {
    /// The base models of the versions before the slot's own, newest first: an update trained
    /// on `older[i]` is `i + 1` versions stale.
    older: Vec<ContentHash>,
    staleness: Staleness,
    /// The direct updates that complete the slot: its share of the job's buffer.
    buffer: usize,
}

/// How a slot folds the updates sent to it directly.
enum Fold {
    /// The job's strategy, streaming for plain FedAvg (in arrival order).
    Streaming(Aggregator),
    /// A verifiable job's deterministic recomputation, the one every auditor runs.
    Verifiable(Recomputation),
}

impl Fold {
    fn add(
        &mut self,
        member: MemberId,
        weight: u64,
        values: &[f32],
    ) -> Result<(), AggregationError> {
        match self {
            Self::Streaming(aggregator) => {
                aggregator.add(&member.to_peer_id_string(), weight as f64, values)
            }
            Self::Verifiable(recomputation) => recomputation.add(member, weight, values),
        }
    }

    fn add_decoded(
        &mut self,
        member: MemberId,
        weight: u64,
        update: &Decoder<'_>,
    ) -> Result<(), AggregationError> {
        match self {
            Self::Streaming(aggregator) => {
                aggregator.add_decoded(&member.to_peer_id_string(), weight as f64, update)
            }
            Self::Verifiable(recomputation) => {
                let mut values = vec![0.0f32; update.len()];
                update.decode_range(0, &mut values);
                recomputation.add(member, weight, &values)
            }
        }
    }
}

/// The round and opening a collecting slot belongs to.
pub struct Opening {
    pub round: Round,
    pub base: ContentHash,
    pub num_params: usize,
    pub opened_at_ms: u64,
    pub deadline_ms: u64,
    /// The aggregating member's secret, each slot's DP noise is drawn from (with the round,
    /// the opening and the slot).
    pub noise_key: NoiseSeed,
    /// An asynchronous job's: the base models of the versions before this one, newest first,
    /// as far back as the job's `max_staleness` (empty for a synchronous job).
    pub older_bases: Vec<ContentHash>,
}

impl Opening {
    /// The seed of `slot`'s DP noise: nobody without this member's secret can regenerate it.
    fn noise_seed(&self, slot: usize) -> NoiseSeed {
        let mut material = self.noise_key.to_vec();
        for word in [self.round, self.opened_at_ms, slot as u64] {
            material.extend_from_slice(&word.to_le_bytes());
        }
        ContentHash::of(&material).0
    }
}

fn refuse(reason: Reason, detail: impl Into<String>) -> Refusal {
    Refusal::new(reason, detail)
}

impl Collecting {
    /// The collecting state of `slot` of `plan`, for `opening`.
    pub fn new(
        spec: &JobSpec,
        plan: &RoundPlan,
        slot: usize,
        opening: &Opening,
    ) -> Result<Self, AggregationError> {
        let planned = &plan.slots[slot];
        let mut direct = BTreeSet::new();
        let mut lower_senders = BTreeMap::new();
        for input in &planned.inputs {
            match input {
                Input::Trainer(member) => {
                    direct.insert(*member);
                }
                lower => {
                    let trainers = plan.trainers_in(*lower).into_iter().collect();
                    lower_senders.insert(plan.sender_of(*lower), trainers);
                }
            }
        }
        // A lower slot sends up at its share of the round's time: tier t of d at t/d of it.
        let span = opening.deadline_ms.saturating_sub(opening.opened_at_ms);
        let depth = plan.depth().max(1) as u64;
        let deadline_ms = match planned.parent {
            None => opening.deadline_ms,
            Some(_) => opening.opened_at_ms + span * planned.tier as u64 / depth,
        };
        Ok(Self {
            round: opening.round,
            base: opening.base,
            num_params: opening.num_params,
            opened_at_ms: opening.opened_at_ms,
            slot,
            label: planned.id.label.clone(),
            parent: planned.parent.map(|parent| plan.slots[parent].aggregator()),
            aggregator: match spec.verification {
                Some(_) => Fold::Verifiable(Recomputation::new(
                    &spec.aggregator_strategy(),
                    opening.num_params,
                )?),
                None => Fold::Streaming(Aggregator::from_spec(
                    &spec.aggregator_strategy(),
                    opening.num_params,
                    opening.noise_seed(slot),
                )?),
            },
            lower: None,
            lower_senders,
            lower_received: BTreeSet::new(),
            contributions: Vec::new(),
            feedback: BTreeMap::new(),
            deadline_ms,
            asynchronous: spec.async_options().map(|options| AsyncSlot {
                older: opening.older_bases.clone(),
                staleness: options.staleness,
                buffer: buffer_share(options.buffer as usize, direct.len(), plan.trainers.len()),
            }),
            direct,
        })
    }

    /// Takes over what `earlier` (this slot in an earlier opening of the same round) collected,
    /// when every input it holds is one this opening still expects from the same sender; says
    /// whether it did. A round opened again then keeps the updates already in, rather than
    /// waiting for every trainer to send again.
    pub fn carry_over(&mut self, earlier: Collecting) -> bool {
        let same_slot =
            (earlier.round, earlier.base, &earlier.label) == (self.round, self.base, &self.label);
        let still_expected = earlier.contributions.iter().all(|c| {
            self.direct.contains(&c.member)
                || earlier.lower_received.iter().any(|key| {
                    earlier
                        .lower_senders
                        .get(key)
                        .is_some_and(|trainers| trainers.contains(&c.member))
                })
        });
        let same_lower = earlier
            .lower_received
            .iter()
            .all(|key| self.lower_senders.get(key) == earlier.lower_senders.get(key));
        if !(same_slot && still_expected && same_lower) || earlier.contributions.is_empty() {
            return false;
        }
        self.aggregator = earlier.aggregator;
        self.lower = earlier.lower;
        self.lower_received = earlier.lower_received;
        self.contributions = earlier.contributions;
        self.feedback = earlier.feedback;
        true
    }

    /// Notes what this aggregator saw of `member`'s update just folded in: the loss its trainer
    /// reported, and how long after the slot's opening it arrived (the first time only: the
    /// same update sent again over a re-opening keeps its first arrival).
    pub fn note_feedback(&mut self, member: MemberId, loss: f32, now: u64) {
        let duration_ms = now.saturating_sub(self.opened_at_ms);
        self.feedback.entry(member).or_insert(Feedback { loss, duration_ms });
    }

    /// Every input of the slot has arrived (an asynchronous job's: its share of the buffer).
    pub fn complete(&self) -> bool {
        let direct_in =
            self.contributions.iter().filter(|c| self.direct.contains(&c.member)).count();
        let wanted = self.asynchronous.as_ref().map_or(self.direct.len(), |a| a.buffer);
        direct_in >= wanted.min(self.direct.len())
            && self.lower_received.len() >= self.lower_senders.len()
    }

    /// Stops waiting for what `member` would send, as it signed it will send nothing more (it
    /// left): its own update, and the partial aggregates of slots below it aggregates (their
    /// trainers' updates went to it, and are lost with it this round). What arrived stays.
    pub fn forget_sender(&mut self, member: &MemberId) {
        if !self.holds(member) {
            self.direct.remove(member);
        }
        let received = &self.lower_received;
        self.lower_senders.retain(|sender, _| sender.0 != *member || received.contains(sender));
    }

    /// Whether `member`'s update is folded in here (directly or through a partial aggregate).
    pub fn holds(&self, member: &MemberId) -> bool {
        self.contributions.iter().any(|c| c.member == *member)
    }

    /// Whether this slot takes `update` from `signer` (the one an input names goes there).
    pub fn expects(&self, signer: &MemberId, update: &crate::member::Update) -> bool {
        match update {
            crate::member::Update::Delta(_) => self.direct.contains(signer),
            crate::member::Update::Partial(partial) => {
                self.lower_senders.contains_key(&(*signer, partial.group.clone()))
            }
            crate::member::Update::Chunk(_) => false,
        }
    }

    /// Checks that an update is for this slot's round and base model (an asynchronous job's
    /// trainer update: or one of the versions before, as far back as the job allows), with the
    /// model's layout (`params` values); returns how many versions stale it is.
    fn check_round(
        &self,
        what: &str,
        signer: &MemberId,
        (round, base): (Round, &ContentHash),
        params: usize,
    ) -> Result<u32, Refusal> {
        if round != self.round {
            return Err(refuse(
                Reason::WrongRound,
                format!("{what} from {signer} is for round {round}, round {} is open", self.round),
            ));
        }
        let older = self.asynchronous.as_ref().map_or(&[][..], |a| &a.older[..]);
        let staleness = match older.iter().position(|older| older == base) {
            _ if *base == self.base => 0,
            Some(index) => index as u32 + 1,
            _ => {
                let back = if older.is_empty() {
                    String::new()
                } else {
                    format!(" (nor of the {} versions before)", older.len())
                };
                return Err(refuse(
                    Reason::WrongBase,
                    format!(
                        "{what} from {signer} builds on {base}, the round's model is {}{back}",
                        self.base
                    ),
                ));
            }
        };
        if params != self.num_params {
            return Err(refuse(
                Reason::WrongLayout,
                format!(
                    "{what} from {signer} has {params} parameters, the model {}",
                    self.num_params
                ),
            ));
        }
        Ok(staleness)
    }

    /// What an update `staleness` versions behind counts for: its values are scaled by this
    /// before they are averaged in (FedBuff), 1 for a fresh one.
    fn discount(&self, staleness: u32) -> f32 {
        match &self.asynchronous {
            Some(slot) if staleness > 0 => slot.staleness.weight(staleness),
            _ => 1.0,
        }
    }

    /// Folds in a trainer's verified delta (`values` decoded from its payload).
    pub fn accept_delta(
        &mut self,
        signer: MemberId,
        delta: &ModelDelta,
        values: &[f32],
    ) -> Result<(), Refusal> {
        if let Some(staleness) = self.admits_delta(signer, delta, values.len())? {
            self.add_discounted(signer, delta.samples, values, staleness)?;
            self.count_delta(signer, delta);
        }
        Ok(())
    }

    /// Folds in `values`, discounted for their staleness.
    fn add_discounted(
        &mut self,
        member: MemberId,
        samples: u64,
        values: &[f32],
        staleness: u32,
    ) -> Result<(), Refusal> {
        let discount = self.discount(staleness);
        let added = if discount == 1.0 {
            self.aggregator.add(member, samples, values)
        } else {
            let scaled: Vec<f32> = values.iter().map(|v| v * discount).collect();
            self.aggregator.add(member, samples, &scaled)
        };
        added.map_err(|e| refuse(Reason::RejectedUpdate, e.to_string()))
    }

    /// [`accept_delta`](Self::accept_delta) for a delta still encoded: plain FedAvg folds it a
    /// chunk at a time, without a decoded copy (a large model's aggregator holds one less).
    pub fn accept_encoded_delta(
        &mut self,
        signer: MemberId,
        delta: &ModelDelta,
        update: &Decoder<'_>,
    ) -> Result<(), Refusal> {
        match self.admits_delta(signer, delta, update.len())? {
            None => return Ok(()),
            Some(0) => self
                .aggregator
                .add_decoded(signer, delta.samples, update)
                .map_err(|e| refuse(Reason::RejectedUpdate, e.to_string()))?,
            Some(staleness) => {
                let mut values = vec![0.0f32; update.len()];
                update.decode_range(0, &mut values);
                self.add_discounted(signer, delta.samples, &values, staleness)?;
            }
        }
        self.count_delta(signer, delta);
        Ok(())
    }

    /// Checks a trainer's delta of `params` values against the round and the plan; returns its
    /// staleness if it is new (the same update again, sent over a re-opening, is counted once
    /// and is no error).
    fn admits_delta(
        &self,
        signer: MemberId,
        delta: &ModelDelta,
        params: usize,
    ) -> Result<Option<u32>, Refusal> {
        let staleness =
            self.check_round("delta", &signer, (delta.round, &delta.base_model), params)?;
        if !self.direct.contains(&signer) {
            return Err(refuse(
                Reason::NotSelected,
                format!("{signer} was not selected to send its update to this slot this round"),
            ));
        }
        match self.contributions.iter().find(|c| c.member == signer) {
            None => Ok(Some(staleness)),
            Some(counted) if counted.delta == delta.payload.hash => Ok(None),
            Some(_) => {
                Err(refuse(Reason::Duplicate, format!("{signer} already sent another update")))
            }
        }
    }

    fn count_delta(&mut self, signer: MemberId, delta: &ModelDelta) {
        self.contributions.push(Contribution {
            member: signer,
            delta: delta.payload.hash,
            samples: delta.samples,
        });
    }

    /// Folds in the aggregator's own update, trained on `base` (never encoded: its hash is of
    /// its values).
    pub fn accept_own(
        &mut self,
        member: MemberId,
        samples: u64,
        values: &[f32],
        base: &ContentHash,
    ) -> Result<(), Refusal> {
        if self.holds(&member) {
            return Ok(()); // kept from an earlier opening of the round
        }
        let staleness =
            self.check_round("own update", &member, (self.round, base), values.len())?;
        self.add_discounted(member, samples, values, staleness)?;
        self.contributions.push(Contribution { member, delta: hash_f32(values), samples });
        Ok(())
    }

    /// Takes a secure round's unmasked mean of the survivors' updates (weighted by the samples
    /// each declared): the slot's direct trainers' input, folded in as a partial aggregate would
    /// be. The trainers who dropped out are no longer waited for.
    pub fn accept_secure_mean(
        &mut self,
        mean: &[f32],
        contributions: Vec<Contribution>,
    ) -> Result<(), Refusal> {
        if mean.len() != self.num_params {
            let detail = format!(
                "a secure mean of {} values, the model has {}",
                mean.len(),
                self.num_params
            );
            return Err(refuse(Reason::WrongLayout, detail));
        }
        let part = secure_part(mean, &contributions)
            .map_err(|detail| refuse(Reason::RejectedUpdate, detail))?;
        self.merge_lower(part)?;
        self.direct.retain(|member| contributions.iter().any(|c| c.member == *member));
        self.contributions.extend(contributions);
        Ok(())
    }

    /// Folds in a lower slot's verified partial aggregate (`mean` decoded from its payload).
    pub fn accept_partial(
        &mut self,
        signer: MemberId,
        partial: &PartialAggregate,
        mean: &[f32],
    ) -> Result<(), Refusal> {
        let what = "partial aggregate";
        let staleness =
            self.check_round(what, &signer, (partial.round, &partial.base_model), mean.len())?;
        if staleness > 0 {
            let detail = format!("{what} from {signer} builds on an earlier version's model");
            return Err(refuse(Reason::WrongBase, detail));
        }
        if partial.opened_at_ms != self.opened_at_ms {
            return Err(refuse(
                Reason::StaleOpening,
                format!("partial aggregate from {signer} answers an earlier opening of the round"),
            ));
        }
        let key = (signer, partial.group.clone());
        let Some(allowed) = self.lower_senders.get(&key) else {
            return Err(refuse(
                Reason::NotSelected,
                format!("{signer} does not send group `{}` to this slot this round", partial.group),
            ));
        };
        if self.lower_received.contains(&key) {
            if partial.contributions.iter().all(|c| self.contributions.contains(c)) {
                // The same partial again (the round was re-opened): already counted.
                return Ok(());
            }
            return Err(refuse(
                Reason::Duplicate,
                format!("{signer} already sent group `{}`", partial.group),
            ));
        }
        check_included(&signer, partial, allowed, &self.contributions)?;
        let weights =
            partial.contributions.iter().map(|c| (c.member.to_peer_id_string(), c.samples as f64));
        let part = Sum::from_mean(mean, weights.collect())
            .map_err(|e| refuse(Reason::RejectedUpdate, e.to_string()))?;
        self.merge_lower(part)?;
        self.lower_received.insert(key);
        self.contributions.extend(partial.contributions.iter().copied());
        Ok(())
    }

    /// Adds `part` to the partial aggregates combined so far.
    fn merge_lower(&mut self, part: Sum) -> Result<(), Refusal> {
        match &mut self.lower {
            Some(lower) => {
                lower.merge(&part).map_err(|e| refuse(Reason::RejectedUpdate, e.to_string()))
            }
            None => {
                self.lower = Some(part);
                Ok(())
            }
        }
    }

    /// Combines everything folded in: the slot's partial aggregate and the contributions it
    /// includes.
    pub fn finish(self) -> Result<(Sum, Vec<Contribution>), AggregationError> {
        let direct = match self.aggregator {
            Fold::Streaming(aggregator) if aggregator.count() > 0 => {
                Some(aggregator.finish_partial()?)
            }
            Fold::Streaming(_) => None,
            Fold::Verifiable(_) => {
                let only = "a verifiable job's slot makes its model whole (`finish_model`)";
                return Err(AggregationError::Invalid(only.to_owned()));
            }
        };
        let combined = match (direct, self.lower) {
            (Some(mut direct), Some(lower)) => {
                direct.merge(&lower)?;
                direct
            }
            (Some(only), None) | (None, Some(only)) => only,
            (None, None) => return Err(AggregationError::Empty),
        };
        let included: BTreeSet<&str> =
            combined.contributors.iter().map(|(name, _)| name.as_str()).collect();
        let contributions = self
            .contributions
            .into_iter()
            .filter(|c| included.contains(c.member.to_peer_id_string().as_str()))
            .collect();
        Ok((combined, contributions))
    }
}

impl Collecting {
    /// The top slot's result: the new model made from `base` and the contributions it
    /// includes. A verifiable job's is its deterministic recomputation (what every auditor
    /// recomputes); any other's, `base` plus the mean of the slot's sum.
    /// The slot's combined delta (the mean of its updates) and the contributions it counts:
    /// what a job with a server optimizer applies through it. Not for a verifiable job, whose
    /// model is recomputed whole (`finish_model`).
    pub fn finish_delta(self) -> Result<(Vec<f32>, Vec<Contribution>), AggregationError> {
        let (sum, contributions) = self.finish()?;
        Ok((sum.mean()?, contributions))
    }

    pub fn finish_model(
        self,
        base: &[f32],
    ) -> Result<(Vec<f32>, Vec<Contribution>), AggregationError> {
        if let Fold::Verifiable(recomputation) = &self.aggregator {
            if recomputation.count() == 0
                && let Some(secure) = &self.lower
            {
                // A secure round's unmasked mean, as `recompute_secure` makes it.
                return Ok((secure.mean_added_to(base)?, self.contributions));
            }
            if self.lower.is_some() {
                let why = "a verifiable job has no partial aggregates (central topology only)";
                return Err(AggregationError::Invalid(why.to_owned()));
            }
            let model = recomputation.finish(base)?;
            let counted: BTreeSet<&MemberId> = recomputation.members().collect();
            let contributions = self
                .contributions
                .iter()
                .filter(|c| counted.contains(&c.member))
                .copied()
                .collect();
            return Ok((model, contributions));
        }
        let (sum, contributions) = self.finish()?;
        Ok((sum.mean_added_to(base)?, contributions))
    }
}

/// A slot's share of an asynchronous job's `buffer` updates: in proportion to the trainers
/// that send to it directly of the round's `trainers` (rounded up), at most all of them.
fn buffer_share(buffer: usize, direct: usize, trainers: usize) -> usize {
    (buffer * direct).div_ceil(trainers.max(1)).min(direct)
}

/// A secure round's mean as a sum weighted by the contributions' samples: how a slot folds it
/// in, and so how an auditor must too.
pub fn secure_part(mean: &[f32], contributions: &[Contribution]) -> Result<Sum, String> {
    let weights = contributions.iter().map(|c| (c.member.to_peer_id_string(), c.samples as f64));
    Sum::from_mean(mean, weights.collect()).map_err(|e| e.to_string())
}

/// A partial aggregate may include only the trainers its sender serves, none counted already,
/// and its total weight must be their samples.
fn check_included(
    signer: &MemberId,
    body: &PartialAggregate,
    allowed: &BTreeSet<MemberId>,
    counted: &[Contribution],
) -> Result<(), Refusal> {
    if body.contributions.is_empty() {
        return Err(refuse(
            Reason::RejectedUpdate,
            format!("partial aggregate from {signer} is empty"),
        ));
    }
    if let Some(outsider) = body.contributions.iter().find(|c| !allowed.contains(&c.member)) {
        return Err(refuse(
            Reason::NotSelected,
            format!(
                "partial aggregate from {signer} includes {}, not of its group",
                outsider.member
            ),
        ));
    }
    if let Some(again) =
        body.contributions.iter().find(|c| counted.iter().any(|k| k.member == c.member))
    {
        return Err(refuse(
            Reason::Duplicate,
            format!("{} is already counted this round", again.member),
        ));
    }
    let samples: f64 = body.contributions.iter().map(|c| c.samples as f64).sum();
    if (samples - body.total_weight).abs() > 1e-6 * samples.max(1.0) {
        return Err(refuse(
            Reason::RejectedUpdate,
            format!(
                "partial aggregate from {signer} weighs {}, its contributions {samples}",
                body.total_weight
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedmesh_protocol::ids::JobId;
    use fedmesh_protocol::message::TrainMetrics;
    use fedmesh_protocol::tensor::{PayloadRef, TensorEncoding, encode_params};
    use fedmesh_topologies::{MemberInfo, Selection, Tag};
    use std::sync::Arc;

    /// A central job of three members.
    struct Job {
        id: JobId,
        spec: JobSpec,
        tag: Tag,
        members: Vec<MemberInfo>,
    }

    impl Job {
        fn new() -> Self {
            let owner = MemberId([0; 32]).to_string();
            let json = serde_json::json!({"name": "job", "owner": owner, "model": "softmax",
                                          "dataset": "mnist5k"});
            let bytes = serde_json::to_vec(&json).expect("json");
            let spec = JobSpec::from_json(&bytes).expect("a valid spec");
            let tag = Tag::from_spec(&spec.tag).expect("a valid tag");
            let members = (1..=3u8)
                .map(|b| MemberInfo {
                    id: MemberId([b; 32]),
                    group: "default".into(),
                    roles: vec![],
                    reachable: true,
                })
                .collect();
            Self { id: JobId(ContentHash::of(b"carry over")), spec, tag, members }
        }

        /// The top slot of round 1 planned over the members `present`, opened at `opened_at_ms`.
        fn slot(&self, present: &[usize], opened_at_ms: u64) -> Collecting {
            let infos: Vec<MemberInfo> = present.iter().map(|&i| self.members[i].clone()).collect();
            let selection =
                Selection::from_participation(&self.spec.participation, &Arc::default());
            let plan =
                RoundPlan::compute(&self.tag, &self.id, 1, &infos, &selection).expect("plan");
            let opening = Opening {
                round: 1,
                base: ContentHash::of(b"base"),
                num_params: 4,
                opened_at_ms,
                deadline_ms: opened_at_ms + 30_000,
                noise_key: [0; 32],
                older_bases: Vec::new(),
            };
            Collecting::new(&self.spec, &plan, 0, &opening).expect("a slot")
        }

        /// Member `i`'s delta (every value `value`), its payload encoded.
        fn delta(&self, i: usize, value: f32) -> (MemberId, ModelDelta, Vec<u8>) {
            let payload = encode_params(&[value; 4], TensorEncoding::F32Le, None).expect("encode");
            let member = self.members[i].id;
            let body = ModelDelta {
                job: self.id,
                round: 1,
                base_model: ContentHash::of(b"base"),
                member,
                samples: 10,
                metrics: TrainMetrics { loss: 0.0, accuracy: None },
                payload: PayloadRef::describe(&payload, TensorEncoding::F32Le, 4),
            };
            (member, body, payload)
        }

        fn send(&self, slot: &mut Collecting, i: usize, value: f32) -> Result<(), Refusal> {
            let (member, body, payload) = self.delta(i, value);
            let decoder = Decoder::new(&payload, TensorEncoding::F32Le, 4).expect("decoder");
            slot.accept_encoded_delta(member, &body, &decoder)
        }
    }

    #[test]
    fn a_round_opened_again_over_the_same_members_keeps_the_updates_in() {
        let job = Job::new();
        let mut first = job.slot(&[0, 1, 2], 1_000);
        job.send(&mut first, 0, 1.0).expect("accepted");
        job.send(&mut first, 1, 3.0).expect("accepted");
        let mut again = job.slot(&[0, 1, 2], 31_000);
        assert!(again.carry_over(first), "the same plan keeps what it collected");
        assert_eq!(again.contributions.len(), 2);
        // A trainer that sends its update again is counted once; the missing one completes it.
        job.send(&mut again, 0, 1.0).expect("the same update again");
        job.send(&mut again, 2, 5.0).expect("accepted");
        assert!(again.complete());
        let (sum, contributions) = again.finish().expect("finished");
        assert_eq!(contributions.len(), 3);
        assert_eq!(sum.mean().expect("mean"), vec![3.0; 4], "(1 + 3 + 5) / 3, each counted once");
    }

    #[test]
    fn a_round_opened_again_without_a_contributor_starts_over() {
        let job = Job::new();
        let mut first = job.slot(&[0, 1, 2], 1_000);
        let contributor = (0..3)
            .find(|&i| first.direct.contains(&job.members[i].id))
            .expect("a trainer of the slot");
        job.send(&mut first, contributor, 1.0).expect("accepted");
        let rest: Vec<usize> = (0..3).filter(|&i| i != contributor).collect();
        let mut again = job.slot(&rest, 31_000);
        assert!(!again.carry_over(first), "its update is no longer expected");
        assert!(again.contributions.is_empty());
    }

    #[test]
    fn another_update_from_a_counted_trainer_is_a_duplicate() {
        let job = Job::new();
        let mut slot = job.slot(&[0, 1, 2], 1_000);
        job.send(&mut slot, 0, 1.0).expect("accepted");
        let refused = job.send(&mut slot, 0, 2.0).expect_err("a second, different update");
        assert_eq!(refused.reason, Reason::Duplicate);
    }
}
