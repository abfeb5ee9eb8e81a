//! A member's part in each job it joined, carried out for the job's state machine
//! (`fedmesh_federation::member::Member`, where every rule of a round lives): the node verifies
//! what arrives (gossip, updates, results, fetched models), hands it to the job's machine as an
//! event, and carries out the effects the machine answers with, the heavy ones off the engine's
//! task.

mod audits;
mod bulk_peers;
mod effects;
mod external_init;
mod gossip;
mod held_inputs;
mod local;
#[cfg(feature = "misbehave")]
mod misbehave;
#[cfg(not(feature = "misbehave"))]
#[path = "well_behaved.rs"]
mod misbehave;
mod model_access;
mod models;
mod pulls;
mod results;
mod store;
mod updates;
mod work;

pub(in crate::engine) use bulk_peers::BulkPeersBuiltFrom;
pub use local::{LocalData, Trained};
pub(in crate::engine) use updates::{Reply, Residual, Unverified};

use super::{Engine, EngineError};
use fedmesh_admin_api::{MemberView, PrivacyView, RoundView, RunView};
use fedmesh_federation::member::{Effect, Event, Member, Refusal, Setup, Snapshot};
use fedmesh_federation::records::{RoundRecord, RunState};
use fedmesh_protocol::envelope::Signed;
use fedmesh_protocol::ids::{ContentHash, JobId, MemberId, Round};
use fedmesh_protocol::message::{AggregateReady, unix_millis};
use fedmesh_protocol::spec::JobSpec;
use fedmesh_protocol::strategy::AggregationRule;
use fedmesh_protocol::tensor::{CheckedBlob, TensorEncoding, decode_params, encode_params};
use fedmesh_topologies::Tag;
pub(in crate::engine) use gossip::{Refused, verify, verify_from};
use libp2p::PeerId;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// The gossip topic of one job.
pub fn job_topic(job: &JobId) -> String {
    format!("fedmesh/job/{job}/1")
}

/// Most ticks handed to a machine in a row because it asked to be woken at once.
const MAX_IMMEDIATE_TICKS: usize = 4;

/// A job this node takes part in: its machine, and what carrying out the machine's effects
/// needs.
pub struct JobRun {
    machine: Member,
    local: Arc<LocalData>,
    /// When the machine next wants a tick.
    wake_at: u64,
    /// Update requests waiting for the machine's answer, by the number the machine was given.
    replies: BTreeMap<u64, (Reply, &'static str)>,
    next_request: u64,
    /// What this member's deltas have not sent yet (top-k error feedback).
    residual: Residual,
    /// The round records and announced result as last persisted: a snapshot writes only what
    /// changed.
    persisted: store::Persisted,
    /// The newest signed results taken from other members, as they signed them (as many as
    /// the machine keeps to serve).
    taken: VecDeque<Signed<AggregateReady>>,
    /// The bulk budget share the machine's early updates hold.
    early_share: held_inputs::EarlyShare,
    /// In a verifiable job, the deltas kept for auditors.
    contributions: Option<audits::SharedContributions>,
    /// The model bytes the newest result taken came with (they hash to its model): the fetch
    /// the machine makes for that model takes them instead of asking the members.
    model_with_result: Option<CheckedBlob<'static>>,
}

impl JobRun {
    fn new(machine: Member, local: LocalData, persisted: store::Persisted) -> Self {
        let verifiable = machine.spec().verification.is_some();
        Self {
            contributions: verifiable.then(audits::SharedContributions::default),
            machine,
            local: Arc::new(local),
            wake_at: 0,
            replies: BTreeMap::new(),
            next_request: 0,
            residual: Residual::default(),
            persisted,
            taken: VecDeque::new(),
            early_share: None,
            model_with_result: None,
        }
    }

    fn id(&self) -> JobId {
        self.machine.job()
    }

    fn is_active(&self) -> bool {
        self.machine.is_active()
    }

