//! Carrying out a job machine's effects, in the order it gave them: publishing (signed, on the
//! job's topic), direct joins, answers to update requests, wake-ups, log lines and refusals here;
//! updates, results, training, fetching, storing, evaluating and persisting in their modules.

use super::job_topic;
use crate::engine::Engine;
use crate::engine::requests::{ask, respond};
use crate::identity::peer_of_member;
use crate::misbehaviour::Misbehaviour;
use fedmesh_federation::member::Reason;
use fedmesh_federation::member::{
    Effect, Event, Level, Notice, Publish, Refusal, Refusal as Refused,
};
use fedmesh_protocol::codec::encode_gossip;
use fedmesh_protocol::envelope::{Signed, SignedBody, Verified};
use fedmesh_protocol::ids::{ContentHash, JobId, MemberId};
use fedmesh_protocol::message::{
    AggregateReady, GossipMessage, Heartbeat, Join, Request, Response, ResultWithModel,
};

/// The largest model whose bytes travel with its round's result (8,192 float32 parameters):
/// with the result's other fields it stays within a gossip message.
const MODEL_WITH_RESULT_BYTES: usize = 32 * 1024;

impl Engine {
    /// Carries out a job machine's effects, in order.
    pub(super) async fn carry_out(&mut self, id: JobId, effects: Vec<Effect>) {
        for effect in effects {
            self.carry_out_one(id, effect).await;
        }
    }

    async fn carry_out_one(&mut self, id: JobId, effect: Effect) {
        match effect {
            Effect::Publish(publish) => self.publish(id, publish).await,
            Effect::SendJoin { to, join, asks, heartbeat } => {
                self.send_join(id, to, (join, heartbeat), asks)
            }
            Effect::AskMembers { to, digest } => self.ask_members(id, to, digest),
            Effect::SendMembers { to, members } => self.send_members(id, to, members),
            Effect::SendDelta { to, delta, until_ms } => self.send_delta(id, to, delta, until_ms),
            Effect::SendPartial { to, partial, until_ms } => {
                self.send_partial(id, to, partial, until_ms)
            }
            Effect::SendChunk { to, chunk, until_ms } => self.send_chunk(id, to, chunk, until_ms),
            Effect::SendSecure { to, message, until_ms } => {
                self.send_secure(id, to, message, until_ms)
            }
            Effect::Answer { request, outcome } => self.answer(id, request, outcome).await,
            Effect::ServeResult { request, result, .. } => {
                self.serve_result(id, request, result).await
            }
            Effect::AskResult { round, from } => self.ask_result(id, round, from),
            Effect::Train { round, base, params } => self.train(id, round, base, params),
            Effect::Fetch { round, model, from } => self.fetch(id, round, model, from),
            Effect::StoreModel { round, params, optimizer } => {
                self.store_model(id, round, params, optimizer)
            }
            Effect::FetchOptimizerState { round, state, from } => {
                self.fetch_optimizer_state(id, round, state, from)
            }
            Effect::Evaluate { round, model, params } => self.evaluate(id, round, model, params),
            Effect::Persist(snapshot) => self.persist(id, snapshot),
            Effect::WakeAt(at) => {
                if let Some(run) = self.runs.get_mut(&id) {
                    run.wake_at = run.wake_at.min(at);
                }
            }
            Effect::Audit { result, aggregator, from, .. } => {
                self.audit(id, result, aggregator, from)
            }
            Effect::KeepContributions { deltas, own, evidence, until_ms, .. } => {
                self.keep_contributions(id, &deltas, (own, evidence), until_ms)
            }
            Effect::ServeContribution { request, hash, outcome, .. } => {
                self.serve_contribution(id, request, hash, outcome).await
            }
            Effect::ProofRefuted { accuser, refusal } => self.proof_refuted(id, accuser, &refusal),
            Effect::Log(notice) => log(id, &notice),
            // Counted by the gossip handler, which `handle` tells of it.
            Effect::Rejected(_) => {}
        }
    }

