//! Orchestration mode's control plane, when this node runs as a coordinator: it coordinates the
//! jobs that name its key, hears their members on each job's topic, issues each round's signed
//! assignment, assigns a round again when an aggregator or trainer is lost or its deadline
//! passes, stops jobs, keeps all of it in RocksDB (resuming after a crash) and reports status.

mod view;

use fedmesh_admin_api::CoordinationView;
pub use fedmesh_federation::coordinator::{CoordinatedJob, CoordinatedState, JobState};
use view::coordination_view;

use super::federation::{Refused, job_topic, verify, verify_from};
use super::{Engine, EngineError};
use crate::store::{Store, StoreError, Table};
use fedmesh_federation::member::Reason;
use fedmesh_protocol::envelope::{Denied, Scope, Scoped};
use fedmesh_protocol::ids::{ContentHash, JobId, MemberId};
use fedmesh_protocol::message::{Assignment, GossipMessage, Heartbeat, JobStop, unix_millis};
use fedmesh_protocol::spec::JobSpec;
use fedmesh_topologies::Tag;

/// How often the coordinator says it is there, on each coordinated job's topic.
const HEARTBEAT_MS: u64 = 1_000;
/// How often the round in progress's assignment goes out again, for members that missed it.
const REPUBLISH_MS: u64 = 3_000;
/// How long past a round's deadline the coordinator waits for its result before assigning it
/// again.
const DEADLINE_GRACE_MS: u64 = 2_000;

fn state_key(job: &JobId) -> Vec<u8> {
    [b"c".as_slice(), &job.0.0].concat()
}

fn save(store: &Store, job: &CoordinatedJob) -> Result<(), StoreError> {
    let mut batch = store.batch();
    batch.put(Table::Members, &state_key(&job.id), &job.state)?;
    batch.commit()
}

impl Engine {
    /// Whether this node coordinates the job `spec` describes.
    pub(super) fn coordinates(&self, spec: &JobSpec) -> bool {
        self.settings.coordinate && spec.coordinator == Some(self.identity.member_id())
    }

    /// Starts coordinating a known job: its state from the store (or a new one), and its topic.
    pub(super) async fn coordinate(&mut self, id: JobId) -> Result<(), EngineError> {
        if self.coordinated.contains_key(&id) {
            return Ok(());
        }
        let spec = self.jobs.spec(&id).ok_or_else(|| EngineError::NotFound(format!("job {id}")))?;
        let tag = Tag::from_spec(&spec.tag).map_err(|e| EngineError::Invalid(e.to_string()))?;
        let state = self
            .store
            .get::<CoordinatedState>(Table::Members, &state_key(&id))?
            .unwrap_or_else(CoordinatedState::new);
        tracing::info!(job = %id, name = %spec.name, state = %state.status.label(), round = state.completed_round, "coordinating job");
        self.network.subscribe(&job_topic(&id)).await?;
        self.coordinated.insert(id, CoordinatedJob::new(id, spec, tag, state));
        Ok(())
    }

    /// At start: coordinates again every known job that names this node as its coordinator.
    pub(super) async fn resume_coordination(&mut self) {
        let ids: Vec<JobId> = self.jobs.ids(usize::MAX);
        for id in ids {
            let coordinated = self.jobs.spec(&id).is_some_and(|spec| self.coordinates(&spec));
            if coordinated && let Err(error) = self.coordinate(id).await {
                tracing::error!(job = %id, %error, "cannot coordinate job");
            }
        }
    }

    /// Takes a job spec (JSON) to run orchestrated: this node becomes its owner and its
    /// coordinator, announces it and coordinates it.
    pub(super) async fn submit_job(&mut self, spec_json: &[u8]) -> Result<JobId, EngineError> {
        if !self.settings.coordinate {
            return Err(EngineError::Invalid(
                "this node is not a coordinator: jobs are submitted to a node run with `fedmesh coordinator`".into(),
            ));
        }
        let mut spec: serde_json::Value = serde_json::from_slice(spec_json)
            .map_err(|e| EngineError::Invalid(format!("the job spec is not JSON: {e}")))?;
        let Some(fields) = spec.as_object_mut() else {
            return Err(EngineError::Invalid("the job spec must be a JSON object".into()));
        };
        let me = serde_json::Value::String(self.identity.member_id().to_peer_id_string());
        fields.insert("owner".into(), me.clone());
        fields.insert("coordinator".into(), me);
        let bytes = serde_json::to_vec(&spec).map_err(|e| EngineError::Invalid(e.to_string()))?;
        let id = self.announce_local(&bytes).await?;
        self.coordinate(id).await?;
        Ok(id)
    }

