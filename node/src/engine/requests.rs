//! Peer-to-peer requests: answering peers (blobs by hash, our job list) and asking a newly
//! connected peer for its jobs, so a node that was offline at an announcement still learns it.

use super::{Engine, Internal};
use crate::network::{Network, NetworkEvent};
use fedmesh_protocol::codec::{decode_request, decode_response, encode_request, encode_response};
use fedmesh_protocol::message::{MAX_JOB_IDS, Request, Response};
use libp2p::PeerId;
use libp2p::request_response::ResponseChannel;

impl Engine {
    pub(super) async fn on_network_event(&mut self, event: NetworkEvent) {
        match event {
            NetworkEvent::Gossip { source, message_id, data, .. } => {
                let acceptance = self.on_gossip(&data).await;
                let _ = self.network.validate(message_id, source, acceptance).await;
            }
            NetworkEvent::Request { peer, data, channel } => {
                self.on_request(peer, data, channel).await
            }
            NetworkEvent::PeerConnected(peer) => self.ask_for_jobs(peer),
            NetworkEvent::Subscribed { topic, .. } => self.on_peer_subscribed(&topic),
            NetworkEvent::PeerDisconnected(_) => {}
        }
    }

    async fn on_request(&mut self, peer: PeerId, data: Vec<u8>, channel: ResponseChannel<Vec<u8>>) {
        let (response, payload) = match decode_request(data) {
            Err(error) => {
                tracing::warn!(%peer, %error, "refused a malformed request");
                self.metrics.rejected("request", "malformed");
                (Response::Refused { reason: error.to_string() }, Vec::new())
            }
            Ok((Request::Jobs, _)) => {
                (Response::Jobs { ids: self.jobs.ids(MAX_JOB_IDS) }, Vec::new())
            }
            Ok((Request::Announcement { job }, _)) => match self.jobs.announcement(&job) {
                Some(announcement) => (Response::Announcement(announcement.clone()), Vec::new()),
                None => (Response::NotFound { hash: job.0 }, Vec::new()),
            },
            Ok((Request::Blob { hash }, _)) => match self.store.blob(&hash) {
                Ok(Some(bytes)) => (Response::Blob { hash }, bytes),
                Ok(None) => (Response::NotFound { hash }, Vec::new()),
                Err(error) => {
                    tracing::error!(%error, "cannot read blob");
                    (Response::NotFound { hash }, Vec::new())
                }
            },
            Ok((Request::Delta(delta), payload)) => {
                (self.on_delta_request(delta, &payload).await, Vec::new())
            }
            Ok((Request::Partial(partial), payload)) => {
                (self.on_partial_request(partial, &payload).await, Vec::new())
            }
            Ok((Request::RingChunk(chunk), payload)) => {
                (self.on_ring_chunk(chunk, &payload).await, Vec::new())
            }
        };
        match encode_response(&response, &payload) {
            Ok(bytes) => {
                let _ = self.network.respond(channel, bytes).await;
            }
            Err(error) => tracing::error!(%error, "cannot encode a response"),
        }
    }

    /// Asks `peer` for its job list in the background, then for each announcement this node lacks;
    /// they come back as `Internal::PeerJob` and are verified like gossip.
    fn ask_for_jobs(&self, peer: PeerId) {
        let network = self.network.clone();
        let internal = self.internal.clone();
        let known = self.jobs.ids(usize::MAX);
        tokio::spawn(async move {
            let ids = match ask(&network, peer, &Request::Jobs).await {
                Ok(Response::Jobs { ids }) => ids,
                Ok(other) => {
                    return tracing::debug!(%peer, ?other, "peer did not send its job list");
                }
                Err(error) => return tracing::debug!(%peer, %error, "cannot ask peer for its jobs"),
            };
            for job in ids.into_iter().filter(|id| !known.contains(id)) {
                match ask(&network, peer, &Request::Announcement { job }).await {
                    Ok(Response::Announcement(announcement)) => {
                        let _ = internal.send(Internal::PeerJob(job, announcement)).await;
                    }
                    Ok(other) => {
                        tracing::debug!(%peer, %job, ?other, "peer did not send the announcement")
                    }
                    Err(error) => tracing::debug!(%peer, %job, %error, "cannot fetch announcement"),
                }
            }
        });
    }
}

/// Sends a request without payload and decodes the response.
async fn ask(network: &Network, peer: PeerId, request: &Request) -> anyhow::Result<Response> {
    let bytes = encode_request(request, &[])?;
    let (response, _) = decode_response(network.request(peer, bytes).await?)?;
    Ok(response)
}
