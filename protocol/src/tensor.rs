//! Tensor payloads: flat `f32` parameter vectors as little-endian bytes, optionally compacted to
//! f16 or int8, and the signed reference ([`PayloadRef`]) that a payload travels beside.
//!
//! Int8 layout: `u32` segment count `k`, then `k` times (`u64` element count, `f32` scale), then one
//! `i8` per parameter; value = `q * scale`. One segment is a global scale, one per tensor of a
//! [`TensorLayout`] is a per-tensor scale.
//!
//! Sparse layout (top-k sparsification): `u64` count `k`, then `k` strictly ascending `u32`
//! indices, then their `k` `f32` values; every other parameter is zero. All integers and floats
//! are little-endian.
//!
//! A [`Decoder`] checks a payload's structure once and then decodes any range of it, so an
//! aggregator folds a large update a chunk at a time instead of decoding a copy of it.

use crate::codec::Payload;
use crate::ids::ContentHash;
use crate::model::TensorLayout;
use half::f16;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::sync::Arc;

/// How a payload's parameters are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TensorEncoding {
    /// 4 bytes per parameter, exact.
    F32Le,
    /// 2 bytes per parameter (IEEE half precision).
    F16Le,
    /// 1 byte per parameter plus scales (see the module docs).
    Int8,
    /// The non-zero parameters only, as (index, value) pairs (see the module docs).
    Sparse,
}

impl TensorEncoding {
    /// The encoded size of `params` parameters in `segments` int8 segments (ignored otherwise);
    /// for `Sparse`, `params` is the number of entries sent.
    pub fn encoded_len(self, params: usize, segments: usize) -> usize {
        match self {
            Self::F32Le => params * 4,
            Self::F16Le => params * 2,
            Self::Int8 => INT8_HEADER + segments * INT8_SEGMENT + params,
            Self::Sparse => SPARSE_HEADER + params * SPARSE_ENTRY,
        }
    }
}

const INT8_HEADER: usize = 4;
const INT8_SEGMENT: usize = 12;
const SPARSE_HEADER: usize = 8;
const SPARSE_ENTRY: usize = 8;
/// Parameters decoded at a time when a whole payload is checked.
const DECODE_CHUNK: usize = 1 << 14;

/// What a payload beside a signed message must be: its hash, encoding, size and parameter count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PayloadRef {
    pub hash: ContentHash,
    pub encoding: TensorEncoding,
    /// Length of the payload in bytes.
    pub bytes: u64,
    /// Number of parameters it decodes to.
    pub params: u64,
}

impl PayloadRef {
    /// Describes encoded `payload` bytes of `params` parameters (hashes them).
    pub fn describe(payload: &[u8], encoding: TensorEncoding, params: usize) -> Self {
        Self {
            hash: ContentHash::of(payload),
            encoding,
            bytes: payload.len() as u64,
            params: params as u64,
        }
    }

    /// Whether `payload` is the payload this reference names.
    pub fn check<P: HashedBytes + ?Sized>(&self, payload: &P) -> Result<(), PayloadError> {
        let length = payload.byte_len() as u64;
        if length != self.bytes {
            return Err(PayloadError::Length { expected: self.bytes, found: length });
        }
        let found = payload.content_hash();
        if found != self.hash {
            return Err(PayloadError::Hash { expected: self.hash, found });
        }
        Ok(())
    }

    /// Whether the size is consistent with the encoding and parameter count.
    pub fn check_shape(&self) -> Result<(), String> {
        let consistent = match self.encoding {
            TensorEncoding::F32Le => self.params.checked_mul(4) == Some(self.bytes),
            TensorEncoding::F16Le => self.params.checked_mul(2) == Some(self.bytes),
            TensorEncoding::Int8 => self.bytes >= self.params.saturating_add(16),
            TensorEncoding::Sparse => {
                let entries = self.bytes.checked_sub(SPARSE_HEADER as u64);
                entries.is_some_and(|e| e % 8 == 0 && e / 8 <= self.params)
            }
        };
        if consistent {
            Ok(())
        } else {
            Err(format!(
                "a {:?} payload of {} parameters cannot be {} bytes",
                self.encoding, self.params, self.bytes
            ))
        }
    }
}

/// Bytes whose hash a check asks for: hashed then, or known from when they arrived (a payload
/// hashed while its frame streamed in is not hashed again).
pub trait HashedBytes {
    fn byte_len(&self) -> usize;
    fn content_hash(&self) -> ContentHash;
}

