//! One federated job on a local testnet: partition a data set among N nodes, start them, announce
//! the job, follow its rounds, and collect the figures of every round.

use crate::cluster::{Cluster, NodeSpec};
use crate::report::{PartitionSummary, Report, RoundFigures};
use anyhow::{Context, bail};
use fedmesh_learning::{DataSource, Embedded, Model, Partitioner, formats};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Everything a testnet run is asked to do.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub nodes: usize,
    pub rounds: u64,
    pub topology: String,
    /// An embedded data set name or a data file.
    pub dataset: String,
    /// `softmax` or `mlp:H1,H2,...`.
    pub model: String,
    /// `iid`, `dirichlet:ALPHA` or `shards:K`.
    pub partition: String,
    pub local_epochs: u32,
    pub batch_size: u32,
    pub lr: f32,
    pub seed: u64,
    pub round_deadline_secs: u64,
    /// An external trainer command every node runs (empty: fedmesh's built-in learner). The
    /// job's model is then `external` with the layout and initial weights of `model`.
    pub trainer: Vec<String>,
    /// The `fedmesh` binary.
    pub binary: PathBuf,
    /// Where node folders, partitions and the report go.
    pub out: PathBuf,
}

/// How often the owner's node is asked about the job.
const POLL: Duration = Duration::from_millis(100);
/// How long a closed round waits for every member's evaluation before it is reported anyway.
const EVALUATION_GRACE: Duration = Duration::from_secs(3);

impl Scenario {
    /// The name nodes know the data set by in the job spec: the embedded name, or the file stem.
    fn dataset_name(&self) -> String {
        if Embedded::from_name(&self.dataset).is_some() {
            return self.dataset.clone();
        }
        Path::new(&self.dataset)
            .file_stem()
            .map_or_else(|| "data".to_owned(), |stem| stem.to_string_lossy().into_owned())
    }

