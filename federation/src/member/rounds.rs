//! A round from its opening to its close: who opens it, following an opening (the plan over
//! the members it names, the slots this member aggregates, training or sending again), taking
//! updates, the deadlines (a lower slot sends up, the leader closes at quorum or opens again,
//! a follower gives up on a silent leader) and closing the round.

use super::Reason;
use super::phase::{Closing, Leading, LocalTraining, OpenRound, Own, Phase};
use super::{
    DeltaToSend, EarlyUpdate, Effect, Level, LocalUpdate, Member, OPEN_CHECK_MS, PartialToSend,
    Refusal, SETTLE_HEARTBEATS, SETTLE_MIN_MS, SPREAD_WAIT_MS, Update, UpdateValues, VIEW_HOLD_MS,
};
use crate::collect::{Collecting, Opening};
use crate::records::{RoundRecord, RunStatus};
use crate::ring::RingRun;
use fedmesh_aggregation::privacy::{NoiseSeed, add_seeded_gaussian_noise, clip, trainer_noise_std};
use fedmesh_protocol::ids::{ContentHash, MemberId, Round};
use fedmesh_protocol::message::RoundOpen;
use fedmesh_topologies::{Destination, RoundPlan};
use std::sync::Arc;

/// How long past a round's deadline its leader has to open it again before members elect
/// another.
pub(super) const REOPEN_GRACE_MS: u64 = 2_000;
/// After this many deadlines short of its quorum, a led round closes with the updates in if
/// they are at least the job's minimum of participants: trainers that stay live but never send
/// (keys that beat and never train) would otherwise hold it open for ever.
const DEADLINES_BEFORE_CLOSING_SHORT: u32 = 3;

impl Member {
    /// The round's part of a tick: deadlines, then opening the next round when elected.
    pub(super) fn tick_round(&mut self, now: u64) {
        self.check_slot_deadlines(now);
        self.advance_secure(now);
        self.prepare_optimizer(now);
        self.check_leader_deadline(now);
        self.ask_for_missed_result(now);
        self.forget_lost_opener(now);
        if matches!(self.phase, Phase::Waiting) && now >= self.next_open_check_ms {
            self.next_open_check_ms = now + OPEN_CHECK_MS;
            self.maybe_open(self.state.completed_round + 1, now);
        }
        if let Some(open) = self.phase.open() {
            let next = open.slots.iter().map(|s| s.deadline_ms).chain([open.deadline_ms]).min();
            if let Some(next) = next.filter(|at| *at > now) {
                self.wake_at(next);
            }
        }
    }

    /// Opens `round` if the live plan makes this member its leader (in an orchestrated job,
    /// follows the coordinator's assignment of it instead), once its view of the members held
    /// for `VIEW_HOLD_MS`: while it changes (members learning of each other after a join burst),
    /// an opening over it names members the others have not all heard of yet, and every check
    /// computed a new live view and plan (at 10,000 members, every member once a second: nearly
    /// all of the time once the burst was over).
    fn maybe_open(&mut self, round: Round, now: u64) {
        if round > self.setup.spec.hyperparameters.rounds
            || !self.is_active()
            || self.restoring.is_some()
        {
            return;
        }
        if self.orchestrated(now) {
            return self.follow_assignment(round, now);
        }
        if self.heard_past(round) {
            return self.catch_up(now);
        }
        if self.settling(now) || now < self.view_changed_ms + VIEW_HOLD_MS {
            return;
        }
        if self.elected_leader(round, now) != Some(self.me()) {
            return;
        }
        if !self.model_spread(now) {
            self.next_open_check_ms = now; // checked again at the next tick
            return;
        }
        let Some((plan, live)) = self.live_plan(round, now) else { return };
        let members = live.iter().map(|m| m.id).collect();
        let required = self.required_updates(plan.trainers.len());
        self.log(
            Level::Info,
            round,
            format!("opening round {round} as its leader: {} trainers", plan.trainers.len()),
        );
        self.announce_opening(round, members, plan, Leading { required, retries: 0 }, now);
    }

    /// Whether the current model is safe to build on: another member holds it (its heartbeat or
    /// evaluation report named it), or `SPREAD_WAIT_MS` passed since this member adopted it. A
    /// leader that opened the next round the moment it adopted the model it made, and died then,
    /// left a model nobody held: every member fetched it in vain, and the job stalled.
    fn model_spread(&self, now: u64) -> bool {
        let me = self.me();
        self.state.completed_round == 0
            || now >= self.adopted_ms + SPREAD_WAIT_MS
            || self.state.members.holders_of(&self.state.model).any(|m| m != me)
    }