    /// Signs a machine's message and publishes it on the job's topic (a node that withholds
    /// results on purpose publishes none of its own).
    async fn publish(&mut self, id: JobId, publish: Publish) {
        match publish {
            Publish::Join(join) => self.publish_signed(id, join, GossipMessage::Join).await,
            Publish::Leave(leave) => self.publish_signed(id, leave, GossipMessage::Leave).await,
            Publish::Heartbeat(beat) => {
                self.publish_signed(id, beat, GossipMessage::Heartbeat).await
            }
            Publish::Open(open) => self.publish_signed(id, open, GossipMessage::RoundOpen).await,
            Publish::Result(ready) if self.misbehaves(Misbehaviour::WithholdResults) => {
                tracing::warn!(job = %id, round = ready.round, "misbehaving on purpose: withholding the round's result");
            }
            Publish::Result(ready) => {
                tracing::info!(job = %id, round = ready.round, model = %ready.model, updates = ready.contributions.len(), "round closed");
                self.publish_result(id, ready).await
            }
            Publish::Eval(report) => {
                self.publish_signed(id, report, GossipMessage::EvalReport).await
            }
            Publish::FraudProof(accusation) => self.publish_fraud_proof(id, accusation).await,
        }
    }

    /// Signs `body` and publishes it on the job's topic.
    pub(in crate::engine) async fn publish_signed<T: SignedBody>(
        &self,
        id: JobId,
        body: T,
        wrap: fn(Signed<T>) -> GossipMessage,
    ) {
        let encoded = Signed::sign(&self.identity, body).map(wrap).and_then(|m| encode_gossip(&m));
        self.publish_encoded(id, encoded).await
    }

    /// Signs a round's result and publishes it, with its model's bytes when the model is small
    /// enough to travel with it (so members need not all fetch it from this node).
    async fn publish_result(&self, id: JobId, ready: AggregateReady) {
        let Some(model) = self.small_model(id, &ready.model) else {
            return self.publish_signed(id, ready, GossipMessage::AggregateReady).await;
        };
        let encoded = Signed::sign(&self.identity, ready).and_then(|result| {
            let with_model = ResultWithModel { result: result.clone(), model };
            // Too large with the model, it goes alone.
            encode_gossip(&GossipMessage::ResultWithModel(Box::new(with_model)))
                .or_else(|_| encode_gossip(&GossipMessage::AggregateReady(result)))
        });
        self.publish_encoded(id, encoded).await
    }

    /// A job's model's bytes from the store, if its parameters take at most
    /// [`MODEL_WITH_RESULT_BYTES`].
    fn small_model(&self, id: JobId, model: &ContentHash) -> Option<Vec<u8>> {
        let params = self.runs.get(&id)?.machine.params().len();
        if params.saturating_mul(4) > MODEL_WITH_RESULT_BYTES {
            return None;
        }
        self.store.blob(model).ok().flatten()
    }

    /// Publishes an encoded message on the job's topic.
    async fn publish_encoded<E: std::fmt::Display>(&self, id: JobId, encoded: Result<Vec<u8>, E>) {
        match encoded {
            Ok(bytes) => {
                if let Err(error) = self.network.publish(&job_topic(&id), bytes).await {
                    tracing::debug!(job = %id, %error, "not published");
                }
            }
            Err(error) => tracing::error!(job = %id, %error, "cannot encode a message"),
        }
    }

    /// Sends this member's join to one member alone, in the background, again after a pause
    /// while it cannot be delivered (a few times).
    fn send_join(
        &self,
        id: JobId,
        to: MemberId,
        (join, heartbeat): (Join, Option<Heartbeat>),
        asks: bool,
    ) {
        let signed = Signed::sign(&self.identity, join).and_then(|join| {
            let heartbeat = heartbeat.map(|beat| Signed::sign(&self.identity, beat)).transpose()?;
            Ok((join, heartbeat))
        });
        let (join, heartbeat) = match signed {
            Ok(signed) => signed,
            Err(error) => return tracing::error!(job = %id, %error, "cannot sign a join"),
        };
        let network = self.network.clone();
        tokio::spawn(async move {
            let Ok(peer) = peer_of_member(&to) else { return };
            let request = Request::Join { join, asks, heartbeat };
            for attempt in 0..JOIN_ATTEMPTS {
                match ask(&network, peer, &request).await {
                    Ok(_) => return,
                    Err(error) => {
                        tracing::debug!(job = %id, %to, attempt, %error, "join not delivered")
                    }
                }
                tokio::time::sleep(JOIN_RETRY_PAUSE).await;
            }
        });
    }

