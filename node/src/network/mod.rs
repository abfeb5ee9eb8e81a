//! The node's network: a cloneable `Network` handle that sends commands to the one event loop that
//! owns the libp2p swarm, and the stream of `NetworkEvent`s it produces.

mod behaviour;
mod budget;
mod codec;
mod event_loop;
mod large_frames;
mod rate_limit;
mod reachability;
mod scoring;
#[cfg(test)]
mod tests;

pub use behaviour::{BehaviourSettings, MAX_GOSSIP_BYTES};
pub use budget::{BulkBudget, COUNTED_FROM_BYTES as LARGE_FRAME_BYTES, Held, WeakHeld};
pub use codec::Frame;
pub use event_loop::{RATE_LIMITED, peer_of};
pub use large_frames::LARGE_FROM_OUTSIDER;

use crate::metrics::Metrics;
use behaviour::Behaviour;
use event_loop::EventLoop;
use large_frames::LargeFramePeers;
use libp2p::gossipsub::{MessageAcceptance, MessageId};
use libp2p::request_response::ResponseChannel;
use libp2p::{Multiaddr, PeerId, identity, noise, yamux};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How long a connection no protocol uses stays open: minutes (a peer's idle connections are not
/// held for an hour), and longer than a round's quiet stretches.
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// What the network can fail at.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NetworkError {
    #[error("cannot publish: {0}")]
    Publish(String),
    #[error("request failed: {0}")]
    Request(String),
    #[error("the network task has stopped")]
    Stopped,
    #[error("cannot start the network: {0}")]
    Setup(String),
    #[error("cannot listen on {address}: {detail}")]
    Listen { address: String, detail: String },
}

/// Something the network saw that the node must handle.
#[derive(Debug)]
pub enum NetworkEvent {
    /// A gossip message; the receiver must report its validation result.
    Gossip {
        source: PeerId,
        message_id: MessageId,
        topic: String,
        data: Vec<u8>,
    },
    /// A request to answer through `Network::respond`.
    Request {
        peer: PeerId,
        data: Frame,
        channel: ResponseChannel<Frame>,
    },
    PeerConnected(PeerId),
    PeerDisconnected(PeerId),
    /// A peer subscribed to a topic.
    Subscribed {
        peer: PeerId,
        topic: String,
    },
    /// The node learned whether peers can dial it.
    Reachability {
        behind_nat: bool,
    },
}

/// The node's view of its own network.
#[derive(Debug, Clone)]
pub struct NetworkStatus {
    pub peer_id: PeerId,
    pub listen_addresses: Vec<Multiaddr>,
    pub connected_peers: Vec<PeerId>,
    /// Whether peers cannot dial this node (AutoNAT or an observed address said so).
    pub behind_nat: bool,
}

pub(crate) enum Command {
    Publish { topic: String, data: Vec<u8>, reply: oneshot::Sender<Result<(), NetworkError>> },
    Subscribe { topic: String },
    Unsubscribe { topic: String },
    Request { peer: PeerId, data: Frame, reply: oneshot::Sender<Result<Frame, NetworkError>> },
    Respond { channel: ResponseChannel<Frame>, data: Frame },
    Validate { message_id: MessageId, source: PeerId, acceptance: MessageAcceptance },
    Dial { address: Multiaddr },
    Status { reply: oneshot::Sender<NetworkStatus> },
    PeerScore { peer: PeerId, reply: oneshot::Sender<Option<f64>> },
}

/// A cloneable handle to the network task.
#[derive(Clone)]
pub struct Network {
    commands: mpsc::Sender<Command>,
    budget: BulkBudget,
    /// The peers that may send this node large requests.
    large_frame_peers: LargeFramePeers,
    /// The timeout of a small request (it grows with the bytes a request moves).
    base_timeout: Duration,
}

/// Builds the swarm, starts listening and spawns the event loop.
pub fn start(
    key: identity::Keypair,
    listen: &[Multiaddr],
    settings: &BehaviourSettings,
    metrics: Arc<Metrics>,
) -> Result<(Network, mpsc::Receiver<NetworkEvent>), NetworkError> {
    let setup = |e: &dyn std::fmt::Display| NetworkError::Setup(e.to_string());
    let budget = BulkBudget::new(settings.bulk_buffer_bytes);
    let large_frame_peers = LargeFramePeers::new(metrics.clone());
    let behaviour = |key: &identity::Keypair, relay_client| {
        Behaviour::new(
            key,
            relay_client,
            settings,
            budget.clone(),
            metrics.clone(),
            large_frame_peers.clone(),
        )
        .map_err(Box::<dyn std::error::Error + Send + Sync>::from)
    };
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_quic()
        .with_other_transport(|key| {
            let transport = fedmesh_protocol::transport::tcp_noise_yamux(key);
            transport.map_err(Box::<dyn std::error::Error + Send + Sync>::from)
        })
        .map_err(|e| setup(&e))?
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| setup(&e))?
        .with_behaviour(behaviour)
        .map_err(|e| setup(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT))
        .build();
    for address in listen {
        swarm.listen_on(address.clone()).map_err(|e| NetworkError::Listen {
            address: address.to_string(),
            detail: e.to_string(),
        })?;
    }
    let (command_tx, command_rx) = mpsc::channel(256);
    let (event_tx, event_rx) = mpsc::channel(1024);
    let crowding = event_loop::Crowding::for_limit(settings.max_connections, settings.idle_after);
    tokio::spawn(EventLoop::new(swarm, command_rx, event_tx, metrics, crowding).run());
    let base_timeout = settings.request_timeout;
    let network = Network { commands: command_tx, budget, large_frame_peers, base_timeout };
    Ok((network, event_rx))
}