    /// Whether this member joined too recently to know where the job stands, and so opens no
    /// round the others may be past: until it heard `SETTLE_HEARTBEATS` heartbeats of other
    /// members (each names its member's round, and one past this member's makes it catch up
    /// instead: `heard_past`) and at least `SETTLE_MIN_MS` passed (the answers to its join
    /// come back within a round trip); at most two heartbeat intervals, in which it heard
    /// every live member. (Two intervals alone were 2,000 s in a 10,000-member job, whose
    /// members beat ten times a second between them: a newcomer knows where the job stands
    /// within a second or two.) Nor until a pull of the member list found no member it missed
    /// and the members it asked answered (or were waited for): its plan is then over the
    /// members the others plan over (see `pull`).
    pub(super) fn settling(&self, now: u64) -> bool {
        let heard =
            self.heartbeats_heard >= SETTLE_HEARTBEATS && now >= self.joined_ms + SETTLE_MIN_MS;
        let agrees = self.pulled_all && !self.awaits_answers(now);
        !(heard && agrees) && now < self.joined_ms + 2 * self.cadence().heartbeat_ms()
    }

    /// Whether a member's heartbeat named a round past `round`: this member is behind, and catches up from the others' results instead of running a round they
    /// finished (a silent member's word counts too: it was past the round when it spoke).
    fn heard_past(&self, round: Round) -> bool {
        self.furthest_heard > round
    }

    /// Publishes an opening this member leads, and follows it itself.
    fn announce_opening(
        &mut self,
        round: Round,
        members: Vec<MemberId>,
        plan: Arc<RoundPlan>,
        leading: Leading,
        now: u64,
    ) {
        let kept = self.kept_for(round, &members, &plan);
        let open = RoundOpen {
            job: self.setup.job,
            round,
            base_model: self.state.model,
            deadline_ms: now + self.setup.spec.round_deadline_secs * 1000,
            opened_at_ms: now,
            members,
            trainers: self.trainers_named(&plan),
            kept,
        };
        self.effects.push(Effect::Publish(super::Publish::Open(open.clone())));
        self.follow(self.me(), Arc::new(open), plan, Some(leading), now);
    }

    /// The bitmap of the trainers of `plan` (over `members`) whose updates an earlier opening
    /// of `round` collected into a slot this member aggregates under the same label, which the
    /// new opening keeps (`collect_slots`). None in a secure round: its masked updates are
    /// bound to one opening.
    fn kept_for(&self, round: Round, members: &[MemberId], plan: &RoundPlan) -> Vec<u8> {
        let Some(earlier) = self.phase.open().filter(|o| o.round == round) else { return vec![] };
        if self.secure() || earlier.base != self.state.model {
            return Vec::new();
        }
        let me = self.me();
        let kept = members.iter().enumerate().filter(|(_, member)| {
            let Some(Destination::Slot(slot)) = plan.destination(member) else { return false };
            let planned = &plan.slots[slot];
            planned.aggregator() == me
                && earlier.slots.iter().any(|s| s.label == planned.id.label && s.holds(member))
        });
        RoundOpen::kept_bitmap(members.len(), kept.map(|(index, _)| index))
    }

    /// A verified opening from the member that may send it: followed when its plan, over the
    /// members it names, is led by its opener.
    pub(super) fn on_open(&mut self, opener: MemberId, open: Arc<RoundOpen>, now: u64) {
        let Ok(named) = self.named(&open.members, now) else { return };
        let Some(plan) = self.plan_of_opening(opener, &open, named) else { return };
        if plan.leader() != Some(opener) {
            return self.log(Level::Warn, open.round, format!("an opening {opener} does not lead"));
        }
        if opener == self.me() {
            return; // its own opening, heard back: followed when it was made
        }
        self.follow(opener, open, plan, None, now);
    }

    /// Follows one opening of the next round with its plan (elected over the members the
    /// opening names, or assigned by the job's coordinator).
    pub(super) fn follow(
        &mut self,
        opener: MemberId,
        open: Arc<RoundOpen>,
        plan: Arc<RoundPlan>,
        leading: Option<Leading>,
        now: u64,
    ) {
        let result_heard = self.rounds.get(&open.round).is_some_and(|r| r.model.is_some());
        if open.round <= self.state.completed_round || !self.is_active() || result_heard {
            return; // over, or its model is being fetched
        }
        let same_opening = self
            .phase
            .open()
            .is_some_and(|o| (o.round, o.opened_at_ms) == (open.round, open.opened_at_ms));
        if same_opening {
            return;
        }
        self.enter(opener, open, plan, leading, now);
    }

