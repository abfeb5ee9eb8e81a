//! Federated rounds: joining and leaving jobs, heartbeats and membership, opening a round as its
//! elected aggregator, training and sending signed deltas, verifying and folding them, closing the
//! round, and fetching and evaluating every global model.

mod collect;
mod gossip;
mod local;
mod membership;
mod misbehave;
mod records;
mod store;

pub use local::{LocalData, Trained};
pub use misbehave::KINDS as MISBEHAVIOURS;
pub use records::{RoundView, RunView};

use super::{Engine, EngineError, Internal};
use crate::identity::peer_of_member;
use crate::network::Network;
use collect::{Collecting, Refused};
use fedmesh_aggregation::Aggregator;
use fedmesh_protocol::codec::{decode_response, encode_gossip, encode_request};
use fedmesh_protocol::envelope::{Signed, SignedBody};
use fedmesh_protocol::ids::{ContentHash, JobId, MemberId, Round};
use fedmesh_protocol::message::{
    AggregateReady, EvalMetrics, EvalReport, GossipMessage, Heartbeat, Join, Leave, ModelDelta,
    Request, Response, RoundOpen, TrainMetrics, unix_millis,
};
use fedmesh_protocol::spec::JobSpec;
use fedmesh_protocol::tensor::{PayloadRef, TensorEncoding, decode_params, encode_params};
use fedmesh_topologies::{RoundPlan, Selection, Tag};
use membership::Membership;
use records::{MemberView, RoundRecord, RunState, RunStatus};
use std::collections::BTreeMap;
use std::sync::Arc;

/// How often a member says it is alive, in milliseconds.
const HEARTBEAT_MS: u64 = 1_000;
/// How often a member repeats its join, so members that started later learn of it.
const REJOIN_MS: u64 = 5_000;
/// How long after a peer subscribes to a job's topic the join is repeated for it.
const JOIN_ECHO_DELAY_MS: u64 = 300;
/// A member not heard from for this long is left out of plans.
const LIVENESS_MS: u64 = 10_000;

/// The gossip topic of one job.
pub fn job_topic(job: &JobId) -> String {
    format!("fedmesh/job/{job}/1")
}

/// Most round messages held until the next join.
const MAX_PENDING: usize = 16;

/// A round message this node's view of the membership cannot accept yet.
enum Pending {
    Open(RoundOpen),
    Ready(AggregateReady),
}

/// A round that is open, as this member follows it.
#[derive(Debug, Clone, Copy)]
struct OpenRound {
    round: Round,
    opener: MemberId,
    base: ContentHash,
    deadline_ms: u64,
}

/// A job this node takes part in.
pub struct JobRun {
    id: JobId,
    spec: JobSpec,
    tag: Tag,
    local: Arc<LocalData>,
    state: RunState,
    /// The decoded global model `state.model`.
    params: Arc<Vec<f32>>,
    rounds: BTreeMap<Round, RoundRecord>,
    open: Option<OpenRound>,
    collecting: Option<Collecting>,
    /// The round and base this member trained on, so it trains once per round.
    trained: Option<(Round, ContentHash)>,
    /// This member's last update, its payload, and the opening it answered (aggregator and
    /// deadline): re-sent when the round is opened again (retried, taken over by another member,
    /// or re-opened by a restarted aggregator).
    last_update: Option<(ModelDelta, Vec<u8>, (MemberId, u64))>,
    heartbeat_sequence: u64,
    last_heartbeat_ms: u64,
    last_join_ms: u64,
    /// Round messages held until the next join.
    pending: Vec<(MemberId, Pending)>,
}

impl JobRun {
    /// A run in `state`, with nothing in flight.
    fn new(
        id: JobId,
        spec: JobSpec,
        tag: Tag,
        local: LocalData,
        state: RunState,
        params: Vec<f32>,
        rounds: BTreeMap<Round, RoundRecord>,
    ) -> Self {
        Self {
            id,
            spec,
            tag,
            local: Arc::new(local),
            state,
            params: Arc::new(params),
            rounds,
            open: None,
            collecting: None,
            trained: None,
            last_update: None,
            heartbeat_sequence: 0,
            last_heartbeat_ms: 0,
            last_join_ms: 0,
            pending: Vec::new(),
        }
    }

