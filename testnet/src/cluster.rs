//! A set of real `fedmesh node` processes on 127.0.0.1, or each in a network namespace of its
//! own on a virtual LAN (`testnet --netns`): each with its own key, data directory and node.toml,
//! started one after another so that each bootstraps from the ones before.

use crate::netns::{Host, NatKind, NetnsError, VirtualLan};
use fedmesh_admin_api::{AdminClient, Endpoint, metric_value};
use fedmesh_node::config::{ConfigError, NodeConfig};
use fedmesh_node::misbehaviour::Misbehaviour;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a node told to stop may take to exit before it is killed.
const STOP_LIMIT: Duration = Duration::from_secs(10);

/// The address nodes not in a namespace of their own listen on.
const LOOPBACK: &str = "127.0.0.1";

/// How many nodes' admin APIs the testnet asks at once when it gathers figures from all.
const NODES_ASKED_AT_ONCE: usize = 16;

/// Why the cluster could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot run {binary}: {source}")]
    Spawn { binary: String, source: std::io::Error },
    #[error("`fedmesh keygen` failed: {0}")]
    Keygen(String),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot write the node's settings as TOML into {path}: {detail}")]
    Toml { path: PathBuf, detail: String },
    #[error("node {name} did not come up within {seconds} s; its log is {log}")]
    NotUp { name: String, seconds: u64, log: String },
    #[error("node {name} exited early ({status}); its log is {log}, which ends:\n{tail}")]
    Exited { name: String, status: String, log: String, tail: String },
    #[error(transparent)]
    Api(#[from] fedmesh_admin_api::ApiError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("cannot reach node {name}'s admin API inside its namespace: {source}")]
    Proxy { name: String, source: std::io::Error },
}

/// The transport nodes listen on and bootstrap over (`testnet --transport`); nodes in
/// namespaces listen on both, and bootstrap over this one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// TCP, with Noise and yamux over it.
    #[default]
    Tcp,
    /// QUIC (TLS 1.3 and streams of its own) over UDP.
    Quic,
}

impl Transport {
    /// The listen address on `ip` and `port` (0: any free port).
    pub fn listen_address(self, ip: &str, port: u16) -> String {
        match self {
            Self::Tcp => format!("/ip4/{ip}/tcp/{port}"),
            Self::Quic => format!("/ip4/{ip}/udp/{port}/quic-v1"),
        }
    }

    /// Whether `address` (a multiaddr, maybe with `/p2p/`) is one on `ip` of this transport.
    fn is_on(self, address: &str, ip: &str) -> bool {
        let prefix = match self {
            Self::Tcp => format!("/ip4/{ip}/tcp/"),
            Self::Quic => format!("/ip4/{ip}/udp/"),
        };
        address.starts_with(&prefix) && address.contains("/quic-v1") == (self == Self::Quic)
    }
}

/// How to start one node.
#[derive(Debug, Clone, Default)]
pub struct NodeSpec {
    /// Data set name to a file or an embedded data set name.
    pub datasets: Vec<(String, String)>,
    /// PeerIds of job owners to trust.
    pub trust: Vec<String>,
    /// The node.toml settings beyond the testnet's own.
    pub settings: NodeSettings,
}

/// The node.toml settings a scenario or a test sets beyond the testnet's own.
#[derive(Debug, Clone, Default)]
pub struct NodeSettings {
    /// Group label for hierarchical topologies (unset: the node's default).
    pub group: Option<String>,
    /// Coordinate the orchestrated jobs that name the node's key.
    pub coordinate: bool,
    /// The external trainer command (empty: the built-in learner).
    pub trainer: Vec<String>,
    /// How long the external trainer may run (unset: the node's default).
    pub trainer_timeout_secs: Option<u64>,
    /// How the node misbehaves on purpose.
    pub misbehave: Vec<Misbehaviour>,
    /// How many rounds' models the node keeps (0 or unset: all).
    pub model_retention_rounds: Option<u64>,
    /// How many times as long its local training takes (unset: as long as it does).
    pub slow_training: Option<f32>,
    /// Its gossipsub heartbeat (unset: the testnet's brisk 200 ms).
    pub gossip_heartbeat_ms: Option<u64>,
    /// Relay for the nodes behind NAT.
    pub relay: bool,
}

