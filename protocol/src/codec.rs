//! The bounded codec: frames of a version byte, a bincode message, and (for bulk messages) the
//! raw payload bytes after it. Every limit is checked before anything is allocated, and every
//! failure is a typed [`DecodeError`], never a panic.
//!
//! ```text
//! gossip frame:            [WIRE_VERSION] [bincode GossipMessage]           (<= 64 KiB)
//! request/response frame:  [WIRE_VERSION] [bincode Request|Response] [payload bytes]
//! ```
//!
//! On a request-response stream each frame is preceded by its length as a little-endian `u64`
//! ([`read_frame`] / [`write_frame`], or [`check_frame_length`] from an async codec).

use crate::envelope::Signed;
use crate::ids::ContentHash;
use crate::message::{
    GossipMessage, MAX_EVIDENCE_BYTES, MAX_JOB_IDS, Request, Response, SecureEvidence, Ticket,
};
use crate::tensor::HashedBytes;
use bincode::config;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt;
use std::io::{Read, Write};
use std::ops::Deref;

/// The frame format this node speaks.
pub const WIRE_VERSION: u8 = 1;
/// Largest gossip frame: gossipsub's `max_transmit_size` on every node.
pub const MAX_GOSSIP_BYTES: usize = 64 * 1024;
/// Largest encoded request, payload excluded.
pub const MAX_REQUEST_HEADER_BYTES: usize = 1024 * 1024;
/// Largest encoded response, payload excluded.
pub const MAX_RESPONSE_HEADER_BYTES: usize = 64 * 1024;
/// Largest frame this crate accepts at all (a node may configure a lower maximum).
pub const MAX_FRAME_BYTES: u64 = 4 * 1024 * 1024 * 1024;

/// Bytes read from the network at a time while a frame arrives.
const READ_CHUNK: u64 = 1024 * 1024;

/// The bincode configuration of every message: varint integers, little-endian.
fn base_config() -> config::Configuration {
    config::standard()
}

/// The canonical bytes of a value: what is hashed and signed.
pub(crate) fn canonical_bytes<T: Serialize>(value: &T) -> Result<Vec<u8>, EncodeError> {
    bincode::serde::encode_to_vec(value, base_config())
        .map_err(|e| EncodeError::Bincode(e.to_string()))
}

/// Which kind of frame, for errors and limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    Gossip,
    Request,
    Response,
    Ticket,
    Evidence,
}

impl fmt::Display for FrameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Gossip => "gossip message",
            Self::Request => "request",
            Self::Response => "response",
            Self::Ticket => "ticket",
            Self::Evidence => "secure round evidence",
        })
    }
}

/// A payload that arrived beside a message: a view into the received frame, without a copy,
/// and its hash when it was taken as the frame arrived.
#[derive(Clone)]
pub struct Payload {
    frame: Vec<u8>,
    start: usize,
    hash: Option<ContentHash>,
}

impl Payload {
    /// No payload.
    pub fn empty() -> Self {
        Self { frame: Vec::new(), start: 0, hash: None }
    }

    /// The same payload, with the hash `streamed` took of it while its frame arrived (ignored
    /// unless it was taken of this payload's bytes in a frame of this length).
    pub fn with_streamed(self, streamed: Option<StreamedHash>) -> Self {
        let hash = streamed
            .filter(|s| s.start == self.start && s.frame_len == self.frame.len())
            .map(|s| s.hash);
        Self { hash: hash.or(self.hash), ..self }
    }

    /// The payload bytes as an owned vector (moves them to the front of the frame's buffer).
    pub fn into_vec(mut self) -> Vec<u8> {
        self.frame.drain(..self.start);
        self.frame
    }
}

impl HashedBytes for Payload {
    fn byte_len(&self) -> usize {
        self.len()
    }

    fn content_hash(&self) -> ContentHash {
        self.hash.unwrap_or_else(|| ContentHash::of(self))
    }
}

/// A payload's BLAKE3 hash, taken by a [`PayloadHasher`] while its frame arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamedHash {
    start: usize,
    frame_len: usize,
    hash: ContentHash,
}

/// Hashes a request's or response's payload while its frame arrives: fed the frame's bytes so
/// far after each read, it finds where the header ends and hashes what follows, so a large
/// payload is hashed once, while its bytes are still in the cache, not again after.
pub struct PayloadHasher {
    kind: FrameKind,
    start: Option<usize>,
    hashed_to: usize,
    hasher: blake3::Hasher,
}

