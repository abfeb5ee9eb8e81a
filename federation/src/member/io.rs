//! What a member's machine is fed (events: verified messages, the clock, the results of work it
//! asked for) and what it asks its driver to do (effects: plain data, carried out by the node's
//! executor or by the simulator).

use super::Reason;
use fedmesh_aggregation::ServerOptimizer;
use fedmesh_protocol::ids::{ContentHash, MemberId, Round};
use fedmesh_protocol::message::{
    AggregateReady, Assignment, Contribution, EvalMetrics, EvalReport, Heartbeat, JobStop, Join,
    Leave, ModelDelta, PartialAggregate, RingChunk, RoundOpen, SecureAggregation, TrainMetrics,
};
use fedmesh_protocol::tensor::{Decoder, SharedPayload, TensorEncoding, TensorError};
use std::fmt;
use std::sync::Arc;

pub use crate::membership::Digest;

/// A gossip message on the job's topic whose signature the driver verified; `signer` is the key
/// that signed it (for joins, leaves, heartbeats and evaluation reports, the body's member).
#[derive(Debug, Clone, PartialEq)]
pub enum Gossip {
    Join(Join),
    Leave(Leave),
    Heartbeat(Heartbeat),
    /// Shared: every member that follows an opening keeps it, so a driver that hands one
    /// message to many machines (the simulator) copies none of its member list.
    Open(Arc<RoundOpen>),
    /// Shared like an opening: every member keeps the newest result it took, to pass on.
    Result(Arc<AggregateReady>),
    Eval(EvalReport),
    /// The coordinator's assignment of a round (orchestration mode), shared like an opening;
    /// the machine refuses one whose signer is not the job's coordinator.
    Assign(Arc<Assignment>),
    /// Ends the job when its controller signed it: the coordinator, or the owner when there is
    /// none.
    Stop(JobStop),
    /// A fraud proof (verifiable jobs); the signer is its accuser.
    FraudProof(Arc<Accusation>),
}

/// What a fraud proof says, its two envelopes verified by the driver (the proof's, and the
/// accused result's with `FraudProof::verify_result`): `liar` signed `result`, and its accuser
/// says the contributions `result` lists recompute to `recomputed`. The machine believes it only
/// once its own recomputation agrees.
#[derive(Debug, Clone, PartialEq)]
pub struct Accusation {
    pub liar: MemberId,
    pub result: Arc<AggregateReady>,
    pub recomputed: ContentHash,
}

/// An update sent to this member as a slot's aggregator, its signature and payload hash
/// verified by the driver and its values decoded (off the engine's task: both are heavy).
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// A trainer's delta.
    Delta(ModelDelta),
    /// A lower slot's partial aggregate (its weighted mean).
    Partial(PartialAggregate),
    /// A ring all-reduce step's chunk from the ring's previous member.
    Chunk(RingChunk),
}

impl Update {
    /// What kind of update it is, as refusals are counted.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Delta(_) => "delta",
            Self::Partial(_) => "partial",
            Self::Chunk(_) => "ring_chunk",
        }
    }

    pub fn round(&self) -> Round {
        match self {
            Self::Delta(delta) => delta.round,
            Self::Partial(partial) => partial.round,
            Self::Chunk(chunk) => chunk.round,
        }
    }

    pub fn base_model(&self) -> ContentHash {
        match self {
            Self::Delta(delta) => delta.base_model,
            Self::Partial(partial) => partial.base_model,
            Self::Chunk(chunk) => chunk.base_model,
        }
    }
}

/// This member's local training on a round's base model, as the driver ran it.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalUpdate {
    /// The new parameters minus the base.
    pub delta: Arc<Vec<f32>>,
    pub samples: u64,
    pub metrics: TrainMetrics,
    pub seconds: f64,
}

