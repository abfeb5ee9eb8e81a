//! Peer-to-peer requests: answering peers (blobs by hash, our job list) and asking a newly
//! connected peer for its jobs, so a node that was offline at an announcement still learns it.

use super::federation::Unverified;
use super::{Engine, Internal};
use crate::network::{Frame, Held, Network, NetworkEvent};
use fedmesh_federation::member::Digest;
use fedmesh_protocol::codec::Payload;
use fedmesh_protocol::codec::{
    decode_request, decode_response, encode_request, encode_response_header,
};
use fedmesh_protocol::ids::{ContentHash, MemberId};
use fedmesh_protocol::message::{MAX_JOB_IDS, Request, Response};
use fedmesh_protocol::tensor::{SharedPayload, f32_payload, no_payload};
use libp2p::PeerId;
use libp2p::request_response::ResponseChannel;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long after asking a peer for its jobs a new connection to it asks again. Known jobs are
/// published again every few minutes too; asking at every connection made a 200-node testnet,
/// whose nodes reconnect often under their connection bound, send a request per connection.
const JOBS_ASK_AGAIN: Duration = Duration::from_secs(10 * 60);
/// How many peers asked are remembered; past that, those asked longer ago are forgotten, and
/// while every one remembered is recent no new peer is asked (it learns jobs from the others).
const JOBS_ASKED_KEPT: usize = 1024;

/// The peers asked for their jobs lately, with when.
#[derive(Default)]
pub(super) struct JobsAsked(HashMap<PeerId, Instant>);