impl HashedBytes for [u8] {
    fn byte_len(&self) -> usize {
        self.len()
    }

    fn content_hash(&self) -> ContentHash {
        ContentHash::of(self)
    }
}

impl HashedBytes for Vec<u8> {
    fn byte_len(&self) -> usize {
        self.len()
    }

    fn content_hash(&self) -> ContentHash {
        ContentHash::of(self)
    }
}

/// A blob and its hash, computed from its bytes once: what a node checked on receipt it stores
/// and serves under that hash without hashing the bytes again. It owns its bytes, or borrows
/// them (a model's parameters, stored as they are in memory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedBlob<'a> {
    hash: ContentHash,
    bytes: Cow<'a, [u8]>,
}

impl CheckedBlob<'static> {
    /// `bytes`, received for `expected`, if they have that hash.
    pub fn check(expected: &ContentHash, bytes: Vec<u8>) -> Result<Self, PayloadError> {
        let blob = Self::hashing(bytes);
        blob.expecting(expected)
    }

    /// A received payload's bytes, if they are the blob `expected` (a payload hashed while it
    /// arrived is not hashed again).
    pub fn check_payload(expected: &ContentHash, payload: Payload) -> Result<Self, PayloadError> {
        let hash = payload.content_hash();
        Self { hash, bytes: Cow::Owned(payload.into_vec()) }.expecting(expected)
    }

    /// `bytes` and their hash.
    pub fn hashing(bytes: Vec<u8>) -> Self {
        Self { hash: ContentHash::of(&bytes), bytes: Cow::Owned(bytes) }
    }
}

impl<'a> CheckedBlob<'a> {
    /// Parameters as an F32Le blob, borrowed where the machine's byte order allows, and its hash.
    pub fn of_params(params: &'a [f32]) -> Self {
        let bytes = f32_le_bytes(params);
        Self { hash: ContentHash::of(&bytes), bytes }
    }

    fn expecting(self, expected: &ContentHash) -> Result<Self, PayloadError> {
        if self.hash == *expected {
            Ok(self)
        } else {
            Err(PayloadError::Hash { expected: *expected, found: self.hash })
        }
    }

    pub fn hash(&self) -> ContentHash {
        self.hash
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes.into_owned()
    }
}

/// Why a payload is not the one a message signed for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("payload is {found} bytes, the message signed for {expected}")]
    Length { expected: u64, found: u64 },
    #[error("payload hash {found} does not match the signed hash {expected}")]
    Hash { expected: ContentHash, found: ContentHash },
}

/// Why parameters could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TensorError {
    #[error("{len} bytes is not a whole number of {size}-byte {encoding:?} elements")]
    Ragged { len: usize, size: usize, encoding: TensorEncoding },
    #[error("payload holds {found} parameters, expected {expected}")]
    Count { expected: usize, found: usize },
    #[error("parameter {index} is not finite")]
    NonFinite { index: usize },
    #[error("parameter {index} does not fit in f16")]
    F16Range { index: usize },
    #[error("malformed int8 payload: {0}")]
    Int8(String),
    #[error("malformed sparse payload: {0}")]
    Sparse(String),
    #[error("top-k must keep between 1 and {params} of {params} parameters, not {k}")]
    TopK { k: usize, params: usize },
    #[error("the layout has {layout} parameters but {values} values were given")]
    Layout { layout: usize, values: usize },
}

/// Encodes parameters. For int8, a layout gives one scale per tensor, none a single global scale.
pub fn encode_params(
    values: &[f32],
    encoding: TensorEncoding,
    layout: Option<&TensorLayout>,
) -> Result<Vec<u8>, TensorError> {
    let mut out = Vec::new();
    encode_params_into(values, encoding, layout, &mut out)?;
    Ok(out)
}