impl Network {
    async fn send(&self, command: Command) -> Result<(), NetworkError> {
        self.commands.send(command).await.map_err(|_| NetworkError::Stopped)
    }

    /// Publishes a gossip message on `topic`.
    pub async fn publish(&self, topic: &str, data: Vec<u8>) -> Result<(), NetworkError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Publish { topic: topic.to_owned(), data, reply }).await?;
        answer.await.map_err(|_| NetworkError::Stopped)?
    }

    pub async fn subscribe(&self, topic: &str) -> Result<(), NetworkError> {
        self.send(Command::Subscribe { topic: topic.to_owned() }).await
    }

    pub async fn unsubscribe(&self, topic: &str) -> Result<(), NetworkError> {
        self.send(Command::Unsubscribe { topic: topic.to_owned() }).await
    }

    /// Sends a request and waits for its response, within a timeout for the request's size
    /// (a peer that is gone costs a small request's timeout, not a large model's).
    pub async fn request(&self, peer: PeerId, data: Frame) -> Result<Frame, NetworkError> {
        self.request_expecting(peer, data, 0).await
    }

    /// [`request`](Self::request) for an answer of up to `response_bytes` (a blob).
    pub async fn request_expecting(
        &self,
        peer: PeerId,
        data: Frame,
        response_bytes: usize,
    ) -> Result<Frame, NetworkError> {
        let moved = (data.len() + response_bytes) as u64;
        let limit = behaviour::timeout_for(self.base_timeout, moved);
        let (reply, answer) = oneshot::channel();
        self.send(Command::Request { peer, data, reply }).await?;
        match tokio::time::timeout(limit, answer).await {
            Ok(answer) => answer.map_err(|_| NetworkError::Stopped)?,
            Err(_) => Err(NetworkError::Request(format!("no answer within {limit:?}"))),
        }
    }

    /// Answers a request received as `NetworkEvent::Request`.
    pub async fn respond(
        &self,
        channel: ResponseChannel<Frame>,
        data: Frame,
    ) -> Result<(), NetworkError> {
        self.send(Command::Respond { channel, data }).await
    }

    /// Reports whether a gossip message is valid, so gossipsub forwards it or penalizes its sender.
    pub async fn validate(
        &self,
        message_id: MessageId,
        source: PeerId,
        acceptance: MessageAcceptance,
    ) -> Result<(), NetworkError> {
        self.send(Command::Validate { message_id, source, acceptance }).await
    }

    /// A share of the bulk budget for `bytes` of a large buffer this node makes (its own
    /// update), once it fits: the buffer then never adds to the frames the budget bounds.
    pub async fn reserve(&self, bytes: usize) -> Held {
        self.budget.reserve(bytes).await
    }

    /// A share of the bulk budget for `bytes` about to be sent, if it fits now (a node serving
    /// a blob holds it until the response is written).
    pub fn try_reserve(&self, bytes: usize) -> Option<Held> {
        self.budget.try_reserve(bytes)
    }

    /// Sets the peers that may send this node requests of [`LARGE_FRAME_BYTES`] or more (the
    /// peers of the jobs it runs); a larger request from anyone else is refused unread.
    pub fn set_large_frame_peers(&self, peers: std::collections::HashSet<PeerId>) {
        self.large_frame_peers.set(peers);
    }

    pub async fn dial(&self, address: Multiaddr) -> Result<(), NetworkError> {
        self.send(Command::Dial { address }).await
    }

    /// gossipsub's score of `peer` (none if scoring is off or the peer unknown).
    pub async fn peer_score(&self, peer: PeerId) -> Result<Option<f64>, NetworkError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::PeerScore { peer, reply }).await?;
        answer.await.map_err(|_| NetworkError::Stopped)
    }

    pub async fn status(&self) -> Result<NetworkStatus, NetworkError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Status { reply }).await?;
        answer.await.map_err(|_| NetworkError::Stopped)
    }
}
