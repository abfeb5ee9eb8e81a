//! A trainer's side of a round: following a round's opening, training on the local data off the
//! engine's task, and delivering the signed update where the round's plan sends it.

use super::misbehave::FORGED_DELTAS;
use super::{KeptPayload, OpenRound, local};
use crate::engine::{Engine, Internal};
use crate::identity::peer_of_member;
use crate::network::{Frame, Network};
use fedmesh_federation::member::LocalTraining;
use fedmesh_federation::records::{RoundRecord, RunStatus};
use fedmesh_protocol::codec::{decode_response, encode_request_header};
use fedmesh_protocol::envelope::Signed;
use fedmesh_protocol::ids::{ContentHash, JobId, MemberId, Round};
use fedmesh_protocol::message::{
    Contribution, ModelDelta, Request, Response, RoundOpen, TrainMetrics, unix_millis,
};
use fedmesh_protocol::tensor::{PayloadRef, TensorError, decode_params};
use fedmesh_topologies::{Destination, RoundPlan};
use std::sync::Arc;

impl Engine {
    /// Follows a round's opening: records it, plans the round over the members it names, sets
    /// up the slots and ring this member serves, and trains if it is selected (or sends its
    /// update again when the round was opened again).
    pub(super) async fn on_round_open(&mut self, id: JobId, opener: MemberId, open: RoundOpen) {
        let Some(run) = self.runs.get_mut(&id) else { return };
        let plan = match run.named_members(&open) {
            Ok(members) => run.plan_over(open.round, &members),
            Err(unknown) => {
                return tracing::warn!(job = %id, round = open.round, %unknown, "an opening names a member this node does not know");
            }
        };
        let Some(plan) = plan.filter(|plan| plan.leader() == Some(opener)) else {
            return tracing::warn!(job = %id, round = open.round, %opener, "an opening whose plan another member leads; ignored");
        };
        self.follow_round(id, opener, open, plan).await;
    }

    /// Follows one opening of a round with its plan (elected over the members the opening
    /// names, or assigned by the job's coordinator).
    pub(super) async fn follow_round(
        &mut self,
        id: JobId,
        opener: MemberId,
        open: RoundOpen,
        plan: RoundPlan,
    ) {
        let me = self.identity.member_id();
        let Some(run) = self.runs.get_mut(&id) else { return };
        let result_heard = run.rounds.get(&open.round).is_some_and(|r| r.model.is_some());
        if open.round <= run.state.completed_round || !run.is_active() || result_heard {
            return; // over, or its model is being fetched
        }
        let same_opening = run
            .open
            .as_ref()
            .is_some_and(|o| (o.round, o.opened_at_ms) == (open.round, open.opened_at_ms));
        if same_opening {
            return;
        }
        let plan = Arc::new(plan);
        run.state.status = RunStatus::Running;
        run.open = Some(OpenRound {
            round: open.round,
            opener,
            base: open.base_model,
            deadline_ms: open.deadline_ms,
            opened_at_ms: open.opened_at_ms,
            members: open.members.clone(),
            plan: plan.clone(),
        });
        let record = run.rounds.entry(open.round).or_insert_with(|| {
            RoundRecord::new(open.round, opener, open.base_model, open.opened_at_ms)
        });
        record.aggregator = opener;
        record.opened_at_ms = open.opened_at_ms;
        record.slots = plan.slots.iter().map(|s| (s.id.to_string(), s.aggregator())).collect();
        record.rings = plan.rings.iter().map(|r| (r.label.clone(), r.order.clone())).collect();
        self.collect_slots(id, &plan);
        self.finish_complete_slots(id).await;
        self.take_early_inputs(id).await;
        self.form_ring(id, &plan).await;
        if !plan.trainers.contains(&me) {
            return tracing::debug!(job = %id, round = open.round, "not selected this round");
        }
        let own_update_in = self.holds_own_update(id);
        let Some(run) = self.runs.get_mut(&id) else { return };
        let opening = (opener, open.opened_at_ms);
        let reopened = run.last_update.as_ref().filter(|(update, _, answered)| {
            update.round == open.round
                && update.base_model == open.base_model
                && *answered != opening
        });
        let resend = reopened.and_then(|(update, kept, _)| Some((update.clone(), kept.get()?)));
        if let Some((update, payload)) = resend {
            tracing::info!(job = %id, round = open.round, leader = %opener, "round opened again; sending the update again");
            run.last_update = Some((update.clone(), KeptPayload::keep(&payload), opening));
            return self.deliver_update(id, update, payload).await;
        }
        let finished = LocalTraining::Finished(open.round, open.base_model);
        if run.training == Some(finished) && !own_update_in {
            // Opened again, and this member's update is neither kept here nor in a slot this
            // node aggregates: it trains again.
            tracing::info!(job = %id, round = open.round, "round opened again without this member's update; training again");
            run.training = None;
            run.last_update = None;
        }
        if open.base_model == run.state.model {
            self.start_training(id);
        } else {
            // Behind: fetch the round's base model from its leader first.
            self.fetch_model(id, open.round - 1, open.base_model, opener);
        }
    }