/// One running (or stopped) node.
pub struct NodeProcess {
    pub name: String,
    pub dir: PathBuf,
    pub peer_id: String,
    /// The address others bootstrap from, with `/p2p/PEERID`.
    pub address: String,
    pub api: AdminClient,
    /// Its place on the virtual LAN (none: on loopback).
    pub host: Option<Host>,
    /// How it was started (kept to write its node.toml again for a restart).
    spec: NodeSpec,
    child: Option<Child>,
}

/// What one node used over a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeUsage {
    pub node: String,
    /// Peak resident memory of its process, in MB (10^6 bytes).
    pub peak_rss_mb: Option<f64>,
    /// Bytes it sent in messages (gossip, requests, responses).
    pub bytes_sent: u64,
    /// Its connections open at the end of the run, by kind, and the most it held at once.
    #[serde(default)]
    pub connections: Connections,
    #[serde(default)]
    pub peak_connections: u64,
}

/// A node's open connections by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connections {
    pub direct: u64,
    /// Through a circuit relay.
    pub relayed: u64,
    /// Direct connections made by hole punching (DCUtR).
    pub hole_punched: u64,
}

/// The nodes' log filter unless `FEDMESH_TESTNET_LOG` names another. (gossipsub warns of each
/// message it no longer holds when its node validated it late: thousands a minute a node at 200
/// nodes, each a line written.)
const DEFAULT_LOG: &str = "info,libp2p_gossipsub=error";

/// The most nodes a new node bootstraps from; it finds the others through them (Kademlia).
const MAX_BOOTSTRAP_PEERS: usize = 8;

/// At most `count` of `addresses` (in start order): the latest `count / 2`, then ever further
/// back (twice as far each time). A newcomer is then a few hops from every node, and no node
/// (such as the first, which owns the job) is in every list: at 200 nodes all of them dialling
/// the first kept it at its connection bound and its gossip seconds behind.
fn spread_from_latest(addresses: Vec<String>, count: usize) -> Vec<String> {
    if addresses.len() <= count {
        return addresses;
    }
    let near = (count / 2).max(1);
    let far = std::iter::successors(Some(near * 2), |back: &usize| back.checked_mul(2));
    let backs = (1..=near).chain(far).take_while(|back| *back <= addresses.len()).take(count);
    backs.map(|back| addresses[addresses.len() - back].clone()).collect()
}

/// The `fedmesh` binary and a root directory under which every node gets a folder.
pub struct Cluster {
    binary: PathBuf,
    root: PathBuf,
    pub nodes: Vec<NodeProcess>,
    /// The coordinator of an orchestrated run (`coordinate = true`, no data; not a member).
    pub coordinator: Option<NodeProcess>,
    /// Each node bootstraps from the node started last before it only, not from every node
    /// running: the rest it must discover (Kademlia).
    pub chain_bootstrap: bool,
    /// What the nodes started from now on listen on and bootstrap over.
    pub transport: Transport,
    /// The namespaces the nodes run in (none: every node on loopback).
    lan: Option<VirtualLan>,
}

impl Cluster {
    pub fn new(binary: &Path, root: &Path) -> Self {
        Self {
            binary: binary.to_owned(),
            root: root.to_owned(),
            nodes: Vec::new(),
            coordinator: None,
            chain_bootstrap: false,
            transport: Transport::Tcp,
            lan: None,
        }
    }

    /// Runs every node started from now on in a namespace of its own on a virtual LAN, behind
    /// a NAT of `nat`'s kind but for node0 (the bootstrap node, which relays for the others).
    pub fn on_virtual_lan(&mut self, nat: Option<NatKind>) -> Result<(), ClusterError> {
        self.lan = Some(VirtualLan::create(nat)?);
        Ok(())
    }

