//! A coordinated job as `GET /v1/coordinator/jobs` and `fedmesh job status` show it: the job's
//! state, each member's state, and each round's progress.

use fedmesh_protocol::ids::Round;
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
