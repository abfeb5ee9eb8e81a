//! The request-response wire framing: a u64 little-endian length, then that many bytes. The length
//! is checked against the node's maximum before anything is allocated, and the buffer grows as the
//! bytes arrive (a peer that announces a large frame and sends little makes the node allocate
//! little); the bytes themselves are a `fedmesh-protocol` frame, decoded and verified off the
//! event loop. A frame to send is a header and a shared payload written one after the other, never
//! joined into one buffer; a large frame received waits for its share of the node's
//! [`BulkBudget`] before it is read, and each `READ_STEP` of it must arrive within `STEP_TIMEOUT`,
//! so a peer trickling bytes holds that share for seconds, not for the whole request timeout.

use super::budget::{BulkBudget, COUNTED_FROM_BYTES, Held};
use super::large_frames::{LargeFramePeers, PeerSlot};
use crate::metrics::Metrics;
use fedmesh_protocol::codec::{FrameKind, PayloadHasher, StreamedHash, check_frame_length};
use fedmesh_protocol::tensor::{SharedPayload, no_payload};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::{PeerId, StreamProtocol};
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How much a received frame's buffer grows at a time.
const READ_STEP: usize = 256 << 10;
/// `READ_STEP` zeroes, which a received frame's buffer grows by.
static ZEROED_STEP: [u8; READ_STEP] = [0; READ_STEP];
/// How long each `READ_STEP` of a frame may take to arrive (about 50 KiB/s: slower is a peer
/// trickling bytes to hold this node's budget, not a slow link).
const STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// The request-response protocol name.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/fedmesh/req/1");

/// One request or response: a head and a shared tail (the payload), and the share of the bulk
/// budget it holds while it is in memory. A received frame is all head, and a large one comes
/// with its payload's hash, taken as it arrived.
#[derive(Debug)]
pub struct Frame {
    head: Vec<u8>,
    tail: SharedPayload,
    held: Option<Held>,
    streamed: Option<StreamedHash>,
}

impl Frame {
    /// A frame to send: `head`, then `tail`.
    pub fn new(head: Vec<u8>, tail: SharedPayload) -> Self {
        Self { head, tail, held: None, streamed: None }
    }

    /// The hash of a received frame's payload, taken as it arrived (for
    /// [`Payload::with_streamed`](fedmesh_protocol::codec::Payload::with_streamed)).
    pub fn streamed_hash(&self) -> Option<StreamedHash> {
        self.streamed
    }

    /// The same frame, holding `held` until it is dropped (sent, or done with).
    pub fn holding(self, held: Held) -> Self {
        Self { held: Some(held), ..self }
    }

    pub(super) fn len(&self) -> usize {
        self.head.len() + self.tail.bytes().len()
    }

    /// The received bytes (a received frame has no tail), and its share of the budget, which
    /// the caller keeps while it uses them.
    pub fn into_received(self) -> (Vec<u8>, Option<Held>) {
        (self.head, self.held)
    }
}

impl From<Vec<u8>> for Frame {
    fn from(head: Vec<u8>) -> Self {
        Self::new(head, no_payload())
    }
}

/// Who may send large requests, and the peer of the connection a codec reads from (see
/// [`large_frames`](super::large_frames)).
#[derive(Debug, Clone)]
pub struct Gate {
    pub allowed: LargeFramePeers,
    pub slot: PeerSlot,
}

/// Length-prefixed frames of at most `max_bytes`, each `READ_STEP` received within
/// `step_timeout`; with a gate, requests of [`COUNTED_FROM_BYTES`] or more only from the peers
/// it allows.
pub struct FrameCodec {
    max_bytes: u64,
    budget: BulkBudget,
    step_timeout: Duration,
    gate: Option<Gate>,
    /// The peer of this codec's connection (none for the behaviour's own copy).
    peer: Option<PeerId>,
    /// Where refused request frames are counted.
    metrics: Option<Arc<Metrics>>,
}

impl std::fmt::Debug for FrameCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameCodec")
            .field("max_bytes", &self.max_bytes)
            .field("step_timeout", &self.step_timeout)
            .field("gate", &self.gate)
            .field("peer", &self.peer)
            .field("counting", &self.metrics.is_some())
            .finish_non_exhaustive()
    }
}