impl PayloadHasher {
    /// For a frame of `kind` (a request or a response; any other is never hashed).
    pub fn new(kind: FrameKind) -> Self {
        Self { kind, start: None, hashed_to: 0, hasher: blake3::Hasher::new() }
    }

    /// Hashes the bytes of `received` (the frame so far) it has not hashed yet, once the
    /// header in them decodes. A header that has not decoded from more bytes than any header
    /// takes never will: it is not tried again (the frame is refused when it is decoded).
    pub fn update(&mut self, received: &[u8]) {
        if self.start.is_none() && self.hashed_to <= max_header_bytes(self.kind) {
            self.start = header_end(self.kind, received);
            self.hashed_to = self.start.unwrap_or(received.len());
        }
        if self.start.is_some() && received.len() > self.hashed_to {
            self.hasher.update(&received[self.hashed_to..]);
            self.hashed_to = received.len();
        }
    }

    /// The payload's hash, if every byte of `frame` after its header was hashed.
    pub fn finish(self, frame: &[u8]) -> Option<StreamedHash> {
        let start = self.start?;
        (self.hashed_to == frame.len()).then(|| StreamedHash {
            start,
            frame_len: frame.len(),
            hash: ContentHash(*self.hasher.finalize().as_bytes()),
        })
    }
}

/// The most bytes a frame of `kind` takes before its payload (its version byte and header).
fn max_header_bytes(kind: FrameKind) -> usize {
    1 + match kind {
        FrameKind::Request => MAX_REQUEST_HEADER_BYTES,
        FrameKind::Response => MAX_RESPONSE_HEADER_BYTES,
        FrameKind::Gossip | FrameKind::Ticket | FrameKind::Evidence => 0,
    }
}

/// Where the payload of a frame of `kind` starts, if its header decodes from `prefix`.
fn header_end(kind: FrameKind, prefix: &[u8]) -> Option<usize> {
    let end = match kind {
        FrameKind::Request => {
            decode_header::<Request, MAX_REQUEST_HEADER_BYTES>(prefix, kind).map(|(_, end)| end)
        }
        FrameKind::Response => {
            decode_header::<Response, MAX_RESPONSE_HEADER_BYTES>(prefix, kind).map(|(_, end)| end)
        }
        FrameKind::Gossip | FrameKind::Ticket | FrameKind::Evidence => return None,
    };
    end.ok()
}

