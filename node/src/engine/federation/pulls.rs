//! Pulls of a job's member list between members (the machine's push-pull anti-entropy, so that
//! members' views agree before they plan): a digest sent to one member, and the members it
//! knows where the two differ sent back, each as a small request from the peer the connection
//! authenticates.

use crate::engine::Engine;
use crate::engine::requests::ask;
use crate::identity::peer_of_member;
use fedmesh_federation::member::{Digest, Event};
use fedmesh_protocol::ids::{JobId, MemberId};
use fedmesh_protocol::message::{Request, Response};
use libp2p::PeerId;

/// Most members a pull's answer may list (the machine lists at most 2,048).
const MAX_LISTED: usize = 4_096;

impl Engine {
    /// Sends a request to one member in the background; its answer is only `Accepted`.
    fn send_to(&self, id: JobId, to: MemberId, request: Request) {
        let network = self.network.clone();
        tokio::spawn(async move {
            let Ok(peer) = peer_of_member(&to) else { return };
            if let Err(error) = ask(&network, peer, &request).await {
                tracing::debug!(job = %id, %to, %error, "member list request not delivered");
            }
        });
    }

    /// Sends the digest of this member's membership to `to`.
    pub(super) fn ask_members(&self, id: JobId, to: MemberId, digest: Digest) {
        self.send_to(id, to, Request::Members { job: id, digest: digest.0 });
    }

    /// Sends the members `to` asked for with its digest.
    pub(super) fn send_members(&self, id: JobId, to: MemberId, members: Vec<MemberId>) {
        self.send_to(id, to, Request::MemberList { job: id, members });
    }

    /// A member pulls this member's list of a job's members.
    pub(in crate::engine) async fn on_members_request(
        &mut self,
        peer: PeerId,
        id: JobId,
        digest: Digest,
    ) -> Response {
        let from = match self.pull_sender(peer, &id) {
            Ok(from) => from,
            Err(reason) => return Response::Refused { reason },
        };
        self.handle(id, Event::MembersAsked { from, digest }).await;
        Response::Accepted
    }

    /// The answer to this member's pull.
    pub(in crate::engine) async fn on_member_list(
        &mut self,
        peer: PeerId,
        id: JobId,
        members: Vec<MemberId>,
    ) -> Response {
        let from = match self.pull_sender(peer, &id) {
            Ok(from) => from,
            Err(reason) => return Response::Refused { reason },
        };
        if members.len() > MAX_LISTED {
            self.metrics.rejected("member_list", "too_long");
            let reason = format!("{} members listed, at most {MAX_LISTED}", members.len());
            return Response::Refused { reason };
        }
        self.handle(id, Event::MembersSent { from, members }).await;
        Response::Accepted
    }

    /// The member a pull's request came from, if this node is in its job; why not otherwise.
    fn pull_sender(&self, peer: PeerId, id: &JobId) -> Result<MemberId, String> {
        if !self.runs.contains_key(id) {
            return Err(format!("not in job {id}"));
        }
        MemberId::from_peer_id_string(&peer.to_string()).map_err(|e| format!("peer {peer}: {e}"))
    }
}
