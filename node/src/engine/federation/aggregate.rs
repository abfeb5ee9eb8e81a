//! The aggregating side of a round: opening it when this node leads it, the slots this node
//! aggregates (taking deltas and lower partial aggregates, sending its own partial up), the
//! round's deadline (close at quorum or open again over the live members), closing it, and
//! announcing the result again to a member that missed it.

use super::collect::{self, Collecting, Opening, Refused, refuse};
use super::misbehave::WITHHOLD_RESULTS;
use super::{ANNOUNCE_AGAIN_MS, Leading, encode_model};
use crate::engine::{Engine, Internal};
use fedmesh_federation::records::RunStatus;
use fedmesh_protocol::envelope::{Signed, Verified};
use fedmesh_protocol::ids::{ContentHash, JobId, MemberId, Round};
use fedmesh_protocol::message::{
    Contribution, GossipMessage, ModelDelta, PartialAggregate, Request, Response, RoundOpen,
    unix_millis,
};
use fedmesh_protocol::tensor::{PayloadRef, TensorEncoding};
use fedmesh_topologies::RoundPlan;

/// A partial aggregate's round, base model, opening and group label.
pub type PartOf = (Round, ContentHash, u64, String);

/// Most inputs kept for a round whose opening has not arrived.
const MAX_EARLY_INPUTS: usize = 64;

/// An input that arrived before the opening of its round (its sender heard the opening first).
pub enum EarlyInput {
    Delta(Verified<ModelDelta>, Vec<u8>),
    Partial(Verified<PartialAggregate>, Vec<u8>),
}

impl Engine {
    /// Opens `round` if the live plan makes this node its leader.
    pub(super) async fn maybe_open(&mut self, id: JobId, round: Round) {
        let me = self.identity.member_id();
        let now = unix_millis();
        let Some(run) = self.runs.get_mut(&id) else { return };
        if round > run.spec.hyperparameters.rounds || run.state.completed_round + 1 != round {
            return;
        }
        if run.rounds.get(&round).is_some_and(|record| record.model.is_some()) {
            return; // its result is heard: its model is being taken
        }
        if run.orchestrated(now) {
            return self.follow_assignment(id, round).await;
        }
        let Some((plan, members)) = run.live_plan_with_members(round, now) else { return };
        if plan.leader() != Some(me) {
            return;
        }
        if let Err(error) = fedmesh_aggregation::Aggregator::from_spec(&run.spec.strategy, 1, round)
        {
            run.state.status = RunStatus::Failed(error.to_string());
            return tracing::error!(job = %id, %error, "cannot aggregate this job");
        }
        run.leading = Some(Leading {
            round,
            base: run.state.model,
            required: run.spec.quorum.required(plan.trainers.len()),
            members,
            opened_at_ms: now,
            deadline_ms: now + run.spec.round_deadline_secs * 1000,
            retries: 0,
        });
        tracing::info!(job = %id, round, trainers = plan.trainers.len(), slots = plan.slots.len(), rings = plan.rings.len(), "opening round as its leader");
        self.announce_round(id).await;
    }

    /// Publishes the led round's opening, and follows it as a member too.
    pub(super) async fn announce_round(&mut self, id: JobId) {
        let Some(leading) = self.runs.get(&id).and_then(|run| run.leading.as_ref()) else {
            return;
        };
        let open = RoundOpen {
            job: id,
            round: leading.round,
            base_model: leading.base,
            deadline_ms: leading.deadline_ms,
            opened_at_ms: leading.opened_at_ms,
            members: leading.members.clone(),
        };
        self.publish_signed(id, open.clone(), GossipMessage::RoundOpen).await;
        self.on_round_open(id, self.identity.member_id(), open).await;
    }

    /// Sets up the slots `plan` makes this node aggregate in the round it now follows.
    pub(super) fn collect_slots(&mut self, id: JobId, plan: &RoundPlan) {
        let me = self.identity.member_id();
        let Some(run) = self.runs.get_mut(&id) else { return };
        let Some(open) = run.open.clone() else { return };
        let opening = Opening {
            round: open.round,
            base: open.base,
            num_params: run.params.len(),
            opened_at_ms: open.opened_at_ms,
            deadline_ms: open.deadline_ms,
        };
        let mut earlier = std::mem::take(&mut run.slots);
        for (index, slot) in plan.slots.iter().enumerate() {
            if slot.aggregator() != me {
                continue;
            }
            let mut collecting = match Collecting::new(&run.spec, plan, index, &opening) {
                Ok(collecting) => collecting,
                Err(error) => {
                    tracing::error!(job = %id, %error, "cannot aggregate a slot");
                    continue;
                }
            };
            if let Some(position) = earlier.iter().position(|e| e.label == collecting.label) {
                let label = collecting.label.clone();
                if collecting.carry_over(earlier.swap_remove(position)) {
                    let kept = collecting.contributions.len();
                    tracing::info!(job = %id, round = open.round, slot = %label, kept, "round opened again; keeping the updates already in");
                }
            }
            run.slots.push(collecting);
        }
    }

