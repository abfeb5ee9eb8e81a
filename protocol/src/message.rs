//! The wire messages: signed bodies, the gossip (control) enum, and the request-response (bulk)
//! enums. Every body names its job, and its round and base model where it has them, so a valid
//! signature cannot be replayed elsewhere.

use crate::envelope::{CarriesPayload, Scoped, Signed, SignedBody, Verified, VerifyError};
use crate::envelope::{Denied, Domain};
use crate::ids::{ContentHash, JobId, MemberId, Round};
use crate::spec::{JobSpec, MAX_JOB_SPEC_BYTES};
use crate::tensor::PayloadRef;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Longest group label, role name, slot name or free-text reason, in bytes.
pub const MAX_LABEL_BYTES: usize = 256;
/// Most roles one join or assignment entry may list.
pub const MAX_ROLES: usize = 16;
/// Most job ids one job list names.
pub const MAX_JOB_IDS: usize = 1000;
/// Most members one assignment, aggregate or partial aggregate may name.
pub const MAX_MEMBERS: usize = 10_000;

/// Milliseconds since the Unix epoch, for the `*_at_ms` fields.
pub fn unix_millis() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    since.map_or(0, |d| d.as_millis() as u64)
}

/// A job's owner announces it; the job id is the hash of the signed announcement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobAnnouncement {
    /// The job spec's canonical JSON (`JobSpec::to_canonical_json`).
    #[serde(with = "serde_bytes")]
    pub spec_json: Vec<u8>,
    pub announced_at_ms: u64,
}

impl JobAnnouncement {
    /// Announces `spec` (validated first).
    pub fn new(spec: &JobSpec, announced_at_ms: u64) -> Result<Self, crate::spec::SpecErrors> {
        spec.validate()?;
        Ok(Self { spec_json: spec.to_canonical_json()?, announced_at_ms })
    }
}

/// A member joins a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Join {
    pub job: JobId,
    pub member: MemberId,
    /// Its `groupBy` label (for example a region).
    pub group: String,
    /// The TAG roles it accepts.
    pub roles: Vec<String>,
    /// How many samples its local data set has.
    pub samples: u64,
    /// Whether peers can dial it directly, as far as it knows (it is not behind a NAT): every
    /// trainer sends its update to the aggregator, so elections prefer such members.
    pub reachable: bool,
    pub sent_at_ms: u64,
    /// The owner's admission of this key, for a job that admits members by ticket
    /// (`participation.admission = "owner"`; boxed: most joins carry none, and a join is one
    /// of the gossip kinds a simulator holds millions of at once).
    pub ticket: Option<Box<Signed<Ticket>>>,
}

/// A job's owner admits one key to it (`fedmesh job admit`): the member presents the signed
/// ticket in each of its joins, and every member and the coordinator check it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ticket {
    pub job: JobId,
    pub member: MemberId,
    pub issued_at_ms: u64,
}

/// Why a ticket does not admit a join.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    #[error("no ticket")]
    Missing,
    #[error("the ticket is signed by {0}, not by the job's owner")]
    NotTheOwner(MemberId),
    #[error("the ticket is for {0}")]
    OtherMember(MemberId),
    #[error("the ticket is for another job")]
    OtherJob,
    #[error("the ticket does not verify: {0}")]
    Invalid(String),
}

impl Ticket {
    /// Checks that `ticket` admits `member` to `job`: signed by `owner`, for this job and key.
    pub fn admits(
        ticket: Option<&Signed<Ticket>>,
        owner: &MemberId,
        job: &JobId,
        member: &MemberId,
    ) -> Result<(), TicketError> {
        let ticket = ticket.ok_or(TicketError::Missing)?;
        if ticket.signer() != *owner {
            return Err(TicketError::NotTheOwner(ticket.signer()));
        }
        let verified = ticket.clone().verify(|_, _| Ok(()));
        let body = verified.map_err(|e| TicketError::Invalid(e.to_string()))?.into_body();
        if body.job != *job {
            return Err(TicketError::OtherJob);
        }
        if body.member != *member {
            return Err(TicketError::OtherMember(body.member));
        }
        Ok(())
    }
}

/// A member leaves a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Leave {
    pub job: JobId,
    pub member: MemberId,
    pub reason: String,
    pub sent_at_ms: u64,
}

/// A member is alive in a job; `sequence` makes every heartbeat distinct.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub job: JobId,
    pub member: MemberId,
    /// The round it is in, and the global model it holds (that round's base).
    pub round: Round,
    pub model: ContentHash,
    pub sequence: u64,
    pub sent_at_ms: u64,
}

