//! One federated job on a local testnet: partition a data set among every node that will ever
//! exist, start the first ones, announce the job, follow its rounds while the scenario's events
//! fire, and check the outcome.

use crate::checks::check_run;
use crate::cluster::{Cluster, NodeSettings, NodeSpec, Transport};
use crate::events::{Event, FiredEvent, Misbehaviour};
use crate::firing::EventRunner;
use crate::follow::Follower;
use crate::netns::Placement;
use crate::report::{PartitionSummary, Report, RoundFigures, RunOutcome};
use crate::scenario_file::{Expect, ScenarioFile};
use anyhow::Context;
use fedmesh_admin_api::PrivacyView;
use fedmesh_learning::{DataSource, Dataset, Embedded, Model, Partitioner, formats};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Everything a testnet run is asked to do (a [`ScenarioFile`] with its defaults filled in).
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Names the run in its report.
    pub name: String,
    /// Nodes running when the job is announced.
    pub nodes: usize,
    /// Nodes that will ever exist (`nodes` and every joiner): the data set is split among them.
    pub total_nodes: usize,
    pub rounds: u64,
    /// A built-in TAG's name or a Flame-style TAG schema file.
    pub topology: String,
    /// Group labels handed to the nodes in turn.
    pub groups: Vec<String>,
    /// `f32`, `f16`, `int8` or `top_k:FRACTION`: how trainers encode their deltas.
    pub delta_encoding: String,
    /// An embedded data set name or a data file.
    pub dataset: String,
    /// A CSV data set's label column, by name or 0-based index (none: the last).
    pub label_column: Option<String>,
    /// `softmax` or `mlp:H1,H2,...`.
    pub model: String,
    /// `iid`, `dirichlet:ALPHA` or `shards:K`.
    pub partition: String,
    pub local_epochs: u32,
    pub batch_size: u32,
    pub lr: f32,
    pub seed: u64,
    pub round_deadline_secs: u64,
    pub min_participants: usize,
    /// The job spec's `quorum` (none: the node's default).
    pub quorum: Option<Value>,
    /// The job spec's `strategy` (none: FedAvg).
    pub strategy: Option<Value>,
    /// The job spec's `privacy` (none: its defaults).
    pub privacy: Option<Value>,
    /// The job spec's `verification` (none: results are not audited).
    pub verification: Option<Value>,
    /// Laid over the job spec's `hyperparameters` (see `ScenarioFile::hyperparameters`).
    pub hyperparameters: Option<Value>,
    /// Laid over the job spec's `participation` (see `ScenarioFile::participation`).
    pub participation: Option<Value>,
    /// The job spec's `mode` and `async` (none: synchronous rounds).
    pub mode: Option<Value>,
    pub asynchronous: Option<Value>,
    /// Nodes (by index) whose local training takes this many times as long (testing only).
    pub slow: BTreeMap<usize, f32>,
    /// A whole job spec to announce (a Flame job's, `testnet --flame`): its owner, model,
    /// data set and rounds are this run's; the fields above that it sets are not used.
    pub base_spec: Option<Value>,
    /// The final accuracy checked against `expect`.
    pub target: Option<f64>,
    pub expect: Expect,
    /// In firing order.
    pub events: Vec<Event>,
    /// Refusal reasons each node-counted at least once by the end (see `ScenarioFile::refused`).
    pub refused: Vec<String>,
    /// Every round must close before its deadline (see `ScenarioFile::no_stall`).
    pub no_stall: bool,
    /// Follow the job this many rounds only (see `ScenarioFile::follow_rounds`).
    pub follow_rounds: Option<u64>,
    /// Each refusal reason counted by every node (see `ScenarioFile::refused_everywhere`).
    pub refused_everywhere: bool,
    /// The `fedmesh-hostile` binary `attack` events run (beside `binary` by default).
    pub hostile: PathBuf,
    /// Run the job orchestrated: a coordinator (not a member) owns it and assigns its rounds.
    pub orchestrated: bool,
    /// Each node bootstraps from the node started before it only (see `Cluster`).
    pub chain_bootstrap: bool,
    /// On loopback, or each node in a network namespace of its own (`--netns`, `--nat`).
    pub placement: Placement,
    /// What the nodes listen on and bootstrap over (`--transport`).
    pub transport: Transport,
    /// An external trainer command every node runs (empty: fedmesh's built-in learner). The
    /// job's model is then `external` with the layout and initial weights of `model`.
    pub trainer: Vec<String>,
    /// How many rounds' models every node keeps (unset: all).
    pub model_retention_rounds: Option<u64>,
    /// The `fedmesh` binary.
    pub binary: PathBuf,
    /// Where node folders, partitions and the report go.
    pub out: PathBuf,
}

