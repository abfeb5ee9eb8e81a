//! The node's settings: read from `node.toml`, overridden by command-line flags, and checked with
//! an error that names the offending setting.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Everything `fedmesh node` needs to run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The node's ed25519 key file (`fedmesh keygen --out`).
    pub key: PathBuf,
    /// Where the RocksDB store, the admin token and the API address file live.
    pub data_dir: PathBuf,
    /// Multiaddresses to listen on.
    #[serde(default = "defaults::listen")]
    pub listen: Vec<String>,
    /// Peers to dial at start: `/ip4/127.0.0.1/tcp/4001/p2p/12D3KooW...`.
    #[serde(default)]
    pub bootstrap: Vec<String>,
    /// Discover peers on the LAN with mDNS (it does not see loopback).
    #[serde(default)]
    pub mdns: bool,
    /// Data set name (as job specs name them) to a local file, or to an embedded data set name.
    #[serde(default)]
    pub datasets: BTreeMap<String, String>,
    /// PeerIds of the job owners whose jobs this node accepts.
    #[serde(default)]
    pub trust: Vec<String>,
    /// Join trusted jobs automatically when this node has their data set.
    #[serde(default = "defaults::yes")]
    pub auto_join: bool,
    /// This node's group label (hierarchical topologies group members by it).
    #[serde(default = "defaults::group")]
    pub group: String,
    /// The TAG roles this node accepts (empty: any).
    #[serde(default)]
    pub roles: Vec<String>,
    /// The admin API's address; loopback only.
    #[serde(default = "defaults::admin")]
    pub admin: SocketAddr,
    /// Largest request-response message, in bytes.
    #[serde(default = "defaults::max_message_bytes")]
    pub max_message_bytes: u64,
    /// Request-response timeout for a small message, in seconds (it grows with the payload).
    #[serde(default = "defaults::request_timeout_secs")]
    pub request_timeout_secs: u64,
    /// Bytes of large request-response frames (deltas, models) held in memory at once, received
    /// or being served: more wait for their turn, and a model asked for beyond it is fetched
    /// from another peer.
    #[serde(default = "defaults::bulk_buffer_bytes")]
    pub bulk_buffer_bytes: u64,
    /// How often open jobs are announced again, in seconds.
    #[serde(default = "defaults::reannounce_secs")]
    pub reannounce_secs: u64,
    /// Deliberate misbehaviour, to test a federation's defenses: `forged-deltas`, `sign-flip`,
    /// `noise` (see `engine::federation::misbehave`). Never set this on a production node.
    #[serde(default)]
    pub misbehave: Vec<String>,
    /// gossipsub heartbeat, in milliseconds.
    #[serde(default = "defaults::gossip_heartbeat_ms")]
    pub gossip_heartbeat_ms: u64,
    /// The command that trains jobs whose model is `external`, e.g. `["python3", "train.py"]`
    /// (empty: this node does not take part in such jobs). Never taken from a job spec.
    #[serde(default)]
    pub trainer: Vec<String>,
    /// The command that evaluates external models (empty: the trainer, `FEDMESH_MODE=evaluate`).
    #[serde(default)]
    pub evaluator: Vec<String>,
    /// An external trainer or evaluator still running after this many seconds is killed.
    #[serde(default = "defaults::trainer_timeout_secs")]
    pub trainer_timeout_secs: u64,
    /// Coordinate the orchestrated jobs that name this node's key as their coordinator (what
    /// `fedmesh coordinator` sets).
    #[serde(default)]
    pub coordinate: bool,
    /// Keep the weights of only the last N rounds of each job in the model registry (0: all);
    /// older rounds keep their hash and metrics.
    #[serde(default)]
    pub model_retention_rounds: u64,
}

mod defaults {
    use std::net::SocketAddr;

    pub fn listen() -> Vec<String> {
        vec!["/ip4/0.0.0.0/tcp/0".to_owned()]
    }
    pub fn yes() -> bool {
        true
    }
    pub fn group() -> String {
        "default".to_owned()
    }
    pub fn admin() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }
    pub fn max_message_bytes() -> u64 {
        512 << 20
    }
    /// One 100 MB model's frame at a time (two would not fit), smaller ones several at once.
    pub fn bulk_buffer_bytes() -> u64 {
        128 << 20
    }
    pub fn request_timeout_secs() -> u64 {
        30
    }
    pub fn reannounce_secs() -> u64 {
        30
    }
    pub fn gossip_heartbeat_ms() -> u64 {
        1000
    }
    pub fn trainer_timeout_secs() -> u64 {
        600
    }
}

/// A setting that is wrong, and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {detail}")]
    Parse { path: PathBuf, detail: String },
    #[error("setting `{setting}`: {problem}")]
    Invalid { setting: &'static str, problem: String },
}