    /// Follows the open round again with a new plan: this member followed its opening before it
    /// took the result of the round's base, so planned with the members the round before that
    /// vetted; every member that took the result plans with those it counted.
    pub(super) fn replan_open(&mut self, now: u64) {
        let Some(open) = self.phase.open() else { return };
        if open.base != self.state.model || open.leading.is_some() {
            return;
        }
        let (opener, opening, followed) = (open.opener, open.opening.clone(), open.plan.clone());
        let Ok(named) = self.named(&opening.members, now) else { return };
        let Some(plan) = self.plan_of_opening(opener, &opening, named) else { return };
        if *plan == *followed {
            return;
        }
        if plan.leader() != Some(opener) {
            let text =
                format!("{opener} does not lead round {} with the members vetted", opening.round);
            return self.log(Level::Warn, opening.round, text);
        }
        self.log(Level::Info, opening.round, "planned again with the members its base vetted");
        self.enter(opener, opening, plan, None, now);
    }

    /// Takes part in an opening with its plan: the round's record, the slots this member
    /// aggregates (keeping what an earlier opening of the round collected), its ring, and its
    /// own update.
    fn enter(
        &mut self,
        opener: MemberId,
        open: Arc<RoundOpen>,
        plan: Arc<RoundPlan>,
        leading: Option<Leading>,
        now: u64,
    ) {
        self.state.status = RunStatus::Running;
        let record = self.rounds.entry(open.round).or_insert_with(|| {
            RoundRecord::new(open.round, opener, open.base_model, open.opened_at_ms)
        });
        record.aggregator = opener;
        record.slots = plan.slots.iter().map(|s| (s.id.to_string(), s.aggregator())).collect();
        record.rings = plan.rings.iter().map(|r| (r.label.clone(), r.order.clone())).collect();
        let (earlier, earlier_ring) = match std::mem::take(&mut self.phase) {
            Phase::Open(earlier) if earlier.round == open.round => (earlier.slots, earlier.ring),
            _ => (Vec::new(), None),
        };
        let mut slots = self.collect_slots(&open, &plan, earlier);
        for left in open.members.iter().filter(|m| self.state.members.has_left(m)) {
            // Opened just before it left: no slot waits for it.
            slots.iter_mut().for_each(|slot| slot.forget_sender(left));
        }
        let opening = (open.round, open.base_model, open.opened_at_ms);
        let mut ring = RingRun::for_member(&plan, opening, self.me(), self.params.len());
        if let (Some(ring), Some(earlier)) = (ring.as_mut(), earlier_ring) {
            ring.carry_over(earlier);
        }
        self.phase = Phase::Open(Box::new(OpenRound {
            round: open.round,
            opener,
            base: open.base_model,
            deadline_ms: open.deadline_ms,
            opened_at_ms: open.opened_at_ms,
            opening: open.clone(),
            plan: plan.clone(),
            own: Own::NotSelected,
            slots,
            ring,
            leading,
            result_asked: false,
        }));
        self.wake_at(open.deadline_ms);
        if open.base_model == self.state.model {
            self.take_early_updates(now);
        }
        self.finish_complete_slots(now);
        if self.secure() {
            self.enter_secure(now);
        }
        if plan.trainers.binary_search(&self.me()).is_ok() {
            self.take_part(opener, &open, now);
            self.deliver_pending(now);
        }
    }

    /// The slots `plan` makes this member aggregate, keeping what an earlier opening of the
    /// round collected where the new plan still expects it.
    fn collect_slots(
        &mut self,
        open: &RoundOpen,
        plan: &RoundPlan,
        mut earlier: Vec<Collecting>,
    ) -> Vec<Collecting> {
        let opening = Opening {
            round: open.round,
            base: open.base_model,
            num_params: self.params.len(),
            opened_at_ms: open.opened_at_ms,
            deadline_ms: open.deadline_ms,
            noise_key: self.setup.noise_key,
            older_bases: self.older_bases(open.round),
        };
        let me = self.me();
        let mut slots = Vec::new();
        for index in (0..plan.slots.len()).filter(|i| plan.slots[*i].aggregator() == me) {
            let mut slot = match Collecting::new(&self.setup.spec, plan, index, &opening) {
                Ok(slot) => slot,
                Err(error) => {
                    self.log(Level::Warn, open.round, format!("cannot aggregate: {error}"));
                    continue;
                }
            };
            if let Some(position) = earlier.iter().position(|e| e.label == slot.label)
                && slot.carry_over(earlier.swap_remove(position))
            {
                let kept = slot.contributions.len();
                self.log(Level::Info, open.round, format!("opened again; {kept} updates kept"));
            }
            slots.push(slot);
        }
        slots
    }

