//! Why a message or an update was refused: one name per rule, counted by the node's metrics
//! under its label, and telling the node whether the refusal proves its sender misbehaved.

/// Why a message or an update was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// A round message for a round that does not continue from this member's newest model.
    AheadOfRound,
    /// A job announcement that is malformed or does not verify.
    BadAnnouncement,
    /// A gossip message that is malformed, badly signed or outside the job's scope.
    BadMessage,
    /// A signature that does not verify.
    BadSignature,
    /// A join while too many newcomers wait to be proven.
    Crowded,
    /// An update already received (or a fraud proof its accuser already sent about a result).
    Duplicate,
    /// A round message over a model a fraud proof showed wrong (or built on one).
    CondemnedModel,
    /// A round message from an aggregator a fraud proof convicted.
    Excluded,
    /// A fraud proof whose result recomputes to the model announced: its accuser lied.
    FalseFraudProof,
    /// A request for a contribution this member does not keep (or no longer).
    NotKept,
    /// A fraud proof in a job without verification.
    NotVerifiable,
    /// A fraud proof while the most audits this member runs at once are under way.
    TooManyAudits,
    /// A request for a job that ended here.
    Ended,
    /// An update with a value past the bound every honest update keeps to.
    HugeValues,
    /// A ring whose chunks do not include the same updates.
    InconsistentRing,
    /// An update weighing more samples than its member declared.
    InflatedSamples,
    /// This node failed to handle the message itself.
    Internal,
    /// A request that does not decode.
    Malformed,
    /// A payload that does not decode or holds non-finite values.
    MalformedPayload,
    /// A message from a key that is not a member of the job.
    NotAMember,
    /// A join the job's admission rules do not let in.
    NotAdmitted,
    /// An update for a slot this member does not aggregate now.
    NotAggregating,
    /// A message for a job this node did not join.
    NotJoined,
    /// An assignment for a job with no coordinator.
    NotOrchestrated,
    /// An update from a member the round did not select.
    NotSelected,
    /// A round message from a member that does not aggregate the round here.
    NotTheAggregator,
    /// A message only the job's coordinator (or owner) may send, signed by someone else.
    NotTheCoordinator,
    /// An opening in a job whose coordinator assigns its rounds.
    Orchestrated,
    /// A message for a round past the job's last.
    PastLastRound,
    /// An update its aggregation rule refused.
    RejectedUpdate,
    /// A join, heartbeat, leave or opening sent before the newest one heard from its sender.
    Replayed,
    /// An update for an opening older than the one followed.
    StaleOpening,
    /// This node could not read or write its store.
    StoreError,
    /// A request of a kind this node does not take here.
    UnexpectedKind,
    /// A job announced by an owner this node does not trust.
    UntrustedOwner,
    /// An announcement that does not match the job it names.
    WrongAnnouncement,
    /// An update that builds on another model than the round's.
    WrongBase,
    /// A result that came with other model bytes than the model it names.
    WrongModel,
    /// A message of the wrong kind for where it arrived.
    WrongKind,
    /// An update whose tensors do not have the model's layout.
    WrongLayout,
    /// An update for another round.
    WrongRound,
    /// A message signed by another member than the one it speaks for.
    WrongSigner,
    /// A ring chunk for a step, or from a member, the ring does not expect.
    WrongStep,
}

impl Reason {
    /// Its label, as the metrics count it.
    pub fn label(self) -> &'static str {
        match self {
            Self::AheadOfRound => "ahead_of_round",
            Self::BadAnnouncement => "bad_announcement",
            Self::BadMessage => "bad_message",
            Self::BadSignature => "bad_signature",
            Self::Crowded => "crowded",
            Self::Duplicate => "duplicate",
            Self::CondemnedModel => "condemned_model",
            Self::Excluded => "excluded",
            Self::FalseFraudProof => "false_fraud_proof",
            Self::NotKept => "not_kept",
            Self::NotVerifiable => "not_verifiable",
            Self::TooManyAudits => "too_many_audits",
            Self::Ended => "ended",
            Self::HugeValues => "huge_values",
            Self::InconsistentRing => "inconsistent_ring",
            Self::InflatedSamples => "inflated_samples",
            Self::Internal => "internal",
            Self::Malformed => "malformed",
            Self::MalformedPayload => "malformed_payload",
            Self::NotAMember => "not_a_member",
            Self::NotAdmitted => "not_admitted",
            Self::NotAggregating => "not_aggregating",
            Self::NotJoined => "not_joined",
            Self::NotOrchestrated => "not_orchestrated",
            Self::NotSelected => "not_selected",
            Self::NotTheAggregator => "not_the_aggregator",
            Self::NotTheCoordinator => "not_the_coordinator",
            Self::Orchestrated => "orchestrated",
            Self::PastLastRound => "past_last_round",
            Self::RejectedUpdate => "rejected_update",
            Self::Replayed => "replayed",
            Self::StaleOpening => "stale_opening",
            Self::StoreError => "store_error",
            Self::UnexpectedKind => "unexpected_kind",
            Self::UntrustedOwner => "untrusted_owner",
            Self::WrongAnnouncement => "wrong_announcement",
            Self::WrongBase => "wrong_base",
            Self::WrongModel => "wrong_model",
            Self::WrongKind => "wrong_kind",
            Self::WrongLayout => "wrong_layout",
            Self::WrongRound => "wrong_round",
            Self::WrongSigner => "wrong_signer",
            Self::WrongStep => "wrong_step",
        }
    }

    /// Whether the refusal proves its author or forwarder misbehaved, whatever the refusing
    /// node's view of the job: a bad signature or a message outside the job's scope, a message
    /// only the coordinator may send signed by someone else, a message about another member, a
    /// result with model bytes that are not its model (whoever passed it on swapped them), a
    /// fraud proof whose result recomputes to its model, or one in a job that is not verifiable.
    /// Every other refusal (stale, not joined, a round the node is not at) may be honest timing.
    pub fn proves_misbehaviour(self) -> bool {
        matches!(
            self,
            Self::BadMessage
                | Self::NotTheCoordinator
                | Self::WrongSigner
                | Self::WrongModel
                | Self::FalseFraudProof
                | Self::NotVerifiable
        )
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}