/// A round opens on a base model, with a deadline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundOpen {
    pub job: JobId,
    pub round: Round,
    pub base_model: ContentHash,
    pub deadline_ms: u64,
    /// Identifies this opening: a round opened again (retried, taken over) has a later one.
    pub opened_at_ms: u64,
    /// The live members the opener planned the round over: every member computes the round's
    /// plan (slots, rings, destinations) over exactly these, so all agree on it.
    pub members: Vec<MemberId>,
    /// The trainers the opener selected among `members` (sorted by key), for a job whose
    /// selector learns from past rounds (`fedbuff`, `oort`): what it learned is the opener's,
    /// so the others follow its choice. Empty for a `random` selector: every member samples the
    /// same trainers itself.
    pub trainers: Vec<MemberId>,
    /// A bitmap over `members` (bit `i % 8` of byte `i / 8` for `members[i]`): the trainers
    /// whose updates the opener keeps from an earlier opening of this round, in a slot it
    /// aggregates. They need not send them again (in a 200-member job every trainer sending
    /// its update again at each opening kept the aggregator's connection slots from those
    /// whose updates it lacked). Empty in a first opening, or one by an opener that lost them.
    pub kept: Vec<u8>,
}

impl RoundOpen {
    /// The bitmap of `kept` for the members at these indices of `members`.
    pub fn kept_bitmap(members: usize, kept: impl IntoIterator<Item = usize>) -> Vec<u8> {
        let mut bitmap = vec![0u8; members.div_ceil(8)];
        for index in kept.into_iter().filter(|index| *index < members) {
            bitmap[index / 8] |= 1 << (index % 8);
        }
        if bitmap.iter().all(|byte| *byte == 0) {
            bitmap.clear();
        }
        bitmap
    }

    /// Whether the opener keeps `member`'s update from an earlier opening.
    pub fn keeps(&self, member: &MemberId) -> bool {
        let Some(index) = self.members.iter().position(|m| m == member) else { return false };
        self.kept.get(index / 8).is_some_and(|byte| byte & (1 << (index % 8)) != 0)
    }
}

/// A coordinator's roles and selection for one round (orchestration mode).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    pub job: JobId,
    pub round: Round,
    pub base_model: ContentHash,
    /// The roles each member takes this round.
    pub roles: BTreeMap<MemberId, Vec<String>>,
    /// The trainers selected this round.
    pub trainers: Vec<MemberId>,
    /// The aggregator of each slot: `"top"` for the top slot, `role/label` for the others (as
    /// `fedmesh_topologies::SlotId` prints them).
    pub aggregators: BTreeMap<String, MemberId>,
    /// The round closes at its quorum or at this time.
    pub deadline_ms: u64,
    /// Identifies this assignment of the round: a reassignment (a lost aggregator replaced, a
    /// lost trainer dropped) has a later one. Members take it as the round's opening time.
    pub issued_at_ms: u64,
    /// When this copy went out (the same assignment goes out again for members that missed it).
    pub sent_at_ms: u64,
}

/// The coordinator (or, for a self-organizing job, its owner) stops a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobStop {
    pub job: JobId,
    pub reason: String,
    pub sent_at_ms: u64,
}

/// One member's update as an aggregate counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Contribution {
    pub member: MemberId,
    /// The hash of the delta payload.
    pub delta: ContentHash,
    pub samples: u64,
}

/// Training metrics a trainer reports with its delta.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrainMetrics {
    pub loss: f32,
    pub accuracy: Option<f32>,
}

/// What a round's aggregator saw of one contribution it received directly: the loss its
/// trainer reported and how long after the opening the update arrived (an `oort` job's
/// selector learns from these).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Feedback {
    pub loss: f32,
    pub duration_ms: u64,
}

/// Evaluation metrics of a global model.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct EvalMetrics {
    pub loss: Option<f32>,
    pub accuracy: Option<f32>,
    /// Samples the evaluation used (0 if none).
    pub samples: u64,
}

/// A round's new global model is ready; lists every contribution it includes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AggregateReady {
    pub job: JobId,
    pub round: Round,
    pub base_model: ContentHash,
    /// The new global model's hash (fetch it as a blob).
    pub model: ContentHash,
    pub contributions: Vec<Contribution>,
    /// In an `oort` job, what the aggregator saw of each of `contributions` (the same order;
    /// none for a contribution it did not receive itself); empty in any other job.
    pub feedback: Vec<Option<Feedback>>,
    pub metrics: EvalMetrics,
    /// The members the round was planned over (its opening's): a member that missed the round
    /// checks that their plan elects the signer before it takes the result.
    pub members: Vec<MemberId>,
    /// Which of `members` the plan elected aggregators among first (those the round before
    /// counted; bit `i % 8` of byte `i / 8` for `members[i]`): a member that missed the round
    /// before, and so cannot know them, plans with these (see [`AggregateReady::vetted_members`]).
    pub vetted: Vec<u8>,
    pub sent_at_ms: u64,
    /// A job with a server optimizer (`strategy.server`): the content hash of the optimizer's
    /// state after this round (`fedmesh_aggregation::ServerOptimizer::encode_state`), stored
    /// next to `model`. The next round's aggregator fetches it and resumes from it, whoever it
    /// is. `None` in every other job.
    pub optimizer_state: Option<ContentHash>,
}

