//! A trainer's part in a ring all-reduce: its update (weighted by its samples) cut into chunks,
//! each step's chunk signed and sent to the next member, received chunks checked and folded in
//! schedule order, and the ring's result: the round's model (a pure ring, every member computes
//! the same one) or a partial aggregate its uploader sends up (hybrid).

use super::collect::{Refused, refuse, verify_member};
use super::misbehave::WITHHOLD_RESULTS;
use super::{OpenRound, encode_model, send_partial, store};
use crate::engine::Engine;
use crate::engine::federation::train::send_request;
use fedmesh_protocol::envelope::Signed;
use fedmesh_protocol::ids::{ContentHash, JobId, MemberId, Round};
use fedmesh_protocol::message::{
    AggregateReady, Contribution, EvalMetrics, GossipMessage, Request, Response, RingChunk,
    unix_millis,
};
use fedmesh_protocol::tensor::{PayloadRef, TensorEncoding, decode_params};
use fedmesh_topologies::ring::{Phase, RingStep, chunk_range};
use fedmesh_topologies::{Destination, RoundPlan};
use std::collections::BTreeMap;

/// Most ring chunks kept for an opening this node has not seen yet.
const MAX_EARLY_CHUNKS: usize = 64;

/// Where a ring's result goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingResult {
    /// A pure ring: the sum is the round's update; the leader announces the model.
    Model { leader: bool },
    /// A ring under an aggregation slot: its uploader sends the sum to the slot's aggregator.
    Up { uploader: bool, to: MemberId },
}

/// A finished ring's weighted sum and the contributions it includes.
pub type RingSum<'a> = (&'a [f32], Vec<Contribution>);

/// A chunk to send at one step.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub step: usize,
    pub chunk: usize,
    pub to: MemberId,
    pub values: Vec<f32>,
    pub contributions: Vec<Contribution>,
}

/// This member's all-reduce in one opening of a round.
#[derive(Debug)]
pub struct RingRun {
    pub round: Round,
    pub base: ContentHash,
    pub opened_at_ms: u64,
    pub label: String,
    pub order: Vec<MemberId>,
    pub result: RingResult,
    steps: Vec<RingStep>,
    num_params: usize,
    /// This member's running vector, once it has trained.
    values: Option<Vec<f32>>,
    /// The contributions each chunk of `values` includes.
    contributions: Vec<Vec<Contribution>>,
    /// Chunks received ahead of the step they are for.
    received: BTreeMap<usize, (Vec<f32>, Vec<Contribution>)>,
    /// The next step whose received chunk is folded in.
    next: usize,
}

impl RingRun {
    /// The ring `me` is in, if `plan` sends its update to one.
    pub fn for_member(
        plan: &RoundPlan,
        open: &OpenRound,
        me: MemberId,
        num_params: usize,
    ) -> Option<Self> {
        let Some(Destination::Ring(index)) = plan.destination(&me) else { return None };
        let ring = &plan.rings[index];
        let result = match ring.parent {
            None => RingResult::Model { leader: plan.leader() == Some(me) },
            Some(slot) => RingResult::Up {
                uploader: ring.uploader() == me,
                to: plan.slots[slot].aggregator(),
            },
        };
        Some(Self {
            round: open.round,
            base: open.base,
            opened_at_ms: open.opened_at_ms,
            label: ring.label.clone(),
            order: ring.order.clone(),
            result,
            steps: ring.schedule_of(&me).unwrap_or_default(),
            num_params,
            values: None,
            contributions: vec![Vec::new(); ring.order.len()],
            received: BTreeMap::new(),
            next: 0,
        })
    }

    fn chunks(&self) -> usize {
        self.order.len()
    }

    fn outgoing(&self, step: usize) -> Option<Outgoing> {
        let values = self.values.as_ref()?;
        let planned = self.steps.get(step)?;
        let range = chunk_range(self.num_params, self.chunks(), planned.send_chunk);
        Some(Outgoing {
            step,
            chunk: planned.send_chunk,
            to: planned.to,
            values: values[range].to_vec(),
            contributions: self.contributions[planned.send_chunk].clone(),
        })
    }

