//! The hostile peer on the network: the node's own libp2p stack (`fedmesh_node::network`: the
//! same gossipsub settings and request framing as every node) under a key of its own, and what
//! it learns by listening to a job's topic: the round in progress, the newest model, the latest
//! opening and its members, and the captured frames of one victim's heartbeats.

use super::HostileError;
use fedmesh_node::metrics::Metrics;
use fedmesh_node::network::{self, BehaviourSettings, Frame, Network, NetworkEvent};
use fedmesh_protocol::codec::{decode_gossip, decode_response, encode_request};
use fedmesh_protocol::identity::Identity;
use fedmesh_protocol::ids::{ContentHash, JobId, MemberId, Round};
use fedmesh_protocol::message::{
    AggregateReady, GossipMessage, Request, Response, ResultWithModel,
};
use libp2p::gossipsub::MessageAcceptance;
use libp2p::request_response::ResponseChannel;
use libp2p::{Multiaddr, PeerId};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The gossip topic of a job, as every node names it.
pub fn job_topic(job: &JobId) -> String {
    format!("fedmesh/job/{job}/1")
}

/// A heartbeat frame of the victim, as it arrived.
#[derive(Debug, Clone)]
pub struct Captured {
    pub frame: Vec<u8>,
    pub at: Instant,
}

/// What the peer learned from the job's topic.
#[derive(Debug, Default)]
pub struct Watch {
    /// The newest round a member said it is in, and the model it holds.
    pub round: Round,
    pub model: Option<ContentHash>,
    /// The newest round a result was announced for.
    pub completed: Round,
    /// The latest opening: its round, its base, its opener and the members it plans over.
    pub opening: Option<(Round, ContentHash, MemberId, Vec<MemberId>)>,
    /// The members the newest result lists (those its round planned over).
    pub result_members: Vec<MemberId>,
    /// The members heard on the topic (joins and heartbeats).
    pub members: BTreeSet<MemberId>,
    /// Peers subscribed to the job's topic.
    pub subscribers: BTreeSet<PeerId>,
    /// The victim whose heartbeats are captured, what was captured, and when it was last heard.
    pub victim: Option<MemberId>,
    pub captured: Vec<Captured>,
    pub victim_heard: Option<Instant>,
    /// The newest result heard with its model's bytes.
    pub with_model: Option<ResultWithModel>,
}

impl Watch {
    /// Takes in one gossip frame.
    fn observe(&mut self, frame: &[u8]) {
        let Ok(message) = decode_gossip(frame) else { return };
        match message {
            GossipMessage::Heartbeat(signed) => {
                let beat = signed.unverified_body();
                self.members.insert(beat.member);
                if beat.round >= self.round {
                    (self.round, self.model) = (beat.round, Some(beat.model));
                }
                if self.victim == Some(beat.member) {
                    let at = Instant::now();
                    self.victim_heard = Some(at);
                    self.captured.push(Captured { frame: frame.to_vec(), at });
                }
            }
            GossipMessage::Join(signed) => {
                self.members.insert(signed.unverified_body().member);
            }
            GossipMessage::RoundOpen(signed) => {
                let open = signed.unverified_body();
                let newer = self.opening.as_ref().is_none_or(|(round, ..)| open.round >= *round);
                if newer {
                    let opener = signed.signer();
                    self.opening =
                        Some((open.round, open.base_model, opener, open.members.clone()));
                }
            }
            GossipMessage::AggregateReady(signed) => self.observe_result(signed.unverified_body()),
            GossipMessage::ResultWithModel(m) => {
                self.observe_result(m.result.unverified_body());
                let round = |m: &ResultWithModel| m.result.unverified_body().round;
                if self.with_model.as_ref().is_none_or(|newest| round(newest) < round(&m)) {
                    self.with_model = Some(*m);
                }
            }
            _ => {}
        }
    }

    /// Takes in a round's result.
    fn observe_result(&mut self, ready: &AggregateReady) {
        if ready.round > self.completed {
            self.completed = ready.round;
            self.result_members = ready.members.clone();
            if ready.round >= self.round {
                (self.round, self.model) = (ready.round + 1, Some(ready.model));
            }
        }
    }

    /// The round in progress and the model it builds on, once heard.
    pub fn head(&self) -> Option<(Round, ContentHash)> {
        self.model.map(|model| (self.round.max(1), model))
    }

    /// Whether the newest opening or result heard planned a round with `member`: the members
    /// know of it.
    pub fn plans(&self, member: MemberId) -> bool {
        let opened = self.opening.as_ref().is_some_and(|(.., members)| members.contains(&member));
        opened || self.result_members.contains(&member)
    }

    /// The members the latest opening planned over, or those heard.
    pub fn planned_members(&self) -> Vec<MemberId> {
        match &self.opening {
            Some((.., members)) => members.clone(),
            None => self.members.iter().copied().collect(),
        }
    }
}

/// The hostile peer: its key, its network and what it watches.
pub struct Peer {
    pub identity: Arc<Identity>,
    pub network: Network,
    pub job: JobId,
    pub topic: String,
    watch: Arc<Mutex<Watch>>,
}

/// The node's network settings, but a frame limit that lets the peer receive any model.
fn settings() -> BehaviourSettings {
    BehaviourSettings {
        max_message_bytes: fedmesh_protocol::codec::MAX_FRAME_BYTES,
        request_timeout: Duration::from_secs(20),
        gossip_heartbeat: Duration::from_millis(200),
        bulk_buffer_bytes: 1 << 30,
        ..BehaviourSettings::default()
    }
}