    /// A selected trainer's part in an opening: its update sent again if the round was opened
    /// again, training again if its update is lost, else training (once it holds the base).
    fn take_part(&mut self, opener: MemberId, open: &RoundOpen, now: u64) {
        let opening = (opener, open.opened_at_ms);
        let me = self.me();
        let to_opener = self.phase.open().is_some_and(|o| match o.plan.destination(&me) {
            Some(Destination::Slot(slot)) => o.plan.slots[slot].aggregator() == opener,
            _ => false,
        });
        if to_opener && open.keeps(&me) {
            // Opened again, and the opener kept this member's update.
            return self.set_own(Own::Sent);
        }
        let resend = self.last_update.as_ref().filter(|(update, answered)| {
            update.round == open.round && update.base == open.base_model && *answered != opening
        });
        if let Some((update, _)) = resend.cloned() {
            self.log(Level::Info, open.round, "opened again; sending the update again");
            return self.deliver(update, now);
        }
        let own_in = self.phase.open().is_some_and(|o| {
            o.slots.iter().any(|s| s.holds(&self.me()))
                || o.ring.as_ref().is_some_and(RingRun::has_contributed)
        });
        if own_in {
            return self.set_own(Own::Folded);
        }
        if self.training == Some(LocalTraining::Finished(open.round, open.base_model)) {
            // Opened again, and this member's update is gone: it trains again.
            self.training = None;
            self.last_update = None;
        }
        if open.base_model == self.state.model {
            self.start_training();
        } else {
            // Behind: the round's base (the previous round's result) first.
            self.set_own(Own::FetchingBase);
            self.fetch(open.round.saturating_sub(1), open.base_model, opener);
        }
    }

    pub(super) fn set_own(&mut self, own: Own) {
        if let Some(open) = self.phase.open_mut() {
            open.own = own;
        }
    }

    /// Trains on the open round's base, once per round and base.
    pub(super) fn start_training(&mut self) {
        let Some(open) = self.phase.open() else { return };
        let (round, base) = (open.round, open.base);
        if open.plan.trainers.binary_search(&self.me()).is_err()
            || self.state.model != base
            || self.restoring.is_some()
            || self.training.is_some_and(|training| training.is_for(round, base))
        {
            return;
        }
        if self.async_training_busy() {
            return self.set_own(Own::Training); // its update goes to this version when done
        }
        self.training = Some(LocalTraining::Running(round, base));
        self.set_own(Own::Training);
        self.effects.push(Effect::Train { round, base, params: self.params.clone() });
    }

    /// Local training finished: the update goes where the plan sends it.
    pub(super) fn on_trained(
        &mut self,
        round: Round,
        base: ContentHash,
        outcome: Result<LocalUpdate, String>,
        now: u64,
    ) {
        if self.training == Some(LocalTraining::Running(round, base)) {
            self.training = Some(LocalTraining::Finished(round, base));
        }
        let trained = match outcome {
            Ok(trained) => trained,
            Err(error) => {
                self.set_own(Own::Failed);
                return self.log(Level::Warn, round, format!("local training failed: {error}"));
            }
        };
        if trained.delta.iter().any(|v| !v.is_finite()) || !trained.metrics.loss.is_finite() {
            return self.fail_diverged(round);
        }
        if let Some(record) = self.rounds.get_mut(&round) {
            record.train_seconds = Some(trained.seconds);
        }
        if self.async_options().is_some() {
            return self.async_trained(round, base, trained, now);
        }
        let Some(open) = self.phase.open().filter(|o| (o.round, o.base) == (round, base)) else {
            return self.log(Level::Info, round, "the round moved on while training");
        };
        if self.secure() {
            return self.secure_trained(trained, now);
        }
        let (opener, opened_at) = (open.opener, open.opened_at_ms);
        let samples = trained.samples.min(self.weight_bound(&self.me()));
        let values = match self.with_noise_share(open, samples, &trained.delta) {
            Some(noised) => Arc::new(noised),
            None => trained.delta,
        };
        let update = DeltaToSend { round, base, samples, metrics: trained.metrics, values };
        self.last_update = Some((update.clone(), (opener, opened_at)));
        self.deliver(update, now);
    }

    /// Under distributed DP, this trainer's update clipped to the job's norm with its share of
    /// the noise added, drawn from its own secret: no party, its aggregator included, ever sees
    /// the update without it. The shares are sized for the fewest updates that close the round
    /// (its quorum) and the heaviest trainer's weight, so the round's mean carries at least the
    /// noise central DP would add. `None` when the job's noise is not the trainers'.
    pub(super) fn with_noise_share(
        &self,
        open: &OpenRound,
        own_weight: u64,
        delta: &[f32],
    ) -> Option<Vec<f32>> {
        let spec = &self.setup.spec;
        let (Some(clip_norm), Some(multiplier)) =
            (spec.strategy.clip_norm, spec.strategy.noise_multiplier)
        else {
            return None;
        };
        if !spec.privacy.distributed() {
            return None;
        }
        let trainers = &open.plan.trainers;
        let heaviest = trainers.iter().map(|t| self.weight_bound(t)).max().unwrap_or(own_weight);
        let shares = spec.quorum.required(trainers.len());
        let std =
            trainer_noise_std(multiplier, clip_norm, heaviest as f64, own_weight as f64, shares);
        let mut noised = delta.to_vec();
        clip(&mut noised, clip_norm);
        let seed = noise_share_seed(&self.setup.noise_key, open.round, open.opened_at_ms);
        add_seeded_gaussian_noise(&mut noised, std, seed);
        Some(noised)
    }

