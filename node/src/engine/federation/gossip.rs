//! A job's gossip as the node takes it in: each message on the job's topic is verified (its
//! signature and that it belongs to the job), then handed to the job's machine, which judges it;
//! what the machine refuses is not passed on.

use crate::engine::Engine;
use fedmesh_federation::member::Reason;
pub use fedmesh_federation::member::Refusal as Refused;
use fedmesh_federation::member::{Accusation, Event, Gossip};
use fedmesh_federation::membership::SignOfLife;
use fedmesh_protocol::envelope::{Denied, Scope, Scoped, Signed, SignedBody, Verified};
use fedmesh_protocol::ids::{JobId, MemberId};
use fedmesh_protocol::message::{AggregateReady, FraudProof, GossipMessage, ResultWithModel};
use fedmesh_protocol::tensor::CheckedBlob;
use std::sync::Arc;

impl Engine {
    /// Handles a gossip message on a job's topic: verifies it, then hands it to the job's
    /// machine (or to the coordination of a job this node coordinates).
    pub(in crate::engine) async fn on_job_gossip(
        &mut self,
        message: GossipMessage,
    ) -> Result<(), Refused> {
        let Some(id) = message.claimed_job() else {
            return Err(Refused::new(Reason::UnexpectedKind, "not a job message"));
        };
        if self.coordinated.contains_key(&id) {
            return self.on_coordinated_gossip(id, message).await;
        }
        let Some(run) = self.runs.get(&id) else {
            return Err(Refused::new(Reason::NotJoined, format!("not in job {id}")));
        };
        if let Some((kind, member, sent_at_ms)) = sign_of_life(&message)
            && let Some(replayed) = run.machine.replay_of(kind, &member, sent_at_ms)
        {
            return Err(replayed); // refused before its signature costs a verification
        }
        let coordinator = run.machine.spec().coordinator;
        let controller = coordinator.unwrap_or(run.machine.spec().owner);
        let scope = Scope::job(id);
        let (signer, message) = match message {
            GossipMessage::Join(m) => verified(m, &scope, Gossip::Join)?,
            GossipMessage::Leave(m) => verified(m, &scope, Gossip::Leave)?,
            GossipMessage::Heartbeat(m) => verified(m, &scope, Gossip::Heartbeat)?,
            GossipMessage::EvalReport(m) => verified(m, &scope, Gossip::Eval)?,
            GossipMessage::RoundOpen(m) => {
                let (signer, open) = verified(m, &scope, Arc::new)?;
                self.maybe_hijack(id, signer, &open).await;
                (signer, Gossip::Open(open))
            }
            GossipMessage::AggregateReady(m) => return self.on_result(id, m, None).await,
            GossipMessage::ResultWithModel(m) => {
                let ResultWithModel { result, model } = *m;
                return self.on_result(id, result, Some(model)).await;
            }
            GossipMessage::Assignment(m) => {
                let assignment = verify_from(m, coordinator, &scope)?.into_body();
                self.maybe_forge_assignment(id, &assignment).await;
                (controller, Gossip::Assign(Arc::new(assignment)))
            }
            GossipMessage::Stop(m) => {
                let stop = verify_from(m, Some(controller), &scope)?.into_body();
                (controller, Gossip::Stop(stop))
            }
            GossipMessage::FraudProof(m) => fraud_proof(*m, &scope)?,
            GossipMessage::Announce(_) => {
                return Err(Refused::new(Reason::UnexpectedKind, "not expected on a job topic"));
            }
        };
        match self.handle(id, Event::Gossip { signer, message }).await {
            Some(refused) => Err(refused),
            None => Ok(()),
        }
    }
}

