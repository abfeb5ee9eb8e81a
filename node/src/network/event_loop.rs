//! The one task that owns the libp2p `Swarm`: it runs commands from the `Network` handle and turns
//! swarm events into `NetworkEvent`s for the node. It never blocks: decoding and verification
//! happen in the receiver of the events, and events the node has not taken yet wait in an outbox
//! while commands keep being served (the node may be waiting on one). Only the swarm waits while
//! the outbox is full, which holds back peers through their connections' flow control.

use super::behaviour::{Behaviour, BehaviourEvent};
use super::rate_limit::RateLimiter;
use super::reachability::Reachability;
use super::{Command, Frame, NetworkError, NetworkEvent, NetworkStatus};
use crate::metrics::Metrics;
use fedmesh_protocol::codec::encode_response_header;
use fedmesh_protocol::message::Response;
use futures::StreamExt;
use libp2p::swarm::SwarmEvent;
use libp2p::{
    Multiaddr, PeerId, Swarm, autonat, dcutr, gossipsub, identify, kad, mdns, relay,
    request_response,
};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

type PendingRequests =
    HashMap<request_response::OutboundRequestId, oneshot::Sender<Result<Frame, NetworkError>>>;

/// How many connected peers a node seeks and keeps by choice, within its connection limit.
#[derive(Debug, Clone, Copy)]
pub struct Crowding {
    /// It dials the peers Kademlia tells it of only below this many (a quarter of the limit):
    /// a routing table full of addresses others sent does not make it dial them all.
    pub dial_below: usize,
    /// Above this many (three quarters of the limit), it closes a connection its last request
    /// leaves unused, unless the peer is in its gossip mesh: a bulk transfer opened it, and
    /// others are waiting to connect. The gap between the two keeps a node from closing what
    /// its peers dial again. It closes idle connections down to this many too
    /// ([`EventLoop::trim_idle`]).
    pub close_above: usize,
    /// How long a connection is kept before it counts as idle: its peer may have dialled to
    /// send a request that has not arrived yet.
    pub idle_after: std::time::Duration,
}

impl Crowding {
    pub fn for_limit(max_connections: u32, idle_after: std::time::Duration) -> Self {
        let limit = max_connections as usize;
        Self { dial_below: limit / 4, close_above: limit * 3 / 4, idle_after }
    }
}

/// How often a crowded node closes idle connections.
const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// How long a peer whose connections all closed is not dialled again because discovery
/// mentions it.
const REDIAL_PAUSE: std::time::Duration = std::time::Duration::from_secs(60);
/// Past this many remembered closings, those older than the pause are forgotten.
const RECENTLY_CLOSED_KEPT: usize = 1024;

/// The reason a request over its peer's rate limit is refused with.
pub const RATE_LIMITED: &str = "rate limited: too many requests from this peer, try again later";
/// How many events may wait for the node before the swarm is no longer polled.
const OUTBOX_LIMIT: usize = 1024;

/// Owns the swarm; see the module doc.
pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<NetworkEvent>,
    /// Events made and not yet taken by the node, oldest first.
    outbox: VecDeque<NetworkEvent>,
    pending_requests: PendingRequests,
    /// Each peer's budget of incoming requests.
    rate_limit: RateLimiter,
    /// Whether peers can dial this node, the relays it met, its connections' kinds.
    reachability: Reachability,
    /// Requests under way with each peer, either way.
    in_flight: HashMap<PeerId, usize>,
    /// How many connected peers the node seeks and holds at most by choice (see [`Crowding`]).
    crowding: Crowding,
    /// When each peer's last connection closed: a peer that just left is not dialled again at
    /// once because Kademlia mentions it.
    recently_closed: HashMap<PeerId, Instant>,
    /// When each connected peer's first connection opened.
    connected_at: HashMap<PeerId, Instant>,
    /// The peers holding a relay reservation with this node: closing their connection would
    /// end it, and their listening through this node.
    relay_clients: std::collections::HashSet<PeerId>,
    metrics: Arc<Metrics>,
}