/// Everything that happens to a member's machine.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Time passed (the driver calls this at least as often as the machine's last
    /// [`Effect::WakeAt`] asks).
    Tick,
    /// A verified gossip message.
    Gossip { signer: MemberId, message: Gossip },
    /// A member's verified join sent to this member alone, not on the topic (see
    /// [`Effect::SendJoin`]): the answer to this member's own join or question, or, with
    /// `asks`, a question from a member that does not know this one and wants its join back;
    /// an answer with the sender's verified heartbeat, sent now.
    JoinSent { signer: MemberId, join: Join, asks: bool, heartbeat: Option<Heartbeat> },
    /// A verified update request with its values; answered by [`Effect::Answer`].
    Update { signer: MemberId, update: Update, values: UpdateValues, request: u64 },
    /// A member asks for the signed result of `round` it missed; answered by
    /// [`Effect::ServeResult`] when this member holds one.
    ResultAsked { from: MemberId, round: Round, request: u64 },
    /// Local training finished (or failed, with the reason).
    Trained { round: Round, base: ContentHash, outcome: Result<LocalUpdate, String> },
    /// A global model asked for with [`Effect::Fetch`] arrived, hash-checked and decoded (or
    /// could not be had).
    Fetched { model: ContentHash, outcome: Result<Arc<Vec<f32>>, String> },
    /// A model made with [`Effect::StoreModel`] is stored under its content hash, and so is
    /// the server optimizer's state it came with (the hash of its encoded blob).
    Stored { round: Round, model: ContentHash, optimizer_state: Option<ContentHash> },
    /// A server optimizer's state asked for with [`Effect::FetchOptimizerState`] arrived,
    /// hash-checked and decoded with `ServerOptimizer::decode_state` (the job's
    /// `strategy.server`, its model's parameter count), or could not be had.
    OptimizerStateFetched { state: ContentHash, outcome: Result<Arc<ServerOptimizer>, String> },
    /// An evaluation asked with [`Effect::Evaluate`] finished.
    Evaluated { round: Round, model: ContentHash, metrics: EvalMetrics },
    /// This member's operator leaves the job.
    LeaveRequested { reason: String },
    /// Its node learned whether peers can dial it (behind NAT, or reachable after all): its
    /// join goes out again at once saying so, since elections prefer reachable aggregators.
    ReachabilityChanged { reachable: bool },
    /// A peer subscribed to the job's topic: unless it is a member this one knows, it has not
    /// heard this member's join (a join published before the topic's mesh formed reaches
    /// nobody), so the join goes out again shortly (a burst of subscriptions gets one join).
    /// A known member subscribes again at each new connection: in a 200-member job, whose
    /// nodes reconnect often under their connection bound, echoing a join for each made joins
    /// six times the gossip the heartbeats are sized to.
    PeerSubscribed { peer: MemberId },
    /// A member pulls the member list: it sent the digest of the members it knows, and wants
    /// those this member knows where the two differ; answered by [`Effect::SendMembers`].
    MembersAsked { from: MemberId, digest: Digest },
    /// The answer to this member's [`Effect::AskMembers`]: the members `from` knows in the
    /// parts of the key space where their memberships differ (keys only: each is asked for its
    /// signed join before it counts).
    MembersSent { from: MemberId, members: Vec<MemberId> },
    /// The recomputation asked with [`Effect::Audit`] of the result announcing `model`: the
    /// hash of the model its contributions recompute to, or why it could not be made (a
    /// contribution could not be fetched or decoded: that is no proof either way).
    Audited { model: ContentHash, outcome: Result<ContentHash, String> },
    /// A member asks for a contribution (a delta by payload hash) to audit a result; answered
    /// by [`Effect::ServeContribution`].
    ContributionAsked { from: MemberId, hash: ContentHash, request: u64 },
    /// A verified secure-aggregation message (its envelope's signer is `signer`), for this
    /// member's side of the open round; answered by [`Effect::Answer`].
    Secure { signer: MemberId, message: SecureAggregation, request: u64 },
}

/// A message this member publishes on the job's topic (the driver signs it with its key).
#[derive(Debug, Clone, PartialEq)]
pub enum Publish {
    Join(Join),
    Leave(Leave),
    Heartbeat(Heartbeat),
    Open(RoundOpen),
    Result(AggregateReady),
    Eval(EvalReport),
    /// A fraud proof: the driver signs it with the liar's signed result as it received it
    /// (kept like the results it serves).
    FraudProof(Accusation),
}

