//! One aggregation slot while its aggregator collects: checking each signed delta (member,
//! selection, round, base model, layout) and each lower tier's partial aggregate against the
//! round's plan, folding them into the job's strategy, and combining the slot's result.

use crate::engine::federation::membership::Membership;
use fedmesh_aggregation::{AggregationError, Aggregator, PartialAggregate as Sum};
use fedmesh_protocol::envelope::{CarriesPayload, Signed, SignedBody, Verified};
use fedmesh_protocol::ids::{ContentHash, MemberId, Round};
use fedmesh_protocol::message::{Contribution, ModelDelta, PartialAggregate};
use fedmesh_protocol::spec::JobSpec;
use fedmesh_protocol::tensor::{Decoder, decode_params, hash_f32};
use fedmesh_topologies::{Input, RoundPlan};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// One slot this node aggregates in the round it follows (one opening of it).
pub struct Collecting {
    pub round: Round,
    pub base: ContentHash,
    pub base_params: Arc<Vec<f32>>,
    /// The opening it belongs to.
    pub opened_at_ms: u64,
    /// The slot's index in the plan, and its group label.
    pub slot: usize,
    pub label: String,
    /// The aggregator of the slot above, which gets this slot's partial aggregate; none for the
    /// top slot, whose result is the round's model.
    pub parent: Option<MemberId>,
    /// Takes the trainers' deltas sent here directly.
    pub aggregator: Aggregator,
    /// The partial aggregates of the slots and rings below, combined.
    pub lower: Option<Sum>,
    /// The trainers whose deltas come here directly.
    pub direct: BTreeSet<MemberId>,
    /// The senders of lower partial aggregates (aggregator and group label), with the trainers
    /// each may include.
    pub lower_senders: BTreeMap<(MemberId, String), BTreeSet<MemberId>>,
    /// The lower senders heard from.
    pub lower_received: BTreeSet<(MemberId, String)>,
    /// Every update folded in, directly or through a partial aggregate.
    pub contributions: Vec<Contribution>,
    /// When a lower slot sends what it has up (the top slot's is the round's deadline).
    pub deadline_ms: u64,
}

/// Why a delta or partial aggregate was refused: a metrics label and a sentence.
#[derive(Debug)]
pub struct Refused {
    pub reason: &'static str,
    pub detail: String,
}

pub fn refuse(reason: &'static str, detail: impl Into<String>) -> Refused {
    Refused { reason, detail: detail.into() }
}

/// The round and opening a collecting slot belongs to.
pub struct Opening<'a> {
    pub round: Round,
    pub base: ContentHash,
    pub base_params: &'a Arc<Vec<f32>>,
    pub opened_at_ms: u64,
    pub deadline_ms: u64,
}

impl Collecting {
    /// The collecting state of `slot` of `plan`, for `opening`.
    pub fn new(
        spec: &JobSpec,
        plan: &RoundPlan,
        slot: usize,
        opening: &Opening<'_>,
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
            base_params: opening.base_params.clone(),
            opened_at_ms: opening.opened_at_ms,
            slot,
            label: planned.id.label.clone(),
            parent: planned.parent.map(|parent| plan.slots[parent].aggregator()),
            aggregator: Aggregator::from_spec(
                &spec.strategy,
                opening.base_params.len(),
                opening.round,
            )?,
            lower: None,
            direct,
            lower_senders,
            lower_received: BTreeSet::new(),
            contributions: Vec::new(),
            deadline_ms,
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
        true
    }

    /// Every input of the slot has arrived.
    pub fn complete(&self) -> bool {
        let direct_in =
            self.contributions.iter().filter(|c| self.direct.contains(&c.member)).count();
        direct_in >= self.direct.len() && self.lower_received.len() >= self.lower_senders.len()
    }

    /// Checks that a message is for this slot's round and base model.
    fn check_round(
        &self,
        what: &str,
        signer: &MemberId,
        round: Round,
        base: &ContentHash,
    ) -> Result<(), Refused> {
        if round != self.round {
            return Err(refuse(
                "wrong_round",
                format!("{what} from {signer} is for round {round}, round {} is open", self.round),
            ));
        }
        if *base != self.base {
            return Err(refuse(
                "wrong_base",
                format!(
                    "{what} from {signer} builds on {base}, the round's model is {}",
                    self.base
                ),
            ));
        }
        Ok(())
    }