    /// Creates a key with `fedmesh keygen` and returns its PeerId.
    pub fn keygen(&self, out: &Path) -> Result<String, ClusterError> {
        let output =
            Command::new(&self.binary).args(["keygen", "--out"]).arg(out).output().map_err(
                |source| ClusterError::Spawn { binary: self.binary.display().to_string(), source },
            )?;
        if !output.status.success() {
            return Err(ClusterError::Keygen(String::from_utf8_lossy(&output.stderr).into_owned()));
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        stdout
            .lines()
            .rev()
            .map(str::trim)
            .find(|line| !line.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| ClusterError::Keygen("printed no PeerId".to_owned()))
    }

    /// Starts a new node with a new key that bootstraps from every node already running, and
    /// waits until its admin API answers.
    pub async fn start_node(&mut self, spec: &NodeSpec) -> Result<&NodeProcess, ClusterError> {
        let dir = self.next_node_dir()?;
        self.keygen(&dir.join("node.key"))?;
        self.launch(dir, spec).await
    }

    /// Starts a new node that runs under an existing key file (copied into its folder).
    pub async fn start_node_with_key(
        &mut self,
        spec: &NodeSpec,
        key: &Path,
    ) -> Result<&NodeProcess, ClusterError> {
        let dir = self.next_node_dir()?;
        let target = dir.join("node.key");
        std::fs::copy(key, &target)
            .map_err(|source| ClusterError::Write { path: target, source })?;
        self.launch(dir, spec).await
    }

    /// Starts the coordinator under an existing key file: a node that coordinates the
    /// orchestrated jobs naming that key, and holds no data. Nodes started later bootstrap from it.
    pub async fn start_coordinator(&mut self, key: &Path) -> Result<&NodeProcess, ClusterError> {
        let dir = self.root.join("coordinator");
        std::fs::create_dir_all(&dir)
            .map_err(|source| ClusterError::Write { path: dir.clone(), source })?;
        let target = dir.join("node.key");
        std::fs::copy(key, &target)
            .map_err(|source| ClusterError::Write { path: target, source })?;
        let settings = NodeSettings { coordinate: true, ..NodeSettings::default() };
        let spec = NodeSpec { settings, ..NodeSpec::default() };
        let process = self.start_process("coordinator".into(), dir, spec).await?;
        Ok(self.coordinator.insert(process))
    }

    fn next_node_dir(&self) -> Result<PathBuf, ClusterError> {
        let dir = self.root.join(format!("node{}", self.nodes.len()));
        std::fs::create_dir_all(&dir)
            .map_err(|source| ClusterError::Write { path: dir.clone(), source })?;
        Ok(dir)
    }

    async fn launch(
        &mut self,
        dir: PathBuf,
        spec: &NodeSpec,
    ) -> Result<&NodeProcess, ClusterError> {
        let name = format!("node{}", self.nodes.len());
        let mut spec = spec.clone();
        // The first node on a LAN is the public one: the others' bootstrap node and relay.
        spec.settings.relay |= self.lan.is_some() && self.nodes.is_empty();
        let process = self.start_process(name, dir, spec).await?;
        self.nodes.push(process);
        Ok(&self.nodes[self.nodes.len() - 1])
    }

    /// Places a node on the LAN (a relay is public), writes its config (bootstrapping from
    /// every node running), starts it and waits until its admin API answers.
    async fn start_process(
        &mut self,
        name: String,
        dir: PathBuf,
        spec: NodeSpec,
    ) -> Result<NodeProcess, ClusterError> {
        let public = spec.settings.relay || spec.settings.coordinate;
        let host = match &mut self.lan {
            Some(lan) => Some(lan.add_host(&name, public)?),
            None => None,
        };
        let bootstrap = self.running_addresses(None);
        write_config(&dir, &spec, &bootstrap, self.transport, host.as_ref())?;
        let mut child = self.spawn(&dir, host.as_ref())?;
        let up = wait_until_up(&name, &dir, &mut child, self.transport, host.as_ref()).await?;
        let (peer_id, address, api) = (up.peer_id, up.address, up.api);
        Ok(NodeProcess { name, dir, peer_id, address, api, host, spec, child: Some(child) })
    }

    fn spawn(&self, dir: &Path, host: Option<&Host>) -> Result<Child, ClusterError> {
        // Appended to, so that a restarted node's log keeps what it logged before.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("node.log"))
            .map_err(|source| ClusterError::Write { path: dir.join("node.log"), source })?;
        let log_err = log
            .try_clone()
            .map_err(|source| ClusterError::Write { path: dir.join("node.log"), source })?;
        let mut command = match host {
            Some(host) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", &host.namespace]).arg(&self.binary);
                command
            }
            None => Command::new(&self.binary),
        };
        // The node's settings are its node.toml alone, whatever FEDMESH_* this process has.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("FEDMESH_") {
                command.env_remove(name);
            }
        }
        command
            .args(["node", "--config"])
            .arg(dir.join("node.toml"))
            .env(
                "RUST_LOG",
                std::env::var("FEDMESH_TESTNET_LOG").unwrap_or_else(|_| DEFAULT_LOG.into()),
            )
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|source| ClusterError::Spawn {
                binary: self.binary.display().to_string(),
                source,
            })
    }

    /// Restarts a stopped node from its data directory, on the port it listened on before (as a
    /// node with a configured port would: peers know it by that address).
    pub async fn restart(&mut self, index: usize) -> Result<(), ClusterError> {
        let node = &self.nodes[index];
        let _ = std::fs::remove_file(node.data_dir().join("admin.json"));
        if node.host.is_none() {
            keep_listen_address(&node.dir, &node.address)?;
        }
        let mut child = self.spawn(&node.dir, node.host.as_ref())?;
        let up =
            wait_until_up(&node.name, &node.dir, &mut child, self.transport, node.host.as_ref())
                .await?;
        let node = &mut self.nodes[index];
        node.address = up.address;
        node.api = up.api;
        node.child = Some(child);
        Ok(())
    }

    /// Restarts a stopped node from its data directory, misbehaving from now on if `misbehave`
    /// names how (for good: a later restart keeps it); it bootstraps from every node running
    /// now.
    pub async fn restart_with(
        &mut self,
        index: usize,
        misbehave: Option<Misbehaviour>,
    ) -> Result<(), ClusterError> {
        let bootstrap = self.running_addresses(Some(index));
        let node = &mut self.nodes[index];
        node.spec.settings.misbehave.extend(misbehave);
        write_config(&node.dir, &node.spec, &bootstrap, self.transport, node.host.as_ref())?;
        self.restart(index).await
    }

    /// The bootstrap addresses of the running nodes others can dial (the coordinator's last),
    /// but `except`: the last one's alone when bootstrapping in a chain, else at most
    /// [`MAX_BOOTSTRAP_PEERS`] spread from the latest back (see [`spread_from_latest`]).
    fn running_addresses(&self, except: Option<usize>) -> Vec<String> {
        let running = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, n)| n.is_running() && n.is_public() && Some(*i) != except);
        let coordinator = self.coordinator.iter().filter(|c| c.is_running());
        let mut addresses: Vec<String> = running
            .map(|(_, n)| n.address.clone())
            .chain(coordinator.map(|c| c.address.clone()))
            .collect();
        if self.chain_bootstrap {
            addresses.drain(..addresses.len().saturating_sub(1));
            return addresses;
        }
        spread_from_latest(addresses, MAX_BOOTSTRAP_PEERS)
    }

    /// What every running node used so far.
    pub async fn usage(&self) -> Vec<NodeUsage> {
        self.ask_running(NodeProcess::usage).await
    }

    /// Asks every running node with `ask` (see [`ask_each`]).
    pub async fn ask_running<'a, T, F>(&'a self, ask: impl Fn(&'a NodeProcess) -> F) -> Vec<T>
    where
        F: Future<Output = T>,
    {
        ask_each(self.nodes.iter().filter(|node| node.is_running()), ask).await
    }

    /// Stops every node.
    pub fn stop_all(&mut self) {
        // All are told first, then waited for: one at a time, 200 busy nodes took 10 minutes.
        let nodes = self.nodes.iter_mut().chain(self.coordinator.as_mut());
        let told: Vec<&mut NodeProcess> = nodes.filter(|node| node.terminate()).collect();
        let deadline = Instant::now() + STOP_LIMIT;
        for node in told {
            node.reap(deadline);
        }
    }
}

