//! A member's side of one job as a sans-IO state machine: it is fed verified messages, the
//! clock and the results of the work it asked for ([`Event`]), and answers with what its driver
//! must do ([`Effect`]). Every rule of a round lives in this module and its children.

mod gossip;
mod io;
mod phase;
mod results;
mod ring;
mod rounds;

pub use io::*;
pub use phase::{Closing, Leading, OpenRound, Own, Phase};

use crate::cadence::Cadence;
use crate::records::{RoundRecord, RunState, RunStatus};
use crate::shared;
use fedmesh_protocol::ids::{ContentHash, JobId, MemberId, Round};
use fedmesh_protocol::message::{AggregateReady, Heartbeat, Join, RoundOpen};
use fedmesh_protocol::spec::JobSpec;
use fedmesh_topologies::{MemberInfo, RoundPlan, Selection, Tag};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// How often the machine wants a tick while it waits for nothing in particular.
const IDLE_WAKE_MS: u64 = 200;
/// Most round messages held until the next join.
const MAX_HELD: usize = 16;
/// Most updates kept for a round whose opening has not arrived.
const MAX_EARLY_UPDATES: usize = 64;
/// How many round plans are kept (the newest): a plan over a thousand members costs
/// milliseconds, and one round's plan is asked for at every opening, result and deadline.
const PLANS_KEPT: usize = 4;
/// How often a waiting member checks whether the plan elects it to open the next round.
const OPEN_CHECK_MS: u64 = 1_000;

/// Who this member is and what job it runs.
#[derive(Debug, Clone)]
pub struct Setup {
    pub me: MemberId,
    pub job: JobId,
    pub spec: JobSpec,
    pub tag: Tag,
    /// Its `groupBy` label and the roles it accepts.
    pub group: String,
    pub roles: Vec<String>,
    /// How many samples its local training data has.
    pub samples: u64,
}

/// What a member persists: its state, every round it recorded, and the last result it
/// announced (a round it closed but was stopped before taking is taken on restart).
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub state: RunState,
    pub rounds: Vec<RoundRecord>,
    pub announced: Option<AggregateReady>,
}

/// A round message this member's view of the membership cannot judge yet.
#[derive(Debug, Clone)]
enum Held {
    Open(Arc<RoundOpen>),
    Result(Arc<AggregateReady>),
}

/// An update that arrived before the opening of its round.
struct EarlyUpdate {
    signer: MemberId,
    update: Update,
    values: Arc<Vec<f32>>,
}

/// A member's side of one job.
pub struct Member {
    setup: Setup,
    state: RunState,
    /// The decoded global model `state.model`.
    params: Arc<Vec<f32>>,
    phase: Phase,
    rounds: BTreeMap<Round, RoundRecord>,
    heartbeat_sequence: u64,
    /// When this member joined (or rejoined after a restart).
    joined_ms: u64,
    last_heartbeat_ms: u64,
    last_join_ms: u64,
    held: VecDeque<(MemberId, Held)>,
    early: VecDeque<EarlyUpdate>,
    /// The round and base this member trained on, so it trains once per round.
    trained: Option<(Round, ContentHash)>,
    /// This member's last update and the opening it answered (opener, time): sent again when
    /// the round is opened again by another opening.
    last_update: Option<(DeltaToSend, (MemberId, u64))>,
    /// The result of the last round this member closed, and when it last went out.
    announced: Option<AggregateReady>,
    announced_ms: u64,
    /// The newest result taken from another member, with its signer, to pass on.
    taken: Option<(MemberId, Arc<AggregateReady>)>,
    /// When this member, behind the others, last asked for their newest result.
    caught_up_asked_ms: u64,
    /// Models being fetched, with the round each is the result of.
    fetching: BTreeMap<ContentHash, Round>,
    /// The newest round plans, by round and the members planned over (sorted by key).
    plans: VecDeque<(Round, Arc<[MemberInfo]>, Arc<RoundPlan>)>,
    /// The furthest round any member's heartbeat named.
    furthest_heard: Round,
    /// A join arrived while this member's own join was too recent to repeat: it goes out
    /// again once the cadence's echo interval passed, so every newcomer hears of every member.
    echo_due: bool,
    /// When a waiting member next checks whether it opens the next round.
    next_open_check_ms: u64,
    /// What changed and is not persisted yet: the state now (persisted when the event is
    /// handled), or only the membership and evaluations (persisted with the next heartbeat or
    /// state change: a snapshot copies the whole membership, and a thousand-member job's
    /// members each took one every few ticks).
    unsaved: Unsaved,
    effects: Vec<Effect>,
}