    /// Takes this member's update (already weighted by its samples): the first chunk to send,
    /// then whatever chunks received earlier unlock.
    pub fn contribute(&mut self, weighted: Vec<f32>, own: Contribution) -> Vec<Outgoing> {
        if self.values.is_some() || weighted.len() != self.num_params {
            return Vec::new();
        }
        self.values = Some(weighted);
        self.contributions.iter_mut().for_each(|chunk| *chunk = vec![own]);
        let mut out: Vec<Outgoing> = self.outgoing(0).into_iter().collect();
        out.extend(self.advance());
        out
    }

    /// Checks a chunk from the ring's previous member and keeps it for its step; returns the
    /// chunks that folding it in lets this member send.
    pub fn receive(
        &mut self,
        from: MemberId,
        step: usize,
        chunk: usize,
        values: Vec<f32>,
        contributions: Vec<Contribution>,
    ) -> Result<Vec<Outgoing>, Refused> {
        let Some(planned) = self.steps.get(step) else {
            return Err(refuse("wrong_step", format!("the ring has no step {step}")));
        };
        if planned.from != from || planned.recv_chunk != chunk {
            return Err(refuse(
                "wrong_step",
                format!("step {step} expects chunk {} from {}", planned.recv_chunk, planned.from),
            ));
        }
        let expected = chunk_range(self.num_params, self.chunks(), chunk).len();
        if values.len() != expected {
            return Err(refuse(
                "wrong_layout",
                format!("chunk {chunk} has {} values, not {expected}", values.len()),
            ));
        }
        if let Some(outsider) = contributions.iter().find(|c| !self.order.contains(&c.member)) {
            return Err(refuse("not_selected", format!("{} is not in the ring", outsider.member)));
        }
        if step < self.next || self.received.contains_key(&step) {
            return Err(refuse("duplicate", format!("step {step} was received already")));
        }
        self.received.insert(step, (values, contributions));
        Ok(self.advance())
    }

    /// Folds in received chunks in schedule order while this member has its own update.
    fn advance(&mut self) -> Vec<Outgoing> {
        let mut out = Vec::new();
        while self.values.is_some() && self.next < self.steps.len() {
            let Some((incoming, contributions)) = self.received.remove(&self.next) else { break };
            let planned = self.steps[self.next];
            let range = chunk_range(self.num_params, self.chunks(), planned.recv_chunk);
            let Some(values) = self.values.as_mut() else { break };
            let target = &mut values[range];
            let own = &mut self.contributions[planned.recv_chunk];
            match planned.phase {
                Phase::ReduceScatter => {
                    target.iter_mut().zip(&incoming).for_each(|(t, v)| *t += v);
                    let new: Vec<Contribution> =
                        contributions.into_iter().filter(|c| !own.contains(c)).collect();
                    own.extend(new);
                }
                Phase::AllGather => {
                    target.copy_from_slice(&incoming);
                    *own = contributions;
                }
            }
            self.next += 1;
            out.extend(self.outgoing(self.next));
        }
        out
    }

    /// The ring's sum and the contributions it includes, once every step is done and every
    /// chunk includes the same updates.
    pub fn finished(&self) -> Option<Result<RingSum<'_>, Refused>> {
        let values = self.values.as_ref()?;
        if self.next < self.steps.len() {
            return None;
        }
        let mut first = self.contributions[0].clone();
        first.sort_by_key(|c| c.member);
        let consistent = self.contributions.iter().all(|chunk| {
            let mut sorted = chunk.clone();
            sorted.sort_by_key(|c| c.member);
            sorted == first
        });
        if !consistent {
            return Some(Err(refuse(
                "inconsistent_ring",
                "the ring's chunks include different updates",
            )));
        }
        Some(Ok((values, first)))
    }
}

/// The mean of a ring's weighted sum.
fn ring_mean(sum: &[f32], contributions: &[Contribution]) -> (Vec<f32>, f64) {
    let weight: f64 = contributions.iter().map(|c| c.samples as f64).sum();
    let scale = (1.0 / weight) as f32;
    (sum.iter().map(|s| s * scale).collect(), weight)
}

