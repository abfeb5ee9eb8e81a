//! Asynchronous FL (FedBuff) in a member: a trainer trains on the newest model it holds, one
//! training at a time, and sends each update to the version under way when it is done, however
//! many versions behind its base is (up to the job's `max_staleness`); an update that missed
//! its version goes to the next. The aggregator's side (taking older bases, discounting them,
//! closing at the buffer) is the collecting slot's (`crate::collect`).
//!
//! Versions are rounds: round r makes version r from updates trained on version r − 1 (fresh)
//! or older ones, so the round machinery (openings, election, failover, results) is the same.

use super::phase::LocalTraining;
use super::{DeltaToSend, Level, LocalUpdate, Member};
use fedmesh_protocol::ids::{ContentHash, Round};
use fedmesh_protocol::message::AggregateReady;
use fedmesh_protocol::spec::AsyncOptions;

impl Member {
    /// FedBuff's settings, when the job is asynchronous.
    pub(super) fn async_options(&self) -> Option<AsyncOptions> {
        self.setup.spec.async_options()
    }

    /// The base models of the versions before round `round`'s base, newest first, as far back
    /// as the job's `max_staleness` and this member's records go (none for a synchronous job).
    pub(super) fn older_bases(&self, round: Round) -> Vec<ContentHash> {
        let Some(options) = self.async_options() else { return Vec::new() };
        (1..=u64::from(options.max_staleness))
            .map_while(|back| {
                let earlier = round.checked_sub(back)?;
                self.rounds.get(&earlier).map(|record| record.base_model)
            })
            .collect()
    }

    /// How many versions an update trained on `base` is behind the open round's base: none if
    /// no round is open, or the base is older than the job takes.
    fn staleness_now(&self, base: &ContentHash) -> Option<u32> {
        let open = self.phase.open()?;
        if open.base == *base {
            return Some(0);
        }
        let older = self.older_bases(open.round);
        older.iter().position(|older| older == base).map(|index| index as u32 + 1)
    }

    /// Whether this member trains now in an asynchronous job: not while a training runs.
    pub(super) fn async_training_busy(&self) -> bool {
        self.async_options().is_some() && matches!(self.training, Some(LocalTraining::Running(..)))
    }

    /// An asynchronous job's local training finished: the update goes to the version under way
    /// (or waits for the next), and training starts again on the newest model held.
    pub(super) fn async_trained(
        &mut self,
        round: Round,
        base: ContentHash,
        trained: LocalUpdate,
        now: u64,
    ) {
        let samples = trained.samples.min(self.weight_bound(&self.me()));
        let values = trained.delta;
        let update = DeltaToSend { round, base, samples, metrics: trained.metrics, values };
        self.pending = Some(update);
        self.deliver_pending(now);
        self.start_training();
    }

    /// Sends the update waiting for a version to the one under way, if this member sent none to
    /// it yet and it is not too stale; one too stale is dropped.
    pub(super) fn deliver_pending(&mut self, now: u64) {
        let Some(update) = self.pending.as_ref() else { return };
        let Some(open) = self.phase.open() else { return };
        let (round, opening) = (open.round, (open.opener, open.opened_at_ms));
        if open.plan.trainers.binary_search(&self.me()).is_err() {
            return; // not among this version's trainers: the next may take it
        }
        if self.last_update.as_ref().is_some_and(|(sent, _)| sent.round == round) {
            return; // one update a version: this one waits for the next
        }
        let Some(staleness) = self.staleness_now(&update.base) else {
            let text = "an update trained on a model too many versions old is dropped";
            self.pending = None;
            return self.log(Level::Info, round, text);
        };
        let Some(mut update) = self.pending.take() else { return };
        update.round = round;
        if staleness > 0 {
            let text = format!("sending an update {staleness} versions stale");
            self.log(Level::Info, round, text);
        }
        self.last_update = Some((update.clone(), opening));
        self.deliver(update, now);
    }

    /// A version's result is taken: this member's update sent to it and not counted (it came
    /// after the buffer filled) waits for the next version, unless a newer one already does.
    pub(super) fn requeue_uncounted(&mut self, ready: &AggregateReady) {
        if self.async_options().is_none() {
            return;
        }
        let me = self.me();
        let Some((sent, _)) = self.last_update.as_ref() else { return };
        let counted = ready.contributions.iter().any(|c| c.member == me);
        if sent.round == ready.round && !counted && self.pending.is_none() {
            self.pending = Some(sent.clone());
        }
    }

    pub(super) fn is_async(&self) -> bool {
        self.async_options().is_some()
    }

    /// How many updates close a round of `trainers` at its quorum: an asynchronous version's
    /// buffer (all of them, when fewer).
    pub(super) fn required_updates(&self, trainers: usize) -> usize {
        match self.async_options() {
            Some(options) => (options.buffer as usize).min(trainers).max(1),
            None => self.setup.spec.quorum.required(trainers),
        }
    }
}