    pub(super) fn start_training(&mut self, id: JobId) {
        let Some(run) = self.runs.get_mut(&id) else { return };
        let Some((round, base)) = run.open.as_ref().map(|open| (open.round, open.base)) else {
            return;
        };
        if run.training.is_some_and(|training| training.is_for(round, base))
            || run.state.model != base
        {
            return;
        }
        run.training = Some(LocalTraining::Running(round, base));
        let (local, params, internal) =
            (run.local.clone(), run.params.clone(), self.internal.clone());
        let (network, delta_bytes) = (self.network.clone(), params.len() * 4);
        tokio::spawn(async move {
            // The delta is a large buffer like a frame being received: it waits for its share
            // of the bulk budget, so an aggregator never holds its own delta and a trainer's
            // at once (for a 100 MB model, the model, the sum and one of those).
            let held = network.reserve(delta_bytes).await;
            let trained = tokio::task::spawn_blocking(move || local.train(&params, round)).await;
            let result = match trained {
                Ok(result) => result.map_err(|e| format!("{e:#}")),
                Err(error) => Err(format!("the training task failed: {error}")),
            };
            let _ = internal.send(Internal::Trained { job: id, round, base, result, held }).await;
        });
    }

    /// Sends a finished local update where the round's plan says (or folds it in, if that is us).
    pub(in crate::engine) async fn on_trained(
        &mut self,
        id: JobId,
        round: Round,
        base: ContentHash,
        result: Result<local::Trained, String>,
    ) {
        if let Some(run) = self.runs.get_mut(&id)
            && run.training == Some(LocalTraining::Running(round, base))
        {
            run.training = Some(LocalTraining::Finished(round, base));
        }
        let mut trained = match result {
            Ok(trained) => trained,
            Err(error) => return tracing::error!(job = %id, round, %error, "local training failed"),
        };
        if trained.delta.iter().any(|v| !v.is_finite()) || !trained.loss.is_finite() {
            return self.fail_diverged(id, round);
        }
        let delta = self.maybe_poison(std::mem::take(&mut trained.delta), round);
        let forges = self.misbehaves(FORGED_DELTAS);
        let me = self.identity.member_id();
        let Some(run) = self.runs.get_mut(&id) else { return };
        if let Some(record) = run.rounds.get_mut(&round) {
            record.train_seconds = Some(trained.seconds);
        }
        let Some(open) = run.open.as_ref().filter(|o| o.round == round && o.base == base) else {
            return tracing::info!(job = %id, round, "round moved on while training; update dropped");
        };
        let opening = (open.opener, open.opened_at_ms);
        tracing::info!(job = %id, round, loss = trained.loss, seconds = trained.seconds, "trained locally");
        if aggregates_own_update(&open.plan, &me) && !forges {
            // Not sent, so neither encoded nor copied: folded in exactly, then dropped.
            let delta = with_residual(run, delta);
            run.last_update = None;
            return self.fold_own_update(id, trained.samples as u64, delta).await;
        }
        let (payload, encoding) = match encode_delta(run, delta) {
            Ok(payload) => (Arc::new(payload), run.spec.delta_encoding.tensor_encoding()),
            Err(error) => return tracing::error!(job = %id, %error, "cannot encode the update"),
        };
        let params = run.params.len();
        let body = ModelDelta {
            job: id,
            round,
            base_model: base,
            member: self.identity.member_id(),
            samples: trained.samples as u64,
            metrics: TrainMetrics { loss: trained.loss, accuracy: None },
            payload: PayloadRef::describe(&payload, encoding, params),
        };
        run.last_update = Some((body.clone(), KeptPayload::keep(&payload), opening));
        self.deliver_update(id, body, payload).await;
    }