/// Above this many nodes, they keep the node's default gossip heartbeat (1 s), and a job
/// needs four in five of them by default (`default_min_participants`).
pub(crate) const LARGE_CLUSTER: usize = 50;

/// The default `min_participants` of a job whose events leave at least `fewest` members: all of
/// them, or four in five over `LARGE_CLUSTER` (hundreds of nodes on a few cores hear of each
/// other seconds apart, and a job that waited for every last one to be live, and closed no
/// round without every last update, waited on the slowest node's view; at nine in ten, a
/// 200-node round with 177 updates in after five deadlines could not close).
pub(crate) fn default_min_participants(fewest: usize) -> usize {
    if fewest > LARGE_CLUSTER { fewest * 4 / 5 } else { fewest }
}

/// The hostile peer's binary name, which this package builds beside `testnet`.
pub const HOSTILE_BINARY: &str = "fedmesh-hostile";

/// The job spec's `delta_encoding` for `f32`, `f16`, `int8` or `top_k:FRACTION`.
pub fn delta_encoding_json(text: &str) -> Option<Value> {
    match text.split_once(':') {
        None => ["f32", "f16", "int8"].contains(&text).then(|| Value::String(text.to_owned())),
        Some(("top_k", fraction)) => {
            let fraction: f64 = fraction.parse().ok()?;
            (fraction > 0.0 && fraction <= 1.0).then(|| json!({ "top_k": fraction }))
        }
        Some(_) => None,
    }
}

/// What a run reports as it goes.
pub enum Progress<'a> {
    Round(&'a RoundFigures),
    Event(&'a FiredEvent),
}

impl Progress<'_> {
    /// The line printed for it.
    pub fn line(&self, rounds_total: u64) -> String {
        match self {
            Self::Round(round) => round.line(rounds_total),
            Self::Event(event) => event.line(),
        }
    }
}

/// How often the followed node is asked about the job.
const POLL: Duration = Duration::from_millis(100);
/// How often while an event waits for its round (a fast round could pass unseen).
const EVENT_POLL: Duration = Duration::from_millis(10);

impl Scenario {
    /// The defaults of a scenario file, with the `fedmesh` binary and the output folder.
    pub fn new(binary: PathBuf, out: PathBuf) -> Self {
        ScenarioFile::default().into_scenario(binary, out)
    }

    /// How many hostile peers the events start posing as members (each may send updates).
    pub fn hostile_members(&self) -> usize {
        let member = |event: &&Event| {
            event.action == crate::events::Action::Attack
                && event.posing.unwrap_or_default() == crate::hostile::Posing::Member
        };
        self.events.iter().filter(member).count()
    }

    /// The name nodes know the data set by in the job spec: the embedded name, or the file stem.
    fn dataset_name(&self) -> String {
        if Embedded::from_name(&self.dataset).is_some() {
            return self.dataset.clone();
        }
        Path::new(&self.dataset)
            .file_stem()
            .map_or_else(|| "data".to_owned(), |stem| stem.to_string_lossy().into_owned())
    }

    /// The whole data set, labels mapped to classes (names in sorted order).
    fn load_data(&self) -> anyhow::Result<Dataset> {
        Ok(DataSource::parse(&self.dataset, self.label_column.as_deref())?.load(None)?)
    }

    /// Splits the data set among every node that will ever exist and writes each share as a CSV
    /// file (labels last, as class names when the data set's labels are names).
    pub fn write_partitions(&self) -> anyhow::Result<Vec<PartitionSummary>> {
        let data = self.load_data()?;
        let partitioner: Partitioner = self.partition.parse()?;
        let parts = partitioner.partition(&data.labels, self.total_nodes, self.seed)?;
        let dir = self.out.join("partitions");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        parts
            .iter()
            .enumerate()
            .map(|(node, indices)| {
                let share = data.select(indices);
                let path = dir.join(format!("node{node}.csv"));
                formats::write_csv(&share, &path)?;
                Ok(PartitionSummary {
                    node,
                    path,
                    samples: share.len(),
                    labels: share.label_histogram(),
                })
            })
            .collect()
    }

