//! What a run reports: the figures the `--json` line carries and the short human summary.

use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Every live honest member completed the job.
    Completed,
    /// Simulated time ran out, or nothing was left to happen, before that.
    Stalled,
    /// An honest member's machine failed, stopped or left the job.
    Failed,
}

/// Counters kept while the run goes.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counters {
    /// Message copies put on the network (gossip copies, updates, result requests, fetches).
    pub messages: u64,
    pub bytes: u64,
    /// Copies lost to `--loss`.
    pub lost: u64,
    /// Copies dropped at a partition's cut or at a dead member.
    pub undeliverable: u64,
    /// Updates sent again after a failed attempt.
    pub resent: u64,
    /// Updates whose signature did not verify (forgeries), dropped by the driver.
    pub forged_dropped: u64,
    /// Updates accepted by their aggregator.
    pub accepted: u64,
    /// Updates refused, by the machine's reason.
    pub refused: BTreeMap<String, u64>,
    /// Results withheld by `withhold-results` adversaries.
    pub withheld: u64,
    /// Openings and made-up results published by `hijack-rounds` adversaries.
    pub hijacks: u64,
    /// Results a forge-aggregate member announced with a model that is not their recomputation.
    pub aggregates_forged: u64,
    /// Fraud proofs published, and audits that could not be made (a contribution missing).
    pub fraud_proofs: u64,
    pub audits_failed: u64,
    /// Forged models in the honest members' round records at the end (undetected forgeries),
    /// summed over the members.
    pub forged_models_kept: u64,
    /// Fetches that found no holder within the fetch timeout.
    pub fetch_failures: u64,
    pub members_killed: u64,
    pub members_restarted: u64,
    pub members_left: u64,
    pub members_rejoined: u64,
    pub notices_info: u64,
    pub notices_warn: u64,
}

/// The report of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub status: Status,
    pub members: usize,
    pub rounds: u64,
    pub topology: String,
    pub seed: u64,
    /// The highest round every live member completed.
    pub rounds_completed: u64,
    /// Whether every live honest member ends with the same model.
    pub models_agree: bool,
    /// Rounds opened more than once.
    pub rounds_repeated: u64,
    pub messages: u64,
    pub bytes: u64,
    pub sim_seconds: f64,
    pub wall_seconds: f64,
    pub trace_digest: String,
    /// Events fed to machines.
    pub events: u64,
    pub live_members: usize,
    /// Live honest members whose job is complete.
    pub members_completed: usize,
    pub adversaries: BTreeMap<String, usize>,
    /// The model every live honest member ends with (if they agree).
    pub final_model: Option<String>,
    /// The final model's loss and accuracy on the whole test split (data models), or its root
    /// mean square as the loss (bench models).
    pub final_loss: Option<f32>,
    pub final_accuracy: Option<f32>,
    /// The model honest members adopted for each round.
    pub round_models: BTreeMap<u64, String>,
    /// Broken invariants (a round adopted with two models, a model of a round changed, ...).
    pub violations: Vec<String>,
    pub counters: Counters,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counters;
        writeln!(
            f,
            "{:?}: {} of {} rounds, {} members ({} live, {} completed), {} topology, seed {}",
            self.status,
            self.rounds_completed,
            self.rounds,
            self.members,
            self.live_members,
            self.members_completed,
            self.topology,
            self.seed
        )?;
        writeln!(
            f,
            "models agree: {}; rounds repeated: {}; invariant violations: {}",
            self.models_agree,
            self.rounds_repeated,
            self.violations.len()
        )?;
        writeln!(
            f,
            "{:.1} s simulated in {:.1} s; {} events; {} messages, {} bytes; {} lost",
            self.sim_seconds, self.wall_seconds, self.events, self.messages, self.bytes, c.lost
        )?;
        writeln!(
            f,
            "updates: {} accepted, refused {:?}, {} forged dropped; killed {}, restarted {}; left {}, \
             joined again {}",
            c.accepted,
            c.refused,
            c.forged_dropped,
            c.members_killed,
            c.members_restarted,
            c.members_left,
            c.members_rejoined
        )?;
        if let Some(loss) = self.final_loss {
            write!(f, "final loss {loss:.4}")?;
            if let Some(accuracy) = self.final_accuracy {
                write!(f, ", accuracy {accuracy:.4}")?;
            }
            writeln!(f)?;
        }
        for violation in &self.violations {
            writeln!(f, "violation: {violation}")?;
        }
        write!(f, "trace digest {}", self.trace_digest)
    }
}
