//! What model a job trains, as its spec states it, and the named tensor layout of a flat parameter
//! vector that every model (built-in or external) is described by.

use serde::{Deserialize, Serialize};

/// The model of a job.
///
/// JSON: `"softmax"`, `{"mlp": [200, 200]}`, `{"external": {"tensors": [...], "init": ...}}`, or
/// `{"bench": {"params": 25000000}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelSpec {
    /// Multinomial logistic regression.
    Softmax,
    /// A multi-layer perceptron with these hidden layer sizes (ReLU).
    Mlp(Vec<usize>),
    /// A model trained by the node's configured external command.
    External(ExternalModelSpec),
    /// A communication benchmark: `params` f32 parameters that no data trains; each member's
    /// "training" is a cheap deterministic delta, so rounds measure the network path alone.
    Bench { params: u64 },
}

/// A model whose training code is outside fedmesh: only its layout and initial weights are known.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExternalModelSpec {
    /// The tensors, in the order of the flat parameter vector (all f32).
    pub tensors: Vec<TensorSpec>,
    /// Initial weights: a safetensors blob by content hash, or a seed for a built-in initializer.
    pub init: ExternalInit,
}

impl ExternalModelSpec {
    /// The flat-vector layout of the tensors.
    pub fn layout(&self) -> TensorLayout {
        TensorLayout::packed(self.tensors.iter().cloned())
    }
}

/// How an external model's first global weights are made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExternalInit {
    /// A safetensors file shipped with the announcement, by its BLAKE3 hash (hex).
    Safetensors(String),
    /// The built-in initializer with this seed: He-normal for every matrix but the last,
    /// Glorot-uniform for the last, zeros for vectors (as the built-in MLP starts).
    Seed(u64),
}

/// One named tensor of a flat parameter vector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
}

/// One tensor's place in a flat `f32` parameter vector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSlot {
    pub name: String,
    pub shape: Vec<usize>,
    /// Index of the tensor's first element in the flat vector.
    pub offset: usize,
}

impl TensorSlot {
    /// Number of elements in the tensor.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The named tensors of a flat parameter vector, in order, packed without gaps.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TensorLayout {
    pub tensors: Vec<TensorSlot>,
}

impl TensorLayout {
    /// Packs the given tensors one after another.
    pub fn packed(specs: impl IntoIterator<Item = TensorSpec>) -> Self {
        let mut offset = 0;
        let tensors = specs
            .into_iter()
            .map(|spec| {
                let slot = TensorSlot { name: spec.name, shape: spec.shape, offset };
                offset += slot.len();
                slot
            })
            .collect();
        Self { tensors }
    }

    /// Total number of parameters.
    pub fn num_params(&self) -> usize {
        self.tensors.iter().map(TensorSlot::len).sum()
    }

    /// A short fingerprint of names and shapes, so two parties can check they mean the same layout.
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new();
        for slot in &self.tensors {
            hasher.update(slot.name.as_bytes());
            hasher.update(&[0]);
            for dim in &slot.shape {
                hasher.update(&(*dim as u64).to_le_bytes());
            }
            hasher.update(&[0xff]);
        }
        *hasher.finalize().as_bytes()
    }
}
