//! The job engine: the one task that owns the node's state. It handles verified network messages,
//! announces and re-announces jobs, answers peers' requests, and serves the admin API's queries.

mod admission;
mod coordination;
mod federation;
mod jobs;
mod registry;
mod requests;
mod serving;

use crate::metrics::Metrics;
use crate::network::{Network, NetworkEvent};
use crate::store::{Store, StoreError};
use federation::JobRun;
use fedmesh_admin_api::{CoordinationView, JobView, ModelEntry, ModelExport, StatusView};
use fedmesh_protocol::identity::Identity;
use fedmesh_protocol::ids::{JobId, MemberId};
use jobs::JobBook;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// The gossip topic every node subscribes to for job announcements.
pub const JOBS_TOPIC: &str = "fedmesh/jobs/1";

/// What the engine can fail at, as the admin API reports it.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("not found: {0}")]
    NotFound(String),
    #[error("invalid: {0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Network(#[from] crate::network::NetworkError),
    #[error("the node is shutting down")]
    Stopped,
}

enum Query {
    Jobs(oneshot::Sender<Vec<JobView>>),
    Job(String, oneshot::Sender<Result<JobView, EngineError>>),
    Announce(Vec<u8>, oneshot::Sender<Result<JobId, EngineError>>),
    Join(String, Option<String>, oneshot::Sender<Result<JobId, EngineError>>),
    Admit(String, String, oneshot::Sender<Result<String, EngineError>>),
    Leave(String, oneshot::Sender<Result<JobId, EngineError>>),
    Model(String, Option<u64>, oneshot::Sender<Result<ModelExport, EngineError>>),
    Models(Option<String>, oneshot::Sender<Result<Vec<ModelEntry>, EngineError>>),
    PutBlob(Vec<u8>, oneshot::Sender<Result<fedmesh_protocol::ids::ContentHash, EngineError>>),
    Submit(Vec<u8>, oneshot::Sender<Result<JobId, EngineError>>),
    Stop(String, String, oneshot::Sender<Result<JobId, EngineError>>),
    Coordinated(Option<String>, oneshot::Sender<Result<Vec<CoordinationView>, EngineError>>),
    Shutdown(oneshot::Sender<()>),
}

/// Results of the engine's own background tasks.
enum Internal {
    /// A peer sent the announcement of a job this node asked for.
    PeerJob(JobId, fedmesh_protocol::envelope::Signed<fedmesh_protocol::message::JobAnnouncement>),
    /// Work a job's machine asked for is done (training, fetching, storing, evaluating): its
    /// event, and the share of the bulk budget its result holds until the machine took it.
    Machine {
        job: JobId,
        event: fedmesh_federation::member::Event,
        held: Option<crate::network::Held>,
    },
    /// A peer's update, verified and decoded off the engine's task, for its job's machine to
    /// judge and answer.
    Update {
        job: JobId,
        signer: MemberId,
        update: fedmesh_federation::member::Update,
        values: fedmesh_federation::member::UpdateValues,
        reply: federation::Reply,
    },
    /// A round's result a member passed on after this node missed its announcement, verified.
    MissedResult {
        job: JobId,
        signed: Box<fedmesh_protocol::envelope::Signed<fedmesh_protocol::message::AggregateReady>>,
        event: Box<fedmesh_federation::member::Event>,
    },
}

/// A cloneable handle the admin API uses to ask the engine.
#[derive(Clone)]
pub struct EngineHandle {
    queries: mpsc::Sender<Query>,
    network: Network,
    metrics: Arc<Metrics>,
}