    /// Finishes the slots that have every input already (kept from an earlier opening).
    pub(super) async fn finish_complete_slots(&mut self, id: JobId) {
        let complete: Vec<usize> = self.runs.get(&id).map_or_else(Vec::new, |run| {
            let done = |slot: &&Collecting| slot.complete() && !slot.contributions.is_empty();
            run.slots.iter().filter(done).map(|slot| slot.slot).collect()
        });
        for slot in complete {
            self.finish_slot(id, slot).await;
        }
    }

    /// The led round's collected updates: how many the top slot has (none in a pure ring).
    fn top_received(&self, id: &JobId) -> usize {
        let run = self.runs.get(id);
        let top = run.and_then(|run| run.slots.iter().find(|slot| slot.parent.is_none()));
        top.map_or(0, |top| top.contributions.len())
    }

    /// At the led round's deadline: close it if quorum was met, else open it again over the
    /// members live now (a lost aggregator or ring member is replaced, trainers re-send).
    pub(super) async fn check_deadline(&mut self, id: JobId, now: u64) {
        let me = self.identity.member_id();
        let received = self.top_received(&id);
        let Some(run) = self.runs.get_mut(&id) else { return };
        let Some(leading) = run.leading.as_ref() else { return };
        if now < leading.deadline_ms || run.closing == Some(leading.round) {
            return; // not yet, or its model is being made
        }
        let round = leading.round;
        let has_top = run.slots.iter().any(|slot| slot.parent.is_none() && slot.round == round);
        if has_top && received >= leading.required && received > 0 {
            return self.close_round(id);
        }
        if run.orchestrated(now) {
            return; // short of its quorum: the coordinator assigns the round again
        }
        let replanned = run.live_plan_with_members(round, now);
        let Some((plan, members)) = replanned.filter(|(plan, _)| plan.leader() == Some(me)) else {
            tracing::warn!(job = %id, round, "round incomplete at its deadline and this node no longer leads it; leaving it to the plan");
            run.leading = None;
            run.slots.clear();
            run.open = None;
            return;
        };
        let required = run.spec.quorum.required(plan.trainers.len());
        let unchanged_top = plan.slots.len() == 1 && plan.rings.is_empty();
        if has_top && unchanged_top && received >= required && received > 0 {
            // Central: the updates in are a quorum of the trainers still live.
            return self.close_round(id);
        }
        let Some(leading) = run.leading.as_mut() else { return };
        leading.retries += 1;
        leading.required = required;
        leading.members = members;
        leading.opened_at_ms = now;
        leading.deadline_ms = now + run.spec.round_deadline_secs * 1000;
        tracing::warn!(job = %id, round, received, required, retry = leading.retries, "round incomplete at its deadline; opening it again over the live members");
        self.announce_round(id).await;
    }

    /// A lower slot whose time is up sends what it has.
    pub(super) async fn check_slot_deadlines(&mut self, id: JobId, now: u64) {
        let due: Vec<usize> = self.runs.get(&id).map_or_else(Vec::new, |run| {
            run.slots
                .iter()
                .filter(|s| s.parent.is_some() && now >= s.deadline_ms)
                .map(|s| s.slot)
                .collect()
        });
        for slot in due {
            self.finish_slot(id, slot).await;
        }
    }

    /// Keeps an input for the round after this node's last one while this node collects
    /// nothing and has not seen that round open: a slot aggregator may hear a round's opening
    /// after its trainers did. Says whether it was kept.
    /// The input is made (its payload copied) only when it is kept.
    fn keep_early(
        &mut self,
        id: JobId,
        round: Round,
        base: ContentHash,
        input: impl FnOnce() -> EarlyInput,
    ) -> bool {
        let Some(run) = self.runs.get_mut(&id) else { return false };
        let next_round = round == run.state.completed_round + 1 && base == run.state.model;
        let unseen = run.open.as_ref().is_none_or(|open| open.round < round);
        if !(run.slots.is_empty() && next_round && unseen) {
            return false;
        }
        if run.early_inputs.len() >= MAX_EARLY_INPUTS {
            run.early_inputs.remove(0);
        }
        run.early_inputs.push(input());
        true
    }

