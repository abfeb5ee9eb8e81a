//! What a node records of a job it takes part in: its state, members and rounds, as RocksDB
//! keeps them.

use crate::membership::Membership;
use fedmesh_protocol::ids::{ContentHash, MemberId, Round};
use fedmesh_protocol::message::{AggregateReady, EvalMetrics};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where a job stands for this node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Joined; waiting for the minimum of participants.
    Waiting,
    Running,
    Completed,
    /// This node left the job.
    Left,
    /// This node cannot take part (for example its data does not fit the model).
    Failed(String),
    /// The job's coordinator stopped it, for this reason.
    Stopped(String),
}

impl RunStatus {
    pub fn label(&self) -> String {
        match self {
            Self::Waiting => "waiting".into(),
            Self::Running => "running".into(),
            Self::Completed => "completed".into(),
            Self::Left => "left".into(),
            Self::Failed(reason) => format!("failed: {reason}"),
            Self::Stopped(reason) => format!("stopped: {reason}"),
        }
    }
}

/// One round as this node saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundRecord {
    pub round: Round,
    pub aggregator: MemberId,
    pub base_model: ContentHash,
    /// The round's global model, once announced.
    pub model: Option<ContentHash>,
    pub participants: usize,
    /// When the round first opened: an opening again (at its deadline, or by a new leader)
    /// keeps it, so the round's time counts what it waited before.
    pub opened_at_ms: u64,
    pub closed_at_ms: Option<u64>,
    /// This node's local training time, if it trained.
    pub train_seconds: Option<f64>,
    /// Each member's evaluation of the round's model.
    pub evaluations: BTreeMap<MemberId, EvalMetrics>,
    /// The plan of the round's latest opening: each slot's aggregator, each ring's order.
    pub slots: BTreeMap<String, MemberId>,
    pub rings: BTreeMap<String, Vec<MemberId>>,
}

impl RoundRecord {
    pub fn new(
        round: Round,
        aggregator: MemberId,
        base_model: ContentHash,
        opened_at_ms: u64,
    ) -> Self {
        Self {
            round,
            aggregator,
            base_model,
            model: None,
            participants: 0,
            opened_at_ms,
            closed_at_ms: None,
            train_seconds: None,
            evaluations: BTreeMap::new(),
            slots: BTreeMap::new(),
            rings: BTreeMap::new(),
        }
    }

    /// Records the round's announced result.
    pub fn close(&mut self, ready: &AggregateReady) {
        self.model = Some(ready.model);
        self.participants = ready.contributions.len();
        self.closed_at_ms = Some(ready.sent_at_ms);
    }

    /// A result heard after the member caught up past its round (by fetching the round's model
    /// as the next round's base before the result's gossip arrived) completes the round's record.
    pub fn complete_late(&mut self, ready: &AggregateReady) {
        if self.model == Some(ready.model) && self.closed_at_ms.is_none() {
            self.close(ready);
        }
    }

    /// Test-size-weighted loss and accuracy over the members' evaluations, and their samples.
    pub fn weighted_metrics(&self) -> (Option<f64>, Option<f64>, u64) {
        let weighted = |pick: fn(&EvalMetrics) -> Option<f32>| {
            let (sum, weight) = self
                .evaluations
                .values()
                .filter_map(|m| {
                    pick(m).map(|v| (f64::from(v) * m.samples as f64, m.samples as f64))
                })
                .fold((0.0, 0.0), |(s, w), (v, n)| (s + v, w + n));
            (weight > 0.0).then(|| sum / weight)
        };
        let samples = self.evaluations.values().map(|m| m.samples).sum();
        (weighted(|m| m.loss), weighted(|m| m.accuracy), samples)
    }
}

/// What RocksDB keeps of a job this node takes part in (the rounds are kept one record each).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    pub status: RunStatus,
    /// The last round whose global model this node holds (0: the initial model).
    pub completed_round: Round,
    pub model: ContentHash,
    pub members: Membership,
    /// The members whose updates the result of round `completed_round` counted, sorted by key:
    /// the next round's aggregators are elected among them (and the owner) ahead of the rest.
    #[serde(default)]
    pub vetted: Vec<MemberId>,
    /// Aggregators a fraud proof convicted (verifiable jobs), sorted by key: left out of every
    /// round plan for the rest of the job.
    #[serde(default)]
    pub excluded: Vec<MemberId>,
    /// Models proven wrong, and those built on them here, oldest first (at most
    /// `member::MAX_CONDEMNED`): no round message over one of them is taken again.
    #[serde(default)]
    pub condemned: Vec<ContentHash>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedmesh_protocol::ids::JobId;
    use fedmesh_protocol::message::Contribution;

    fn result(round: Round, model: &[u8], trainers: u8) -> AggregateReady {
        let contribution = |byte| Contribution {
            member: MemberId([byte; 32]),
            delta: ContentHash::of(&[byte]),
            samples: 10,
        };
        AggregateReady {
            job: JobId(ContentHash::of(b"job")),
            round,
            base_model: ContentHash::of(b"base"),
            model: ContentHash::of(model),
            contributions: (1..=trainers).map(contribution).collect(),
            feedback: Vec::new(),
            metrics: EvalMetrics::default(),
            members: Vec::new(),
            vetted: Vec::new(),
            sent_at_ms: 5_000,
            optimizer_state: None,
        }
    }

    /// A record made when the member caught up (it holds the model, not the result).
    fn caught_up(round: Round, model: &[u8]) -> RoundRecord {
        let mut record = RoundRecord::new(round, MemberId([9; 32]), ContentHash::of(model), 4_000);
        record.model = Some(ContentHash::of(model));
        record
    }

    #[test]
    fn a_late_result_completes_the_record_of_a_round_caught_up_past() {
        let mut record = caught_up(7, b"model");
        record.complete_late(&result(7, b"model", 3));
        assert_eq!((record.participants, record.closed_at_ms), (3, Some(5_000)));
    }

    #[test]
    fn a_late_result_naming_another_model_or_a_closed_round_changes_nothing() {
        let mut record = caught_up(7, b"model");
        record.complete_late(&result(7, b"forged", 3));
        assert_eq!((record.participants, record.closed_at_ms), (0, None));
        record.close(&result(7, b"model", 4));
        record.complete_late(&result(7, b"model", 2));
        assert_eq!((record.participants, record.closed_at_ms), (4, Some(5_000)));
    }
}