    /// Checks a payload's parameter count and structure; decoding is left to the fold.
    fn decoder<'p>(
        &self,
        what: &str,
        payload: &'p [u8],
        reference: &fedmesh_protocol::tensor::PayloadRef,
        signer: &MemberId,
    ) -> Result<Decoder<'p>, Refused> {
        let params = self.base_params.len();
        if reference.params != params as u64 {
            return Err(refuse(
                "wrong_layout",
                format!(
                    "{what} from {signer} has {} parameters, the model {params}",
                    reference.params
                ),
            ));
        }
        Decoder::new(payload, reference.encoding, params)
            .map_err(|e| refuse("malformed_payload", e.to_string()))
    }

    fn decode(
        &self,
        what: &str,
        payload: &[u8],
        reference: &fedmesh_protocol::tensor::PayloadRef,
        signer: &MemberId,
    ) -> Result<Vec<f32>, Refused> {
        self.decoder(what, payload, reference, signer)?;
        decode_params(payload, reference.encoding, self.base_params.len())
            .map_err(|e| refuse("malformed_payload", e.to_string()))
    }

    /// Verifies a trainer's delta and folds it in; the payload is the encoded update.
    pub fn accept_delta(
        &mut self,
        delta: Signed<ModelDelta>,
        payload: &[u8],
        members: &Membership,
    ) -> Result<MemberId, Refused> {
        let verified = verify_member(delta, payload, members)?;
        let (signer, body) = (verified.signer(), verified.body());
        self.check_round("delta", &signer, body.round, &body.base_model)?;
        if !self.direct.contains(&signer) {
            return Err(refuse(
                "not_selected",
                format!("{signer} was not selected to send its update to this slot this round"),
            ));
        }
        if let Some(counted) = self.contributions.iter().find(|c| c.member == signer) {
            if counted.delta == body.payload.hash {
                // The same update again (the round was re-opened): already counted, not an error.
                return Ok(signer);
            }
            return Err(refuse("duplicate", format!("{signer} already sent another update")));
        }
        let update = self.decoder("delta", payload, &body.payload, &signer)?;
        self.aggregator
            .add_decoded(&signer.to_peer_id_string(), body.samples as f64, &update)
            .map_err(|e| refuse("rejected_update", e.to_string()))?;
        self.contributions.push(Contribution {
            member: signer,
            delta: body.payload.hash,
            samples: body.samples,
        });
        Ok(signer)
    }

    /// Folds in this node's own update (`member` is this node: no signature to check, and the
    /// update was never encoded).
    pub fn accept_own(
        &mut self,
        member: MemberId,
        samples: u64,
        delta: &[f32],
    ) -> Result<MemberId, Refused> {
        if self.contributions.iter().any(|c| c.member == member) {
            return Ok(member); // kept from an earlier opening of the round
        }
        if delta.len() != self.base_params.len() {
            return Err(refuse(
                "wrong_layout",
                format!(
                    "own update has {} parameters, the model {}",
                    delta.len(),
                    self.base_params.len()
                ),
            ));
        }
        self.aggregator
            .add(&member.to_peer_id_string(), samples as f64, delta)
            .map_err(|e| refuse("rejected_update", e.to_string()))?;
        self.contributions.push(Contribution { member, delta: hash_f32(delta), samples });
        Ok(member)
    }

    /// `contribution` is folded in already.
    fn counted(&self, contribution: &Contribution) -> bool {
        self.contributions.contains(contribution)
    }

    /// Verifies a lower slot's or ring's partial aggregate and folds it in.
    pub fn accept_partial(
        &mut self,
        partial: Signed<PartialAggregate>,
        payload: &[u8],
        members: &Membership,
    ) -> Result<MemberId, Refused> {
        let verified = verify_member(partial, payload, members)?;
        let (signer, body) = (verified.signer(), verified.body());
        self.check_round("partial aggregate", &signer, body.round, &body.base_model)?;
        if body.opened_at_ms != self.opened_at_ms {
            return Err(refuse(
                "stale_opening",
                format!("partial aggregate from {signer} answers an earlier opening of the round"),
            ));
        }
        let key = (signer, body.group.clone());
        let Some(allowed) = self.lower_senders.get(&key) else {
            return Err(refuse(
                "not_selected",
                format!("{signer} does not send group `{}` to this slot this round", body.group),
            ));
        };
        if self.lower_received.contains(&key) {
            if body.contributions.iter().all(|c| self.counted(c)) {
                // The same partial again (the round was re-opened): already counted.
                return Ok(signer);
            }
            return Err(refuse(
                "duplicate",
                format!("{signer} already sent group `{}`", body.group),
            ));
        }
        check_included(&signer, body, allowed, &self.contributions)?;
        let mean = self.decode("partial aggregate", payload, &body.mean, &signer)?;
        let weights =
            body.contributions.iter().map(|c| (c.member.to_peer_id_string(), c.samples as f64));
        let part = Sum::from_mean(&mean, weights.collect())
            .map_err(|e| refuse("rejected_update", e.to_string()))?;
        match &mut self.lower {
            Some(lower) => {
                lower.merge(&part).map_err(|e| refuse("rejected_update", e.to_string()))?
            }
            None => self.lower = Some(part),
        }
        self.lower_received.insert(key);
        self.contributions.extend(body.contributions.iter().copied());
        Ok(signer)
    }

    /// Combines everything folded in: the slot's partial aggregate and the contributions it
    /// includes.
    pub fn finish(self) -> Result<(Sum, Vec<Contribution>), AggregationError> {
        let direct = match self.aggregator.count() {
            0 => None,
            _ => Some(self.aggregator.finish_partial()?),
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

/// Verifies a signed body and the payload beside it, and that its signer is a member of the job.
pub fn verify_member<T: SignedBody + CarriesPayload>(
    signed: Signed<T>,
    payload: &[u8],
    members: &Membership,
) -> Result<Verified<T>, Refused> {
    let verified = signed
        .verify_with_payload(payload, |_, _| Ok(()))
        .map_err(|e| refuse("bad_signature", e.to_string()))?;
    let signer = verified.signer();
    if !members.contains(&signer) {
        return Err(refuse("not_a_member", format!("{signer} is not a member of the job")));
    }
    Ok(verified)
}

/// A partial aggregate may include only the trainers its sender serves, none counted already,
/// and its total weight must be their samples.
fn check_included(
    signer: &MemberId,
    body: &PartialAggregate,
    allowed: &BTreeSet<MemberId>,
    counted: &[Contribution],
) -> Result<(), Refused> {
    if body.contributions.is_empty() {
        return Err(refuse("rejected_update", format!("partial aggregate from {signer} is empty")));
    }
    if let Some(outsider) = body.contributions.iter().find(|c| !allowed.contains(&c.member)) {
        return Err(refuse(
            "not_selected",
            format!(
                "partial aggregate from {signer} includes {}, not of its group",
                outsider.member
            ),
        ));
    }
    if let Some(again) =
        body.contributions.iter().find(|c| counted.iter().any(|k| k.member == c.member))
    {
        return Err(refuse("duplicate", format!("{} is already counted this round", again.member)));
    }
    let samples: f64 = body.contributions.iter().map(|c| c.samples as f64).sum();
    if (samples - body.total_weight).abs() > 1e-6 * samples.max(1.0) {
        return Err(refuse(
            "rejected_update",
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
    use fedmesh_protocol::identity::Identity;
    use fedmesh_protocol::ids::JobId;
    use fedmesh_protocol::message::{Join, TrainMetrics};
    use fedmesh_protocol::tensor::{PayloadRef, TensorEncoding, encode_params};
    use fedmesh_topologies::{MemberInfo, Selection, Tag};

    /// A central job of three members, each with the key its deltas are signed with.
    struct Job {
        id: JobId,
        spec: JobSpec,
        tag: Tag,
        keys: Vec<Identity>,
        members: Membership,
        base: Arc<Vec<f32>>,
    }

    impl Job {
        fn new() -> Self {
            let owner = MemberId([0; 32]).to_string();
            let json = serde_json::json!({"name": "job", "owner": owner, "model": "softmax",
                                          "dataset": "mnist5k"});
            let spec = JobSpec::from_json(&serde_json::to_vec(&json).unwrap()).unwrap();
            let tag = Tag::from_spec(&spec.tag).unwrap();
            let id = JobId(ContentHash::of(b"carry over"));
            let keys: Vec<Identity> = (0..3).map(|_| Identity::generate()).collect();
            let mut members = Membership::default();
            for key in &keys {
                let join = Join {
                    job: id,
                    member: key.member_id(),
                    group: "default".into(),
                    roles: vec![],
                    samples: 10,
                    sent_at_ms: 0,
                };
                members.join(&join, 0);
            }
            Self { id, spec, tag, keys, members, base: Arc::new(vec![0.0; 4]) }
        }

        /// The top slot of round 1 planned over the members `present`, opened at `opened_at_ms`.
        fn slot(&self, present: &[usize], opened_at_ms: u64) -> Collecting {
            let infos: Vec<MemberInfo> = present
                .iter()
                .map(|&i| self.members.info(&self.keys[i].member_id()).unwrap())
                .collect();
            let selection = Selection::from_participation(&self.spec.participation);
            let plan = RoundPlan::compute(&self.tag, &self.id, 1, &infos, &selection).unwrap();
            let opening = Opening {
                round: 1,
                base: ContentHash::of(b"base"),
                base_params: &self.base,
                opened_at_ms,
                deadline_ms: opened_at_ms + 30_000,
            };
            Collecting::new(&self.spec, &plan, 0, &opening).unwrap()
        }

        /// Member `i`'s signed delta (every value `value`) and its payload.
        fn delta(&self, i: usize, value: f32) -> (Signed<ModelDelta>, Vec<u8>) {
            let payload = encode_params(&[value; 4], TensorEncoding::F32Le, None).unwrap();
            let body = ModelDelta {
                job: self.id,
                round: 1,
                base_model: ContentHash::of(b"base"),
                member: self.keys[i].member_id(),
                samples: 10,
                metrics: TrainMetrics { loss: 0.0, accuracy: None },
                payload: PayloadRef::describe(&payload, TensorEncoding::F32Le, 4),
            };
            (Signed::sign(&self.keys[i], body).unwrap(), payload)
        }
    }

    #[test]
    fn a_round_opened_again_over_the_same_members_keeps_the_updates_in() {
        let job = Job::new();
        let mut first = job.slot(&[0, 1, 2], 1_000);
        for (i, value) in [(0, 1.0), (1, 3.0)] {
            let (delta, payload) = job.delta(i, value);
            first.accept_delta(delta, &payload, &job.members).unwrap();
        }
        let mut again = job.slot(&[0, 1, 2], 31_000);
        assert!(again.carry_over(first), "the same plan keeps what it collected");
        assert_eq!(again.contributions.len(), 2);
        // A trainer that sends its update again is counted once; the missing one completes it.
        let (delta, payload) = job.delta(0, 1.0);
        again.accept_delta(delta, &payload, &job.members).unwrap();
        let (delta, payload) = job.delta(2, 5.0);
        again.accept_delta(delta, &payload, &job.members).unwrap();
        assert!(again.complete());
        let (sum, contributions) = again.finish().unwrap();
        assert_eq!(contributions.len(), 3);
        assert_eq!(sum.mean().unwrap(), vec![3.0; 4], "(1 + 3 + 5) / 3, each counted once");
    }

    #[test]
    fn a_round_opened_again_without_a_contributor_starts_over() {
        let job = Job::new();
        let mut first = job.slot(&[0, 1, 2], 1_000);
        let contributor = (0..3)
            .find(|&i| first.direct.contains(&job.keys[i].member_id()))
            .expect("a trainer of the slot");
        let (delta, payload) = job.delta(contributor, 1.0);
        first.accept_delta(delta, &payload, &job.members).unwrap();
        let rest: Vec<usize> = (0..3).filter(|&i| i != contributor).collect();
        let mut again = job.slot(&rest, 31_000);
        assert!(!again.carry_over(first), "its update is no longer expected");
        assert!(again.contributions.is_empty());
    }
}