impl Deref for Payload {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.frame[self.start..]
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for Payload {}

impl AsRef<[u8]> for Payload {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl crate::tensor::SharedBytes for Payload {
    fn bytes(&self) -> &[u8] {
        self
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Payload({} bytes)", self.len())
    }
}

/// Most bytes a ticket decodes to (one is about 150).
const MAX_TICKET_BYTES: usize = 1024;

/// A ticket as the text its owner hands to the member it admits (`fedmesh job admit` prints
/// it, `fedmesh job join --ticket` takes it): the hex of its canonical bytes.
pub fn encode_ticket(ticket: &Signed<Ticket>) -> Result<String, EncodeError> {
    Ok(hex::encode(canonical_bytes(ticket)?))
}

/// Reads a ticket's text (verify the ticket before acting on it).
pub fn decode_ticket(text: &str) -> Result<Signed<Ticket>, DecodeError> {
    let (kind, text) = (FrameKind::Ticket, text.trim());
    if text.len() > 2 * MAX_TICKET_BYTES {
        let (len, max) = (text.len() as u64 / 2, MAX_TICKET_BYTES as u64);
        return Err(DecodeError::TooLarge { kind, len, max });
    }
    let bytes =
        hex::decode(text).map_err(|e| DecodeError::Malformed { kind, reason: e.to_string() })?;
    let (ticket, used) = decode_limited::<Signed<Ticket>, MAX_TICKET_BYTES>(&bytes, kind)?;
    match bytes.len() - used {
        0 => Ok(ticket),
        count => Err(DecodeError::TrailingBytes { kind, count }),
    }
}

/// The bytes a secure round's evidence is kept and served as (its hash is the contribution).
pub fn encode_evidence(evidence: &SecureEvidence) -> Result<Vec<u8>, EncodeError> {
    canonical_bytes(evidence)
}

/// Reads a secure round's evidence, bounded and checked (verify it before trusting it).
pub fn decode_evidence(bytes: &[u8]) -> Result<SecureEvidence, DecodeError> {
    let kind = FrameKind::Evidence;
    if bytes.len() > MAX_EVIDENCE_BYTES {
        let (len, max) = (bytes.len() as u64, MAX_EVIDENCE_BYTES as u64);
        return Err(DecodeError::TooLarge { kind, len, max });
    }
    let (evidence, used) = decode_limited::<SecureEvidence, MAX_EVIDENCE_BYTES>(bytes, kind)?;
    if used != bytes.len() {
        return Err(DecodeError::TrailingBytes { kind, count: bytes.len() - used });
    }
    evidence.check().map_err(|reason| DecodeError::Malformed { kind, reason })?;
    Ok(evidence)
}

/// Encodes a gossip message into a frame.
pub fn encode_gossip(message: &GossipMessage) -> Result<Vec<u8>, EncodeError> {
    let frame = encode_header(message)?;
    if frame.len() > MAX_GOSSIP_BYTES {
        return Err(EncodeError::TooLarge {
            kind: FrameKind::Gossip,
            len: frame.len(),
            max: MAX_GOSSIP_BYTES,
        });
    }
    Ok(frame)
}

/// Decodes a gossip frame (verify the message before acting on it).
pub fn decode_gossip(frame: &[u8]) -> Result<GossipMessage, DecodeError> {
    let kind = FrameKind::Gossip;
    if frame.len() > MAX_GOSSIP_BYTES {
        return Err(DecodeError::TooLarge {
            kind,
            len: frame.len() as u64,
            max: MAX_GOSSIP_BYTES as u64,
        });
    }
    let body = strip_version(frame)?;
    let (message, used) = decode_limited::<GossipMessage, MAX_GOSSIP_BYTES>(body, kind)?;
    match body.len() - used {
        0 => Ok(message),
        count => Err(DecodeError::TrailingBytes { kind, count }),
    }
}

/// Encodes a request and the payload that travels beside it (empty if it has none) into one
/// frame (one copy of the payload; see [`encode_request_header`] for none).
pub fn encode_request(request: &Request, payload: &[u8]) -> Result<Vec<u8>, EncodeError> {
    let header = encode_request_header(request, payload.len())?;
    Ok(join(header, payload))
}

/// The start of a request frame, up to where its `payload_len`-byte payload begins: write it and
/// then the payload (`write_frame(w, &[&header, payload], max)`) and the payload is never copied.
pub fn encode_request_header(
    request: &Request,
    payload_len: usize,
) -> Result<Vec<u8>, EncodeError> {
    check_payload_presence(FrameKind::Request, request.has_payload(), payload_len)
        .map_err(EncodeError::Payload)?;
    encode_header(request)
}

/// Decodes a request frame into the request and its payload (without copying the payload).
pub fn decode_request(frame: Vec<u8>) -> Result<(Request, Payload), DecodeError> {
    let kind = FrameKind::Request;
    let (request, start) = decode_header::<Request, MAX_REQUEST_HEADER_BYTES>(&frame, kind)?;
    check_payload_presence(kind, request.has_payload(), frame.len() - start)?;
    Ok((request, Payload { frame, start, hash: None }))
}

/// Encodes a response and the payload that travels beside it (empty if it has none).
pub fn encode_response(response: &Response, payload: &[u8]) -> Result<Vec<u8>, EncodeError> {
    let header = encode_response_header(response, payload.len())?;
    Ok(join(header, payload))
}

/// The start of a response frame, up to its payload (see [`encode_request_header`]).
pub fn encode_response_header(
    response: &Response,
    payload_len: usize,
) -> Result<Vec<u8>, EncodeError> {
    check_payload_presence(FrameKind::Response, response.has_payload(), payload_len)
        .map_err(EncodeError::Payload)?;
    encode_header(response)
}

/// Decodes a response frame into the response and its payload (without copying the payload).
pub fn decode_response(frame: Vec<u8>) -> Result<(Response, Payload), DecodeError> {
    let kind = FrameKind::Response;
    let (response, start) = decode_header::<Response, MAX_RESPONSE_HEADER_BYTES>(&frame, kind)?;
    check_payload_presence(kind, response.has_payload(), frame.len() - start)?;
    if let Response::Jobs { ids } = &response
        && ids.len() > MAX_JOB_IDS
    {
        let reason = format!("{} job ids, at most {MAX_JOB_IDS}", ids.len());
        return Err(DecodeError::Malformed { kind, reason });
    }
    Ok((response, Payload { frame, start, hash: None }))
}

/// Checks a length prefix against `max` (and [`MAX_FRAME_BYTES`]) before anything is allocated.
pub fn check_frame_length(length: u64, max: u64) -> Result<usize, FrameError> {
    let limit = max.min(MAX_FRAME_BYTES);
    if length > limit {
        return Err(FrameError::TooLarge { length, max: limit });
    }
    usize::try_from(length).map_err(|_| FrameError::TooLarge { length, max: usize::MAX as u64 })
}

/// Reads one length-prefixed frame of at most `max` bytes. Memory grows with the bytes that
/// actually arrive, so a peer announcing a large frame and sending little costs little.
pub fn read_frame<R: Read>(reader: &mut R, max: u64) -> Result<Vec<u8>, FrameError> {
    let mut prefix = [0u8; 8];
    reader.read_exact(&mut prefix)?;
    let length = check_frame_length(u64::from_le_bytes(prefix), max)?;
    let mut frame = Vec::with_capacity(length.min(READ_CHUNK as usize));
    reader.take(length as u64).read_to_end(&mut frame)?;
    if frame.len() != length {
        return Err(FrameError::Truncated { expected: length as u64, found: frame.len() as u64 });
    }
    Ok(frame)
}

/// Writes one length-prefixed frame made of `parts` (for example an encoded header, then a
/// payload, without joining them first).
pub fn write_frame<W: Write>(writer: &mut W, parts: &[&[u8]], max: u64) -> Result<(), FrameError> {
    let length: u64 = parts.iter().map(|part| part.len() as u64).sum();
    check_frame_length(length, max)?;
    writer.write_all(&length.to_le_bytes())?;
    for part in parts {
        writer.write_all(part)?;
    }
    writer.flush()?;
    Ok(())
}

/// The version byte, then the bincode message.
fn encode_header<T: Serialize>(message: &T) -> Result<Vec<u8>, EncodeError> {
    let mut frame = vec![WIRE_VERSION];
    bincode::serde::encode_into_std_write(message, &mut frame, base_config())
        .map_err(|e| EncodeError::Bincode(e.to_string()))?;
    Ok(frame)
}

/// A header followed by its payload, in one buffer.
fn join(header: Vec<u8>, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(header.len() + payload.len());
    frame.extend_from_slice(&header);
    frame.extend_from_slice(payload);
    frame
}

fn strip_version(frame: &[u8]) -> Result<&[u8], DecodeError> {
    match frame.split_first() {
        None => Err(DecodeError::Empty),
        Some((&WIRE_VERSION, body)) => Ok(body),
        Some((&found, _)) => Err(DecodeError::UnsupportedVersion { found }),
    }
}

/// Decodes the message at the start of a frame; returns it and where the payload starts.
fn decode_header<T: DeserializeOwned, const LIMIT: usize>(
    frame: &[u8],
    kind: FrameKind,
) -> Result<(T, usize), DecodeError> {
    let body = strip_version(frame)?;
    let (message, used) = decode_limited::<T, LIMIT>(body, kind)?;
    Ok((message, 1 + used))
}

/// bincode with a limit: no length inside the message may claim more than `LIMIT` bytes.
fn decode_limited<T: DeserializeOwned, const LIMIT: usize>(
    bytes: &[u8],
    kind: FrameKind,
) -> Result<(T, usize), DecodeError> {
    let config = base_config().with_limit::<LIMIT>();
    bincode::serde::decode_from_slice(bytes, config).map_err(|error| match error {
        bincode::error::DecodeError::LimitExceeded => {
            DecodeError::LimitExceeded { kind, max: LIMIT }
        }
        other => DecodeError::Malformed { kind, reason: other.to_string() },
    })
}

fn check_payload_presence(kind: FrameKind, expected: bool, len: usize) -> Result<(), DecodeError> {
    match (expected, len) {
        (true, _) | (false, 0) => Ok(()),
        (false, len) => Err(DecodeError::UnexpectedPayload { kind, len }),
    }
}

/// Why a message could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("cannot encode: {0}")]
    Bincode(String),
    #[error("{kind} of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { kind: FrameKind, len: usize, max: usize },
    #[error(transparent)]
    Payload(DecodeError),
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty frame")]
    Empty,
    #[error("unsupported wire version {found}, this node speaks {WIRE_VERSION}")]
    UnsupportedVersion { found: u8 },
    #[error("{kind} of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { kind: FrameKind, len: u64, max: u64 },
    #[error("{kind} claims more than its limit of {max} bytes")]
    LimitExceeded { kind: FrameKind, max: usize },
    #[error("malformed {kind}: {reason}")]
    Malformed { kind: FrameKind, reason: String },
    #[error("{count} unexpected bytes after the {kind}")]
    TrailingBytes { kind: FrameKind, count: usize },
    #[error("a {len}-byte payload follows a {kind} that carries none")]
    UnexpectedPayload { kind: FrameKind, len: usize },
}

/// Why a length-prefixed frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {length} bytes exceeds the limit of {max} bytes")]
    TooLarge { length: u64, max: u64 },
    #[error("frame truncated: expected {expected} bytes, got {found}")]
    Truncated { expected: u64, found: u64 },
    #[error("frame I/O: {0}")]
    Io(#[from] std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ContentHash;

    #[test]
    fn a_future_wire_version_is_refused_cleanly() {
        let mut frame =
            encode_request(&Request::Blob { hash: ContentHash::of(b"x") }, &[]).unwrap();
        frame[0] = 7;
        let error = decode_request(frame).unwrap_err();
        assert_eq!(error.to_string(), "unsupported wire version 7, this node speaks 1");
        assert_eq!(decode_gossip(&[]).unwrap_err(), DecodeError::Empty);
    }

    #[test]
    fn an_oversized_length_prefix_is_refused_before_reading() {
        let mut bytes = u64::MAX.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"tiny");
        let error = read_frame(&mut bytes.as_slice(), 1 << 30).unwrap_err();
        assert!(matches!(error, FrameError::TooLarge { length: u64::MAX, max } if max == 1 << 30));
        assert!(check_frame_length(MAX_FRAME_BYTES + 1, u64::MAX).is_err());
        assert_eq!(check_frame_length(10, 10).unwrap(), 10);
    }