    /// Keeps a request's reply (and what kind of request it is, for the refusal metrics) until
    /// the machine answers it; returns the request's number.
    pub(in crate::engine) fn keep_reply(&mut self, reply: Reply, kind: &'static str) -> u64 {
        self.next_request += 1;
        self.replies.insert(self.next_request, (reply, kind));
        self.next_request
    }

    /// The numbers of the update requests waiting for the machine's answer.
    fn waiting_requests(&self) -> Vec<u64> {
        self.replies.keys().copied().collect()
    }

    /// Keeps a signed result the machine accepted from another member (the newest few).
    fn keep_taken(&mut self, signed: Signed<AggregateReady>) {
        if self.taken.iter().any(|kept| kept.unverified_body() == signed.unverified_body()) {
            return;
        }
        if self.taken.len() >= fedmesh_federation::member::RESULTS_KEPT {
            self.taken.pop_front();
        }
        self.taken.push_back(signed);
    }

    pub fn view(&self) -> RunView {
        let state = self.machine.state();
        RunView {
            status: state.status.label(),
            completed_round: state.completed_round,
            rounds_total: self.machine.spec().hyperparameters.rounds,
            model: state.model.to_hex(),
            members: state
                .members
                .all()
                .map(|m| MemberView {
                    id: m.info.id.to_peer_id_string(),
                    group: m.info.group.clone(),
                    samples: m.samples,
                    last_seen_ms: m.last_seen_ms,
                })
                .collect(),
            rounds: self.machine.rounds().values().map(round_view).collect(),
            trainer_error: self.local.trainer_failure(),
            privacy: privacy_view(self.machine.spec(), state.completed_round),
        }
    }