/// What a member has not persisted yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Unsaved {
    Nothing,
    /// Changes a crash may lose: members are heard again from their repeated joins, and
    /// evaluations are reported again by their members.
    Minor,
    /// Changes that must be persisted before their effects are carried out.
    State,
}

impl Member {
    /// A member that joins the job now, holding its initial model.
    pub fn join(
        setup: Setup,
        model: ContentHash,
        params: Arc<Vec<f32>>,
        now: u64,
    ) -> (Self, Vec<Effect>) {
        let state = RunState {
            status: RunStatus::Waiting,
            completed_round: 0,
            model,
            members: Default::default(),
        };
        let snapshot = Snapshot { state, rounds: Vec::new(), announced: None };
        Self::restore(setup, snapshot, params, now)
    }

    /// A member rebuilt from what it persisted, with the parameters of its model: it joins
    /// again if the job is still on, and takes a result it announced but never took.
    pub fn restore(
        setup: Setup,
        snapshot: Snapshot,
        params: Arc<Vec<f32>>,
        now: u64,
    ) -> (Self, Vec<Effect>) {
        let rounds = snapshot.rounds.into_iter().map(|r| (r.round, r)).collect();
        let mut member = Self {
            setup,
            state: snapshot.state,
            params,
            phase: Phase::Waiting,
            rounds,
            heartbeat_sequence: 0,
            joined_ms: now,
            last_heartbeat_ms: 0,
            last_join_ms: 0,
            held: VecDeque::new(),
            early: VecDeque::new(),
            trained: None,
            last_update: None,
            announced: snapshot.announced,
            announced_ms: 0,
            taken: None,
            caught_up_asked_ms: 0,
            fetching: BTreeMap::new(),
            plans: VecDeque::new(),
            furthest_heard: 0,
            echo_due: false,
            next_open_check_ms: 0,
            unsaved: Unsaved::Nothing,
            effects: Vec::new(),
        };
        if member.is_active() {
            member.publish_join(now);
            member.persist();
            let unfinished =
                member.announced.clone().filter(|r| r.round > member.completed_round());
            if let Some(ready) = unfinished {
                let me = member.me();
                member.take_result(me, Arc::new(ready), now);
            }
        } else {
            member.phase = Phase::Ended;
        }
        member.wake_at(now + IDLE_WAKE_MS);
        let effects = member.take_effects();
        (member, effects)
    }

    /// The effects of the event just handled, a snapshot first if the state changed.
    fn take_effects(&mut self) -> Vec<Effect> {
        if self.unsaved == Unsaved::State {
            self.unsaved = Unsaved::Nothing;
            let snapshot = self.snapshot();
            self.effects.insert(0, Effect::Persist(snapshot));
        }
        std::mem::take(&mut self.effects)
    }

    /// Feeds one event to the machine and returns what its driver must do.
    pub fn handle(&mut self, event: Event, now: u64) -> Vec<Effect> {
        match event {
            Event::Tick => self.on_tick(now),
            Event::Gossip { signer, message } => self.on_gossip(signer, message, now),
            Event::Update { signer, update, values, request } => {
                let outcome = self.on_update(signer, update, values, now);
                self.effects.push(Effect::Answer { request, outcome });
            }
            Event::ResultAsked { from, round, request } => self.serve_result(from, round, request),
            Event::Trained { round, base, outcome } => self.on_trained(round, base, outcome, now),
            Event::Fetched { model, outcome } => self.on_fetched(model, outcome, now),
            Event::Stored { round, model } => self.on_stored(round, model, now),
            Event::Evaluated { round, model, metrics } => {
                self.on_evaluated(round, model, metrics, now)
            }
            Event::LeaveRequested { reason } => self.leave(reason, now),
        }
        self.take_effects()
    }