impl EngineHandle {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Query,
    ) -> Result<T, EngineError> {
        let (reply, answer) = oneshot::channel();
        self.queries.send(make(reply)).await.map_err(|_| EngineError::Stopped)?;
        answer.await.map_err(|_| EngineError::Stopped)
    }

    pub async fn status(&self) -> Result<StatusView, EngineError> {
        let network = self.network.status().await?;
        let jobs = self.jobs().await?.len();
        Ok(StatusView {
            peer_id: network.peer_id.to_string(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            listen_addresses: network.listen_addresses.iter().map(ToString::to_string).collect(),
            connected_peers: network.connected_peers.iter().map(ToString::to_string).collect(),
            jobs,
            metrics_address: None,
            recent_errors: crate::recent::lines(),
            now_ms: fedmesh_protocol::message::unix_millis(),
        })
    }

    pub async fn jobs(&self) -> Result<Vec<JobView>, EngineError> {
        self.ask(Query::Jobs).await
    }

    pub async fn job(&self, id: &str) -> Result<JobView, EngineError> {
        self.ask(|reply| Query::Job(id.to_owned(), reply)).await?
    }

    /// Signs the job spec (JSON) with the node's key and publishes it.
    pub async fn announce(&self, spec_json: Vec<u8>) -> Result<JobId, EngineError> {
        self.ask(|reply| Query::Announce(spec_json, reply)).await?
    }

    /// Joins a known job (by id or unique id prefix).
    /// Joins a job; `ticket` is the owner's ticket for a job that admits members by ticket.
    pub async fn join(&self, id: &str, ticket: Option<String>) -> Result<JobId, EngineError> {
        self.ask(|reply| Query::Join(id.to_owned(), ticket, reply)).await?
    }

    /// Signs a ticket admitting `member` to a job this node owns; returns its text.
    pub async fn admit(&self, id: &str, member: &str) -> Result<String, EngineError> {
        self.ask(|reply| Query::Admit(id.to_owned(), member.to_owned(), reply)).await?
    }

    /// Leaves a job this node is in.
    pub async fn leave(&self, id: &str) -> Result<JobId, EngineError> {
        self.ask(|reply| Query::Leave(id.to_owned(), reply)).await?
    }

    /// The current global model of a job this node is in, or the model of one `round`.
    pub async fn model(&self, id: &str, round: Option<u64>) -> Result<ModelExport, EngineError> {
        self.ask(|reply| Query::Model(id.to_owned(), round, reply)).await?
    }

    /// The model registry: every round's model of one job (id prefix) or of all.
    pub async fn models(&self, job: Option<String>) -> Result<Vec<ModelEntry>, EngineError> {
        self.ask(|reply| Query::Models(job, reply)).await?
    }

    /// Stores a blob (for example a job's initial weights) and returns its hash.
    pub async fn put_blob(
        &self,
        bytes: Vec<u8>,
    ) -> Result<fedmesh_protocol::ids::ContentHash, EngineError> {
        self.ask(|reply| Query::PutBlob(bytes, reply)).await?
    }

    /// Submits a job spec to this coordinator: it owns, announces and coordinates the job.
    pub async fn submit(&self, spec_json: Vec<u8>) -> Result<JobId, EngineError> {
        self.ask(|reply| Query::Submit(spec_json, reply)).await?
    }

    /// Stops a job this node coordinates (or owns, if it is self-organizing).
    pub async fn stop(&self, id: &str, reason: &str) -> Result<JobId, EngineError> {
        self.ask(|reply| Query::Stop(id.to_owned(), reason.to_owned(), reply)).await?
    }

    /// The jobs this node coordinates, or the one `id` names (by prefix).
    pub async fn coordinated(
        &self,
        id: Option<String>,
    ) -> Result<Vec<CoordinationView>, EngineError> {
        self.ask(|reply| Query::Coordinated(id, reply)).await?
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Asks the engine to stop and waits until it has.
    pub async fn shutdown(&self) {
        let _ = self.ask(Query::Shutdown).await;
    }
}

/// What the engine needs of the node's settings (`NodeConfig::engine_settings`).
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// PeerIds of the job owners whose jobs this node accepts.
    pub trust: Vec<String>,
    /// Data set name to a file, or to an embedded data set's name.
    pub datasets: std::collections::BTreeMap<String, String>,
    /// The external trainer and evaluator.
    pub trainers: crate::external::TrainerSettings,
    /// This node's group label and the TAG roles it accepts.
    pub group: String,
    pub roles: Vec<String>,
    /// Join trusted jobs automatically when this node has their data set.
    pub auto_join: bool,
    /// How often known jobs are published again.
    pub reannounce: Duration,
    /// Coordinate the orchestrated jobs that name this node's key.
    pub coordinate: bool,
    /// How this node misbehaves on purpose (acted on only with the `misbehave` feature).
    pub misbehave: Vec<crate::misbehaviour::Misbehaviour>,
    /// How many times as long local training takes (1: as long as it does; testing only).
    pub slow_training: f32,
}

