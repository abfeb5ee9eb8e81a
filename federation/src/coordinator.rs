//! The coordinator's side of one coordinated job, as a pure state object (the node keeps it in
//! RocksDB): the members it
//! hears and how responsive each has been, the round in progress and its assignment, and each
//! round's progress; and the decisions made from them (whom to select, who aggregates, when to
//! reassign).

use crate::cadence::Cadence;
use crate::membership::NEWCOMERS_FLOOR;
use fedmesh_protocol::ids::{ContentHash, JobId, MemberId, Round};
use fedmesh_protocol::message::{AggregateReady, Assignment, EvalMetrics, Heartbeat, Join};
use fedmesh_protocol::spec::JobSpec;
use fedmesh_topologies::{MemberInfo, RoundPlan, Selection, Tag, Vetting, election::rank};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A coordinated job's state, in Flame's terms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum JobState {
    /// Known, no member yet.
    Ready,
    /// Members are joining; too few for a round, or no round assigned yet.
    Starting,
    Running,
    Completed,
    Failed(String),
    Stopped(String),
}

impl JobState {
    pub fn label(&self) -> String {
        match self {
            Self::Ready => "ready".into(),
            Self::Starting => "starting".into(),
            Self::Running => "running".into(),
            Self::Completed => "completed".into(),
            Self::Failed(reason) => format!("failed: {reason}"),
            Self::Stopped(reason) => format!("stopped: {reason}"),
        }
    }

    pub fn is_active(&self) -> bool {
        matches!(self, Self::Ready | Self::Starting | Self::Running)
    }
}

/// What the coordinator knows of one member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberHealth {
    pub info: MemberInfo,
    pub samples: u64,
    pub last_seen_ms: u64,
    /// The round its last heartbeat said it is in, and the model it holds.
    pub round: Round,
    pub model: Option<ContentHash>,
    /// Rounds it was selected to train in, and rounds whose result counts its update.
    pub selected: u32,
    pub contributed: u32,
    pub left: bool,
}

impl MemberHealth {
    fn is_live(&self, now_ms: u64, lost_ms: u64) -> bool {
        !self.left && now_ms.saturating_sub(self.last_seen_ms) <= lost_ms
    }

    /// How reliably it delivered when selected, from 0 to 1 (1/2 with no history).
    pub fn responsiveness(&self) -> f64 {
        (f64::from(self.contributed) + 1.0) / (f64::from(self.selected) + 2.0)
    }
}

/// One round as the coordinator ran it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RoundProgress {
    pub round: Round,
    /// Every leader the round was assigned to, in order (more than one after a reassignment).
    pub leaders: Vec<MemberId>,
    pub aggregators: BTreeMap<String, MemberId>,
    pub trainers: Vec<MemberId>,
    /// Why the round was assigned again, each time it was.
    pub reassigned: Vec<String>,
    pub assigned_at_ms: u64,
    pub closed_at_ms: Option<u64>,
    pub model: Option<ContentHash>,
    pub contributions: usize,
    /// Members' evaluations of the round's model: accuracy and test samples.
    pub evaluations: BTreeMap<MemberId, (f64, u64)>,
}

impl RoundProgress {
    /// The test-size-weighted accuracy of the round's model over the members that evaluated it.
    pub fn accuracy(&self) -> Option<f64> {
        let samples: u64 = self.evaluations.values().map(|(_, n)| n).sum();
        let weighted: f64 = self.evaluations.values().map(|(a, n)| a * *n as f64).sum();
        (samples > 0).then(|| weighted / samples as f64)
    }
}

/// A coordinated job's state as it is stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoordinatedState {
    pub status: JobState,
    pub completed_round: Round,
    /// The global model the next round starts from (none until the members report the
    /// initial one).
    pub model: Option<ContentHash>,
    pub members: BTreeMap<MemberId, MemberHealth>,
    /// The round in progress.
    pub assignment: Option<Assignment>,
    pub rounds: BTreeMap<Round, RoundProgress>,
}

impl Default for CoordinatedState {
    fn default() -> Self {
        Self::new()
    }
}

