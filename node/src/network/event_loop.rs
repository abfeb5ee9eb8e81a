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

/// The reason a request over its peer's rate limit is refused with.
pub const RATE_LIMITED: &str = "rate limited: too many requests from this peer, try again later";
/// How many events may wait for the node before the swarm is no longer polled.
const OUTBOX_LIMIT: usize = 1024;
/// A peer Kademlia hears of is dialled only while the node has fewer peers than this: a
/// routing table full of addresses others sent does not make the node dial them all.
const DIAL_DISCOVERED_BELOW: usize = 64;

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
    metrics: Arc<Metrics>,
}

impl EventLoop {
    pub fn new(
        swarm: Swarm<Behaviour>,
        commands: mpsc::Receiver<Command>,
        events: mpsc::Sender<NetworkEvent>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (outbox, pending_requests) = (VecDeque::new(), HashMap::new());
        let (rate_limit, reachability) = (RateLimiter::default(), Reachability::default());
        Self {
            swarm,
            commands,
            events,
            outbox,
            pending_requests,
            rate_limit,
            reachability,
            metrics,
        }
    }

    /// Runs until every `Network` handle is dropped.
    pub async fn run(mut self) {
        loop {
            let swarm_polled = self.outbox.len() < OUTBOX_LIMIT;
            let has_events = !self.outbox.is_empty();
            tokio::select! {
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
                    tracing::info!(peer = %peer_id, address = %endpoint.get_remote_address(), "connected");
                    self.emit(NetworkEvent::PeerConnected(peer_id));
                }
            }
            SwarmEvent::ConnectionClosed { peer_id, connection_id, num_established, .. } => {
                self.metrics.connected_peers.set(self.swarm.connected_peers().count() as i64);
                self.reachability.closed(&self.metrics, connection_id);
                if num_established == 0 {
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
                let listen =
                    self.reachability.observed(&info.observed_addr, self.swarm.listeners());
                self.listen_through_relays(listen);
                for address in info.listen_addrs {
                    self.swarm.behaviour_mut().kademlia.add_address(&peer_id, address);
                }
            }
            BehaviourEvent::Autonat(autonat::Event::StatusChanged { new, .. }) => {
                let listen = self.reachability.status_changed(&new);
                self.listen_through_relays(listen);
            }
            BehaviourEvent::RelayClient(relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal: false,
                ..
            }) => {
                tracing::info!(relay = %relay_peer_id, "listening through a relay");
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
                if !self.swarm.is_connected(&peer)
                    && self.swarm.connected_peers().count() < DIAL_DISCOVERED_BELOW =>
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
                }
            },
            request_response::Event::OutboundFailure { request_id, error, peer, .. } => {
                tracing::debug!(%peer, %error, "request failed");
                if let Some(reply) = self.pending_requests.remove(&request_id) {
                    let _ = reply.send(Err(NetworkError::Request(error.to_string())));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "inbound request failed");
                self.metrics.rejected("request", "inbound_failure");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }
}

impl EventLoop {
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