impl AggregateReady {
    /// The bitmap of [`AggregateReady::vetted`]: which of `members` are in `vetted` (sorted).
    pub fn vetted_bitmap(members: &[MemberId], vetted: &[MemberId]) -> Vec<u8> {
        let mut bitmap = vec![0u8; members.len().div_ceil(8)];
        for (index, member) in members.iter().enumerate() {
            if vetted.binary_search(member).is_ok() {
                bitmap[index / 8] |= 1 << (index % 8);
            }
        }
        bitmap
    }

    /// The members its bitmap marks vetted, sorted by key.
    pub fn vetted_members(&self) -> Vec<MemberId> {
        let marked =
            |index: &usize| self.vetted.get(index / 8).is_some_and(|b| b >> (index % 8) & 1 == 1);
        let mut vetted: Vec<MemberId> =
            (0..self.members.len()).filter(marked).map(|index| self.members[index]).collect();
        vetted.sort_unstable();
        vetted.dedup();
        vetted
    }
}

/// A member's proof that a round's aggregator lied (verifiable jobs): the aggregator's own
/// signed result, and the model hash its listed contributions recompute to (with
/// `fedmesh_aggregation::verifiable`), which is not the model it announced. Whoever receives
/// it checks both signatures, then recomputes before believing it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FraudProof {
    pub job: JobId,
    pub round: Round,
    pub accuser: MemberId,
    /// The liar's announcement, as it signed it (check it with [`FraudProof::verify_result`]).
    pub result: Signed<AggregateReady>,
    /// What the contributions `result` lists recompute to over its base model.
    pub recomputed: ContentHash,
    pub sent_at_ms: u64,
}

impl FraudProof {
    /// Verifies the accused result's own envelope: the liar's signature over it, and that it is
    /// a well-formed result of this proof's job and round.
    pub fn verify_result(&self) -> Result<Verified<AggregateReady>, VerifyError> {
        let (job, round) = (self.job, self.round);
        self.result.clone().verify(|_, ready| {
            if ready.job != job || ready.round != round {
                return Err(Denied::new("the accused result is of another job or round"));
            }
            Ok(())
        })
    }
}

/// A member's evaluation of a round's global model on its local test split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub job: JobId,
    pub round: Round,
    /// The global model evaluated.
    pub model: ContentHash,
    pub member: MemberId,
    pub metrics: EvalMetrics,
    pub sent_at_ms: u64,
}

/// A trainer's update; the payload travels beside the message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelDelta {
    pub job: JobId,
    pub round: Round,
    pub base_model: ContentHash,
    pub member: MemberId,
    pub samples: u64,
    pub metrics: TrainMetrics,
    pub payload: PayloadRef,
}

/// A slot's or a ring's combined update, sent up a tier (hierarchical and hybrid topologies);
/// the combined delta travels beside.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartialAggregate {
    pub job: JobId,
    pub round: Round,
    pub base_model: ContentHash,
    /// The opening of the round it answers (see [`RoundOpen::opened_at_ms`]).
    pub opened_at_ms: u64,
    /// The group label of the slot or ring it combines.
    pub group: String,
    pub aggregator: MemberId,
    /// The group's combined delta (its weighted mean; times `total_weight`, its weighted sum).
    pub mean: PayloadRef,
    /// The sum of the included contributions' sample counts.
    pub total_weight: f64,
    pub contributions: Vec<Contribution>,
}

/// One step of a ring all-reduce: a chunk of the ring's running weighted sum (reduce-scatter) or
/// of its final sum (all-gather), sent to the next member; the values travel beside.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RingChunk {
    pub job: JobId,
    pub round: Round,
    pub base_model: ContentHash,
    /// The opening of the round it belongs to: a ring re-formed after a failure is a new one.
    pub opened_at_ms: u64,
    pub member: MemberId,
    /// The step of the sender's schedule (reduce-scatter steps first, then all-gather).
    pub step: u32,
    /// Which chunk of the vector the values are.
    pub chunk: u32,
    /// The members whose updates the values include, with their sample counts.
    pub contributions: Vec<Contribution>,
    /// The chunk's values: a sum of updates, each weighted by its sample count.
    pub values: PayloadRef,
}

fn check_label(what: &str, text: &str) -> Result<(), String> {
    if text.len() > MAX_LABEL_BYTES {
        return Err(format!("{what} is {} bytes, at most {MAX_LABEL_BYTES}", text.len()));
    }
    if text.chars().any(char::is_control) {
        return Err(format!("{what} contains control characters"));
    }
    Ok(())
}