impl EventLoop {
    pub fn new(
        swarm: Swarm<Behaviour>,
        commands: mpsc::Receiver<Command>,
        events: mpsc::Sender<NetworkEvent>,
        metrics: Arc<Metrics>,
        crowding: Crowding,
    ) -> Self {
        Self {
            swarm,
            commands,
            events,
            outbox: VecDeque::new(),
            pending_requests: HashMap::new(),
            rate_limit: RateLimiter::default(),
            reachability: Reachability::default(),
            in_flight: HashMap::new(),
            crowding,
            recently_closed: HashMap::new(),
            connected_at: HashMap::new(),
            relay_clients: Default::default(),
            metrics,
        }
    }

    /// Runs until every `Network` handle is dropped.
    pub async fn run(mut self) {
        let mut trim = tokio::time::interval(TRIM_EVERY);
        trim.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let swarm_polled = self.outbox.len() < OUTBOX_LIMIT;
            let has_events = !self.outbox.is_empty();
            tokio::select! {
                _ = trim.tick() => self.trim_idle(),
                event = self.swarm.select_next_some(), if swarm_polled => self.on_swarm_event(event),
                command = self.commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    None => return,
                },
                permit = self.events.clone().reserve_owned(), if has_events => match permit {
                    Ok(permit) => {
                        if let Some(event) = self.outbox.pop_front() {
                            permit.send(event);
                        }
                    }
                    Err(_) => {
                        tracing::debug!("network events dropped: the node is shutting down");
                        self.outbox.clear();
                    }
                },
            }
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Publish { topic, data, reply } => {
                let size = data.len();
                let result = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .publish(gossipsub::IdentTopic::new(topic), data)
                    .map(|_| self.metrics.sent("gossip", size))
                    .map_err(|e| NetworkError::Publish(e.to_string()));
                let _ = reply.send(result);
            }
            Command::Subscribe { topic } => self.subscribe(&topic),
            Command::Unsubscribe { topic } => {
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .unsubscribe(&gossipsub::IdentTopic::new(topic));
            }
            Command::Request { peer, data, reply } => {
                self.metrics.sent("request", data.len());
                self.add_relayed_addresses(peer);
                *self.in_flight.entry(peer).or_default() += 1;
                let id = self.swarm.behaviour_mut().request_response.send_request(&peer, data);
                self.pending_requests.insert(id, reply);
            }
            Command::Respond { channel, data } => {
                self.metrics.sent("response", data.len());
                if self.swarm.behaviour_mut().request_response.send_response(channel, data).is_err()
                {
                    tracing::debug!("response dropped: the requester went away");
                }
            }
            Command::Validate { message_id, source, acceptance } => {
                self.swarm.behaviour_mut().gossipsub.report_message_validation_result(
                    &message_id,
                    &source,
                    acceptance,
                );
            }
            Command::Dial { address } => self.dial(address),
            Command::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Command::PeerScore { peer, reply } => {
                let _ = reply.send(self.swarm.behaviour().gossipsub.peer_score(&peer));
            }
        }
    }

    /// Subscribes to `topic`, scoring what peers send on it.
    fn subscribe(&mut self, topic: &str) {
        let topic = gossipsub::IdentTopic::new(topic);
        let gossipsub = &mut self.swarm.behaviour_mut().gossipsub;
        if let Err(e) = gossipsub.set_topic_params(topic.clone(), super::scoring::topic_params()) {
            tracing::warn!(%topic, error = %e, "cannot score the topic");
        }
        if let Err(e) = gossipsub.subscribe(&topic) {
            tracing::warn!(%topic, error = %e, "cannot subscribe");
        }
    }

    fn dial(&mut self, address: Multiaddr) {
        if let Some(peer) = peer_of(&address) {
            self.swarm.behaviour_mut().kademlia.add_address(&peer, address.clone());
        }
        if let Err(e) = self.swarm.dial(address.clone()) {
            tracing::warn!(%address, error = %e, "cannot dial");
        }
    }

    /// Adds the addresses `peer` has if it listens through a relay this node met, unless they
    /// are connected already.
    fn add_relayed_addresses(&mut self, peer: PeerId) {
        if self.swarm.is_connected(&peer) {
            return;
        }
        for address in self.reachability.through_relays(peer) {
            self.swarm.behaviour_mut().kademlia.add_address(&peer, address);
        }
    }

    /// Listens on relayed addresses (`/p2p/RELAY/p2p-circuit`).
    fn listen_through_relays(&mut self, addresses: impl IntoIterator<Item = Multiaddr>) {
        for address in addresses {
            if let Err(error) = self.swarm.listen_on(address.clone()) {
                tracing::warn!(%address, %error, "cannot listen through the relay");
                self.reachability.listener_closed(&[address]);
            }
        }
    }

    fn status(&self) -> NetworkStatus {
        NetworkStatus {
            peer_id: *self.swarm.local_peer_id(),
            listen_addresses: self.swarm.listeners().cloned().collect(),
            connected_peers: self.swarm.connected_peers().cloned().collect(),
            behind_nat: self.reachability.behind_nat(),
        }
    }

    /// Tells the engine when this node's reachability changed from `was_behind_nat`.
    fn tell_reachability(&mut self, was_behind_nat: bool) {
        let behind_nat = self.reachability.behind_nat();
        if behind_nat != was_behind_nat {
            self.emit(NetworkEvent::Reachability { behind_nat });
        }
    }

    fn emit(&mut self, event: NetworkEvent) {
        self.outbox.push_back(event);
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
            }
            SwarmEvent::ListenerError { error, .. } => {
                tracing::warn!(%error, "a listener failed");
            }
            SwarmEvent::ListenerClosed { addresses, reason, .. } => {
                if let Err(error) = reason {
                    tracing::warn!(?addresses, %error, "a listener closed: peers cannot reach these addresses");
                }
                self.reachability.listener_closed(&addresses);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                num_established,
                endpoint,
                ..
            } => {
                self.metrics.connected_peers.set(self.swarm.connected_peers().count() as i64);
                self.reachability.opened(&self.metrics, connection_id, endpoint.is_relayed());
                if num_established.get() == 1 {
                    self.connected_at.insert(peer_id, Instant::now());
                    tracing::info!(peer = %peer_id, address = %endpoint.get_remote_address(), "connected");
                    self.emit(NetworkEvent::PeerConnected(peer_id));
                }
            }
            SwarmEvent::ConnectionClosed { peer_id, connection_id, num_established, .. } => {
                self.metrics.connected_peers.set(self.swarm.connected_peers().count() as i64);
                self.reachability.closed(&self.metrics, connection_id);
                if num_established == 0 {
                    self.connected_at.remove(&peer_id);
                    self.closed_lately(peer_id);
                    tracing::info!(peer = %peer_id, "disconnected");
                    self.emit(NetworkEvent::PeerDisconnected(peer_id));
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::debug!(peer = ?peer_id, %error, "outgoing connection failed");
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Gossipsub(event) => self.on_gossip(event),
            BehaviourEvent::RequestResponse(event) => self.on_request_response(event),
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                if info.protocols.contains(&relay::HOP_PROTOCOL_NAME) {
                    let listen = self.reachability.relay_found(peer_id, &info.listen_addrs);
                    self.listen_through_relays(listen);
                }
                let was_behind_nat = self.reachability.behind_nat();
                let listen =
                    self.reachability.observed(&info.observed_addr, self.swarm.listeners());
                self.listen_through_relays(listen);
                self.tell_reachability(was_behind_nat);
                for address in info.listen_addrs {
                    self.swarm.behaviour_mut().kademlia.add_address(&peer_id, address);
                }
            }
            BehaviourEvent::Autonat(autonat::Event::StatusChanged { new, .. }) => {
                let was_behind_nat = self.reachability.behind_nat();
                let listen = self.reachability.status_changed(&new);
                self.listen_through_relays(listen);
                self.tell_reachability(was_behind_nat);
            }
            BehaviourEvent::RelayClient(relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal: false,
                ..
            }) => {
                tracing::info!(relay = %relay_peer_id, "listening through a relay");
            }
            BehaviourEvent::Relay(relay::Event::ReservationReqAccepted { src_peer_id, .. }) => {
                self.relay_clients.insert(src_peer_id);
            }
            BehaviourEvent::Relay(
                relay::Event::ReservationClosed { src_peer_id }
                | relay::Event::ReservationTimedOut { src_peer_id },
            ) => {
                self.relay_clients.remove(&src_peer_id);
            }
            BehaviourEvent::Dcutr(dcutr::Event { remote_peer_id, result }) => match result {
                Ok(connection) => {
                    tracing::info!(peer = %remote_peer_id, "hole punched: a direct connection");
                    self.reachability.hole_punched(&self.metrics, connection);
                }
                Err(error) => {
                    tracing::info!(peer = %remote_peer_id, %error, "hole punching failed: the connection stays relayed");
                }
            },
            BehaviourEvent::Mdns(mdns::Event::Discovered(peers)) => {
                for (peer, address) in peers {
                    self.swarm.behaviour_mut().kademlia.add_address(&peer, address.clone());
                    if !self.swarm.is_connected(&peer) {
                        let _ = self.swarm.dial(address);
                    }
                }
            }
            BehaviourEvent::Kademlia(kad::Event::RoutingUpdated { peer, .. })
                if self.seeks(&peer) =>
            {
                self.add_relayed_addresses(peer);
                let _ = self.swarm.dial(peer);
            }
            _ => {}
        }
    }

    fn on_gossip(&mut self, event: gossipsub::Event) {
        match event {
            gossipsub::Event::Message { propagation_source, message_id, message } => {
                self.metrics.received("gossip", message.data.len());
                self.emit(NetworkEvent::Gossip {
                    source: propagation_source,
                    message_id,
                    topic: message.topic.into_string(),
                    data: message.data,
                });
            }
            gossipsub::Event::Subscribed { peer_id, topic } => {
                self.emit(NetworkEvent::Subscribed { peer: peer_id, topic: topic.into_string() })
            }
            _ => {}
        }
    }

    fn on_request_response(&mut self, event: request_response::Event<Frame, Frame>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    self.metrics.received("request", request.len());
                    *self.in_flight.entry(peer).or_default() += 1;
                    if self.rate_limit.allow(peer, Instant::now()) {
                        self.emit(NetworkEvent::Request { peer, data: request, channel });
                    } else {
                        self.refuse_rate_limited(peer, channel);
                    }
                }
                request_response::Message::Response { request_id, response } => {
                    self.metrics.received("response", response.len());
                    if let Some(reply) = self.pending_requests.remove(&request_id) {
                        let _ = reply.send(Ok(response));
                    }
                    self.request_done(peer);
                }
            },
            request_response::Event::OutboundFailure { request_id, error, peer, .. } => {
                tracing::debug!(%peer, %error, "request failed");
                self.request_done(peer);
                if let Some(reply) = self.pending_requests.remove(&request_id) {
                    let _ = reply.send(Err(NetworkError::Request(error.to_string())));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "inbound request failed");
                self.metrics.rejected("request", "inbound_failure");
                self.request_done(peer);
            }
            request_response::Event::ResponseSent { peer, .. } => self.request_done(peer),
        }
    }
}

