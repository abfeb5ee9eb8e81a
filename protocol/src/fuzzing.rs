//! The fuzz targets' checks on arbitrary bytes, shared by `protocol/fuzz` and its corpus test.

use crate::codec;
use crate::envelope::{CarriesPayload, Signed, SignedBody};
use crate::identity::Identity;
use crate::message::{GossipMessage, Join, Request, Response};
use crate::spec::JobSpec;
use crate::tensor::{self, Decoder, PayloadRef, TensorEncoding};
use std::fmt;
use std::sync::OnceLock;

/// Most parameters a check decodes a verified payload to: a node decodes only payloads of its
/// job's model size, so a larger signed count is not decoded here (it would only cost memory).
const MAX_CHECKED_PARAMS: u64 = 1 << 20;

/// What a check made of its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The input decoded (or parsed), and every property held.
    Accepted,
    /// The input was refused with an error.
    Rejected,
}

/// A property that did not hold for an input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation(pub String);

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Violation {}

/// A violation: `what` failed with `error`.
fn violation(what: &str, error: impl fmt::Display) -> Violation {
    Violation(format!("{what}: {error}"))
}

/// One target's checks on one input.
pub type Check = fn(&[u8]) -> Result<Outcome, Violation>;

/// The checks by target name, as `protocol/fuzz/fuzz_targets` and `fuzz/corpus` name them.
///
/// Each returns whether the input was accepted, or the [`Violation`] of a property: whatever
/// decodes must re-encode to a frame that decodes and re-encodes to the same bytes, and verifying
/// (as received, and signed again by a test key, since any peer can sign any body) or decoding
/// further must return an error, never panic. A panic inside a check is a bug in the code it
/// calls, not in the check.
pub const TARGETS: [(&str, Check); 5] = [
    ("gossip_decode", gossip_decode),
    ("request_decode", request_decode),
    ("response_decode", response_decode),
    ("job_spec_json", job_spec_json),
    ("key_file", key_file),
];

/// A gossip frame: decodes, re-encodes canonically, and verifies (or fails to) without a panic.
pub fn gossip_decode(data: &[u8]) -> Result<Outcome, Violation> {
    let Ok(message) = codec::decode_gossip(data) else { return Ok(Outcome::Rejected) };
    let frame = codec::encode_gossip(&message)
        .map_err(|e| violation("a decoded gossip message does not re-encode", e))?;
    let again = codec::decode_gossip(&frame)
        .map_err(|e| violation("a canonical gossip frame does not decode", e))?;
    let again = codec::encode_gossip(&again)
        .map_err(|e| violation("a canonical gossip message does not re-encode", e))?;
    if again != frame {
        return Err(Violation("a gossip message's canonical frame is not stable".into()));
    }
    let _ = message.claimed_job();
    match message {
        GossipMessage::Announce(m) => both(m, |m| drop(m.verify_announcement())),
        GossipMessage::Join(m) => verify_join(m),
        GossipMessage::Leave(m) => both(m, verify),
        GossipMessage::Heartbeat(m) => both(m, verify),
        GossipMessage::RoundOpen(m) => both(m, verify),
        GossipMessage::Assignment(m) => both(m, verify),
        GossipMessage::AggregateReady(m) => both(m, verify),
        GossipMessage::ResultWithModel(m) => {
            let model = m.result.unverified_body().model;
            drop(crate::tensor::CheckedBlob::check(&model, m.model));
            both(m.result, verify)
        }
        GossipMessage::EvalReport(m) => both(m, verify),
        GossipMessage::Stop(m) => both(m, verify),
        GossipMessage::FraudProof(m) => both(*m, |m| {
            if let Ok(proof) = m.verify(|_, _| Ok(())) {
                drop(proof.body().verify_result());
            }
        }),
    }
    Ok(Outcome::Accepted)
}

/// A request frame: decodes, re-encodes canonically, verifies, and decodes a verified payload.
pub fn request_decode(data: &[u8]) -> Result<Outcome, Violation> {
    let Ok((request, payload)) = codec::decode_request(data.to_vec()) else {
        return Ok(Outcome::Rejected);
    };
    let header = codec::encode_request_header(&request, payload.len())
        .map_err(|e| violation("a decoded request does not re-encode", e))?;
    let (again, _) = codec::decode_request([&header[..], &payload[..]].concat())
        .map_err(|e| violation("a canonical request frame does not decode", e))?;
    let again = codec::encode_request_header(&again, payload.len())
        .map_err(|e| violation("a canonical request does not re-encode", e))?;
    if again != header {
        return Err(Violation("a request's canonical header is not stable".into()));
    }
    match request {
        Request::Delta(m) => both(m, |m| verify_payload(m, &payload)),
        Request::Partial(m) => both(m, |m| verify_payload(m, &payload)),
        Request::RingChunk(m) => both(m, |m| verify_payload(m, &payload)),
        Request::Secure(m) => both(m, verify),
        Request::Join { join, heartbeat, .. } => {
            verify_join(join);
            if let Some(heartbeat) = heartbeat {
                both(heartbeat, verify);
            }
        }
        Request::Blob { .. }
        | Request::Jobs
        | Request::Announcement { .. }
        | Request::RoundResult { .. }
        | Request::Members { .. }
        | Request::MemberList { .. } => {}
    }
    Ok(Outcome::Accepted)
}