fn check_roles(roles: &[String]) -> Result<(), String> {
    if roles.len() > MAX_ROLES {
        return Err(format!("{} roles, at most {MAX_ROLES}", roles.len()));
    }
    roles.iter().try_for_each(|role| check_label("a role name", role))
}

fn check_count(what: &str, count: usize) -> Result<(), String> {
    if count > MAX_MEMBERS {
        return Err(format!("{count} {what}, at most {MAX_MEMBERS}"));
    }
    Ok(())
}

fn check_unique<T: Ord>(what: &str, items: impl IntoIterator<Item = T>) -> Result<(), String> {
    let mut seen = BTreeSet::new();
    if items.into_iter().all(|item| seen.insert(item)) {
        Ok(())
    } else {
        Err(format!("{what} lists a member twice"))
    }
}

fn check_finite(what: &str, value: Option<f32>) -> Result<(), String> {
    match value {
        Some(v) if !v.is_finite() => Err(format!("{what} is not finite")),
        _ => Ok(()),
    }
}

fn check_contributions(contributions: &[Contribution]) -> Result<(), String> {
    check_count("contributions", contributions.len())?;
    check_unique("contributions", contributions.iter().map(|c| c.member))
}

fn check_accuracy(accuracy: Option<f32>) -> Result<(), String> {
    match accuracy {
        Some(a) if !(0.0..=1.0).contains(&a) => Err(format!("accuracy {a} is not in [0, 1]")),
        _ => Ok(()),
    }
}

impl SignedBody for JobAnnouncement {
    const DOMAIN: Domain = Domain::JobAnnouncement;

    fn check(&self) -> Result<(), String> {
        if self.spec_json.len() > MAX_JOB_SPEC_BYTES {
            return Err(format!(
                "job spec is {} bytes, at most {MAX_JOB_SPEC_BYTES}",
                self.spec_json.len()
            ));
        }
        Ok(())
    }
}

impl SignedBody for Join {
    const DOMAIN: Domain = Domain::Join;

    fn check(&self) -> Result<(), String> {
        check_label("the group label", &self.group)?;
        check_roles(&self.roles)
    }

    fn declared_sender(&self) -> Option<MemberId> {
        Some(self.member)
    }
}

impl SignedBody for Ticket {
    const DOMAIN: Domain = Domain::Ticket;

    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

impl SignedBody for Leave {
    const DOMAIN: Domain = Domain::Leave;

    fn check(&self) -> Result<(), String> {
        check_label("the reason", &self.reason)
    }

    fn declared_sender(&self) -> Option<MemberId> {
        Some(self.member)
    }
}

impl SignedBody for Heartbeat {
    const DOMAIN: Domain = Domain::Heartbeat;

    fn check(&self) -> Result<(), String> {
        Ok(())
    }

    fn declared_sender(&self) -> Option<MemberId> {
        Some(self.member)
    }
}

impl SignedBody for RoundOpen {
    const DOMAIN: Domain = Domain::RoundOpen;

    fn check(&self) -> Result<(), String> {
        if self.round == 0 {
            return Err("rounds start at 1".into());
        }
        check_count("members", self.members.len())?;
        check_unique("the member list", &self.members)?;
        if self.trainers.len() > self.members.len() {
            return Err(format!(
                "{} trainers of {} members",
                self.trainers.len(),
                self.members.len()
            ));
        }
        check_unique("the trainer list", &self.trainers)
    }
}

impl SignedBody for Assignment {
    const DOMAIN: Domain = Domain::Assignment;

    fn check(&self) -> Result<(), String> {
        check_count("members with roles", self.roles.len())?;
        self.roles.values().try_for_each(|roles| check_roles(roles))?;
        check_count("trainers", self.trainers.len())?;
        check_unique("the trainer list", &self.trainers)?;
        check_count("aggregator slots", self.aggregators.len())?;
        self.aggregators.keys().try_for_each(|slot| check_label("a slot name", slot))
    }
}

impl SignedBody for JobStop {
    const DOMAIN: Domain = Domain::JobStop;

    fn check(&self) -> Result<(), String> {
        if self.reason.len() > 1024 {
            return Err("a stop reason of at most 1024 bytes".into());
        }
        Ok(())
    }
}

impl SignedBody for AggregateReady {
    const DOMAIN: Domain = Domain::AggregateReady;

