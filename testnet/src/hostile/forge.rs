//! The forged messages, built from the protocol's own types and signed with the protocol's
//! envelope: results, openings and assignments for rounds their signer may not speak for,
//! joins and heartbeats, deltas with inflated sample counts or poisoned values, and re-spelled
//! copies of captured gossip frames (the same signed message in other bytes).

use super::HostileError;
use fedmesh_protocol::codec::{encode_gossip, encode_request};
use fedmesh_protocol::envelope::{Signed, SignedBody};
use fedmesh_protocol::identity::Identity;
use fedmesh_protocol::ids::{ContentHash, JobId, MemberId, Round};
use fedmesh_protocol::message::{
    AggregateReady, Assignment, EvalMetrics, GossipMessage, Heartbeat, Join, Leave, ModelDelta,
    Request, RoundOpen, TrainMetrics, unix_millis,
};
use fedmesh_protocol::tensor::{PayloadRef, TensorEncoding, encode_params};
use std::collections::BTreeMap;

/// The model a forged result names: all zeros, a hash no honest aggregator made.
pub const MADE_UP_MODEL: ContentHash = ContentHash([0; 32]);

fn encode_error(error: impl std::fmt::Display) -> HostileError {
    HostileError::Encode(error.to_string())
}

/// A gossip frame of `message`.
pub fn gossip(message: &GossipMessage) -> Result<Vec<u8>, HostileError> {
    encode_gossip(message).map_err(encode_error)
}

/// A gossip frame of `body` signed by `identity`, wrapped as the gossip message it is.
fn signed_gossip<T: SignedBody>(
    identity: &Identity,
    body: T,
    wrap: fn(Signed<T>) -> GossipMessage,
) -> Result<Vec<u8>, HostileError> {
    let signed = Signed::sign(identity, body).map_err(encode_error)?;
    gossip(&wrap(signed))
}

/// `identity`'s signed join of `job`, declaring `samples`.
pub fn join(identity: &Identity, job: JobId, samples: u64) -> Result<Vec<u8>, HostileError> {
    let body = Join {
        job,
        member: identity.member_id(),
        group: "eu".into(),
        roles: Vec::new(),
        samples,
        reachable: true,
        sent_at_ms: unix_millis(),
        ticket: None,
    };
    signed_gossip(identity, body, GossipMessage::Join)
}

/// `identity`'s signed leave of `job`.
pub fn leave(identity: &Identity, job: JobId) -> Result<Vec<u8>, HostileError> {
    let body = Leave {
        job,
        member: identity.member_id(),
        reason: "the hostile peer is done".into(),
        sent_at_ms: unix_millis(),
    };
    signed_gossip(identity, body, GossipMessage::Leave)
}

/// `identity`'s heartbeat: in `round`, holding `model`.
pub fn heartbeat(
    identity: &Identity,
    job: JobId,
    (round, model): (Round, ContentHash),
    sequence: u64,
) -> Result<Vec<u8>, HostileError> {
    let member = identity.member_id();
    let sent_at_ms = unix_millis();
    let body = Heartbeat { job, member, round, model, sequence, sent_at_ms };
    signed_gossip(identity, body, GossipMessage::Heartbeat)
}

/// A signed result of `round` on `base` naming [`MADE_UP_MODEL`], planned over `members`.
pub fn result(
    identity: &Identity,
    job: JobId,
    (round, base_model): (Round, ContentHash),
    members: &[MemberId],
) -> Result<Vec<u8>, HostileError> {
    let body = AggregateReady {
        job,
        round,
        base_model,
        model: MADE_UP_MODEL,
        contributions: Vec::new(),
        metrics: EvalMetrics { loss: Some(0.0), accuracy: Some(1.0), samples: 1 },
        members: members.to_vec(),
        vetted: Vec::new(),
        sent_at_ms: unix_millis(),
        optimizer_state: None,
        feedback: Vec::new(),
    };
    signed_gossip(identity, body, GossipMessage::AggregateReady)
}

/// A signed opening of `round` on `base`, planned over `members`.
pub fn opening(
    identity: &Identity,
    job: JobId,
    (round, base_model): (Round, ContentHash),
    members: &[MemberId],
) -> Result<Vec<u8>, HostileError> {
    let now = unix_millis();
    let body = RoundOpen {
        job,
        round,
        base_model,
        deadline_ms: now + 60_000,
        opened_at_ms: now,
        members: members.to_vec(),
        trainers: Vec::new(),
        kept: Vec::new(),
    };
    signed_gossip(identity, body, GossipMessage::RoundOpen)
}

/// A coordinator's assignment of `round` signed by `identity`, which names itself the
/// aggregator of the top slot and the only trainer.
pub fn assignment(
    identity: &Identity,
    job: JobId,
    (round, base_model): (Round, ContentHash),
) -> Result<Vec<u8>, HostileError> {
    let me = identity.member_id();
    let now = unix_millis();
    let body = Assignment {
        job,
        round,
        base_model,
        roles: BTreeMap::from([(me, vec!["aggregator".to_owned(), "trainer".to_owned()])]),
        trainers: vec![me],
        aggregators: BTreeMap::from([("top".to_owned(), me)]),
        deadline_ms: now + 60_000,
        issued_at_ms: now,
        sent_at_ms: now,
    };
    signed_gossip(identity, body, GossipMessage::Assignment)
}