    /// Stops a job: as its coordinator, or as the owner of a self-organizing job.
    pub(super) async fn stop_job(&mut self, id: JobId, reason: &str) -> Result<(), EngineError> {
        let spec = self.jobs.spec(&id).ok_or_else(|| EngineError::NotFound(format!("job {id}")))?;
        let me = self.identity.member_id();
        if spec.coordinator.unwrap_or(spec.owner) != me {
            return Err(EngineError::Invalid(format!(
                "only the job's {} stops it, and this node is not it",
                if spec.coordinator.is_some() { "coordinator" } else { "owner" }
            )));
        }
        if let Some(job) = self.coordinated.get_mut(&id) {
            job.state.status = JobState::Stopped(reason.to_owned());
            job.state.assignment = None;
            save(&self.store, job)?;
        }
        let stop = JobStop { job: id, reason: reason.to_owned(), sent_at_ms: unix_millis() };
        self.publish_signed(id, stop.clone(), GossipMessage::Stop).await;
        self.on_stop(id, stop).await;
        tracing::warn!(job = %id, %reason, "stopped job");
        Ok(())
    }

    /// A coordinated job's gossip: members' joins, leaves, heartbeats, results and evaluations.
    pub(super) async fn on_coordinated_gossip(
        &mut self,
        id: JobId,
        message: GossipMessage,
    ) -> Result<(), Refused> {
        let scope = Scope::job(id);
        let now = unix_millis();
        let Some(job) = self.coordinated.get_mut(&id) else { return Ok(()) };
        let message = match message {
            // The coordinator needs a result, not its model.
            GossipMessage::ResultWithModel(m) => GossipMessage::AggregateReady(m.result),
            other => other,
        };
        let changed = match message {
            GossipMessage::Join(m) => {
                let join =
                    verify(m, |signer, body| own_admitted(&scope, signer, body, body.member))?
                        .into_body();
                let new = !job.state.members.contains_key(&join.member);
                if !job.on_join(&join, now) {
                    let detail = format!("{} is not admitted to job {id} now", join.member);
                    return Err(Refused::new(Reason::NotAdmitted, detail));
                }
                if new {
                    tracing::info!(job = %id, member = %join.member, group = %join.group, "member joined");
                }
                new
            }
            GossipMessage::Leave(m) => {
                let leave = verify(m, |_, body| scope.admits(body))?.into_body();
                job.on_leave(&leave.member);
                tracing::info!(job = %id, member = %leave.member, "member left");
                true
            }
            GossipMessage::Heartbeat(m) => {
                let heartbeat = verify(m, |_, body| scope.admits(body))?.into_body();
                job.on_heartbeat(&heartbeat, now);
                false
            }
            GossipMessage::AggregateReady(m) => {
                let ready = verify(m, |_, body| scope.admits(body))?;
                let (signer, ready) = (ready.signer(), ready.into_body());
                if !job.on_result(signer, &ready) {
                    return Ok(()); // a result already taken, or of a round not in progress
                }
                tracing::info!(job = %id, round = ready.round, model = %ready.model, updates = ready.contributions.len(), "round closed");
                true
            }
            GossipMessage::EvalReport(m) => {
                let report =
                    verify(m, |signer, body| own_admitted(&scope, signer, body, body.member))?
                        .into_body();
                job.on_evaluation(report.round, report.member, &report.metrics);
                true
            }
            // Only this coordinator assigns and stops the job: what anyone else signed is
            // refused, not passed on (a member that refuses it would penalize the forwarder).
            GossipMessage::Assignment(m) => {
                verify_from(m, Some(self.identity.member_id()), &scope)?;
                false
            }
            GossipMessage::Stop(m) => {
                verify_from(m, Some(self.identity.member_id()), &scope)?;
                false
            }
            _ => false,
        };
        if changed && let Err(error) = save(&self.store, job) {
            tracing::error!(job = %id, %error, "cannot record the job's progress");
        }
        Ok(())
    }

