//! Tensor payloads: flat `f32` parameter vectors as little-endian bytes, optionally compacted to
//! f16 or int8, and the signed reference ([`PayloadRef`]) that a payload travels beside.
//!
//! Int8 layout: `u32` segment count `k`, then `k` times (`u64` element count, `f32` scale), then one
//! `i8` per parameter; value = `q * scale`. One segment is a global scale, one per tensor of a
//! [`TensorLayout`] is a per-tensor scale. All integers and floats are little-endian.

use crate::ids::ContentHash;
use crate::model::TensorLayout;
use half::f16;
use serde::{Deserialize, Serialize};

/// How a payload's parameters are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TensorEncoding {
    /// 4 bytes per parameter, exact.
    F32Le,
    /// 2 bytes per parameter (IEEE half precision).
    F16Le,
    /// 1 byte per parameter plus scales (see the module docs).
    Int8,
}

impl TensorEncoding {
    /// The encoded size of `params` parameters in `segments` int8 segments (ignored otherwise).
    pub fn encoded_len(self, params: usize, segments: usize) -> usize {
        match self {
            Self::F32Le => params * 4,
            Self::F16Le => params * 2,
            Self::Int8 => INT8_HEADER + segments * INT8_SEGMENT + params,
        }
    }
}

const INT8_HEADER: usize = 4;
const INT8_SEGMENT: usize = 12;

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
    pub fn check(&self, payload: &[u8]) -> Result<(), PayloadError> {
        if payload.len() as u64 != self.bytes {
            return Err(PayloadError::Length { expected: self.bytes, found: payload.len() as u64 });
        }
        let found = ContentHash::of(payload);
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

/// Checks that a blob received for `expected` has that hash.
pub fn check_blob(expected: &ContentHash, bytes: &[u8]) -> Result<(), PayloadError> {
    let found = ContentHash::of(bytes);
    if &found == expected { Ok(()) } else { Err(PayloadError::Hash { expected: *expected, found }) }
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
    }
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
    match encoding {
        TensorEncoding::F32Le => decode_fixed(bytes, encoding, 4, expected_params, out, |c| {
            f32::from_le_bytes([c[0], c[1], c[2], c[3]])
        })?,
        TensorEncoding::F16Le => decode_fixed(bytes, encoding, 2, expected_params, out, |c| {
            f16::from_le_bytes([c[0], c[1]]).to_f32()
        })?,
        TensorEncoding::Int8 => decode_int8(bytes, expected_params, out)?,
    }
    match out.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(TensorError::NonFinite { index }),
        None => Ok(()),
    }
}

fn encode_f32(values: &[f32], out: &mut Vec<u8>) {
    out.resize(values.len() * 4, 0);
    for (chunk, value) in out.chunks_exact_mut(4).zip(values) {
        chunk.copy_from_slice(&value.to_le_bytes());
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

fn decode_fixed(
    bytes: &[u8],
    encoding: TensorEncoding,
    size: usize,
    expected: usize,
    out: &mut Vec<f32>,
    element: impl Fn(&[u8]) -> f32,
) -> Result<(), TensorError> {
    if !bytes.len().is_multiple_of(size) {
        return Err(TensorError::Ragged { len: bytes.len(), size, encoding });
    }
    let found = bytes.len() / size;
    if found != expected {
        return Err(TensorError::Count { expected, found });
    }
    out.resize(found, 0.0);
    for (value, chunk) in out.iter_mut().zip(bytes.chunks_exact(size)) {
        *value = element(chunk);
    }
    Ok(())
}

fn decode_int8(bytes: &[u8], expected: usize, out: &mut Vec<f32>) -> Result<(), TensorError> {
    let malformed = |what: &str| TensorError::Int8(what.to_owned());
    let (count, rest) = bytes.split_first_chunk::<4>().ok_or_else(|| malformed("no header"))?;
    let count = u32::from_le_bytes(*count) as usize;
    let table_len = count.checked_mul(INT8_SEGMENT).filter(|len| *len <= rest.len());
    let table_len = table_len.ok_or_else(|| malformed("segment table is truncated"))?;
    let (table, values) = rest.split_at(table_len);
    if values.len() != expected {
        return Err(TensorError::Count { expected, found: values.len() });
    }
    out.clear();
    out.reserve(values.len());
    for entry in table.chunks_exact(INT8_SEGMENT) {
        let (len, scale) = entry.split_at(8);
        let len = u64::from_le_bytes(len.try_into().map_err(|_| malformed("segment length"))?);
        let scale = f32::from_le_bytes(scale.try_into().map_err(|_| malformed("segment scale"))?);
        if !scale.is_finite() || scale < 0.0 {
            return Err(malformed("a scale is negative or not finite"));
        }
        let start = out.len();
        let end = usize::try_from(len).ok().and_then(|len| start.checked_add(len));
        let segment = end.and_then(|end| values.get(start..end));
        let segment = segment.ok_or_else(|| malformed("segments overrun the values"))?;
        out.extend(segment.iter().map(|q| f32::from(*q as i8) * scale));
    }
    if out.len() != values.len() {
        return Err(malformed("segments do not cover every value"));
    }
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
}
