//! `testnet --netns [--nat]`: every node in a Linux network namespace of its own, joined by veth
//! pairs to a bridge (a virtual LAN) with addresses from 100.64.0.0/10; with `--nat`, a node
//! other than node0 sits behind a router namespace of its own that masquerades its private LAN
//! (198.18.0.0/15), endpoint-independent or symmetric. Every namespace a run made is removed
//! when it ends, failures included, and those of an earlier run that was killed are removed by
//! the next. Traffic stays inside: no namespace has a route anywhere else.
//!
//! A node's admin API listens on its own namespace's loopback, as it must; the testnet reaches
//! it through a proxy on this machine's loopback whose connections are opened inside the node's
//! namespace.

use crate::cluster::Transport;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;

/// Why a namespace could not be made.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot run `{command}`: {source} (--netns needs root, iproute2 and iptables)")]
    Spawn { command: String, source: std::io::Error },
    #[error("`{command}` failed: {stderr} (--netns needs root, iproute2 and iptables)")]
    Failed { command: String, stderr: String },
}

/// Where a run's nodes are (`--netns`, `--nat`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Placement {
    /// Every node on this machine's loopback.
    #[default]
    Loopback,
    /// Every node in a namespace of its own on a virtual LAN, behind a NAT of this kind but
    /// for node0 when there is one.
    Namespaces { nat: Option<NatKind> },
}

/// The NAT a router namespace does (`--nat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NatKind {
    /// Every connection from one private port leaves from one public port (MASQUERADE keeps
    /// the port), so a hole punched toward one peer works for all: DCUtR succeeds.
    EndpointIndependent,
    /// Each connection leaves from a random port (MASQUERADE --random-fully), so the port a
    /// peer saw is not the one the next peer sees: hole punching fails and the path stays
    /// relayed.
    Symmetric,
    /// Endpoint-independent and symmetric in turn (node1, node3, ... endpoint-independent).
    Mixed,
}

impl NatKind {
    /// The NAT in front of node `index` under this choice.
    fn for_node(self, index: usize) -> Self {
        match self {
            Self::Mixed if index % 2 == 1 => Self::EndpointIndependent,
            Self::Mixed => Self::Symmetric,
            kind => kind,
        }
    }
}

/// Where a node sits on the virtual LAN.
#[derive(Debug, Clone)]
pub struct Host {
    /// The namespace its process runs in.
    pub namespace: String,
    /// The address it listens on (private behind a NAT).
    pub address: Ipv4Addr,
    /// Its NAT, if any: others cannot dial it.
    pub nat: Option<NatKind>,
}

/// The port every node listens on, over TCP and QUIC (each namespace has its own ports).
pub const NODE_PORT: u16 = 4001;

impl Host {
    /// Its libp2p listen addresses.
    pub fn listen_addresses(&self) -> Vec<String> {
        let ip = self.address.to_string();
        [Transport::Tcp, Transport::Quic].map(|t| t.listen_address(&ip, NODE_PORT)).to_vec()
    }
}

/// The namespaces of one run: a hub holding the bridge, and a namespace per node and router.
pub struct VirtualLan {
    prefix: String,
    nat: Option<NatKind>,
    /// Made so far, in order.
    namespaces: Vec<String>,
    /// Hosts placed so far.
    hosts: usize,
}

/// Namespace names start with this, then the testnet's process id.
const PREFIX: &str = "fmtn";
const BRIDGE: &str = "br0";

impl VirtualLan {
    /// Makes the hub and its bridge; nodes behind `nat` (none: every node public).
    pub fn create(nat: Option<NatKind>) -> Result<Self, NetnsError> {
        remove_stale_namespaces();
        let prefix = format!("{PREFIX}{}", std::process::id());
        let mut lan = Self { prefix, nat, namespaces: Vec::new(), hosts: 0 };
        let hub = lan.namespace("hub")?;
        run_in(&hub, &["ip", "link", "add", BRIDGE, "type", "bridge"])?;
        run_in(&hub, &["ip", "link", "set", BRIDGE, "up"])?;
        Ok(lan)
    }