impl EventLoop {
    /// Whether the node holds more connected peers than it keeps when it can choose.
    fn crowded(&self) -> bool {
        self.swarm.connected_peers().count() > self.crowding.close_above
    }

    /// A crowded node closes its idle connections, oldest first, down to the number it keeps
    /// by choice: those with no request under way, to peers outside its gossip mesh, open
    /// longer than `Crowding::idle_after`, and neither its relays nor their clients. Peers that dialled
    /// for Kademlia or gossip otherwise held its slots until the idle timeout (minutes), and an
    /// aggregator at its limit refused the trainers dialling to send their updates.
    fn trim_idle(&mut self) {
        let connected = self.swarm.connected_peers().count();
        if connected <= self.crowding.close_above {
            return;
        }
        let behaviour = self.swarm.behaviour();
        let meshed: std::collections::HashSet<&PeerId> =
            behaviour.gossipsub.all_mesh_peers().collect();
        let now = Instant::now();
        let mut idle: Vec<(Instant, PeerId)> = self
            .connected_at
            .iter()
            .filter(|(peer, at)| {
                now.duration_since(**at) >= self.crowding.idle_after
                    && !self.in_flight.contains_key(*peer)
                    && !meshed.contains(peer)
                    && !self.relay_clients.contains(*peer)
                    && !self.reachability.is_relay(peer)
            })
            .map(|(peer, at)| (*at, *peer))
            .collect();
        idle.sort_unstable();
        let excess = connected - self.crowding.close_above;
        for (_, peer) in idle.into_iter().take(excess) {
            tracing::debug!(%peer, "closing an idle connection: the node is crowded");
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    /// Whether to dial `peer`, which discovery mentions: not connected, not gone just now,
    /// and the node has few peers.
    fn seeks(&self, peer: &PeerId) -> bool {
        let gone_lately =
            self.recently_closed.get(peer).is_some_and(|closed| closed.elapsed() < REDIAL_PAUSE);
        !self.swarm.is_connected(peer)
            && !gone_lately
            && self.swarm.connected_peers().count() < self.crowding.dial_below
    }

    /// Notes that `peer`'s last connection closed (forgetting those that closed long ago; past
    /// the bound, peers churning faster than that are not noted).
    fn closed_lately(&mut self, peer: PeerId) {
        if self.recently_closed.len() >= RECENTLY_CLOSED_KEPT {
            self.recently_closed.retain(|_, closed| closed.elapsed() < REDIAL_PAUSE);
        }
        if self.recently_closed.len() < RECENTLY_CLOSED_KEPT {
            self.recently_closed.insert(peer, Instant::now());
        }
    }

    /// Counts a request with `peer` done; when it was the last under way and the node is
    /// crowded, closes the connection unless the peer is in its gossip mesh (a bulk transfer
    /// opened it, and others are waiting to connect).
    fn request_done(&mut self, peer: PeerId) {
        let Some(count) = self.in_flight.get_mut(&peer) else { return };
        *count -= 1;
        if *count > 0 {
            return;
        }
        self.in_flight.remove(&peer);
        let meshed = self.swarm.behaviour().gossipsub.all_mesh_peers().any(|p| *p == peer);
        if self.crowded() && !meshed {
            tracing::debug!(%peer, "closing the connection of a finished transfer: the node is crowded");
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    /// Answers a request over `peer`'s rate limit with a refusal, without the node seeing it.
    fn refuse_rate_limited(
        &mut self,
        peer: PeerId,
        channel: request_response::ResponseChannel<Frame>,
    ) {
        tracing::debug!(%peer, "refused a request over the peer's rate limit");
        self.metrics.rejected("request", "rate_limited");
        let refusal = Response::Refused { reason: RATE_LIMITED.to_owned() };
        let Ok(head) = encode_response_header(&refusal, 0) else { return };
        let _ = self.swarm.behaviour_mut().request_response.send_response(channel, head.into());
    }
}

/// The PeerId at the end of a `/p2p/...` address.
pub fn peer_of(address: &Multiaddr) -> Option<PeerId> {
    address.iter().find_map(|p| match p {
        libp2p::multiaddr::Protocol::P2p(peer) => Some(peer),
        _ => None,
    })
}
