//! Federated rounds: joining and leaving jobs, heartbeats and membership, opening a round as its
//! elected aggregator, training and sending signed deltas, verifying and folding them, closing the
//! round, and fetching and evaluating every global model.

mod aggregate;
mod collect;
mod external_init;
mod gossip;
mod holders;
mod local;
mod misbehave;
mod missed;
mod models;
mod orchestrated;
mod ring;
mod store;
mod train;
mod work;

pub use fedmesh_federation::records::{RoundView, RunView};
pub use local::{LocalData, Trained};
pub use misbehave::KINDS as MISBEHAVIOURS;

use super::{Engine, EngineError};
use aggregate::send_partial;
use collect::Collecting;
pub(in crate::engine) use collect::Refused;
pub(in crate::engine) use collect::Unverified;
use fedmesh_federation::cadence::Cadence;
use fedmesh_federation::membership::Membership;
use fedmesh_federation::records::{MemberView, RoundRecord, RunState, RunStatus};
use fedmesh_federation::ring::RingRun;
use fedmesh_protocol::codec::encode_gossip;
use fedmesh_protocol::envelope::{Signed, SignedBody};
use fedmesh_protocol::ids::{ContentHash, JobId, MemberId, Round};
use fedmesh_protocol::message::{
    AggregateReady, Assignment, GossipMessage, Heartbeat, Join, Leave, ModelDelta, RingChunk,
    RoundOpen, unix_millis,
};
use fedmesh_protocol::spec::JobSpec;
use fedmesh_protocol::strategy::AggregationRule;
use fedmesh_protocol::tensor::{TensorEncoding, decode_params, encode_params};
use fedmesh_topologies::{MemberInfo, RoundPlan, Selection, Tag};
pub(in crate::engine) use gossip::verify;
pub(in crate::engine) use holders::Holders;
use std::collections::BTreeMap;
use std::sync::Arc;
pub(in crate::engine) use work::{CheckedUpdate, RoundModel, UpdatePayload};

/// How long after a peer subscribes to a job's topic the join is repeated for it.
const JOIN_ECHO_DELAY_MS: u64 = 300;
/// How long past a round's deadline its leader has to open it again before members elect
/// another.
const REOPEN_GRACE_MS: u64 = 2_000;
/// How long after announcing a round's result it may go out again for a member that missed it
/// (long enough for members that heard it to fetch the model: their heartbeats still name the
/// round until they have it).
const ANNOUNCE_AGAIN_MS: u64 = 5_000;

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
    Assign(Assignment),
}

/// A round that is open, as this member follows it (one opening of it).
#[derive(Debug, Clone)]
struct OpenRound {
    round: Round,
    opener: MemberId,
    base: ContentHash,
    deadline_ms: u64,
    opened_at_ms: u64,
    /// The members its opening names, and the round's plan over them.
    members: Vec<MemberId>,
    plan: Arc<RoundPlan>,
}

/// A round this node leads: it opened it, watches its deadline and opens it again when it
/// stalls.
#[derive(Debug, Clone)]
struct Leading {
    round: Round,
    base: ContentHash,
    /// Updates the top slot needs to close at the deadline.
    required: usize,
    /// The live members the opening names.
    members: Vec<MemberId>,
    opened_at_ms: u64,
    deadline_ms: u64,
    /// How many times the round was opened again.
    retries: u32,
}

/// A member's last update, its payload as kept, and the opening it answered (opener, time).
type LastUpdate = (ModelDelta, KeptPayload, (MemberId, u64));

/// A sent update's payload, kept to send it again if its round is opened again: a small one in
/// memory, a large one only while a send holds it (once delivered, the aggregator keeps it over
/// a re-opening; a member whose update is gone trains again).
#[derive(Debug, Clone)]
enum KeptPayload {
    InMemory(Arc<Vec<u8>>),
    WhileSending(std::sync::Weak<Vec<u8>>),
}