    /// Places the node `name`: on the bridge, or behind a router of its own if the LAN has
    /// NATs and the node need not be `public` (a relay, a coordinator).
    pub fn add_host(&mut self, name: &str, public: bool) -> Result<Host, NetnsError> {
        let index = self.hosts;
        self.hosts += 1;
        let node = self.namespace(name)?;
        let nat = self.nat.filter(|_| !public).map(|kind| kind.for_node(index));
        let public = public_address(index);
        let Some(kind) = nat else {
            self.attach(index, &node, "eth0", public)?;
            return Ok(Host { namespace: node, address: public, nat: None });
        };
        let router = self.namespace(&format!("{name}-nat"))?;
        self.attach(index, &router, "wan", public)?;
        let (gateway, private) = private_addresses(index);
        run(&[
            "ip", "link", "add", "lan", "netns", &router, "type", "veth", "peer", "name", "eth0",
            "netns", &node,
        ])?;
        configure(&router, "lan", gateway, PRIVATE_PREFIX)?;
        configure(&node, "eth0", private, PRIVATE_PREFIX)?;
        run_in(&node, &["ip", "route", "add", "default", "via", &gateway.to_string()])?;
        run_in(&router, &["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])?;
        let mut masquerade =
            vec!["iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE"];
        if kind == NatKind::Symmetric {
            masquerade.push("--random-fully");
        }
        run_in(&router, &masquerade)?;
        // Unsolicited packets from outside are dropped, as a home router does, not answered
        // with a reset: a hole punch whose first packet arrives early is retried, not refused.
        let unsolicited =
            ["-i", "wan", "-m", "conntrack", "--ctstate", "NEW,INVALID", "-j", "DROP"];
        run_in(&router, &[&["iptables", "-A", "INPUT"][..], &unsolicited].concat())?;
        Ok(Host { namespace: node, address: private, nat: Some(kind) })
    }

    /// Makes namespace PREFIX-`name` with its loopback up.
    fn namespace(&mut self, name: &str) -> Result<String, NetnsError> {
        let namespace = format!("{}-{name}", self.prefix);
        run(&["ip", "netns", "add", &namespace])?;
        self.namespaces.push(namespace.clone());
        run_in(&namespace, &["ip", "link", "set", "lo", "up"])?;
        Ok(namespace)
    }

    /// Joins `device` in `namespace` to the bridge, with the public `address`.
    fn attach(
        &self,
        index: usize,
        namespace: &str,
        device: &str,
        address: Ipv4Addr,
    ) -> Result<(), NetnsError> {
        let hub = format!("{}-hub", self.prefix);
        let port = format!("p{index}");
        run(&[
            "ip", "link", "add", &port, "netns", &hub, "type", "veth", "peer", "name", device,
            "netns", namespace,
        ])?;
        run_in(&hub, &["ip", "link", "set", &port, "master", BRIDGE, "up"])?;
        configure(namespace, device, address, PUBLIC_PREFIX)
    }
}

impl Drop for VirtualLan {
    /// Removes every namespace made (their veth pairs and the bridge go with them).
    fn drop(&mut self) {
        for namespace in self.namespaces.iter().rev() {
            if let Err(error) = run(&["ip", "netns", "del", namespace]) {
                eprintln!("warning: {error}");
            }
        }
    }
}

/// The public LAN's prefix length (100.64.0.0/16) and each private LAN's (198.18.X.0/24).
const PUBLIC_PREFIX: u8 = 16;
const PRIVATE_PREFIX: u8 = 24;

/// Node `index`'s public address (its own, or its router's): 100.64.0.10 onward.
fn public_address(index: usize) -> Ipv4Addr {
    let host = 10 + index as u32;
    Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) + host)
}

/// Node `index`'s private LAN behind its router: the router's address and the node's.
fn private_addresses(index: usize) -> (Ipv4Addr, Ipv4Addr) {
    let network = u32::from(Ipv4Addr::new(198, 18, 0, 0)) + ((index as u32) << 8);
    (Ipv4Addr::from(network + 1), Ipv4Addr::from(network + 2))
}