    #[test]
    fn a_short_frame_is_truncated_not_padded() {
        // Claims 1 GiB, sends 3 bytes: refused as truncated, after buffering only what arrived.
        let mut bytes = (1u64 << 30).to_le_bytes().to_vec();
        bytes.extend_from_slice(b"abc");
        let error = read_frame(&mut bytes.as_slice(), 1 << 31).unwrap_err();
        assert!(
            matches!(error, FrameError::Truncated { expected, found: 3 } if expected == 1 << 30)
        );
    }

    #[test]
    fn frames_round_trip_through_a_stream_in_parts() {
        let mut stream = Vec::new();
        write_frame(&mut stream, &[b"head", b"payload"], 100).unwrap();
        write_frame(&mut stream, &[], 100).unwrap();
        let mut reader = stream.as_slice();
        assert_eq!(read_frame(&mut reader, 100).unwrap(), b"headpayload");
        assert_eq!(read_frame(&mut reader, 100).unwrap(), b"");
        assert!(matches!(
            write_frame(&mut Vec::new(), &[&[0; 11]], 10),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_huge_claimed_length_inside_a_message_is_refused_by_the_limit() {
        // A Refused response whose reason claims u64::MAX bytes: varint marker 0xFD + 8 bytes.
        let mut frame = vec![WIRE_VERSION, 1, 0xFD];
        frame.extend_from_slice(&u64::MAX.to_le_bytes());
        let error = decode_response(frame).unwrap_err();
        assert!(
            matches!(error, DecodeError::LimitExceeded { kind: FrameKind::Response, .. }),
            "{error}"
        );
        let mut frame = vec![WIRE_VERSION, 1, 0xFC];
        frame.extend_from_slice(&(1u32 << 30).to_le_bytes());
        let error = decode_response(frame).unwrap_err();
        assert!(matches!(error, DecodeError::LimitExceeded { .. }), "{error}");
    }

    #[test]
    fn a_job_list_longer_than_its_limit_is_refused() {
        let ids = vec![crate::ids::JobId(ContentHash::of(b"job")); MAX_JOB_IDS + 1];
        let frame = encode_response(&Response::Jobs { ids }, &[]).unwrap();
        assert!(matches!(decode_response(frame), Err(DecodeError::Malformed { .. })));
    }

    #[test]
    fn a_header_written_beside_its_payload_is_the_same_frame() {
        let response = Response::Blob { hash: ContentHash::of(b"blob") };
        let header = encode_response_header(&response, 4).unwrap();
        let mut stream = Vec::new();
        write_frame(&mut stream, &[&header, b"blob"], 1024).unwrap();
        let frame = read_frame(&mut stream.as_slice(), 1024).unwrap();
        assert_eq!(frame, encode_response(&response, b"blob").unwrap());
        assert!(encode_response_header(&Response::Accepted, 4).is_err());
    }

    #[test]
    fn payloads_only_travel_beside_messages_that_carry_them() {
        let request = Request::Blob { hash: ContentHash::of(b"x") };
        assert!(matches!(encode_request(&request, b"junk"), Err(EncodeError::Payload(_))));
        let mut frame = encode_request(&request, &[]).unwrap();
        frame.extend_from_slice(b"junk");
        let error = decode_request(frame).unwrap_err();
        assert_eq!(error, DecodeError::UnexpectedPayload { kind: FrameKind::Request, len: 4 });
        let response = Response::Blob { hash: ContentHash::of(b"blob") };
        let frame = encode_response(&response, b"blob").unwrap();
        let (decoded, payload) = decode_response(frame).unwrap();
        assert_eq!(decoded, response);
        assert_eq!(&*payload, b"blob");
        let copy = Payload { frame: b"xyblob".to_vec(), start: 2, hash: None };
        assert_eq!(payload, copy);
        assert_ne!(Payload::empty(), copy);
        assert_eq!(payload.into_vec(), b"blob");
    }

    /// Feeds `frame` to a hasher `step` bytes at a time, as a frame reader does.
    fn streamed(kind: FrameKind, frame: &[u8], step: usize) -> Option<StreamedHash> {
        let mut hasher = PayloadHasher::new(kind);
        for end in (step..frame.len()).step_by(step).chain([frame.len()]) {
            hasher.update(&frame[..end]);
        }
        hasher.finish(frame)
    }

    #[test]
    fn a_payload_hashed_as_its_frame_arrives_has_the_hash_of_its_bytes() {
        let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let response = Response::Blob { hash: ContentHash::of(&payload) };
        let frame = encode_response(&response, &payload).unwrap();
        for step in [1, 7, 4096, frame.len()] {
            let hash = streamed(FrameKind::Response, &frame, step);
            assert!(hash.is_some(), "fed {step} bytes at a time");
            let (_, received) = decode_response(frame.clone()).unwrap();
            let received = received.with_streamed(hash);
            assert_eq!(received.hash, Some(ContentHash::of(&payload)), "fed {step} at a time");
            assert_eq!(received.content_hash(), ContentHash::of(&payload));
        }
        let request = Request::Blob { hash: ContentHash::of(b"x") };
        let frame = encode_request(&request, &[]).unwrap();
        let hash = streamed(FrameKind::Request, &frame, 1).unwrap();
        assert_eq!(hash.hash, ContentHash::of(&[]), "a frame without a payload");
    }

    #[test]
    fn a_streamed_hash_of_other_bytes_or_of_part_of_a_frame_is_not_used() {
        let payload = vec![3u8; 5000];
        let frame =
            encode_response(&Response::Blob { hash: ContentHash::of(&payload) }, &payload).unwrap();
        let mut partial = PayloadHasher::new(FrameKind::Response);
        partial.update(&frame[..frame.len() - 1]);
        assert_eq!(partial.finish(&frame), None, "the last byte was never hashed");
        let other = [&frame[..], &[9]].concat();
        let of_other = streamed(FrameKind::Response, &other, 1000);
        let (_, received) = decode_response(frame.clone()).unwrap();
        assert_eq!(received.with_streamed(of_other).hash, None, "taken of a longer frame");
        let garbage = streamed(FrameKind::Response, &[WIRE_VERSION, 0xff, 0xff], 1);
        assert_eq!(garbage, None, "a header that never decodes");
        let mut hasher = PayloadHasher::new(FrameKind::Response);
        let long = vec![0xffu8; MAX_RESPONSE_HEADER_BYTES + 2];
        hasher.update(&long);
        assert_eq!(hasher.hashed_to, long.len(), "looked past every header it could be");
        hasher.update(&[&long[..], &frame[..]].concat());
        assert_eq!(hasher.start, None, "not tried again once past the longest header");
    }

    #[test]
    fn malformed_and_oversized_frames_are_refused() {
        let frame = encode_response(&Response::Accepted, &[]).unwrap();
        assert_eq!(frame, [WIRE_VERSION, 0]);
        let error = decode_gossip(&[WIRE_VERSION, 9]).unwrap_err();
        assert!(matches!(error, DecodeError::Malformed { .. }), "{error}");
        let error = decode_gossip(&[0; MAX_GOSSIP_BYTES + 1]).unwrap_err();
        assert!(matches!(error, DecodeError::TooLarge { .. }));
    }
}