/// A response frame: decodes, re-encodes canonically and verifies; and the same bytes decoded as
/// a tensor payload in every encoding, against a parameter count taken from the first byte.
pub fn response_decode(data: &[u8]) -> Result<Outcome, Violation> {
    let expected = data.first().map_or(0, |b| usize::from(*b));
    for encoding in ENCODINGS {
        let _ = tensor::decode_params(data, encoding, expected);
    }
    let Ok((response, payload)) = codec::decode_response(data.to_vec()) else {
        return Ok(Outcome::Rejected);
    };
    let header = codec::encode_response_header(&response, payload.len())
        .map_err(|e| violation("a decoded response does not re-encode", e))?;
    let (again, _) = codec::decode_response([&header[..], &payload[..]].concat())
        .map_err(|e| violation("a canonical response frame does not decode", e))?;
    let again = codec::encode_response_header(&again, payload.len())
        .map_err(|e| violation("a canonical response does not re-encode", e))?;
    if again != header {
        return Err(Violation("a response's canonical header is not stable".into()));
    }
    match response {
        Response::Announcement(m) => both(m, |m| drop(m.verify_announcement())),
        Response::RoundResult(m) => both(*m, verify),
        Response::Blob { hash } => drop(tensor::CheckedBlob::check(&hash, payload.into_vec())),
        Response::Accepted
        | Response::Refused { .. }
        | Response::NotFound { .. }
        | Response::Jobs { .. }
        | Response::Busy { .. } => {}
    }
    Ok(Outcome::Accepted)
}

/// Job spec JSON: parses and validates, and an accepted spec round-trips through its canonical
/// JSON.
pub fn job_spec_json(data: &[u8]) -> Result<Outcome, Violation> {
    let Ok(spec) = JobSpec::from_json(data) else { return Ok(Outcome::Rejected) };
    spec.validate().map_err(|e| violation("a parsed spec does not validate", e))?;
    let canonical =
        spec.to_canonical_json().map_err(|e| violation("a parsed spec does not serialize", e))?;
    let again = JobSpec::from_canonical_json(&canonical)
        .map_err(|e| violation("a spec's canonical JSON does not parse", e))?;
    if again != spec {
        return Err(Violation("a spec changes through its canonical JSON".into()));
    }
    Ok(Outcome::Accepted)
}

/// Key file text: parses, and an accepted key file is written back to one of the same key.
pub fn key_file(data: &[u8]) -> Result<Outcome, Violation> {
    let Ok(text) = std::str::from_utf8(data) else { return Ok(Outcome::Rejected) };
    let Ok(identity) = Identity::parse_key_file(text) else { return Ok(Outcome::Rejected) };
    let again = Identity::parse_key_file(&identity.to_key_file())
        .map_err(|e| violation("a written key file does not parse", e))?;
    if again.seed() != identity.seed() {
        return Err(Violation("a key file written back names another key".into()));
    }
    Ok(Outcome::Accepted)
}

const ENCODINGS: [TensorEncoding; 4] =
    [TensorEncoding::F32Le, TensorEncoding::F16Le, TensorEncoding::Int8, TensorEncoding::Sparse];

/// The key a check signs bodies with.
fn peer() -> &'static Identity {
    static PEER: OnceLock<Identity> = OnceLock::new();
    PEER.get_or_init(|| Identity::from_seed([0x42; 32]))
}

/// Runs `check` on the envelope as received and on its body signed by [`peer`]: a peer may sign
/// any body with its own key, so the checks behind the signature are reached too.
fn both<T: SignedBody + Clone>(signed: Signed<T>, check: impl Fn(Signed<T>)) {
    if let Ok(resigned) = Signed::sign(peer(), signed.unverified_body().clone()) {
        check(resigned);
    }
    check(signed);
}

/// Verifies a signed body with every sender allowed (only the absence of a panic matters).
fn verify<T: SignedBody>(signed: Signed<T>) {
    let _ = signed.verify(|_, _| Ok(()));
}

/// Verifies a body against the payload beside it, and decodes the payload if it verifies.
fn verify_payload<T: SignedBody + CarriesPayload>(signed: Signed<T>, payload: &[u8]) {
    if let Ok(verified) = signed.verify_with_payload(payload, |_, _| Ok(())) {
        decode_payload(payload, verified.body().payload_ref());
    }
}

/// A join, and the ticket it carries.
fn verify_join(join: Signed<Join>) {
    if let Some(ticket) = &join.unverified_body().ticket {
        both((**ticket).clone(), verify);
    }
    both(join, verify);
}

/// Decodes a verified payload, whole and through a [`Decoder`] in ranges.
fn decode_payload(payload: &[u8], reference: &PayloadRef) {
    if reference.params > MAX_CHECKED_PARAMS {
        return;
    }
    let params = reference.params as usize;
    let _ = tensor::decode_params(payload, reference.encoding, params);
    if let Ok(decoder) = Decoder::new(payload, reference.encoding, params) {
        let _ = decoder.check_finite();
        let mut out = [0.0f32; 7];
        let stride = (decoder.len() / 1000).max(5);
        for start in (0..decoder.len()).step_by(stride) {
            decoder.decode_range(start, &mut out);
        }
    }
}
