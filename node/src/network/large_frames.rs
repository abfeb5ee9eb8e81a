//! Who may make this node buffer a large request: the peers of the jobs it runs (members, owners,
//! coordinators), a set the engine keeps up to date and the frame reader consults before it
//! reserves any of the bulk budget. Anyone else may send only frames below
//! [`COUNTED_FROM_BYTES`](super::budget::COUNTED_FROM_BYTES); a larger one is refused from its
//! length prefix alone.
//!
//! The reader must know which peer a stream comes from, which request-response does not tell a
//! codec. So the behaviour is wrapped ([`PeerCodecs`]): while the swarm sets up a connection's
//! handler, which clones the codec for that connection, the wrapper names the connection's peer in
//! a slot the clone reads. Clones of a connection's codec (one per stream) keep its peer.

use super::codec::{Frame, FrameCodec};
use crate::metrics::Metrics;
use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::request_response;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};
use std::collections::HashSet;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};

/// The metrics' reason for a large request refused unread (see the module doc).
pub const LARGE_FROM_OUTSIDER: &str = "large_from_outsider";

/// The peers allowed to send large frames (see the module doc); cheap to read and to clone.
#[derive(Clone, Default)]
pub struct LargeFramePeers {
    peers: Arc<RwLock<Arc<HashSet<PeerId>>>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for LargeFramePeers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LargeFramePeers").finish_non_exhaustive()
    }
}

impl LargeFramePeers {
    /// No peer yet; refusals are counted in `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { peers: Arc::default(), metrics }
    }

    /// Counts a large request refused unread (request-response does not report a request
    /// its codec could not read).
    pub fn count_refusal(&self) {
        self.metrics.rejected("request", LARGE_FROM_OUTSIDER);
    }

    /// Replaces the set.
    pub fn set(&self, peers: HashSet<PeerId>) {
        if let Ok(mut current) = self.peers.write() {
            *current = Arc::new(peers);
        }
    }

    /// Whether `peer` may send large frames.
    pub fn allows(&self, peer: &PeerId) -> bool {
        self.peers.read().is_ok_and(|peers| peers.contains(peer))
    }
}

/// The peer whose connection's codec is being made, named for [`FrameCodec`]'s `clone`.
pub type PeerSlot = Arc<Mutex<Option<PeerId>>>;

/// request-response over [`FrameCodec`]s that know their connection's peer.
pub struct PeerCodecs {
    inner: request_response::Behaviour<FrameCodec>,
    slot: PeerSlot,
}

impl PeerCodecs {
    /// Wraps `inner`, whose codec reads its peer from `slot`.
    pub fn new(inner: request_response::Behaviour<FrameCodec>, slot: PeerSlot) -> Self {
        Self { inner, slot }
    }

    /// Runs `make` (which clones the codec) with `peer` named in the slot.
    fn for_peer<T>(&mut self, peer: PeerId, make: impl FnOnce(&mut Self) -> T) -> T {
        self.name(Some(peer));
        let made = make(self);
        self.name(None);
        made
    }

    fn name(&self, peer: Option<PeerId>) {
        if let Ok(mut slot) = self.slot.lock() {
            *slot = peer;
        }
    }
}

impl std::ops::Deref for PeerCodecs {
    type Target = request_response::Behaviour<FrameCodec>;
    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl std::ops::DerefMut for PeerCodecs {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.inner
    }
}

type Inner = request_response::Behaviour<FrameCodec>;

impl NetworkBehaviour for PeerCodecs {
    type ConnectionHandler = <Inner as NetworkBehaviour>::ConnectionHandler;
    type ToSwarm = request_response::Event<Frame, Frame>;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner.handle_pending_inbound_connection(connection_id, local_addr, remote_addr)
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.for_peer(peer, |this| {
            this.inner.handle_established_inbound_connection(
                connection_id,
                peer,
                local_addr,
                remote_addr,
            )
        })
    }

    fn handle_pending_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        maybe_peer: Option<PeerId>,
        addresses: &[Multiaddr],
        effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner.handle_pending_outbound_connection(
            connection_id,
            maybe_peer,
            addresses,
            effective_role,
        )
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role_override: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.for_peer(peer, |this| {
            this.inner.handle_established_outbound_connection(
                connection_id,
                peer,
                addr,
                role_override,
                port_use,
            )
        })
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        self.inner.on_swarm_event(event)
    }

    fn on_connection_handler_event(
        &mut self,
        peer_id: PeerId,
        connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.inner.on_connection_handler_event(peer_id, connection_id, event)
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        self.inner.poll(cx)
    }
}
