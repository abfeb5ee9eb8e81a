//! A member's side of orchestration mode: the coordinator's signed assignments replace the
//! election (an assignment is the round's opening, its aggregators the plan's), and its
//! heartbeats tell whether it is there (a job may let members fall back to the election while it
//! is not).

use super::Reason;
use super::phase::{Leading, Phase};
use super::{Held, Level, Member};
use fedmesh_protocol::ids::{MemberId, Round};
use fedmesh_protocol::message::{Assignment, RoundOpen};
use fedmesh_topologies::{MemberInfo, RoundPlan, Selection};
use std::sync::Arc;

/// How long a member waits for a base model it asked for before asking again.
const BASE_ASK_AGAIN_MS: u64 = 5_000;

/// The newest assignment a member holds, with its plan and the leader the plan names.
pub(super) struct Assigned {
    assignment: Arc<Assignment>,
    plan: Arc<RoundPlan>,
    leader: MemberId,
    /// When this member last asked for the round's base model.
    base_asked_ms: Option<u64>,
}

impl Member {
    /// Whether `member` is the job's coordinator.
    pub(super) fn is_coordinator(&self, member: &MemberId) -> bool {
        self.setup.spec.coordinator == Some(*member)
    }

    /// Whether `peer` may be told what the job's members keep (its results, its member list):
    /// anyone in an open job; in an admitted-only one its members, owner and coordinator. The
    /// driver asks it too, before serving one of the job's models.
    pub fn may_learn_of_job(&self, peer: &MemberId) -> bool {
        let is_member = self.state.members.contains(peer);
        crate::admission::may_learn(&self.setup.spec, peer, is_member)
    }

    /// Whether the job's rounds come from its coordinator now: it names one, and the job does
    /// not let members fall back to the election or the coordinator was heard from lately.
    pub(super) fn orchestrated(&self, now: u64) -> bool {
        if self.setup.spec.coordinator.is_none() {
            return false;
        }
        match self.setup.spec.coordinator_fallback_secs {
            None => true,
            Some(secs) => now.saturating_sub(self.coordinator_seen_ms) <= secs * 1000,
        }
    }

    /// An assignment on the job's topic: judged like any round message (held until the joins
    /// of the members it names arrive) if the job's coordinator signed it, refused otherwise.
    pub(super) fn on_assignment_gossip(
        &mut self,
        signer: MemberId,
        assignment: Arc<Assignment>,
        now: u64,
    ) {
        if !self.is_coordinator(&signer) {
            let text = format!("an assignment signed by {signer}, not by the coordinator");
            return self.reject(Reason::NotTheCoordinator, text);
        }
        self.coordinator_seen_ms = now;
        self.judge(signer, Held::Assign(assignment), now);
    }

    /// The leader the coordinator assigned `round`, if this member holds its assignment.
    pub(super) fn assigned_leader(&self, round: Round) -> Option<MemberId> {
        let assigned = self.assigned.as_ref()?;
        (assigned.assignment.round == round).then_some(assigned.leader)
    }

    /// Takes the coordinator's assignment whose members are all known: kept when newer than
    /// the one held (by round, then issue time), and followed as the round's opening. A copy of
    /// one held (the coordinator repeats it) has the held one followed again: a member whose
    /// base model could not be had asks for it again.
    pub(super) fn on_assignment(&mut self, assignment: Arc<Assignment>, now: u64) {
        let completed = self.state.completed_round;
        let held = self.assigned.as_ref().map(|held| &held.assignment);
        let later = held.is_none_or(|held| {
            (held.round, held.issued_at_ms) < (assignment.round, assignment.issued_at_ms)
        });
        // The coordinator took the held round's base back (its result was lost with its
        // aggregator) and assigns the round before again, after it: its newest word counts.
        let again = held.is_some_and(|held| {
            assignment.round < held.round
                && assignment.round > completed
                && held.issued_at_ms < assignment.issued_at_ms
        });
        if again {
            self.forget_unheld_results(assignment.round);
        }
        if later || again {
            let plan = match self.assigned_plan(&assignment) {
                Ok(plan) => plan,
                Err(error) => {
                    let text = format!("an assignment this member cannot plan ({error}); ignored");
                    return self.log(Level::Warn, assignment.round, text);
                }
            };
            let Some(leader) = plan.leader() else { return };
            let text = format!("assigned by the coordinator: {leader} leads");
            self.log(Level::Info, assignment.round, text);
            let plan = Arc::new(plan);
            self.assigned = Some(Assigned { assignment, plan, leader, base_asked_ms: None });
        }
        self.follow_assignment(self.state.completed_round + 1, now);
    }

