//! Reaching peers across NATs: AutoNAT tells the node whether others can dial it, and before it
//! can tell, a peer that sees the node at an address the node does not listen on shows that a
//! NAT is in between; a node others cannot dial listens through every relay it meets (circuit relay v2: a public node with `relay =
//! true`), so that a peer can reach it over the relay, and DCUtR then punches a hole for a
//! direct connection. A connection is counted by kind: direct, relayed or hole-punched.
//!
//! Relayed traffic: a fedmesh relay's circuits carry up to the node's largest message
//! (`max_message_bytes`) for half an hour, so a job between two peers that cannot punch a hole
//! (both behind symmetric NATs) still runs, its bulk over the relay; a relayed connection that
//! reaches a circuit's limit closes, and the next request opens a new circuit. Whenever the hole
//! punch succeeds, the direct connection carries the traffic and the relayed one goes idle.

use super::behaviour::BehaviourSettings;
use crate::metrics::{ConnectionKind, Metrics};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId, autonat, relay};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// AutoNAT as a fedmesh node runs it: it asks its connected peers to dial it back soon after it
/// starts, and again every minute; any address counts (test ranges and LANs are not global).
pub fn autonat_config() -> autonat::Config {
    autonat::Config {
        boot_delay: Duration::from_secs(2),
        retry_interval: Duration::from_secs(10),
        refresh_interval: Duration::from_secs(60),
        throttle_server_period: Duration::from_secs(2),
        timeout: Duration::from_secs(10),
        only_global_ips: false,
        ..autonat::Config::default()
    }
}

/// How many peers a relay serves at once, and how many circuits each may hold.
const RELAY_RESERVATIONS: usize = 512;
const RELAY_CIRCUITS: usize = 256;
const RELAY_CIRCUITS_PER_PEER: usize = 16;
/// How long one circuit lasts before its peers must open another.
const RELAY_CIRCUIT_DURATION: Duration = Duration::from_secs(30 * 60);

/// The relay's limits: sized for a federation's traffic (see the module doc), with libp2p's
/// default rate limits on reservations and circuits per peer and per address.
pub fn relay_config(settings: &BehaviourSettings) -> relay::Config {
    relay::Config {
        max_reservations: RELAY_RESERVATIONS,
        max_circuits: RELAY_CIRCUITS,
        max_circuits_per_peer: RELAY_CIRCUITS_PER_PEER,
        max_circuit_duration: RELAY_CIRCUIT_DURATION,
        max_circuit_bytes: settings.max_message_bytes,
        ..relay::Config::default()
    }
}

/// How many relays a node listens through and tries peers through, at most.
const MAX_RELAYS: usize = 4;

/// What the node knows of its own reachability, the relays it met and its connections' kinds.
#[derive(Default)]
pub struct Reachability {
    /// Whether peers cannot dial this node (AutoNAT found so, or a NAT translates its address).
    private: bool,
    /// Whether AutoNAT found that peers can dial this node.
    public: bool,
    /// Relays met (they speak the relay's hop protocol), with an address to reach each by.
    relays: HashMap<PeerId, Multiaddr>,
    /// Relays this node listens through already.
    listening_via: HashSet<PeerId>,
    kinds: HashMap<ConnectionId, ConnectionKind>,
}

impl Reachability {
    /// Whether peers cannot dial this node, as far as it knows yet.
    pub fn behind_nat(&self) -> bool {
        self.private
    }

    /// Takes AutoNAT's new status; returns the relayed addresses to listen on now.
    pub fn status_changed(&mut self, status: &autonat::NatStatus) -> Vec<Multiaddr> {
        match status {
            autonat::NatStatus::Public(address) => {
                tracing::info!(%address, "reachable: peers can dial this node");
            }
            autonat::NatStatus::Private => {
                tracing::info!("behind NAT: peers cannot dial this node, listening through relays");
            }
            autonat::NatStatus::Unknown => {}
        }
        self.private = matches!(status, autonat::NatStatus::Private);
        self.public = status.is_public();
        self.listen_via_all()
    }

