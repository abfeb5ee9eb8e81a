//! A trainer's part in a ring all-reduce: its update (weighted by its samples) cut into chunks,
//! each step's chunk going to the next member, received chunks checked and folded in schedule
//! order, and the ring's result: the round's model (a pure ring, every member computes the same
//! one) or a partial aggregate its uploader sends up (hybrid).

use crate::member::{Reason, Refusal};
use fedmesh_protocol::ids::{ContentHash, MemberId, Round};
use fedmesh_protocol::message::Contribution;
use fedmesh_topologies::ring::{Phase, RingStep, chunk_range};
use fedmesh_topologies::{Destination, RoundPlan};
use std::collections::BTreeMap;

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
    pub num_params: usize,
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
        opening: (Round, ContentHash, u64),
        me: MemberId,
        num_params: usize,
    ) -> Option<Self> {
        let (round, base, opened_at_ms) = opening;
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
            round,
            base,
            opened_at_ms,
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

    pub fn chunks(&self) -> usize {
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

    /// Keeps what this member did in the same ring of the same opening, followed with another
    /// plan (one that elects another uploader): its update, the chunks folded in and those
    /// received ahead. Says whether it kept anything.
    pub fn carry_over(&mut self, earlier: RingRun) -> bool {
        let same_opening = (earlier.round, earlier.base, earlier.opened_at_ms)
            == (self.round, self.base, self.opened_at_ms);
        let same_ring = earlier.label == self.label && earlier.order == self.order;
        if !(same_opening && same_ring) || self.values.is_some() {
            return false;
        }
        self.values = earlier.values;
        self.contributions = earlier.contributions;
        self.received = earlier.received;
        self.next = earlier.next;
        true
    }

    /// Whether this member's own update is in the ring.
    pub fn has_contributed(&self) -> bool {
        self.values.is_some()
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
    ) -> Result<Vec<Outgoing>, Refusal> {
        let Some(planned) = self.steps.get(step) else {
            return Err(Refusal::new(Reason::WrongStep, format!("the ring has no step {step}")));
        };
        if planned.from != from || planned.recv_chunk != chunk {
            return Err(Refusal::new(
                Reason::WrongStep,
                format!("step {step} expects chunk {} from {}", planned.recv_chunk, planned.from),
            ));
        }
        let expected = chunk_range(self.num_params, self.chunks(), chunk).len();
        if values.len() != expected {
            return Err(Refusal::new(
                Reason::WrongLayout,
                format!("chunk {chunk} has {} values, not {expected}", values.len()),
            ));
        }
        if let Some(outsider) = contributions.iter().find(|c| !self.order.contains(&c.member)) {
            return Err(Refusal::new(
                Reason::NotSelected,
                format!("{} is not in the ring", outsider.member),
            ));
        }
        if step < self.next || self.received.contains_key(&step) {
            return Err(Refusal::new(
                Reason::Duplicate,
                format!("step {step} was received already"),
            ));
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
    pub fn finished(&self) -> Option<Result<RingSum<'_>, Refusal>> {
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
            return Some(Err(Refusal::new(
                Reason::InconsistentRing,
                "the ring's chunks include different updates",
            )));
        }
        Some(Ok((values, first)))
    }
}

/// The mean of a ring's weighted sum, and its weight.
pub fn ring_mean(sum: &[f32], contributions: &[Contribution]) -> (Vec<f32>, f64) {
    let weight: f64 = contributions.iter().map(|c| c.samples as f64).sum();
    let scale = (1.0 / weight) as f32;
    (sum.iter().map(|s| s * scale).collect(), weight)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedmesh_protocol::ids::ContentHash;

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
        assert_eq!(wrong_sender.unwrap_err().reason, Reason::WrongStep);
        let short = rings[1].receive(
            member(1),
            first.step,
            first.chunk,
            vec![1.0],
            first.contributions.clone(),
        );
        assert_eq!(short.unwrap_err().reason, Reason::WrongLayout);
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
        assert_eq!(again.unwrap_err().reason, Reason::Duplicate);
    }
}
