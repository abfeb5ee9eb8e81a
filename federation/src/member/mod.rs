//! A member's side of one job as a sans-IO state machine: it is fed verified messages, the
//! clock and the results of the work it asked for ([`Event`]), and answers with what its driver
//! must do ([`Effect`]). Every rule of a round lives in this module and its children.

mod asynchronous;
mod audit;
mod gossip;
mod io;
mod optimizer;
mod orchestrated;
mod phase;
mod pull;
mod reason;
mod results;
mod ring;
mod rounds;
mod secure;
mod selecting;

pub use audit::{MAX_AUDITS, MAX_CONDEMNED};
pub use io::*;
pub use phase::{Closing, Leading, LocalTraining, OpenRound, Own, Phase};
pub use reason::Reason;
pub use secure::recompute_secure;

use crate::cadence::Cadence;
use crate::records::{RoundRecord, RunState, RunStatus};
use crate::shared;
use fedmesh_aggregation::privacy::NoiseSeed;
use fedmesh_protocol::envelope::Signed;
use fedmesh_protocol::ids::{ContentHash, JobId, MemberId, Round};
use fedmesh_protocol::message::{
    AggregateReady, Assignment, EvalReport, Heartbeat, Join, RoundOpen, SecureAggregation, Ticket,
};
use fedmesh_protocol::spec::{Admission, JobSpec};
use fedmesh_topologies::{History, MemberInfo, RoundPlan, Tag};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

/// How often the machine wants a tick while it waits for nothing in particular.
const IDLE_WAKE_MS: u64 = 200;
/// How many results taken from other members a member keeps to serve: a member that missed
/// fewer rounds than this catches up one round at a time, each result building on the last.
pub const RESULTS_KEPT: usize = 8;
/// Most round messages held until the next join.
const MAX_HELD: usize = 16;
/// Most updates kept for a round whose opening has not arrived, and most of their values, in
/// models' worth.
const MAX_EARLY_UPDATES: usize = 1024;
const MAX_EARLY_MODELS: usize = 64;
/// Most values kept of those from one member, in models' worth: a trainer's delta, a group
/// aggregator's partial, or a ring predecessor's chunks of one round (2(n − 1) chunks of 1/n
/// of the model; it sends the first n − 1 before it needs one from this member, so a member
/// that follows the opening late, catching up, receives them all first). One member cannot
/// push the others' out.
const MAX_EARLY_MODELS_PER_MEMBER: usize = 2;
/// Most updates kept from one member: a ring predecessor's chunks of one round, in a ring of
/// up to 128 members.
const MAX_EARLY_PER_MEMBER: usize = 256;
/// How many round plans are kept (the newest): a plan over a thousand members costs
/// milliseconds, and one round's plan is asked for at every opening, result and deadline.
const PLANS_KEPT: usize = 4;
/// How often a waiting member checks whether the plan elects it to open the next round.
const OPEN_CHECK_MS: u64 = 1_000;
/// How long a member's view of the members must hold (no member learned or gone) before it
/// opens a round (see `Member::maybe_open`).
const VIEW_HOLD_MS: u64 = 2_000;
/// How long a leader waits at most for another member to hold the model it builds the next
/// round on (see `Member::model_spread`).
const SPREAD_WAIT_MS: u64 = 2_000;
/// How long held round messages wait for the joins of the members asked about before they are
/// judged again without them.
const ANSWER_WAIT_MS: u64 = 5_000;
/// How often at most a member that does not answer is asked for its join again.
const ASK_AGAIN_MS: u64 = 30_000;
/// Most members asked for their joins within `ASK_AGAIN_MS`: a heartbeat signed by a made-up
/// key, or an opening naming made-up members, costs one entry and one small message each, up to
/// this many (a member of a 10,000-member job misses about a hundred joins at 1% loss).
const MAX_ASKED: usize = 1_024;
/// A newcomer settles at least this long (its join's answers come back within a round trip)
/// and until it heard this many heartbeats (see `Member::settling`).
const SETTLE_MIN_MS: u64 = 5_000;
const SETTLE_HEARTBEATS: u32 = 8;
/// The longest a newcomer waits before its first heartbeat (see `first_heartbeat_after_ms`).
const FIRST_BEAT_SPREAD_MS: u64 = 10_000;
/// How long after its first heartbeat a newcomer sends its second (see `next_heartbeat_at`).
const SECOND_BEAT_MS: u64 = 2_000;
/// How long after a peer subscribes to the job's topic this member's join goes out again.
const JOIN_ECHO_DELAY_MS: u64 = 300;

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
    /// Whether peers can dial it directly (its join says so: elections prefer such members).
    pub reachable: bool,
    /// A secret of this member's, its DP noise is drawn from: the node draws it from the
    /// operating system's randomness, a simulator from its seed.
    pub noise_key: NoiseSeed,
    /// The owner's ticket admitting it, for a job that admits members by ticket.
    pub ticket: Option<Signed<Ticket>>,
    /// Its signing key, for the round keys of a secure-aggregation job (signed inside the
    /// message, so the round's leader can relay them unforged); none for any other job.
    pub identity: Option<Arc<fedmesh_protocol::identity::Identity>>,
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
    /// The coordinator's assignment (it is no member: only the members it names must be known).
    Assign(Arc<Assignment>),
}