    fn check(&self) -> Result<(), String> {
        check_contributions(&self.contributions)?;
        if !self.feedback.is_empty() && self.feedback.len() != self.contributions.len() {
            return Err(format!(
                "feedback on {} of {} contributions",
                self.feedback.len(),
                self.contributions.len()
            ));
        }
        let losses = self.feedback.iter().flatten().map(|feedback| Some(feedback.loss));
        losses.into_iter().try_for_each(|loss| check_finite("a contribution's loss", loss))?;
        check_finite("the loss", self.metrics.loss)?;
        check_accuracy(self.metrics.accuracy)?;
        if self.vetted.len() > self.members.len().div_ceil(8) {
            return Err(format!(
                "a bitmap of {} bytes over {} members",
                self.vetted.len(),
                self.members.len()
            ));
        }
        Ok(())
    }
}

impl SignedBody for FraudProof {
    const DOMAIN: Domain = Domain::FraudProof;

    fn check(&self) -> Result<(), String> {
        let accused = self.result.unverified_body();
        if (accused.job, accused.round) != (self.job, self.round) {
            return Err("the accused result is of another job or round".into());
        }
        if accused.model == self.recomputed {
            return Err("the recomputed model is the one announced: no fraud".into());
        }
        accused.check()
    }

    fn declared_sender(&self) -> Option<MemberId> {
        Some(self.accuser)
    }
}

impl SignedBody for EvalReport {
    const DOMAIN: Domain = Domain::EvalReport;

    fn check(&self) -> Result<(), String> {
        check_finite("the loss", self.metrics.loss)?;
        check_accuracy(self.metrics.accuracy)
    }

    fn declared_sender(&self) -> Option<MemberId> {
        Some(self.member)
    }
}

impl SignedBody for ModelDelta {
    const DOMAIN: Domain = Domain::ModelDelta;

    fn check(&self) -> Result<(), String> {
        if self.samples == 0 {
            return Err("a delta must be trained on at least one sample".into());
        }
        check_finite("the loss", Some(self.metrics.loss))?;
        check_accuracy(self.metrics.accuracy)?;
        self.payload.check_shape()
    }

    fn declared_sender(&self) -> Option<MemberId> {
        Some(self.member)
    }
}

impl SignedBody for PartialAggregate {
    const DOMAIN: Domain = Domain::PartialAggregate;

    fn check(&self) -> Result<(), String> {
        check_label("the group label", &self.group)?;
        check_contributions(&self.contributions)?;
        if !(self.total_weight.is_finite() && self.total_weight > 0.0) {
            return Err(format!("total weight {} must be finite and > 0", self.total_weight));
        }
        self.mean.check_shape()
    }

    fn declared_sender(&self) -> Option<MemberId> {
        Some(self.aggregator)
    }
}

impl SignedBody for RingChunk {
    const DOMAIN: Domain = Domain::RingChunk;

    fn check(&self) -> Result<(), String> {
        check_contributions(&self.contributions)?;
        if self.contributions.is_empty() {
            return Err("a ring chunk must include at least one update".into());
        }
        self.values.check_shape()
    }

    fn declared_sender(&self) -> Option<MemberId> {
        Some(self.member)
    }
}

/// Most coordinates of a masked update carried inline in a [`SecureAggregation`] message: a
/// masked value takes up to 9 bytes encoded, and the request must stay under the 1 MiB
/// request-header limit (`codec::MAX_REQUEST_HEADER_BYTES`).
pub const MAX_MASKED_VALUES: usize = 100_000;
/// Most bytes of one encrypted or revealed share, or of a signature, in a secure round.
pub const MAX_SECURE_BLOB_BYTES: usize = 256;

/// One message of a secure-aggregation round (`privacy.secure_aggregation`), between a trainer
/// and the round's aggregator (its leader), for one opening of the round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecureAggregation {
    pub job: JobId,
    pub round: Round,
    /// The opening it belongs to (a round opened again starts its secure round over).
    pub opened_at_ms: u64,
    pub sender: MemberId,
    pub body: SecureBody,
}

/// What a [`SecureAggregation`] message carries, in the order of the round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SecureBody {
    /// Trainer → aggregator: its signed round keys.
    Keys(SecureKeys),
    /// Trainer → aggregator: its encrypted shares, one for each neighbour with keys.
    Shares(Vec<SealedShare>),
    /// Aggregator → trainer: its neighbours' keys, and the largest weight any trainer may give
    /// its update (the quantizer's bound, the same for every trainer).
    RelayKeys { max_weight: u64, keys: Vec<SecureKeys> },
    /// Aggregator → trainer: the shares its neighbours dealt it.
    RelayShares(Vec<SealedShare>),
    /// Trainer → aggregator: its quantized, weighted update, masked, and the weight it carries,
    /// with its signature over them and the quantizer it used (`MaskedStatement` in
    /// `fedmesh_aggregation::secure`), which auditors of a verifiable job check.
    Masked {
        samples: u64,
        values: Vec<u64>,
        #[serde(with = "serde_bytes")]
        signature: Vec<u8>,
    },
    /// Aggregator → survivor: who sent a masked update and who dropped after dealing shares.
    Unmask { survivors: Vec<MemberId>, dropped: Vec<MemberId> },
    /// Survivor → aggregator: its shares of survivors' self-masks and dropped members' mask keys.
    Unmasking { self_mask: Vec<RevealedPart>, mask_key: Vec<RevealedPart> },
}

