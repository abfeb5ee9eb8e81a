//! The `fedmesh` command line: every subcommand and flag, with the help text a user reads.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// fedmesh: peer-to-peer federated learning. Each organization runs one node beside its private
/// data; nodes find each other, learn of signed jobs, train locally and exchange signed model
/// deltas. No broker, no database server, no cloud account.
#[derive(Debug, Parser)]
#[command(name = "fedmesh", version, propagate_version = true)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a node key (ed25519, owner-only permissions) and print its PeerId.
    Keygen(KeygenArgs),
    /// Run a node: the long-running daemon an organization runs beside its data.
    Node(Box<NodeArgs>),
    /// Run a coordinator: a node that is the control plane of orchestrated jobs (it selects
    /// each round's trainers, assigns its aggregators with signed assignments, replaces lost
    /// ones and reports status); the data and the training stay on the members' nodes.
    Coordinator(Box<NodeArgs>),
    /// Announce, list and inspect jobs through the local node.
    #[command(subcommand)]
    Job(JobCommand),
    /// Export the global models of the jobs the local node takes part in.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Train centrally on one data set: the baseline a federated job is compared with.
    TrainLocal(TrainLocalArgs),
}

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// List the model registry: every round's global model of the jobs the local node takes part
    /// in, with its hash, accuracy and loss, and whether its weights are still kept.
    List {
        /// Only this job (an id or a unique prefix of it).
        #[arg(long)]
        job: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Write a job's current global model (the final one once the job is complete), or one
    /// round's, as a safetensors file with the model's tensor names (fc1.weight, fc1.bias, ...),
    /// or as one `.npy` file per tensor.
    Export {
        /// The job id (or a unique prefix of it).
        #[arg(long)]
        job: String,
        /// A round's model from the registry instead of the current one.
        #[arg(long)]
        round: Option<u64>,
        /// The file to write (for `--format npy`: a directory, one NAME.npy per tensor).
        #[arg(long)]
        out: PathBuf,
        #[arg(long, value_enum, default_value_t = ExportFormat::Safetensors)]
        format: ExportFormat,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// How `fedmesh model export` writes a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    Safetensors,
    Npy,
}

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Where to write the key; refused if the file exists.
    #[arg(long)]
    pub out: PathBuf,
}

/// Settings for `fedmesh node`; each overrides the same setting of `--config`.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// A node.toml with the node's settings (see README).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The node's key file.
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// The node's data directory (database, admin token).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// An address to listen on (repeatable), e.g. /ip4/127.0.0.1/tcp/4001.
    #[arg(long = "listen")]
    pub listen: Vec<String>,
    /// A peer to dial at start (repeatable), e.g. /ip4/127.0.0.1/tcp/4001/p2p/12D3KooW...
    #[arg(long = "bootstrap")]
    pub bootstrap: Vec<String>,
    /// A data set this node offers, NAME=PATH or NAME=EMBEDDED-NAME (repeatable).
    #[arg(long = "dataset")]
    pub datasets: Vec<String>,
    /// The PeerId of a job owner whose jobs this node accepts (repeatable).
    #[arg(long = "trust")]
    pub trust: Vec<String>,
    /// Discover peers with mDNS (LAN only; it does not see loopback).
    #[arg(long)]
    pub mdns: bool,
    /// The node's group label for hierarchical topologies.
    #[arg(long)]
    pub group: Option<String>,
    /// The admin API address (loopback only), e.g. 127.0.0.1:7070.
    #[arg(long)]
    pub admin: Option<std::net::SocketAddr>,
}

/// Where the CLI finds the local node's admin API.
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// The local node's data directory; the CLI reads the API address and token from it.
    #[arg(long, env = "FEDMESH_DATA_DIR", default_value = "fedmesh-data")]
    pub data_dir: PathBuf,
}

/// Where the CLI finds a coordinator's admin API.
#[derive(Debug, Args)]
pub struct CoordinatorArgs {
    /// The coordinator's data directory; the CLI reads its API address and token from it.
    #[arg(long = "coordinator", value_name = "DIR", env = "FEDMESH_COORDINATOR")]
    pub data_dir: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Sign a job spec (JSON) with the node's key and publish it.
    Announce {
        /// The job spec file.
        spec: PathBuf,
        /// The initial weights of an external model (safetensors): stored on the local node, which
        /// serves it to the members by hash, and named in the spec's `model.external.init`.
        #[arg(long)]
        init: Option<PathBuf>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Submit a job spec to a coordinator, which owns, announces and runs it in orchestration
    /// mode (members must trust the coordinator's PeerId).
    Submit {
        /// The job spec file (its `owner` and `coordinator` become the coordinator's key).
        spec: PathBuf,
        #[command(flatten)]
        coordinator: CoordinatorArgs,
    },
    /// Show an orchestrated job's state, its members' states and its rounds' progress, as its
    /// coordinator sees them.
    Status {
        /// The job id (or a unique prefix of it).
        id: String,
        #[command(flatten)]
        coordinator: CoordinatorArgs,
    },
    /// Stop a job: through its coordinator, or for a self-organizing job through its owner's
    /// node (a signed stop; members keep their data and models).
    Stop {
        /// The job id (or a unique prefix of it).
        id: String,
        /// Why, as members will log it.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List the jobs the local node knows.
    List {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Show one job the local node knows, with its rounds if the node takes part.
    Show {
        /// The job id (or a unique prefix of it).
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Take part in a job (nodes join trusted jobs for which they have the data set by
    /// themselves unless `auto_join = false`).
    Join {
        /// The job id (or a unique prefix of it).
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Stop taking part in a job (a signed leave; the node keeps what it learned).
    Leave {
        /// The job id (or a unique prefix of it).
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Follow a job's rounds with a progress bar and the latest accuracy, until it ends.
    Watch {
        /// The job id (or a unique prefix of it).
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Debug, Args)]
pub struct TrainLocalArgs {
    /// An embedded data set (mnist5k, digits, breast-cancer) or a data file (.csv, .npy, IDX).
    #[arg(long, default_value = "mnist5k")]
    pub dataset: String,
    /// For CSV files: the label column, by 0-based index or header name (default: the last).
    #[arg(long)]
    pub label_column: Option<String>,
    /// The model: `softmax` or `mlp:H1,H2,...` (hidden layer sizes).
    #[arg(long, default_value = "mlp:200,200")]
    pub model: String,
    #[arg(long, default_value_t = 20)]
    pub epochs: usize,
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    #[arg(long, default_value_t = 0.05)]
    pub lr: f32,
    #[arg(long, default_value_t = 0.0)]
    pub momentum: f32,
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The share of the data held out for testing.
    #[arg(long, default_value_t = 0.2)]
    pub test_fraction: f32,
    /// Print one JSON object at the end instead of a line per epoch.
    #[arg(long)]
    pub json: bool,
}
