//! A coordinated job as the admin API and `fedmesh job status` show it: the job's state, each
//! member's state, and each round's progress.

use fedmesh_federation::coordinator::CoordinatedJob;
use fedmesh_protocol::ids::{MemberId, Round};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CoordinationView {
    pub id: String,
    pub name: String,
    /// ready, starting, running, completed, failed: …, stopped: …
    pub state: String,
    pub completed_round: Round,
    pub rounds_total: Round,
    pub model: Option<String>,
    pub members: Vec<MemberStateView>,
    pub rounds: Vec<RoundProgressView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberStateView {
    pub peer_id: String,
    pub group: String,
    /// joined, training, aggregating, done, lost, left
    pub state: String,
    pub last_seen_ms: u64,
    pub selected: u32,
    pub contributed: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoundProgressView {
    pub round: Round,
    /// Every member the round was assigned to lead, in order.
    pub leaders: Vec<String>,
    pub aggregators: BTreeMap<String, String>,
    pub trainers: usize,
    pub contributions: usize,
    /// Why the round was assigned again, each time.
    pub reassigned: Vec<String>,
    pub accuracy: Option<f64>,
    pub seconds: Option<f64>,
    pub model: Option<String>,
}

fn peer(id: &MemberId) -> String {
    id.to_peer_id_string()
}

impl CoordinationView {
    pub fn of(job: &CoordinatedJob, now_ms: u64) -> Self {
        let state = &job.state;
        Self {
            id: job.id.to_string(),
            name: job.spec.name.clone(),
            state: state.status.label(),
            completed_round: state.completed_round,
            rounds_total: job.spec.hyperparameters.rounds,
            model: state.model.map(|m| m.to_hex()),
            members: state
                .members
                .values()
                .map(|m| MemberStateView {
                    peer_id: peer(&m.info.id),
                    group: m.info.group.clone(),
                    state: job.member_state(m, now_ms).to_owned(),
                    last_seen_ms: m.last_seen_ms,
                    selected: m.selected,
                    contributed: m.contributed,
                })
                .collect(),
            rounds: state
                .rounds
                .values()
                .map(|r| RoundProgressView {
                    round: r.round,
                    leaders: r.leaders.iter().map(peer).collect(),
                    aggregators: r.aggregators.iter().map(|(k, v)| (k.clone(), peer(v))).collect(),
                    trainers: r.trainers.len(),
                    contributions: r.contributions,
                    reassigned: r.reassigned.clone(),
                    accuracy: r.accuracy(),
                    seconds: r
                        .closed_at_ms
                        .map(|c| c.saturating_sub(r.assigned_at_ms) as f64 / 1000.0),
                    model: r.model.map(|m| m.to_hex()),
                })
                .collect(),
        }
    }
}