impl Clone for FrameCodec {
    /// A connection's codec keeps its peer; the behaviour's own copy, cloned for a new
    /// connection, takes the peer its gate's slot names.
    fn clone(&self) -> Self {
        let named = || self.gate.as_ref().and_then(|gate| gate.slot.lock().ok().and_then(|p| *p));
        Self {
            max_bytes: self.max_bytes,
            budget: self.budget.clone(),
            step_timeout: self.step_timeout,
            gate: self.gate.clone(),
            peer: self.peer.or_else(named),
            metrics: self.metrics.clone(),
        }
    }
}

impl FrameCodec {
    pub fn new(max_bytes: u64, budget: BulkBudget) -> Self {
        Self {
            max_bytes,
            budget,
            step_timeout: STEP_TIMEOUT,
            gate: None,
            peer: None,
            metrics: None,
        }
    }

    /// The same codec, counting the request frames it refuses in `metrics`.
    pub fn counting(self, metrics: Arc<Metrics>) -> Self {
        Self { metrics: Some(metrics), ..self }
    }

    /// The same codec, taking large requests only from the peers `gate` allows.
    pub fn gated(self, gate: Gate) -> Self {
        Self { gate: Some(gate), ..self }
    }

    /// Refuses a request of `length` bytes before any of it is read, if it is large and its
    /// peer is not allowed to send large frames (or unknown).
    fn check_sender(&self, length: u64) -> io::Result<()> {
        let Some(gate) = &self.gate else { return Ok(()) };
        if length < COUNTED_FROM_BYTES as u64 || self.peer.is_some_and(|p| gate.allowed.allows(&p))
        {
            return Ok(());
        }
        gate.allowed.count_refusal();
        let detail = format!(
            "a request of {length} bytes from {}, which is in none of this node's jobs: only \
             their peers may send frames of {} KiB or more",
            self.peer.map_or_else(|| "an unknown peer".to_owned(), |p| p.to_string()),
            COUNTED_FROM_BYTES >> 10
        );
        Err(io::Error::new(io::ErrorKind::PermissionDenied, detail))
    }

    async fn read_request_frame<T: AsyncRead + Unpin + Send>(
        &self,
        io: &mut T,
    ) -> io::Result<Frame> {
        let length = read_prefix(io).await?;
        self.check_sender(length)?;
        self.read_body(io, length, FrameKind::Request).await
    }

    async fn read_response_frame<T: AsyncRead + Unpin + Send>(
        &self,
        io: &mut T,
    ) -> io::Result<Frame> {
        let length = read_prefix(io).await?;
        self.read_body(io, length, FrameKind::Response).await
    }

    /// Reads a frame of `length` bytes once it has its share of the budget; a large one's
    /// payload is hashed as it arrives.
    async fn read_body<T: AsyncRead + Unpin + Send>(
        &self,
        io: &mut T,
        length: u64,
        kind: FrameKind,
    ) -> io::Result<Frame> {
        let length = check_frame_length(length, self.max_bytes)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        let asked = Instant::now();
        let held = self.budget.reserve(length).await;
        let reading = Instant::now();
        let mut hasher = (length >= COUNTED_FROM_BYTES).then(|| PayloadHasher::new(kind));
        let bytes = self.read_growing(io, length, hasher.as_mut()).await?;
        let streamed = hasher.and_then(|hasher| hasher.finish(&bytes));
        if length >= COUNTED_FROM_BYTES {
            let (waited, read) = (reading - asked, reading.elapsed());
            tracing::debug!(peer = ?self.peer, length, ?waited, ?read, "read a large frame");
        }
        Ok(Frame { streamed, ..Frame::from(bytes).holding(held) })
    }

    /// Reads `length` bytes, the buffer growing by `READ_STEP` as they arrive, each step within
    /// the step timeout and fed to `hasher` as it comes.
    async fn read_growing<T: AsyncRead + Unpin + Send>(
        &self,
        io: &mut T,
        length: usize,
        mut hasher: Option<&mut PayloadHasher>,
    ) -> io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        while bytes.len() < length {
            let start = bytes.len();
            // Grown from a zeroed step rather than by `resize`, whose per-byte loop this crate's
            // unoptimized dev build runs at a fraction of memcpy's speed.
            bytes.extend_from_slice(&ZEROED_STEP[..(length - start).min(READ_STEP)]);
            let step = io.read_exact(&mut bytes[start..]);
            tokio::time::timeout(self.step_timeout, step).await.map_err(|_| {
                let detail = format!(
                    "a frame of {length} bytes stalled after {start}: the next {} KiB took over {:?}",
                    READ_STEP >> 10,
                    self.step_timeout
                );
                io::Error::new(io::ErrorKind::TimedOut, detail)
            })??;
            if let Some(hasher) = hasher.as_deref_mut() {
                hasher.update(&bytes);
            }
        }
        Ok(bytes)
    }

    async fn write_frame<T: AsyncWrite + Unpin + Send>(
        &self,
        io: &mut T,
        frame: Frame,
    ) -> io::Result<()> {
        let length = frame.len() as u64;
        check_frame_length(length, self.max_bytes)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        io.write_all(&length.to_le_bytes()).await?;
        io.write_all(&frame.head).await?;
        io.write_all(frame.tail.bytes()).await?;
        io.flush().await?;
        io.close().await
    }
}