    fn is_active(&self) -> bool {
        matches!(self.state.status, RunStatus::Waiting | RunStatus::Running)
    }

    fn live_plan(&self, round: Round, now_ms: u64) -> Option<RoundPlan> {
        let live = self.state.members.live(now_ms, LIVENESS_MS);
        if live.len() < self.spec.participation.min_participants as usize {
            return None;
        }
        let selection = Selection::from_participation(&self.spec.participation);
        match RoundPlan::compute(&self.tag, &self.id, round, &live, &selection) {
            Ok(plan) => Some(plan),
            Err(error) => {
                tracing::warn!(job = %self.id, round, %error, "no plan for the round");
                None
            }
        }
    }

    /// Keeps a round message this node cannot accept yet, to judge it again after the next join
    /// (the oldest is dropped beyond `MAX_PENDING`).
    fn hold(&mut self, signer: MemberId, message: Pending) {
        if self.pending.len() >= MAX_PENDING {
            self.pending.remove(0);
        }
        self.pending.push((signer, message));
    }

    /// Whether this node's live plan for `round` elects `member` as its aggregator.
    fn is_elected(&self, round: Round, member: &MemberId, now_ms: u64) -> bool {
        self.live_plan(round, now_ms).is_some_and(|plan| plan.fetch_from() == Some(*member))
    }

    pub fn view(&self) -> RunView {
        RunView {
            status: self.state.status.label(),
            completed_round: self.state.completed_round,
            rounds_total: self.spec.hyperparameters.rounds,
            model: self.state.model.to_hex(),
            members: self
                .state
                .members
                .all()
                .map(|m| MemberView {
                    id: m.info.id.to_peer_id_string(),
                    group: m.info.group.clone(),
                    samples: m.samples,
                    last_seen_ms: m.last_seen_ms,
                })
                .collect(),
            rounds: self.rounds.values().map(RoundRecord::view).collect(),
        }
    }

    /// The final (or latest) global model with its tensor layout, for export.
    pub fn model(&self) -> (fedmesh_protocol::model::TensorLayout, Arc<Vec<f32>>, Round) {
        (self.local.model.layout(), self.params.clone(), self.state.completed_round)
    }
}

/// Checks that this node can run a job's topology and strategy.
fn supported(spec: &JobSpec) -> Result<Tag, EngineError> {
    let tag = Tag::from_spec(&spec.tag).map_err(|e| EngineError::Invalid(e.to_string()))?;
    if tag.tiers.len() != 2 || tag.ring.is_some() {
        return Err(EngineError::Invalid(format!(
            "job `{}` uses a {}-tier{} topology; this node runs central (two-tier) rounds only",
            spec.name,
            tag.tiers.len(),
            if tag.ring.is_some() { " ring" } else { "" }
        )));
    }
    if spec.strategy.server.is_some() {
        return Err(EngineError::Invalid(
            "strategy.server: server optimizers keep state across rounds, which rotating \
             aggregators do not share yet"
                .to_owned(),
        ));
    }
    Ok(tag)
}

fn encode_model(params: &[f32]) -> Result<Vec<u8>, EngineError> {
    encode_params(params, TensorEncoding::F32Le, None)
        .map_err(|e| EngineError::Invalid(e.to_string()))
}

