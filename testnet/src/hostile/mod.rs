//! The hostile peer the attack scenarios run (binary `fedmesh-hostile`): a libp2p peer that
//! speaks fedmesh's protocol, as a member that joined the job or as an outsider, and sends what
//! an honest node must refuse. This module owns the vocabulary of attacks ([`Attack`],
//! [`Posing`]), what one run is asked to do ([`Plan`]) and what it did ([`Outcome`]); the
//! submodules own the peer ([`peer`]), the forged messages ([`forge`]), raw frames
//! ([`frames`]) and each attack's course ([`attacks`]).

pub mod attacks;
pub mod forge;
pub mod frames;
pub mod peer;

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// What the hostile peer sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Attack {
    /// Signed results (`AggregateReady`) naming an all-zero model: for the job's last round,
    /// past it, and for a round below the current one.
    ForgeResult,
    /// Openings (`RoundOpen`) of the next round, the last round and one past it.
    ForgeOpen,
    /// Coordinator assignments signed by the hostile key, naming itself every aggregator.
    ForgeAssignment,
    /// Captures the `--victim`'s heartbeats from gossip and, once it is silent (killed),
    /// publishes them again, re-spelled so gossipsub's duplicate filter lets them through.
    ReplayHeartbeats,
    /// `--count` joins, each signed by a fresh key.
    JoinFlood,
    /// Request frames whose length prefix is far above any node's limit.
    OversizedFrames,
    /// Request frames announcing a large (valid-looking) length, then a few bytes at a time.
    TrickledFrames,
    /// Request frames announcing 128 MiB (a node's whole default bulk budget), then sent just
    /// fast enough to pass the nodes' per-step timeout (64 KiB a second): each holds its node's
    /// budget for as long as it lasts.
    SlowFrames,
    /// Deltas declaring far more samples than the join did, up to `u64::MAX`.
    InflateSamples,
    /// Deltas full of NaN, and deltas of huge finite values.
    BadValues,
    /// `--count` deltas for rounds not open yet (the next, further ones, far ahead).
    EarlyInputs,
    /// Passes on each result heard with its model's bytes (as its aggregator signed it), with
    /// other bytes: a backdoored model in place of the one the result names.
    SwapModel,
}

impl Attack {
    /// As the command line and scenario files spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::ForgeResult => "forge-result",
            Self::ForgeOpen => "forge-open",
            Self::ForgeAssignment => "forge-assignment",
            Self::ReplayHeartbeats => "replay-heartbeats",
            Self::JoinFlood => "join-flood",
            Self::OversizedFrames => "oversized-frames",
            Self::TrickledFrames => "trickled-frames",
            Self::SlowFrames => "slow-frames",
            Self::InflateSamples => "inflate-samples",
            Self::BadValues => "bad-values",
            Self::EarlyInputs => "early-inputs",
            Self::SwapModel => "swap-model",
        }
    }

    /// Whether it needs a victim (`--victim`, a scenario event's `target`).
    pub fn needs_victim(self) -> bool {
        self == Self::ReplayHeartbeats
    }
}

/// Whom the hostile peer poses as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Posing {
    /// Joins the job first (a signed join, heartbeats), and leaves it at the end.
    #[default]
    Member,
    /// Never joins: every message is signed by a key the job does not know.
    Outsider,
}

impl Posing {
    pub fn name(self) -> &'static str {
        match self {
            Self::Member => "member",
            Self::Outsider => "outsider",
        }
    }
}

/// One run of the hostile peer.
#[derive(Debug, Clone)]
pub struct Plan {
    pub attack: Attack,
    pub posing: Posing,
    /// The job attacked (its id, as the nodes print it).
    pub job: String,
    /// The nodes' addresses, each ending in `/p2p/PEERID`.
    pub peers: Vec<String>,
    /// How many messages (joins, deltas, frames per node) a flood sends.
    pub count: usize,
    /// The PeerId whose heartbeats are replayed.
    pub victim: Option<String>,
    /// How long the attack goes on at most.
    pub duration: Duration,
}

/// What a run did, printed as one line per item.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub lines: Vec<String>,
}

impl Outcome {
    pub fn note(&mut self, line: impl Into<String>) {
        let line = line.into();
        println!("{line}");
        self.lines.push(line);
    }
}

/// Why the hostile peer could not carry its attack out.
#[derive(Debug, thiserror::Error)]
pub enum HostileError {
    #[error("not a job id: {0}")]
    JobId(String),
    #[error("not a peer address ending in /p2p/PEERID: {0}")]
    Address(String),
    #[error("not a PeerId: {0}")]
    Victim(String),
    #[error("{attack} needs --victim (the PeerId whose heartbeats are replayed)")]
    NoVictim { attack: &'static str },
    #[error("the network: {0}")]
    Network(String),
    #[error("cannot encode a message: {0}")]
    Encode(String),
    #[error("{0}")]
    Timeout(String),
    #[error("the job: {0}")]
    Job(String),
}

/// Runs `plan` to its end.
pub async fn run(plan: &Plan) -> Result<Outcome, HostileError> {
    attacks::run(plan).await
}
