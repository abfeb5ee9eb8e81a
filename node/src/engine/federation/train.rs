//! A trainer's side of a round: following a round's opening, training on the local data off the
//! engine's task, and sending the signed delta to the round's aggregator.

use super::records::{RoundRecord, RunStatus};
use super::{OpenRound, encode_model, local};
use crate::engine::{Engine, Internal};
use crate::identity::peer_of_member;
use crate::network::Network;
use fedmesh_protocol::codec::{decode_response, encode_request};
use fedmesh_protocol::envelope::Signed;
use fedmesh_protocol::ids::{ContentHash, JobId, MemberId, Round};
use fedmesh_protocol::message::{
    ModelDelta, Request, Response, RoundOpen, TrainMetrics, unix_millis,
};
use fedmesh_protocol::tensor::{PayloadRef, TensorEncoding};

impl Engine {
    /// Follows a round's opening: records it and trains if this member is selected.
    pub(super) async fn on_round_open(&mut self, id: JobId, opener: MemberId, open: RoundOpen) {
        let me = self.identity.member_id();
        let now = unix_millis();
        let Some(run) = self.runs.get_mut(&id) else { return };
        if open.round <= run.state.completed_round || !run.is_active() {
            return;
        }
        run.state.status = RunStatus::Running;
        run.open = Some(OpenRound {
            round: open.round,
            opener,
            base: open.base_model,
            deadline_ms: open.deadline_ms,
        });
        let record = run.rounds.entry(open.round).or_insert_with(|| {
            RoundRecord::new(open.round, opener, open.base_model, open.opened_at_ms)
        });
        record.aggregator = opener;
        record.opened_at_ms = open.opened_at_ms;
        let selected =
            run.live_plan(open.round, now).is_none_or(|plan| plan.trainers.contains(&me));
        if !selected {
            return tracing::debug!(job = %id, round = open.round, "not selected this round");
        }
        let opening = (opener, open.deadline_ms);
        let reopened = run.last_update.as_ref().filter(|(update, _, answered)| {
            update.round == open.round
                && update.base_model == open.base_model
                && *answered != opening
        });
        if let Some((update, payload, _)) = reopened.cloned() {
            tracing::info!(job = %id, round = open.round, aggregator = %opener, "round opened again; re-sending the update");
            run.last_update = Some((update.clone(), payload.clone(), opening));
            return self.send_delta(id, opener, update, payload).await;
        }
        if open.base_model == run.state.model {
            self.start_training(id);
        } else {
            // Behind: fetch the round's base model from its aggregator first.
            self.fetch_model(id, open.round - 1, open.base_model, opener);
        }
    }

    pub(super) fn start_training(&mut self, id: JobId) {
        let Some(run) = self.runs.get_mut(&id) else { return };
        let Some(open) = run.open else { return };
        if run.trained == Some((open.round, open.base)) || run.state.model != open.base {
            return;
        }
        run.trained = Some((open.round, open.base));
        let (local, params, internal) =
            (run.local.clone(), run.params.clone(), self.internal.clone());
        tokio::task::spawn_blocking(move || {
            let result = local.train(&params, open.round).map_err(|e| format!("{e:#}"));
            let _ = internal.blocking_send(Internal::Trained {
                job: id,
                round: open.round,
                base: open.base,
                result,
            });
        });
    }

    /// Sends a finished local update to the round's aggregator (or folds it in, if that is us).
    pub(in crate::engine) async fn on_trained(
        &mut self,
        id: JobId,
        round: Round,
        base: ContentHash,
        result: Result<local::Trained, String>,
    ) {
        let mut trained = match result {
            Ok(trained) => trained,
            Err(error) => return tracing::error!(job = %id, round, %error, "local training failed"),
        };
        let delta = self.maybe_poison(std::mem::take(&mut trained.delta), round);
        let Some(run) = self.runs.get_mut(&id) else { return };
        if let Some(record) = run.rounds.get_mut(&round) {
            record.train_seconds = Some(trained.seconds);
        }
        let Some(open) = run.open.filter(|o| o.round == round && o.base == base) else {
            return tracing::info!(job = %id, round, "round moved on while training; update dropped");
        };
        let payload = match encode_model(&delta) {
            Ok(payload) => payload,
            Err(error) => return tracing::error!(job = %id, %error, "cannot encode the update"),
        };
        let body = ModelDelta {
            job: id,
            round,
            base_model: base,
            member: self.identity.member_id(),
            samples: trained.samples as u64,
            metrics: TrainMetrics { loss: trained.loss, accuracy: None },
            payload: PayloadRef::describe(&payload, TensorEncoding::F32Le, delta.len()),
        };
        tracing::info!(job = %id, round, loss = trained.loss, seconds = trained.seconds, "trained locally");
        run.last_update = Some((body.clone(), payload.clone(), (open.opener, open.deadline_ms)));
        self.misbehave_before_delta(id, open.opener, &body, &payload).await;
        self.send_delta(id, open.opener, body, payload).await;
    }

    /// Signs a delta and delivers it to `aggregator`.
    pub(super) async fn send_delta(
        &mut self,
        id: JobId,
        aggregator: MemberId,
        body: ModelDelta,
        payload: Vec<u8>,
    ) {
        let signed = match Signed::sign(&self.identity, body) {
            Ok(signed) => signed,
            Err(error) => return tracing::error!(job = %id, %error, "cannot sign the update"),
        };
        if aggregator == self.identity.member_id() {
            // Through the engine's queue, like a peer's delta (and not recursively from here).
            // Sent from a task: the engine must never wait on its own full queue.
            let internal = self.internal.clone();
            tokio::spawn(async move {
                let _ = internal.send(Internal::OwnDelta { delta: signed, payload }).await;
            });
        } else {
            send_request(&self.network, aggregator, Request::Delta(signed), payload, id);
        }
    }
}

/// Sends a request with a payload and waits for the answer.
pub(super) async fn request_with_payload(
    network: &Network,
    to: MemberId,
    request: &Request,
    payload: &[u8],
) -> anyhow::Result<Response> {
    let bytes = encode_request(request, payload)?;
    let (response, _) = decode_response(network.request(peer_of_member(&to)?, bytes).await?)?;
    Ok(response)
}

/// Sends a request with a payload in the background and logs the answer.
pub(super) fn send_request(
    network: &Network,
    to: MemberId,
    request: Request,
    payload: Vec<u8>,
    id: JobId,
) {
    let network = network.clone();
    tokio::spawn(async move {
        match request_with_payload(&network, to, &request, &payload).await {
            Ok(Response::Accepted) => tracing::debug!(job = %id, %to, "update accepted"),
            Ok(Response::Refused { reason }) => {
                tracing::warn!(job = %id, %to, %reason, "update refused")
            }
            Ok(other) => tracing::warn!(job = %id, %to, ?other, "unexpected answer to an update"),
            Err(error) => tracing::warn!(job = %id, %to, %error, "cannot send the update"),
        }
    });
}