impl Engine {
    /// Joins a known job: loads this node's data for it, subscribes to its topic and announces
    /// the join.
    pub(super) async fn join_job(&mut self, id: JobId) -> Result<(), EngineError> {
        if self.runs.get(&id).is_some_and(JobRun::is_active) {
            return Ok(());
        }
        let spec = self.jobs.spec(&id).ok_or_else(|| EngineError::NotFound(format!("job {id}")))?;
        let tag = supported(&spec)?;
        let source = self.config.datasets.get(&spec.dataset).ok_or_else(|| {
            EngineError::Invalid(format!(
                "this node has no data set `{}` (add it to the `datasets` setting)",
                spec.dataset
            ))
        })?;
        let local = tokio::task::block_in_place(|| LocalData::load(&spec, source))
            .map_err(|e| EngineError::Invalid(format!("data set `{}`: {e:#}", spec.dataset)))?;
        let params = local.initial_params(spec.seed);
        let blob = encode_model(&params)?;
        let mut batch = self.store.batch();
        let model = batch.put_blob(&blob)?;
        batch.commit()?;
        let state = RunState {
            status: RunStatus::Waiting,
            completed_round: 0,
            model,
            members: Membership::default(),
        };
        let run = JobRun::new(id, spec, tag, local, state, params, BTreeMap::new());
        self.start_run(run).await
    }

    /// Subscribes to a run's topic, announces the join and keeps the run.
    async fn start_run(&mut self, mut run: JobRun) -> Result<(), EngineError> {
        let id = run.id;
        self.network.subscribe(&job_topic(&id)).await?;
        let join = self.own_join(&run);
        run.state.members.join(&join, unix_millis());
        store::save_state(&self.store, &run)?;
        tracing::info!(job = %id, name = %run.spec.name, samples = run.local.train.len(), "joined job");
        self.runs.insert(id, run);
        self.publish_join(id).await;
        Ok(())
    }

    fn own_join(&self, run: &JobRun) -> Join {
        Join {
            job: run.id,
            member: self.identity.member_id(),
            group: self.config.group.clone(),
            roles: self.config.roles.clone(),
            samples: run.local.train.len() as u64,
            sent_at_ms: unix_millis(),
        }
    }

    async fn publish_join(&mut self, id: JobId) {
        let Some(run) = self.runs.get(&id) else { return };
        let join = self.own_join(run);
        if let Some(run) = self.runs.get_mut(&id) {
            run.last_join_ms = join.sent_at_ms;
        }
        self.publish_signed(id, join, GossipMessage::Join).await;
    }

    /// A peer subscribed to a job's topic: it has not heard this member's join (a join published
    /// before the topic's mesh formed reaches nobody), so the join goes out again shortly (a
    /// burst of subscriptions gets one join).
    pub(super) fn on_peer_subscribed(&mut self, topic: &str) {
        let soon = unix_millis().saturating_sub(REJOIN_MS) + JOIN_ECHO_DELAY_MS;
        for run in self.runs.values_mut().filter(|run| run.is_active()) {
            if job_topic(&run.id) == topic {
                run.last_join_ms = run.last_join_ms.min(soon);
            }
        }
    }

    /// Leaves a job: a signed leave on its topic; the run is kept as `left`.
    pub(super) async fn leave_job(&mut self, id: JobId) -> Result<(), EngineError> {
        let Some(run) = self.runs.get_mut(&id) else {
            return Err(EngineError::NotFound(format!("this node is not in job {id}")));
        };
        run.state.status = RunStatus::Left;
        run.collecting = None;
        store::save_state(&self.store, run)?;
        let leave = Leave {
            job: id,
            member: self.identity.member_id(),
            reason: "left by its operator".to_owned(),
            sent_at_ms: unix_millis(),
        };
        self.publish_signed(id, leave, GossipMessage::Leave).await;
        self.network.unsubscribe(&job_topic(&id)).await?;
        tracing::info!(job = %id, "left job");
        Ok(())
    }

    /// Joins a job just learned when the node's policy says so.
    pub(super) async fn maybe_auto_join(&mut self, id: JobId) {
        let Some(spec) = self.jobs.spec(&id) else { return };
        if !self.config.auto_join || !self.config.datasets.contains_key(&spec.dataset) {
            return;
        }
        match self.join_job(id).await {
            Ok(()) => {
                self.join_errors.remove(&id);
            }
            Err(error) => {
                tracing::warn!(job = %id, %error, "cannot join job");
                self.join_errors.insert(id, error.to_string());
            }
        }
    }

