//! Carrying out a machine's effects as the node's executor would: publishing, sending, asking,
//! fetching, local work (training, storing, evaluating) in simulated time, persisting, wake-ups
//! and log notices; with the adversaries' twists on publishing.

use crate::adversary;
use crate::blobs::Blobs;
use crate::config::AdversaryKind;
use crate::network::Index;
use crate::world::{Action, Training, World};
use fedmesh_aggregation::ServerOptimizer;
use fedmesh_federation::member::{Effect, Event, Gossip, Level, Notice, Publish, recompute_secure};
use fedmesh_protocol::codec::decode_evidence;
use fedmesh_protocol::ids::{ContentHash, MemberId, Round};
use fedmesh_protocol::message::{AggregateReady, Contribution, RoundOpen};
use fedmesh_protocol::tensor::hash_f32;
use std::sync::Arc;

/// Simulated time an audit takes besides its transfers (round trips to the holders).
const AUDIT_BASE_MS: u64 = 100;
/// Simulated time to store a model: a fixed cost plus this many bytes a millisecond.
const STORE_BASE_MS: u64 = 5;
const STORE_BYTES_PER_MS: u64 = 1_000_000;

/// The gossip message a publication goes out as.
fn as_gossip(publish: Publish) -> Gossip {
    match publish {
        Publish::Join(join) => Gossip::Join(join),
        Publish::Leave(leave) => Gossip::Leave(leave),
        Publish::Heartbeat(beat) => Gossip::Heartbeat(beat),
        Publish::Open(open) => Gossip::Open(Arc::new(open)),
        Publish::Result(ready) => Gossip::Result(Arc::new(ready)),
        Publish::Eval(report) => Gossip::Eval(report),
        Publish::FraudProof(accusation) => Gossip::FraudProof(Arc::new(accusation)),
    }
}

impl World {
    /// Carries out `member`'s effects, in order.
    pub fn carry_out(&mut self, member: Index, effects: Vec<Effect>) {
        for effect in effects {
            self.carry_out_one(member, effect);
        }
    }

    fn carry_out_one(&mut self, member: Index, effect: Effect) {
        match effect {
            Effect::Publish(publish) => self.publish_effect(member, publish),
            Effect::SendJoin { to, join, asks, heartbeat } => {
                self.send_join(member, to, (join, heartbeat), asks)
            }
            Effect::AskMembers { to, digest } => self.ask_members(member, to, digest),
            Effect::SendMembers { to, members } => self.send_members(member, to, members),
            Effect::SendDelta { to, delta, until_ms } => {
                self.send_delta(member, to, delta, until_ms)
            }
            Effect::SendPartial { to, partial, until_ms } => {
                self.send_partial(member, to, partial, until_ms)
            }
            Effect::SendChunk { to, chunk, until_ms } => {
                self.send_chunk(member, to, chunk, until_ms)
            }
            Effect::SendSecure { to, message, .. } => self.send_secure(member, to, message),
            Effect::Answer { outcome, .. } => match outcome {
                Ok(()) => self.counters.accepted += 1,
                Err(refusal) => {
                    *self.counters.refused.entry(refusal.reason.label().to_owned()).or_insert(0) +=
                        1
                }
            },
            Effect::ServeResult { request, result, .. } => self.serve(member, request, result),
            Effect::AskResult { round, from } => self.ask(member, round, &from),
            Effect::Train { round, base, params } => {
                let incarnation = self.nodes[member].incarnation;
                let delay = self.learner.train_ms(member, round);
                let training = Training { member, incarnation, round, base, params };
                let action = Action::Train(Box::new(training));
                self.queue.after(delay, action);
            }
            Effect::Fetch { model, from, .. } => self.fetch(member, model, &from),
            Effect::StoreModel { round, params, optimizer } => {
                self.store(member, round, params, optimizer)
            }
            Effect::FetchOptimizerState { state, from, .. } => {
                self.fetch_optimizer_state(member, state, &from)
            }
            Effect::Evaluate { round, model, params } => {
                let metrics = self.learner.evaluate(member, &params);
                let delay = self.learner.evaluate_ms(member);
                self.later(member, delay, Event::Evaluated { round, model, metrics });
            }
            Effect::Persist(snapshot) => {
                let node = &mut self.nodes[member];
                if node.restarts {
                    node.snapshot = Some(snapshot);
                }
            }
            Effect::WakeAt(at) => self.wake(member, at),
            Effect::Log(notice) => self.log(member, &notice),
            Effect::Rejected(_) => {} // a refused round message is held and judged again
            Effect::Audit { result, from, .. } => self.audit(member, &result, &from),
            Effect::KeepContributions { own, evidence, .. } => {
                if let Some(own) = own {
                    self.deltas.put(hash_f32(&own), own, member);
                }
                for record in evidence {
                    self.evidence.put(ContentHash::of(&record), record, member);
                }
            }
            Effect::ServeContribution { .. } => {} // auditors read the kept deltas directly
            Effect::ProofRefuted { refusal, .. } => {
                let label = refusal.reason.label().to_owned();
                *self.counters.refused.entry(label).or_insert(0) += 1;
            }
        }
    }