impl NodeConfig {
    /// Reads a `node.toml`.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        toml::from_str(&text)
            .map_err(|e| ConfigError::Parse { path: path.to_owned(), detail: e.to_string() })
    }

    /// Checks every setting that can be checked without touching the network.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |setting, problem: String| Err(ConfigError::Invalid { setting, problem });
        if !self.admin.ip().is_loopback() {
            return invalid("admin", format!("{} is not a loopback address", self.admin));
        }
        if self.listen.is_empty() {
            return invalid("listen", "at least one address is needed".to_owned());
        }
        if self.max_message_bytes < (1 << 20) {
            return invalid("max_message_bytes", "must be at least 1 MiB".to_owned());
        }
        if self.bulk_buffer_bytes < (1 << 20) {
            return invalid("bulk_buffer_bytes", "must be at least 1 MiB".to_owned());
        }
        if self.request_timeout_secs == 0 {
            return invalid("request_timeout_secs", "must be at least 1".to_owned());
        }
        if self.reannounce_secs == 0 {
            return invalid("reannounce_secs", "must be at least 1".to_owned());
        }
        if self.gossip_heartbeat_ms < 10 {
            return invalid("gossip_heartbeat_ms", "must be at least 10".to_owned());
        }
        if self.trainer_timeout_secs == 0 {
            return invalid("trainer_timeout_secs", "must be at least 1".to_owned());
        }
        if self.model_retention_rounds == 1 {
            return invalid(
                "model_retention_rounds",
                "must be 0 (keep all) or at least 2 (a member one round behind fetches the \
                 previous model)"
                    .to_owned(),
            );
        }
        if self.group.is_empty() {
            return invalid("group", "must not be empty".to_owned());
        }
        let known = crate::engine::MISBEHAVIOURS;
        if let Some(unknown) = self.misbehave.iter().find(|kind| !known.contains(&kind.as_str())) {
            return invalid(
                "misbehave",
                format!("`{unknown}` is not one of: {}", known.join(", ")),
            );
        }
        Ok(())
    }
}

impl NodeConfig {
    /// The settings from `--config` (if given) with every flag that was set laid over them.
    pub fn from_args(args: &crate::cli::NodeArgs) -> Result<Self, ConfigError> {
        let mut config = match &args.config {
            Some(path) => Self::from_file(path)?,
            None => Self::from_flags_only(args)?,
        };
        config.apply_flags(args)?;
        config.validate()?;
        Ok(config)
    }

    fn from_flags_only(args: &crate::cli::NodeArgs) -> Result<Self, ConfigError> {
        let missing = |setting| ConfigError::Invalid {
            setting,
            problem: "is required (give --config FILE or the flag)".to_owned(),
        };
        let key = args.key.clone().ok_or_else(|| missing("key"))?;
        let data_dir = args.data_dir.clone().ok_or_else(|| missing("data_dir"))?;
        Ok(Self::with_defaults(key, data_dir))
    }

    /// Every setting at its default, with the two that have none.
    pub fn with_defaults(key: PathBuf, data_dir: PathBuf) -> Self {
        Self {
            key,
            data_dir,
            listen: defaults::listen(),
            bootstrap: Vec::new(),
            mdns: false,
            datasets: BTreeMap::new(),
            trust: Vec::new(),
            auto_join: defaults::yes(),
            group: defaults::group(),
            roles: Vec::new(),
            admin: defaults::admin(),
            max_message_bytes: defaults::max_message_bytes(),
            request_timeout_secs: defaults::request_timeout_secs(),
            bulk_buffer_bytes: defaults::bulk_buffer_bytes(),
            reannounce_secs: defaults::reannounce_secs(),
            gossip_heartbeat_ms: defaults::gossip_heartbeat_ms(),
            misbehave: Vec::new(),
            coordinate: false,
            trainer: Vec::new(),
            evaluator: Vec::new(),
            trainer_timeout_secs: defaults::trainer_timeout_secs(),
            model_retention_rounds: 0,
        }
    }

    /// The external-trainer settings; each job's work directory is under `DATA_DIR/trainers`.
    pub fn trainer_settings(&self) -> crate::external::TrainerSettings {
        crate::external::TrainerSettings {
            trainer: self.trainer.clone(),
            evaluator: self.evaluator.clone(),
            timeout: std::time::Duration::from_secs(self.trainer_timeout_secs),
            root: self.data_dir.join("trainers"),
        }
    }

    fn apply_flags(&mut self, args: &crate::cli::NodeArgs) -> Result<(), ConfigError> {
        if let Some(key) = &args.key {
            self.key = key.clone();
        }
        if let Some(data_dir) = &args.data_dir {
            self.data_dir = data_dir.clone();
        }
        if !args.listen.is_empty() {
            self.listen = args.listen.clone();
        }
        self.bootstrap.extend(args.bootstrap.iter().cloned());
        self.trust.extend(args.trust.iter().cloned());
        for entry in &args.datasets {
            let (name, source) = entry.split_once('=').ok_or_else(|| ConfigError::Invalid {
                setting: "datasets",
                problem: format!("`{entry}` is not NAME=PATH"),
            })?;
            self.datasets.insert(name.to_owned(), source.to_owned());
        }
        self.mdns |= args.mdns;
        if let Some(group) = &args.group {
            self.group = group.clone();
        }
        if let Some(admin) = args.admin {
            self.admin = admin;
        }
        Ok(())
    }
}