/// [`encode_params`] into `out` (its contents are replaced, its capacity reused: no page faults
/// when the same buffer encodes every round).
pub fn encode_params_into(
    values: &[f32],
    encoding: TensorEncoding,
    layout: Option<&TensorLayout>,
    out: &mut Vec<u8>,
) -> Result<(), TensorError> {
    match encoding {
        TensorEncoding::F32Le => {
            encode_f32(values, out);
            Ok(())
        }
        TensorEncoding::F16Le => encode_f16(values, out),
        TensorEncoding::Int8 => {
            let segments = match layout {
                Some(layout) if layout.num_params() != values.len() => {
                    return Err(TensorError::Layout {
                        layout: layout.num_params(),
                        values: values.len(),
                    });
                }
                Some(layout) => layout.tensors.iter().map(|slot| slot.len()).collect(),
                None => vec![values.len()],
            };
            encode_int8(values, &segments, out)
        }
        TensorEncoding::Sparse => {
            if let Some(index) = values.iter().position(|v| !v.is_finite()) {
                return Err(TensorError::NonFinite { index });
            }
            let nonzero: Vec<u32> =
                (0..values.len() as u32).filter(|i| values[*i as usize] != 0.0).collect();
            encode_sparse(values, &nonzero, out)
        }
    }
}

/// The content hash of `values` encoded as [`TensorEncoding::F32Le`], without making the payload
/// (on a little-endian machine).
pub fn hash_f32(values: &[f32]) -> ContentHash {
    ContentHash::of(&f32_le_bytes(values))
}

/// Top-k sparsification: the `k` parameters of largest magnitude as a [`TensorEncoding::Sparse`]
/// payload (ties broken by index; the rest are sent as zero).
pub fn encode_top_k(values: &[f32], k: usize) -> Result<Vec<u8>, TensorError> {
    if k == 0 || k > values.len() || values.len() > u32::MAX as usize {
        return Err(TensorError::TopK { k, params: values.len() });
    }
    if let Some(index) = values.iter().position(|v| !v.is_finite()) {
        return Err(TensorError::NonFinite { index });
    }
    let mut order: Vec<u32> = (0..values.len() as u32).collect();
    let magnitude = |i: &u32| values[*i as usize].abs();
    order
        .select_nth_unstable_by(k - 1, |a, b| magnitude(b).total_cmp(&magnitude(a)).then(a.cmp(b)));
    order.truncate(k);
    order.sort_unstable();
    let mut out = Vec::new();
    encode_sparse(values, &order, &mut out)?;
    Ok(out)
}

/// The sparse layout of `values` at the ascending `indices`.
fn encode_sparse(values: &[f32], indices: &[u32], out: &mut Vec<u8>) -> Result<(), TensorError> {
    if values.len() > u32::MAX as usize {
        return Err(TensorError::Sparse("more than 2^32 parameters".to_owned()));
    }
    out.clear();
    out.reserve(TensorEncoding::Sparse.encoded_len(indices.len(), 0));
    out.extend_from_slice(&(indices.len() as u64).to_le_bytes());
    for index in indices {
        out.extend_from_slice(&index.to_le_bytes());
    }
    for index in indices {
        out.extend_from_slice(&values[*index as usize].to_le_bytes());
    }
    Ok(())
}

/// Decodes parameters, refusing a wrong length, a wrong count or a non-finite value.
pub fn decode_params(
    bytes: &[u8],
    encoding: TensorEncoding,
    expected_params: usize,
) -> Result<Vec<f32>, TensorError> {
    let mut out = Vec::new();
    decode_params_into(bytes, encoding, expected_params, &mut out)?;
    Ok(out)
}

/// [`decode_params`] into `out` (its contents are replaced, its capacity reused).
pub fn decode_params_into(
    bytes: &[u8],
    encoding: TensorEncoding,
    expected_params: usize,
    out: &mut Vec<f32>,
) -> Result<(), TensorError> {
    let decoder = Decoder::new(bytes, encoding, expected_params)?;
    out.clear();
    out.resize(decoder.len(), 0.0);
    decoder.decode_range(0, out);
    match out.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(TensorError::NonFinite { index }),
        None => Ok(()),
    }
}

/// A payload whose structure is checked (its length, count, int8 table, sparse indices), decoded
/// a range of parameters at a time (see the module docs).
#[derive(Debug)]
pub struct Decoder<'a> {
    params: usize,
    form: Form<'a>,
}