    /// The job's TAG: a built-in's name, or the schema in the file `topology` names.
    fn tag(&self) -> anyhow::Result<Value> {
        let path = Path::new(&self.topology);
        if path.extension().is_none_or(|ext| ext != "json") {
            return Ok(Value::String(self.topology.clone()));
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the TAG schema {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a JSON TAG schema", path.display()))
    }

    /// The group label of node `index`.
    fn group_of(&self, index: usize) -> Option<String> {
        (!self.groups.is_empty()).then(|| self.groups[index % self.groups.len()].clone())
    }

    /// The job's model: the built-in one, or with a trainer the same layout and initial weights
    /// as an external model.
    fn model_spec(&self) -> anyhow::Result<Value> {
        let spec = Model::parse_spec(&self.model)?;
        if self.trainer.is_empty() {
            return Ok(serde_json::to_value(spec)?);
        }
        let data = self.load_data()?;
        let known = Embedded::from_name(&self.dataset).map_or(0, Embedded::num_classes);
        let model = Model::from_spec(&spec, data.num_features(), data.num_classes.max(known))?;
        let tensors: Vec<Value> = model
            .layout()
            .tensors
            .iter()
            .map(|slot| json!({"name": slot.name, "shape": slot.shape}))
            .collect();
        Ok(json!({"external": {"tensors": tensors, "init": {"seed": self.seed}}}))
    }

    /// The job spec node0 announces (or the coordinator, holding the owner's key, submits as
    /// its own).
    fn job_spec(&self, owner: &str) -> anyhow::Result<Value> {
        let model = self.model_spec()?;
        if let Some(base) = &self.base_spec {
            let mut spec = base.clone();
            spec["owner"] = json!(owner);
            spec["coordinator"] = if self.orchestrated { json!(owner) } else { Value::Null };
            spec["model"] = model;
            spec["dataset"] = json!(self.dataset_name());
            spec["hyperparameters"]["rounds"] = json!(self.rounds);
            return Ok(spec);
        }
        let mut spec = json!({
            "name": format!("testnet-{}", self.dataset_name()),
            "owner": owner,
            "tag": self.tag()?,
            "model": model,
            "dataset": self.dataset_name(),
            "hyperparameters": {
                "rounds": self.rounds,
                "local_epochs": self.local_epochs,
                "batch_size": self.batch_size,
                "lr": self.lr,
            },
            "participation": {"min_participants": self.min_participants},
            "round_deadline_secs": self.round_deadline_secs,
            "seed": self.seed,
            "delta_encoding": delta_encoding_json(&self.delta_encoding),
        });
        if let Some(strategy) = &self.strategy {
            spec["strategy"] = strategy.clone();
        }
        if let Some(quorum) = &self.quorum {
            spec["quorum"] = quorum.clone();
        }
        if let Some(privacy) = &self.privacy {
            spec["privacy"] = privacy.clone();
        }
        if let Some(verification) = &self.verification {
            spec["verification"] = verification.clone();
        }
        if let Some(mode) = &self.mode {
            spec["mode"] = mode.clone();
        }
        if let Some(options) = &self.asynchronous {
            spec["async"] = options.clone();
        }
        lay_over(&mut spec["hyperparameters"], self.hyperparameters.as_ref());
        lay_over(&mut spec["participation"], self.participation.as_ref());
        if Embedded::from_name(&self.dataset).is_none() {
            let classes = self.load_data()?.classes;
            if !classes.is_empty() {
                // Every member maps its share's labels to these, whichever it holds.
                spec["classes"] = json!(classes);
            }
        }
        Ok(spec)
    }

    /// A node holding `partition` that trusts `owner`.
    fn node_spec(&self, owner: &str, partition: &PartitionSummary) -> NodeSpec {
        let settings = NodeSettings {
            group: self.group_of(partition.node),
            trainer: self.trainer.clone(),
            misbehave: self.misbehaving_from_start(partition.node).into_iter().collect(),
            model_retention_rounds: self.model_retention_rounds,
            slow_training: self.slow.get(&partition.node).copied(),
            // A node's idle cost is mostly its heartbeats: at hundreds of nodes on one machine,
            // the node's default cadence.
            gossip_heartbeat_ms: (self.total_nodes > LARGE_CLUSTER).then_some(1000),
            ..NodeSettings::default()
        };
        NodeSpec {
            datasets: vec![(self.dataset_name(), partition.path.display().to_string())],
            trust: vec![owner.to_owned()],
            settings,
        }
    }

    /// How node `node` misbehaves from the start, if a round-1 `byzantine` event names it.
    fn misbehaving_from_start(&self, node: usize) -> Option<Misbehaviour> {
        self.events
            .iter()
            .filter_map(Event::misbehaves_from_start)
            .find(|(nodes, _)| nodes.contains(&node))
            .map(|(_, kind)| kind)
    }

    /// Starts the first nodes (node0 holds the job owner's key; every node trusts it); returns
    /// them and the owner's PeerId.
    async fn start(&self, partitions: &[PartitionSummary]) -> anyhow::Result<(Cluster, String)> {
        let mut cluster = Cluster::new(&self.binary, &self.out.join("nodes"));
        cluster.chain_bootstrap = self.chain_bootstrap;
        cluster.transport = self.transport;
        if let Placement::Namespaces { nat } = self.placement {
            cluster.on_virtual_lan(nat)?;
        }
        std::fs::create_dir_all(self.out.join("nodes"))?;
        let owner_key = self.out.join("owner.key");
        let _ = std::fs::remove_file(&owner_key);
        let owner = cluster.keygen(&owner_key)?;
        if self.orchestrated {
            cluster.start_coordinator(&owner_key).await?;
        }
        for partition in partitions.iter().take(self.nodes) {
            let spec = self.node_spec(&owner, partition);
            if partition.node == 0 && !self.orchestrated {
                cluster.start_node_with_key(&spec, &owner_key).await?;
            } else {
                cluster.start_node(&spec).await?;
            }
        }
        Ok((cluster, owner))
    }

    /// Runs the job on nodes holding `partitions` (from [`write_partitions`](Self::write_partitions))
    /// to its end while the events fire, calling `on_progress` with each round's figures as they
    /// are final and each event as it fires; then checks the outcome.
    pub async fn run(
        &self,
        partitions: Vec<PartitionSummary>,
        mut on_progress: impl FnMut(Progress<'_>),
    ) -> anyhow::Result<Report> {
        let nodes_dir = self.out.join("nodes");
        if nodes_dir.exists() {
            std::fs::remove_dir_all(&nodes_dir)
                .with_context(|| format!("cannot clear {}", nodes_dir.display()))?;
        }
        let started = Instant::now();
        let (mut cluster, owner) = self.start(&partitions).await?;
        let spec = self.job_spec(&owner)?;
        let bytes = serde_json::to_vec(&spec)?;
        let job = match &cluster.coordinator {
            Some(coordinator) => coordinator.api.submit(bytes).await?.id,
            None => cluster.nodes[0].api.announce(bytes).await?.id,
        };
        let specs = partitions.iter().map(|p| self.node_spec(&owner, p)).collect();
        let mut events = EventRunner::new(job.clone(), &self.events, specs, started)
            .with_hostile(self.hostile.clone(), self.out.join("hostile"));
        events.fired.iter().for_each(|fired| on_progress(Progress::Event(fired)));
        let nodes = cluster.nodes.len();
        let mut follower = Follower::new(job.clone(), self.rounds, self.round_deadline_secs, nodes)
            .following_only(self.follow_rounds);
        let status = drive(&mut cluster, &mut follower, &mut events, &mut on_progress).await;
        follower.complete_trainers(&cluster).await;
        if let Some(attacks) = events.attacks.as_mut() {
            attacks.stop_all();
        }
        let checks = check_run(self, &cluster, &job, &events, &status, &follower.rounds).await;
        let privacy = privacy_spent(&cluster, &events, &job).await;
        let usage = cluster.usage().await;
        cluster.stop_all();
        let attacks = events.attacks.as_ref().map(|a| a.logs()).unwrap_or_default();
        let outcome = RunOutcome {
            attacks,
            status,
            rounds: follower.rounds,
            events: events.fired,
            checks,
            usage,
            elapsed: started.elapsed(),
            privacy,
        };
        Ok(Report::new(self, spec, partitions, outcome))
    }
}

/// Sets each key of the table `over` in the table `base`.
fn lay_over(base: &mut Value, over: Option<&Value>) {
    let (Some(base), Some(Value::Object(over))) = (base.as_object_mut(), over) else { return };
    base.extend(over.iter().map(|(key, value)| (key.clone(), value.clone())));
}

/// The differential privacy the job spent, as the node followed reports it (none when the job
/// adds no noise or no node answers).
async fn privacy_spent(cluster: &Cluster, events: &EventRunner, job: &str) -> Option<PrivacyView> {
    let node = &cluster.nodes[events.observer(cluster)?];
    node.api.job(job).await.ok()?.run?.privacy
}

/// Follows the job until it ends, firing events as their rounds come; the job's end status.
async fn drive(
    cluster: &mut Cluster,
    follower: &mut Follower,
    events: &mut EventRunner,
    on_progress: &mut impl FnMut(Progress<'_>),
) -> String {
    loop {
        let Some(observer) = events.observer(cluster) else {
            return "no node is left that no event touched, to follow the job on".to_owned();
        };
        let node = &cluster.nodes[observer];
        let view = node.api.job(&follower.job).await.ok();
        let name = node.name.clone();
        let members = events.members(cluster).len();
        let run = view.as_ref().and_then(|view| view.run.as_ref());
        // Events first: gathering a round's figures asks every node, which takes a while at 50.
        for fired in events.fire_due(cluster, run).await {
            on_progress(Progress::Event(&fired));
        }
        for round in follower.take_rounds(cluster, run, members).await {
            on_progress(Progress::Round(&round));
        }
        if let Some(end) = follower.end(view.as_ref(), &name) {
            return end;
        }
        let waiting = events.pending().next().is_some();
        tokio::time::sleep(if waiting { EVENT_POLL } else { POLL }).await;
    }
}