    /// Signs `body` and publishes it on the job's topic.
    async fn publish_signed<T: SignedBody>(
        &self,
        id: JobId,
        body: T,
        wrap: fn(Signed<T>) -> GossipMessage,
    ) {
        let encoded = Signed::sign(&self.identity, body).map(wrap).and_then(|m| encode_gossip(&m));
        match encoded {
            Ok(bytes) => {
                if let Err(error) = self.network.publish(&job_topic(&id), bytes).await {
                    tracing::debug!(job = %id, %error, "not published");
                }
            }
            Err(error) => tracing::error!(job = %id, %error, "cannot encode a message"),
        }
    }

    /// Periodic work: heartbeats, re-joins, starting rounds, deadlines.
    pub(super) async fn tick_runs(&mut self) {
        let ids: Vec<JobId> =
            self.runs.iter().filter(|(_, run)| run.is_active()).map(|(id, _)| *id).collect();
        for id in ids {
            self.tick_run(id).await;
        }
    }

    async fn tick_run(&mut self, id: JobId) {
        let now = unix_millis();
        let me = self.identity.member_id();
        let Some(run) = self.runs.get_mut(&id) else { return };
        run.state.members.seen(&me, now);
        let heartbeat_due = now.saturating_sub(run.last_heartbeat_ms) >= HEARTBEAT_MS;
        let join_due = now.saturating_sub(run.last_join_ms) >= REJOIN_MS;
        if heartbeat_due {
            run.last_heartbeat_ms = now;
            run.heartbeat_sequence += 1;
            let heartbeat = Heartbeat {
                job: id,
                member: me,
                round: run.state.completed_round + 1,
                sequence: run.heartbeat_sequence,
                sent_at_ms: now,
            };
            self.publish_signed(id, heartbeat, GossipMessage::Heartbeat).await;
        }
        if join_due {
            self.publish_join(id).await;
        }
        self.check_deadline(id, now).await;
        self.forget_lost_opener(id, now);
        let Some(run) = self.runs.get(&id) else { return };
        if run.is_active() && run.open.is_none() && run.collecting.is_none() {
            let next = run.state.completed_round + 1;
            self.maybe_open(id, next).await;
        }
    }

    /// A round opened by a member that has since gone silent is forgotten after its deadline, so
    /// that the next plan (without that member) elects a new aggregator.
    fn forget_lost_opener(&mut self, id: JobId, now: u64) {
        let Some(run) = self.runs.get_mut(&id) else { return };
        let Some(open) = run.open else { return };
        let alive = run.state.members.live(now, LIVENESS_MS).iter().any(|m| m.id == open.opener);
        if now > open.deadline_ms && !alive {
            tracing::warn!(job = %id, round = open.round, opener = %open.opener, "the round's aggregator went silent; electing another");
            run.open = None;
        }
    }