fn network_error(error: impl std::fmt::Display) -> HostileError {
    HostileError::Network(error.to_string())
}

impl Peer {
    /// Starts a peer under `identity`, dials `peers`, subscribes to `job`'s topic and watches
    /// it (capturing `victim`'s heartbeats).
    pub async fn start(
        identity: Identity,
        job: JobId,
        peers: &[Multiaddr],
        victim: Option<MemberId>,
    ) -> Result<Self, HostileError> {
        let key = fedmesh_node::identity::libp2p_keypair(&identity).map_err(network_error)?;
        let listen: [Multiaddr; 0] = [];
        let (network, events) = network::start(key, &listen, &settings(), Arc::new(Metrics::new()))
            .map_err(network_error)?;
        let topic = job_topic(&job);
        network.subscribe(&topic).await.map_err(network_error)?;
        for address in peers {
            network.dial(address.clone()).await.map_err(network_error)?;
        }
        let watch = Arc::new(Mutex::new(Watch { victim, ..Watch::default() }));
        tokio::spawn(serve(network.clone(), events, watch.clone()));
        Ok(Self { identity: Arc::new(identity), network, job, topic, watch })
    }

    /// What it watches, for a moment.
    pub fn watch(&self) -> MutexGuard<'_, Watch> {
        lock(&self.watch)
    }

    /// The watch itself, for a task that reads it.
    pub fn watch_handle(&self) -> Arc<Mutex<Watch>> {
        self.watch.clone()
    }

    /// Waits until `ready` holds of what it watches, for at most `limit`.
    pub async fn wait_for<T>(
        &self,
        what: &str,
        limit: Duration,
        ready: impl Fn(&Watch) -> Option<T>,
    ) -> Result<T, HostileError> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(found) = ready(&self.watch()) {
                return Ok(found);
            }
            if Instant::now() > deadline {
                return Err(HostileError::Timeout(format!("{what}: not within {limit:?}")));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Publishes a gossip frame on the job's topic.
    pub async fn publish(&self, frame: Vec<u8>) -> Result<(), HostileError> {
        self.network.publish(&self.topic, frame).await.map_err(network_error)
    }

    /// The peers connected now.
    pub async fn connected(&self) -> Result<Vec<PeerId>, HostileError> {
        Ok(self.network.status().await.map_err(network_error)?.connected_peers)
    }

    /// Sends a request frame to `peer` and decodes the answer, with its payload.
    pub async fn ask(
        &self,
        peer: PeerId,
        frame: Vec<u8>,
        expect_bytes: usize,
    ) -> Result<(Response, Vec<u8>), HostileError> {
        let answer = self.network.request_expecting(peer, frame.into(), expect_bytes).await;
        let (bytes, _) = answer.map_err(network_error)?.into_received();
        let (response, payload) = decode_response(bytes).map_err(network_error)?;
        Ok((response, payload.into_vec()))
    }

    /// Sends a request that carries no payload to `peer`.
    pub async fn ask_plain(
        &self,
        peer: PeerId,
        request: &Request,
    ) -> Result<(Response, Vec<u8>), HostileError> {
        let frame = encode_request(request, &[]).map_err(network_error)?;
        self.ask(peer, frame, fedmesh_protocol::codec::MAX_FRAME_BYTES as usize).await
    }
}

/// Takes in the network's events until it stops: gossip is watched and never passed on,
/// requests are answered `Accepted` (a join answer, a question) or `Refused`.
async fn serve(
    network: Network,
    mut events: mpsc::Receiver<NetworkEvent>,
    watch: Arc<Mutex<Watch>>,
) {
    while let Some(event) = events.recv().await {
        match event {
            NetworkEvent::Gossip { source, message_id, data, .. } => {
                lock(&watch).observe(&data);
                let _ = network.validate(message_id, source, MessageAcceptance::Ignore).await;
            }
            NetworkEvent::Request { data, channel, .. } => answer(&network, data, channel).await,
            NetworkEvent::Subscribed { peer, topic } => {
                if topic.starts_with("fedmesh/job/") {
                    lock(&watch).subscribers.insert(peer);
                }
            }
            NetworkEvent::PeerConnected(_)
            | NetworkEvent::PeerDisconnected(_)
            | NetworkEvent::Reachability { .. } => {}
        }
    }
}

/// Answers a node's request: a join (its answer to the hostile's join, or its question) is
/// `Accepted`, anything else `Refused`.
async fn answer(network: &Network, data: Frame, channel: ResponseChannel<Frame>) {
    let (bytes, _) = data.into_received();
    let response = match fedmesh_protocol::codec::decode_request(bytes) {
        Ok((Request::Join { .. }, _)) => Response::Accepted,
        _ => Response::Refused { reason: "a hostile peer serves nothing".into() },
    };
    if let Ok(frame) = fedmesh_protocol::codec::encode_response(&response, &[]) {
        let _ = network.respond(channel, frame.into()).await;
    }
}

/// The watch, even if a task panicked while holding it (it holds plain observations).
pub fn lock(watch: &Mutex<Watch>) -> MutexGuard<'_, Watch> {
    watch.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The PeerId at the end of an address.
pub fn peer_of(address: &Multiaddr) -> Result<PeerId, HostileError> {
    network::peer_of(address).ok_or_else(|| HostileError::Address(address.to_string()))
}