impl Engine {
    /// Joins the ring of the round just opened, if the plan puts this member in one, and takes
    /// the chunks that arrived before the opening.
    pub(super) async fn form_ring(&mut self, id: JobId, plan: &RoundPlan) {
        let me = self.identity.member_id();
        let Some(run) = self.runs.get_mut(&id) else { return };
        let Some(open) = run.open.clone() else { return };
        run.ring = RingRun::for_member(plan, &open, me, run.params.len());
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
                let params: Vec<f32> = run.params.iter().zip(&mean).map(|(p, d)| p + d).collect();
                let model = match self.store_model(&params) {
                    Ok(model) => model,
                    Err(error) => {
                        return tracing::error!(job = %id, %error, "cannot store the model");
                    }
                };
                if leader {
                    self.announce_model(id, round, base, model, contributions).await;
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn member(i: u8) -> MemberId {
        MemberId([i; 32])
    }

    fn contribution(i: u8) -> Contribution {
        Contribution { member: member(i), delta: ContentHash::of(&[i]), samples: u64::from(i) }
    }

    fn rings(n: u8, params: usize) -> Vec<RingRun> {
        let order: Vec<MemberId> = (1..=n).map(member).collect();
        (0..n as usize)
            .map(|position| RingRun {
                round: 1,
                base: ContentHash::of(b"base"),
                opened_at_ms: 1,
                label: "*".into(),
                order: order.clone(),
                result: RingResult::Model { leader: position == 0 },
                steps: fedmesh_topologies::ring::schedule(&order, position),
                num_params: params,
                values: None,
                contributions: vec![Vec::new(); order.len()],
                received: BTreeMap::new(),
                next: 0,
            })
            .collect()
    }

    /// Delivers every queued chunk (latest first) until the ring is quiet; rings are indexed by
    /// their member's position.
    fn deliver(rings: &mut [RingRun], mut queue: Vec<(usize, Outgoing)>) {
        while let Some((from, out)) = queue.pop() {
            let to = rings[from].order.iter().position(|m| *m == out.to).unwrap();
            let sender = rings[from].order[from];
            let more = rings[to]
                .receive(sender, out.step, out.chunk, out.values, out.contributions)
                .unwrap();
            queue.extend(more.into_iter().map(|o| (to, o)));
        }
    }

    #[test]
    fn every_member_ends_with_the_same_weighted_sum_whatever_the_arrival_order() {
        for n in 1..=5u8 {
            let params = 11;
            let mut rings = rings(n, params);
            let updates: Vec<Vec<f32>> = (0..n)
                .map(|i| (0..params).map(|p| (i as f32 + 1.0) * p as f32).collect())
                .collect();
            let mut queue = Vec::new();
            // Members contribute in reverse order: chunks arrive before their receiver trained.
            for i in (0..n as usize).rev() {
                let out = rings[i].contribute(updates[i].clone(), contribution(i as u8 + 1));
                queue.extend(out.into_iter().map(|o| (i, o)));
                if i % 2 == 0 {
                    deliver(&mut rings, std::mem::take(&mut queue));
                }
            }
            deliver(&mut rings, queue);
            let expected: Vec<f32> =
                (0..params).map(|p| updates.iter().map(|u| u[p]).sum()).collect();
            for ring in &rings {
                let (sum, contributions) = ring.finished().unwrap().unwrap();
                assert_eq!(sum, &expected[..], "ring of {n}");
                assert_eq!(contributions.len(), n as usize);
            }
        }
    }

    #[test]
    fn chunks_from_the_wrong_member_or_step_are_refused() {
        let mut rings = rings(3, 9);
        let out = rings[0].contribute(vec![1.0; 9], contribution(1));
        let first = out[0].clone();
        let wrong_sender = rings[1].receive(
            member(3),
            first.step,
            first.chunk,
            first.values.clone(),
            first.contributions.clone(),
        );
        assert_eq!(wrong_sender.unwrap_err().reason, "wrong_step");
        let short = rings[1].receive(
            member(1),
            first.step,
            first.chunk,
            vec![1.0],
            first.contributions.clone(),
        );
        assert_eq!(short.unwrap_err().reason, "wrong_layout");
        assert!(
            rings[1]
                .receive(
                    member(1),
                    first.step,
                    first.chunk,
                    first.values.clone(),
                    first.contributions.clone()
                )
                .is_ok()
        );
        let again =
            rings[1].receive(member(1), first.step, first.chunk, first.values, first.contributions);
        assert_eq!(again.unwrap_err().reason, "duplicate");
    }
}
