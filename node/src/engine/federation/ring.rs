//! A trainer's part in a ring all-reduce as the node carries it out (the ring's rules are in
//! `fedmesh_federation::ring`): each step's chunk signed and sent to the next member, received
//! chunks verified before the ring folds them, and the ring's result stored and announced or
//! sent up.

use super::collect::{Refused, refuse, verify_member};
use super::misbehave::WITHHOLD_RESULTS;
use super::{encode_model, send_partial, store};
use crate::engine::Engine;
use crate::engine::federation::train::send_request;
use fedmesh_federation::ring::{Outgoing, RingResult, RingRun, ring_mean};
use fedmesh_protocol::envelope::Signed;
use fedmesh_protocol::ids::{ContentHash, JobId, Round};
use fedmesh_protocol::message::{
    AggregateReady, Contribution, EvalMetrics, GossipMessage, Request, Response, RingChunk,
    unix_millis,
};
use fedmesh_protocol::tensor::{PayloadRef, TensorEncoding, decode_params};
use fedmesh_topologies::RoundPlan;
use fedmesh_topologies::ring::chunk_range;

/// Most ring chunks kept for an opening this node has not seen yet.
const MAX_EARLY_CHUNKS: usize = 64;

impl Engine {
    /// Joins the ring of the round just opened, if the plan puts this member in one, and takes
    /// the chunks that arrived before the opening.
    pub(super) async fn form_ring(&mut self, id: JobId, plan: &RoundPlan) {
        let me = self.identity.member_id();
        let Some(run) = self.runs.get_mut(&id) else { return };
        let Some(open) = run.open.clone() else { return };
        let opening = (open.round, open.base, open.opened_at_ms);
        run.ring = RingRun::for_member(plan, opening, me, run.params.len());
        let early = std::mem::take(&mut run.early_chunks);
        for (chunk, payload) in early {
            Box::pin(self.on_ring_chunk(chunk, &payload)).await;
        }
    }

    /// Puts this member's trained update into its ring.
    pub(super) async fn contribute_to_ring(&mut self, id: JobId, delta: &[f32], own: Contribution) {
        let Some(ring) = self.runs.get_mut(&id).and_then(|run| run.ring.as_mut()) else { return };
        let weight = own.samples as f32;
        let outgoing = ring.contribute(delta.iter().map(|d| d * weight).collect(), own);
        self.send_ring_chunks(id, outgoing);
        self.maybe_finish_ring(id).await;
    }

    /// A chunk from the previous member of a ring.
    pub(in crate::engine) async fn on_ring_chunk(
        &mut self,
        chunk: Signed<RingChunk>,
        payload: &[u8],
    ) -> Response {
        let id = chunk.unverified_body().job;
        match self.accept_ring_chunk(id, chunk, payload).await {
            Ok(()) => {
                self.metrics.update(&id.to_string(), None);
                Response::Accepted
            }
            Err(refused) => {
                tracing::warn!(job = %id, reason = refused.reason, detail = %refused.detail, "refused a ring chunk");
                self.metrics.rejected("ring_chunk", refused.reason);
                self.metrics.update(&id.to_string(), Some(refused.reason));
                Response::Refused { reason: refused.detail }
            }
        }
    }

    async fn accept_ring_chunk(
        &mut self,
        id: JobId,
        chunk: Signed<RingChunk>,
        payload: &[u8],
    ) -> Result<(), Refused> {
        let run = self
            .runs
            .get_mut(&id)
            .ok_or_else(|| refuse("not_joined", format!("this node is not in job {id}")))?;
        let verified = verify_member(chunk.clone(), payload, &run.state.members)?;
        let (signer, body) = (verified.signer(), verified.body());
        let current = run.ring.as_ref().map(|ring| (ring.round, ring.opened_at_ms));
        let chunk_opening = (body.round, body.opened_at_ms);
        if current != Some(chunk_opening) {
            let newer = body.round > run.state.completed_round
                && current.is_none_or(|current| chunk_opening > current);
            if !newer {
                return Err(refuse("stale_opening", "the chunk is for an earlier ring"));
            }
            // Its sender saw the round's opening before this node did: kept until it arrives.
            if run.early_chunks.len() >= MAX_EARLY_CHUNKS {
                run.early_chunks.remove(0);
            }
            run.early_chunks.push((chunk, payload.to_vec()));
            return Ok(());
        }
        let Some(ring) = run.ring.as_mut() else { return Ok(()) };
        if body.base_model != ring.base {
            return Err(refuse("wrong_base", "the chunk builds on another model"));
        }
        let expected = chunk_range(ring.num_params, ring.chunks(), body.chunk as usize).len();
        if body.values.params != expected as u64 {
            return Err(refuse("wrong_layout", format!("the chunk should have {expected} values")));
        }
        let values = decode_params(payload, body.values.encoding, expected)
            .map_err(|e| refuse("malformed_payload", e.to_string()))?;
        let outgoing = ring.receive(
            signer,
            body.step as usize,
            body.chunk as usize,
            values,
            body.contributions.clone(),
        )?;
        self.send_ring_chunks(id, outgoing);
        self.maybe_finish_ring(id).await;
        Ok(())
    }