    /// Delivers this member's update where the open round's plan sends it: into its ring,
    /// folded in here when it aggregates its own slot, else to the slot's aggregator.
    pub(super) fn deliver(&mut self, update: DeltaToSend, now: u64) {
        let me = self.me();
        let Some(open) = self.phase.open() else { return };
        let to = match open.plan.destination(&me) {
            Some(Destination::Slot(slot)) => open.plan.slots[slot].aggregator(),
            Some(Destination::Ring(_)) => return self.contribute_to_ring(update, now),
            None => {
                return self.log(Level::Warn, update.round, "the plan sends this update nowhere");
            }
        };
        if to != me {
            let until_ms = self.phase.open().map_or(now, |o| o.deadline_ms);
            self.set_own(Own::Sent);
            return self.effects.push(Effect::SendDelta { to, delta: update, until_ms });
        }
        let learns_from_feedback = self.learns_from_feedback();
        let folded = self.phase.open_mut().and_then(|open| {
            let slot = open.slots.iter_mut().find(|s| s.direct.contains(&me))?;
            let folded = slot.accept_own(me, update.samples, &update.values, &update.base);
            if folded.is_ok() && learns_from_feedback {
                slot.note_feedback(me, update.metrics.loss, now);
            }
            Some(folded)
        });
        match folded {
            Some(Ok(())) => {
                self.last_update = None;
                self.set_own(Own::Folded);
                if self.verifiable() {
                    // Kept for auditors as an f32 payload: its hash is the one the result lists.
                    let hash = fedmesh_protocol::tensor::hash_f32(&update.values);
                    self.keep_contributions(update.round, vec![hash], Some(update.values), now);
                }
                self.finish_complete_slots(now);
            }
            Some(Err(refused)) => self.log(Level::Warn, update.round, refused.detail),
            None => self.log(Level::Warn, update.round, "no slot here takes this member's update"),
        }
    }

    /// Training on the round's base gave non-finite values: the global model diverged, and no
    /// honest update can be made from it, so the job ends here with that reason.
    fn fail_diverged(&mut self, round: Round) {
        let reason = format!(
            "the global model diverged: local training on round {round}'s base model gives \
             non-finite values (a robust strategy resists poisoned updates; a smaller lr helps a \
             model that overshoots)"
        );
        self.log(Level::Warn, round, reason.clone());
        self.end(RunStatus::Failed(reason));
    }

    /// A verified update for a slot this member aggregates (or for the next round, kept until
    /// its opening arrives).
    pub(super) fn on_update(
        &mut self,
        signer: MemberId,
        update: Update,
        values: UpdateValues,
        now: u64,
    ) -> Result<(), Refusal> {
        if !self.state.members.contains(&signer) {
            return Err(Refusal::new(Reason::NotAMember, format!("{signer} is not a member")));
        }
        if self.plans_provisionally(&update) {
            self.keep_early(EarlyUpdate { signer, update, values });
            return Ok(());
        }
        if let Update::Chunk(chunk) = &update {
            return self.on_chunk(signer, chunk.clone(), values.decoded()?, now);
        }
        if self.keeps_early(&update) {
            self.keep_early(EarlyUpdate { signer, update, values });
            return Ok(());
        }
        self.fold(signer, update, values, now)
    }

    /// The updates kept for a round whose opening had not arrived, or whose base this member
    /// did not hold: taken in now.
    pub(super) fn take_early_updates(&mut self, now: u64) {
        for early in std::mem::take(&mut self.early) {
            let round = early.update.round();
            if let Err(refused) = self.on_update(early.signer, early.update, early.values, now) {
                self.log(Level::Warn, round, refused.detail);
            }
        }
    }

    /// Whether this member follows the update's opening without holding its base yet: its plan
    /// of the round is provisional until it takes the base's result (`replan_open`), so the
    /// update is kept until then rather than refused by a ring or slot it may not be in.
    fn plans_provisionally(&self, update: &Update) -> bool {
        self.phase.open().is_some_and(|open| {
            open.round == update.round()
                && open.base == update.base_model()
                && open.base != self.state.model
        })
    }

    /// Whether an update is for a round whose opening this member has not seen while it
    /// collects nothing: a slot's aggregator may hear an opening after its trainers, and even
    /// the result before it, whose model the update then trained on (gossip takes other paths
    /// than direct messages, and a large opening is verified longer than a small result).
    /// The next round's update must build on this member's model; one for the round after
    /// cannot be checked until the result in between is taken, and is judged then.
    fn keeps_early(&self, update: &Update) -> bool {
        let completed = self.state.completed_round;
        let next = update.round() == completed + 1 && update.base_model() == self.state.model;
        let after_next = update.round() == completed + 2;
        let collecting = self.phase.open().is_some_and(|o| !o.slots.is_empty());
        let unseen = self.phase.open().is_none_or(|o| o.round < update.round());
        (next || after_next) && unseen && !collecting && self.is_active()
    }