    /// Local training on the round's base model gave non-finite values: the global model has
    /// diverged (poisoned updates under plain FedAvg, or a learning rate far too high), and no
    /// honest update can be made from it. The job ends for this node with that reason, rather
    /// than its rounds being retried for ever.
    fn fail_diverged(&mut self, id: JobId, round: Round) {
        let Some(run) = self.runs.get_mut(&id) else { return };
        let reason = format!(
            "the global model diverged: local training on round {round}'s base model gives \
             non-finite values (a robust strategy resists poisoned updates; a smaller lr helps a \
             model that overshoots)"
        );
        tracing::error!(job = %id, round, "{reason}");
        run.state.status = RunStatus::Failed(reason);
        run.leading = None;
        run.slots.clear();
        run.ring = None;
        if let Err(error) = super::store::save_state(&self.store, run) {
            tracing::error!(job = %id, %error, "cannot record the job's failure");
        }
    }

    /// Delivers this member's update where the followed round's plan sends it: to its slot's
    /// aggregator, or into its ring.
    async fn deliver_update(&mut self, id: JobId, body: ModelDelta, payload: Arc<Vec<u8>>) {
        let me = self.identity.member_id();
        let Some(open) = self.runs.get(&id).and_then(|run| run.open.clone()) else { return };
        match open.plan.destination(&me) {
            Some(Destination::Slot(slot)) => {
                let aggregator = open.plan.slots[slot].aggregator();
                self.misbehave_before_delta(id, aggregator, &body, &payload).await;
                self.send_delta(id, aggregator, body, payload).await;
            }
            Some(Destination::Ring(_)) => {
                let delta = match decode_params(
                    &payload,
                    body.payload.encoding,
                    body.payload.params as usize,
                ) {
                    Ok(delta) => delta,
                    Err(error) => {
                        return tracing::error!(job = %id, %error, "cannot decode own update");
                    }
                };
                let own =
                    Contribution { member: me, delta: body.payload.hash, samples: body.samples };
                self.contribute_to_ring(id, &delta, own).await;
            }
            None => {
                tracing::warn!(job = %id, round = body.round, "the plan has no destination for this member's update")
            }
        }
    }

    /// Signs a delta and delivers it to `aggregator`.
    pub(super) async fn send_delta(
        &mut self,
        id: JobId,
        aggregator: MemberId,
        body: ModelDelta,
        payload: Arc<Vec<u8>>,
    ) {
        let signed = match Signed::sign(&self.identity, body) {
            Ok(signed) => signed,
            Err(error) => return tracing::error!(job = %id, %error, "cannot sign the update"),
        };
        self.deliver_request(id, aggregator, Request::Delta(signed), payload);
    }

    /// Sends an update request to `to`: over the network, or through the engine's queue when
    /// that is this node (like a peer's, and not recursively from here; from a task, since the
    /// engine must never wait on its own full queue).
    pub(super) fn deliver_request(
        &self,
        id: JobId,
        to: MemberId,
        request: Request,
        payload: Arc<Vec<u8>>,
    ) {
        if to == self.identity.member_id() {
            let internal = self.internal.clone();
            tokio::spawn(async move {
                let _ = internal.send(Internal::OwnRequest { request, payload }).await;
            });
        } else {
            send_request(&self.network, to, request, payload, (id, self.round_deadline(id)));
        }
    }