impl CoordinatedState {
    /// A job no member joined yet.
    pub fn new() -> Self {
        Self {
            status: JobState::Ready,
            completed_round: 0,
            model: None,
            members: BTreeMap::new(),
            assignment: None,
            rounds: BTreeMap::new(),
        }
    }
}

/// A job this node coordinates.
pub struct CoordinatedJob {
    pub id: JobId,
    pub spec: JobSpec,
    pub tag: Tag,
    pub state: CoordinatedState,
    /// When the current assignment last went out.
    pub published_ms: u64,
    pub last_heartbeat_ms: u64,
    pub heartbeat_sequence: u64,
}

impl CoordinatedJob {
    pub fn new(id: JobId, spec: JobSpec, tag: Tag, state: CoordinatedState) -> Self {
        Self { id, spec, tag, state, published_ms: 0, last_heartbeat_ms: 0, heartbeat_sequence: 0 }
    }

    /// A member's join; says whether it counts (a key off the job's allow-list does not).
    pub fn on_join(&mut self, join: &Join, now_ms: u64) -> bool {
        if crate::admission::refusal(&self.spec, &self.id, join).is_some() {
            return false;
        }
        if !self.state.members.contains_key(&join.member) && !self.room_for_newcomer(now_ms) {
            return false;
        }
        let info = MemberInfo {
            id: join.member,
            group: join.group.clone(),
            roles: join.roles.clone(),
            reachable: join.reachable,
        };
        let member = self.state.members.entry(join.member).or_insert_with(|| MemberHealth {
            info: info.clone(),
            samples: join.samples,
            last_seen_ms: now_ms,
            round: 0,
            model: None,
            selected: 0,
            contributed: 0,
            left: false,
        });
        member.info = info;
        member.samples = join.samples;
        member.last_seen_ms = now_ms;
        member.left = false;
        if self.state.status == JobState::Ready {
            self.state.status = JobState::Starting;
        }
        true
    }

    pub fn on_leave(&mut self, member: &MemberId) {
        if let Some(member) = self.state.members.get_mut(member) {
            member.left = true;
        }
    }

    pub fn on_heartbeat(&mut self, heartbeat: &Heartbeat, now_ms: u64) {
        if let Some(member) = self.state.members.get_mut(&heartbeat.member) {
            member.last_seen_ms = member.last_seen_ms.max(now_ms);
            member.round = heartbeat.round;
            member.model = Some(heartbeat.model);
        }
    }

    /// A member's evaluation of a round's model, weighing at most the samples it declared at
    /// join (a key that never joined is not heard).
    pub fn on_evaluation(&mut self, round: Round, member: MemberId, metrics: &EvalMetrics) {
        let Some(declared) = self.state.members.get(&member).map(|m| m.samples) else { return };
        let (Some(progress), Some(accuracy)) =
            (self.state.rounds.get_mut(&round), metrics.accuracy)
        else {
            return;
        };
        let samples = metrics.samples.min(declared);
        progress.evaluations.insert(member, (f64::from(accuracy), samples));
    }

    /// Whether a join from a key it does not know fits: newcomers (joined, no heartbeat yet)
    /// are kept up to the membership's bound, and those silent for the lost time are dropped
    /// first. A flood of joins from fresh keys is assigned no work and fills nothing more.
    fn room_for_newcomer(&mut self, now_ms: u64) -> bool {
        let lost_ms = self.cadence().lost_ms();
        let members = &mut self.state.members;
        members
            .retain(|_, m| m.model.is_some() || now_ms.saturating_sub(m.last_seen_ms) <= lost_ms);
        let newcomers = members.values().filter(|m| m.model.is_none()).count();
        newcomers < NEWCOMERS_FLOOR.max(members.len() - newcomers)
    }

    /// The members heard beat since they joined (a newcomer is not assigned work).
    fn proven(&self) -> impl Iterator<Item = &MemberHealth> {
        self.state.members.values().filter(|m| m.model.is_some())
    }

    /// The job's cadence, set by its proven members.
    fn cadence(&self) -> Cadence {
        Cadence::for_members(self.proven().count())
    }