impl SecureBody {
    /// The kind, as refusals are counted.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Keys(_) => "secure_keys",
            Self::Shares(_) => "secure_shares",
            Self::RelayKeys { .. } => "secure_relay_keys",
            Self::RelayShares(_) => "secure_relay_shares",
            Self::Masked { .. } => "secure_masked",
            Self::Unmask { .. } => "secure_unmask",
            Self::Unmasking { .. } => "secure_unmasking",
        }
    }
}

/// A member's round keys for secure aggregation, signed by it (inside the envelope, so the
/// aggregator can relay them unforged): see `fedmesh_aggregation::secure::RoundKeys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecureKeys {
    pub member: MemberId,
    pub mask_key: [u8; 32],
    pub encryption_key: [u8; 32],
    pub self_mask_commitment: [u8; 32],
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

/// One sender's shares for one recipient, encrypted to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedShare {
    pub sender: MemberId,
    pub recipient: MemberId,
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
}

/// One share a survivor reveals, of `owner`'s secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevealedPart {
    pub owner: MemberId,
    #[serde(with = "serde_bytes")]
    pub share: Vec<u8>,
}

/// A survivor's part of a verifiable secure round, as its aggregator keeps it for auditors
/// (its hash is the contribution the round's result lists): the masked input its trainer
/// signed, with the quantizer it used, and the secrets the round revealed about its masks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecureEvidence {
    pub opened_at_ms: u64,
    pub samples: u64,
    pub max_weight: u64,
    pub summands: u32,
    /// The masked values, little-endian `u64`s.
    #[serde(with = "serde_bytes")]
    pub masked: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
    pub keys: SecureKeys,
    pub self_mask_seed: [u8; 32],
    /// Its neighbours that dropped after dealing shares: their keys and mask secret keys.
    pub dropped: Vec<DroppedMaskKey>,
}

/// A dropped member's round keys and the mask secret key its shares reconstructed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DroppedMaskKey {
    pub keys: SecureKeys,
    pub mask_secret: [u8; 32],
}

/// Most bytes [`SecureEvidence`] encodes to: its masked values and room for every member's keys.
pub const MAX_EVIDENCE_BYTES: usize = MAX_MASKED_VALUES * 8 + 1024 * 1024;

impl SecureEvidence {
    /// Checks the counts and sizes a peer could inflate.
    pub fn check(&self) -> Result<(), String> {
        check_count("dropped members", self.dropped.len())?;
        check_blob("a masked update's signature", &self.signature)?;
        if self.masked.len() > MAX_MASKED_VALUES * 8 || !self.masked.len().is_multiple_of(8) {
            return Err(format!("{} masked bytes is not a masked update", self.masked.len()));
        }
        Ok(())
    }
}

fn check_blob(what: &str, bytes: &[u8]) -> Result<(), String> {
    if bytes.len() > MAX_SECURE_BLOB_BYTES {
        return Err(format!("{what} is {} bytes, at most {MAX_SECURE_BLOB_BYTES}", bytes.len()));
    }
    Ok(())
}

impl SignedBody for SecureAggregation {
    const DOMAIN: Domain = Domain::SecureAggregation;

    fn check(&self) -> Result<(), String> {
        let keys = |keys: &[SecureKeys]| -> Result<(), String> {
            check_count("round keys", keys.len())?;
            keys.iter().try_for_each(|k| check_blob("a round keys signature", &k.signature))
        };
        let shares = |shares: &[SealedShare]| -> Result<(), String> {
            check_count("shares", shares.len())?;
            shares.iter().try_for_each(|s| check_blob("a share", &s.ciphertext))
        };
        let revealed = |parts: &[RevealedPart]| -> Result<(), String> {
            check_count("revealed shares", parts.len())?;
            parts.iter().try_for_each(|p| check_blob("a revealed share", &p.share))
        };
        match &self.body {
            SecureBody::Keys(key) => keys(std::slice::from_ref(key)),
            SecureBody::RelayKeys { keys: relayed, .. } => keys(relayed),
            SecureBody::Shares(sealed) | SecureBody::RelayShares(sealed) => shares(sealed),
            SecureBody::Masked { samples, values, signature } => {
                check_blob("a masked update's signature", signature)?;
                if *samples == 0 {
                    return Err("a masked update must weigh at least one sample".into());
                }
                if values.len() > MAX_MASKED_VALUES {
                    let found = values.len();
                    return Err(format!("{found} masked values, at most {MAX_MASKED_VALUES}"));
                }
                Ok(())
            }
            SecureBody::Unmask { survivors, dropped } => {
                check_count("survivors", survivors.len())?;
                check_count("dropped members", dropped.len())
            }
            SecureBody::Unmasking { self_mask, mask_key } => {
                revealed(self_mask)?;
                revealed(mask_key)
            }
        }
    }