    /// Folds an update into the slot expecting it, finishing the slot once complete (its values
    /// are dropped first: a large model's last delta is not held beside the new model).
    fn fold(
        &mut self,
        signer: MemberId,
        update: Update,
        values: UpdateValues,
        now: u64,
    ) -> Result<(), Refusal> {
        let job = self.setup.job;
        if let Some(detail) = self.overweight(&signer, &update) {
            return Err(Refusal::new(Reason::InflatedSamples, detail));
        }
        refuse_huge_values(&values)?;
        let learns_from_feedback = self.learns_from_feedback();
        let Some(open) = self.phase.open_mut().filter(|o| !o.slots.is_empty()) else {
            let detail = format!("this member collects no updates for job {job} now");
            return Err(Refusal::new(Reason::NotAggregating, detail));
        };
        let index = open.slots.iter().position(|s| s.expects(&signer, &update)).unwrap_or(0);
        let slot = &mut open.slots[index];
        match &update {
            Update::Delta(delta) => {
                match &values {
                    UpdateValues::Decoded(values) => slot.accept_delta(signer, delta, values)?,
                    UpdateValues::Encoded(encoded) => {
                        slot.accept_encoded_delta(signer, delta, &encoded.decoder()?)?
                    }
                }
                if learns_from_feedback {
                    slot.note_feedback(signer, delta.metrics.loss, now);
                }
            }
            Update::Partial(partial) => slot.accept_partial(signer, partial, &values.decoded()?)?,
            Update::Chunk(_) => {
                return Err(Refusal::new(Reason::WrongKind, "a ring chunk for a slot"));
            }
        }
        drop(values);
        self.finish_complete_slots(now);
        Ok(())
    }

    /// What an update claims beyond the weights its contributors may have: a delta weighing
    /// more than its member's bound, or a partial aggregate giving one of its contributions
    /// more than that member's (a group aggregator cannot reweigh honest members' updates).
    fn overweight(&self, signer: &MemberId, update: &Update) -> Option<String> {
        let claims: Vec<(MemberId, u64)> = match update {
            Update::Delta(delta) => vec![(*signer, delta.samples)],
            Update::Partial(partial) => {
                partial.contributions.iter().map(|c| (c.member, c.samples)).collect()
            }
            Update::Chunk(_) => Vec::new(),
        };
        claims.into_iter().find_map(|(member, samples)| {
            let bound = self.weight_bound(&member);
            (samples > bound).then(|| {
                format!(
                    "{signer}'s update weighs {member} at {samples} samples, more than its {bound}"
                )
            })
        })
    }

    /// The most samples a member's update may weigh: what it declared when it joined, and the
    /// job's cap (one member cannot make the global update its own by claiming more).
    pub(super) fn weight_bound(&self, member: &MemberId) -> u64 {
        let declared = self.state.members.declared_samples(member).unwrap_or(0);
        let cap = self.setup.spec.participation.max_samples.unwrap_or(u64::MAX);
        declared.min(cap)
    }

    /// A member left (its leave signed): the round in progress waits for it no longer. The
    /// slots this member aggregates stop expecting its update or its slot's partial aggregate
    /// (and finish if that was the last missing). A round whose ring it was in, or one of whose
    /// slots it aggregated, cannot finish: its leader opens it again at once over the members
    /// live (the ring formed, the slot's aggregator elected, without the leaver). A round it
    /// opened, or whose leader the members live now elect no more, is let go, so that the next
    /// member of the failover order opens it again at once rather than at its deadline.
    pub(super) fn round_without(&mut self, leaver: &MemberId, now: u64) {
        let Some(open) = self.phase.open() else { return };
        let (round, opener, leading) = (open.round, open.opener, open.leading.is_some());
        let in_a_ring = open.plan.rings.iter().any(|r| r.order.contains(leaver));
        let aggregates = open.plan.slots.iter().any(|s| s.aggregator() == *leaver);
        let broken = in_a_ring || aggregates;
        if !leading
            && (opener == *leaver || (broken && self.elected_leader(round, now) != Some(opener)))
        {
            self.log(
                Level::Info,
                round,
                format!("{leaver} left; electing the round's leader again"),
            );
            self.phase = Phase::Waiting;
            self.next_open_check_ms = now;
            return self.wake_at(now);
        }
        let Some(open) = self.phase.open_mut() else { return };
        if leading && broken {
            open.deadline_ms = now;
            return self.wake_at(now);
        }
        for slot in &mut open.slots {
            slot.forget_sender(leaver);
        }
        self.finish_complete_slots(now);
    }

