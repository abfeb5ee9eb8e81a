//! A member's side of orchestration mode: the coordinator's signed assignments replace the
//! election (an assignment is the round's opening, its aggregators are the plan's), the
//! coordinator's heartbeats tell whether it is there (a job may let members fall back to the
//! election while it is not), and its signed stop ends the job.

use super::{JobRun, Leading, store};
use crate::engine::Engine;
use fedmesh_federation::records::RunStatus;
use fedmesh_protocol::ids::{JobId, MemberId, Round};
use fedmesh_protocol::message::{Assignment, JobStop, RoundOpen, unix_millis};
use fedmesh_topologies::{MemberInfo, RoundPlan, Selection};

/// The latest assignment a member holds, with the leader its plan names.
#[derive(Debug, Clone)]
pub struct Assigned {
    pub assignment: Assignment,
    pub leader: MemberId,
    /// When this member last asked for the round's base model (0: not yet).
    pub base_asked_ms: u64,
}

/// How long a member waits for a base model it asked for before asking again.
const BASE_ASK_AGAIN_MS: u64 = 5_000;

impl JobRun {
    /// Whether the job's rounds come from its coordinator now: it names one, and the job does
    /// not let members fall back to the election or the coordinator was heard from lately.
    pub(super) fn orchestrated(&self, now_ms: u64) -> bool {
        let Some(_) = self.spec.coordinator else { return false };
        match self.spec.coordinator_fallback_secs {
            None => true,
            Some(secs) => now_ms.saturating_sub(self.coordinator_seen_ms) <= secs * 1000,
        }
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
        let mut plan =
            RoundPlan::compute(&self.tag, &self.id, assignment.round, &members, &selection)
                .map_err(|e| e.to_string())?;
        plan.assign_aggregators(&assignment.aggregators).map_err(|e| e.to_string())?;
        Ok(plan)
    }

    /// The leader the coordinator assigned `round`, if this member holds its assignment.
    pub(super) fn assigned_leader(&self, round: Round) -> Option<MemberId> {
        self.assigned.as_ref().filter(|a| a.assignment.round == round).map(|a| a.leader)
    }

    /// Whether the assignment names a member whose join this node has not heard.
    pub(super) fn names_unknown_member(&self, assignment: &Assignment) -> Option<MemberId> {
        assignment.roles.keys().find(|id| !self.state.members.contains(id)).copied()
    }
}

impl Engine {
    /// Takes a verified assignment from the job's coordinator: keeps it and follows it as the
    /// round's opening (fetching the round's base model first if this member is behind).
    pub(super) async fn on_assignment(&mut self, id: JobId, assignment: Assignment) {
        let Some(run) = self.runs.get_mut(&id) else { return };
        run.coordinator_seen_ms = unix_millis();
        let newer = run.assigned.as_ref().is_none_or(|held| {
            (held.assignment.round, held.assignment.issued_at_ms)
                < (assignment.round, assignment.issued_at_ms)
        });
        if !newer {
            return;
        }
        let plan = match run.assigned_plan(&assignment) {
            Ok(plan) => plan,
            Err(error) => {
                return tracing::warn!(job = %id, round = assignment.round, %error, "an assignment this node cannot plan; ignored");
            }
        };
        let Some(leader) = plan.leader() else { return };
        tracing::info!(job = %id, round = assignment.round, %leader, trainers = assignment.trainers.len(), "assigned by the coordinator");
        self.maybe_forge_assignment(id, &assignment).await;
        let Some(run) = self.runs.get_mut(&id) else { return };
        run.assigned = Some(Assigned { assignment, leader, base_asked_ms: 0 });
        let round = run.state.completed_round + 1;
        self.follow_assignment(id, round).await;
    }

    /// Follows the held assignment of `round` as its opening, once this member holds the
    /// round's base model. A member without it (behind, or joined after the rounds before
    /// closed) fetches it as the result of the round before the assigned one: the coordinator
    /// signed the assignment that names it.
    pub(super) async fn follow_assignment(&mut self, id: JobId, round: Round) {
        let me = self.identity.member_id();
        let Some(run) = self.runs.get_mut(&id) else { return };
        let Some(Assigned { assignment, leader, base_asked_ms }) = run.assigned.clone() else {
            return;
        };
        if assignment.round < round || !run.is_active() {
            return;
        }
        if assignment.base_model != run.state.model || assignment.round > round {
            let now = unix_millis();
            if now.saturating_sub(base_asked_ms) < BASE_ASK_AGAIN_MS {
                return;
            }
            if let Some(held) = run.assigned.as_mut() {
                held.base_asked_ms = now;
            }
            return self.fetch_model(id, assignment.round - 1, assignment.base_model, leader);
        }
        let Ok(plan) = run.assigned_plan(&assignment) else { return };
        let open = RoundOpen {
            job: id,
            round,
            base_model: assignment.base_model,
            deadline_ms: assignment.deadline_ms,
            opened_at_ms: assignment.issued_at_ms,
            members: assignment.roles.keys().copied().collect(),
        };
        let led = run.leading.as_ref().map(|l| (l.round, l.opened_at_ms));
        if leader == me && led != Some((round, open.opened_at_ms)) {
            run.leading = Some(Leading {
                round,
                base: open.base_model,
                required: run.spec.quorum.required(plan.trainers.len()),
                members: open.members.clone(),
                opened_at_ms: open.opened_at_ms,
                deadline_ms: open.deadline_ms,
                retries: 0,
            });
        } else if leader != me {
            run.leading = None;
        }
        self.follow_round(id, leader, open, plan).await;
    }

    /// The job's coordinator (or owner) stopped it: this member stops taking part and keeps
    /// what it has.
    pub(in crate::engine) fn on_stop(&mut self, id: JobId, stop: JobStop) {
        let Some(run) = self.runs.get_mut(&id) else { return };
        if !run.is_active() {
            return;
        }
        tracing::warn!(job = %id, reason = %stop.reason, "the job was stopped");
        run.state.status = RunStatus::Stopped(stop.reason);
        run.leading = None;
        run.slots.clear();
        run.ring = None;
        run.open = None;
        if let Err(error) = store::save_state(&self.store, run) {
            tracing::error!(job = %id, %error, "cannot record that the job stopped");
        }
    }
}
