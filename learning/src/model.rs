//! Models as one flat `f32` parameter vector plus a named tensor layout: softmax regression and
//! MLPs with ReLU hidden layers (PyTorch names and shapes: `fc1.weight` is `[out, in]`).

use crate::error::{LearningError, Result};
use fedmesh_protocol::model::{ModelSpec, TensorLayout, TensorSpec};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Normal, Uniform};

/// A dense network: layer widths from the input to the classes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    /// `widths[0]` features, then each hidden layer, then the classes.
    widths: Vec<usize>,
}

/// How weights are initialized (tensors of one dimension start at zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Init {
    /// He-normal for every matrix but the last (those followed by ReLU), Glorot-uniform for the
    /// last.
    Auto,
    He,
    Glorot,
}

impl Model {
    /// Builds the model a job spec names for data of this shape.
    pub fn from_spec(spec: &ModelSpec, features: usize, classes: usize) -> Result<Self> {
        let hidden = match spec {
            ModelSpec::Softmax => Vec::new(),
            ModelSpec::Mlp(hidden) => hidden.clone(),
            ModelSpec::External(_) => {
                return Err(LearningError::Invalid("an external model is trained by the node's external trainer, not by fedmesh-learning".to_owned()));
            }
            ModelSpec::Bench { .. } => {
                return Err(LearningError::Invalid(
                    "a bench model has no data to learn from (see `BenchModel`)".to_owned(),
                ));
            }
        };
        if features == 0 || classes < 2 || hidden.contains(&0) {
            return Err(LearningError::Invalid(format!(
                "a model needs features > 0, classes >= 2 and non-empty layers (got {features} features, {classes} classes, hidden {hidden:?})"
            )));
        }
        let mut widths = vec![features];
        widths.extend(hidden);
        widths.push(classes);
        Ok(Self { widths })
    }

    /// Parses `softmax`, `mlp:200,200` or `bench:P` (the communication benchmark's model of P
    /// parameters).
    pub fn parse_spec(text: &str) -> Result<ModelSpec> {
        let bad = || LearningError::BadModelName(text.to_owned());
        match text.split_once(':') {
            None if text == "softmax" => Ok(ModelSpec::Softmax),
            Some(("mlp", sizes)) => {
                let hidden = sizes
                    .split(',')
                    .map(|s| s.trim().parse::<usize>().ok().filter(|&n| n > 0))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(bad)?;
                Ok(ModelSpec::Mlp(hidden))
            }
            Some(("bench", params)) => {
                let params =
                    params.trim().parse::<u64>().ok().filter(|&n| n > 0).ok_or_else(bad)?;
                Ok(ModelSpec::Bench { params })
            }
            _ => Err(bad()),
        }
    }

    pub fn widths(&self) -> &[usize] {
        &self.widths
    }

    pub fn num_layers(&self) -> usize {
        self.widths.len() - 1
    }

    pub fn num_features(&self) -> usize {
        self.widths[0]
    }

    pub fn num_classes(&self) -> usize {
        self.widths[self.widths.len() - 1]
    }

    /// `(input, output)` of layer `l`.
    pub fn layer_shape(&self, layer: usize) -> (usize, usize) {
        (self.widths[layer], self.widths[layer + 1])
    }

    /// Offsets of layer `l`'s weight `[out, in]` and bias `[out]` in the flat vector.
    pub fn layer_offsets(&self, layer: usize) -> (usize, usize) {
        let before: usize = (0..layer).map(|l| self.layer_params(l)).sum();
        let (input, output) = self.layer_shape(layer);
        (before, before + input * output)
    }

    fn layer_params(&self, layer: usize) -> usize {
        let (input, output) = self.layer_shape(layer);
        input * output + output
    }

    pub fn num_params(&self) -> usize {
        (0..self.num_layers()).map(|l| self.layer_params(l)).sum()
    }

    /// The named tensors, in flat-vector order.
    pub fn layout(&self) -> TensorLayout {
        TensorLayout::packed((0..self.num_layers()).flat_map(|layer| {
            let (input, output) = self.layer_shape(layer);
            let name = format!("fc{}", layer + 1);
            [
                TensorSpec { name: format!("{name}.weight"), shape: vec![output, input] },
                TensorSpec { name: format!("{name}.bias"), shape: vec![output] },
            ]
        }))
    }

    /// Seeded initial parameters; biases start at zero (see [`init_layout`]).
    pub fn init(&self, init: Init, seed: u64) -> Vec<f32> {
        init_layout(&self.layout(), init, seed)
    }

    /// Checks a parameter vector's length.
    pub fn check_params(&self, params: &[f32]) -> Result<()> {
        if params.len() == self.num_params() {
            Ok(())
        } else {
            Err(LearningError::ParameterCount { expected: self.num_params(), found: params.len() })
        }
    }

    /// Forward and backward FLOPs of one sample (matrix products only): 2 per multiply-add,
    /// three products per layer (forward, weight gradient, input gradient; the first layer's
    /// input gradient is skipped).
    pub fn train_flops_per_sample(&self) -> f64 {
        (0..self.num_layers())
            .map(|layer| {
                let (input, output) = self.layer_shape(layer);
                let products = if layer == 0 { 2.0 } else { 3.0 };
                products * 2.0 * (input * output) as f64
            })
            .sum()
    }
}

/// Seeded initial parameters for `layout`. A tensor of shape `[out, in, ...]` has fan-in
/// `in * ...` and fan-out `out`; the draws come from one generator in layout order, so the
/// built-in MLP and an external model with the same layout and seed start from the same weights.
pub fn init_layout(layout: &TensorLayout, init: Init, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut params = vec![0.0f32; layout.num_params()];
    let last_matrix = layout.tensors.iter().rposition(|slot| slot.shape.len() >= 2);
    for (index, slot) in layout.tensors.iter().enumerate() {
        if slot.shape.len() < 2 {
            continue;
        }
        let fan_out = slot.shape[0];
        let fan_in = slot.len() / fan_out.max(1);
        let he = match init {
            Init::Auto => Some(index) != last_matrix,
            Init::He => true,
            Init::Glorot => false,
        };
        let values = &mut params[slot.offset..slot.offset + slot.len()];
        if he {
            if let Ok(normal) = Normal::new(0.0, (2.0 / fan_in as f32).sqrt()) {
                values.iter_mut().for_each(|w| *w = normal.sample(&mut rng));
            }
        } else {
            let limit = (6.0 / (fan_in + fan_out) as f32).sqrt();
            if let Ok(uniform) = Uniform::new_inclusive(-limit, limit) {
                values.iter_mut().for_each(|w| *w = uniform.sample(&mut rng));
            }
        }
    }
    params
}
