//! The node's settings: read from `node.toml`, overridden by command-line flags and `FEDMESH_*`
//! variables, checked with an error that names the offending setting, printed as TOML, and the
//! warnings an operator should see at start.

use crate::misbehaviour::Misbehaviour;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Everything `fedmesh node` needs to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// Relay for peers behind NAT (circuit relay v2): a public node sets it, so that others can
    /// listen through it and reach each other until DCUtR makes their connection direct.
    #[serde(default)]
    pub relay: bool,
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
    /// Where Prometheus scrapes the node's metrics (no token; port 0: any free port).
    #[serde(default = "defaults::metrics")]
    pub metrics: SocketAddr,
    /// Connections the node holds at once, at most: the gossip mesh, a few for discovery, and
    /// bulk transfers, which close when done while the node holds more than 3/4 of this.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: u32,
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
    /// Deliberate misbehaviour or faults, to test a federation's defenses: `forged-deltas`,
    /// `sign-flip`, `noise`, `slow-disk`... (see [`Misbehaviour`]). Only a build with the
    /// `misbehave` cargo feature (the tests' and the testnet's) takes this setting.
    #[serde(default)]
    pub misbehave: Vec<Misbehaviour>,
    /// Testing only, in a build with the `misbehave` cargo feature: local training takes this
    /// many times as long as it does (default 1), as on a slower machine.
    #[serde(default = "defaults::slow_training")]
    pub slow_training: f32,
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
    /// Data set name (as job specs name them) to a local file (`PATH#COLUMN` names a CSV file's
    /// label column), or to an embedded data set name. Serialized last: it is a TOML table.
    #[serde(default)]
    pub datasets: BTreeMap<String, String>,
}