impl KeptPayload {
    fn keep(payload: &Arc<Vec<u8>>) -> Self {
        if payload.len() >= crate::network::LARGE_FRAME_BYTES {
            Self::WhileSending(Arc::downgrade(payload))
        } else {
            Self::InMemory(payload.clone())
        }
    }

    /// The payload, if it is still held.
    fn get(&self) -> Option<Arc<Vec<u8>>> {
        match self {
            Self::InMemory(payload) => Some(payload.clone()),
            Self::WhileSending(payload) => payload.upgrade(),
        }
    }
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
    /// The round this node leads, if any.
    leading: Option<Leading>,
    /// The round whose model this node is making and storing off the engine's task.
    closing: Option<Round>,
    /// The slots this node aggregates in the round it follows.
    slots: Vec<Collecting>,
    /// This node's ring all-reduce in the round it follows.
    ring: Option<RingRun>,
    /// Ring chunks that arrived before the opening they belong to.
    early_chunks: Vec<(Signed<RingChunk>, Vec<u8>)>,
    /// Deltas and partial aggregates for the next round that arrived before its opening.
    early_inputs: Vec<aggregate::EarlyInput>,
    /// The round and base this member trained on, so it trains once per round.
    trained: Option<(Round, ContentHash)>,
    /// This member's last update, its payload, and the opening it answered (opener and opening
    /// time): sent again when the round is opened again (retried, taken over by another member,
    /// or re-opened by a restarted aggregator).
    last_update: Option<LastUpdate>,
    /// What this member's deltas have not sent yet (top-k error feedback).
    residual: Option<Vec<f32>>,
    heartbeat_sequence: u64,
    last_heartbeat_ms: u64,
    last_join_ms: u64,
    /// Round messages held until the next join.
    pending: Vec<(MemberId, Pending)>,
    /// The result of the last round this node aggregated, as it announced it (also in the
    /// store): announced again, newly signed, when a member's heartbeat shows it missed it.
    announced: Option<AggregateReady>,
    /// When `announced` last went out.
    announced_ms: u64,
    /// The newest round result this node took from another member, as that member signed it:
    /// passed on to a member that asks for it (see `missed`).
    taken_result: Option<Signed<AggregateReady>>,
    /// The round each member's last heartbeat said it is in.
    rounds_heard: BTreeMap<MemberId, Round>,
    /// The opening (round, time) whose missed result this node last asked for.
    result_asked: Option<(Round, u64)>,
    /// In orchestration mode: the coordinator's latest assignment, and when it was last heard
    /// from (an assignment or a heartbeat).
    assigned: Option<orchestrated::Assigned>,
    coordinator_seen_ms: u64,
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
            leading: None,
            closing: None,
            slots: Vec::new(),
            ring: None,
            early_chunks: Vec::new(),
            early_inputs: Vec::new(),
            trained: None,
            last_update: None,
            residual: None,
            heartbeat_sequence: 0,
            last_heartbeat_ms: 0,
            last_join_ms: 0,
            pending: Vec::new(),
            announced: None,
            announced_ms: 0,
            taken_result: None,
            rounds_heard: BTreeMap::new(),
            result_asked: None,
            assigned: None,
            coordinator_seen_ms: unix_millis(),
        }
    }

    fn is_active(&self) -> bool {
        matches!(self.state.status, RunStatus::Waiting | RunStatus::Running)
    }

    /// How often this job's members speak, and how long silence is tolerated.
    fn cadence(&self) -> Cadence {
        Cadence::for_members(self.state.members.len())
    }

    fn live_plan(&self, round: Round, now_ms: u64) -> Option<RoundPlan> {
        self.live_plan_with_members(round, now_ms).map(|(plan, _)| plan)
    }

    /// The plan over the members live now, and who they are.
    fn live_plan_with_members(
        &self,
        round: Round,
        now_ms: u64,
    ) -> Option<(RoundPlan, Vec<MemberId>)> {
        let live = self.state.members.live_at(now_ms);
        if live.len() < self.spec.participation.min_participants as usize {
            return None;
        }
        let plan = self.plan_over(round, &live)?;
        Some((plan, live.iter().map(|m| m.id).collect()))
    }

    fn plan_over(&self, round: Round, members: &[MemberInfo]) -> Option<RoundPlan> {
        let selection = Selection::from_participation(&self.spec.participation);
        match RoundPlan::compute(&self.tag, &self.id, round, members, &selection) {
            Ok(plan) => Some(plan),
            Err(error) => {
                tracing::warn!(job = %self.id, round, %error, "no plan for the round");
                None
            }
        }
    }

    /// The members an opening names, as this node knows them; the first unknown one otherwise.
    fn named_members(&self, open: &RoundOpen) -> Result<Vec<MemberInfo>, MemberId> {
        open.members.iter().map(|id| self.state.members.info(id).ok_or(*id)).collect()
    }

    /// Keeps a round message this node cannot accept yet, to judge it again after the next join
    /// (the oldest is dropped beyond `MAX_PENDING`).
    fn hold(&mut self, signer: MemberId, message: Pending) {
        if self.pending.len() >= MAX_PENDING {
            self.pending.remove(0);
        }
        self.pending.push((signer, message));
    }

    /// The members `round` was planned over: those of the opening this node leads or follows.
    fn planned_members(&self, round: Round) -> Vec<MemberId> {
        match (&self.leading, &self.open) {
            (Some(leading), _) if leading.round == round => leading.members.clone(),
            (_, Some(open)) if open.round == round => open.members.clone(),
            _ => Vec::new(),
        }
    }

    /// Whether a round's result comes from the aggregator of the plan over the members it
    /// names, and leaves out no member this node sees live but itself: how a member that missed
    /// the round (it was down, or the job ended while it restarted) takes the result of a round
    /// whose opening it never followed.
    fn vouches_for(&self, ready: &AggregateReady, signer: &MemberId, me: &MemberId) -> bool {
        let named: Option<Vec<MemberInfo>> =
            ready.members.iter().map(|id| self.state.members.info(id)).collect();
        let Some(named) = named else { return false };
        let live = self.state.members.live_at(unix_millis());
        let leaves_out_a_live_member =
            live.iter().any(|m| m.id != *me && !ready.members.contains(&m.id));
        !leaves_out_a_live_member
            && self
                .plan_over(ready.round, &named)
                .is_some_and(|plan| plan.leader() == Some(*signer))
    }

    /// Whether this node's live plan for `round` elects `member` as its aggregator.
    fn is_elected(&self, round: Round, member: &MemberId, now_ms: u64) -> bool {
        self.live_plan(round, now_ms).is_some_and(|plan| plan.leader() == Some(*member))
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
            trainer_error: self.local.trainer_failure(),
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
    let plain_mean = spec.strategy.rule == AggregationRule::FedAvg
        && spec.strategy.clip_norm.is_none()
        && spec.strategy.noise_multiplier.is_none();
    if tag.ring.is_some() && !plain_mean {
        return Err(EngineError::Invalid(format!(
            "job `{}`: a ring all-reduce computes the plain weighted mean of its members' updates; \
             strategy.rule must be fedavg, without clip_norm or noise_multiplier",
            spec.name
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
        let trainers = self.config.trainer_settings();
        let local =
            tokio::task::block_in_place(|| LocalData::load(id, &spec, source, &trainers))
                .map_err(|e| EngineError::Invalid(format!("data set `{}`: {e:#}", spec.dataset)))?;
        let params = self.initial_model(&spec, &local).await?;
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
        let now = unix_millis();
        for run in self.runs.values_mut().filter(|run| run.is_active()) {
            if job_topic(&run.id) == topic {
                let soon = now.saturating_sub(run.cadence().rejoin_ms()) + JOIN_ECHO_DELAY_MS;
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
        run.leading = None;
        run.slots.clear();
        run.ring = None;
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
        if self.coordinates(&spec) {
            if let Err(error) = self.coordinate(id).await {
                tracing::error!(job = %id, %error, "cannot coordinate job");
            }
            return;
        }
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
    pub(in crate::engine) async fn publish_signed<T: SignedBody>(
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
        let cadence = run.cadence();
        let heartbeat_due = now.saturating_sub(run.last_heartbeat_ms) >= cadence.heartbeat_ms();
        let join_due = now.saturating_sub(run.last_join_ms) >= cadence.rejoin_ms();
        if heartbeat_due {
            run.last_heartbeat_ms = now;
            run.heartbeat_sequence += 1;
            let heartbeat = Heartbeat {
                job: id,
                member: me,
                round: run.state.completed_round + 1,
                model: run.state.model,
                sequence: run.heartbeat_sequence,
                sent_at_ms: now,
            };
            self.publish_signed(id, heartbeat, GossipMessage::Heartbeat).await;
        }
        if join_due {
            self.publish_join(id).await;
        }
        self.check_deadline(id, now).await;
        self.check_slot_deadlines(id, now).await;
        self.ask_for_missed_result(id, now);
        self.forget_lost_opener(id, now);
        let Some(run) = self.runs.get(&id) else { return };
        if run.is_active() && run.open.is_none() && run.leading.is_none() {
            let next = run.state.completed_round + 1;
            self.maybe_open(id, next).await;
        }
    }

    /// A round whose opening is past its deadline (and the grace its leader has to open it
    /// again) is forgotten when its leader went silent or no longer leads it in this node's live
    /// plan, so that the member the plan elects now opens it.
    fn forget_lost_opener(&mut self, id: JobId, now: u64) {
        let Some(run) = self.runs.get_mut(&id) else { return };
        let Some(open) = run.open.as_ref() else { return };
        if now <= open.deadline_ms + REOPEN_GRACE_MS || run.leading.is_some() {
            return;
        }
        if run.orchestrated(now) {
            return; // the coordinator assigns the round again
        }
        let (round, opener) = (open.round, open.opener);
        let alive = run.state.members.live_at(now).iter().any(|m| m.id == opener);
        let still_leads = run.is_elected(round, &opener, now);
        if !alive || !still_leads {
            tracing::warn!(job = %id, round, %opener, alive, "the round's leader went silent or no longer leads it; electing another");
            run.open = None;
        }
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
                    // A round this node closed and announced, but was stopped before taking.
                    let unfinished =
                        run.announced.clone().filter(|r| r.round > run.state.completed_round);
                    if let Err(error) = self.start_run(run).await {
                        tracing::warn!(job = %id, %error, "cannot rejoin");
                    }
                    if let Some(ready) = unfinished {
                        self.on_aggregate_ready(id, self.identity.member_id(), ready).await;
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
        let local = LocalData::load(id, &spec, source, &self.config.trainer_settings())
            .map_err(|e| EngineError::Invalid(format!("data set `{}`: {e:#}", spec.dataset)))?;
        let bytes = self.store.blob(&state.model)?.ok_or_else(|| {
            EngineError::NotFound(format!("model {} of job {id} is not in the store", state.model))
        })?;
        let params = decode_params(&bytes, TensorEncoding::F32Le, local.model.num_params())
            .map_err(|e| EngineError::Invalid(e.to_string()))?;
        let rounds = store::load_rounds(&self.store, &id)?;
        let announced = store::load_announced(&self.store, &id)?;
        tracing::info!(job = %id, round = state.completed_round, status = %state.status.label(), "resumed job from the store");
        Ok(JobRun { announced, ..JobRun::new(id, spec, tag, local, state, params, rounds) })
    }
}