impl JobsAsked {
    /// Whether to ask `peer` now; if so, notes that it was.
    fn ask_now(&mut self, peer: PeerId, now: Instant) -> bool {
        let recent = |at: &Instant| now.duration_since(*at) < JOBS_ASK_AGAIN;
        if self.0.get(&peer).is_some_and(recent) {
            return false;
        }
        if self.0.len() >= JOBS_ASKED_KEPT {
            self.0.retain(|_, at| recent(at));
            if self.0.len() >= JOBS_ASKED_KEPT {
                return false;
            }
        }
        self.0.insert(peer, now);
        true
    }
}

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
            NetworkEvent::Subscribed { peer, topic } => self.on_peer_subscribed(peer, &topic).await,
            NetworkEvent::Reachability { behind_nat } => self.on_reachability(!behind_nat).await,
            NetworkEvent::PeerDisconnected(_) => {}
        }
    }

    /// Answers a request. A received frame keeps its share of the bulk budget until it is
    /// answered; a blob served takes one until it is written, or is answered `Busy` when that
    /// would exceed the budget (the asker then tries another peer that holds it).
    async fn on_request(&mut self, peer: PeerId, data: Frame, channel: ResponseChannel<Frame>) {
        let streamed = data.streamed_hash();
        let (data, held) = data.into_received();
        let none = || (Vec::new(), None);
        let decoded = decode_request(data).map(|(r, p)| (r, p.with_streamed(streamed)));
        let (response, (payload, held)) = match decoded {
            Err(error) => {
                tracing::warn!(%peer, %error, "refused a malformed request");
                self.metrics.rejected("request", "malformed");
                (Response::Refused { reason: error.to_string() }, none())
            }
            Ok((Request::Jobs, _)) => (Response::Jobs { ids: self.jobs.ids(MAX_JOB_IDS) }, none()),
            Ok((Request::Announcement { job }, _)) => match self.jobs.announcement(&job) {
                Some(announcement) => (Response::Announcement(announcement.clone()), none()),
                None => (Response::NotFound { hash: job.0 }, none()),
            },
            Ok((Request::Blob { hash }, _)) => match self.job_keeping(&hash) {
                Some(job) => return self.on_contribution_request(job, peer, hash, channel).await,
                None => return self.serve_blob(peer, hash, channel).await,
            },
            Ok((Request::RoundResult { job, round }, _)) => {
                let Ok(from) = MemberId::from_peer_id_string(&peer.to_string()) else { return };
                return self.on_result_request(job, round, from, channel).await;
            }
            Ok((Request::Join { join, asks, heartbeat }, _)) => {
                (self.on_join_request(join, asks, heartbeat).await, none())
            }
            Ok((Request::Members { job, digest }, _)) => {
                (self.on_members_request(peer, job, Digest(digest)).await, none())
            }
            Ok((Request::MemberList { job, members }, _)) => {
                (self.on_member_list(peer, job, members).await, none())
            }
            Ok((Request::Delta(delta), payload)) => {
                return self.receive(Unverified::Delta(delta), payload, (channel, held));
            }
            Ok((Request::Partial(partial), payload)) => {
                return self.receive(Unverified::Partial(partial), payload, (channel, held));
            }
            Ok((Request::RingChunk(chunk), payload)) => {
                return self.receive(Unverified::Chunk(chunk), payload, (channel, held));
            }
            Ok((Request::Secure(message), _)) => {
                return self.on_secure_request(message, (channel, held)).await;
            }
        };
        respond(&self.network, channel, response, payload, held).await;
    }

    /// Counts an update's payload bytes for its job, whatever is made of the update, and has it
    /// verified for its job's machine.
    fn receive(&self, update: Unverified, payload: Payload, reply: super::federation::Reply) {
        self.metrics.job_received(&update.job().to_string(), payload.len());
        self.receive_update(update, payload, reply);
    }

    /// Answers with a stored blob, which holds a budget share while it is sent, or `Busy` when
    /// it does not fit the budget now, or `NotFound`; or `Refused` when the blob is a model of
    /// an allow-listed job the asker is outside of. A blob another response is still sending
    /// goes from that copy, under its share (up to a few responses at once; see
    /// [`serving`](super::serving)). Otherwise the share is taken before the blob is
    /// read (for the largest model of this node's jobs, which is what peers ask for), so a busy
    /// node reads nothing; the blob is read and sent off the engine's task.
    async fn serve_blob(&self, peer: PeerId, hash: ContentHash, channel: ResponseChannel<Frame>) {
        let asker = MemberId::from_peer_id_string(&peer.to_string());
        if !asker.is_ok_and(|asker| self.may_pull_model(&asker, &hash)) {
            tracing::info!(%peer, %hash, "refused a model to a peer outside its job");
            self.metrics.rejected("blob", "not_a_member");
            let reason = format!("model {hash} belongs to a job {peer} is not a member of");
            let refused = Response::Refused { reason };
            return respond(&self.network, channel, refused, Vec::new(), None).await;
        }
        if let Some((bytes, held)) = self.blobs_in_flight.get(&hash) {
            let blob = Response::Blob { hash };
            return respond_shared(&self.network, channel, blob, bytes, Some(held)).await;
        }
        let Some(held) = self.network.try_reserve(self.largest_model_bytes()) else {
            self.metrics.rejected("blob", "busy");
            let busy = Response::Busy { hash };
            return respond(&self.network, channel, busy, Vec::new(), None).await;
        };
        if let Some(params) = self.models_in_memory.get(&hash) {
            // A model this node made, still in memory: not read back from the disk.
            let bytes = f32_payload(params);
            self.blobs_in_flight.insert(hash, &bytes, &held);
            let blob = Response::Blob { hash };
            return respond_shared(&self.network, channel, blob, bytes, Some(held)).await;
        }
        let (network, store) = (self.network.clone(), self.store.clone());
        let in_flight = self.blobs_in_flight.clone();
        tokio::spawn(async move {
            let read = tokio::task::spawn_blocking(move || store.blob(&hash)).await;
            let (response, payload, held) = match read {
                Ok(Ok(Some(bytes))) => {
                    let bytes: SharedPayload = Arc::new(bytes);
                    in_flight.insert(hash, &bytes, &held);
                    (Response::Blob { hash }, bytes, Some(held))
                }
                Ok(Ok(None)) => (Response::NotFound { hash }, no_payload(), None),
                Ok(Err(error)) => {
                    tracing::error!(%error, "cannot read blob");
                    (Response::NotFound { hash }, no_payload(), None)
                }
                Err(error) => {
                    tracing::error!(%error, "the blob read failed");
                    (Response::NotFound { hash }, no_payload(), None)
                }
            };
            respond_shared(&network, channel, response, payload, held).await;
        });
    }

    /// Asks `peer` for its job list in the background, then for each announcement this node lacks;
    /// they come back as `Internal::PeerJob` and are verified like gossip.
    fn ask_for_jobs(&mut self, peer: PeerId) {
        if !self.jobs_asked.ask_now(peer, Instant::now()) {
            return;
        }
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

/// Answers a request with `response` and its payload (which holds `held`, a budget share,
/// until it is written).
pub(super) async fn respond(
    network: &Network,
    channel: ResponseChannel<Frame>,
    response: Response,
    payload: Vec<u8>,
    held: Option<Held>,
) {
    respond_shared(network, channel, response, Arc::new(payload), held).await;
}

/// [`respond`] with a payload other responses may be sending too.
pub(super) async fn respond_shared(
    network: &Network,
    channel: ResponseChannel<Frame>,
    response: Response,
    payload: SharedPayload,
    held: Option<Held>,
) {
    match encode_response_header(&response, payload.bytes().len()) {
        Ok(head) => {
            let frame = Frame::new(head, payload);
            let frame = match held {
                Some(held) => frame.holding(held),
                None => frame,
            };
            let _ = network.respond(channel, frame).await;
        }
        Err(error) => tracing::error!(%error, "cannot encode a response"),
    }
}

/// Sends a request without payload and decodes the response.
pub(super) async fn ask(
    network: &Network,
    peer: PeerId,
    request: &Request,
) -> anyhow::Result<Response> {
    let bytes = encode_request(request, &[])?;
    let (frame, _) = network.request(peer, bytes.into()).await?.into_received();
    let (response, _) = decode_response(frame)?;
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_asked_for_its_jobs_again_only_after_a_while_and_the_peers_kept_are_bounded() {
        let (mut asked, start) = (JobsAsked::default(), Instant::now());
        let peer = PeerId::random();
        assert!(asked.ask_now(peer, start), "a peer not asked yet");
        assert!(!asked.ask_now(peer, start + Duration::from_secs(60)), "asked a minute ago");
        assert!(asked.ask_now(peer, start + JOBS_ASK_AGAIN), "asked long enough ago");
        let later = start + JOBS_ASK_AGAIN;
        for _ in 1..JOBS_ASKED_KEPT {
            assert!(asked.ask_now(PeerId::random(), later));
        }
        assert!(!asked.ask_now(PeerId::random(), later), "every peer kept was asked lately");
        let much_later = later + JOBS_ASK_AGAIN;
        assert!(asked.ask_now(PeerId::random(), much_later), "the old ones are forgotten");
        assert_eq!(asked.0.len(), 1);
    }
}
