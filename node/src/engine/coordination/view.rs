//! A coordinated job as the admin API and `fedmesh job status` show it: the job's state, each
//! member's state, and each round's progress.

use fedmesh_admin_api::{CoordinationView, MemberStateView, RoundProgressView};
use fedmesh_federation::coordinator::CoordinatedJob;
use fedmesh_protocol::ids::MemberId;

fn peer(id: &MemberId) -> String {
    id.to_peer_id_string()
}

/// `job` as its coordinator shows it at `now_ms`.
pub fn coordination_view(job: &CoordinatedJob, now_ms: u64) -> CoordinationView {
    let state = &job.state;
    CoordinationView {
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
                seconds: r.closed_at_ms.map(|c| c.saturating_sub(r.assigned_at_ms) as f64 / 1000.0),
                model: r.model.map(|m| m.to_hex()),
            })
            .collect(),
    }
}