/// An update's values as the driver hands them over: decoded, or still the bytes they arrived
/// in, which FedAvg folds a chunk at a time with no decoded copy of the whole (so a large
/// model's aggregator holds each delta once, not as bytes and again as values).
#[derive(Debug, Clone, PartialEq)]
pub enum UpdateValues {
    Decoded(Arc<Vec<f32>>),
    Encoded(EncodedValues),
}

impl From<Arc<Vec<f32>>> for UpdateValues {
    fn from(values: Arc<Vec<f32>>) -> Self {
        Self::Decoded(values)
    }
}

impl UpdateValues {
    /// How many values.
    pub fn len(&self) -> usize {
        match self {
            Self::Decoded(values) => values.len(),
            Self::Encoded(encoded) => encoded.params,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes they take in memory.
    pub fn held_bytes(&self) -> usize {
        match self {
            Self::Decoded(values) => values.len() * size_of::<f32>(),
            Self::Encoded(encoded) => encoded.bytes().len(),
        }
    }

    /// The values decoded: shared if they are, a decoded copy if not.
    pub fn decoded(&self) -> Result<Arc<Vec<f32>>, Refusal> {
        match self {
            Self::Decoded(values) => Ok(values.clone()),
            Self::Encoded(encoded) => {
                let decoder = encoded.decoder()?;
                let mut values = vec![0.0f32; decoder.len()];
                decoder.decode_range(0, &mut values);
                Ok(Arc::new(values))
            }
        }
    }

    /// Refuses values past `bound` in magnitude.
    pub(super) fn refuse_past(&self, bound: f32) -> Result<(), Refusal> {
        let outside = match self {
            Self::Decoded(values) => values
                .iter()
                .position(|v| !v.is_finite() || v.abs() > bound)
                .map(|i| (i, values[i])),
            Self::Encoded(encoded) => encoded.decoder()?.first_outside(bound),
        };
        match outside {
            None => Ok(()),
            Some((index, value)) => {
                let detail = format!("value {index} of the update is {value}, past {bound:e}");
                Err(Refusal::new(Reason::HugeValues, detail))
            }
        }
    }
}

/// Values still encoded (see [`UpdateValues`]): bytes checked to decode, with their encoding,
/// to a number of finite values.
#[derive(Clone)]
pub struct EncodedValues {
    bytes: SharedPayload,
    encoding: TensorEncoding,
    params: usize,
}

impl EncodedValues {
    /// `bytes` if they decode with `encoding` to `params` finite values.
    pub fn new(
        bytes: SharedPayload,
        encoding: TensorEncoding,
        params: usize,
    ) -> Result<Self, TensorError> {
        Decoder::new(bytes.bytes(), encoding, params)?.check_finite()?;
        Ok(Self { bytes, encoding, params })
    }

    /// The bytes, as they arrived.
    pub fn bytes(&self) -> &[u8] {
        self.bytes.bytes()
    }

    /// The bytes, shared (kept for auditors without a copy).
    pub fn shared(&self) -> SharedPayload {
        self.bytes.clone()
    }

    /// A decoder of the bytes (checked when they were taken, so only a changed rule fails it).
    pub fn decoder(&self) -> Result<Decoder<'_>, Refusal> {
        Decoder::new(self.bytes.bytes(), self.encoding, self.params)
            .map_err(|e| Refusal::new(Reason::MalformedPayload, e.to_string()))
    }
}

impl fmt::Debug for EncodedValues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncodedValues")
            .field("bytes", &self.bytes.bytes().len())
            .field("encoding", &self.encoding)
            .field("params", &self.params)
            .finish()
    }
}

impl PartialEq for EncodedValues {
    fn eq(&self, other: &Self) -> bool {
        (self.encoding, self.params) == (other.encoding, other.params)
            && self.bytes() == other.bytes()
    }
}

/// Why an update was refused: the rule (counted by the metrics under its label) and a sentence
/// for the sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: Reason,
    pub detail: String,
}