/// What a forged delta claims.
#[derive(Debug, Clone, Copy)]
pub struct DeltaClaim {
    pub round: Round,
    pub base_model: ContentHash,
    pub samples: u64,
}

/// A request frame carrying `identity`'s signed delta of `values` (f32, as the nodes encode
/// their own), as `claim` says.
pub fn delta(
    identity: &Identity,
    job: JobId,
    claim: DeltaClaim,
    values: &[f32],
) -> Result<Vec<u8>, HostileError> {
    let encoding = TensorEncoding::F32Le;
    let payload = encode_params(values, encoding, None).map_err(encode_error)?;
    let body = ModelDelta {
        job,
        round: claim.round,
        base_model: claim.base_model,
        member: identity.member_id(),
        samples: claim.samples,
        metrics: TrainMetrics { loss: 0.1, accuracy: Some(0.99) },
        payload: PayloadRef::describe(&payload, encoding, values.len()),
    };
    let signed = Signed::sign(identity, body).map_err(encode_error)?;
    encode_request(&Request::Delta(signed), &payload).map_err(encode_error)
}

/// The first byte of a bincode varint that is followed by a u16, a u32 and a u64.
const VARINT_U16: u8 = 251;
const VARINT_U32: u8 = 252;
const VARINT_U64: u8 = 253;

/// Other spellings of the one-byte varint `value`: as a u16, a u32 and (for a u64 field) a u64.
/// bincode decodes each to the same value.
fn longer_varints(value: u8, u64_field: bool) -> Vec<Vec<u8>> {
    let mut spellings =
        vec![vec![value], vec![VARINT_U16, value, 0], vec![VARINT_U32, value, 0, 0, 0]];
    if u64_field {
        spellings.push(vec![VARINT_U64, value, 0, 0, 0, 0, 0, 0, 0]);
    }
    spellings
}

/// The signature's length prefix: a serde byte string of 64 bytes ends every signed frame.
const SIGNATURE_BYTES: usize = 64;

/// Copies of a captured gossip frame in other bytes that decode to the same signed message: the
/// enum tag after the wire version and the signature's length prefix at the end, each spelled
/// as a longer varint. The signature covers the decoded body, so each copy still verifies, and
/// gossipsub (whose message id is a hash of the bytes) takes each for a message it never saw.
/// The frame itself comes first; a frame of another shape is returned alone.
pub fn respellings(frame: &[u8]) -> Vec<Vec<u8>> {
    let tail = SIGNATURE_BYTES + 1;
    let shaped = frame.len() > tail + 2
        && frame[1] < VARINT_U16
        && frame[frame.len() - tail] == SIGNATURE_BYTES as u8;
    if !shaped {
        return vec![frame.to_vec()];
    }
    let (version, tag) = (frame[0], frame[1]);
    let middle = &frame[2..frame.len() - tail];
    let signature = &frame[frame.len() - SIGNATURE_BYTES..];
    let mut copies = Vec::new();
    for length in longer_varints(SIGNATURE_BYTES as u8, true) {
        for tag in longer_varints(tag, false) {
            let mut copy = vec![version];
            copy.extend_from_slice(&tag);
            copy.extend_from_slice(middle);
            copy.extend_from_slice(&length);
            copy.extend_from_slice(signature);
            copies.push(copy);
        }
    }
    copies
}

/// The job id a command line names.
pub fn job_id(text: &str) -> Result<JobId, HostileError> {
    ContentHash::from_hex(text).map(JobId).map_err(|_| HostileError::JobId(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedmesh_protocol::codec::decode_gossip;

    #[test]
    fn every_respelling_decodes_to_the_same_verified_heartbeat() {
        let identity = Identity::generate();
        let job = JobId(ContentHash::of(b"job"));
        let frame = heartbeat(&identity, job, (3, ContentHash::of(b"model")), 7).unwrap();
        let copies = respellings(&frame);
        assert_eq!(copies.len(), 12);
        assert_eq!(copies[0], frame);
        let distinct: std::collections::BTreeSet<&Vec<u8>> = copies.iter().collect();
        assert_eq!(distinct.len(), copies.len(), "each copy is other bytes");
        let original = decode_gossip(&frame).unwrap();
        for copy in &copies {
            let decoded = decode_gossip(copy).unwrap();
            assert_eq!(decoded, original);
            let GossipMessage::Heartbeat(signed) = decoded else { panic!("not a heartbeat") };
            assert!(signed.verify(|_, _| Ok(())).is_ok());
        }
    }

    #[test]
    fn a_frame_of_another_shape_is_not_respelled() {
        assert_eq!(respellings(b"short"), vec![b"short".to_vec()]);
    }
}