    /// The final (or latest) global model with its tensor layout, for export.
    pub fn model(&self) -> (fedmesh_protocol::model::TensorLayout, Arc<Vec<f32>>, Round) {
        let layout = self.local.model.layout();
        (layout, self.machine.params().clone(), self.machine.completed_round())
    }
}

/// The differential privacy `rounds` completed rounds of `spec` spent, if it adds noise.
fn privacy_view(spec: &JobSpec, rounds: Round) -> Option<PrivacyView> {
    let spent = fedmesh_aggregation::privacy::spent(spec, rounds)?;
    Some(PrivacyView {
        epsilon: spent.epsilon,
        delta: spent.delta,
        noise_multiplier: spent.noise_multiplier,
        sampling: spent.sampling,
        noise: if spent.distributed { "distributed" } else { "central" }.to_owned(),
    })
}

/// A round as the admin API shows it.
fn round_view(record: &RoundRecord) -> RoundView {
    let (loss, accuracy, eval_samples) = record.weighted_metrics();
    RoundView {
        round: record.round,
        aggregator: record.aggregator.to_peer_id_string(),
        model: record.model.map(|m| m.to_hex()),
        participants: record.participants,
        accuracy,
        loss,
        eval_samples,
        evaluations: record.evaluations.len(),
        seconds: record
            .closed_at_ms
            .map(|closed| closed.saturating_sub(record.opened_at_ms) as f64 / 1e3),
        opened_at_ms: record.opened_at_ms,
        closed_at_ms: record.closed_at_ms,
        train_seconds: record.train_seconds,
        slots: record.slots.iter().map(|(slot, m)| (slot.clone(), m.to_peer_id_string())).collect(),
        rings: record
            .rings
            .iter()
            .map(|(ring, order)| {
                (ring.clone(), order.iter().map(MemberId::to_peer_id_string).collect())
            })
            .collect(),
    }
}

/// Checks that this node can run a job's topology and strategy (at join, and when its owner's
/// node announces it).
pub(super) fn supported(spec: &JobSpec) -> Result<Tag, EngineError> {
    let tag = Tag::from_spec(&spec.tag).map_err(|e| EngineError::Invalid(e.to_string()))?;
    let strategy = spec.aggregator_strategy();
    let plain_mean = strategy.rule == AggregationRule::FedAvg
        && strategy.clip_norm.is_none()
        && strategy.noise_multiplier.is_none();
    if tag.ring.is_some() && !plain_mean {
        return Err(EngineError::Invalid(format!(
            "job `{}`: a ring all-reduce computes the plain weighted mean of its members' updates; \
             strategy.rule must be fedavg, without clip_norm or noise_multiplier (unless the \
             trainers draw the noise: privacy.noise distributed)",
            spec.name
        )));
    }
    if let Err(error) = fedmesh_aggregation::Aggregator::from_spec(&spec.strategy, 1, [0; 32]) {
        return Err(EngineError::Invalid(format!("job `{}`: {error}", spec.name)));
    }
    Ok(tag)
}

/// A secure job's masked updates travel inline in one request: its model must fit one.
fn check_secure_size(spec: &JobSpec, params: usize) -> Result<(), EngineError> {
    let limit = fedmesh_protocol::message::MAX_MASKED_VALUES;
    if spec.privacy.secure_aggregation && params > limit {
        return Err(EngineError::Invalid(format!(
            "privacy.secure_aggregation: masked updates travel inline, at most {limit} \
             parameters for now, and job `{}`'s model has {params}",
            spec.name
        )));
    }
    Ok(())
}

fn encode_model(params: &[f32]) -> Result<Vec<u8>, EngineError> {
    encode_params(params, TensorEncoding::F32Le, None)
        .map_err(|e| EngineError::Invalid(e.to_string()))
}

impl Engine {
    /// Joins a known job: loads this node's data for it, stores its initial model, subscribes
    /// to its topic and starts its machine (which announces the join).
    pub(super) async fn join_job(&mut self, id: JobId) -> Result<(), EngineError> {
        if self.runs.get(&id).is_some_and(JobRun::is_active) {
            return Ok(());
        }
        let spec = self.jobs.spec(&id).ok_or_else(|| EngineError::NotFound(format!("job {id}")))?;
        let tag = supported(&spec)?;
        self.check_admitted(&id, &spec)?;
        let local = self.load_local(id, &spec, "add it to the `datasets` setting")?;
        let params = self.initial_model(&spec, &local).await?;
        check_secure_size(&spec, params.len())?;
        let blob = encode_model(&params)?;
        let mut batch = self.store.batch();
        let model = batch.put_blob(&blob)?;
        batch.commit()?;
        let setup = self.setup(id, spec, tag, &local, self.reachable().await);
        let now = unix_millis();
        let (machine, effects) = Member::join(setup, model, Arc::new(params), now);
        tracing::info!(job = %id, name = %machine.spec().name, samples = local.train.len(), "joined job");
        self.start_run(JobRun::new(machine, local, store::Persisted::default()), effects).await
    }

    /// This node's data for a job, loaded from the data set its spec names.
    fn load_local(&self, id: JobId, spec: &JobSpec, hint: &str) -> Result<LocalData, EngineError> {
        let source = self.settings.datasets.get(&spec.dataset).ok_or_else(|| {
            EngineError::Invalid(format!("this node has no data set `{}` ({hint})", spec.dataset))
        })?;
        let trainers = self.settings.trainers.clone();
        tokio::task::block_in_place(|| LocalData::load(id, spec, source, &trainers))
            .map_err(|e| EngineError::Invalid(format!("data set `{}`: {e:#}", spec.dataset)))
    }

    /// Whether peers can dial this node directly, as far as its network knows yet (a node
    /// learns it is behind NAT within seconds of meeting its first peer).
    async fn reachable(&self) -> bool {
        self.network.status().await.is_ok_and(|status| !status.behind_nat)
    }

    /// Who this member is in a job.
    fn setup(
        &self,
        job: JobId,
        spec: JobSpec,
        tag: Tag,
        local: &LocalData,
        reachable: bool,
    ) -> Setup {
        Setup {
            me: self.identity.member_id(),
            job,
            spec,
            tag,
            group: self.settings.group.clone(),
            roles: self.settings.roles.clone(),
            samples: local.train.len() as u64,
            reachable,
            noise_key: rand::random(),
            // A secure round's keys are signed inside the machine's messages.
            identity: Some(self.identity.clone()),
            ticket: self.ticket(&job).unwrap_or_else(|error| {
                tracing::warn!(%job, %error, "cannot read the job's ticket: joining without");
                None
            }),
        }
    }

