//! The aggregator's side of a round: opening it when this node is elected, taking and checking
//! deltas, the deadline (close at quorum or re-open), closing it and storing the new model, and
//! announcing the result again to a member that missed it.

use super::collect::{Collecting, Refused};
use super::records::RunStatus;
use super::{ANNOUNCE_AGAIN_MS, encode_model, store};
use crate::engine::{Engine, EngineError};
use fedmesh_aggregation::Aggregator;
use fedmesh_protocol::envelope::Signed;
use fedmesh_protocol::ids::{ContentHash, JobId, MemberId, Round};
use fedmesh_protocol::message::{
    AggregateReady, EvalMetrics, GossipMessage, ModelDelta, Response, RoundOpen, unix_millis,
};

impl Engine {
    /// Opens `round` if the live plan elects this node as its aggregator.
    pub(super) async fn maybe_open(&mut self, id: JobId, round: Round) {
        let me = self.identity.member_id();
        let now = unix_millis();
        let Some(run) = self.runs.get_mut(&id) else { return };
        if round > run.spec.hyperparameters.rounds || run.state.completed_round + 1 != round {
            return;
        }
        let Some(plan) = run.live_plan(round, now) else { return };
        if plan.fetch_from() != Some(me) {
            return;
        }
        let aggregator = match Aggregator::from_spec(&run.spec.strategy, run.params.len(), round) {
            Ok(aggregator) => aggregator,
            Err(error) => {
                run.state.status = RunStatus::Failed(error.to_string());
                return tracing::error!(job = %id, %error, "cannot aggregate this job");
            }
        };
        let expected: std::collections::BTreeSet<MemberId> =
            plan.trainers.iter().copied().collect();
        let deadline_ms = now + run.spec.round_deadline_secs * 1000;
        run.collecting = Some(Collecting {
            round,
            base: run.state.model,
            base_params: run.params.clone(),
            aggregator,
            required: run.spec.quorum.required(expected.len()),
            expected,
            contributions: Vec::new(),
            opened_at_ms: now,
            deadline_ms,
            retries: 0,
        });
        tracing::info!(job = %id, round, trainers = plan.trainers.len(), "opening round as its aggregator");
        self.announce_round(id).await;
    }

    /// Publishes the collecting round's opening, and follows it as a member too.
    pub(super) async fn announce_round(&mut self, id: JobId) {
        let Some(collecting) = self.runs.get(&id).and_then(|run| run.collecting.as_ref()) else {
            return;
        };
        let open = RoundOpen {
            job: id,
            round: collecting.round,
            base_model: collecting.base,
            deadline_ms: collecting.deadline_ms,
            opened_at_ms: collecting.opened_at_ms,
        };
        self.publish_signed(id, open.clone(), GossipMessage::RoundOpen).await;
        self.on_round_open(id, self.identity.member_id(), open).await;
    }

    /// At a collecting round's deadline: close it if quorum was met, else open it again.
    pub(super) async fn check_deadline(&mut self, id: JobId, now: u64) {
        let me = self.identity.member_id();
        let Some(run) = self.runs.get_mut(&id) else { return };
        let Some((round, deadline_ms, received, required)) = run
            .collecting
            .as_ref()
            .map(|c| (c.round, c.deadline_ms, c.contributions.len(), c.required))
        else {
            return;
        };
        if now < deadline_ms {
            return;
        }
        if received >= required {
            return self.close_round(id).await;
        }
        // Re-plan over who is live now: another member may be the aggregator by now, and members
        // that went silent are no longer waited for.
        let plan = run.live_plan(round, now).filter(|plan| plan.fetch_from() == Some(me));
        let Some(plan) = plan else {
            tracing::warn!(job = %id, round, "no quorum at the deadline and this node is no longer the elected aggregator; leaving the round to the plan");
            run.collecting = None;
            run.open = None;
            return;
        };
        let required = run.spec.quorum.required(plan.trainers.len());
        let next_deadline = now + run.spec.round_deadline_secs * 1000;
        let Some(collecting) = run.collecting.as_mut() else { return };
        collecting.expected = plan.trainers.iter().copied().collect();
        collecting.required = required;
        if received >= required {
            return self.close_round(id).await;
        }
        collecting.retries += 1;
        collecting.deadline_ms = next_deadline;
        tracing::warn!(
            job = %id,
            round,
            received,
            required,
            retry = collecting.retries,
            "round has no quorum at its deadline; retrying it"
        );
        self.announce_round(id).await;
    }

