//! Where a member stands in the job's current round: one explicit phase, and the state each
//! phase carries.

use crate::collect::Collecting;
use crate::ring::RingRun;
use fedmesh_aggregation::ServerOptimizer;
use fedmesh_protocol::ids::{ContentHash, MemberId, Round};
use fedmesh_protocol::message::{Contribution, Feedback, RoundOpen};
use fedmesh_topologies::RoundPlan;
use std::sync::Arc;

/// The round phase of a member's machine.
///
/// ```text
///            tick: elected ──► open ─┐
///  Waiting ──────────────────────────┴─► Open ──result──► Fetching ──fetched──► Waiting
///     ▲                                   │ (leader: top slot done)                 │
///     │                                   └──► Closing ──stored──► (adopts) ─────────┤
///     └──────────────── deadline, leader lost ◄──── Open                             │
///                                                     last round adopted ──► Ended ◄─┘
/// ```
#[derive(Default)]
pub enum Phase {
    /// Waiting for the next round's opening, or to open it as the member the plan elects (in an
    /// orchestrated job, for the coordinator's assignment of it).
    #[default]
    Waiting,
    /// Following one opening of the next round: training, sending, collecting.
    Open(Box<OpenRound>),
    /// This member closed the round it led; the new model is being stored.
    Closing(Box<Closing>),
    /// A round's result is known; its model is being fetched.
    Fetching { round: Round, model: ContentHash },
    /// The job is over for this member (see the run's status for why).
    Ended,
}

impl Phase {
    /// A short name, for logs and views.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Open(_) => "open",
            Self::Closing(_) => "closing",
            Self::Fetching { .. } => "fetching",
            Self::Ended => "ended",
        }
    }

    /// The round this phase is about, if any.
    pub fn round(&self) -> Option<Round> {
        match self {
            Self::Open(open) => Some(open.round),
            Self::Closing(closing) => Some(closing.round),
            Self::Fetching { round, .. } => Some(*round),
            Self::Waiting | Self::Ended => None,
        }
    }

    pub fn open(&self) -> Option<&OpenRound> {
        match self {
            Self::Open(open) => Some(open),
            _ => None,
        }
    }

    pub fn open_mut(&mut self) -> Option<&mut OpenRound> {
        match self {
            Self::Open(open) => Some(open),
            _ => None,
        }
    }
}

/// One opening of a round, as this member follows it.
pub struct OpenRound {
    pub round: Round,
    pub opener: MemberId,
    pub base: ContentHash,
    pub deadline_ms: u64,
    /// Identifies the opening: a round opened again has a later one.
    pub opened_at_ms: u64,
    /// The opening followed (with the members it names), and the round's plan over them.
    pub opening: Arc<RoundOpen>,
    pub plan: Arc<RoundPlan>,
    /// This member's own part as a trainer.
    pub own: Own,
    /// The slots this member aggregates.
    pub slots: Vec<Collecting>,
    /// This member's ring all-reduce, when the plan puts it in a ring.
    pub ring: Option<RingRun>,
    /// Set when this member leads the round: it watches the deadline and opens it again.
    pub leading: Option<Leading>,
    /// Whether this member asked others for the round's result (once per opening).
    pub result_asked: bool,
}

/// A trainer's own part in a round.
#[derive(Debug, Clone, PartialEq)]
pub enum Own {
    /// Not selected to train.
    NotSelected,
    /// Behind: the round's base model is being fetched first.
    FetchingBase,
    Training,
    /// The update went to the slot's aggregator (another member), or into its ring.
    Sent,
    /// The update is folded into a slot this member aggregates.
    Folded,
    /// Training failed; the round goes on without this member.
    Failed,
}

/// This member's local training on a round's base model: running, or finished (its update
/// sent, folded in, or lost with a failure). A round opened again while it runs waits for it
/// rather than starting another: a trainer slower than the deadline would otherwise pile up
/// copies of itself, each slower than the last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalTraining {
    Running(Round, ContentHash),
    Finished(Round, ContentHash),
}

impl LocalTraining {
    pub fn is_for(self, round: Round, base: ContentHash) -> bool {
        matches!(self, Self::Running(r, b) | Self::Finished(r, b) if r == round && b == base)
    }
}

/// What the leader of a round keeps.
#[derive(Debug, Clone, PartialEq)]
pub struct Leading {
    /// Updates the top slot needs to close at the deadline.
    pub required: usize,
    /// How many times the round was opened again.
    pub retries: u32,
}

/// A closed round whose model is being stored before it is announced.
pub struct Closing {
    pub round: Round,
    pub base: ContentHash,
    pub params: Arc<Vec<f32>>,
    pub contributions: Vec<Contribution>,
    /// What the aggregator saw of each contribution (an `oort` job's; else empty).
    pub feedback: Vec<Option<Feedback>>,
    pub members: Vec<MemberId>,
    /// The server optimizer's state after the round (a job with one), stored with the model.
    pub optimizer: Option<Arc<ServerOptimizer>>,
}