    fn declared_sender(&self) -> Option<MemberId> {
        Some(self.sender)
    }
}

impl CarriesPayload for ModelDelta {
    fn payload_ref(&self) -> &PayloadRef {
        &self.payload
    }
}

impl CarriesPayload for PartialAggregate {
    fn payload_ref(&self) -> &PayloadRef {
        &self.mean
    }
}

impl CarriesPayload for RingChunk {
    fn payload_ref(&self) -> &PayloadRef {
        &self.values
    }
}

macro_rules! scoped {
    ($type:ty) => {
        impl Scoped for $type {
            fn job(&self) -> JobId {
                self.job
            }
        }
    };
    ($type:ty, round) => {
        impl Scoped for $type {
            fn job(&self) -> JobId {
                self.job
            }
            fn round(&self) -> Option<Round> {
                Some(self.round)
            }
        }
    };
    ($type:ty, round, base_model) => {
        impl Scoped for $type {
            fn job(&self) -> JobId {
                self.job
            }
            fn round(&self) -> Option<Round> {
                Some(self.round)
            }
            fn base_model(&self) -> Option<ContentHash> {
                Some(self.base_model)
            }
        }
    };
}

scoped!(Join);
scoped!(Leave);
scoped!(JobStop);
scoped!(Heartbeat, round);
scoped!(RoundOpen, round, base_model);
scoped!(Assignment, round, base_model);
scoped!(AggregateReady, round, base_model);
scoped!(EvalReport, round);
scoped!(FraudProof, round);
scoped!(SecureAggregation, round);
scoped!(ModelDelta, round, base_model);
scoped!(PartialAggregate, round, base_model);
scoped!(RingChunk, round, base_model);

/// A verified job announcement: its id, its parsed and validated spec, and the envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedJob {
    pub id: JobId,
    pub spec: JobSpec,
    pub announcement: Verified<JobAnnouncement>,
}

impl Signed<JobAnnouncement> {
    /// Verifies an announcement: the signature, the spec (canonical JSON, every field valid), and
    /// that the signer is the owner the spec names. Returns the job id with the spec.
    pub fn verify_announcement(self) -> Result<VerifiedJob, VerifyError> {
        let id = JobId(self.content_hash()?);
        let announcement = self.verify(|_, _| Ok(()))?;
        let spec = JobSpec::from_canonical_json(&announcement.body().spec_json)?;
        Denied::unless_signer_is(&announcement.signer(), &spec.owner, "the job's owner").map_err(
            |denied| VerifyError::Denied {
                domain: Domain::JobAnnouncement,
                signer: announcement.signer(),
                reason: denied.0,
            },
        )?;
        Ok(VerifiedJob { id, spec, announcement })
    }
}

/// Control messages, carried by gossipsub (each at most `codec::MAX_GOSSIP_BYTES` encoded).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum GossipMessage {
    Announce(Signed<JobAnnouncement>),
    Join(Signed<Join>),
    Leave(Signed<Leave>),
    Heartbeat(Signed<Heartbeat>),
    RoundOpen(Signed<RoundOpen>),
    Assignment(Signed<Assignment>),
    AggregateReady(Signed<AggregateReady>),
    EvalReport(Signed<EvalReport>),
    Stop(Signed<JobStop>),
    /// A fraud proof against a round's aggregator (verifiable jobs; boxed: it carries a
    /// whole signed result).
    FraudProof(Box<Signed<FraudProof>>),
    /// A round's result with its model's bytes, when they fit in a gossip message: every
    /// member takes the model with the result instead of all asking its aggregator at once.
    /// Last, so the variants before keep their wire tags.
    ResultWithModel(Box<ResultWithModel>),
}

/// A signed result and its model's encoded parameters. The bytes are not signed: the result's
/// `model` hash authenticates them, and they count only if they hash to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultWithModel {
    pub result: Signed<AggregateReady>,
    #[serde(with = "serde_bytes")]
    pub model: Vec<u8>,
}

impl GossipMessage {
    /// The job it claims to belong to (unverified; `None` for an announcement, whose id is its
    /// hash): for routing to the job's handler, which verifies it.
    pub fn claimed_job(&self) -> Option<JobId> {
        match self {
            Self::Announce(_) => None,
            Self::Join(m) => Some(m.unverified_body().job),
            Self::Leave(m) => Some(m.unverified_body().job),
            Self::Heartbeat(m) => Some(m.unverified_body().job),
            Self::RoundOpen(m) => Some(m.unverified_body().job),
            Self::Assignment(m) => Some(m.unverified_body().job),
            Self::AggregateReady(m) => Some(m.unverified_body().job),
            Self::EvalReport(m) => Some(m.unverified_body().job),
            Self::Stop(m) => Some(m.unverified_body().job),
            Self::FraudProof(m) => Some(m.unverified_body().job),
            Self::ResultWithModel(m) => Some(m.result.unverified_body().job),
        }
    }
}

