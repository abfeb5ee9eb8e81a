//! Results a member missed: its machine asks a few members for a round's signed result, which
//! comes back verified as gossip would; and every member serves the result it holds (its own
//! announcement, signed anew, or the one it took, as its aggregator signed it).

use crate::engine::requests::{ask, respond};
use crate::engine::{Engine, Internal};
use crate::identity::peer_of_member;
use fedmesh_federation::member::{Event, Gossip, Served};
use fedmesh_protocol::envelope::{Scope, Signed};
use fedmesh_protocol::ids::{JobId, MemberId, Round};
use fedmesh_protocol::message::{Request, Response};
use std::sync::Arc;

impl Engine {
    /// Asks `from`, in order, for the signed result of `round` until one sends it; the result
    /// is verified and handed to the machine as gossip.
    pub(super) fn ask_result(&self, id: JobId, round: Round, from: Vec<MemberId>) {
        let (network, internal) = (self.network.clone(), self.internal.clone());
        tokio::spawn(async move {
            for member in from {
                let Ok(peer) = peer_of_member(&member) else { continue };
                let asked = ask(&network, peer, &Request::RoundResult { job: id, round }).await;
                let Ok(Response::RoundResult(signed)) = asked else { continue };
                let scope = Scope::job(id);
                let Ok(verified) = signed.clone().verify(|_, body| scope.admits(body)) else {
                    tracing::warn!(job = %id, round, %member, "a member served a result whose signature does not verify");
                    continue;
                };
                let (signer, ready) = (verified.signer(), verified.into_body());
                if ready.round != round {
                    continue;
                }
                let message = Gossip::Result(Arc::new(ready));
                let event = Event::Gossip { signer, message };
                let event = Box::new(event);
                let _ = internal.send(Internal::MissedResult { job: id, signed, event }).await;
                return;
            }
            tracing::info!(job = %id, round, "no member asked had the round's result");
        });
    }

    /// A member asks for the result of `round`: its job's machine serves it if it holds it.
    pub(in crate::engine) async fn on_result_request(
        &mut self,
        id: JobId,
        round: Round,
        from: MemberId,
        channel: libp2p::request_response::ResponseChannel<crate::network::Frame>,
    ) {
        let Some(run) = self.runs.get_mut(&id) else {
            let refused = Response::Refused { reason: format!("not in job {id}") };
            return respond(&self.network, channel, refused, Vec::new(), None).await;
        };
        let request = run.keep_reply((channel, None), "round_result");
        self.handle(id, Event::ResultAsked { from, round, request }).await;
        // Not served: the machine holds no result of the round.
        let Some(run) = self.runs.get_mut(&id) else { return };
        if let Some(((channel, _), _)) = run.replies.remove(&request) {
            let missing = format!("no result of round {round} of job {id} here");
            respond(
                &self.network,
                channel,
                Response::Refused { reason: missing },
                Vec::new(),
                None,
            )
            .await;
        }
    }

    /// Answers a member that asked for a round's result with the signed one this member holds.
    pub(super) async fn serve_result(&mut self, id: JobId, request: u64, result: Served) {
        let Some(run) = self.runs.get_mut(&id) else { return };
        let Some(((channel, _), _)) = run.replies.remove(&request) else { return };
        let signed = match result {
            Served::Own(ready) => Signed::sign(&self.identity, ready).map_err(|e| e.to_string()),
            Served::Taken { ready, .. } => run
                .taken
                .iter()
                .find(|kept| *kept.unverified_body() == ready)
                .cloned()
                .ok_or_else(|| "the result taken is no longer kept as it was signed".to_owned()),
        };
        let response = match signed {
            Ok(signed) => Response::RoundResult(Box::new(signed)),
            Err(reason) => Response::Refused { reason },
        };
        respond(&self.network, channel, response, Vec::new(), None).await;
    }

    /// A result asked for after this member missed it, verified: handed to the machine, and
    /// kept to pass on if the machine accepts it.
    pub(in crate::engine) async fn on_missed_result(
        &mut self,
        id: JobId,
        signed: Signed<fedmesh_protocol::message::AggregateReady>,
        event: Event,
    ) {
        let round = signed.unverified_body().round;
        match self.handle(id, event).await {
            Some(refusal) => {
                tracing::debug!(job = %id, round, reason = refusal.reason.label(), detail = %refusal.detail, "a missed result a member served was not taken")
            }
            None => {
                if let Some(run) = self.runs.get_mut(&id) {
                    run.keep_taken(signed);
                }
            }
        }
    }
}