    fn live(&self, now_ms: u64) -> Vec<&MemberHealth> {
        let lost_ms = self.cadence().lost_ms();
        self.proven().filter(|m| m.is_live(now_ms, lost_ms)).collect()
    }

    /// Whether `member` was heard from recently enough, at the cadence of a job this size. A
    /// lost member is left out of the next assignment, and a round it aggregates or trains in
    /// is assigned again without it.
    fn is_live(&self, member: &MemberHealth, now_ms: u64) -> bool {
        member.is_live(now_ms, self.cadence().lost_ms())
    }

    /// The model the first round starts from: the one most live members hold before round 1
    /// (every member computes it from the job's seed).
    fn initial_model(&self, now_ms: u64) -> Option<ContentHash> {
        let mut votes: BTreeMap<ContentHash, usize> = BTreeMap::new();
        for member in self.live(now_ms).into_iter().filter(|m| m.round <= 1) {
            if let Some(model) = member.model {
                *votes.entry(model).or_default() += 1;
            }
        }
        votes.into_iter().max_by_key(|(_, count)| *count).map(|(model, _)| model)
    }

    /// Who aggregates ahead of the rest, sorted by key: the owner, and the members whose update
    /// a round's result counted (a fresh key that never delivered aggregates only when no
    /// vetted member can).
    fn vetted(&self) -> Vec<MemberId> {
        let delivered = self.state.members.values().filter(|m| m.contributed > 0);
        let mut vetted: Vec<MemberId> = delivered.map(|m| m.info.id).collect();
        vetted.push(self.spec.owner);
        vetted.sort_unstable();
        vetted.dedup();
        vetted
    }

    /// The trainers of `round`: the fraction (at most k) of `eligible` the job asks for, the
    /// most responsive first, ties in a random order seeded by job and round.
    fn select(&self, round: Round, eligible: &[MemberId]) -> Vec<MemberId> {
        let participation = &self.spec.participation;
        let wanted = (f64::from(participation.fraction) * eligible.len() as f64 - 1e-6).ceil();
        let wanted = (wanted.max(1.0) as usize)
            .min(participation.max_participants.map_or(usize::MAX, |k| k as usize))
            .min(eligible.len());
        let mut ranked = rank(&self.id, round, "coordinator-selection", eligible);
        let score =
            |id: &MemberId| self.state.members.get(id).map_or(0.0, MemberHealth::responsiveness);
        ranked.sort_by(|a, b| score(b).total_cmp(&score(a)));
        ranked.truncate(wanted);
        ranked.sort();
        ranked
    }

    /// The next assignment of the round in progress (or of the next round): the live members,
    /// the trainers selected among them, and for each slot the first member of its election
    /// order that is live and holds the round's base model; with the round's leader. An error
    /// says why no round can start yet (too few members, the base model unknown).
    pub fn assign(&self, now_ms: u64) -> Result<(Assignment, MemberId), String> {
        let round = self.state.completed_round + 1;
        let base = match self.state.model {
            Some(model) => model,
            None => self.initial_model(now_ms).ok_or("no member has reported the initial model")?,
        };
        let live: Vec<MemberInfo> = self.live(now_ms).into_iter().map(|m| m.info.clone()).collect();
        let minimum = self.spec.participation.min_participants as usize;
        if live.len() < minimum {
            return Err(format!("{} live members, the job needs {minimum}", live.len()));
        }
        let eligible: Vec<MemberId> = live.iter().map(|m| m.id).collect();
        let trainers = self.select(round, &eligible);
        let selection = Selection::Explicit(trainers);
        let vetted = self.vetted();
        let vetting = Vetting { vetted: &vetted, owner: Some(&self.spec.owner) };
        let mut plan =
            RoundPlan::compute_vetted(&self.tag, &self.id, round, &live, &selection, &vetting)
                .map_err(|e| e.to_string())?;
        let up_to_date = |id: &MemberId| {
            self.state.members.get(id).is_some_and(|m| m.round == round && m.model == Some(base))
        };
        let mut aggregators = plan.aggregators();
        for index in 0..plan.slots.len() {
            let ranking = &plan.slots[index].ranking;
            if let Some(best) = ranking.iter().find(|id| up_to_date(id)) {
                aggregators.insert(plan.slot_key(index), *best);
            }
        }
        plan.assign_aggregators(&aggregators).map_err(|e| e.to_string())?;
        let leader = plan.leader().ok_or("the plan has no leader")?;
        let assignment = Assignment {
            job: self.id,
            round,
            base_model: base,
            roles: live.iter().map(|m| (m.id, m.roles.clone())).collect(),
            trainers: plan.trainers.clone(),
            aggregators,
            deadline_ms: now_ms + self.spec.round_deadline_secs * 1000,
            issued_at_ms: now_ms,
            sent_at_ms: now_ms,
        };
        Ok((assignment, leader))
    }