/// A frame's length prefix.
async fn read_prefix<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<u64> {
    let mut prefix = [0u8; 8];
    io.read_exact(&mut prefix).await?;
    Ok(u64::from_le_bytes(prefix))
}

impl libp2p::request_response::Codec for FrameCodec {
    type Protocol = StreamProtocol;
    type Request = Frame;
    type Response = Frame;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Frame>
    where
        T: AsyncRead + Unpin + Send,
    {
        let frame = self.read_request_frame(io).await;
        if let (Err(error), Some(metrics)) = (&frame, &self.metrics) {
            // A large request from an outsider is counted by the gate.
            if error.kind() != io::ErrorKind::PermissionDenied {
                metrics.rejected("request", refused_frame(error));
            }
        }
        frame
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Frame>
    where
        T: AsyncRead + Unpin + Send,
    {
        self.read_response_frame(io).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: Frame,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        self.write_frame(io, request).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: Frame,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        self.write_frame(io, response).await
    }
}

/// Why a request frame could not be read, as the metrics count it.
fn refused_frame(error: &io::Error) -> &'static str {
    match error.kind() {
        io::ErrorKind::InvalidData => "oversized_frame",
        io::ErrorKind::TimedOut => "stalled_frame",
        io::ErrorKind::UnexpectedEof => "truncated_frame",
        _ => "frame_io",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;

    fn codec(max_bytes: u64) -> FrameCodec {
        FrameCodec::new(max_bytes, BulkBudget::new(1 << 30))
    }

    #[tokio::test]
    async fn frames_round_trip() {
        let codec = codec(1024);
        let mut buffer = Cursor::new(Vec::new());
        let frame = Frame::new(b"hel".to_vec(), Arc::new(b"lo".to_vec()));
        codec.write_frame(&mut buffer, frame).await.unwrap();
        let mut reader = Cursor::new(buffer.into_inner());
        let (bytes, _) = codec.read_response_frame(&mut reader).await.unwrap().into_received();
        assert_eq!(bytes, b"hello");
    }

    #[tokio::test]
    async fn a_large_frame_comes_with_its_payload_hashed_as_it_arrived() {
        use fedmesh_protocol::codec::{decode_response, encode_response_header};
        use fedmesh_protocol::ids::ContentHash;
        use fedmesh_protocol::message::Response;
        use fedmesh_protocol::tensor::CheckedBlob;
        let codec = codec(64 << 20);
        let payload: Vec<u8> = (0..5 * READ_STEP as u32 + 5).map(|i| (i % 253) as u8).collect();
        let hash = ContentHash::of(&payload);
        let head = encode_response_header(&Response::Blob { hash }, payload.len()).unwrap();
        let mut buffer = Cursor::new(Vec::new());
        codec.write_frame(&mut buffer, Frame::new(head, Arc::new(payload.clone()))).await.unwrap();
        let frame = codec.read_response_frame(&mut Cursor::new(buffer.into_inner())).await.unwrap();
        let streamed = frame.streamed_hash();
        assert!(streamed.is_some(), "a frame of {} KiB is hashed as it arrives", frame.len() >> 10);
        let (_, payload_received) = decode_response(frame.into_received().0).unwrap();
        let blob = CheckedBlob::check_payload(&hash, payload_received.with_streamed(streamed));
        assert_eq!(blob.unwrap().into_bytes(), payload);
        let small = Frame::from(b"small".to_vec());
        let mut buffer = Cursor::new(Vec::new());
        codec.write_frame(&mut buffer, small).await.unwrap();
        let frame = codec.read_response_frame(&mut Cursor::new(buffer.into_inner())).await.unwrap();
        assert_eq!(frame.streamed_hash(), None, "a small frame is hashed when checked");
    }

    #[tokio::test]
    async fn an_oversized_length_is_refused_before_allocating() {
        let codec = codec(1024);
        let mut bytes = u64::MAX.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"tiny");
        let error = codec.read_response_frame(&mut Cursor::new(bytes)).await.unwrap_err();
        assert!(error.to_string().contains("exceeds the limit"), "{error}");
    }