#[derive(Debug)]
enum Form<'a> {
    F32(&'a [u8]),
    F16(&'a [u8]),
    /// Each segment's end (exclusive) and scale, and one byte per parameter.
    Int8 {
        segments: Vec<(usize, f32)>,
        values: &'a [u8],
    },
    /// `k` ascending indices and their `k` values.
    Sparse {
        indices: &'a [u8],
        values: &'a [u8],
    },
}

impl<'a> Decoder<'a> {
    /// Checks `bytes` as an `encoding` payload of `expected` parameters.
    pub fn new(
        bytes: &'a [u8],
        encoding: TensorEncoding,
        expected: usize,
    ) -> Result<Self, TensorError> {
        let form = match encoding {
            TensorEncoding::F32Le => Form::F32(check_fixed(bytes, encoding, 4, expected)?),
            TensorEncoding::F16Le => Form::F16(check_fixed(bytes, encoding, 2, expected)?),
            TensorEncoding::Int8 => int8_form(bytes, expected)?,
            TensorEncoding::Sparse => sparse_form(bytes, expected)?,
        };
        Ok(Self { params: expected, form })
    }

    /// How many parameters it decodes to.
    pub fn len(&self) -> usize {
        self.params
    }

    pub fn is_empty(&self) -> bool {
        self.params == 0
    }

    /// Writes parameters `start..start + out.len()` into `out` (positions past the end are left
    /// as they are).
    pub fn decode_range(&self, start: usize, out: &mut [f32]) {
        let end = start.saturating_add(out.len()).min(self.params);
        let Some(out) = out.get_mut(..end.saturating_sub(start)) else { return };
        match &self.form {
            Form::F32(bytes) => {
                let chunks = bytes[start * 4..end * 4].chunks_exact(4);
                for (value, c) in out.iter_mut().zip(chunks) {
                    *value = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            Form::F16(bytes) => {
                let chunks = bytes[start * 2..end * 2].chunks_exact(2);
                for (value, c) in out.iter_mut().zip(chunks) {
                    *value = f16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }
            Form::Int8 { segments, values } => decode_int8_range(segments, values, start, out),
            Form::Sparse { indices, values } => decode_sparse_range(indices, values, start, out),
        }
    }

    /// Checks that every parameter is finite.
    pub fn check_finite(&self) -> Result<(), TensorError> {
        match self.first_where(|v| !v.is_finite()) {
            Some((index, _)) => Err(TensorError::NonFinite { index }),
            None => Ok(()),
        }
    }

    /// The first parameter (its index and value) that is not finite or whose magnitude is past
    /// `bound`, decoded a chunk at a time.
    pub fn first_outside(&self, bound: f32) -> Option<(usize, f32)> {
        self.first_where(|v| !v.is_finite() || v.abs() > bound)
    }

    fn first_where(&self, test: impl Fn(f32) -> bool) -> Option<(usize, f32)> {
        let mut chunk = vec![0.0f32; DECODE_CHUNK.min(self.params)];
        for start in (0..self.params).step_by(DECODE_CHUNK.max(1)) {
            let len = DECODE_CHUNK.min(self.params - start);
            self.decode_range(start, &mut chunk[..len]);
            if let Some(offset) = chunk[..len].iter().position(|v| test(*v)) {
                return Some((start + offset, chunk[offset]));
            }
        }
        None
    }
}

/// A fixed-size encoding's bytes, if they hold exactly `expected` elements.
fn check_fixed(
    bytes: &[u8],
    encoding: TensorEncoding,
    size: usize,
    expected: usize,
) -> Result<&[u8], TensorError> {
    if !bytes.len().is_multiple_of(size) {
        return Err(TensorError::Ragged { len: bytes.len(), size, encoding });
    }
    let found = bytes.len() / size;
    if found != expected {
        return Err(TensorError::Count { expected, found });
    }
    Ok(bytes)
}

fn int8_form(bytes: &[u8], expected: usize) -> Result<Form<'_>, TensorError> {
    let malformed = |what: &str| TensorError::Int8(what.to_owned());
    let (count, rest) = bytes.split_first_chunk::<4>().ok_or_else(|| malformed("no header"))?;
    let count = u32::from_le_bytes(*count) as usize;
    let table_len = count.checked_mul(INT8_SEGMENT).filter(|len| *len <= rest.len());
    let table_len = table_len.ok_or_else(|| malformed("segment table is truncated"))?;
    let (table, values) = rest.split_at(table_len);
    if values.len() != expected {
        return Err(TensorError::Count { expected, found: values.len() });
    }
    let mut segments = Vec::with_capacity(count);
    let mut end = 0usize;
    for entry in table.chunks_exact(INT8_SEGMENT) {
        let (len, scale) = entry.split_at(8);
        let len = u64::from_le_bytes(len.try_into().map_err(|_| malformed("segment length"))?);
        let scale = f32::from_le_bytes(scale.try_into().map_err(|_| malformed("segment scale"))?);
        if !scale.is_finite() || scale < 0.0 {
            return Err(malformed("a scale is negative or not finite"));
        }
        let next = usize::try_from(len).ok().and_then(|len| end.checked_add(len));
        end = next
            .filter(|next| *next <= values.len())
            .ok_or_else(|| malformed("segments overrun the values"))?;
        segments.push((end, scale));
    }
    if end != values.len() {
        return Err(malformed("segments do not cover every value"));
    }
    Ok(Form::Int8 { segments, values })
}

fn decode_int8_range(segments: &[(usize, f32)], values: &[u8], start: usize, out: &mut [f32]) {
    let mut segment = segments.partition_point(|(end, _)| *end <= start);
    for (offset, value) in out.iter_mut().enumerate() {
        let index = start + offset;
        while segments.get(segment).is_some_and(|(end, _)| *end <= index) {
            segment += 1;
        }
        let scale = segments.get(segment).map_or(0.0, |(_, scale)| *scale);
        *value = f32::from(values[index] as i8) * scale;
    }
}

fn sparse_form(bytes: &[u8], expected: usize) -> Result<Form<'_>, TensorError> {
    let malformed = |what: String| TensorError::Sparse(what);
    let (count, rest) =
        bytes.split_first_chunk::<8>().ok_or_else(|| malformed("no header".to_owned()))?;
    let count = u64::from_le_bytes(*count);
    let entries = usize::try_from(count).ok().filter(|k| *k <= expected);
    let k =
        entries.ok_or_else(|| malformed(format!("{count} entries for {expected} parameters")))?;
    if k.checked_mul(SPARSE_ENTRY) != Some(rest.len()) {
        return Err(malformed(format!("{k} entries cannot be {} bytes", rest.len())));
    }
    let (indices, values) = rest.split_at(k * 4);
    let mut previous: Option<u32> = None;
    for index in indices.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])) {
        if index as usize >= expected || previous.is_some_and(|p| p >= index) {
            return Err(malformed(format!("index {index} is out of order or past the end")));
        }
        previous = Some(index);
    }
    Ok(Form::Sparse { indices, values })
}