    /// Takes the address a peer sees this node at (identify's observed address): if its IP is
    /// none of those this node listens on, a NAT is in between, and this node listens through
    /// relays unless AutoNAT found it reachable. Returns the relayed addresses to listen on.
    pub fn observed<'a>(
        &mut self,
        observed: &Multiaddr,
        listening: impl IntoIterator<Item = &'a Multiaddr>,
    ) -> Vec<Multiaddr> {
        let Some(seen) = ip_of(observed) else { return Vec::new() };
        let translated = listening.into_iter().all(|own| ip_of(own) != Some(seen));
        if !translated || self.private || self.public {
            return Vec::new();
        }
        tracing::info!(observed = %observed, "behind NAT: a peer sees this node at another address, listening through relays");
        self.private = true;
        self.listen_via_all()
    }

    /// The relayed addresses to listen on through every relay met.
    fn listen_via_all(&mut self) -> Vec<Multiaddr> {
        let relays: Vec<PeerId> = self.relays.keys().copied().collect();
        relays.into_iter().filter_map(|relay| self.listen_via(relay)).collect()
    }

    /// Takes a peer identify says is a relay, reachable at one of `addresses`; returns the
    /// relayed address to listen on if this node needs one. The first [`MAX_RELAYS`] met are
    /// kept: any peer can claim to relay, and each is tried for every peer with no address.
    pub fn relay_found(&mut self, relay: PeerId, addresses: &[Multiaddr]) -> Option<Multiaddr> {
        let address = addresses.iter().find(|a| is_dialable(a))?;
        if !self.relays.contains_key(&relay) && self.relays.len() >= MAX_RELAYS {
            return None;
        }
        self.relays.entry(relay).or_insert_with(|| address.clone());
        self.listen_via(relay)
    }

    /// Whether `peer` is one of the relays this node met.
    pub fn is_relay(&self, peer: &PeerId) -> bool {
        self.relays.contains_key(peer)
    }

    /// The addresses `peer` would have if it listened through the relays this node met: a
    /// peer behind NAT that shares a relay with this node is reached through it before anyone
    /// could tell this node its relayed address.
    pub fn through_relays(&self, peer: PeerId) -> Vec<Multiaddr> {
        let relays = self.relays.iter().filter(|(relay, _)| **relay != peer);
        relays.map(|(relay, address)| circuit(address, *relay).with(Protocol::P2p(peer))).collect()
    }

    /// The circuit address through `relay`, once per relay, while this node is private.
    fn listen_via(&mut self, relay: PeerId) -> Option<Multiaddr> {
        if !self.private || self.listening_via.contains(&relay) {
            return None;
        }
        let address = circuit(self.relays.get(&relay)?, relay);
        self.listening_via.insert(relay);
        Some(address)
    }

    /// Forgets a relay whose relayed listener closed or could not start, so that it is
    /// listened through again when next met.
    pub fn listener_closed(&mut self, addresses: &[Multiaddr]) {
        for relay in addresses.iter().filter_map(relay_of) {
            self.listening_via.remove(&relay);
        }
    }

    /// Counts a connection opened.
    pub fn opened(&mut self, metrics: &Metrics, id: ConnectionId, relayed: bool) {
        let kind = if relayed { ConnectionKind::Relayed } else { ConnectionKind::Direct };
        self.kinds.insert(id, kind);
        metrics.connection(kind, true);
    }

    /// Counts a connection closed.
    pub fn closed(&mut self, metrics: &Metrics, id: ConnectionId) {
        if let Some(kind) = self.kinds.remove(&id) {
            metrics.connection(kind, false);
        }
    }

    /// Counts the direct connection `id` as made by hole punching.
    pub fn hole_punched(&mut self, metrics: &Metrics, id: ConnectionId) {
        if let Some(kind @ ConnectionKind::Direct) = self.kinds.get_mut(&id) {
            *kind = ConnectionKind::HolePunched;
            metrics.hole_punched();
        }
    }
}

/// The IP address `address` starts with.
fn ip_of(address: &Multiaddr) -> Option<std::net::IpAddr> {
    match address.iter().next()? {
        Protocol::Ip4(ip) => Some(ip.into()),
        Protocol::Ip6(ip) => Some(ip.into()),
        _ => None,
    }
}

/// The circuit address through `relay` at `address` (`ADDRESS/p2p/RELAY/p2p-circuit`).
fn circuit(address: &Multiaddr, relay: PeerId) -> Multiaddr {
    let mut circuit = address.clone();
    if !matches!(circuit.iter().last(), Some(Protocol::P2p(_))) {
        circuit.push(Protocol::P2p(relay));
    }
    circuit.with(Protocol::P2pCircuit)
}

