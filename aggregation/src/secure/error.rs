//! Secure aggregation errors: each names the member, phase or numbers that are wrong.

use fedmesh_protocol::{MemberId, Round};

/// Why Shamir reconstruction refused to give a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShamirError {
    #[error("{have} shares, {need} needed")]
    NotEnoughShares { have: usize, need: usize },
    #[error("two shares have the same evaluation point")]
    DuplicatePoint,
    #[error("the shares do not lie on one polynomial of the threshold's degree")]
    Inconsistent,
}

/// Why a secure aggregation step was refused. Every input from a peer that is wrong in any way
/// ends here, never in a panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecAggError {
    #[error("secure aggregation needs at least 2 members, the plan has {members}")]
    TooFewMembers { members: usize },
    #[error("{0} is listed twice among the round's members")]
    DuplicateMember(MemberId),
    #[error(
        "threshold {threshold} is invalid for neighbourhoods of {min_degree} to {max_degree} members (need (max + 1)/2 < t <= min + 1)"
    )]
    InvalidThreshold { threshold: usize, min_degree: usize, max_degree: usize },
    #[error("invalid quantizer: {0}")]
    InvalidQuantizer(&'static str),
    #[error("coordinate {index} of the update is not finite")]
    NotFinite { index: usize },
    #[error("vector has {found} coordinates, the round expects {expected}")]
    WrongLength { expected: usize, found: usize },
    #[error("round keys are for another job")]
    WrongJob,
    #[error("round keys are for round {found}, expected round {expected}")]
    WrongRound { expected: Round, found: Round },
    #[error("{0} is not a valid ed25519 public key")]
    InvalidMemberKey(MemberId),
    #[error("the signature on {0}'s round keys does not verify")]
    BadSignature(MemberId),
    #[error("{0}'s public key gives a non-contributory (low-order) Diffie-Hellman result")]
    NonContributoryKey(MemberId),
    #[error("{0} is not a member of this round")]
    UnknownMember(MemberId),
    #[error("{member} did not take part in {step}")]
    NotParticipating { member: MemberId, step: &'static str },
    #[error("{member} is not a neighbour of {of}")]
    NotNeighbour { member: MemberId, of: MemberId },
    #[error("{what} from {member} received twice")]
    Duplicate { what: &'static str, member: MemberId },
    #[error("{member} has {have} neighbours taking part, the threshold is {need}")]
    TooFewNeighbours { member: MemberId, have: usize, need: usize },
    #[error("the share from {sender} is addressed to {recipient}, not here")]
    WrongRecipient { sender: MemberId, recipient: MemberId },
    #[error("{0}'s shares are not addressed to exactly its neighbours that published keys")]
    WrongRecipients(MemberId),
    #[error("the encrypted share from {0} does not decrypt")]
    DecryptionFailed(MemberId),
    #[error("a share from {0} is malformed")]
    MalformedShare(MemberId),
    #[error("share encryption failed")]
    Encryption,
    #[error("{holder} revealed a {kind} share of {owner}, who is not {expected}")]
    UnexpectedShare {
        holder: MemberId,
        owner: MemberId,
        kind: &'static str,
        expected: &'static str,
    },
    #[error("{0} would have both its self-mask and its mask key revealed: refused")]
    ConflictingReveal(MemberId),
    #[error("this member is not among the survivors it is asked to unmask for")]
    NotASurvivor,
    #[error("{survivors} survivors, the threshold is {need}")]
    TooFewSurvivors { survivors: usize, need: usize },
    #[error(
        "too many dropouts: {member}'s secret has {holders} surviving share holders, {need} needed"
    )]
    TooManyDropouts { member: MemberId, holders: usize, need: usize },
    #[error("reconstructing {member}'s secret: {source}")]
    Reconstruction { member: MemberId, source: ShamirError },
    #[error("{0}'s reconstructed secret does not match its published key or commitment")]
    ReconstructionMismatch(MemberId),
    #[error("cannot {action} in phase {phase}")]
    WrongPhase { action: &'static str, phase: &'static str },
}