    /// Verifies a delta from a peer and folds it in; a refusal is counted by reason.
    pub(in crate::engine) async fn on_delta_request(
        &mut self,
        delta: Signed<ModelDelta>,
        payload: &[u8],
    ) -> Response {
        let id = delta.unverified_body().job;
        match self.accept_delta(id, delta, payload).await {
            Ok(()) => Response::Accepted,
            Err(refused) => {
                tracing::warn!(job = %id, reason = refused.reason, detail = %refused.detail, "refused a delta");
                self.metrics.rejected("delta", refused.reason);
                Response::Refused { reason: refused.detail }
            }
        }
    }

    pub(super) async fn accept_delta(
        &mut self,
        id: JobId,
        delta: Signed<ModelDelta>,
        payload: &[u8],
    ) -> Result<(), Refused> {
        let not_open = || Refused {
            reason: "not_aggregating",
            detail: format!("this node collects no updates for job {id} now"),
        };
        let run = self.runs.get_mut(&id).ok_or_else(not_open)?;
        let collecting = run.collecting.as_mut().ok_or_else(not_open)?;
        let member = collecting.accept(delta, payload, &run.state.members)?;
        tracing::debug!(job = %id, round = collecting.round, %member, received = collecting.contributions.len(), "folded an update");
        if collecting.complete() {
            self.close_round(id).await;
        }
        Ok(())
    }

    /// Finishes the aggregate, stores the new global model and announces it.
    pub(super) async fn close_round(&mut self, id: JobId) {
        let Some(run) = self.runs.get_mut(&id) else { return };
        let Some(collecting) = run.collecting.take() else { return };
        let round = collecting.round;
        let outcome = match collecting.aggregator.finish() {
            Ok(outcome) => outcome,
            Err(error) => return tracing::error!(job = %id, round, %error, "cannot aggregate"),
        };
        let included: std::collections::BTreeSet<&str> =
            outcome.included.iter().map(|(name, _)| name.as_str()).collect();
        let contributions = collecting
            .contributions
            .into_iter()
            .filter(|c| included.contains(c.member.to_peer_id_string().as_str()))
            .collect();
        let params: Vec<f32> =
            collecting.base_params.iter().zip(&outcome.delta).map(|(p, d)| p + d).collect();
        let model = match self.store_model(&params) {
            Ok(model) => model,
            Err(error) => {
                return tracing::error!(job = %id, round, %error, "cannot store the model");
            }
        };
        let ready = AggregateReady {
            job: id,
            round,
            base_model: collecting.base,
            model,
            contributions,
            metrics: EvalMetrics::default(),
            sent_at_ms: unix_millis(),
        };
        tracing::info!(job = %id, round, model = %model, updates = ready.contributions.len(), "round closed");
        // Kept before it goes out: killed after announcing, this node still knows the result
        // (it takes it at restart) and can announce it again to members that missed it.
        if let Some(run) = self.runs.get_mut(&id) {
            run.announced = Some(ready.clone());
            run.announced_ms = ready.sent_at_ms;
            if let Err(error) = store::save_announced(&self.store, run) {
                return tracing::error!(job = %id, round, %error, "cannot record the round's result");
            }
        }
        self.publish_signed(id, ready.clone(), GossipMessage::AggregateReady).await;
        self.on_aggregate_ready(id, self.identity.member_id(), ready).await;
    }

    /// A member whose heartbeat says it is still in a round this node closed missed the
    /// round's result (it was down, or restarted): the result goes out again, newly signed, at
    /// most once every `ANNOUNCE_AGAIN_MS`.
    pub(super) async fn announce_again(&mut self, id: JobId, their_round: Round, now: u64) {
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

    pub(super) fn store_model(&self, params: &[f32]) -> Result<ContentHash, EngineError> {
        let blob = encode_model(params)?;
        let mut batch = self.store.batch();
        let hash = batch.put_blob(&blob)?;
        batch.commit()?;
        Ok(hash)
    }
}