    /// Signs each chunk and sends it to the next member in the background.
    fn send_ring_chunks(&self, id: JobId, outgoing: Vec<Outgoing>) {
        let Some(ring) = self.runs.get(&id).and_then(|run| run.ring.as_ref()) else { return };
        for out in outgoing {
            let payload = match encode_model(&out.values) {
                Ok(payload) => payload,
                Err(error) => return tracing::error!(job = %id, %error, "cannot encode a chunk"),
            };
            let body = RingChunk {
                job: id,
                round: ring.round,
                base_model: ring.base,
                opened_at_ms: ring.opened_at_ms,
                member: self.identity.member_id(),
                step: out.step as u32,
                chunk: out.chunk as u32,
                contributions: out.contributions,
                values: PayloadRef::describe(&payload, TensorEncoding::F32Le, out.values.len()),
            };
            match Signed::sign(&self.identity, body) {
                Ok(signed) => {
                    let payload = std::sync::Arc::new(payload);
                    let retry = (id, self.round_deadline(id));
                    send_request(&self.network, out.to, Request::RingChunk(signed), payload, retry)
                }
                Err(error) => tracing::error!(job = %id, %error, "cannot sign a chunk"),
            }
        }
    }

    /// Once the ring is done: the round's model (stored; the leader announces it) or the
    /// ring's partial aggregate sent up by its uploader.
    async fn maybe_finish_ring(&mut self, id: JobId) {
        let Some(run) = self.runs.get_mut(&id) else { return };
        let Some(ring) = run.ring.as_ref() else { return };
        let (sum, contributions) = match ring.finished() {
            None => return,
            Some(Ok(done)) => done,
            Some(Err(refused)) => {
                tracing::error!(job = %id, round = ring.round, detail = %refused.detail, "ring all-reduce failed; the round will be opened again");
                run.ring = None;
                return;
            }
        };
        let (mean, weight) = ring_mean(sum, &contributions);
        let (round, base, opened_at_ms, label, result) =
            (ring.round, ring.base, ring.opened_at_ms, ring.label.clone(), ring.result);
        run.ring = None;
        tracing::info!(job = %id, round, members = contributions.len(), "ring all-reduce done");
        match result {
            RingResult::Model { leader } => {
                let base_params = run.params.clone();
                self.store_round_model(id, (round, base), leader, move || {
                    let params = base_params.iter().zip(&mean).map(|(p, d)| p + d).collect();
                    Ok((params, contributions))
                });
            }
            RingResult::Up { uploader: true, to } => {
                let part = (round, base, opened_at_ms, label);
                send_partial(self, id, part, to, &mean, weight, contributions).await;
            }
            RingResult::Up { uploader: false, .. } => {}
        }
    }

    /// Publishes a round's model as its leader and takes it as a member.
    pub(super) async fn announce_model(
        &mut self,
        id: JobId,
        round: Round,
        base_model: ContentHash,
        model: ContentHash,
        contributions: Vec<Contribution>,
    ) {
        let mut members = Vec::new();
        if let Some(run) = self.runs.get_mut(&id) {
            members = run.planned_members(round);
            run.leading = None;
            run.slots.clear();
        }
        let ready = AggregateReady {
            job: id,
            round,
            base_model,
            model,
            contributions,
            metrics: EvalMetrics::default(),
            members,
            sent_at_ms: unix_millis(),
        };
        tracing::info!(job = %id, round, model = %model, updates = ready.contributions.len(), "round closed");
        // Kept before it goes out: killed after announcing, this node still knows the result
        // (it takes it at restart) and can announce it again to members that missed it.
        if let Some(run) = self.runs.get_mut(&id) {
            run.announced = Some(ready.clone());
            run.announced_ms = ready.sent_at_ms;
            if let Err(error) = store::save_announced(&self.store, run) {
                return tracing::error!(job = %id, round, %error, "cannot record the round's result");
            }
        }
        if self.misbehaves(WITHHOLD_RESULTS) {
            tracing::warn!(job = %id, round, "misbehaving on purpose: withholding the round's result");
        } else {
            self.publish_signed(id, ready.clone(), GossipMessage::AggregateReady).await;
        }
        // Boxed: taking the model may open the next round, which may finish a ring again.
        Box::pin(self.on_aggregate_ready(id, self.identity.member_id(), ready)).await;
    }
}