    /// Splits the data set among the nodes and writes each share as a CSV file.
    pub fn write_partitions(&self) -> anyhow::Result<Vec<PartitionSummary>> {
        let data = DataSource::parse(&self.dataset, None)?.load()?;
        let partitioner: Partitioner = self.partition.parse()?;
        let parts = partitioner.partition(&data.labels, self.nodes, self.seed)?;
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

    /// The job's model: the built-in one, or with a trainer the same layout and initial weights
    /// as an external model.
    fn model_spec(&self) -> anyhow::Result<Value> {
        let spec = Model::parse_spec(&self.model)?;
        if self.trainer.is_empty() {
            return Ok(serde_json::to_value(spec)?);
        }
        let data = DataSource::parse(&self.dataset, None)?.load()?;
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

    /// The job spec node0 announces.
    fn job_spec(&self, owner: &str) -> anyhow::Result<Value> {
        let model = self.model_spec()?;
        Ok(json!({
            "name": format!("testnet-{}", self.dataset_name()),
            "owner": owner,
            "tag": self.topology,
            "model": model,
            "dataset": self.dataset_name(),
            "hyperparameters": {
                "rounds": self.rounds,
                "local_epochs": self.local_epochs,
                "batch_size": self.batch_size,
                "lr": self.lr,
            },
            "participation": {"min_participants": self.nodes},
            "round_deadline_secs": self.round_deadline_secs,
            "seed": self.seed,
        }))
    }

    /// The node.toml lines that set the external trainer, if there is one.
    fn trainer_config(&self) -> Vec<String> {
        if self.trainer.is_empty() {
            return Vec::new();
        }
        let words: Vec<String> = self.trainer.iter().map(|word| format!("{word:?}")).collect();
        vec![format!("trainer = [{}]", words.join(", "))]
    }

    /// Starts the nodes (node0 holds the job owner's key; every node trusts it).
    async fn start(&self, partitions: &[PartitionSummary]) -> anyhow::Result<Cluster> {
        let mut cluster = Cluster::new(&self.binary, &self.out.join("nodes"));
        std::fs::create_dir_all(self.out.join("nodes"))?;
        let owner_key = self.out.join("owner.key");
        let _ = std::fs::remove_file(&owner_key);
        let owner = cluster.keygen(&owner_key)?;
        for partition in partitions {
            let spec = NodeSpec {
                datasets: vec![(self.dataset_name(), partition.path.display().to_string())],
                trust: vec![owner.clone()],
                extra_config: self.trainer_config(),
                ..NodeSpec::default()
            };
            if partition.node == 0 {
                cluster.start_node_with_key(&spec, &owner_key).await?;
            } else {
                cluster.start_node(&spec).await?;
            }
        }
        Ok(cluster)
    }

    /// Runs the job on nodes holding `partitions` (from [`write_partitions`](Self::write_partitions))
    /// to its end, calling `on_round` with each round's figures as they are final.
    pub async fn run(
        &self,
        partitions: Vec<PartitionSummary>,
        mut on_round: impl FnMut(&RoundFigures),
    ) -> anyhow::Result<Report> {
        if self.out.join("nodes").exists() {
            std::fs::remove_dir_all(self.out.join("nodes"))
                .with_context(|| format!("cannot clear {}", self.out.join("nodes").display()))?;
        }
        let started = Instant::now();
        let mut cluster = self.start(&partitions).await?;
        let spec = self.job_spec(&cluster.nodes[0].peer_id)?;
        let answer: Value = cluster.nodes[0].api.post("/v1/jobs", &spec).await?;
        let Some(job) = answer["id"].as_str().map(str::to_owned) else {
            bail!("node0 did not answer a job id: {answer}");
        };
        let mut follower = Follower::new(self, job);
        let status = follower.follow(&cluster, &mut on_round).await;
        cluster.stop_all();
        Ok(Report::new(self, spec, partitions, status, follower.rounds, started.elapsed()))
    }
}

/// Follows a job on node0 and gathers each round's figures once they are final.
struct Follower {
    job: String,
    nodes: usize,
    rounds_total: u64,
    stall_limit: Duration,
    rounds: Vec<RoundFigures>,
    /// When each closed but not yet reported round was first seen closed.
    closed_at: BTreeMap<u64, Instant>,
}

impl Follower {
    fn new(scenario: &Scenario, job: String) -> Self {
        Self {
            job,
            nodes: scenario.nodes,
            rounds_total: scenario.rounds,
            stall_limit: Duration::from_secs(2 * scenario.round_deadline_secs + 30),
            rounds: Vec::new(),
            closed_at: BTreeMap::new(),
        }
    }

    /// Polls until the job completes (`"completed"`), fails or stalls (the reason).
    async fn follow(
        &mut self,
        cluster: &Cluster,
        on_round: &mut impl FnMut(&RoundFigures),
    ) -> String {
        let mut last_progress = Instant::now();
        loop {
            let view: Value = cluster.nodes[0]
                .api
                .get(&format!("/v1/jobs/{}", self.job))
                .await
                .unwrap_or_default();
            let run = &view["run"];
            let before = self.rounds.len();
            for round in run["rounds"].as_array().into_iter().flatten() {
                if let Some(figures) = self.final_figures(cluster, round).await {
                    on_round(&figures);
                    self.rounds.push(figures);
                }
            }
            if self.rounds.len() > before {
                last_progress = Instant::now();
            }
            if let Some(error) = view["join_error"].as_str() {
                return format!("node0 cannot take part: {error}");
            }
            let status = run["status"].as_str().unwrap_or("not joined yet");
            if status.starts_with("failed") || status == "left" {
                return status.to_owned();
            }
            if self.rounds.len() as u64 >= self.rounds_total {
                return "completed".to_owned();
            }
            if last_progress.elapsed() > self.stall_limit {
                let at = self.rounds.len() + 1;
                return format!(
                    "stalled at round {at}: no round completed for {} s (see the node logs)",
                    self.stall_limit.as_secs()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// A round's figures, if it is the next to report and its evaluations are in (or late).
    async fn final_figures(&mut self, cluster: &Cluster, round: &Value) -> Option<RoundFigures> {
        let number = round["round"].as_u64()?;
        if number != self.rounds.len() as u64 + 1 || round["model"].is_null() {
            return None;
        }
        let first_seen = *self.closed_at.entry(number).or_insert_with(Instant::now);
        let evaluations = round["evaluations"].as_u64().unwrap_or(0) as usize;
        if evaluations < self.nodes && first_seen.elapsed() < EVALUATION_GRACE {
            return None;
        }
        Some(RoundFigures {
            round: number,
            participants: round["participants"].as_u64().unwrap_or(0) as usize,
            evaluations,
            accuracy: round["accuracy"].as_f64(),
            loss: round["loss"].as_f64(),
            seconds: round["seconds"].as_f64(),
            train_seconds: self.mean_training(cluster, number).await,
        })
    }

    /// The mean local training time of a round over every node that trained in it.
    async fn mean_training(&self, cluster: &Cluster, round: u64) -> Option<f64> {
        let mut times = Vec::new();
        for node in &cluster.nodes {
            let view: Value =
                node.api.get(&format!("/v1/jobs/{}", self.job)).await.unwrap_or_default();
            let rounds = view["run"]["rounds"].as_array().cloned().unwrap_or_default();
            let time = rounds
                .iter()
                .find(|r| r["round"] == round)
                .and_then(|r| r["train_seconds"].as_f64());
            times.extend(time);
        }
        (!times.is_empty()).then(|| times.iter().sum::<f64>() / times.len() as f64)
    }
}
