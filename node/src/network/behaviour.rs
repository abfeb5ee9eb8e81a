//! The libp2p behaviours a fedmesh node runs, and how each is configured: gossipsub for control
//! messages, request-response for bulk, identify and Kademlia for discovery, mDNS on a LAN,
//! AutoNAT, circuit relay v2 and DCUtR across NATs (see [`reachability`](super::reachability)),
//! and connection limits (a peer cannot hold more than a few connections, nor many peers exhaust
//! the node's); gossipsub scores its peers (see [`scoring`](super::scoring)).

use super::budget::BulkBudget;
use super::codec::{FrameCodec, Gate, PROTOCOL};
use super::large_frames::{LargeFramePeers, PeerCodecs, PeerSlot};
use libp2p::connection_limits::{self, ConnectionLimits};
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    StreamProtocol, autonat, dcutr, gossipsub, identify, identity, kad, mdns, relay,
    request_response,
};
use std::time::Duration;

/// gossipsub's largest message; every node must use the same value, the protocol's.
pub use fedmesh_protocol::codec::MAX_GOSSIP_BYTES;

/// The settings the behaviours take from the node's config.
#[derive(Debug, Clone)]
pub struct BehaviourSettings {
    /// Connections held at once, at most.
    pub max_connections: u32,
    pub max_message_bytes: u64,
    pub request_timeout: Duration,
    pub gossip_heartbeat: Duration,
    pub mdns: bool,
    /// Relay for peers behind NAT.
    pub relay: bool,
    /// Bytes of large frames held at once (see [`BulkBudget`]).
    pub bulk_buffer_bytes: u64,
    /// How long a connection with no request under way stays open before a crowded node may
    /// close it (see `Crowding`).
    pub idle_after: Duration,
}

impl Default for BehaviourSettings {
    /// The node's default settings, without mDNS.
    fn default() -> Self {
        use crate::config::defaults;
        Self {
            max_connections: defaults::max_connections(),
            max_message_bytes: defaults::max_message_bytes(),
            request_timeout: Duration::from_secs(defaults::request_timeout_secs()),
            gossip_heartbeat: Duration::from_millis(defaults::gossip_heartbeat_ms()),
            mdns: false,
            relay: false,
            bulk_buffer_bytes: defaults::bulk_buffer_bytes(),
            idle_after: Duration::from_secs(10),
        }
    }
}

/// The slowest transfer rate a timeout allows for, in bytes per second: a loaded machine moves
/// tens of MB/s per stream, so a frame this slow is stuck rather than slow.
const SLOWEST_BYTES_PER_SEC: u64 = 8 << 20;

impl BehaviourSettings {
    /// The request-response timeout: the configured one for a small message, plus the time the
    /// largest allowed message takes at the slowest rate allowed, and the time it may wait for
    /// the receiver's budget behind as many frames again.
    pub fn transfer_timeout(&self) -> Duration {
        timeout_for(self.request_timeout, self.max_message_bytes)
    }
}

/// How long a request that moves `bytes` (request and response) may take: `base` for a small
/// message, plus twice their time at the slowest rate allowed (the transfer, and the wait for
/// the receiver's budget behind as many bytes again).
pub fn timeout_for(base: Duration, bytes: u64) -> Duration {
    base + Duration::from_secs(bytes.div_ceil(SLOWEST_BYTES_PER_SEC)) * 2
}

/// Connections a node accepts at once per peer (a dial each way over TCP and QUIC, and a relayed
/// one), and still handshaking in each direction; in all, `max_connections`.
const MAX_CONNECTIONS_PER_PEER: u32 = 4;
const MAX_PENDING_CONNECTIONS: u32 = 64;

/// Every protocol a fedmesh node speaks.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    pub limits: connection_limits::Behaviour,
    pub gossipsub: gossipsub::Behaviour,
    pub request_response: PeerCodecs,
    pub identify: identify::Behaviour,
    pub kademlia: kad::Behaviour<kad::store::MemoryStore>,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    pub autonat: autonat::Behaviour,
    pub relay: Toggle<relay::Behaviour>,
    pub relay_client: relay::client::Behaviour,
    pub dcutr: dcutr::Behaviour,
}

/// Why the behaviours could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BehaviourError {
    #[error("gossipsub configuration: {0}")]
    Gossipsub(String),
    #[error("mDNS: {0}")]
    Mdns(std::io::Error),
}