    /// Why the round in progress must be assigned again now, if it must: an aggregator or a
    /// trainer it names is lost, or its deadline passed with no result.
    pub fn needs_reassignment(&self, now_ms: u64, grace_ms: u64) -> Option<String> {
        let assignment = self.state.assignment.as_ref()?;
        let lost =
            |id: &MemberId| !self.state.members.get(id).is_some_and(|m| self.is_live(m, now_ms));
        if let Some((slot, member)) = assignment.aggregators.iter().find(|(_, id)| lost(id)) {
            return Some(format!("aggregator {member} of slot {slot} lost"));
        }
        if let Some(member) = assignment.trainers.iter().find(|id| lost(id)) {
            return Some(format!("trainer {member} lost"));
        }
        (now_ms > assignment.deadline_ms + grace_ms)
            .then(|| "deadline passed without a result".to_owned())
    }

    /// Takes back the last round's result when it was lost: its leader, the one member sure to
    /// hold the model it announced, is lost, and no live member reports holding that model, so
    /// no round can build on it. The round is then assigned again over the model before it.
    /// Says why, when it took a result back.
    pub fn take_back_lost_result(&mut self, now_ms: u64) -> Option<String> {
        let (round, model) = (self.state.completed_round, self.state.model?);
        let progress = self.state.rounds.get(&round)?;
        let leader = *progress.leaders.last()?;
        let live = self.live(now_ms);
        if live.iter().any(|m| m.info.id == leader || m.model == Some(model)) {
            return None;
        }
        let previous = match round {
            0 => return None,
            1 => None,
            _ => Some(self.state.rounds.get(&(round - 1))?.model?),
        };
        let why = format!("the result of round {round} was lost with its aggregator {leader}");
        if let Some(progress) = self.state.rounds.get_mut(&round) {
            progress.model = None;
            progress.closed_at_ms = None;
            progress.reassigned.push(why.clone());
        }
        self.state.completed_round = round - 1;
        self.state.model = previous;
        self.state.assignment = None;
        self.state.status = JobState::Running;
        Some(why)
    }

    /// Records an assignment as the round in progress.
    pub fn record_assignment(
        &mut self,
        assignment: &Assignment,
        leader: MemberId,
        why: Option<String>,
    ) {
        let progress = self.state.rounds.entry(assignment.round).or_insert_with(|| RoundProgress {
            round: assignment.round,
            assigned_at_ms: assignment.issued_at_ms,
            ..RoundProgress::default()
        });
        if progress.leaders.last() != Some(&leader) {
            progress.leaders.push(leader);
        }
        progress.aggregators = assignment.aggregators.clone();
        progress.trainers = assignment.trainers.clone();
        progress.reassigned.extend(why);
        if progress.leaders.len() == 1 && progress.reassigned.is_empty() {
            for trainer in &assignment.trainers {
                if let Some(member) = self.state.members.get_mut(trainer) {
                    member.selected += 1;
                }
            }
        }
        self.state.assignment = Some(assignment.clone());
        self.state.status = JobState::Running;
    }