/// The engine task's state.
pub struct Engine {
    /// The node's key (shared with the tasks that sign updates off the engine's task).
    identity: Arc<Identity>,
    settings: EngineSettings,
    trusted: BTreeSet<MemberId>,
    store: Arc<Store>,
    network: Network,
    metrics: Arc<Metrics>,
    jobs: JobBook,
    runs: std::collections::BTreeMap<JobId, JobRun>,
    /// The jobs this node coordinates (when run as a coordinator).
    coordinated: std::collections::BTreeMap<JobId, coordination::CoordinatedJob>,
    /// Why auto-joining a job failed, for the admin API.
    join_errors: std::collections::BTreeMap<JobId, String>,
    queries: mpsc::Receiver<Query>,
    internal: mpsc::Sender<Internal>,
    internal_rx: mpsc::Receiver<Internal>,
    /// What the network's set of peers that may send large frames was built from.
    bulk_peers_built_from: federation::BulkPeersBuiltFrom,
    /// The blobs responses are sending now, shared with further requests for them.
    blobs_in_flight: serving::BlobsInFlight,
    /// The models this node made, served from memory while their jobs hold their parameters.
    models_in_memory: serving::ModelsInMemory,
    /// The peers asked for their jobs lately.
    jobs_asked: requests::JobsAsked,
}

