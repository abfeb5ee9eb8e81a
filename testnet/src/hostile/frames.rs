//! Raw request frames on the nodes' request-response protocol (`/fedmesh/req/1`), from a swarm
//! of their own under a fresh key (an outsider): a codec whose requests lie about their length
//! (far above any limit), or announce a large frame and then trickle its bytes a few at a time.
//! What became of each frame (how the node ended it) is the outcome.

use super::{HostileError, Outcome};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::request_response::{self, OutboundFailure, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, StreamProtocol, noise, tcp, yamux};
use std::collections::BTreeMap;
use std::io;
use std::time::Duration;

/// The nodes' request-response protocol.
const PROTOCOL: StreamProtocol = StreamProtocol::new("/fedmesh/req/1");

/// One lying frame: the length its prefix claims, and the bytes that follow it (`sent` in all,
/// `step` at a time with `pause` between).
#[derive(Debug, Clone, Copy)]
pub struct Lie {
    pub claimed: u64,
    pub sent: usize,
    pub step: usize,
    pub pause: Duration,
}

impl Lie {
    /// A prefix of `claimed` bytes, then a few bytes at once.
    pub fn oversized(claimed: u64) -> Self {
        Self { claimed, sent: 16, step: 16, pause: Duration::ZERO }
    }

    /// A large length that looks valid, then `step` bytes every `pause` for `lasting`.
    pub fn trickled(claimed: u64, step: usize, pause: Duration, lasting: Duration) -> Self {
        let steps = (lasting.as_millis() / pause.as_millis().max(1)).max(1) as usize;
        Self { claimed, sent: steps * step, step, pause }
    }
}

/// Writes [`Lie`]s; reads whatever answer comes (at most a small one).
#[derive(Debug, Clone, Copy, Default)]
pub struct LyingCodec;

/// The largest answer read: a node's refusal is a few hundred bytes.
const MAX_ANSWER: u64 = 64 << 10;

impl request_response::Codec for LyingCodec {
    type Protocol = StreamProtocol;
    type Request = Lie;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, _: &mut T) -> io::Result<Lie>
    where
        T: AsyncRead + Unpin + Send,
    {
        Err(io::Error::new(io::ErrorKind::Unsupported, "the hostile peer takes no requests"))
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut answer = Vec::new();
        io.take(MAX_ANSWER).read_to_end(&mut answer).await?;
        Ok(answer)
    }

    async fn write_request<T>(&mut self, _: &StreamProtocol, io: &mut T, lie: Lie) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&lie.claimed.to_le_bytes()).await?;
        io.flush().await?;
        let chunk = vec![1u8; lie.step.max(1)];
        let mut sent = 0;
        while sent < lie.sent {
            if !lie.pause.is_zero() {
                tokio::time::sleep(lie.pause).await;
            }
            io.write_all(&chunk).await?;
            io.flush().await?;
            sent += chunk.len();
        }
        Ok(())
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
        _: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        Ok(())
    }
}

type Swarm = libp2p::Swarm<request_response::Behaviour<LyingCodec>>;

fn swarm(limit: Duration) -> Result<Swarm, HostileError> {
    let setup = |e: &dyn std::fmt::Display| HostileError::Network(e.to_string());
    let swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
        .map_err(|e| setup(&e))?
        .with_behaviour(|_| {
            request_response::Behaviour::with_codec(
                LyingCodec,
                [(PROTOCOL, ProtocolSupport::Outbound)],
                request_response::Config::default()
                    .with_request_timeout(limit)
                    .with_max_concurrent_streams(1024),
            )
        })
        .map_err(|e| setup(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(limit))
        .build();
    Ok(swarm)
}

/// How one frame ended, as a short label (`reset by the node`, `answered`, ...).
fn ending(failure: &OutboundFailure) -> String {
    match failure {
        OutboundFailure::Io(error) => format!("write failed: {error}"),
        OutboundFailure::ConnectionClosed => "the node closed the connection".into(),
        OutboundFailure::Timeout => "still open when the hostile peer gave up".into(),
        other => other.to_string(),
    }
}

/// Sends `count` lying frames to every peer of `peers` at once and waits until each ended (or
/// `limit` passed); notes how each node ended them.
pub async fn send(
    peers: &[(PeerId, Multiaddr)],
    lie: Lie,
    count: usize,
    limit: Duration,
    outcome: &mut Outcome,
) -> Result<(), HostileError> {
    let mut swarm = swarm(limit)?;
    let mut pending = BTreeMap::new();
    for (peer, address) in peers {
        swarm.add_peer_address(*peer, address.clone());
        for _ in 0..count {
            pending.insert(swarm.behaviour_mut().send_request(peer, lie), *peer);
        }
    }
    outcome.note(format!(
        "sent {} frames claiming {} bytes ({} bytes follow, {} at a time every {:?}) to {} nodes",
        pending.len(),
        lie.claimed,
        lie.sent,
        lie.step,
        lie.pause,
        peers.len()
    ));
    let mut endings: BTreeMap<String, usize> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + limit + Duration::from_secs(5);
    while !pending.is_empty() {
        let event = tokio::time::timeout_at(deadline, swarm.select_next_some()).await;
        let Ok(event) = event else { break };
        let (id, end) = match event {
            SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                request_id,
                error,
                ..
            }) => (request_id, ending(&error)),
            SwarmEvent::Behaviour(request_response::Event::Message {
                message: request_response::Message::Response { request_id, response },
                ..
            }) if response.is_empty() => {
                (request_id, "the node closed the stream unanswered".into())
            }
            SwarmEvent::Behaviour(request_response::Event::Message {
                message: request_response::Message::Response { request_id, response },
                ..
            }) => (request_id, format!("answered ({} bytes)", response.len())),
            _ => continue,
        };
        if pending.remove(&id).is_some() {
            *endings.entry(end).or_default() += 1;
        }
    }
    for (end, frames) in endings {
        outcome.note(format!("{frames} frames: {end}"));
    }
    if !pending.is_empty() {
        outcome
            .note(format!("{} frames had not ended when the hostile peer stopped", pending.len()));
    }
    Ok(())
}