/// The settings' defaults, shared with the network's own.
pub(crate) mod defaults {
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
    pub fn metrics() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }
    pub fn max_connections() -> u32 {
        64
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
    pub fn slow_training() -> f32 {
        1.0
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
        if self.max_connections < 16 {
            return invalid("max_connections", "must be at least 16".to_owned());
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
        self.check_misbehave(crate::misbehaviour::COMPILED_IN)
    }

    /// Refuses the `misbehave` and `slow_training` settings unless this build acts on them
    /// (`compiled_in`).
    fn check_misbehave(&self, compiled_in: bool) -> Result<(), ConfigError> {
        if !(self.slow_training.is_finite() && self.slow_training >= 1.0) {
            let problem = format!("must be a factor of at least 1, not {}", self.slow_training);
            return Err(ConfigError::Invalid { setting: "slow_training", problem });
        }
        if self.slow_training > 1.0 && !compiled_in {
            return Err(ConfigError::Invalid {
                setting: "slow_training",
                problem: "is a test setting, and this fedmesh was built without test \
                          misbehaviour (the `misbehave` cargo feature); remove the setting"
                    .to_owned(),
            });
        }
        match self.misbehave.first() {
            Some(kind) if !compiled_in => Err(ConfigError::Invalid {
                setting: "misbehave",
                problem: format!(
                    "`{kind}` is a test setting, and this fedmesh was built without test \
                     misbehaviour (the `misbehave` cargo feature, which only the tests and the \
                     testnet turn on); remove the setting"
                ),
            }),
            _ => Ok(()),
        }
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
            relay: false,
            datasets: BTreeMap::new(),
            trust: Vec::new(),
            auto_join: defaults::yes(),
            group: defaults::group(),
            roles: Vec::new(),
            admin: defaults::admin(),
            metrics: defaults::metrics(),
            max_connections: defaults::max_connections(),
            max_message_bytes: defaults::max_message_bytes(),
            request_timeout_secs: defaults::request_timeout_secs(),
            bulk_buffer_bytes: defaults::bulk_buffer_bytes(),
            reannounce_secs: defaults::reannounce_secs(),
            gossip_heartbeat_ms: defaults::gossip_heartbeat_ms(),
            misbehave: Vec::new(),
            slow_training: defaults::slow_training(),
            coordinate: false,
            trainer: Vec::new(),
            evaluator: Vec::new(),
            trainer_timeout_secs: defaults::trainer_timeout_secs(),
            model_retention_rounds: 0,
        }
    }

    /// What the job engine needs of these settings.
    pub fn engine_settings(&self) -> crate::engine::EngineSettings {
        crate::engine::EngineSettings {
            trust: self.trust.clone(),
            datasets: self.datasets.clone(),
            trainers: self.trainer_settings(),
            group: self.group.clone(),
            roles: self.roles.clone(),
            auto_join: self.auto_join,
            reannounce: std::time::Duration::from_secs(self.reannounce_secs),
            coordinate: self.coordinate,
            misbehave: self.misbehave.clone(),
            slow_training: self.slow_training,
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

    /// Lays every flag (or `FEDMESH_*` variable) that was set over the settings.
    fn apply_flags(&mut self, args: &crate::cli::NodeArgs) -> Result<(), ConfigError> {
        set(&mut self.key, &args.key);
        set(&mut self.data_dir, &args.data_dir);
        set(&mut self.listen, &args.listen);
        set(&mut self.bootstrap, &args.bootstrap);
        set(&mut self.mdns, &args.mdns);
        set(&mut self.relay, &args.relay);
        set(&mut self.trust, &args.trust);
        set(&mut self.auto_join, &args.auto_join);
        set(&mut self.group, &args.group);
        set(&mut self.roles, &args.roles);
        set(&mut self.admin, &args.admin);
        set(&mut self.metrics, &args.metrics);
        set(&mut self.max_connections, &args.max_connections);
        set(&mut self.max_message_bytes, &args.max_message_bytes);
        set(&mut self.request_timeout_secs, &args.request_timeout_secs);
        set(&mut self.bulk_buffer_bytes, &args.bulk_buffer_bytes);
        set(&mut self.reannounce_secs, &args.reannounce_secs);
        set(&mut self.gossip_heartbeat_ms, &args.gossip_heartbeat_ms);
        set(&mut self.misbehave, &args.misbehave);
        set(&mut self.slow_training, &args.slow_training);
        set(&mut self.trainer_timeout_secs, &args.trainer_timeout_secs);
        set(&mut self.coordinate, &args.coordinate);
        set(&mut self.model_retention_rounds, &args.model_retention_rounds);
        if let Some(trainer) = &args.trainer {
            self.trainer = trainer.split_whitespace().map(str::to_owned).collect();
        }
        if let Some(evaluator) = &args.evaluator {
            self.evaluator = evaluator.split_whitespace().map(str::to_owned).collect();
        }
        for entry in args.datasets.iter().flatten() {
            let (name, source) = entry.split_once('=').ok_or_else(|| ConfigError::Invalid {
                setting: "datasets",
                problem: format!("`{entry}` is not NAME=PATH"),
            })?;
            self.datasets.insert(name.to_owned(), source.to_owned());
        }
        Ok(())
    }

    /// The settings as a node.toml would state them.
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        toml::to_string(self).map_err(|e| ConfigError::Invalid {
            setting: "(all)",
            problem: format!("cannot be written as TOML: {e}"),
        })
    }

    /// What an operator should fix or know before the node runs: an empty trust list, data set
    /// files that do not exist, listen addresses other machines cannot reach.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.trust.is_empty() && !self.coordinate {
            warnings.push(
                "`trust` is empty: this node takes part in no job announced by another node \
                 (add the job owners' PeerIds to `trust`)"
                    .to_owned(),
            );
        }
        for (name, setting) in &self.datasets {
            match fedmesh_learning::DataSource::from_setting(setting) {
                Ok(source) => {
                    warnings.extend(source.missing_files().iter().map(|path| {
                        format!("data set `{name}`: {} does not exist", path.display())
                    }))
                }
                Err(error) => warnings.push(format!("data set `{name}`: {error}")),
            }
        }
        warnings.extend(self.unreachable_listen_warning());
        warnings
    }

    /// A warning when every listen address is loopback but peers are expected from elsewhere
    /// (a bootstrap peer on another machine, or mDNS).
    fn unreachable_listen_warning(&self) -> Option<String> {
        let loopback_only = self.listen.iter().all(|address| is_loopback_multiaddr(address));
        let remote_peers =
            self.bootstrap.iter().filter(|address| !is_loopback_multiaddr(address)).count();
        (loopback_only && (remote_peers > 0 || self.mdns)).then(|| {
            format!(
                "`listen` has only loopback addresses ({}): peers on other machines ({} \
                 bootstrap peer(s) elsewhere{}) cannot reach this node; listen on \
                 /ip4/0.0.0.0/tcp/PORT or a LAN address",
                self.listen.join(", "),
                remote_peers,
                if self.mdns { ", those mDNS finds" } else { "" }
            )
        })
    }
}