/// A held round message, with the members it waits for: those it names (its signer among them)
/// whose joins this member has not heard. Each join heard is struck off, so a message naming
/// ten thousand members costs one lookup per join, not a look at all of them (in key order:
/// the members asked are asked in the same order in every run).
struct Waiting {
    signer: MemberId,
    held: Held,
    missing: BTreeSet<MemberId>,
}

/// An update that arrived before the opening of its round.
struct EarlyUpdate {
    signer: MemberId,
    update: Update,
    values: UpdateValues,
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
    /// Heartbeats heard from other members since this member joined (or restarted).
    heartbeats_heard: u32,
    /// Members heard from but not known, asked for their joins, with when.
    asked: BTreeMap<MemberId, u64>,
    /// When held round messages are judged again if the answers asked for are not all in.
    judge_held_at: Option<u64>,
    /// How many times this incarnation pulled the member list, when it next does, the member
    /// asked in the pull under way, and whether a pull found no member missed (see `pull`).
    pulls: u64,
    next_pull_ms: u64,
    pulling: Option<MemberId>,
    pulled_all: bool,
    held: VecDeque<Waiting>,
    early: VecDeque<EarlyUpdate>,
    /// Trainers' secure round keys for a round whose opening has not arrived (see `secure`).
    early_keys: VecDeque<(MemberId, SecureAggregation)>,
    /// Evaluation reports of rounds whose result this member has not taken yet.
    early_evals: VecDeque<EvalReport>,
    /// This member's local training in the round it follows, so it trains once per round.
    training: Option<LocalTraining>,
    /// This member's last update and the opening it answered (opener, time): sent again when
    /// the round is opened again by another opening.
    last_update: Option<(DeltaToSend, (MemberId, u64))>,
    /// An asynchronous job's update waiting for the next version (see `asynchronous`).
    pending: Option<DeltaToSend>,
    /// The result of the last round this member closed, and when it last went out.
    announced: Option<AggregateReady>,
    announced_ms: u64,
    /// The newest results taken from other members (`RESULTS_KEPT` at most), with their
    /// signers, to pass on to members that missed them.
    taken: VecDeque<(MemberId, Arc<AggregateReady>)>,
    /// The round whose result this member, behind the others, last asked for, and when.
    caught_up_asked: (Round, u64),
    /// Models being fetched, with the round each is the result of.
    fetching: BTreeMap<ContentHash, Round>,
    /// The newest round plans, by round and the members planned over (sorted by key), all with
    /// `vetted` as it is now.
    plans: VecDeque<(Round, Arc<[MemberInfo]>, Arc<RoundPlan>)>,
    /// Who is elected to aggregate ahead of the rest, sorted by key: the owner, and the members
    /// whose updates the held model's round counted (a key that joined and never had an update
    /// accepted, as a flood of fresh keys has not, aggregates only when no vetted member can).
    vetted: Arc<[MemberId]>,
    /// What the results this member took showed of each member, as a job's selector that
    /// learns from past rounds reads it (kept in memory only: rebuilt from the results taken
    /// after a restart).
    history: Arc<History>,
    /// The furthest round any member's heartbeat named.
    furthest_heard: Round,
    /// When a waiting member next checks whether it opens the next round.
    next_open_check_ms: u64,
    /// When this member adopted its current model.
    adopted_ms: u64,
    /// In orchestration mode: the coordinator's newest assignment, and when the coordinator was
    /// last heard (an assignment or its heartbeat; this member's start counts as one).
    assigned: Option<orchestrated::Assigned>,
    coordinator_seen_ms: u64,
    /// When this member last learned of a member, or of one leaving.
    view_changed_ms: u64,
    /// What changed and is not persisted yet: the state now (persisted when the event is
    /// handled), or only the membership and evaluations (persisted with the next heartbeat or
    /// state change: a snapshot copies the whole membership, and a thousand-member job's
    /// members each took one every few ticks).
    unsaved: Unsaved,
    /// Verifiable jobs: audits under way and decided, and the contributions kept for others'.
    audits: audit::Audits,
    /// The model a fraud proof sent this member back to, while its parameters are fetched: it
    /// neither trains nor opens a round until they are back.
    restoring: Option<ContentHash>,
    /// Secure-aggregation jobs: this member's side of the open round's secure aggregation.
    secure_state: secure::SecureState,
    /// Jobs with a server optimizer: the state this member holds, and the one it fetches.
    server: optimizer::ServerState,
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
            vetted: Vec::new(),
            excluded: Vec::new(),
            condemned: Vec::new(),
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
        let vetted = vetted_with_owner(&snapshot.state.vetted, &setup.spec.owner);
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
            heartbeats_heard: 0,
            asked: BTreeMap::new(),
            judge_held_at: None,
            pulls: 0,
            next_pull_ms: now + pull::FIRST_PULL_MS,
            pulling: None,
            pulled_all: false,
            held: VecDeque::new(),
            early: VecDeque::new(),
            early_keys: VecDeque::new(),
            early_evals: VecDeque::new(),
            training: None,
            last_update: None,
            pending: None,
            announced: snapshot.announced,
            announced_ms: 0,
            taken: VecDeque::new(),
            caught_up_asked: (0, 0),
            fetching: BTreeMap::new(),
            plans: VecDeque::new(),
            vetted,
            history: Arc::default(),
            furthest_heard: 0,
            next_open_check_ms: 0,
            adopted_ms: 0,
            assigned: None,
            coordinator_seen_ms: now,
            view_changed_ms: now,
            unsaved: Unsaved::Nothing,
            audits: audit::Audits::default(),
            restoring: None,
            secure_state: secure::SecureState::default(),
            server: optimizer::ServerState::default(),
            effects: Vec::new(),
        };
        if member.is_active() && member.completed_round() >= member.last_round() {
            // Stopped between taking the job's last model and recording its evaluation.
            let (round, model) = (member.completed_round(), member.model());
            let params = member.params.clone();
            member.effects.push(Effect::Evaluate { round, model, params });
        } else if member.is_active() {
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
            Event::JoinSent { signer, join, asks, heartbeat } => {
                self.on_join_sent(signer, join, asks, now);
                if let Some(beat) = heartbeat {
                    self.on_gossip(signer, Gossip::Heartbeat(beat), now);
                }
            }
            Event::Update { signer, update, values, request } => {
                let outcome = self.on_update(signer, update, values, now);
                self.effects.push(Effect::Answer { request, outcome });
            }
            Event::ResultAsked { from, round, request } => self.serve_result(from, round, request),
            Event::Trained { round, base, outcome } => self.on_trained(round, base, outcome, now),
            Event::Fetched { model, outcome } => self.on_fetched(model, outcome, now),
            Event::Stored { round, model, optimizer_state } => {
                self.on_stored(round, model, optimizer_state, now)
            }
            Event::OptimizerStateFetched { state, outcome } => {
                self.on_optimizer_state_fetched(state, outcome, now)
            }
            Event::Evaluated { round, model, metrics } => {
                self.on_evaluated(round, model, metrics, now)
            }
            Event::LeaveRequested { reason } => self.leave(reason, now),
            Event::ReachabilityChanged { reachable } => self.on_reachability(reachable, now),
            Event::PeerSubscribed { peer } => {
                if !self.state.members.contains(&peer) {
                    self.join_again_soon(now);
                }
            }
            Event::MembersAsked { from, digest } => self.on_members_asked(from, &digest, now),
            Event::MembersSent { from, members } => self.on_members_sent(from, &members, now),
            Event::Audited { model, outcome } => self.on_audited(model, outcome, now),
            Event::Secure { signer, message, request } => {
                let outcome = self.on_secure(signer, message, now);
                self.effects.push(Effect::Answer { request, outcome });
            }
            Event::ContributionAsked { from, hash, request } => {
                self.on_contribution_asked(from, hash, request, now)
            }
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

    /// The job's last round.
    pub fn last_round(&self) -> Round {
        self.setup.spec.hyperparameters.rounds
    }

    /// Whether the member still takes part in the job.
    pub fn is_active(&self) -> bool {
        matches!(self.state.status, RunStatus::Waiting | RunStatus::Running)
    }

    /// The bytes of the updates kept for a round whose opening has not arrived, which the
    /// driver charges to its memory budget while they are kept.
    pub fn early_bytes(&self) -> usize {
        self.early.iter().map(|early| early.values.held_bytes()).sum()
    }

    /// Drops the updates kept for a round whose opening has not arrived, when the driver cannot
    /// hold their bytes: the round goes on without them, as if they had come late.
    pub fn drop_early(&mut self) {
        if !self.early.is_empty() {
            let text = format!("dropped {} early updates: no memory for them", self.early.len());
            self.log(Level::Warn, self.state.completed_round + 1, text);
            self.early.clear();
        }
    }

    /// Keeps an update for a round whose opening has not arrived: the oldest of its member's go
    /// while the member would have more than [`MAX_EARLY_PER_MEMBER`] or
    /// [`MAX_EARLY_MODELS_PER_MEMBER`] models' worth kept, the oldest of all while all would be
    /// more than [`MAX_EARLY_UPDATES`] or [`MAX_EARLY_MODELS`] models' worth.
    fn keep_early(&mut self, early: EarlyUpdate) {
        let model = self.params.len().max(1);
        let signer = early.signer;
        let of_signer = |kept: &&EarlyUpdate| kept.signer == signer;
        let (mut count, mut values) = self
            .early
            .iter()
            .filter(of_signer)
            .fold((0, 0), |(count, values), kept| (count + 1, values + kept.values.len()));
        while count > 0
            && (count >= MAX_EARLY_PER_MEMBER
                || values + early.values.len() > MAX_EARLY_MODELS_PER_MEMBER * model)
        {
            let Some(oldest) = self.early.iter().position(|kept| of_signer(&kept)) else { break };
            let dropped = self.early.remove(oldest).map_or(0, |kept| kept.values.len());
            (count, values) = (count - 1, values - dropped);
        }
        let mut total: usize = self.early.iter().map(|kept| kept.values.len()).sum();
        while self.early.len() >= MAX_EARLY_UPDATES
            || (!self.early.is_empty() && total + early.values.len() > MAX_EARLY_MODELS * model)
        {
            total -= self.early.pop_front().map_or(0, |kept| kept.values.len());
        }
        self.early.push_back(early);
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
        self.state.members.cadence()
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
        let selection = self.selection();
        let (tag, job) = (&self.setup.tag, &self.setup.job);
        let planned = self.without_excluded(&members);
        let plan = shared::plan(
            tag,
            (job, &self.setup.spec.owner),
            round,
            &planned,
            &selection,
            &self.vetted,
        )
        .ok()?;
        if self.plans.len() >= PLANS_KEPT {
            self.plans.pop_front();
        }
        self.plans.push_back((round, members, plan.clone()));
        Some(plan)
    }

    /// The plan of `round` over `members` with aggregators elected among `vetted` first (not
    /// this member's own: those a result names, for a round whose predecessor it missed).
    fn plan_vetted(
        &self,
        round: Round,
        members: &Arc<[MemberInfo]>,
        vetted: &Arc<[MemberId]>,
    ) -> Option<Arc<RoundPlan>> {
        let selection = self.selection();
        let (tag, job) = (&self.setup.tag, &self.setup.job);
        let members = self.without_excluded(members);
        shared::plan(tag, (job, &self.setup.spec.owner), round, &members, &selection, vetted).ok()
    }

    /// `members` without those a fraud proof convicted (the same list when none is in it).
    fn without_excluded(&self, members: &Arc<[MemberInfo]>) -> Arc<[MemberInfo]> {
        if !members.iter().any(|m| self.is_excluded(&m.id)) {
            return members.clone();
        }
        let kept = members.iter().filter(|m| !self.is_excluded(&m.id)).cloned().collect();
        shared::member_list(kept)
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

    /// The plan of a round this member leads and opens again, over the live members and the
    /// members `holding` names (those whose updates it holds for the round: an update just
    /// received is a sign of life their heartbeats may not match yet, as at 200 members they
    /// come 20 s apart; and an opening without one of them drops every update held, since an
    /// aggregate cannot take one out). None when they are fewer than `min_participants`.
    fn reopening_plan(
        &mut self,
        round: Round,
        holding: impl IntoIterator<Item = MemberId>,
        now: u64,
    ) -> Option<(Arc<RoundPlan>, Arc<[MemberInfo]>)> {
        let live = self.live(now);
        let is_live = |member: &MemberId| live.binary_search_by(|m| m.id.cmp(member)).is_ok();
        let silent: Vec<MemberInfo> = holding
            .into_iter()
            .filter(|member| !is_live(member))
            .filter_map(|member| self.state.members.info(&member))
            .collect();
        let members = if silent.is_empty() {
            live
        } else {
            let mut members: Vec<MemberInfo> = live.iter().cloned().chain(silent).collect();
            members.sort_unstable_by_key(|m| m.id);
            members.dedup_by(|a, b| a.id == b.id);
            shared::member_list(members)
        };
        if members.len() < self.setup.spec.participation.min_participants as usize {
            return None;
        }
        let plan = self.plan_over(round, members.clone())?;
        Some((plan, members))
    }

    /// The aggregator this member's live plan elects for `round`.
    fn elected_leader(&mut self, round: Round, now: u64) -> Option<MemberId> {
        self.live_plan(round, now).and_then(|(plan, _)| plan.leader())
    }

    /// The members a list names, as this member knows them (those that left since too: a
    /// round opened just before a member left still names it); the first unknown one otherwise.
    /// (Sorted by key: the live members' own view when the list names exactly them, as an
    /// opening or a result made while every member agrees does, so nothing is copied.)
    fn named(&mut self, members: &[MemberId], now: u64) -> Result<Arc<[MemberInfo]>, MemberId> {
        let live = self.live(now);
        if names_exactly(members, &live) {
            return Ok(live);
        }
        let members_known = &self.state.members;
        let unknown =
            members.iter().find(|id| !members_known.contains(id) && !members_known.has_left(id));
        if let Some(unknown) = unknown {
            return Err(*unknown);
        }
        let mut ids = members.to_vec();
        ids.sort_unstable();
        ids.dedup();
        if names_exactly(&ids, &live) {
            return Ok(live);
        }
        let infos = ids.iter().filter_map(|id| self.state.members.info_even_if_left(id)).collect();
        Ok(shared::member_list(infos))
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

    /// Refuses the gossip message being handled: the driver counts it and does not pass it on.
    fn reject(&mut self, reason: Reason, detail: String) {
        self.effects.push(Effect::Rejected(Refusal::new(reason, detail)));
    }

    fn wake_at(&mut self, at: u64) {
        self.effects.push(Effect::WakeAt(at));
    }

    fn log(&mut self, level: Level, round: Round, text: impl Into<Text>) {
        self.effects.push(Effect::Log(Notice { level, round, text: text.into() }));
    }

    /// This member's join as sent now.
    fn own_join(&self, now: u64) -> Join {
        Join {
            job: self.setup.job,
            member: self.setup.me,
            group: self.setup.group.clone(),
            roles: self.setup.roles.clone(),
            samples: self.setup.samples,
            reachable: self.setup.reachable,
            sent_at_ms: now,
            ticket: self.setup.ticket.clone().map(Box::new),
        }
    }

    /// Its node learned whether peers can dial it: the join goes out again saying so, and the
    /// members take the new declaration into their plans.
    fn on_reachability(&mut self, reachable: bool, now: u64) {
        if self.setup.reachable != reachable && self.is_active() {
            self.setup.reachable = reachable;
            self.publish_join(now);
        }
    }

    fn publish_join(&mut self, now: u64) {
        self.last_join_ms = now;
        let join = self.own_join(now);
        self.state.members.join_own(&join, now);
        self.effects.push(Effect::Publish(Publish::Join(join)));
    }

    /// Sends this member's join to `to` alone: an answer (with its heartbeat, once it beats:
    /// one that holds its first back while it catches up is not planned with early; and from
    /// a member that completed the job, whose heartbeat tells one joining after the end that
    /// the job is past its rounds), or (`asks`) a question.
    fn send_join(&mut self, to: MemberId, asks: bool, now: u64) {
        let join = self.own_join(now);
        let running = self.is_active() || self.state.status == RunStatus::Completed;
        let beats = !asks && self.heartbeat_sequence > 0 && running;
        let heartbeat = beats.then(|| self.heartbeat(now));
        self.effects.push(Effect::SendJoin { to, join, asks, heartbeat });
    }

    /// Asks a member this one heard from but does not know for its join (its group, roles and
    /// samples, which only a join declares), at most once every `ASK_AGAIN_MS`. The question
    /// is this member's own join, so the two learn of each other at once. (Before, a member
    /// that learned of a member it did not know repeated its own join to the whole job: with
    /// 1% of copies lost, every member of a 10,000-member job missed about a hundred joins and
    /// learned of them from such repeats, which made it repeat its own, in waves of 10⁸
    /// deliveries that only one or two members needed each.) Says whether it asked.
    fn ask_for_join(&mut self, member: MemberId, now: u64) -> bool {
        let part = &self.setup.spec.participation;
        let unlisted = part.admission() == Admission::Allow && !part.allow.contains(&member);
        if member == self.me() || self.state.members.contains(&member) || unlisted {
            return false;
        }
        if self.asked.get(&member).is_some_and(|at| now < at + ASK_AGAIN_MS) {
            return false;
        }
        if self.asked.len() >= MAX_ASKED {
            self.asked.retain(|_, at| now < *at + ASK_AGAIN_MS);
            if self.asked.len() >= MAX_ASKED {
                return false;
            }
        }
        self.asked.insert(member, now);
        self.judge_held_at = Some(now + ANSWER_WAIT_MS);
        self.send_join(member, true, now);
        true
    }

    /// Whether some member asked for its join may still answer.
    fn awaits_answers(&self, now: u64) -> bool {
        self.asked.values().any(|at| now < at + ANSWER_WAIT_MS)
    }

    /// The first heartbeat of this incarnation goes out this long after it joined: a fraction,
    /// drawn from its key, of the heartbeat interval of a job of every member it knows (proven
    /// or not), at most `FIRST_BEAT_SPREAD_MS`. It proves the member runs, so it comes soon;
    /// but members of a job that starts at once (or a simulator's thousands) would otherwise
    /// all beat within the second the proven count is still small, every heartbeat reaching
    /// every member at once.
    fn first_heartbeat_after_ms(&self) -> u64 {
        let phase = u64::from(u16::from_le_bytes([self.setup.me.0[0], self.setup.me.0[1]]));
        let known = Cadence::for_members(self.state.members.len()).heartbeat_ms();
        known.min(FIRST_BEAT_SPREAD_MS) * phase / 65_536
    }

    /// When this member's next heartbeat is due: the first soon after it joined, the second
    /// `SECOND_BEAT_MS` after that (a member that lost the first copy would not count this one
    /// for a whole interval, and the members' live views, and so their plans, would differ),
    /// then one every heartbeat interval.
    fn next_heartbeat_at(&self, cadence: Cadence) -> u64 {
        match self.heartbeat_sequence {
            0 => self.joined_ms + self.first_heartbeat_after_ms(),
            1 => self.last_heartbeat_ms + SECOND_BEAT_MS.min(cadence.heartbeat_ms()),
            _ => self.last_heartbeat_ms + cadence.heartbeat_ms(),
        }
    }

    /// Periodic work: heartbeats, repeated joins, deadlines, opening the next round.
    fn on_tick(&mut self, now: u64) {
        if !self.is_active() {
            return;
        }
        let me = self.me();
        let cadence = self.cadence();
        if now >= self.next_heartbeat_at(cadence) {
            // Its own sign of life as others see it: it stays live here as long as there (every
            // tick did it before, a lookup in the membership a thousand times a second).
            self.state.members.beat_own(&me, now);
            if self.unsaved == Unsaved::Minor {
                self.persist();
            }
            self.publish_heartbeat(now);
        }
        if now.saturating_sub(self.last_join_ms) >= cadence.rejoin_ms() {
            self.publish_join(now);
        }
        if self.judge_held_at.is_some_and(|at| now >= at) {
            // Some members asked about did not answer: what waits on them is judged again (and
            // they are asked again, `ASK_AGAIN_MS` after the last time).
            self.judge_held_at = None;
            self.asked.retain(|_, at| now < *at + ASK_AGAIN_MS);
            self.judge_held(now);
        }
        self.maybe_pull(now);
        self.tick_round(now);
        let next_beat =
            self.next_heartbeat_at(cadence).min(self.last_join_ms + cadence.rejoin_ms());
        self.wake_at(next_beat.clamp(now + 1, now + IDLE_WAKE_MS));
    }

    /// Says the round it is in and the model it holds, to the job.
    fn publish_heartbeat(&mut self, now: u64) {
        self.last_heartbeat_ms = now;
        self.heartbeat_sequence += 1;
        let heartbeat = self.heartbeat(now);
        self.effects.push(Effect::Publish(Publish::Heartbeat(heartbeat)));
    }

    /// This member's heartbeat as of `now`: the round it is in and the model it holds.
    fn heartbeat(&self, now: u64) -> Heartbeat {
        Heartbeat {
            job: self.setup.job,
            member: self.me(),
            round: self.state.completed_round + 1,
            model: self.state.model,
            sequence: self.heartbeat_sequence,
            sent_at_ms: now,
        }
    }

    /// A peer subscribed to the job's topic: this member's join goes out `JOIN_ECHO_DELAY_MS`
    /// from now, unless it is due sooner.
    fn join_again_soon(&mut self, now: u64) {
        let soon = now.saturating_sub(self.cadence().rejoin_ms()) + JOIN_ECHO_DELAY_MS;
        self.last_join_ms = self.last_join_ms.min(soon);
        self.wake_at(now + JOIN_ECHO_DELAY_MS);
    }

    /// This member's operator leaves the job: a signed leave, and nothing more of the round. A
    /// job over for this member (completed, stopped, failed) is marked left with no message.
    fn leave(&mut self, reason: String, now: u64) {
        let active = self.is_active();
        if self.state.status == RunStatus::Left {
            return;
        }
        self.end(RunStatus::Left);
        if !active {
            return;
        }
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
        self.early_keys.clear();
        self.early_evals.clear();
        self.held.clear();
        self.persist();
    }
}

/// Whether a list of members is exactly `members`' keys, in their order.
/// The members `vetted` and the owner, sorted by key (a shared list).
fn vetted_with_owner(vetted: &[MemberId], owner: &MemberId) -> Arc<[MemberId]> {
    let mut all = vetted.to_vec();
    if let Err(position) = all.binary_search(owner) {
        all.insert(position, *owner);
    }
    shared::key_list(all)
}

fn names_exactly(list: &[MemberId], members: &[MemberInfo]) -> bool {
    list.len() == members.len() && members.iter().map(|m| m.id).eq(list.iter().copied())
}

#[cfg(test)]
mod tests;