    /// Takes a round's result from `signer` if it is a leader the round was assigned to;
    /// says whether it was taken.
    pub fn on_result(&mut self, signer: MemberId, ready: &AggregateReady) -> bool {
        if ready.round != self.state.completed_round + 1 {
            return false;
        }
        let Some(progress) = self.state.rounds.get_mut(&ready.round) else { return false };
        if !progress.leaders.contains(&signer) {
            return false;
        }
        progress.model = Some(ready.model);
        progress.closed_at_ms = Some(ready.sent_at_ms);
        progress.contributions = ready.contributions.len();
        for contribution in &ready.contributions {
            if let Some(member) = self.state.members.get_mut(&contribution.member) {
                member.contributed += 1;
            }
        }
        self.state.completed_round = ready.round;
        self.state.model = Some(ready.model);
        self.state.assignment = None;
        if ready.round >= self.spec.hyperparameters.rounds {
            self.state.status = JobState::Completed;
        }
        true
    }

    /// What one member is doing now, in Flame's terms.
    pub fn member_state(&self, member: &MemberHealth, now_ms: u64) -> &'static str {
        if self.state.status == JobState::Completed {
            return "done";
        }
        if member.left {
            return "left";
        }
        if !self.is_live(member, now_ms) {
            return "lost";
        }
        let Some(assignment) = &self.state.assignment else { return "joined" };
        if assignment.aggregators.values().any(|id| *id == member.info.id) {
            "aggregating"
        } else if assignment.trainers.contains(&member.info.id) {
            "training"
        } else {
            "joined"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedmesh_protocol::envelope::Signed;
    use fedmesh_protocol::message::Ticket;

    fn job(fraction: f32, max: Option<u32>) -> CoordinatedJob {
        let json = serde_json::json!({"name": "job", "owner": MemberId([0; 32]).to_string(),
                                      "model": "softmax", "dataset": "mnist5k"});
        let mut spec = JobSpec::from_json(&serde_json::to_vec(&json).unwrap()).unwrap();
        spec.participation.fraction = fraction;
        spec.participation.max_participants = max;
        spec.participation.min_participants = 2;
        let tag = Tag::from_spec(&spec.tag).unwrap();
        let id = JobId(ContentHash::of(b"coordinated"));
        CoordinatedJob::new(id, spec, tag, CoordinatedState::new())
    }

    fn join(job: &mut CoordinatedJob, member: u8, now: u64) {
        let join = Join {
            job: job.id,
            member: MemberId([member; 32]),
            group: "default".into(),
            roles: vec![],
            samples: 100,
            reachable: true,
            sent_at_ms: now,
            ticket: None,
        };
        assert!(job.on_join(&join, now), "an open job takes any member");
        let heartbeat = Heartbeat {
            job: job.id,
            member: MemberId([member; 32]),
            round: 1,
            model: ContentHash::of(b"initial"),
            sequence: 1,
            sent_at_ms: now,
        };
        job.on_heartbeat(&heartbeat, now);
    }

    #[test]
    fn the_coordinator_assigns_aggregators_among_members_that_delivered_while_any_is_live() {
        let mut coordinated = job(1.0, None);
        (1..=40).for_each(|m| join(&mut coordinated, m, 1_000));
        let delivered = [MemberId([7; 32]), MemberId([9; 32])];
        for id in &delivered {
            coordinated.state.members.get_mut(id).expect("joined").contributed = 1;
        }
        for round in 0..30 {
            coordinated.state.completed_round = round;
            let (assignment, _) = coordinated.assign(1_000).expect("assigns");
            let aggregator = assignment.aggregators["top"];
            assert!(delivered.contains(&aggregator), "round {round}: {aggregator} never delivered");
        }
        for member in coordinated.state.members.values_mut() {
            member.contributed = 0;
        }
        let (assignment, _) = coordinated.assign(1_000).expect("assigns");
        assert!(
            assignment.aggregators.contains_key("top"),
            "with none vetted, any member aggregates"
        );
    }

    #[test]
    fn the_coordinator_admits_only_the_allow_list_and_hears_evaluations_from_members_alone() {
        let mut coordinated = job(1.0, None);
        coordinated.spec.participation.allow = vec![MemberId([1; 32]), MemberId([2; 32])];
        (1..=2).for_each(|m| join(&mut coordinated, m, 1_000));
        let outsider = Join {
            job: coordinated.id,
            member: MemberId([9; 32]),
            group: "default".into(),
            roles: vec![],
            samples: 100,
            reachable: true,
            sent_at_ms: 1_000,
            ticket: None,
        };
        assert!(!coordinated.on_join(&outsider, 1_000), "a key off the allow-list");
        assert!(!coordinated.state.members.contains_key(&MemberId([9; 32])));
        let (assignment, leader) = coordinated.assign(1_000).expect("round 1 assigned");
        coordinated.record_assignment(&assignment, leader, None);
        let report = |samples| EvalMetrics { loss: None, accuracy: Some(1.0), samples };
        coordinated.on_evaluation(1, MemberId([9; 32]), &report(50));
        coordinated.on_evaluation(1, MemberId([1; 32]), &report(u64::MAX));
        let evaluations = &coordinated.state.rounds[&1].evaluations;
        assert!(!evaluations.contains_key(&MemberId([9; 32])), "an outsider's report");
        assert_eq!(evaluations[&MemberId([1; 32])].1, 100, "member 1 declared 100 samples");
    }

    #[test]
    fn the_coordinator_of_an_owner_admitted_job_takes_joins_with_the_owners_ticket_alone() {
        let owner = fedmesh_protocol::identity::Identity::from_seed([42; 32]);
        let mut coordinated = job(1.0, None);
        coordinated.spec.owner = owner.member_id();
        coordinated.spec.participation.admission = Some(fedmesh_protocol::spec::Admission::Owner);
        let ticket = Ticket { job: coordinated.id, member: MemberId([1; 32]), issued_at_ms: 0 };
        let ticket = Signed::sign(&owner, ticket).expect("signs");
        let join = |member: u8, ticket: Option<Signed<Ticket>>| Join {
            job: coordinated.id,
            member: MemberId([member; 32]),
            group: "default".into(),
            roles: vec![],
            samples: 100,
            reachable: true,
            sent_at_ms: 1_000,
            ticket: ticket.map(Box::new),
        };
        let (admitted, none, borrowed) =
            (join(1, Some(ticket.clone())), join(2, None), join(3, Some(ticket)));
        assert!(coordinated.on_join(&admitted, 1_000), "the owner's ticket for member 1");
        assert!(!coordinated.on_join(&none, 1_000), "no ticket");
        assert!(!coordinated.on_join(&borrowed, 1_000), "member 1's ticket presented by member 3");
        assert_eq!(coordinated.state.members.len(), 1);
    }

    #[test]
    fn selection_takes_the_fraction_or_at_most_k_preferring_responsive_members() {
        let mut coordinated = job(0.5, None);
        (1..=6).for_each(|m| join(&mut coordinated, m, 1_000));
        let (assignment, _) = coordinated.assign(1_000).unwrap();
        assert_eq!(assignment.trainers.len(), 3, "half of 6");
        assert_eq!(assignment.base_model, ContentHash::of(b"initial"));
        // Members 1 and 2 never delivered in ten rounds: the others are preferred.
        for slow in [1, 2] {
            let member = coordinated.state.members.get_mut(&MemberId([slow; 32])).unwrap();
            member.selected = 10;
        }
        let mut capped = job(1.0, Some(4));
        capped.state = coordinated.state.clone();
        let trainers = capped.assign(1_000).unwrap().0.trainers;
        assert_eq!(trainers.len(), 4, "at most k");
        assert!(!trainers.contains(&MemberId([1; 32])) && !trainers.contains(&MemberId([2; 32])));
    }

    #[test]
    fn a_lost_aggregator_or_trainer_or_a_passed_deadline_calls_for_a_new_assignment() {
        let mut coordinated = job(1.0, None);
        (1..=4).for_each(|m| join(&mut coordinated, m, 1_000));
        let (assignment, leader) = coordinated.assign(1_000).unwrap();
        assert_eq!(leader, assignment.aggregators["top"], "the top aggregator leads");
        coordinated.record_assignment(&assignment, leader, None);
        assert_eq!(coordinated.needs_reassignment(2_000, 0), None);
        // Everyone but the leader keeps beating.
        for member in (1..=4).map(|m| MemberId([m; 32])).filter(|m| *m != leader) {
            coordinated.state.members.get_mut(&member).unwrap().last_seen_ms = 6_000;
        }
        let why = coordinated.needs_reassignment(6_000, 0).unwrap();
        assert!(why.contains("aggregator"), "{why}");
        let (again, new_leader) = coordinated.assign(6_000).unwrap();
        assert_ne!(new_leader, leader, "the lost aggregator is replaced");
        assert!(!again.trainers.contains(&leader), "and no longer trains");
        coordinated.record_assignment(&again, new_leader, Some(why));
        let deadline = again.deadline_ms;
        for member in coordinated.state.members.values_mut().filter(|m| m.info.id != leader) {
            member.last_seen_ms = deadline;
        }
        assert_eq!(coordinated.needs_reassignment(deadline, 1_000), None);
        for member in coordinated.state.members.values_mut() {
            member.last_seen_ms = deadline + 2_000;
        }
        coordinated.state.members.get_mut(&leader).unwrap().left = true;
        let why = coordinated.needs_reassignment(deadline + 2_000, 1_000).unwrap();
        assert!(why.contains("deadline"), "{why}");
    }

    /// A result of `round` over `base`, making `model`.
    fn ready(
        job: &CoordinatedJob,
        round: Round,
        base: ContentHash,
        model: &[u8],
    ) -> AggregateReady {
        AggregateReady {
            job: job.id,
            round,
            base_model: base,
            model: ContentHash::of(model),
            contributions: vec![],
            feedback: vec![],
            metrics: EvalMetrics::default(),
            members: vec![],
            vetted: Vec::new(),
            sent_at_ms: 2_000,
            optimizer_state: None,
        }
    }

    #[test]
    fn a_result_lost_with_its_aggregator_before_anyone_fetched_it_is_assigned_again() {
        let mut coordinated = job(1.0, None);
        (1..=4).for_each(|m| join(&mut coordinated, m, 1_000));
        let (assignment, leader) = coordinated.assign(1_000).unwrap();
        coordinated.record_assignment(&assignment, leader, None);
        let base = assignment.base_model;
        assert!(coordinated.on_result(leader, &ready(&coordinated, 1, base, b"round 1")));
        assert_eq!(coordinated.take_back_lost_result(1_500), None, "its leader is live");
        // The others beat on, still over the first model: none fetched round 1's.
        let others: Vec<MemberId> =
            (1..=4).map(|m| MemberId([m; 32])).filter(|m| *m != leader).collect();
        for member in &others {
            coordinated.state.members.get_mut(member).unwrap().last_seen_ms = 6_000;
        }
        let why = coordinated.take_back_lost_result(6_000).unwrap();
        assert!(why.contains("lost"), "{why}");
        assert_eq!(coordinated.state.completed_round, 0);
        let (again, new_leader) = coordinated.assign(6_000).unwrap();
        assert_eq!((again.round, again.base_model), (1, base), "round 1 again, over its base");
        assert_ne!(new_leader, leader);
        coordinated.record_assignment(&again, new_leader, Some(why));
        let result = ready(&coordinated, 1, base, b"round 1, again");
        assert!(coordinated.on_result(new_leader, &result));
        // Its leader is lost too, but a live member holds the model: the round stands.
        coordinated.state.members.get_mut(&others[0]).unwrap().model = Some(result.model);
        coordinated.state.members.get_mut(&new_leader).unwrap().last_seen_ms = 0;
        assert_eq!(coordinated.take_back_lost_result(6_000), None);
    }

    #[test]
    fn only_an_assigned_leader_closes_the_round() {
        let mut coordinated = job(1.0, None);
        (1..=3).for_each(|m| join(&mut coordinated, m, 1_000));
        let (assignment, leader) = coordinated.assign(1_000).unwrap();
        coordinated.record_assignment(&assignment, leader, None);
        let ready = ready(&coordinated, 1, assignment.base_model, b"round 1");
        let other = (1..=3).map(|m| MemberId([m; 32])).find(|m| *m != leader).unwrap();
        assert!(!coordinated.on_result(other, &ready));
        assert!(coordinated.on_result(leader, &ready));
        assert_eq!(coordinated.state.completed_round, 1);
        assert_eq!(coordinated.state.model, Some(ContentHash::of(b"round 1")));
        assert!(!coordinated.on_result(leader, &ready), "a round closes once");
    }
}