    /// Forgets the results from `round` on that this member took but holds no model of: the
    /// coordinator took them back, their models lost with their aggregator, and assigns `round`
    /// again (a heard result would keep this member from following it).
    fn forget_unheld_results(&mut self, round: Round) {
        self.rounds.retain(|r, _| *r < round);
        self.taken.retain(|(_, ready)| ready.round < round);
        self.fetching.retain(|_, r| *r < round);
        if self.phase.round().is_some_and(|r| r >= round) {
            self.phase = Phase::Waiting;
        }
        let text = "the coordinator took this round's result back: its model was lost";
        self.log(Level::Warn, round, text);
    }

    /// The plan an assignment makes: its members with the roles it gives them, its trainers,
    /// and its aggregators in place of the elected ones.
    fn assigned_plan(&self, assignment: &Assignment) -> Result<RoundPlan, String> {
        let members: Vec<MemberInfo> = assignment
            .roles
            .iter()
            .map(|(id, roles)| {
                let info = self.state.members.info(id).ok_or_else(|| format!("{id} unknown"))?;
                Ok(MemberInfo { roles: roles.clone(), ..info })
            })
            .collect::<Result<_, String>>()?;
        let selection = Selection::Explicit(assignment.trainers.clone());
        let (tag, job) = (&self.setup.tag, &self.setup.job);
        let mut plan = RoundPlan::compute(tag, job, assignment.round, &members, &selection)
            .map_err(|e| e.to_string())?;
        plan.assign_aggregators(&assignment.aggregators).map_err(|e| e.to_string())?;
        Ok(plan)
    }

    /// Follows the held assignment of `round` as its opening, once this member holds the
    /// round's base model. A member without it (behind, or joined after the rounds before
    /// closed) fetches it as the result of the round before the assigned one from its leader,
    /// at most once every `BASE_ASK_AGAIN_MS`: the coordinator signed the assignment naming it.
    pub(super) fn follow_assignment(&mut self, round: Round, now: u64) {
        let model = self.state.model;
        let busy = !self.is_active() || matches!(self.phase, Phase::Closing(_));
        let Some(assigned) = self.assigned.as_mut() else { return };
        let assignment = assigned.assignment.clone();
        if assignment.round < round || busy {
            return; // over, or the model this member made of a round is being stored
        }
        let leader = assigned.leader;
        if assignment.base_model != model || assignment.round > round {
            if assigned.base_asked_ms.is_some_and(|at| now < at + BASE_ASK_AGAIN_MS) {
                return;
            }
            assigned.base_asked_ms = Some(now);
            let before = assignment.round.saturating_sub(1);
            return self.fetch(before, assignment.base_model, leader);
        }
        let plan = assigned.plan.clone();
        let open = RoundOpen {
            job: self.setup.job,
            round,
            base_model: assignment.base_model,
            deadline_ms: assignment.deadline_ms,
            opened_at_ms: assignment.issued_at_ms,
            members: assignment.roles.keys().copied().collect(),
            trainers: plan.trainers.clone(),
            kept: Vec::new(),
        };
        let required = self.required_updates(plan.trainers.len());
        let leading = (leader == self.me()).then_some(Leading { required, retries: 0 });
        self.follow(leader, Arc::new(open), plan, leading, now);
    }
}