/// Whether a peer's address can be dialled as a relay's: not itself a relayed one.
fn is_dialable(address: &Multiaddr) -> bool {
    !address.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

/// The relay a relayed listen address goes through.
fn relay_of(address: &Multiaddr) -> Option<PeerId> {
    let mut previous = None;
    for protocol in address.iter() {
        match protocol {
            Protocol::P2pCircuit => return previous,
            Protocol::P2p(peer) => previous = Some(peer),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay_address() -> (PeerId, Multiaddr) {
        let relay = PeerId::random();
        (relay, "/ip4/100.64.0.10/tcp/4001".parse().unwrap())
    }

    #[test]
    fn a_private_node_listens_once_through_each_relay_it_meets() {
        let mut reachability = Reachability::default();
        let (relay, address) = relay_address();
        assert_eq!(reachability.relay_found(relay, std::slice::from_ref(&address)), None);
        let listen = reachability.status_changed(&autonat::NatStatus::Private);
        let circuit = address.clone().with(Protocol::P2p(relay)).with(Protocol::P2pCircuit);
        assert_eq!(listen, vec![circuit.clone()]);
        assert_eq!(reachability.relay_found(relay, std::slice::from_ref(&address)), None);
        reachability.listener_closed(std::slice::from_ref(&circuit));
        assert_eq!(reachability.relay_found(relay, &[address]), Some(circuit));
    }

    #[test]
    fn a_relays_address_that_names_it_is_not_named_twice() {
        let mut reachability = Reachability::default();
        let (relay, address) = relay_address();
        let named = address.with(Protocol::P2p(relay));
        reachability.status_changed(&autonat::NatStatus::Private);
        let listen = reachability.relay_found(relay, std::slice::from_ref(&named));
        assert_eq!(listen, Some(named.with(Protocol::P2pCircuit)));
    }

    #[test]
    fn a_peer_is_tried_through_every_relay_met_but_itself() {
        let mut reachability = Reachability::default();
        let (relay, address) = relay_address();
        reachability.relay_found(relay, std::slice::from_ref(&address));
        let peer = PeerId::random();
        let expected = address.with(Protocol::P2p(relay)).with(Protocol::P2pCircuit);
        assert_eq!(reachability.through_relays(peer), vec![expected.with(Protocol::P2p(peer))]);
        assert!(reachability.through_relays(relay).is_empty());
    }

    #[test]
    fn a_node_seen_at_another_address_is_behind_nat_unless_autonat_found_it_reachable() {
        let (relay, address) = relay_address();
        let own: Multiaddr = "/ip4/198.18.1.2/tcp/4001".parse().unwrap();
        let seen: Multiaddr = "/ip4/100.64.0.11/tcp/4001".parse().unwrap();
        let mut reachability = Reachability::default();
        reachability.relay_found(relay, std::slice::from_ref(&address));
        assert!(reachability.observed(&own, [&own]).is_empty(), "seen where it listens");
        assert_eq!(reachability.observed(&seen, [&own]).len(), 1);
        let mut reachable = Reachability::default();
        reachable.relay_found(relay, &[address]);
        reachable.status_changed(&autonat::NatStatus::Public(own.clone()));
        assert!(reachable.observed(&seen, [&own]).is_empty());
    }

    #[test]
    fn a_node_keeps_the_first_relays_it_meets() {
        let mut reachability = Reachability::default();
        reachability.status_changed(&autonat::NatStatus::Private);
        let listened = (0..MAX_RELAYS + 3)
            .filter(|_| reachability.relay_found(relay_address().0, &[relay_address().1]).is_some())
            .count();
        assert_eq!(listened, MAX_RELAYS);
        assert_eq!(reachability.through_relays(PeerId::random()).len(), MAX_RELAYS);
    }

    #[test]
    fn a_public_node_listens_through_no_relay() {
        let mut reachability = Reachability::default();
        let (relay, address) = relay_address();
        let public = autonat::NatStatus::Public(address.clone());
        assert!(reachability.status_changed(&public).is_empty());
        assert_eq!(reachability.relay_found(relay, &[address]), None);
    }

    #[test]
    fn a_relayed_address_is_not_a_relays_own() {
        let (relay, address) = relay_address();
        let circuit = address.with(Protocol::P2p(relay)).with(Protocol::P2pCircuit);
        assert!(!is_dialable(&circuit));
        assert_eq!(relay_of(&circuit), Some(relay));
    }

    #[test]
    fn hole_punched_connections_are_counted_apart_from_direct_ones() {
        let (metrics, mut reachability) = (Metrics::new(), Reachability::default());
        let (first, second) = (ConnectionId::new_unchecked(1), ConnectionId::new_unchecked(2));
        reachability.opened(&metrics, first, false);
        reachability.opened(&metrics, second, true);
        reachability.hole_punched(&metrics, first);
        reachability.hole_punched(&metrics, second);
        let text = metrics.render(&[]);
        assert!(text.contains("fedmesh_connections{kind=\"hole_punched\"} 1"), "{text}");
        assert!(text.contains("fedmesh_connections{kind=\"relayed\"} 1"), "{text}");
        reachability.closed(&metrics, first);
        let text = metrics.render(&[]);
        assert!(text.contains("fedmesh_connections{kind=\"hole_punched\"} 0"), "{text}");
    }
}