    /// Feeds `event` to this incarnation of `member` after `delay_ms`.
    pub fn later(&mut self, member: Index, delay_ms: u64, event: Event) {
        let incarnation = self.nodes[member].incarnation;
        self.queue.after(delay_ms, Action::Done { member, incarnation, event: Box::new(event) });
    }

    /// Keeps the earliest wake-up a member asked for.
    fn wake(&mut self, member: Index, at: u64) {
        let at = at.max(self.queue.now());
        let node = &mut self.nodes[member];
        if node.wake.is_some_and(|pending| pending <= at) {
            return;
        }
        node.wake = Some(at);
        let incarnation = node.incarnation;
        self.queue.at(at, Action::Tick { member, incarnation, at });
    }

    /// Stores a model a member made, and the server optimizer's state with it (a job with one).
    fn store(
        &mut self,
        member: Index,
        round: Round,
        params: Arc<Vec<f32>>,
        optimizer: Option<Arc<ServerOptimizer>>,
    ) {
        let params = if self.nodes[member].adversary == Some(AdversaryKind::ForgeAggregate) {
            let forged = Arc::new(adversary::backdoor(&params));
            self.forged.insert(hash_f32(&forged));
            self.counters.aggregates_forged += 1;
            forged
        } else {
            params
        };
        let model = hash_f32(&params);
        let mut bytes = params.len() as u64 * 4;
        self.blobs.put(model, params, member);
        let optimizer_state = optimizer.map(|optimizer| {
            let blob = optimizer.encode_state();
            let state = ContentHash::of(&blob);
            bytes += blob.len() as u64;
            self.optimizer_states.put(state, Arc::new(blob), member);
            state
        });
        let delay = STORE_BASE_MS + bytes / STORE_BYTES_PER_MS;
        self.later(member, delay, Event::Stored { round, model, optimizer_state });
    }

    fn log(&mut self, member: Index, notice: &Notice) {
        match notice.level {
            Level::Info => self.counters.notices_info += 1,
            Level::Warn => self.counters.notices_warn += 1,
        }
        if self.config.verbose {
            eprintln!(
                "{:>9.3} s member {member} round {}: {:?}: {}",
                self.sim_seconds(),
                notice.round,
                notice.level,
                notice.text
            );
        }
    }

    /// Recomputes `result` for an auditor as the node's executor would: its base model and
    /// each delta it lists (a secure round's evidence), from a live member keeping it (the
    /// contribution's own member, the aggregator `from`, or any), over the network; reported
    /// after the transfer's time.
    fn audit(&mut self, member: Index, result: &AggregateReady, from: &[MemberId]) {
        let Some(base) = self.blobs.get(&result.base_model).cloned() else {
            let missing = format!("base model {} is not stored", result.base_model);
            return self.audited(member, result.model, Err(missing), 0);
        };
        let (outcome, bytes) = if self.config.secure_aggregation {
            self.recompute_secure(member, result, from, &base)
        } else {
            self.recompute(member, result, from, &base)
        };
        let delay =
            AUDIT_BASE_MS + bytes * 8 / ((self.config.bandwidth_mbps * 1_000.0) as u64).max(1);
        self.audited(member, result.model, outcome, delay);
    }