impl Refusal {
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Self { reason, detail: detail.into() }
    }
}

/// What a member holds itself for auditors besides the deltas it was sent: its own update (f32),
/// and a secure round's evidence (encoded, kept by the hash of its bytes).
pub type OwnPayloads = (Option<Arc<Vec<f32>>>, Vec<Arc<Vec<u8>>>);

/// What a member's machine asks its driver to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Sign and publish on the job's topic.
    Publish(Publish),
    /// Sign and send this member's join to one member directly, as a request (sent again while
    /// it gets no answer, as any request): the answer to a newcomer, which the topic would
    /// carry to every member when only the newcomer lacks it; with `asks`, a question to a
    /// member this one heard from but does not know, which answers with its own join. An
    /// answer carries this member's heartbeat, to sign and send beside.
    SendJoin { to: MemberId, join: Join, asks: bool, heartbeat: Option<Heartbeat> },
    /// Sign and send the digest of this member's membership to one member, as a request: it
    /// answers with the members it knows where the two differ ([`Event::MembersSent`]).
    AskMembers { to: MemberId, digest: Digest },
    /// Answer a member's [`Event::MembersAsked`] with these members' keys.
    SendMembers { to: MemberId, members: Vec<MemberId> },
    /// Encode (as the job's delta encoding), sign and send this member's update to the slot
    /// aggregator `to`; sent again while `until_ms` allows if the peer cannot be reached.
    SendDelta { to: MemberId, delta: DeltaToSend, until_ms: u64 },
    /// Sign and send a secure-aggregation message to one member as a request (`Request::Secure`),
    /// again while `until_ms` allows if the peer cannot be reached.
    SendSecure { to: MemberId, message: SecureAggregation, until_ms: u64 },
    /// Encode (f32), sign and send a slot's partial aggregate to the aggregator above.
    SendPartial { to: MemberId, partial: PartialToSend, until_ms: u64 },
    /// Encode (f32), sign and send one ring all-reduce chunk to the ring's next member.
    SendChunk { to: MemberId, chunk: ChunkToSend, until_ms: u64 },
    /// Answer the update request `request`: accepted, or refused.
    Answer { request: u64, outcome: Result<(), Refusal> },
    /// Answer a member that asked for a round's result with the signed one this member holds.
    ServeResult { request: u64, to: MemberId, result: Served },
    /// Ask these members (in order) for the signed result of `round`.
    AskResult { round: Round, from: Vec<MemberId> },
    /// Train locally on `base` (whose parameters are `params`) for `round`.
    Train { round: Round, base: ContentHash, params: Arc<Vec<f32>> },
    /// Fetch a global model by hash: the driver's own copy if it holds one, else from `from`
    /// in order (known holders first), then from any live member.
    Fetch { round: Round, model: ContentHash, from: Vec<MemberId> },
    /// Encode and store a model this member made (a round's result), then report its hash
    /// with [`Event::Stored`]. In a job with a server optimizer, `optimizer` is its state after
    /// the round: encode it too (`ServerOptimizer::encode_state`), store the blob under its
    /// content hash (`ContentHash::of`) as models are, serve it to members that ask for it by
    /// that hash, and report the hash in the same [`Event::Stored`].
    StoreModel { round: Round, params: Arc<Vec<f32>>, optimizer: Option<Arc<ServerOptimizer>> },
    /// Fetch a server optimizer's state blob by hash (the leader of the next round needs the
    /// state its predecessor announced): the driver's own copy if it holds one, else from
    /// `from` in order (the member that announced it first), then from any live member; check
    /// its hash, decode it and report with [`Event::OptimizerStateFetched`].
    FetchOptimizerState { round: Round, state: ContentHash, from: Vec<MemberId> },
    /// Evaluate a global model on the local test split, then report with [`Event::Evaluated`].
    Evaluate { round: Round, model: ContentHash, params: Arc<Vec<f32>> },
    /// Persist the run's state (atomically with the round records that changed).
    Persist(crate::member::Snapshot),
    /// Call [`Event::Tick`] at this time (or earlier).
    WakeAt(u64),
    /// Something an operator should see in the log.
    Log(Notice),
    /// The gossip message just handled was refused, and why (its driver counts it and does not
    /// pass it on).
    Rejected(Refusal),
    /// Audit a verifiable job's result: fetch the deltas its contributions list (by payload
    /// hash, from each contribution's member first, then from `from`), decode them, recompute
    /// the model over the result's base model (a stored model, fetched by hash if need be) with
    /// `fedmesh_aggregation::verifiable::recompute` and the job's strategy, and report its hash
    /// with [`Event::Audited`]. The `aggregator` that signed the result folded its own update
    /// in unencoded: its contribution's payload is f32 (the others' are the job's encoding).
    Audit { round: Round, result: Arc<AggregateReady>, aggregator: MemberId, from: Vec<MemberId> },
    /// Keep these deltas of `round` (by payload hash) to serve auditors until `until_ms`: one
    /// this member sent (a verifiable job's executor holds each delta it sends until then), or
    /// those it folded in as the round's aggregator; `own` is its own update, folded in without
    /// encoding, to keep as an f32 payload (its hash is the one the result lists). A secure
    /// round's leader keeps its survivors' `evidence` instead.
    KeepContributions {
        round: Round,
        deltas: Vec<ContentHash>,
        own: Option<Arc<Vec<f32>>>,
        /// A secure round's evidence (encoded `SecureEvidence`, kept by the hash of its bytes).
        evidence: Vec<Arc<Vec<u8>>>,
        until_ms: u64,
    },
    /// Answer a member's [`Event::ContributionAsked`]: send the kept delta, or the refusal.
    ServeContribution {
        request: u64,
        to: MemberId,
        hash: ContentHash,
        outcome: Result<(), Refusal>,
    },
    /// A fraud proof handled earlier turned out false once recomputed: its accuser lied (the
    /// driver counts it as a refusal of that message, which proves misbehaviour).
    ProofRefuted { accuser: MemberId, refusal: Refusal },
}

