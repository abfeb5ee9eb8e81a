//! What the node's routes answer about itself, its jobs and its models: `GET /v1/status`,
//! `/v1/jobs`, `/v1/jobs/{id}`, `/v1/jobs/{id}/model` and `/v1/models`.

use fedmesh_protocol::ids::{ContentHash, JobId, Round};
use fedmesh_protocol::model::TensorLayout;
use fedmesh_protocol::spec::JobSpec;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The node as `GET /v1/status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusView {
    pub peer_id: String,
    pub version: String,
    pub listen_addresses: Vec<String>,
    pub connected_peers: Vec<String>,
    pub jobs: usize,
    /// Where Prometheus scrapes the node's metrics.
    #[serde(default)]
    pub metrics_address: Option<String>,
    /// The node's latest warnings and errors, oldest first.
    #[serde(default)]
    pub recent_errors: Vec<LogLine>,
    /// The node's clock (ms since the Unix epoch), to tell how long ago a member was heard.
    #[serde(default)]
    pub now_ms: u64,
}

/// One warning or error as logged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub level: String,
    /// The message and its fields (`key=value`).
    pub message: String,
}

/// A job as the admin API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobView {
    pub id: String,
    pub name: String,
    pub owner: String,
    pub dataset: String,
    /// `announced` until this node takes part; then its part's status (`running`, `left`...).
    pub status: String,
    pub learned_at_ms: u64,
    pub spec: JobSpec,
    /// This node's part in the job, if it joined.
    pub run: Option<RunView>,
    /// Why this node could not join the job by itself, if it tried and failed.
    pub join_error: Option<String>,
}

/// A job this node takes part in, as the admin API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunView {
    pub status: String,
    pub completed_round: Round,
    pub rounds_total: Round,
    pub model: String,
    pub members: Vec<MemberView>,
    pub rounds: Vec<RoundView>,
    /// The external trainer's last failure on this node (round, mode, stderr tail), if any.
    #[serde(default)]
    pub trainer_error: Option<String>,
    /// The differential privacy the rounds completed have spent, when the job adds noise.
    #[serde(default)]
    pub privacy: Option<PrivacyView>,
}

/// The differential privacy a job has spent so far (member-level, from the RDP accountant).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrivacyView {
    pub epsilon: f64,
    pub delta: f64,
    pub noise_multiplier: f64,
    /// A member's chance to be among a round's trainers.
    pub sampling: f64,
    /// Who draws the noise: `central` (the aggregator) or `distributed` (each trainer).
    pub noise: String,
}

/// A member as the admin API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberView {
    pub id: String,
    pub group: String,
    pub samples: u64,
    pub last_seen_ms: u64,
}

/// A round as the admin API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoundView {
    pub round: Round,
    pub aggregator: String,
    pub model: Option<String>,
    /// Updates included in the round's model.
    pub participants: usize,
    /// Test-size-weighted over the members' evaluations received so far.
    pub accuracy: Option<f64>,
    pub loss: Option<f64>,
    pub eval_samples: u64,
    /// How many members' evaluations are in.
    pub evaluations: usize,
    /// From the round's first opening to its model's announcement.
    pub seconds: Option<f64>,
    /// When the round's first opening was made and its model announced (Unix ms, each by
    /// its own member's clock).
    #[serde(default)]
    pub opened_at_ms: u64,
    #[serde(default)]
    pub closed_at_ms: Option<u64>,
    /// This node's local training time in the round.
    pub train_seconds: Option<f64>,
    /// Each aggregation slot (`role/group`) and its aggregator, as the round's latest opening
    /// planned it.
    pub slots: BTreeMap<String, String>,
    /// Each ring (by group label) and its members in ring order.
    pub rings: BTreeMap<String, Vec<String>>,
}

/// A job's global model with its tensor layout, for export.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelExport {
    pub job: String,
    pub round: u64,
    /// The model's hash and its test-size-weighted accuracy and loss (from the registry).
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub accuracy: Option<f64>,
    #[serde(default)]
    pub loss: Option<f64>,
    pub layout: TensorLayout,
    pub params: Vec<f32>,
}

/// One round's global model of one job, as the model registry keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelEntry {
    pub job: JobId,
    pub round: Round,
    /// The model blob's hash (f32 little-endian parameters).
    pub model: ContentHash,
    pub params: u64,
    /// Test-size-weighted over the members' evaluations this node has received.
    pub accuracy: Option<f64>,
    pub loss: Option<f64>,
    pub eval_samples: u64,
    pub evaluations: usize,
    pub closed_at_ms: Option<u64>,
    /// Whether the weights are still stored (retention drops old rounds' weights).
    pub weights_kept: bool,
}