    /// A member's join sent to this node alone (with its heartbeat, for an answer): for its
    /// job's machine, once both are verified as the same member's.
    pub(in crate::engine) async fn on_join_request(
        &mut self,
        signed: Signed<Join>,
        asks: bool,
        heartbeat: Option<Signed<Heartbeat>>,
    ) -> Response {
        let id = signed.unverified_body().job;
        if !self.runs.contains_key(&id) {
            return Response::Refused { reason: format!("not in job {id}") };
        }
        let (join, heartbeat) = match verify_join_sent(id, signed, heartbeat) {
            Ok(verified) => verified,
            Err(refused) => {
                self.metrics.rejected("join", refused.reason.label());
                return Response::Refused { reason: refused.detail };
            }
        };
        let signer = join.signer();
        let (join, heartbeat) = (join.into_body(), heartbeat.map(Verified::into_body));
        self.handle(id, Event::JoinSent { signer, join, asks, heartbeat }).await;
        Response::Accepted
    }

    /// Answers an update request with the machine's verdict.
    pub(super) async fn answer(&mut self, id: JobId, request: u64, outcome: Result<(), Refusal>) {
        let replies = self.runs.get_mut(&id).map(|run| &mut run.replies);
        let Some(((channel, held), kind)) = replies.and_then(|r| r.remove(&request)) else {
            return;
        };
        let job = id.to_string();
        let response = match outcome {
            Ok(()) => {
                self.metrics.update(&job, kind, None);
                Response::Accepted
            }
            Err(refusal) => {
                tracing::info!(job = %id, kind, reason = refusal.reason.label(), detail = %refusal.detail, "refused an update");
                self.metrics.rejected(kind, refusal.reason.label());
                self.metrics.update(&job, kind, Some(refusal.reason.label()));
                Response::Refused { reason: refusal.detail }
            }
        };
        drop(held);
        respond(&self.network, channel, response, Vec::new(), None).await;
    }

    /// Persists a machine's snapshot before its other effects are carried out.
    fn persist(&mut self, id: JobId, snapshot: fedmesh_federation::member::Snapshot) {
        let Some(run) = self.runs.get_mut(&id) else { return };
        let params = run.machine.params().len();
        if let Err(error) =
            super::store::save_snapshot(&self.store, &id, params, snapshot, &mut run.persisted)
        {
            tracing::error!(job = %id, %error, "cannot record the job's progress");
        }
    }
}

/// How often a direct join is tried, and the pause between tries.
const JOIN_ATTEMPTS: u32 = 3;
const JOIN_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(500);

/// Writes a machine's notice to the node's log.
fn log(id: JobId, notice: &Notice) {
    let Notice { level, round, text } = notice;
    match level {
        Level::Info => tracing::info!(job = %id, round, "{text}"),
        Level::Warn => tracing::warn!(job = %id, round, "{text}"),
    }
}

/// Verifies a join sent to one member, and the heartbeat beside it: both of job `id`, the
/// heartbeat signed by the member that joins.
fn verify_join_sent(
    id: JobId,
    join: Signed<Join>,
    heartbeat: Option<Signed<Heartbeat>>,
) -> Result<(Verified<Join>, Option<Verified<Heartbeat>>), Refused> {
    let scope = fedmesh_protocol::envelope::Scope::job(id);
    let join = super::verify(join, |_, body| scope.admits(body))?;
    let Some(heartbeat) = heartbeat else { return Ok((join, None)) };
    let heartbeat = super::verify(heartbeat, |_, body| scope.admits(body))?;
    if heartbeat.signer() != join.signer() {
        let detail =
            format!("a heartbeat signed by {} beside {}'s join", heartbeat.signer(), join.signer());
        return Err(Refused::new(Reason::WrongSigner, detail));
    }
    Ok((join, Some(heartbeat)))
}