    /// Opens `round` if the live plan elects this node as its aggregator.
    async fn maybe_open(&mut self, id: JobId, round: Round) {
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
    async fn announce_round(&mut self, id: JobId) {
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
    async fn check_deadline(&mut self, id: JobId, now: u64) {
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

    /// Follows a round's opening: records it and trains if this member is selected.
    async fn on_round_open(&mut self, id: JobId, opener: MemberId, open: RoundOpen) {
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

    fn start_training(&mut self, id: JobId) {
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
    pub(super) async fn on_trained(
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
    async fn send_delta(
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

    /// Verifies a delta from a peer and folds it in; a refusal is counted by reason.
    pub(super) async fn on_delta_request(
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

    async fn accept_delta(
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
    async fn close_round(&mut self, id: JobId) {
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
        self.publish_signed(id, ready.clone(), GossipMessage::AggregateReady).await;
        self.on_aggregate_ready(id, self.identity.member_id(), ready).await;
    }

    fn store_model(&self, params: &[f32]) -> Result<ContentHash, EngineError> {
        let blob = encode_model(params)?;
        let mut batch = self.store.batch();
        let hash = batch.put_blob(&blob)?;
        batch.commit()?;
        Ok(hash)
    }

    /// Records a round's result and takes its model (fetching it first if needed).
    async fn on_aggregate_ready(&mut self, id: JobId, aggregator: MemberId, ready: AggregateReady) {
        let Some(run) = self.runs.get_mut(&id) else { return };
        if ready.round <= run.state.completed_round {
            return;
        }
        let record = run.rounds.entry(ready.round).or_insert_with(|| {
            RoundRecord::new(ready.round, aggregator, ready.base_model, ready.sent_at_ms)
        });
        record.model = Some(ready.model);
        record.participants = ready.contributions.len();
        record.closed_at_ms = Some(ready.sent_at_ms);
        if run.open.is_some_and(|open| open.round <= ready.round) {
            run.open = None;
        }
        match self.store.blob(&ready.model) {
            Ok(Some(bytes)) => self.adopt_model(id, ready.round, ready.model, &bytes).await,
            _ => self.fetch_model(id, ready.round, ready.model, aggregator),
        }
    }

    /// Fetches a model blob from `peer` in the background.
    /// Fetches a model blob in the background: from `peer` first, then from the other live
    /// members (any member that took the model holds it), until one has it.
    fn fetch_model(&self, id: JobId, round: Round, model: ContentHash, peer: MemberId) {
        let me = self.identity.member_id();
        let others: Vec<MemberId> = self.runs.get(&id).map_or_else(Vec::new, |run| {
            let live = run.state.members.live(unix_millis(), LIVENESS_MS);
            live.into_iter().map(|m| m.id).filter(|m| *m != peer && *m != me).collect()
        });
        let (network, internal) = (self.network.clone(), self.internal.clone());
        tokio::spawn(async move {
            let mut result = Err("no member to fetch it from".to_owned());
            for source in std::iter::once(peer).chain(others) {
                result = fetch_blob(&network, source, model).await;
                match &result {
                    Ok(_) => break,
                    Err(error) => {
                        tracing::debug!(%source, %model, %error, "model not fetched; trying another member")
                    }
                }
            }
            let _ = internal.send(Internal::ModelFetched { job: id, round, model, result }).await;
        });
    }

    pub(super) async fn on_model_fetched(
        &mut self,
        id: JobId,
        round: Round,
        model: ContentHash,
        result: Result<Vec<u8>, String>,
    ) {
        match result {
            Ok(bytes) => {
                let mut batch = self.store.batch();
                let stored = batch.put_blob(&bytes).and_then(|_| batch.commit());
                if let Err(error) = stored {
                    return tracing::error!(job = %id, %error, "cannot store a fetched model");
                }
                self.adopt_model(id, round, model, &bytes).await;
            }
            Err(error) => {
                tracing::warn!(job = %id, round, %model, %error, "cannot fetch the model")
            }
        }
    }

    /// Makes `model` (the result of `round`) the current global model, evaluates it, and moves
    /// on: training if a round on it is open, opening the next if this node is elected.
    async fn adopt_model(&mut self, id: JobId, round: Round, model: ContentHash, bytes: &[u8]) {
        let me = self.identity.member_id();
        let Some(run) = self.runs.get_mut(&id) else { return };
        if round < run.state.completed_round
            || (round == run.state.completed_round && model == run.state.model)
        {
            return;
        }
        let params = match decode_params(bytes, TensorEncoding::F32Le, run.params.len()) {
            Ok(params) => params,
            Err(error) => {
                return tracing::warn!(job = %id, round, %error, "model does not fit the job's layout");
            }
        };
        run.params = Arc::new(params);
        run.state.model = model;
        run.state.completed_round = round;
        if round >= run.spec.hyperparameters.rounds {
            run.state.status = RunStatus::Completed;
            tracing::info!(job = %id, rounds = round, %model, "job complete");
        }
        let evaluation = run.local.evaluate(&run.params);
        let metrics = match evaluation {
            Ok(e) => EvalMetrics {
                loss: Some(e.loss),
                accuracy: Some(e.accuracy),
                samples: e.samples as u64,
            },
            Err(error) => {
                tracing::warn!(job = %id, round, %error, "cannot evaluate the model");
                EvalMetrics::default()
            }
        };
        if round > 0 {
            run.rounds
                .entry(round)
                .or_insert_with(|| RoundRecord::new(round, me, model, unix_millis()))
                .evaluations
                .insert(me, metrics);
            tracing::info!(job = %id, round, accuracy = ?metrics.accuracy, loss = ?metrics.loss, "evaluated global model");
        }
        if let Err(error) = store::save_state(&self.store, run)
            .and_then(|()| store::save_round(&self.store, run, round))
        {
            tracing::error!(job = %id, %error, "cannot record the round");
        }
        if round > 0 {
            let report = EvalReport {
                job: id,
                round,
                model,
                member: me,
                metrics,
                sent_at_ms: unix_millis(),
            };
            self.publish_signed(id, report, GossipMessage::EvalReport).await;
        }
        self.start_training(id);
        self.maybe_open(id, round + 1).await;
    }

    /// The job's views for the admin API.
    pub(super) fn run_view(&self, id: &JobId) -> Option<RunView> {
        self.runs.get(id).map(JobRun::view)
    }

    pub(super) fn job_run(&self, id: &JobId) -> Option<&JobRun> {
        self.runs.get(id)
    }

    /// Loads the runs this node took part in before a restart and rejoins the active ones.
    pub(super) async fn resume_runs(&mut self) {
        for (id, state) in store::load_states(&self.store) {
            let Some(spec) = self.jobs.spec(&id) else { continue };
            match self.resume(id, spec, state) {
                Ok(run) if run.is_active() => {
                    if let Err(error) = self.start_run(run).await {
                        tracing::warn!(job = %id, %error, "cannot rejoin");
                    }
                }
                Ok(run) => {
                    self.runs.insert(id, run);
                }
                Err(error) => tracing::warn!(job = %id, %error, "cannot resume job"),
            }
        }
    }

    fn resume(&self, id: JobId, spec: JobSpec, state: RunState) -> Result<JobRun, EngineError> {
        let tag = supported(&spec)?;
        let source = self.config.datasets.get(&spec.dataset).ok_or_else(|| {
            EngineError::Invalid(format!("data set `{}` is no longer configured", spec.dataset))
        })?;
        let local = LocalData::load(&spec, source)
            .map_err(|e| EngineError::Invalid(format!("data set `{}`: {e:#}", spec.dataset)))?;
        let bytes = self.store.blob(&state.model)?.ok_or_else(|| {
            EngineError::NotFound(format!("model {} of job {id} is not in the store", state.model))
        })?;
        let params = decode_params(&bytes, TensorEncoding::F32Le, local.model.num_params())
            .map_err(|e| EngineError::Invalid(e.to_string()))?;
        let rounds = store::load_rounds(&self.store, &id)?;
        tracing::info!(job = %id, round = state.completed_round, status = %state.status.label(), "resumed job from the store");
        Ok(JobRun::new(id, spec, tag, local, state, params, rounds))
    }
}

/// Sends a request with a payload and waits for the answer.
async fn request_with_payload(
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
fn send_request(network: &Network, to: MemberId, request: Request, payload: Vec<u8>, id: JobId) {
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

/// Asks `peer` for a blob and checks it is the one asked for.
async fn fetch_blob(
    network: &Network,
    peer: MemberId,
    hash: ContentHash,
) -> Result<Vec<u8>, String> {
    let fetch = async {
        let bytes = encode_request(&Request::Blob { hash }, &[])?;
        let (response, payload) =
            decode_response(network.request(peer_of_member(&peer)?, bytes).await?)?;
        match response {
            Response::Blob { hash: got } if got == hash => {
                let payload = payload.into_vec();
                fedmesh_protocol::tensor::check_blob(&hash, &payload)?;
                Ok(payload)
            }
            other => Err(anyhow::anyhow!("peer answered {other:?}")),
        }
    };
    fetch.await.map_err(|e: anyhow::Error| format!("{e:#}"))
}