    /// Finishes the slots that have every input.
    pub(super) fn finish_complete_slots(&mut self, now: u64) {
        loop {
            let Some(open) = self.phase.open() else { return };
            let done = open.slots.iter().find(|s| s.complete() && !s.contributions.is_empty());
            let Some((slot, top)) = done.map(|s| (s.slot, s.parent.is_none())) else { return };
            if top && !self.optimizer_ready(now) {
                return; // closed once the optimizer's state is here
            }
            self.finish_slot(slot, now);
        }
    }

    /// Lower slots whose time is up send what they have.
    fn check_slot_deadlines(&mut self, now: u64) {
        let Some(open) = self.phase.open() else { return };
        let due: Vec<usize> = open
            .slots
            .iter()
            .filter(|s| s.parent.is_some() && now >= s.deadline_ms)
            .map(|s| s.slot)
            .filter(|slot| !self.secure_under_way(*slot, now))
            .collect();
        for slot in due {
            self.finish_slot(slot, now);
        }
    }

    /// A slot is done: the top closes the round, a lower slot sends its partial aggregate up.
    fn finish_slot(&mut self, slot: usize, now: u64) {
        let Some(open) = self.phase.open_mut() else { return };
        let Some(position) = open.slots.iter().position(|s| s.slot == slot) else { return };
        if open.slots[position].parent.is_none() {
            return self.close_round(now);
        }
        let (round, deadline_ms) = (open.round, open.deadline_ms);
        let collecting = open.slots.remove(position);
        if collecting.contributions.is_empty() {
            return self.log(Level::Warn, round, format!("no update reached slot {}", slot));
        }
        let (base, opened_at_ms, group) =
            (collecting.base, collecting.opened_at_ms, collecting.label.clone());
        let Some(to) = collecting.parent else { return };
        let finished = collecting
            .finish()
            .and_then(|(sum, contributions)| Ok((sum.mean()?, sum.total_weight, contributions)));
        let (mean, total_weight, contributions) = match finished {
            Ok(finished) => finished,
            Err(error) => return self.log(Level::Warn, round, format!("cannot combine: {error}")),
        };
        let partial = PartialToSend {
            round,
            base,
            opened_at_ms,
            group,
            mean: Arc::new(mean),
            total_weight,
            contributions,
        };
        if to == self.me() {
            return self.fold_own_partial(partial, now);
        }
        self.effects.push(Effect::SendPartial { to, partial, until_ms: deadline_ms });
    }

    /// A partial aggregate for a slot this member also aggregates, folded in directly.
    pub(super) fn fold_own_partial(&mut self, partial: PartialToSend, now: u64) {
        let body = fedmesh_protocol::message::PartialAggregate {
            job: self.setup.job,
            round: partial.round,
            base_model: partial.base,
            opened_at_ms: partial.opened_at_ms,
            group: partial.group.clone(),
            aggregator: self.me(),
            mean: fedmesh_protocol::tensor::PayloadRef {
                hash: fedmesh_protocol::tensor::hash_f32(&partial.mean),
                encoding: fedmesh_protocol::tensor::TensorEncoding::F32Le,
                params: partial.mean.len() as u64,
                bytes: partial.mean.len() as u64 * 4,
            },
            total_weight: partial.total_weight,
            contributions: partial.contributions,
        };
        if let Err(refused) =
            self.fold(self.me(), Update::Partial(body), partial.mean.clone().into(), now)
        {
            self.log(Level::Warn, partial.round, refused.detail);
        }
    }

    /// At the led round's deadline: close it at quorum (of the trainers still live), else open
    /// it again over the members live now and those whose updates it holds (a lost aggregator
    /// is replaced; trainers send again), or let go of it when this member no longer leads it.
    /// In an orchestrated job the coordinator assigns it again.
    fn check_leader_deadline(&mut self, now: u64) {
        let Some(open) = self.phase.open() else { return };
        let Some(leading) = open.leading.as_ref() else { return };
        let top = open.slots.iter().find(|s| s.parent.is_none());
        if now < open.deadline_ms || top.is_some_and(|top| self.secure_under_way(top.slot, now)) {
            return;
        }
        let (round, retries) = (open.round, leading.retries + 1);
        let (has_top, received) = (top.is_some(), top.map_or(0, |top| top.contributions.len()));
        if has_top && received > 0 && (received >= leading.required || self.is_async()) {
            // (An asynchronous version closes at its deadline with what arrived.)
            return self.close_round(now);
        }
        if self.orchestrated(now) {
            return; // short of its quorum: the coordinator assigns the round again
        }
        let holding: Vec<MemberId> = open
            .slots
            .iter()
            .flat_map(|slot| slot.contributions.iter().map(|c| c.member))
            .collect();
        let mut required = leading.required;
        if let Some((plan, _)) = self.live_plan(round, now) {
            if plan.leader() != Some(self.me()) {
                return self.let_go(round, "this member no longer leads it");
            }
            required = self.required_updates(plan.trainers.len());
            let central = plan.slots.len() == 1 && plan.rings.is_empty();
            if has_top && central && received >= required && received > 0 {
                // The updates in are a quorum of the trainers still live.
                return self.close_round(now);
            }
        }
        let minimum = (self.setup.spec.participation.min_participants as usize).max(1);
        if has_top && retries >= DEADLINES_BEFORE_CLOSING_SHORT && received >= minimum {
            let why =
                format!("closing with {received} of {required} updates after {retries} deadlines");
            self.log(Level::Warn, round, why);
            return self.close_round(now);
        }
        // Opened again over the live members and those whose updates it holds: none is dropped.
        let Some((plan, members)) = self.reopening_plan(round, holding, now) else {
            return self.let_go(round, "too few live members");
        };
        if plan.leader() != Some(self.me()) {
            return self.let_go(round, "this member no longer leads it");
        }
        let required = self.required_updates(plan.trainers.len());
        self.log(
            Level::Warn,
            round,
            format!("incomplete at its deadline ({received} of {required}); opening it again"),
        );
        let members = members.iter().map(|m| m.id).collect();
        self.announce_opening(round, members, plan, Leading { required, retries }, now);
    }