    /// Subscribes to a run's topic, keeps the run and carries out its machine's first effects.
    async fn start_run(&mut self, run: JobRun, effects: Vec<Effect>) -> Result<(), EngineError> {
        let id = run.id();
        self.network.subscribe(&job_topic(&id)).await?;
        self.runs.insert(id, run);
        self.carry_out(id, effects).await;
        Ok(())
    }

    /// Leaves a job: its machine publishes a signed leave; the run is kept as `left`.
    pub(super) async fn leave_job(&mut self, id: JobId) -> Result<(), EngineError> {
        if !self.runs.contains_key(&id) {
            return Err(EngineError::NotFound(format!("this node is not in job {id}")));
        }
        let reason = "left by its operator".to_owned();
        self.handle(id, Event::LeaveRequested { reason }).await;
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
        if !self.settings.auto_join || !self.settings.datasets.contains_key(&spec.dataset) {
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

    /// Feeds one event to a job's machine and carries out what it answers; then the ticks it
    /// asks for at once. Returns why the machine refused the event's message, if it did.
    pub(in crate::engine) async fn handle(&mut self, id: JobId, event: Event) -> Option<Refusal> {
        let run = self.runs.get_mut(&id)?;
        let effects = run.machine.handle(event, unix_millis());
        let rejected = effects.iter().find_map(|effect| match effect {
            Effect::Rejected(refusal) => Some(refusal.clone()),
            _ => None,
        });
        self.carry_out(id, effects).await;
        self.tick_if_due(id).await;
        self.settle_held_inputs(id).await;
        rejected
    }

    /// Hands a job's machine the ticks it asked for by now (a few in a row at most).
    async fn tick_if_due(&mut self, id: JobId) {
        for _ in 0..MAX_IMMEDIATE_TICKS {
            let now = unix_millis();
            let Some(run) = self.runs.get_mut(&id).filter(|run| run.wake_at <= now) else {
                return;
            };
            run.wake_at = u64::MAX;
            let effects = run.machine.handle(Event::Tick, now);
            self.carry_out(id, effects).await;
        }
    }

    /// Ticks every active run whose machine asked to be woken by now.
    pub(super) async fn tick_runs(&mut self) {
        let now = unix_millis();
        let due: Vec<JobId> = self
            .runs
            .iter()
            .filter(|(_, run)| run.is_active() && run.wake_at <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.tick_if_due(id).await;
            self.settle_held_inputs(id).await;
        }
    }

    /// A peer subscribed to a job's topic: the job's machine repeats its join for it, unless
    /// it is a member the machine knows.
    pub(super) async fn on_peer_subscribed(&mut self, peer: PeerId, topic: &str) {
        let Ok(peer) = MemberId::from_peer_id_string(&peer.to_string()) else { return };
        let id = self.runs.values().find(|run| job_topic(&run.id()) == topic).map(JobRun::id);
        if let Some(id) = id.filter(|id| self.runs.get(id).is_some_and(JobRun::is_active)) {
            self.handle(id, Event::PeerSubscribed { peer }).await;
        }
    }

    /// This node learned whether peers can dial it: every active run's join says so again.
    pub(in crate::engine) async fn on_reachability(&mut self, reachable: bool) {
        let active: Vec<JobId> =
            self.runs.values().filter(|run| run.is_active()).map(JobRun::id).collect();
        tracing::info!(
            reachable,
            jobs = active.len(),
            "reachability changed: the joins of the jobs under way say so again"
        );
        for id in active {
            self.handle(id, Event::ReachabilityChanged { reachable }).await;
        }
    }

    /// The job's views for the admin API.
    pub(super) fn run_view(&self, id: &JobId) -> Option<RunView> {
        self.runs.get(id).map(JobRun::view)
    }

    pub(super) fn job_run(&self, id: &JobId) -> Option<&JobRun> {
        self.runs.get(id)
    }

    /// The encoded size of the largest model of this node's jobs: what a blob served is sized
    /// by before it is read.
    pub(in crate::engine) fn largest_model_bytes(&self) -> usize {
        self.runs.values().map(|run| run.machine.params().len() * 4).max().unwrap_or(0)
    }

    /// Loads the runs this node took part in before a restart: each machine is rebuilt from
    /// what it persisted, and the active ones join again.
    pub(super) async fn resume_runs(&mut self) {
        let reachable = self.reachable().await;
        for (id, state) in store::load_states(&self.store) {
            let Some(spec) = self.jobs.spec(&id) else { continue };
            match self.resume(id, spec, state, reachable) {
                Ok((run, effects)) if run.is_active() => {
                    if let Err(error) = self.start_run(run, effects).await {
                        tracing::warn!(job = %id, %error, "cannot rejoin");
                    }
                }
                Ok((run, _)) => {
                    self.runs.insert(id, run);
                }
                Err(error) => tracing::warn!(job = %id, %error, "cannot resume job"),
            }
        }
    }

    fn resume(
        &self,
        id: JobId,
        spec: JobSpec,
        state: RunState,
        reachable: bool,
    ) -> Result<(JobRun, Vec<Effect>), EngineError> {
        let tag = supported(&spec)?;
        let local = self.load_local(id, &spec, "it is no longer configured")?;
        let params = self.stored_model(&id, &state.model, local.model.num_params())?;
        let rounds = store::load_rounds(&self.store, &id)?;
        let announced = store::load_announced(&self.store, &id)?;
        tracing::info!(job = %id, round = state.completed_round, status = %state.status.label(), "resumed job from the store");
        let persisted = store::Persisted::of(&rounds, &announced);
        let rounds = rounds.into_values().collect();
        let snapshot = Snapshot { state, rounds, announced };
        let setup = self.setup(id, spec, tag, &local, reachable);
        let (machine, effects) = Member::restore(setup, snapshot, Arc::new(params), unix_millis());
        Ok((JobRun::new(machine, local, persisted), effects))
    }

    /// A stored model's parameters.
    fn stored_model(
        &self,
        id: &JobId,
        model: &ContentHash,
        params: usize,
    ) -> Result<Vec<f32>, EngineError> {
        let bytes = self.store.blob(model)?.ok_or_else(|| {
            EngineError::NotFound(format!("model {model} of job {id} is not in the store"))
        })?;
        decode_params(&bytes, TensorEncoding::F32Le, params)
            .map_err(|e| EngineError::Invalid(e.to_string()))
    }

    /// The job's coordinator (or owner) stopped it, as the engine's coordination heard.
    pub(in crate::engine) async fn on_stop(
        &mut self,
        id: JobId,
        stop: fedmesh_protocol::message::JobStop,
    ) {
        let signer = self.identity.member_id();
        let message = fedmesh_federation::member::Gossip::Stop(stop);
        self.handle(id, Event::Gossip { signer, message }).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secure_job_whose_model_does_not_fit_one_request_is_refused_with_the_reason() {
        let owner = MemberId([1; 32]).to_string();
        let json = serde_json::json!({
            "name": "big", "owner": owner, "model": "softmax", "dataset": "mnist5k",
            "strategy": {"rule": "fedavg", "clip_norm": 1.0},
            "privacy": {"secure_aggregation": true},
        });
        let spec = JobSpec::from_json(json.to_string().as_bytes()).unwrap();
        let limit = fedmesh_protocol::message::MAX_MASKED_VALUES;
        assert!(check_secure_size(&spec, limit).is_ok());
        let refused = check_secure_size(&spec, limit + 1).unwrap_err().to_string();
        assert!(
            refused.contains("privacy.secure_aggregation") && refused.contains("100001"),
            "{refused}"
        );
        let plain = JobSpec { privacy: Default::default(), ..spec };
        assert!(check_secure_size(&plain, limit + 1).is_ok());
    }
}