impl Behaviour {
    /// Builds the behaviours for the node holding `key`, with the swarm's relay client.
    pub fn new(
        key: &identity::Keypair,
        relay_client: relay::client::Behaviour,
        settings: &BehaviourSettings,
        budget: BulkBudget,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
        large_frame_peers: LargeFramePeers,
    ) -> Result<Self, BehaviourError> {
        let peer_id = key.public().to_peer_id();
        let mut kademlia = kad::Behaviour::with_config(
            peer_id,
            kad::store::MemoryStore::new(peer_id),
            kad::Config::new(StreamProtocol::new("/fedmesh/kad/1")),
        );
        kademlia.set_mode(Some(kad::Mode::Server));
        let mdns = if settings.mdns {
            Some(
                mdns::tokio::Behaviour::new(mdns::Config::default(), peer_id)
                    .map_err(BehaviourError::Mdns)?,
            )
        } else {
            None
        };
        let limits = ConnectionLimits::default()
            .with_max_established_per_peer(Some(MAX_CONNECTIONS_PER_PEER))
            .with_max_pending_incoming(Some(MAX_PENDING_CONNECTIONS))
            .with_max_pending_outgoing(Some(MAX_PENDING_CONNECTIONS))
            .with_max_established(Some(settings.max_connections));
        Ok(Self {
            limits: connection_limits::Behaviour::new(limits),
            gossipsub: gossipsub_behaviour(settings)?,
            request_response: request_response_behaviour(
                settings,
                budget,
                large_frame_peers,
                metrics,
            ),
            identify: identify::Behaviour::new(
                identify::Config::new("/fedmesh/id/1".to_owned(), key.public())
                    .with_agent_version(format!("fedmesh/{}", env!("CARGO_PKG_VERSION")))
                    // Peers learn a relayed address as soon as the node listens on it.
                    .with_push_listen_addr_updates(true),
            ),
            kademlia,
            mdns: Toggle::from(mdns),
            autonat: autonat::Behaviour::new(peer_id, super::reachability::autonat_config()),
            relay: Toggle::from(settings.relay.then(|| {
                relay::Behaviour::new(peer_id, super::reachability::relay_config(settings))
            })),
            relay_client,
            dcutr: dcutr::Behaviour::new(peer_id),
        })
    }
}

/// request-response over [`FrameCodec`], reading large requests only from the peers
/// `large_frame_peers` allows.
fn request_response_behaviour(
    settings: &BehaviourSettings,
    budget: BulkBudget,
    large_frame_peers: LargeFramePeers,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
) -> PeerCodecs {
    let slot = PeerSlot::default();
    let gate = Gate { allowed: large_frame_peers, slot: slot.clone() };
    let inner = request_response::Behaviour::with_codec(
        FrameCodec::new(settings.max_message_bytes, budget).gated(gate).counting(metrics),
        [(PROTOCOL, request_response::ProtocolSupport::Full)],
        request_response::Config::default()
            .with_request_timeout(settings.transfer_timeout())
            .with_max_concurrent_streams(256),
    );
    PeerCodecs::new(inner, slot)
}

/// How long gossipsub keeps a received message for forwarding, whatever its heartbeat: the
/// engine accepts a message only after checking it, and a busy node may take seconds to; a
/// message that left the cache by then is not forwarded.
const MESSAGE_CACHE_TIME: Duration = Duration::from_secs(5);

/// gossipsub with application-side acceptance, a content-hash message id and peer scoring (see
/// [`scoring`](super::scoring)); mesh sizes that work from 3 to 100 peers.
///
/// Messages go unsigned by gossipsub (anonymous mode): every fedmesh gossip message is already a
/// [`Signed`](fedmesh_protocol::envelope::Signed) envelope the engine verifies once and accepts
/// or rejects (a rejection lowers the forwarder's score). gossipsub would check its own signature
/// on every copy a node receives, duplicates included, before it drops them: at 50 nodes that
/// was the largest share of every node's CPU.
fn gossipsub_behaviour(
    settings: &BehaviourSettings,
) -> Result<gossipsub::Behaviour, BehaviourError> {
    let heartbeats_kept =
        MESSAGE_CACHE_TIME.as_millis().div_ceil(settings.gossip_heartbeat.as_millis());
    let config = gossipsub::ConfigBuilder::default()
        .heartbeat_interval(settings.gossip_heartbeat)
        .history_length(usize::try_from(heartbeats_kept).unwrap_or(usize::MAX).max(5))
        .heartbeat_initial_delay(settings.gossip_heartbeat)
        .validation_mode(gossipsub::ValidationMode::Anonymous)
        .validate_messages()
        .message_id_fn(|message: &gossipsub::Message| {
            gossipsub::MessageId::from(blake3::hash(&message.data).as_bytes().to_vec())
        })
        .max_transmit_size(MAX_GOSSIP_BYTES)
        // Shorter than the re-announce interval, so a periodic re-announcement is not a duplicate.
        .duplicate_cache_time(Duration::from_secs(15))
        .mesh_n_low(3)
        .mesh_n(6)
        .mesh_n_high(12)
        .mesh_outbound_min(2)
        .flood_publish(true)
        .build()
        .map_err(|e| BehaviourError::Gossipsub(e.to_string()))?;
    let mut gossipsub =
        gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Anonymous, config)
            .map_err(|e| BehaviourError::Gossipsub(e.to_owned()))?;
    super::scoring::enable(&mut gossipsub).map_err(BehaviourError::Gossipsub)?;
    Ok(gossipsub)
}