    /// Periodic work of every coordinated job: heartbeats, the next round's assignment, and a
    /// new assignment of the round in progress when it needs one.
    pub(super) async fn tick_coordination(&mut self) {
        let ids: Vec<JobId> = self
            .coordinated
            .iter()
            .filter(|(_, job)| job.state.status.is_active())
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.tick_coordinated(id).await;
        }
    }

    async fn tick_coordinated(&mut self, id: JobId) {
        let now = unix_millis();
        let me = self.identity.member_id();
        let Some(job) = self.coordinated.get_mut(&id) else { return };
        if now.saturating_sub(job.last_heartbeat_ms) >= HEARTBEAT_MS {
            job.last_heartbeat_ms = now;
            job.heartbeat_sequence += 1;
            // Its round tells the last round's aggregator whether this node missed a result.
            let heartbeat = Heartbeat {
                job: id,
                member: me,
                round: job.state.completed_round + 1,
                // Before the first round it holds no model: all zeros says so.
                model: job.state.model.unwrap_or(ContentHash([0; 32])),
                sequence: job.heartbeat_sequence,
                sent_at_ms: now,
            };
            self.publish_signed(id, heartbeat, GossipMessage::Heartbeat).await;
        }
        let Some(job) = self.coordinated.get_mut(&id) else { return };
        if job.state.completed_round >= job.spec.hyperparameters.rounds {
            if job.state.status != JobState::Completed {
                job.state.status = JobState::Completed;
                let _ = save(&self.store, job);
            }
            return;
        }
        let why = match (job.take_back_lost_result(now), &job.state.assignment) {
            (Some(why), _) => Some(why),
            (None, None) => None,
            (None, Some(assignment)) => match job.needs_reassignment(now, DEADLINE_GRACE_MS) {
                Some(why) => Some(why),
                None if now.saturating_sub(job.published_ms) >= REPUBLISH_MS => {
                    let again = Assignment { sent_at_ms: now, ..assignment.clone() };
                    job.published_ms = now;
                    return self.publish_signed(id, again, GossipMessage::Assignment).await;
                }
                None => return,
            },
        };
        match job.assign(now) {
            Ok((assignment, leader)) => {
                match &why {
                    Some(why) => {
                        tracing::warn!(job = %id, round = assignment.round, %leader, %why, "assigning the round again")
                    }
                    None => {
                        tracing::info!(job = %id, round = assignment.round, %leader, trainers = assignment.trainers.len(), "assigned round")
                    }
                }
                job.record_assignment(&assignment, leader, why);
                job.published_ms = now;
                if let Err(error) = save(&self.store, job) {
                    return tracing::error!(job = %id, %error, "cannot record the assignment; not sent");
                }
                self.publish_signed(id, assignment, GossipMessage::Assignment).await;
            }
            Err(reason) => tracing::debug!(job = %id, %reason, "no round assigned yet"),
        }
    }

    /// The coordinated jobs (or the one `id` names by prefix) as the admin API shows them.
    pub(super) fn coordination_views(
        &self,
        id: Option<&str>,
    ) -> Result<Vec<CoordinationView>, EngineError> {
        let now = unix_millis();
        let views: Vec<CoordinationView> = self
            .coordinated
            .values()
            .filter(|job| id.is_none_or(|prefix| job.id.to_string().starts_with(prefix)))
            .map(|job| coordination_view(job, now))
            .collect();
        if id.is_some() && views.is_empty() {
            return Err(EngineError::NotFound(format!(
                "this node coordinates no job {}",
                id.unwrap_or_default()
            )));
        }
        Ok(views)
    }
}

/// A member's own message for this job: in its scope, and signed by the member it is about (a
/// key cannot join, or report an evaluation, as another member).
fn own_admitted<T: Scoped>(
    scope: &Scope,
    signer: &MemberId,
    body: &T,
    member: MemberId,
) -> Result<(), Denied> {
    scope.admits(body)?;
    Denied::unless_signer_is(signer, &member, "the member itself")
}