impl Engine {
    /// Loads what the store knows and returns the engine with its handle.
    pub fn new(
        identity: Identity,
        settings: EngineSettings,
        store: Arc<Store>,
        network: Network,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<(Self, EngineHandle)> {
        let trusted = parse_trust(&settings.trust)?;
        let jobs = JobBook::load(&store)?;
        tracing::info!(jobs = jobs.len(), "loaded jobs from the store");
        let (query_tx, query_rx) = mpsc::channel(64);
        let handle =
            EngineHandle { queries: query_tx, network: network.clone(), metrics: metrics.clone() };
        let (internal, internal_rx) = mpsc::channel(64);
        let engine = Self {
            identity: Arc::new(identity),
            settings,
            trusted,
            store,
            network,
            metrics,
            jobs,
            runs: std::collections::BTreeMap::new(),
            coordinated: std::collections::BTreeMap::new(),
            join_errors: std::collections::BTreeMap::new(),
            queries: query_rx,
            internal,
            internal_rx,
            bulk_peers_built_from: Vec::new(),
            blobs_in_flight: Default::default(),
            models_in_memory: Default::default(),
            jobs_asked: Default::default(),
        };
        Ok((engine, handle))
    }

    /// Runs until asked to shut down.
    pub async fn run(mut self, mut events: mpsc::Receiver<NetworkEvent>) {
        if let Err(error) = self.network.subscribe(JOBS_TOPIC).await {
            tracing::error!(%error, "cannot subscribe to job announcements");
        }
        let mut reannounce = tokio::time::interval(self.settings.reannounce);
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.resume_runs().await;
        self.resume_coordination().await;
        loop {
            tokio::select! {
                Some(event) = events.recv() => self.on_network_event(event).await,
                query = self.queries.recv() => match query {
                    Some(Query::Shutdown(reply)) => {
                        let _ = reply.send(());
                        return;
                    }
                    Some(query) => self.on_query(query).await,
                    None => return,
                },
                Some(internal) = self.internal_rx.recv() => self.on_internal(internal).await,
                _ = reannounce.tick() => self.reannounce().await,
                _ = tick.tick() => {
                    self.tick_runs().await;
                    self.tick_coordination().await;
                }
            }
            self.refresh_bulk_peers();
        }
    }

    async fn on_query(&mut self, query: Query) {
        match query {
            Query::Jobs(reply) => {
                let views = self.jobs.views().into_iter().map(|v| self.with_run(v)).collect();
                let _ = reply.send(views);
            }
            Query::Job(id, reply) => {
                let view = self.jobs.view_by_prefix(&id).map(|v| self.with_run(v));
                let _ = reply.send(view);
            }
            Query::Announce(spec_json, reply) => {
                let result = self.announce_local(&spec_json).await;
                if let Ok(id) = result {
                    self.maybe_auto_join(id).await;
                }
                let _ = reply.send(result);
            }
            Query::Join(id, ticket, reply) => {
                let _ = reply.send(self.join_with(&id, ticket.as_deref()).await);
            }
            Query::Admit(id, member, reply) => {
                let _ = reply.send(self.admit(&id, &member));
            }
            Query::Leave(id, reply) => {
                let result = match self.jobs.id_by_prefix(&id) {
                    Ok(job) => self.leave_job(job).await.map(|()| job),
                    Err(error) => Err(error),
                };
                let _ = reply.send(result);
            }
            Query::Model(id, round, reply) => {
                let _ = reply.send(self.model_export(&id, round));
            }
            Query::Models(job, reply) => {
                let _ = reply.send(self.model_entries(job.as_deref()));
            }
            Query::PutBlob(bytes, reply) => {
                let _ = reply.send(self.put_blob(&bytes));
            }
            Query::Submit(spec_json, reply) => {
                let _ = reply.send(self.submit_job(&spec_json).await);
            }
            Query::Stop(id, reason, reply) => {
                let result = match self.jobs.id_by_prefix(&id) {
                    Ok(job) => self.stop_job(job, &reason).await.map(|()| job),
                    Err(error) => Err(error),
                };
                let _ = reply.send(result);
            }
            Query::Coordinated(id, reply) => {
                let _ = reply.send(self.coordination_views(id.as_deref()));
            }
            Query::Shutdown(_) => {}
        }
    }

    async fn on_internal(&mut self, internal: Internal) {
        match internal {
            Internal::PeerJob(job, announcement) => {
                if self.learn_job(job, announcement) {
                    self.maybe_auto_join(job).await;
                }
            }
            Internal::Machine { job, event, held } => {
                self.handle(job, event).await;
                drop(held);
            }
            Internal::Update { job, signer, update, values, reply } => {
                let Some(run) = self.runs.get_mut(&job) else { return };
                let request = run.keep_reply(reply, update.kind());
                let event =
                    fedmesh_federation::member::Event::Update { signer, update, values, request };
                let started = std::time::Instant::now();
                self.handle(job, event).await;
                tracing::debug!(%job, took = ?started.elapsed(), "took an update (folded if accepted)");
            }
            Internal::MissedResult { job, signed, event } => {
                self.on_missed_result(job, *signed, *event).await
            }
        }
    }

    /// Adds this node's part in the job to its view.
    /// A job's view with this node's part in it: its status is then the run's, so the job's
    /// list and its own page say the same.
    fn with_run(&self, mut view: JobView) -> JobView {
        if let Ok(id) = self.jobs.id_by_prefix(&view.id) {
            view.run = self.run_view(&id);
            view.join_error = self.join_errors.get(&id).cloned();
        }
        if let Some(run) = &view.run {
            view.status = run.status.clone();
        }
        view
    }
}

fn parse_trust(trust: &[String]) -> anyhow::Result<BTreeSet<MemberId>> {
    trust
        .iter()
        .map(|text| {
            MemberId::from_peer_id_string(text)
                .map_err(|e| anyhow::anyhow!("setting `trust`: `{text}` is not a PeerId: {e}"))
        })
        .collect()
}