    /// Judges the inputs kept for the round that just opened.
    pub(super) async fn take_early_inputs(&mut self, id: JobId) {
        let early = self.runs.get_mut(&id).map(|run| std::mem::take(&mut run.early_inputs));
        for input in early.unwrap_or_default() {
            match input {
                EarlyInput::Delta(delta, payload) => {
                    Box::pin(self.on_delta_request(delta, &payload)).await;
                }
                EarlyInput::Partial(partial, payload) => {
                    Box::pin(self.on_partial_request(partial, &payload)).await;
                }
            }
        }
    }

    /// Folds in a delta whose signature was verified; a refusal is counted by reason.
    pub(in crate::engine) async fn on_delta_request(
        &mut self,
        delta: Verified<ModelDelta>,
        payload: &[u8],
    ) -> Response {
        let body = delta.body();
        let (round, base) = (body.round, body.base_model);
        let id = body.job;
        let early = || EarlyInput::Delta(delta.clone(), payload.to_vec());
        if self.keep_early(id, round, base, early) {
            return Response::Accepted;
        }
        let member = delta.body().member;
        let result =
            self.slot_for(id, |slot| slot.direct.contains(&member)).and_then(|(run, index)| {
                let members = &run.state.members;
                collect::accept_delta(&mut run.slots[index], delta, payload, members).map(|_| index)
            });
        self.answer_input(id, "delta", result).await
    }

    /// Folds this node's own update into the slot it aggregates.
    pub(super) async fn fold_own_update(&mut self, id: JobId, samples: u64, delta: Vec<f32>) {
        let me = self.identity.member_id();
        let result =
            self.slot_for(id, |slot| slot.direct.contains(&me)).and_then(|(run, index)| {
                run.slots[index].accept_own(me, samples, &delta).map(|()| index)
            });
        drop(delta);
        self.answer_input(id, "delta", result).await;
    }

    /// Whether a slot this node aggregates holds this node's own update.
    pub(super) fn holds_own_update(&self, id: JobId) -> bool {
        let me = self.identity.member_id();
        let slots = self.runs.get(&id).map(|run| run.slots.as_slice()).unwrap_or_default();
        slots.iter().any(|slot| slot.contributions.iter().any(|c| c.member == me))
    }

    /// Folds in a lower slot's or ring's partial aggregate whose signature was verified.
    pub(in crate::engine) async fn on_partial_request(
        &mut self,
        partial: Verified<PartialAggregate>,
        payload: &[u8],
    ) -> Response {
        let body = partial.body();
        let (id, key) = (body.job, (body.aggregator, body.group.clone()));
        let early = || EarlyInput::Partial(partial.clone(), payload.to_vec());
        if self.keep_early(id, body.round, body.base_model, early) {
            return Response::Accepted;
        }
        let result = self.slot_for(id, |slot| slot.lower_senders.contains_key(&key)).and_then(
            |(run, index)| {
                let members = &run.state.members;
                collect::accept_partial(&mut run.slots[index], partial, payload, members)
                    .map(|_| index)
            },
        );
        self.answer_input(id, "partial", result).await
    }

    /// The run and the slot an input claims to be for: the one expecting it, else the first
    /// (whose checks then say what is wrong).
    fn slot_for(
        &mut self,
        id: JobId,
        expects: impl Fn(&Collecting) -> bool,
    ) -> Result<(&mut super::JobRun, usize), Refused> {
        let not_open =
            || refuse("not_aggregating", format!("this node collects no updates for job {id} now"));
        let run = self.runs.get_mut(&id).ok_or_else(not_open)?;
        if run.slots.is_empty() {
            return Err(not_open());
        }
        let index = run.slots.iter().position(expects).unwrap_or(0);
        Ok((run, index))
    }

    /// Answers an input: accepted (finishing its slot when complete) or refused and counted.
    pub(in crate::engine) async fn answer_input(
        &mut self,
        id: JobId,
        kind: &'static str,
        result: Result<usize, Refused>,
    ) -> Response {
        let refused = result.as_ref().err().map(|refused| refused.reason);
        self.metrics.update(&id.to_string(), refused);
        match result {
            Ok(index) => {
                let slot = self.runs.get(&id).and_then(|run| run.slots.get(index));
                if let Some(slot) = slot.filter(|slot| slot.complete()) {
                    // Finished from the engine's queue, once the input that completed it (a
                    // large frame, maybe) is let go: a closing round then holds no update.
                    let (internal, round, slot) = (self.internal.clone(), slot.round, slot.slot);
                    tokio::spawn(async move {
                        let _ =
                            internal.send(Internal::SlotComplete { job: id, round, slot }).await;
                    });
                }
                Response::Accepted
            }
            Err(refused) => {
                tracing::warn!(job = %id, kind, reason = refused.reason, detail = %refused.detail, "refused an update");
                self.metrics.rejected(kind, refused.reason);
                Response::Refused { reason: refused.detail }
            }
        }
    }

