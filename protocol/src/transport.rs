//! The transport nodes speak to each other over: TCP, secured by Noise, its streams
//! multiplexed by yamux.
//!
//! It is built here rather than in the node because libp2p's Noise and yamux framing is generic
//! over the transport and is compiled where it is instantiated: in the node's crate, which the
//! dev profile hardly optimizes, Noise zeroed each frame of its send buffer a byte at a time
//! (8% of a 4-node, 200 MB-model bench's CPU). This crate is built optimized.

use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::Boxed;
use libp2p::core::upgrade::Version;
use libp2p::identity::Keypair;
use libp2p::{PeerId, Transport, noise, tcp, yamux};

/// TCP (Nagle off: a small request waits for no acknowledgement), authenticated by Noise with
/// `key`, multiplexed by yamux, as libp2p's swarm builder assembles it for `with_tcp`.
pub fn tcp_noise_yamux(key: &Keypair) -> Result<Boxed<(PeerId, StreamMuxerBox)>, noise::Error> {
    let noise = noise::Config::new(key)?;
    let transport = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
        .upgrade(Version::V1Lazy)
        .authenticate(noise)
        .multiplex(yamux::Config::default())
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
        .boxed();
    Ok(transport)
}