impl Engine {
    /// Handles a round's result, with its model's bytes when it came with them: verified, its
    /// model checked against its hash, then handed to the job's machine; kept to serve if
    /// taken.
    async fn on_result(
        &mut self,
        id: JobId,
        signed: Signed<AggregateReady>,
        model: Option<Vec<u8>>,
    ) -> Result<(), Refused> {
        let (signer, ready) = verified(signed.clone(), &Scope::job(id), Arc::new)?;
        let came_with = model
            .map(|bytes| CheckedBlob::check(&ready.model, bytes))
            .transpose()
            .map_err(|e| {
                Refused::new(Reason::WrongModel, format!("the model sent with the result: {e}"))
            })?;
        let before = match (self.runs.get_mut(&id), came_with) {
            (Some(run), Some(came_with)) => Some(run.model_with_result.replace(came_with)),
            _ => None,
        };
        let refused =
            self.handle(id, Event::Gossip { signer, message: Gossip::Result(ready) }).await;
        let Some(run) = self.runs.get_mut(&id) else { return Ok(()) };
        match refused {
            Some(refused) => {
                if let Some(before) = before {
                    run.model_with_result = before; // a refused result's model is not kept
                }
                Err(refused)
            }
            None => {
                // Kept as its aggregator signed it, to serve a member that missed it.
                run.keep_taken(signed);
                Ok(())
            }
        }
    }
}

/// A join, heartbeat or leave: its kind, the member it claims to be from and when it claims it
/// was sent (unverified).
fn sign_of_life(message: &GossipMessage) -> Option<(SignOfLife, MemberId, u64)> {
    match message {
        GossipMessage::Join(m) => {
            let join = m.unverified_body();
            Some((SignOfLife::Join, join.member, join.sent_at_ms))
        }
        GossipMessage::Heartbeat(m) => {
            let beat = m.unverified_body();
            Some((SignOfLife::Heartbeat, beat.member, beat.sent_at_ms))
        }
        GossipMessage::Leave(m) => {
            let leave = m.unverified_body();
            Some((SignOfLife::Leave, leave.member, leave.sent_at_ms))
        }
        _ => None,
    }
}

/// Verifies a fraud proof: its accuser's signature (the accuser it names), then the accused
/// result's own, which names the liar; the machine recomputes before it believes it.
fn fraud_proof(message: Signed<FraudProof>, scope: &Scope) -> Result<(MemberId, Gossip), Refused> {
    let proof = verify(message, |signer, body| {
        scope.admits(body)?;
        Denied::unless_signer_is(signer, &body.accuser, "the proof's accuser")
    })?;
    let accuser = proof.signer();
    let proof = proof.into_body();
    let result =
        proof.verify_result().map_err(|e| Refused::new(Reason::BadMessage, e.to_string()))?;
    let liar = result.signer();
    let accusation =
        Accusation { liar, result: Arc::new(result.into_body()), recomputed: proof.recomputed };
    Ok((accuser, Gossip::FraudProof(Arc::new(accusation))))
}

/// Verifies a job message and wraps its body for the machine, with its signer.
fn verified<T: SignedBody + Scoped, G>(
    message: Signed<T>,
    scope: &Scope,
    wrap: impl FnOnce(T) -> G,
) -> Result<(MemberId, G), Refused> {
    let verified = verify(message, |_, body| scope.admits(body))?;
    Ok((verified.signer(), wrap(verified.into_body())))
}

/// Verifies a signed message with `may_send`, as a refusal on failure.
pub(in crate::engine) fn verify<T: SignedBody>(
    message: Signed<T>,
    may_send: impl FnOnce(&MemberId, &T) -> Result<(), Denied>,
) -> Result<Verified<T>, Refused> {
    message.verify(may_send).map_err(|e| Refused::new(Reason::BadMessage, e.to_string()))
}

/// Verifies a signed message that only `allowed` (the job's coordinator, or its owner) may
/// send: from anyone else it is refused as `not_the_coordinator`.
pub(in crate::engine) fn verify_from<T: SignedBody + Scoped>(
    message: Signed<T>,
    allowed: Option<MemberId>,
    scope: &Scope,
) -> Result<Verified<T>, Refused> {
    let Some(allowed) = allowed else {
        return Err(Refused::new(Reason::NotOrchestrated, "the job has no coordinator"));
    };
    let verified = verify(message, |_, body| scope.admits(body))?;
    if verified.signer() != allowed {
        let detail =
            format!("signed by {}, not by the job's coordinator {allowed}", verified.signer());
        return Err(Refused::new(Reason::NotTheCoordinator, detail));
    }
    Ok(verified)
}
