//! The pure half of the external-trainer bridge: a flat parameter vector to and from safetensors
//! bytes (checked against the job's tensor layout), `.npy` bytes for one array, and the metrics
//! JSON a trainer writes. No processes and no files here.

use crate::error::{LearningError, Result};
use fedmesh_protocol::model::{TensorLayout, TensorSlot};
use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Why safetensors bytes do not hold the job's model.
fn bad(problem: impl Into<String>) -> LearningError {
    LearningError::Invalid(problem.into())
}

/// One tensor's values of a flat vector, as little-endian bytes.
fn tensor_bytes(slot: &TensorSlot, params: &[f32]) -> Result<Vec<u8>> {
    let values = params.get(slot.offset..slot.offset + slot.len()).ok_or_else(|| {
        bad(format!("tensor {} lies outside the {} parameters", slot.name, params.len()))
    })?;
    Ok(values.iter().flat_map(|v| v.to_le_bytes()).collect())
}

/// Serializes `params` as safetensors, one f32 tensor per slot of `layout`, with `metadata`.
pub fn to_safetensors(
    layout: &TensorLayout,
    params: &[f32],
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>> {
    if layout.num_params() != params.len() {
        return Err(LearningError::ParameterCount {
            expected: layout.num_params(),
            found: params.len(),
        });
    }
    let bytes =
        layout.tensors.iter().map(|slot| tensor_bytes(slot, params)).collect::<Result<Vec<_>>>()?;
    let views = layout
        .tensors
        .iter()
        .zip(&bytes)
        .map(|(slot, data)| {
            let view = TensorView::new(Dtype::F32, slot.shape.clone(), data)
                .map_err(|e| bad(format!("tensor {}: {e}", slot.name)))?;
            Ok((slot.name.clone(), view))
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata = (!metadata.is_empty()).then_some(metadata);
    safetensors::serialize(views, metadata).map_err(|e| bad(format!("cannot serialize: {e}")))
}

/// Reads safetensors bytes into a flat vector in `layout` order: every tensor of the layout must
/// be there as f32 with its shape, no other tensor may be, and every value must be finite.
pub fn from_safetensors(layout: &TensorLayout, bytes: &[u8]) -> Result<Vec<f32>> {
    let file =
        SafeTensors::deserialize(bytes).map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    if let Some(extra) =
        file.names().into_iter().find(|name| !layout.tensors.iter().any(|s| s.name == **name))
    {
        return Err(bad(format!("tensor `{extra}` is not in the job's layout")));
    }
    let mut params = Vec::with_capacity(layout.num_params());
    for slot in &layout.tensors {
        let tensor = file
            .tensor(&slot.name)
            .map_err(|_| bad(format!("tensor `{}` is missing", slot.name)))?;
        if tensor.dtype() != Dtype::F32 {
            return Err(bad(format!(
                "tensor `{}` is {:?}, the layout needs F32",
                slot.name,
                tensor.dtype()
            )));
        }
        if tensor.shape() != slot.shape.as_slice() {
            return Err(bad(format!(
                "tensor `{}` has shape {:?}, the layout needs {:?}",
                slot.name,
                tensor.shape(),
                slot.shape
            )));
        }
        let start = params.len();
        params.extend(
            tensor.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        );
        if let Some(index) = params[start..].iter().position(|v| !v.is_finite()) {
            return Err(bad(format!(
                "tensor `{}` has a value that is not finite at {index}",
                slot.name
            )));
        }
    }
    Ok(params)
}

/// An array for a `.npy` file.
#[derive(Debug, Clone, Copy)]
pub enum NpyData<'a> {
    F32(&'a [f32]),
    I64(&'a [i64]),
}

/// A `.npy` (format 1.0, C order, little-endian) of `data` with `shape`.
pub fn npy_bytes(shape: &[usize], data: NpyData<'_>) -> Vec<u8> {
    let (descr, body): (&str, Vec<u8>) = match data {
        NpyData::F32(values) => ("<f4", values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        NpyData::I64(values) => ("<i8", values.iter().flat_map(|v| v.to_le_bytes()).collect()),
    };
    let dims: Vec<String> = shape.iter().map(ToString::to_string).collect();
    let shape_text = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_text}, }}");
    // Magic (6) + version (2) + length (2) + header + newline, padded to a multiple of 64.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + body.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&body);
    out
}

/// What a trainer reports in its metrics JSON: `{"samples": 1000, "loss": 0.31, "accuracy": 0.9}`
/// (`accuracy` optional when training).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerMetrics {
    pub samples: u64,
    pub loss: f32,
    #[serde(default)]
    pub accuracy: Option<f32>,
}

impl TrainerMetrics {
    /// Parses and checks a metrics JSON: a loss that is a finite number, an accuracy in [0, 1].
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let metrics: Self = serde_json::from_slice(bytes).map_err(|e| {
            bad(format!(
                "metrics are not the expected JSON ({{\"samples\", \"loss\", \"accuracy\"}}): {e}"
            ))
        })?;
        if !metrics.loss.is_finite() {
            return Err(bad("metrics: loss is not a finite number"));
        }
        if metrics.accuracy.is_some_and(|a| !(0.0..=1.0).contains(&a)) {
            return Err(bad("metrics: accuracy is not in [0, 1]"));
        }
        Ok(metrics)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedmesh_protocol::model::TensorSpec;

    fn layout() -> TensorLayout {
        TensorLayout::packed([
            TensorSpec { name: "fc1.weight".into(), shape: vec![3, 4] },
            TensorSpec { name: "fc1.bias".into(), shape: vec![3] },
        ])
    }

    #[test]
    fn safetensors_round_trip_in_layout_order() {
        let params: Vec<f32> = (0..15).map(|i| i as f32 * 0.5).collect();
        let bytes = to_safetensors(&layout(), &params, HashMap::new()).unwrap();
        assert_eq!(from_safetensors(&layout(), &bytes).unwrap(), params);
    }

    #[test]
    fn wrong_shapes_missing_tensors_and_garbage_are_refused() {
        let params = vec![0.0f32; 15];
        let other = TensorLayout::packed([
            TensorSpec { name: "fc1.weight".into(), shape: vec![4, 3] },
            TensorSpec { name: "fc1.bias".into(), shape: vec![3] },
        ]);
        let bytes = to_safetensors(&other, &params, HashMap::new()).unwrap();
        let error = from_safetensors(&layout(), &bytes).unwrap_err().to_string();
        assert!(error.contains("has shape [4, 3], the layout needs [3, 4]"), "{error}");
        let short = TensorLayout::packed([TensorSpec { name: "fc1.bias".into(), shape: vec![3] }]);
        let bytes = to_safetensors(&short, &params[..3], HashMap::new()).unwrap();
        let error = from_safetensors(&layout(), &bytes).unwrap_err().to_string();
        assert!(error.contains("`fc1.weight` is missing"), "{error}");
        let error = from_safetensors(&layout(), b"not safetensors at all").unwrap_err().to_string();
        assert!(error.contains("not a safetensors file"), "{error}");
        let mut nan = params.clone();
        nan[13] = f32::NAN;
        let bytes = to_safetensors(&layout(), &nan, HashMap::new()).unwrap();
        assert!(from_safetensors(&layout(), &bytes).is_err());
    }

    #[test]
    fn npy_bytes_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.npy");
        std::fs::write(&path, npy_bytes(&[2, 3], NpyData::F32(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])))
            .unwrap();
        let read = crate::formats::read_npy::<ndarray::Ix2>(&path, "2-D").unwrap();
        assert_eq!(read, ndarray::array![[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]);
        std::fs::write(&path, npy_bytes(&[3], NpyData::I64(&[7, 8, 9]))).unwrap();
        let read = crate::formats::read_npy::<ndarray::Ix1>(&path, "1-D").unwrap();
        assert_eq!(read, ndarray::array![7.0, 8.0, 9.0]);
        assert_eq!(
            npy_bytes(&[3], NpyData::I64(&[1, 2, 3])).len() % 64,
            24,
            "the header pads to 64 bytes"
        );
    }

    #[test]
    fn metrics_are_checked() {
        let metrics = TrainerMetrics::parse(br#"{"samples": 10, "loss": 0.5, "accuracy": 0.9}"#);
        assert_eq!(metrics.unwrap().samples, 10);
        assert!(TrainerMetrics::parse(br#"{"samples": 10}"#).is_err());
        assert!(TrainerMetrics::parse(br#"{"samples": 1, "loss": 1, "accuracy": 2}"#).is_err());
        assert!(TrainerMetrics::parse(b"garbage").is_err());
    }
}