fn decode_sparse_range(indices: &[u8], values: &[u8], start: usize, out: &mut [f32]) {
    let index_at = |p: usize| {
        let c = &indices[p * 4..p * 4 + 4];
        u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize
    };
    let k = indices.len() / 4;
    out.fill(0.0);
    let (mut low, mut high) = (0, k);
    while low < high {
        let mid = (low + high) / 2;
        if index_at(mid) < start { low = mid + 1 } else { high = mid }
    }
    for p in low..k {
        let Some(slot) = out.get_mut(index_at(p) - start) else { break };
        let c = &values[p * 4..p * 4 + 4];
        *slot = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
}

fn encode_f32(values: &[f32], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&f32_le_bytes(values));
}

/// A payload to send, shared by the tasks that send and keep it: encoded bytes, or f32 values
/// that are sent as their own bytes ([`f32_payload`]).
pub type SharedPayload = Arc<dyn SharedBytes>;

/// Bytes a [`SharedPayload`] can be.
pub trait SharedBytes: Send + Sync + std::fmt::Debug {
    fn bytes(&self) -> &[u8];
}

impl SharedBytes for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
}

/// f32 values seen as their in-memory bytes: made only by [`f32_payload`], on a little-endian
/// machine, where those are the F32Le encoding.
#[derive(Debug)]
struct F32Bytes(Arc<Vec<f32>>);

impl SharedBytes for F32Bytes {
    fn bytes(&self) -> &[u8] {
        bytemuck::cast_slice(&self.0)
    }
}

/// A payload of no bytes (a response that carries none).
pub fn no_payload() -> SharedPayload {
    Arc::new(Vec::new())
}

/// `values` as an F32Le payload: the values themselves on a little-endian machine (a 200 MB
/// delta sent without a 200 MB copy first), else encoded.
pub fn f32_payload(values: Arc<Vec<f32>>) -> SharedPayload {
    if cfg!(target_endian = "little") {
        Arc::new(F32Bytes(values))
    } else {
        Arc::new(f32_le_bytes(&values).into_owned())
    }
}

/// `values` as little-endian bytes: themselves on a little-endian machine (no copy), else
/// encoded.
pub fn f32_le_bytes(values: &[f32]) -> Cow<'_, [u8]> {
    if cfg!(target_endian = "little") {
        Cow::Borrowed(bytemuck::cast_slice(values))
    } else {
        Cow::Owned(values.iter().flat_map(|value| value.to_le_bytes()).collect())
    }
}