    /// Finishes slot `slot` of `round` if it is still collecting and has every input.
    pub(in crate::engine) async fn finish_if_complete(
        &mut self,
        id: JobId,
        round: Round,
        slot: usize,
    ) {
        let slots = self.runs.get(&id).map(|run| run.slots.as_slice()).unwrap_or_default();
        if slots.iter().any(|s| (s.round, s.slot) == (round, slot) && s.complete()) {
            self.finish_slot(id, slot).await;
        }
    }

    /// A slot is done: the top closes the round, a lower slot sends its partial aggregate up.
    async fn finish_slot(&mut self, id: JobId, slot: usize) {
        let Some(run) = self.runs.get_mut(&id) else { return };
        let Some(position) = run.slots.iter().position(|s| s.slot == slot) else { return };
        if run.slots[position].parent.is_none() {
            return self.close_round(id);
        }
        let collecting = run.slots.remove(position);
        if collecting.contributions.is_empty() {
            return tracing::warn!(job = %id, round = collecting.round, slot = %collecting.label, "no update reached this slot in time");
        }
        let (round, base, opened_at, label) =
            (collecting.round, collecting.base, collecting.opened_at_ms, collecting.label.clone());
        let Some(to) = collecting.parent else { return };
        let (sum, contributions) = match collecting.finish() {
            Ok(done) => done,
            Err(error) => {
                return tracing::error!(job = %id, round, %error, "cannot combine the slot");
            }
        };
        let mean = match sum.mean() {
            Ok(mean) => mean,
            Err(error) => {
                return tracing::error!(job = %id, round, %error, "cannot combine the slot");
            }
        };
        tracing::info!(job = %id, round, slot = %label, updates = contributions.len(), %to, "sending the slot's partial aggregate up");
        let part = (round, base, opened_at, label);
        send_partial(self, id, part, to, &mean, sum.total_weight, contributions).await;
    }

    /// Finishes the top slot: the new global model is made from it and stored off the engine's
    /// task, then announced.
    pub(super) fn close_round(&mut self, id: JobId) {
        let Some(run) = self.runs.get_mut(&id) else { return };
        let Some(position) = run.slots.iter().position(|s| s.parent.is_none()) else { return };
        let top = run.slots.remove(position);
        let (round, base, base_params) = (top.round, top.base, run.params.clone());
        self.store_round_model(id, (round, base), true, move || {
            // The sum is dropped as soon as the new model is made from it.
            let (sum, contributions) = top.finish().map_err(|e| e.to_string())?;
            let params = sum.mean_added_to(&base_params).map_err(|e| e.to_string())?;
            Ok((params, contributions))
        });
    }

    /// A member whose heartbeat says it is still in a round this node closed missed the
    /// round's result (it was down, or restarted): the result goes out again, newly signed, at
    /// most once every `ANNOUNCE_AGAIN_MS`.
    pub(super) async fn announce_again(&mut self, id: JobId, their_round: Round, now: u64) {
        if self.misbehaves(WITHHOLD_RESULTS) {
            return;
        }
        let Some(run) = self.runs.get_mut(&id) else { return };
        let Some(ready) = run.announced.as_mut() else { return };
        if their_round > ready.round || now.saturating_sub(run.announced_ms) < ANNOUNCE_AGAIN_MS {
            return;
        }
        run.announced_ms = now;
        ready.sent_at_ms = now;
        let ready = ready.clone();
        tracing::info!(job = %id, round = ready.round, "a member missed the round's result; announcing it again");
        self.publish_signed(id, ready, GossipMessage::AggregateReady).await;
    }
}

/// Signs a slot's or ring's combined update and sends it to the aggregator above (through the
/// engine's queue if that is this node).
pub(super) async fn send_partial(
    engine: &mut Engine,
    id: JobId,
    (round, base_model, opened_at_ms, group): PartOf,
    to: MemberId,
    mean: &[f32],
    total_weight: f64,
    contributions: Vec<Contribution>,
) {
    let payload = match encode_model(mean) {
        Ok(payload) => payload,
        Err(error) => {
            return tracing::error!(job = %id, %error, "cannot encode a partial aggregate");
        }
    };
    let body = PartialAggregate {
        job: id,
        round,
        base_model,
        opened_at_ms,
        group,
        aggregator: engine.identity.member_id(),
        mean: PayloadRef::describe(&payload, TensorEncoding::F32Le, mean.len()),
        total_weight,
        contributions,
    };
    let signed = match Signed::sign(&engine.identity, body) {
        Ok(signed) => signed,
        Err(error) => return tracing::error!(job = %id, %error, "cannot sign a partial aggregate"),
    };
    engine.deliver_request(id, to, Request::Partial(signed), std::sync::Arc::new(payload));
}