/// Asks each of `nodes` with `ask`, several at a time (one after another, hundreds of busy
/// nodes' APIs took minutes, and a report fell that far behind the job); the answers in the
/// nodes' order.
pub async fn ask_each<'a, T, F>(
    nodes: impl IntoIterator<Item = &'a NodeProcess>,
    ask: impl Fn(&'a NodeProcess) -> F,
) -> Vec<T>
where
    F: Future<Output = T>,
{
    futures::stream::iter(nodes.into_iter().map(ask)).buffered(NODES_ASKED_AT_ONCE).collect().await
}

impl Drop for Cluster {
    /// Stops every node; when a test is failing, first prints the end of each node's log, which
    /// goes with the test's temporary directory.
    fn drop(&mut self) {
        if std::thread::panicking() {
            for node in self.nodes.iter().chain(self.coordinator.as_ref()) {
                let log = node.dir.join("node.log");
                eprintln!("---- the end of {}'s log ({})", node.name, log.display());
                eprintln!("{}", log_tail(&log));
            }
        }
        self.stop_all();
    }
}

/// How many of a node's last log lines a failure shows.
const LOG_TAIL_LINES: usize = 40;

/// The last lines of a log file (or why it cannot be read).
fn log_tail(path: &Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
        }
        Err(error) => format!("(cannot read it: {error})"),
    }
}