/// Whether a multiaddress starts with a loopback IP (`/ip4/127.x`, `/ip6/::1`).
fn is_loopback_multiaddr(address: &str) -> bool {
    let mut parts = address.split('/').skip(1);
    let (protocol, ip) = (parts.next(), parts.next().map(str::parse::<std::net::IpAddr>));
    matches!((protocol, ip), (Some("ip4" | "ip6"), Some(Ok(ip))) if ip.is_loopback())
}

/// Overwrites `target` with a flag's value when the flag was given.
fn set<T: Clone>(target: &mut T, flag: &Option<T>) {
    if let Some(value) = flag {
        *target = value.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> NodeConfig {
        NodeConfig::with_defaults("k".into(), "d".into())
    }

    #[test]
    fn misbehaviour_is_refused_by_a_build_without_it_and_unknown_kinds_by_name() {
        let mut config = config();
        assert!(config.check_misbehave(false).is_ok(), "no misbehaviour set");
        config.misbehave = vec![Misbehaviour::SignFlip];
        let refused = config.check_misbehave(false).unwrap_err().to_string();
        assert!(refused.contains("misbehave") && refused.contains("`sign-flip`"), "{refused}");
        assert!(config.check_misbehave(true).is_ok(), "a test build takes it");
        config.slow_training = 5.0;
        let refused = config.check_misbehave(false).unwrap_err().to_string();
        assert!(refused.contains("slow_training"), "{refused}");
        assert!(config.check_misbehave(true).is_ok(), "a test build takes it");
        config.slow_training = 0.5;
        let refused = config.check_misbehave(true).unwrap_err().to_string();
        assert!(refused.contains("at least 1"), "{refused}");
        let file = "key = \"k\"\ndata_dir = \"d\"\nmisbehave = [\"bogus\"]\n";
        let unknown = toml::from_str::<NodeConfig>(file).unwrap_err().to_string();
        assert!(unknown.contains("bogus") && unknown.contains("sign-flip"), "{unknown}");
    }

    #[test]
    fn an_empty_trust_list_and_a_missing_data_file_are_warned_of() {
        let mut config = config();
        config.datasets.insert("iris".into(), "/nonexistent/iris.csv#species".into());
        config.datasets.insert("digits".into(), "digits".into());
        let warnings = config.warnings();
        assert!(warnings.iter().any(|w| w.contains("`trust` is empty")), "{warnings:?}");
        assert!(
            warnings.iter().any(|w| w.contains("data set `iris`: /nonexistent/iris.csv does")),
            "{warnings:?}"
        );
        assert_eq!(warnings.len(), 2, "{warnings:?}");
    }

    #[test]
    fn loopback_listening_with_remote_bootstrap_peers_is_warned_of() {
        let mut config = config();
        config.trust = vec!["12D3KooW".into()];
        config.listen = vec!["/ip4/127.0.0.1/tcp/4001".into()];
        config.bootstrap = vec!["/ip4/127.0.0.1/tcp/4002/p2p/x".into()];
        assert!(config.warnings().is_empty(), "{:?}", config.warnings());
        config.bootstrap.push("/ip4/10.0.0.7/tcp/4001/p2p/x".into());
        let warnings = config.warnings();
        assert!(warnings[0].contains("only loopback addresses"), "{warnings:?}");
        config.listen.push("/ip4/0.0.0.0/tcp/4001".into());
        assert!(config.warnings().is_empty());
    }

    #[test]
    fn printed_settings_read_back_the_same() {
        let mut config = config();
        config.datasets.insert("iris".into(), "iris.csv#species".into());
        config.trainer = vec!["python3".into(), "train.py".into()];
        let text = config.to_toml().unwrap();
        let back: NodeConfig = toml::from_str(&text).unwrap();
        assert_eq!(back.to_toml().unwrap(), text);
        assert!(text.contains("[datasets]"), "{text}");
    }
}
