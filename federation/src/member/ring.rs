//! A member's ring all-reduce within the round it follows: its update into the ring, chunks
//! from the ring's previous member (kept when their opening is newer than the one followed),
//! and the ring's result: the round's model, or the partial aggregate its uploader sends up.

use super::Reason;
use super::phase::{Closing, Own, Phase};
use super::{ChunkToSend, DeltaToSend, EarlyUpdate, Effect, Level, Member};
use super::{PartialToSend, Refusal, Update, UpdateValues};
use crate::ring::{Outgoing, RingResult, ring_mean};
use fedmesh_protocol::ids::MemberId;
use fedmesh_protocol::message::{Contribution, RingChunk};
use fedmesh_protocol::tensor::hash_f32;
use std::sync::Arc;

impl Member {
    /// Puts this member's trained update, weighted by its samples, into its ring.
    pub(super) fn contribute_to_ring(&mut self, update: DeltaToSend, now: u64) {
        let me = self.me();
        let Some(ring) = self.phase.open_mut().and_then(|open| open.ring.as_mut()) else {
            return self.log(Level::Warn, update.round, "no ring to contribute to");
        };
        let own =
            Contribution { member: me, delta: hash_f32(&update.values), samples: update.samples };
        let weight = update.samples as f32;
        let outgoing = ring.contribute(update.values.iter().map(|d| d * weight).collect(), own);
        self.set_own(Own::Sent);
        self.send_chunks(outgoing);
        self.maybe_finish_ring(now);
    }

    /// A chunk from the ring's previous member.
    pub(super) fn on_chunk(
        &mut self,
        signer: MemberId,
        chunk: RingChunk,
        values: Arc<Vec<f32>>,
        now: u64,
    ) -> Result<(), Refusal> {
        let completed = self.state.completed_round;
        let ring = self.phase.open_mut().and_then(|open| open.ring.as_mut());
        let current = ring.as_ref().map(|ring| (ring.round, ring.opened_at_ms));
        let opening = (chunk.round, chunk.opened_at_ms);
        if current != Some(opening) {
            let newer = chunk.round > completed && current.is_none_or(|current| opening > current);
            if !newer {
                return Err(Refusal::new(Reason::StaleOpening, "the chunk is for an earlier ring"));
            }
            // Its sender saw the round's opening before this member did: kept until it arrives.
            self.keep_early(EarlyUpdate {
                signer,
                update: Update::Chunk(chunk),
                values: values.into(),
            });
            return Ok(());
        }
        let Some(ring) = ring else { return Ok(()) };
        super::rounds::refuse_huge_values(&UpdateValues::Decoded(values.clone()))?;
        if chunk.base_model != ring.base {
            return Err(Refusal::new(Reason::WrongBase, "the chunk builds on another model"));
        }
        let (step, index) = (chunk.step as usize, chunk.chunk as usize);
        let outgoing = ring.receive(signer, step, index, values.to_vec(), chunk.contributions)?;
        self.send_chunks(outgoing);
        self.maybe_finish_ring(now);
        Ok(())
    }

    fn send_chunks(&mut self, outgoing: Vec<Outgoing>) {
        let Some(open) = self.phase.open() else { return };
        let Some(ring) = open.ring.as_ref() else { return };
        let (round, base, opened_at_ms, until_ms) =
            (ring.round, ring.base, ring.opened_at_ms, open.deadline_ms);
        for out in outgoing {
            let chunk = ChunkToSend {
                round,
                base,
                opened_at_ms,
                step: out.step as u32,
                chunk: out.chunk as u32,
                contributions: out.contributions,
                values: Arc::new(out.values),
            };
            self.effects.push(Effect::SendChunk { to: out.to, chunk, until_ms });
        }
    }

    /// Once the ring is done: the round's model (the leader closes the round with it; every
    /// other member stores it, so the announced model is here already), or the ring's partial
    /// aggregate, sent up by its uploader.
    fn maybe_finish_ring(&mut self, now: u64) {
        let Some(open) = self.phase.open_mut() else { return };
        let Some(ring) = open.ring.as_ref() else { return };
        let round = ring.round;
        let (sum, contributions) = match ring.finished() {
            None => return,
            Some(Ok(done)) => done,
            Some(Err(refused)) => {
                open.ring = None;
                return self.log(Level::Warn, round, format!("ring failed: {}", refused.detail));
            }
        };
        let (mean, total_weight) = ring_mean(sum, &contributions);
        let (base, opened_at_ms, group, result) =
            (ring.base, ring.opened_at_ms, ring.label.clone(), ring.result);
        let members = open.opening.members.clone();
        open.ring = None;
        match result {
            RingResult::Model { leader } => {
                let params: Vec<f32> = self.params.iter().zip(&mean).map(|(p, d)| p + d).collect();
                let params = Arc::new(params);
                let optimizer = None; // a ring job has no server optimizer (its spec's check)
                let stored = Effect::StoreModel { round, params: params.clone(), optimizer };
                self.effects.push(stored);
                if leader {
                    let feedback = Vec::new(); // no aggregator saw the updates
                    let closing = Closing {
                        round,
                        base,
                        params,
                        contributions,
                        feedback,
                        members,
                        optimizer: None,
                    };
                    self.phase = Phase::Closing(Box::new(closing));
                }
            }
            RingResult::Up { uploader: true, to } => {
                let mean = Arc::new(mean);
                let partial = PartialToSend {
                    round,
                    base,
                    opened_at_ms,
                    group,
                    mean,
                    total_weight,
                    contributions,
                };
                if to == self.me() {
                    return self.fold_own_partial(partial, now);
                }
                let until_ms = self.phase.open().map_or(now, |open| open.deadline_ms);
                self.effects.push(Effect::SendPartial { to, partial, until_ms });
            }
            RingResult::Up { uploader: false, .. } => {}
        }
    }
}
