//! The `fedmesh` command line: every subcommand and flag, with the help text a user reads.

use clap::builder::BoolishValueParser;
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
    /// Show the local node at a glance: its peers, its jobs, the rounds in progress and its
    /// recent warnings and errors.
    Status(ApiArgs),
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

/// Settings for `fedmesh node`: every node.toml setting has a flag of the same name (dashes
/// for underscores) and a `FEDMESH_*` variable (the name in capitals); a flag overrides its
/// variable, which overrides the file. Lists take repeated flags or commas; booleans take
/// `true` or `false` (a bare `--mdns` is `true`).
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// A node.toml with the node's settings (see README).
    #[arg(long, env = "FEDMESH_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the effective settings (the file, the variables and the flags) as TOML, and exit.
    #[arg(long)]
    pub print_config: bool,
    /// The node's key file.
    #[arg(long, env = "FEDMESH_KEY")]
    pub key: Option<PathBuf>,
    /// The node's data directory (database, admin token).
    #[arg(long, env = "FEDMESH_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Addresses to listen on, e.g. /ip4/0.0.0.0/tcp/4001.
    #[arg(long, env = "FEDMESH_LISTEN", value_delimiter = ',')]
    pub listen: Option<Vec<String>>,
    /// Peers to dial at start, e.g. /ip4/10.0.0.7/tcp/4001/p2p/12D3KooW...
    #[arg(long, env = "FEDMESH_BOOTSTRAP", value_delimiter = ',')]
    pub bootstrap: Option<Vec<String>>,
    /// Discover peers with mDNS (LAN only; it does not see loopback).
    #[arg(long, env = "FEDMESH_MDNS", value_name = "BOOL", num_args = 0..=1,
          default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub mdns: Option<bool>,
    /// Relay for peers behind NAT (circuit relay v2; for a node others can reach).
    #[arg(long, env = "FEDMESH_RELAY", value_name = "BOOL", num_args = 0..=1,
          default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub relay: Option<bool>,
    /// PeerIds of the job owners whose jobs this node accepts.
    #[arg(long, env = "FEDMESH_TRUST", value_delimiter = ',')]
    pub trust: Option<Vec<String>>,
    /// Join trusted jobs whose data set this node has by itself.
    #[arg(long, env = "FEDMESH_AUTO_JOIN", value_name = "BOOL", num_args = 0..=1,
          default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub auto_join: Option<bool>,
    /// The node's group label for hierarchical topologies.
    #[arg(long, env = "FEDMESH_GROUP")]
    pub group: Option<String>,
    /// The TAG roles this node accepts (none: any).
    #[arg(long, env = "FEDMESH_ROLES", value_delimiter = ',')]
    pub roles: Option<Vec<String>>,
    /// The admin API address (loopback only), e.g. 127.0.0.1:7070.
    #[arg(long, env = "FEDMESH_ADMIN")]
    pub admin: Option<std::net::SocketAddr>,
    /// Where Prometheus scrapes the metrics (no token), e.g. 127.0.0.1:9464.
    #[arg(long, env = "FEDMESH_METRICS")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Connections the node holds at once, at most (bulk transfers close when done while it
    /// holds more than 3/4 of them).
    #[arg(long, env = "FEDMESH_MAX_CONNECTIONS")]
    pub max_connections: Option<u32>,
    /// The largest request-response message, in bytes.
    #[arg(long, env = "FEDMESH_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<u64>,
    /// The request-response timeout of a small message, in seconds.
    #[arg(long, env = "FEDMESH_REQUEST_TIMEOUT_SECS")]
    pub request_timeout_secs: Option<u64>,
    /// Bytes of large buffers (deltas, models) held in memory at once.
    #[arg(long, env = "FEDMESH_BULK_BUFFER_BYTES")]
    pub bulk_buffer_bytes: Option<u64>,
    /// How often known jobs are published again, in seconds.
    #[arg(long, env = "FEDMESH_REANNOUNCE_SECS")]
    pub reannounce_secs: Option<u64>,
    /// The gossipsub heartbeat, in milliseconds.
    #[arg(long, env = "FEDMESH_GOSSIP_HEARTBEAT_MS")]
    pub gossip_heartbeat_ms: Option<u64>,
    /// Testing only, in a build with the `misbehave` cargo feature: misbehave on purpose.
    #[arg(long, env = "FEDMESH_MISBEHAVE", value_delimiter = ',')]
    pub misbehave: Option<Vec<crate::misbehaviour::Misbehaviour>>,
    /// Testing only, as --misbehave: local training takes this many times as long.
    #[arg(long, env = "FEDMESH_SLOW_TRAINING")]
    pub slow_training: Option<f32>,
    /// The command that trains external models, e.g. "python3 train.py" (split at spaces).
    #[arg(long, env = "FEDMESH_TRAINER")]
    pub trainer: Option<String>,
    /// The command that evaluates external models (default: the trainer).
    #[arg(long, env = "FEDMESH_EVALUATOR")]
    pub evaluator: Option<String>,
    /// A trainer or evaluator still running after this many seconds is killed.
    #[arg(long, env = "FEDMESH_TRAINER_TIMEOUT_SECS")]
    pub trainer_timeout_secs: Option<u64>,
    /// Coordinate the orchestrated jobs that name this node's key (`fedmesh coordinator`).
    #[arg(long, env = "FEDMESH_COORDINATE", value_name = "BOOL", num_args = 0..=1,
          default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub coordinate: Option<bool>,
    /// Keep only the last N rounds' weights of each job (0: all).
    #[arg(long, env = "FEDMESH_MODEL_RETENTION_ROUNDS")]
    pub model_retention_rounds: Option<u64>,
    /// Data sets this node offers, NAME=PATH (PATH#COLUMN names a CSV label column) or
    /// NAME=EMBEDDED-NAME; added to the file's `[datasets]`. The variable separates them with `;`.
    #[arg(long, visible_alias = "dataset", env = "FEDMESH_DATASETS", value_delimiter = ';')]
    pub datasets: Option<Vec<String>>,
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
    /// Sign a job spec (JSON) with the node's key and publish it; a spec without `owner` gets
    /// the node's own PeerId.
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
    /// Turn a Flame example directory (schema.json, job.json, modelSpec.json, dataSpec.json)
    /// into fedmesh job specs: its TAG, hyperparameters, optimizer and selector. Prints each
    /// spec (a JSON array when the schema runs parallel experiments), without `owner` (`job
    /// announce` fills it in), and on stderr what fedmesh ignores of the job and why.
    FromFlame {
        /// The Flame job's directory.
        dir: PathBuf,
        /// The model: `softmax` or `mlp:H1,H2,...` (Flame's models are Python code).
        #[arg(long, default_value = "mlp:200,200")]
        model: String,
        /// The data set name each member maps to its own data (its `datasets` setting).
        #[arg(long, default_value = "mnist5k")]
        dataset: String,
        /// The PeerId of the coordinator node that takes a schema's coordinator role: the job
        /// runs in orchestration mode (without it, such a job self-organizes, with a warning,
        /// unless it is submitted to a coordinator node with `fedmesh job submit`).
        #[arg(long)]
        coordinator: Option<String>,
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
        /// The ticket the job's owner gave this node (`fedmesh job admit` prints it), for a
        /// job that admits members by ticket (`participation.admission = "owner"`).
        #[arg(long)]
        ticket: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Admit a node to a job this node owns that admits members by ticket: prints the ticket
    /// to hand to that node's operator (`fedmesh job join ID --ticket TICKET`).
    Admit {
        /// The job id (or a unique prefix of it).
        id: String,
        /// The admitted node's peer id (`fedmesh status` shows it).
        peer: String,
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