    /// A peer that sends a frame's length and then its bytes one every 10 ms.
    struct Trickle {
        prefix: std::io::Cursor<Vec<u8>>,
        next: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut [u8],
        ) -> std::task::Poll<io::Result<usize>> {
            use std::future::Future;
            use std::io::Read;
            let read = self.prefix.read(buf)?;
            if read > 0 {
                return std::task::Poll::Ready(Ok(read));
            }
            let sleep = self
                .next
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::from_millis(10))));
            std::task::ready!(sleep.as_mut().poll(cx));
            self.next = None;
            buf[0] = 7;
            std::task::Poll::Ready(Ok(1))
        }
    }

    #[tokio::test]
    async fn a_trickled_frame_is_dropped_and_gives_its_budget_back() {
        let budget = BulkBudget::new(8 << 20);
        let mut codec = FrameCodec::new(1 << 30, budget.clone());
        codec.step_timeout = Duration::from_millis(200);
        let length = 4u64 << 20;
        let prefix = std::io::Cursor::new(length.to_le_bytes().to_vec());
        let mut trickle = Trickle { prefix, next: None };
        let started = std::time::Instant::now();
        let error = codec.read_response_frame(&mut trickle).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut, "{error}");
        assert!(error.to_string().contains("stalled after 0"), "{error}");
        // Its first 256 KiB did not arrive within the step timeout (a byte per 10 ms).
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(200) && took < Duration::from_secs(5), "{took:?}");
        assert!(budget.try_reserve(8 << 20).is_some(), "its share of the budget is back");
    }

    #[tokio::test]
    async fn a_refused_request_frame_is_counted_by_why() {
        use libp2p::request_response::Codec;
        let metrics = Arc::new(Metrics::new());
        let mut codec = codec(1024).counting(metrics.clone());
        let mut oversized = u64::MAX.to_le_bytes().to_vec();
        oversized.extend_from_slice(b"tiny");
        let mut truncated = 10u64.to_le_bytes().to_vec();
        truncated.extend_from_slice(b"abc");
        for bytes in [oversized, truncated] {
            assert!(codec.read_request(&PROTOCOL, &mut Cursor::new(bytes)).await.is_err());
        }
        let text = metrics.render(&[]);
        for reason in ["oversized_frame", "truncated_frame"] {
            let sample = format!("kind=\"request\",reason=\"{reason}\"}} 1");
            assert!(text.contains(&sample), "{reason} in {text}");
        }
    }

    #[tokio::test]
    async fn a_large_request_only_from_an_allowed_peer_is_read() {
        let allowed = LargeFramePeers::default();
        let gate = Gate { allowed: allowed.clone(), slot: PeerSlot::default() };
        let (member, outsider) = (PeerId::random(), PeerId::random());
        let codec_of =
            |peer| FrameCodec { peer: Some(peer), ..codec(16 << 20).gated(gate.clone()) };
        allowed.set([member].into());
        let large = || {
            let mut bytes = (2u64 << 20).to_le_bytes().to_vec();
            bytes.resize(8 + (2 << 20), 1);
            Cursor::new(bytes)
        };
        let error = codec_of(outsider).read_request_frame(&mut large()).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::PermissionDenied, "{error}");
        let read = codec_of(member).read_request_frame(&mut large()).await.unwrap();
        assert_eq!(read.len(), 2 << 20);
        let mut small = 3u64.to_le_bytes().to_vec();
        small.extend_from_slice(b"abc");
        let read = codec_of(outsider).read_request_frame(&mut Cursor::new(small)).await.unwrap();
        assert_eq!(read.len(), 3, "a small request from anyone is read");
    }

    #[tokio::test]
    async fn a_truncated_frame_is_an_error() {
        let codec = codec(1024);
        let mut bytes = 10u64.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"abc");
        assert!(codec.read_response_frame(&mut Cursor::new(bytes)).await.is_err());
    }
}