/// Gives `device` in `namespace` its address and brings it up.
fn configure(
    namespace: &str,
    device: &str,
    address: Ipv4Addr,
    prefix: u8,
) -> Result<(), NetnsError> {
    run_in(namespace, &["ip", "addr", "add", &format!("{address}/{prefix}"), "dev", device])?;
    run_in(namespace, &["ip", "link", "set", device, "up"])
}

/// Runs `args` inside `namespace`.
fn run_in(namespace: &str, args: &[&str]) -> Result<(), NetnsError> {
    let mut full = vec!["ip", "netns", "exec", namespace];
    full.extend_from_slice(args);
    run(&full)
}

/// Runs a command, failing with its stderr.
fn run(args: &[&str]) -> Result<(), NetnsError> {
    let command = args.join(" ");
    let output = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|source| NetnsError::Spawn { command: command.clone(), source })?;
    if output.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        Err(NetnsError::Failed { command, stderr })
    }
}

/// Removes the namespaces of earlier runs whose testnet process is gone (killed by a signal
/// before it could remove them).
fn remove_stale_namespaces() {
    let Ok(output) = Command::new("ip").args(["netns", "list"]).output() else { return };
    let listing = String::from_utf8_lossy(&output.stdout);
    for namespace in listing.lines().filter_map(|line| line.split_whitespace().next()) {
        let pid = namespace.strip_prefix(PREFIX).and_then(|rest| rest.split('-').next());
        let Some(pid) = pid.and_then(|pid| pid.parse::<u32>().ok()) else { continue };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run(&["ip", "netns", "del", namespace]);
        }
    }
}

/// Forwards connections to this machine's loopback address it returns to `target` inside
/// `namespace` (a node's admin API on its namespace's loopback), for as long as the runtime
/// runs.
pub async fn proxy_into(namespace: &str, target: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let local = listener.local_addr()?;
    let namespace = namespace.to_owned();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let namespace = namespace.clone();
            tokio::spawn(async move {
                let connected =
                    tokio::task::spawn_blocking(move || connect_inside(&namespace, target)).await;
                let Ok(Ok(outbound)) = connected else { return };
                let Ok(mut outbound) = tokio::net::TcpStream::from_std(outbound) else { return };
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    });
    Ok(local)
}

/// How long a connection into a namespace may take.
const CONNECT_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A TCP connection to `target` opened inside `namespace`, from a thread of its own (entering
/// a namespace changes the calling thread's; the socket stays in the namespace it was made in).
fn connect_inside(namespace: &str, target: SocketAddr) -> std::io::Result<std::net::TcpStream> {
    let file = std::fs::File::open(format!("/run/netns/{namespace}"))?;
    let connect = move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(std::io::Error::from)?;
        let stream = std::net::TcpStream::connect_timeout(&target, CONNECT_LIMIT)?;
        stream.set_nonblocking(true)?;
        Ok(stream)
    };
    std::thread::spawn(connect)
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the connecting thread panicked")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_come_from_the_test_ranges_and_differ_per_node() {
        assert_eq!(public_address(0), Ipv4Addr::new(100, 64, 0, 10));
        assert_eq!(public_address(300), Ipv4Addr::new(100, 64, 1, 54));
        assert_eq!(
            private_addresses(3),
            (Ipv4Addr::new(198, 18, 3, 1), Ipv4Addr::new(198, 18, 3, 2))
        );
        assert_eq!(private_addresses(256).1, Ipv4Addr::new(198, 19, 0, 2));
    }

    #[test]
    fn mixed_nat_alternates_kinds() {
        let kinds: Vec<NatKind> = (1..5).map(|i| NatKind::Mixed.for_node(i)).collect();
        use NatKind::{EndpointIndependent as Eim, Symmetric};
        assert_eq!(kinds, vec![Eim, Symmetric, Eim, Symmetric]);
    }
}