/// Bulk requests, carried by request-response; a payload travels beside some of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// A trainer's delta; the payload is the encoded delta.
    Delta(Signed<ModelDelta>),
    /// A slot's or ring's combined update; the payload is the encoded mean.
    Partial(Signed<PartialAggregate>),
    /// A step of a ring all-reduce; the payload is the chunk's encoded values.
    RingChunk(Signed<RingChunk>),
    /// Asks for a blob (a model, a delta, an announcement) by content hash; no payload.
    Blob { hash: ContentHash },
    /// Asks a peer which jobs it knows (a node that was offline at an announcement catches up).
    Jobs,
    /// Asks for one job's signed announcement.
    Announcement { job: JobId },
    /// Asks for the signed result of a job's round (a member that missed its announcement asks
    /// before it gives up on the round's aggregator).
    RoundResult { job: JobId, round: Round },
    /// A member's signed join sent to one member alone, answered `Accepted`: the answer to a
    /// newcomer's join, or (`asks`) a question from a member that does not know the receiver,
    /// which answers with its own join the same way. An answer carries the sender's heartbeat
    /// too (signed by it, sent now): a newcomer to a large job, whose members beat every few
    /// minutes, learns at once that each member runs and where it stands.
    Join { join: Signed<Join>, asks: bool, heartbeat: Option<Signed<Heartbeat>> },
    /// A member pulls a job's member list: the digest of the members it knows (per part of the
    /// key space, the XOR of a slice of each member's key), answered `Accepted` and later with
    /// a `MemberList` request back. The sender is the peer the request came from.
    Members { job: JobId, digest: Vec<u64> },
    /// The answer to a pull: the members the sender knows where the two digests differ (keys
    /// only: each is asked for its signed join before it counts).
    MemberList { job: JobId, members: Vec<MemberId> },
    /// A secure-aggregation round's message (keys, shares, a masked update, unmasking), to or
    /// from the round's aggregator; no payload (a masked update is inline, bounded). Last, so
    /// the variants before keep their wire tags.
    Secure(Signed<SecureAggregation>),
}

impl Request {
    /// Whether a payload travels beside this request.
    pub fn has_payload(&self) -> bool {
        matches!(self, Self::Delta(_) | Self::Partial(_) | Self::RingChunk(_))
    }
}

/// Answers to requests; a blob's bytes travel beside `Blob`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// The delta or partial aggregate was accepted.
    Accepted,
    /// It was refused, and why (for example "round 3 is closed").
    Refused { reason: String },
    /// The blob follows as the payload (check it with `tensor::CheckedBlob::check`).
    Blob { hash: ContentHash },
    /// This peer does not hold that blob.
    NotFound { hash: ContentHash },
    /// The ids of the jobs this peer knows (at most [`MAX_JOB_IDS`]).
    Jobs { ids: Vec<JobId> },
    /// A job's signed announcement (verify it with `verify_announcement`).
    Announcement(Signed<JobAnnouncement>),
    /// This peer holds that blob but is busy sending large frames: ask another peer that holds
    /// it, or this one again shortly.
    Busy { hash: ContentHash },
    /// A round's signed result, as its aggregator signed it (judge it like the gossip message;
    /// boxed: it is by far the largest answer).
    RoundResult(Box<Signed<AggregateReady>>),
}

impl Response {
    /// Whether a payload travels beside this response.
    pub fn has_payload(&self) -> bool {
        matches!(self, Self::Blob { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_opening_keeps_the_members_its_bitmap_names_and_no_others() {
        let members: Vec<MemberId> = (1..=10).map(|b| MemberId([b; 32])).collect();
        let kept = RoundOpen::kept_bitmap(members.len(), [0, 8, 9, 42]);
        assert_eq!(kept, vec![0b0000_0001, 0b0000_0011], "an index past the members is ignored");
        let open = RoundOpen {
            job: JobId(ContentHash::of(b"job")),
            round: 2,
            base_model: ContentHash::of(b"base"),
            deadline_ms: 1,
            opened_at_ms: 0,
            members: members.clone(),
            trainers: Vec::new(),
            kept,
        };
        let keeps: Vec<bool> = members.iter().map(|m| open.keeps(m)).collect();
        let expected = [true, false, false, false, false, false, false, false, true, true];
        assert_eq!(keeps, expected);
        assert!(!open.keeps(&MemberId([99; 32])), "a member it does not name");
        assert!(RoundOpen::kept_bitmap(10, []).is_empty(), "none kept: no bytes");
    }
}