/// A result a member serves: the aggregator's own announcement (which it signs anew), or the
/// one it took from another member, as that member signed it.
#[derive(Debug, Clone, PartialEq)]
pub enum Served {
    Own(AggregateReady),
    Taken { signer: MemberId, ready: AggregateReady },
}

/// This member's update, before encoding and signing.
#[derive(Debug, Clone, PartialEq)]
pub struct DeltaToSend {
    pub round: Round,
    pub base: ContentHash,
    pub samples: u64,
    pub metrics: TrainMetrics,
    pub values: Arc<Vec<f32>>,
}

/// A slot's partial aggregate, before encoding and signing.
#[derive(Debug, Clone, PartialEq)]
pub struct PartialToSend {
    pub round: Round,
    pub base: ContentHash,
    pub opened_at_ms: u64,
    pub group: String,
    pub mean: Arc<Vec<f32>>,
    pub total_weight: f64,
    pub contributions: Vec<Contribution>,
}

/// One step's chunk of a ring all-reduce, before encoding and signing.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkToSend {
    pub round: Round,
    pub base: ContentHash,
    pub opened_at_ms: u64,
    pub step: u32,
    pub chunk: u32,
    pub contributions: Vec<Contribution>,
    pub values: Arc<Vec<f32>>,
}

/// A line for the operator's log: how serious, and what happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub level: Level,
    pub round: Round,
    pub text: Text,
}

/// A notice's text. A member's join is written out only when read: every machine of a large
/// job notes every member's join, and printing a member's key takes a base58 encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Text {
    Plain(String),
    Joined { member: MemberId, group: String },
}

impl From<String> for Text {
    fn from(text: String) -> Self {
        Self::Plain(text)
    }
}

impl From<&str> for Text {
    fn from(text: &str) -> Self {
        Self::Plain(text.to_owned())
    }
}

impl std::fmt::Display for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Plain(text) => f.write_str(text),
            Self::Joined { member, group } => write!(f, "{member} joined (group {group})"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
}