fn encode_f16(values: &[f32], out: &mut Vec<u8>) -> Result<(), TensorError> {
    out.resize(values.len() * 2, 0);
    for (index, (chunk, value)) in out.chunks_exact_mut(2).zip(values).enumerate() {
        let half = f16::from_f32(*value);
        if !half.is_finite() {
            return Err(if value.is_finite() {
                TensorError::F16Range { index }
            } else {
                TensorError::NonFinite { index }
            });
        }
        chunk.copy_from_slice(&half.to_le_bytes());
    }
    Ok(())
}

fn encode_int8(values: &[f32], segments: &[usize], out: &mut Vec<u8>) -> Result<(), TensorError> {
    if let Some(index) = values.iter().position(|v| !v.is_finite()) {
        return Err(TensorError::NonFinite { index });
    }
    let values_at = INT8_HEADER + segments.len() * INT8_SEGMENT;
    out.clear();
    out.reserve(values_at + values.len());
    out.extend_from_slice(&(segments.len() as u32).to_le_bytes());
    let mut body = Vec::with_capacity(values.len());
    let mut start = 0;
    for &len in segments {
        let segment = &values[start..start + len];
        start += len;
        let max = segment.iter().fold(0f32, |max, v| max.max(v.abs()));
        let scale = max / 127.0;
        out.extend_from_slice(&(len as u64).to_le_bytes());
        out.extend_from_slice(&scale.to_le_bytes());
        let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        body.extend(segment.iter().map(|v| (v * inverse).round().clamp(-127.0, 127.0) as i8 as u8));
    }
    out.extend_from_slice(&body);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TensorSpec;

    fn sample(n: usize) -> Vec<f32> {
        (0..n).map(|i| ((i as f32) * 0.37).sin() * (1.0 + (i % 7) as f32)).collect()
    }

    #[test]
    fn hashing_values_equals_hashing_their_f32_payload_shared_or_encoded() {
        for n in [0, 1, 65_535, 65_536, 196_613] {
            let values = sample(n);
            let payload = encode_params(&values, TensorEncoding::F32Le, None).unwrap();
            assert_eq!(hash_f32(&values), ContentHash::of(&payload), "{n} values");
            let blob = CheckedBlob::of_params(&values);
            assert_eq!((blob.hash(), blob.bytes()), (ContentHash::of(&payload), &payload[..]));
            let expected: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            assert_eq!(payload, expected, "{n} values, each little-endian");
            let shared = f32_payload(Arc::new(values));
            assert_eq!(shared.bytes(), &payload[..], "{n} values shared as their payload");
        }
    }

    #[test]
    fn f32_round_trips_exactly() {
        let values = sample(1000);
        let bytes = encode_params(&values, TensorEncoding::F32Le, None).unwrap();
        assert_eq!(bytes.len(), TensorEncoding::F32Le.encoded_len(1000, 0));
        assert_eq!(bytes[..4], values[0].to_le_bytes());
        assert_eq!(decode_params(&bytes, TensorEncoding::F32Le, 1000).unwrap(), values);
    }

    #[test]
    fn f16_round_trips_within_half_precision() {
        let values = sample(1000);
        let bytes = encode_params(&values, TensorEncoding::F16Le, None).unwrap();
        assert_eq!(bytes.len(), 2000);
        let back = decode_params(&bytes, TensorEncoding::F16Le, 1000).unwrap();
        for (a, b) in values.iter().zip(&back) {
            assert!((a - b).abs() <= a.abs() * 1e-3 + 1e-6, "{a} vs {b}");
        }
        let error = encode_params(&[1e6], TensorEncoding::F16Le, None).unwrap_err();
        assert_eq!(error, TensorError::F16Range { index: 0 });
    }

    #[test]
    fn int8_per_tensor_scales_keep_small_tensors_precise() {
        let layout = TensorLayout::packed([
            TensorSpec { name: "w".into(), shape: vec![10, 10] },
            TensorSpec { name: "b".into(), shape: vec![10] },
        ]);
        let mut values = sample(110);
        values[100..].iter_mut().for_each(|v| *v *= 1e-3);
        let global = encode_params(&values, TensorEncoding::Int8, None).unwrap();
        let per_tensor = encode_params(&values, TensorEncoding::Int8, Some(&layout)).unwrap();
        assert_eq!(per_tensor.len(), TensorEncoding::Int8.encoded_len(110, 2));
        let global = decode_params(&global, TensorEncoding::Int8, 110).unwrap();
        let per_tensor = decode_params(&per_tensor, TensorEncoding::Int8, 110).unwrap();
        let error = |back: &[f32]| -> f32 {
            values[100..].iter().zip(&back[100..]).map(|(a, b)| (a - b).abs()).sum()
        };
        assert!(error(&per_tensor) * 10.0 < error(&global));
        let max = values[..100].iter().fold(0f32, |m, v| m.max(v.abs()));
        for (a, b) in values[..100].iter().zip(&per_tensor) {
            assert!((a - b).abs() <= max / 254.0 + 1e-6);
        }
    }

    #[test]
    fn int8_of_zeros_decodes_to_zeros() {
        let bytes = encode_params(&[0.0; 5], TensorEncoding::Int8, None).unwrap();
        assert_eq!(decode_params(&bytes, TensorEncoding::Int8, 5).unwrap(), vec![0.0; 5]);
    }

    #[test]
    fn wrong_lengths_and_counts_are_clear_errors() {
        let error = decode_params(&[0; 7], TensorEncoding::F32Le, 2).unwrap_err();
        assert!(error.to_string().contains("7 bytes is not a whole number of 4-byte"), "{error}");
        let error = decode_params(&[0; 8], TensorEncoding::F32Le, 3).unwrap_err();
        assert_eq!(error, TensorError::Count { expected: 3, found: 2 });
        assert!(matches!(
            decode_params(&[1, 0, 0], TensorEncoding::Int8, 0),
            Err(TensorError::Int8(_))
        ));
        let layout = TensorLayout::packed([TensorSpec { name: "w".into(), shape: vec![3] }]);
        assert!(matches!(
            encode_params(&[1.0], TensorEncoding::Int8, Some(&layout)),
            Err(TensorError::Layout { layout: 3, values: 1 })
        ));
    }

    #[test]
    fn malformed_int8_tables_are_refused() {
        let mut bytes = encode_params(&sample(10), TensorEncoding::Int8, None).unwrap();
        bytes[4..12].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            decode_params(&bytes, TensorEncoding::Int8, 10),
            Err(TensorError::Int8(_))
        ));
        let mut bytes = encode_params(&sample(10), TensorEncoding::Int8, None).unwrap();
        bytes[12..16].copy_from_slice(&f32::NAN.to_le_bytes());
        assert!(matches!(
            decode_params(&bytes, TensorEncoding::Int8, 10),
            Err(TensorError::Int8(_))
        ));
        let mut bytes = encode_params(&sample(10), TensorEncoding::Int8, None).unwrap();
        bytes[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_params(&bytes, TensorEncoding::Int8, 10),
            Err(TensorError::Int8(_))
        ));
    }

    #[test]
    fn non_finite_values_are_refused() {
        let bytes = encode_params(&[1.0, f32::NAN], TensorEncoding::F32Le, None).unwrap();
        let error = decode_params(&bytes, TensorEncoding::F32Le, 2).unwrap_err();
        assert_eq!(error, TensorError::NonFinite { index: 1 });
        let error = encode_params(&[f32::INFINITY], TensorEncoding::Int8, None).unwrap_err();
        assert_eq!(error, TensorError::NonFinite { index: 0 });
    }

    #[test]
    fn a_payload_ref_checks_length_and_hash() {
        let payload = encode_params(&sample(16), TensorEncoding::F32Le, None).unwrap();
        let reference = PayloadRef::describe(&payload, TensorEncoding::F32Le, 16);
        assert_eq!(reference.check_shape(), Ok(()));
        assert_eq!(reference.check(&payload), Ok(()));
        assert!(matches!(reference.check(&payload[1..]), Err(PayloadError::Length { .. })));
        let mut tampered = payload.clone();
        tampered[3] ^= 1;
        assert!(matches!(reference.check(&tampered), Err(PayloadError::Hash { .. })));
        let lying = PayloadRef { params: 17, ..reference };
        assert!(lying.check_shape().is_err());
    }

    #[test]
    fn top_k_keeps_the_largest_magnitudes_and_zeros_the_rest() {
        let values = [0.1, -5.0, 0.0, 3.0, -0.2, 4.0];
        let bytes = encode_top_k(&values, 3).unwrap();
        assert_eq!(bytes.len(), TensorEncoding::Sparse.encoded_len(3, 0));
        let back = decode_params(&bytes, TensorEncoding::Sparse, 6).unwrap();
        assert_eq!(back, [0.0, -5.0, 0.0, 3.0, 0.0, 4.0]);
        let reference = PayloadRef::describe(&bytes, TensorEncoding::Sparse, 6);
        assert_eq!(reference.check_shape(), Ok(()));
        let all = encode_top_k(&values, 6).unwrap();
        assert_eq!(decode_params(&all, TensorEncoding::Sparse, 6).unwrap(), values);
        let lossless = encode_params(&values, TensorEncoding::Sparse, None).unwrap();
        assert_eq!(decode_params(&lossless, TensorEncoding::Sparse, 6).unwrap(), values);
    }

    #[test]
    fn top_k_refuses_a_bad_count_and_non_finite_values() {
        assert_eq!(encode_top_k(&[1.0, 2.0], 0), Err(TensorError::TopK { k: 0, params: 2 }));
        assert_eq!(encode_top_k(&[1.0, 2.0], 3), Err(TensorError::TopK { k: 3, params: 2 }));
        assert_eq!(encode_top_k(&[1.0, f32::NAN], 1), Err(TensorError::NonFinite { index: 1 }));
    }

    /// A sparse payload of `entries` (index, value) pairs as given, unchecked.
    fn sparse(count: u64, entries: &[(u32, f32)]) -> Vec<u8> {
        let mut bytes = count.to_le_bytes().to_vec();
        entries.iter().for_each(|(index, _)| bytes.extend_from_slice(&index.to_le_bytes()));
        entries.iter().for_each(|(_, value)| bytes.extend_from_slice(&value.to_le_bytes()));
        bytes
    }

    #[test]
    fn malformed_sparse_payloads_are_refused() {
        let decode = |bytes: &[u8]| decode_params(bytes, TensorEncoding::Sparse, 4);
        assert_eq!(decode(&sparse(2, &[(0, 1.0), (3, 2.0)])).unwrap(), [1.0, 0.0, 0.0, 2.0]);
        let unsorted = sparse(2, &[(3, 1.0), (0, 2.0)]);
        let repeated = sparse(2, &[(1, 1.0), (1, 2.0)]);
        let past_the_end = sparse(1, &[(4, 1.0)]);
        let too_many = sparse(5, &[(0, 1.0); 5]);
        let lying_count = sparse(3, &[(0, 1.0), (1, 1.0)]);
        let truncated = &sparse(2, &[(0, 1.0), (1, 1.0)])[..20];
        for bad in
            [&unsorted[..], &repeated, &past_the_end, &too_many, &lying_count, truncated, &[1, 2]]
        {
            assert!(matches!(decode(bad), Err(TensorError::Sparse(_))), "{bad:?}");
        }
        let error = decode(&sparse(1, &[(2, f32::INFINITY)])).unwrap_err();
        assert_eq!(error, TensorError::NonFinite { index: 2 });
        let huge = sparse(u64::MAX, &[]);
        assert!(matches!(decode(&huge), Err(TensorError::Sparse(_))));
    }

    #[test]
    fn a_decoder_gives_any_range_as_the_whole_decode_does() {
        let values = sample(1000);
        let layout = TensorLayout::packed([
            TensorSpec { name: "a".into(), shape: vec![300] },
            TensorSpec { name: "b".into(), shape: vec![700] },
        ]);
        for encoding in [TensorEncoding::F32Le, TensorEncoding::F16Le, TensorEncoding::Int8] {
            let bytes = encode_params(&values, encoding, Some(&layout)).unwrap();
            check_ranges(&bytes, encoding);
        }
        check_ranges(&encode_top_k(&values, 100).unwrap(), TensorEncoding::Sparse);
    }

    fn check_ranges(bytes: &[u8], encoding: TensorEncoding) {
        let whole = decode_params(bytes, encoding, 1000).unwrap();
        let decoder = Decoder::new(bytes, encoding, 1000).unwrap();
        assert_eq!(decoder.check_finite(), Ok(()));
        for (start, len) in [(0, 1000), (0, 7), (295, 10), (999, 1), (512, 488), (990, 50)] {
            let mut out = vec![-1.0; len];
            decoder.decode_range(start, &mut out);
            let end = (start + len).min(1000);
            assert_eq!(out[..end - start], whole[start..end], "{encoding:?} at {start}");
        }
    }
}