impl NodeProcess {
    /// The node's data directory (database, admin endpoint).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Whether others can dial it (it is not behind a NAT).
    pub fn is_public(&self) -> bool {
        self.host.as_ref().is_none_or(|host| host.nat.is_none())
    }

    /// Whether its process was started and not stopped or killed since.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The node's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("node.log")).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn stop(&mut self) {
        if self.terminate() {
            self.reap(Instant::now() + STOP_LIMIT);
        }
    }

    /// Sends SIGTERM to its process, if it runs; whether it did.
    fn terminate(&self) -> bool {
        let Some(child) = &self.child else { return false };
        // A signal by system call: a minimal machine may have no `kill` program.
        let pid = i32::try_from(child.id()).map(nix::unistd::Pid::from_raw);
        let _ = pid.map(|pid| nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM));
        true
    }

    /// Waits for its process to exit until `deadline`, then kills it.
    fn reap(&mut self, deadline: Instant) {
        let Some(mut child) = self.child.take() else { return };
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// The peak resident memory of its process so far (`VmHWM`), in bytes; none once stopped.
    pub fn peak_rss_bytes(&self) -> Option<u64> {
        let pid = self.child.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find_map(|line| line.strip_prefix("VmHWM:"))?;
        let kib: u64 = line.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kib * 1024)
    }

    /// What it used: peak memory and the bytes it sent (from its metrics).
    pub async fn usage(&self) -> NodeUsage {
        let metrics = self.api.metrics().await.unwrap_or_default();
        NodeUsage {
            node: self.name.clone(),
            peak_rss_mb: self.peak_rss_bytes().map(|bytes| bytes as f64 / 1e6),
            bytes_sent: metric_value(&metrics, "fedmesh_bytes_sent_total") as u64,
            connections: Connections {
                direct: metric_value(&metrics, "fedmesh_connections{kind=\"direct\"}") as u64,
                relayed: metric_value(&metrics, "fedmesh_connections{kind=\"relayed\"}") as u64,
                hole_punched: metric_value(&metrics, "fedmesh_connections{kind=\"hole_punched\"}")
                    as u64,
            },
            peak_connections: metric_value(&metrics, "fedmesh_connections_peak") as u64,
        }
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// How long a node may take to start and answer its admin API.
const START_LIMIT: Duration = Duration::from_secs(60);

/// A node that answers its admin API.
struct Up {
    peer_id: String,
    /// Its TCP listen address (on loopback, or its host's) with `/p2p/PEERID`.
    address: String,
    api: AdminClient,
}

/// Waits until the node's admin API answers with a listen address of `transport` on loopback
/// or on its `host`'s address.
async fn wait_until_up(
    name: &str,
    dir: &Path,
    child: &mut Child,
    transport: Transport,
    host: Option<&Host>,
) -> Result<Up, ClusterError> {
    let ip = host.map_or_else(|| LOOPBACK.to_owned(), |host| host.address.to_string());
    let log = dir.join("node.log").display().to_string();
    let deadline = Instant::now() + START_LIMIT;
    let mut api = None;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(ClusterError::Exited {
                name: name.to_owned(),
                status: status.to_string(),
                tail: log_tail(&dir.join("node.log")),
                log,
            });
        }
        let client = match api.take() {
            Some(client) => Some(client),
            None => admin_client(name, dir, host).await.ok(),
        };
        if let Some(client) = client {
            if let Ok(status) = client.status().await
                && let Some(address) =
                    status.listen_addresses.iter().find(|a| transport.is_on(a, &ip))
            {
                let address = format!("{address}/p2p/{}", status.peer_id);
                return Ok(Up { peer_id: status.peer_id, address, api: client });
            }
            api = Some(client);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(ClusterError::NotUp { name: name.to_owned(), seconds: START_LIMIT.as_secs(), log })
}

/// A client of the admin API of the node whose data directory is under `dir`: directly, or
/// through a proxy into its `host`'s namespace.
async fn admin_client(
    name: &str,
    dir: &Path,
    host: Option<&Host>,
) -> Result<AdminClient, ClusterError> {
    let endpoint = Endpoint::read(&dir.join("data")).map_err(fedmesh_admin_api::ApiError::from)?;
    let Some(host) = host else { return Ok(AdminClient::new(&endpoint)?) };
    let address = crate::netns::proxy_into(&host.namespace, endpoint.address)
        .await
        .map_err(|source| ClusterError::Proxy { name: name.to_owned(), source })?;
    Ok(AdminClient::new(&Endpoint { address, ..endpoint })?)
}

/// Rewrites node.toml in `dir` to listen on the address `address` names again.
fn keep_listen_address(dir: &Path, address: &str) -> Result<(), ClusterError> {
    let Some(listen) = address.split("/p2p/").next() else { return Ok(()) };
    let path = dir.join("node.toml");
    let mut config = NodeConfig::from_file(&path)?;
    config.listen = vec![listen.to_owned()];
    write_node_toml(&path, &config)
}

/// The node.toml of a node started from `spec` in `dir`, bootstrapping from `bootstrap`, on
/// loopback (over `transport`) or on its `host`'s address.
fn write_config(
    dir: &Path,
    spec: &NodeSpec,
    bootstrap: &[String],
    transport: Transport,
    host: Option<&Host>,
) -> Result<(), ClusterError> {
    let mut config = NodeConfig::with_defaults(dir.join("node.key"), dir.join("data"));
    config.listen =
        host.map_or_else(|| vec![transport.listen_address(LOOPBACK, 0)], Host::listen_addresses);
    config.relay = spec.settings.relay;
    config.bootstrap = bootstrap.to_vec();
    config.trust = spec.trust.clone();
    config.admin = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let settings = &spec.settings;
    config.gossip_heartbeat_ms = settings.gossip_heartbeat_ms.unwrap_or(200);
    if let Some(group) = &settings.group {
        config.group = group.clone();
    }
    config.coordinate = settings.coordinate;
    config.trainer = settings.trainer.clone();
    config.trainer_timeout_secs =
        settings.trainer_timeout_secs.unwrap_or(config.trainer_timeout_secs);
    config.misbehave = settings.misbehave.clone();
    config.slow_training = settings.slow_training.unwrap_or(config.slow_training);
    config.model_retention_rounds =
        settings.model_retention_rounds.unwrap_or(config.model_retention_rounds);
    config.datasets = spec.datasets.iter().cloned().collect();
    write_node_toml(&dir.join("node.toml"), &config)
}

fn write_node_toml(path: &Path, config: &NodeConfig) -> Result<(), ClusterError> {
    let text = toml::to_string(config)
        .map_err(|e| ClusterError::Toml { path: path.to_owned(), detail: e.to_string() })?;
    std::fs::write(path, text)
        .map_err(|source| ClusterError::Write { path: path.to_owned(), source })
}

#[cfg(test)]
mod tests {
    use super::{Transport, spread_from_latest};

    #[test]
    fn a_transport_knows_its_own_addresses() {
        let quic = Transport::Quic.listen_address("127.0.0.1", 0);
        let tcp = Transport::Tcp.listen_address("127.0.0.1", 4001);
        assert_eq!(
            (quic.as_str(), tcp.as_str()),
            ("/ip4/127.0.0.1/udp/0/quic-v1", "/ip4/127.0.0.1/tcp/4001")
        );
        assert!(Transport::Quic.is_on(&format!("{quic}/p2p/X"), "127.0.0.1"));
        assert!(!Transport::Tcp.is_on(&quic, "127.0.0.1"));
        assert!(!Transport::Quic.is_on(&tcp, "127.0.0.1"));
        assert!(!Transport::Tcp.is_on(&tcp, "100.64.0.2"));
    }

    fn numbered(n: usize) -> Vec<String> {
        (0..n).map(|i| i.to_string()).collect()
    }

    #[test]
    fn bootstrap_lists_spread_back_from_the_latest_nodes() {
        assert_eq!(spread_from_latest(numbered(5), 8), numbered(5));
        let spread = spread_from_latest(numbered(200), 8);
        assert_eq!(spread, ["199", "198", "197", "196", "192", "184", "168", "136"]);
        assert_eq!(spread_from_latest(numbered(12), 8), ["11", "10", "9", "8", "4"]);
    }
}