    /// The model a result's deltas make, and the bytes fetched.
    fn recompute(
        &self,
        member: Index,
        result: &AggregateReady,
        from: &[MemberId],
        base: &[f32],
    ) -> (Result<ContentHash, String>, u64) {
        let mut deltas = Vec::with_capacity(result.contributions.len());
        for contribution in &result.contributions {
            match self.kept(&self.deltas, member, contribution, from) {
                Ok(values) => deltas.push((contribution.member, contribution.samples, values)),
                Err(missing) => return (Err(missing), 0),
            }
        }
        let borrowed: Vec<_> = deltas.iter().map(|(m, w, v)| (*m, *w, v.as_slice())).collect();
        let outcome =
            fedmesh_aggregation::verifiable::recompute(&self.config.strategy, base, &borrowed)
                .map(|params| hash_f32(&params))
                .map_err(|error| error.to_string());
        (outcome, deltas.iter().map(|(_, _, v)| v.len() as u64 * 4).sum())
    }

    /// The model a secure round's evidence makes, and the bytes fetched.
    fn recompute_secure(
        &self,
        member: Index,
        result: &AggregateReady,
        from: &[MemberId],
        base: &[f32],
    ) -> (Result<ContentHash, String>, u64) {
        let (mut evidence, mut bytes) = (Vec::with_capacity(result.contributions.len()), 0);
        for contribution in &result.contributions {
            let record = self.kept(&self.evidence, member, contribution, from).and_then(|record| {
                bytes += record.len() as u64;
                decode_evidence(&record).map_err(|e| e.to_string())
            });
            match record {
                Ok(record) => evidence.push((*contribution, record)),
                Err(missing) => return (Err(missing), 0),
            }
        }
        let clip_norm = self.config.strategy.clip_norm.unwrap_or(1.0);
        let job = self.nodes[member].setup.job;
        let outcome = recompute_secure((job, result.round), clip_norm, base, &evidence)
            .map(|params| hash_f32(&params));
        (outcome, bytes)
    }

    /// A contribution kept in `store` by a live member: its own, the aggregator `from`, or any.
    fn kept<T: Clone>(
        &self,
        store: &Blobs<T>,
        member: Index,
        contribution: &Contribution,
        from: &[MemberId],
    ) -> Result<T, String> {
        let usable = |m: Index| self.nodes[m].is_alive() || m == member;
        let holds = |m: &Index| usable(*m) && store.holds(*m, &contribution.delta);
        let holder = self
            .index_of(&contribution.member)
            .filter(holds)
            .or_else(|| from.iter().filter_map(|id| self.index_of(id)).find(holds))
            .or_else(|| store.find_holder(&contribution.delta, usable));
        match holder.and_then(|_| store.get(&contribution.delta)) {
            Some(kept) => Ok(kept.clone()),
            None => Err(format!("no member keeps contribution {}", contribution.delta)),
        }
    }

    fn audited(
        &mut self,
        member: Index,
        model: ContentHash,
        outcome: Result<ContentHash, String>,
        delay: u64,
    ) {
        if outcome.is_err() {
            self.counters.audits_failed += 1;
        }
        self.later(member, delay, Event::Audited { model, outcome });
    }

    /// Publishes for `member`, unless it withholds results; notes openings.
    fn publish_effect(&mut self, member: Index, publish: Publish) {
        let adversary = self.nodes[member].adversary;
        match &publish {
            Publish::Result(_) if adversary == Some(AdversaryKind::WithholdResults) => {
                self.counters.withheld += 1;
                return;
            }
            Publish::Open(open) if adversary.is_none() => self.note_opening(member, open),
            Publish::FraudProof(_) => self.counters.fraud_proofs += 1,
            _ => {}
        }
        self.publish(member, as_gossip(publish));
    }

    /// Counts an honest opening; the first of a round sets off that round's faults.
    fn note_opening(&mut self, member: Index, open: &RoundOpen) {
        let openings = self.openings.entry(open.round).or_default();
        let first = openings.is_empty();
        openings.insert((member, open.opened_at_ms));
        if first {
            for (delay, fault) in self.faults.on_first_opening(open.round) {
                self.queue.after(delay, Action::Fault(fault));
            }
        }
    }

    /// A hijacker that just saw another member's opening answers with its own opening and a
    /// made-up result (once per round).
    pub fn maybe_hijack(&mut self, member: Index, signer: Index, message: &Gossip) {
        let Gossip::Open(open) = message else { return };
        let node = &mut self.nodes[member];
        if node.adversary != Some(AdversaryKind::HijackRounds)
            || signer == member
            || !node.hijacked.insert(open.round)
        {
            return;
        }
        let (competing, made_up) = adversary::hijack(open, self.queue.now());
        self.counters.hijacks += 1;
        self.publish(member, Gossip::Open(Arc::new(competing)));
        self.publish(member, Gossip::Result(Arc::new(made_up)));
    }
}