    pub fn me(&self) -> MemberId {
        self.setup.me
    }

    pub fn job(&self) -> JobId {
        self.setup.job
    }

    pub fn spec(&self) -> &JobSpec {
        &self.setup.spec
    }

    pub fn status(&self) -> &RunStatus {
        &self.state.status
    }

    pub fn state(&self) -> &RunState {
        &self.state
    }

    pub fn completed_round(&self) -> Round {
        self.state.completed_round
    }

    pub fn model(&self) -> ContentHash {
        self.state.model
    }

    pub fn params(&self) -> &Arc<Vec<f32>> {
        &self.params
    }

    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    pub fn rounds(&self) -> &BTreeMap<Round, RoundRecord> {
        &self.rounds
    }

    /// Whether the member still takes part in the job.
    pub fn is_active(&self) -> bool {
        matches!(self.state.status, RunStatus::Waiting | RunStatus::Running)
    }

    /// What it would persist now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            state: self.state.clone(),
            rounds: self.rounds.values().cloned().collect(),
            announced: self.announced.clone(),
        }
    }

    /// How often this job's members speak, and how long silence is tolerated.
    fn cadence(&self) -> Cadence {
        Cadence::for_members(self.state.members.len())
    }

    /// The members heard from recently enough to be planned with, sorted by key.
    fn live(&mut self, now: u64) -> Arc<[MemberInfo]> {
        self.state.members.live(now)
    }

    fn is_live(&self, member: &MemberId, now: u64) -> bool {
        self.state.members.is_live(member, now)
    }

    /// The plan of `round` over `members` (a shared list sorted by key), as every member
    /// computes it (kept for reuse: the live members' view is shared, so asking again while it
    /// holds is one pointer comparison; and shared process-wide with other members' machines).
    fn plan_over(&mut self, round: Round, members: Arc<[MemberInfo]>) -> Option<Arc<RoundPlan>> {
        let kept = self.plans.iter().find(|(r, planned, _)| {
            *r == round && (Arc::ptr_eq(planned, &members) || **planned == *members)
        });
        if let Some((_, _, plan)) = kept {
            return Some(plan.clone());
        }
        let selection = Selection::from_participation(&self.setup.spec.participation);
        let (tag, job) = (&self.setup.tag, &self.setup.job);
        let plan = shared::plan(tag, job, round, &members, &selection).ok()?;
        if self.plans.len() >= PLANS_KEPT {
            self.plans.pop_front();
        }
        self.plans.push_back((round, members, plan.clone()));
        Some(plan)
    }

    /// The plan of `round` over the members live now, if there are enough of them, with them.
    fn live_plan(&mut self, round: Round, now: u64) -> Option<(Arc<RoundPlan>, Arc<[MemberInfo]>)> {
        let live = self.live(now);
        if live.len() < self.setup.spec.participation.min_participants as usize {
            return None;
        }
        let plan = self.plan_over(round, live.clone())?;
        Some((plan, live))
    }

    /// The aggregator this member's live plan elects for `round`.
    fn elected_leader(&mut self, round: Round, now: u64) -> Option<MemberId> {
        self.live_plan(round, now).and_then(|(plan, _)| plan.leader())
    }

    /// The members a list names, as this member knows them; the first unknown one otherwise.
    /// (Sorted by key: the live members' own view when the list names exactly them, as an
    /// opening or a result made while every member agrees does, so nothing is copied.)
    fn named(&mut self, members: &[MemberId], now: u64) -> Result<Arc<[MemberInfo]>, MemberId> {
        let live = self.live(now);
        if names_exactly(members, &live) {
            return Ok(live);
        }
        if let Some(unknown) = self.unknown_among(members, now) {
            return Err(unknown);
        }
        let mut ids = members.to_vec();
        ids.sort_unstable();
        ids.dedup();
        if names_exactly(&ids, &live) {
            return Ok(live);
        }
        let infos = ids.iter().filter_map(|id| self.state.members.info(id)).collect();
        Ok(shared::member_list(infos))
    }

    /// The first member of a list this member does not know (none when the list names the live
    /// members in order, as an opening made while every member agrees does: no lookups then).
    fn unknown_among(&mut self, members: &[MemberId], now: u64) -> Option<MemberId> {
        if names_exactly(members, &self.live(now)) {
            return None;
        }
        members.iter().find(|id| !self.state.members.contains(id)).copied()
    }

    /// Notes that `member` holds `model`, the result of `round`.
    fn record_holder(&mut self, member: MemberId, round: Round, model: ContentHash) {
        self.state.members.holds(&member, round, model);
    }

    /// The state changed: it is persisted before the event's other effects are carried out.
    fn persist(&mut self) {
        self.unsaved = Unsaved::State;
    }

    /// The membership or the evaluations changed: persisted with the next heartbeat.
    fn persist_lazily(&mut self) {
        self.unsaved = self.unsaved.max(Unsaved::Minor);
        if !self.is_active() {
            self.persist(); // no tick comes any more
        }
    }

    fn wake_at(&mut self, at: u64) {
        self.effects.push(Effect::WakeAt(at));
    }

    fn log(&mut self, level: Level, round: Round, text: impl Into<Text>) {
        self.effects.push(Effect::Log(Notice { level, round, text: text.into() }));
    }

    fn publish_join(&mut self, now: u64) {
        self.last_join_ms = now;
        self.echo_due = false;
        let join = Join {
            job: self.setup.job,
            member: self.setup.me,
            group: self.setup.group.clone(),
            roles: self.setup.roles.clone(),
            samples: self.setup.samples,
            sent_at_ms: now,
        };
        self.state.members.join(&join, now);
        self.effects.push(Effect::Publish(Publish::Join(join)));
    }

    /// Periodic work: heartbeats, repeated joins, deadlines, opening the next round.
    fn on_tick(&mut self, now: u64) {
        if !self.is_active() {
            return;
        }
        let me = self.me();
        let cadence = self.cadence();
        if now.saturating_sub(self.last_heartbeat_ms) >= cadence.heartbeat_ms() {
            // Its own sign of life as others see it: it stays live here as long as there (every
            // tick did it before, a lookup in the membership a thousand times a second).
            self.state.members.seen(&me, now);
            if self.unsaved == Unsaved::Minor {
                self.persist();
            }
            self.last_heartbeat_ms = now;
            self.heartbeat_sequence += 1;
            let heartbeat = Heartbeat {
                job: self.setup.job,
                member: me,
                round: self.state.completed_round + 1,
                model: self.state.model,
                sequence: self.heartbeat_sequence,
                sent_at_ms: now,
            };
            self.effects.push(Effect::Publish(Publish::Heartbeat(heartbeat)));
        }
        let since_join = now.saturating_sub(self.last_join_ms);
        let echo = self.echo_due && since_join >= cadence.join_echo_ms();
        if since_join >= cadence.rejoin_ms() || echo {
            self.publish_join(now);
        }
        self.tick_round(now);
        let next_beat = (self.last_heartbeat_ms + cadence.heartbeat_ms())
            .min(self.last_join_ms + cadence.rejoin_ms());
        self.wake_at(next_beat.min(now + IDLE_WAKE_MS));
    }

    /// This member's operator leaves the job: a signed leave, and nothing more of the round.
    fn leave(&mut self, reason: String, now: u64) {
        if !self.is_active() {
            return;
        }
        self.end(RunStatus::Left);
        let leave = fedmesh_protocol::message::Leave {
            job: self.setup.job,
            member: self.setup.me,
            reason,
            sent_at_ms: now,
        };
        self.effects.push(Effect::Publish(Publish::Leave(leave)));
    }

    /// The job is over for this member, with `status`.
    fn end(&mut self, status: RunStatus) {
        self.state.status = status;
        self.phase = Phase::Ended;
        self.early.clear();
        self.held.clear();
        self.persist();
    }
}

/// Whether a list of members is exactly `members`' keys, in their order.
fn names_exactly(list: &[MemberId], members: &[MemberInfo]) -> bool {
    list.len() == members.len() && members.iter().map(|m| m.id).eq(list.iter().copied())
}

#[cfg(test)]
mod tests;