    /// The deadline of the round this node follows in job `id` (0 when it follows none): an
    /// update that cannot be sent is tried again until then.
    pub(super) fn round_deadline(&self, id: JobId) -> u64 {
        let open = self.runs.get(&id).and_then(|run| run.open.as_ref());
        open.map_or(0, |open| open.deadline_ms)
    }
}

/// The first wait before an update that could not be sent is sent again; it doubles each time.
const FIRST_RETRY_MS: u64 = 1_000;

/// Whether this member's update goes to a slot this node aggregates itself.
fn aggregates_own_update(plan: &RoundPlan, me: &MemberId) -> bool {
    match plan.destination(me) {
        Some(Destination::Slot(slot)) => plan.slots[slot].aggregator() == *me,
        _ => false,
    }
}

/// `delta` plus what earlier deltas did not send (top-k's error feedback), which is then owed
/// no more.
fn with_residual(run: &mut super::JobRun, mut delta: Vec<f32>) -> Vec<f32> {
    if let Some(residual) = run.residual.take().filter(|r| r.len() == delta.len()) {
        delta.iter_mut().zip(&residual).for_each(|(d, r)| *d += r);
    }
    delta
}

/// Encodes a delta as the job says; with error feedback (top-k), what the last delta did not
/// send is added to this one first, and what this one does not send is kept for the next.
fn encode_delta(run: &mut super::JobRun, delta: Vec<f32>) -> Result<Vec<u8>, TensorError> {
    let encoding = run.spec.delta_encoding;
    let layout = run.local.model.layout();
    if !encoding.carries_residual() {
        return encoding.encode(&delta, &layout);
    }
    let mut delta = with_residual(run, delta);
    let payload = encoding.encode(&delta, &layout)?;
    let sent = decode_params(&payload, encoding.tensor_encoding(), delta.len())?;
    delta.iter_mut().zip(&sent).for_each(|(d, s)| *d -= s);
    run.residual = Some(delta);
    Ok(payload)
}

/// Sends a request with a payload and waits for the answer.
pub(super) async fn request_with_payload(
    network: &Network,
    to: MemberId,
    request: &Request,
    payload: &Arc<Vec<u8>>,
) -> anyhow::Result<Response> {
    let frame = Frame::new(encode_request_header(request, payload.len())?, payload.clone());
    let (bytes, _) = network.request(peer_of_member(&to)?, frame).await?.into_received();
    let (response, _) = decode_response(bytes)?;
    Ok(response)
}

/// Sends a request with a payload in the background and logs the answer. A request that
/// fails (the peer is unreachable, or too loaded to answer in time) is sent again, after a wait
/// that doubles, while the round's deadline allows; the receiver counts an update it already has
/// once.
pub(super) fn send_request(
    network: &Network,
    to: MemberId,
    request: Request,
    payload: Arc<Vec<u8>>,
    (id, until_ms): (JobId, u64),
) {
    let network = network.clone();
    tokio::spawn(async move {
        let mut wait_ms = FIRST_RETRY_MS + rand::random_range(0..FIRST_RETRY_MS);
        loop {
            match request_with_payload(&network, to, &request, &payload).await {
                Ok(Response::Accepted) => return tracing::debug!(job = %id, %to, "update accepted"),
                Ok(Response::Refused { reason }) => {
                    return tracing::warn!(job = %id, %to, %reason, "update refused");
                }
                Ok(other) => {
                    return tracing::warn!(job = %id, %to, ?other, "unexpected answer to an update");
                }
                Err(error) if unix_millis() + wait_ms < until_ms => {
                    tracing::warn!(job = %id, %to, %error, retry_in_ms = wait_ms, "cannot send the update; trying again");
                }
                Err(error) => {
                    return tracing::warn!(job = %id, %to, %error, "cannot send the update");
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(wait_ms)).await;
            wait_ms *= 2;
        }
    });
}