    fn let_go(&mut self, round: Round, why: &str) {
        self.log(Level::Warn, round, format!("round incomplete at its deadline; {why}"));
        self.phase = Phase::Waiting;
    }

    /// A round followed past its deadline and the grace its leader has to open it again is
    /// forgotten when its leader went silent or no longer leads it here, so that the member the
    /// plan elects now opens it.
    fn forget_lost_opener(&mut self, now: u64) {
        let Some(open) = self.phase.open() else { return };
        if now <= open.deadline_ms + REOPEN_GRACE_MS || open.leading.is_some() {
            return;
        }
        if self.orchestrated(now) {
            return; // the coordinator assigns the round again
        }
        let (round, opener) = (open.round, open.opener);
        let alive = self.is_live(&opener, now);
        if !alive || self.elected_leader(round, now) != Some(opener) {
            self.log(Level::Warn, round, format!("leader {opener} lost; electing another"));
            self.phase = Phase::Waiting;
        }
    }

    /// Finishes the top slot: the new model is made and handed over to be stored.
    /// A job with a server optimizer closes once the state it resumes from is here (asked for
    /// meanwhile): when it arrives, or at the next deadline check.
    pub(super) fn close_round(&mut self, now: u64) {
        if !self.optimizer_ready(now) {
            return;
        }
        let Phase::Open(open) = std::mem::take(&mut self.phase) else { return };
        let OpenRound { round, base, mut slots, opening, .. } = *open;
        let Some(position) = slots.iter().position(|s| s.parent.is_none()) else { return };
        let top = slots.swap_remove(position);
        let feedback_seen = top.feedback.clone();
        match self.make_model(top) {
            Ok((params, contributions, optimizer)) => {
                let params = Arc::new(params);
                let store = Effect::StoreModel {
                    round,
                    params: params.clone(),
                    optimizer: optimizer.clone(),
                };
                self.effects.push(store);
                let feedback = self.feedback_on(&feedback_seen, &contributions);
                self.phase = Phase::Closing(Box::new(Closing {
                    round,
                    base,
                    params,
                    contributions,
                    feedback,
                    members: opening.members.clone(),
                    optimizer,
                }));
                self.log(Level::Info, round, "closed; storing the new model");
            }
            Err(error) => {
                self.log(Level::Warn, round, format!("cannot aggregate: {error}"));
                self.phase = Phase::Waiting;
                self.wake_at(now);
            }
        }
    }
}

/// The largest magnitude a value of an update (a delta, a partial aggregate, a ring chunk) may
/// have: a model's parameters move by far less in a round, and one update of 10³⁰ in each place
/// takes a FedAvg model to chance for good however little it weighs.
pub const MAX_UPDATE_MAGNITUDE: f32 = 1e6;

/// Refuses an update with a value past `MAX_UPDATE_MAGNITUDE` (decoding refused the ones
/// that are not finite already).
pub(super) fn refuse_huge_values(values: &UpdateValues) -> Result<(), Refusal> {
    values.refuse_past(MAX_UPDATE_MAGNITUDE)
}

/// The seed of a trainer's noise share in a round's opening: its own secret, with the round and
/// the opening (a round opened again draws afresh).
pub(super) fn noise_share_seed(
    noise_key: &NoiseSeed,
    round: Round,
    opened_at_ms: u64,
) -> NoiseSeed {
    let mut material = b"trainer noise share".to_vec();
    material.extend_from_slice(noise_key);
    for word in [round, opened_at_ms] {
        material.extend_from_slice(&word.to_le_bytes());
    }
    ContentHash::of(&material).0
}
