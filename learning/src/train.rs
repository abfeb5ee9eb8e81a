//! Local training (minibatch SGD with momentum, weight decay and the FedProx term) and evaluation,
//! on whole minibatches with matrix products into preallocated buffers.

use crate::data::Dataset;
use crate::error::{LearningError, Result};
use crate::model::Model;
use fedmesh_protocol::spec::LrSchedule;
use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, ArrayView2, ArrayViewMut2, Axis, s};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

/// Local training settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    /// FedProx: `mu/2 * ||w - global||^2` added to the loss (0 turns it off).
    pub prox_mu: f32,
    /// Seed of the per-epoch shuffles.
    pub seed: u64,
    /// How `lr` changes over a job's rounds (none: constant), and the rounds it spans.
    #[serde(default)]
    pub lr_schedule: Option<LrSchedule>,
    #[serde(default)]
    pub rounds: u64,
}

impl TrainConfig {
    /// The local training a job's spec asks every member for (its hyperparameters and seed).
    pub fn for_job(spec: &fedmesh_protocol::spec::JobSpec) -> Self {
        let h = &spec.hyperparameters;
        Self {
            epochs: h.local_epochs as usize,
            batch_size: h.batch_size as usize,
            lr: h.lr,
            momentum: h.momentum,
            weight_decay: h.weight_decay,
            prox_mu: h.fedprox_mu,
            seed: spec.seed,
            lr_schedule: h.lr_schedule,
            rounds: h.rounds,
        }
    }

    /// The training of `round` (1-based): the scheduled learning rate, shuffled by `seed`.
    pub fn for_round(&self, round: u64, seed: u64) -> Self {
        let lr = self.lr_schedule.map_or(self.lr, |s| s.lr(self.lr, round, self.rounds));
        Self { lr, seed, ..self.clone() }
    }

    fn check(&self) -> Result<()> {
        let problem = if self.batch_size == 0 {
            "batch size must be at least 1"
        } else if !(self.lr > 0.0 && self.lr.is_finite()) {
            "learning rate must be a positive number"
        } else if !(0.0..1.0).contains(&self.momentum) {
            "momentum must be in [0, 1)"
        } else if self.weight_decay < 0.0 || self.prox_mu < 0.0 {
            "weight decay and FedProx mu must not be negative"
        } else {
            return Ok(());
        };
        Err(LearningError::Invalid(problem.to_owned()))
    }
}

/// What local training produced.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOutcome {
    pub params: Vec<f32>,
    /// `params - start`.
    pub delta: Vec<f32>,
    pub samples: usize,
    /// Mean training loss over the last epoch.
    pub loss: f32,
}

/// A model's quality on a data set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub samples: usize,
    pub loss: f32,
    pub accuracy: f32,
    /// Accuracy on each class's samples (`None` when the class has none).
    pub per_class_accuracy: Vec<Option<f32>>,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<u64>>,
}

/// Activations and gradients for one batch size, reused across batches.
struct Workspace {
    /// `activations[l]` is the input of layer `l`; the last is the logits.
    activations: Vec<Array2<f32>>,
    /// `deltas[l]` is the loss gradient at layer `l`'s output (pre-activation).
    deltas: Vec<Array2<f32>>,
}

impl Workspace {
    fn new(model: &Model, batch: usize) -> Self {
        let widths = model.widths();
        Self {
            activations: widths.iter().map(|&w| Array2::zeros((batch, w))).collect(),
            deltas: widths[1..].iter().map(|&w| Array2::zeros((batch, w))).collect(),
        }
    }
}

fn weight_view<'a>(
    model: &Model,
    params: &'a [f32],
    layer: usize,
) -> (ArrayView2<'a, f32>, &'a [f32]) {
    let (input, output) = model.layer_shape(layer);
    let (weight_at, bias_at) = model.layer_offsets(layer);
    let weight = ArrayView2::from_shape((output, input), &params[weight_at..bias_at])
        .expect("layout matches the model");
    (weight, &params[bias_at..bias_at + output])
}

/// Runs the batch in `work.activations[0][..n]` forward; the logits land in the last activation.
fn forward(model: &Model, params: &[f32], work: &mut Workspace, n: usize) {
    let layers = model.num_layers();
    for layer in 0..layers {
        let (weight, bias) = weight_view(model, params, layer);
        let (before, after) = work.activations.split_at_mut(layer + 1);
        let input = before[layer].slice(s![..n, ..]);
        let mut output = after[0].slice_mut(s![..n, ..]);
        general_mat_mul(1.0, &input, &weight.t(), 0.0, &mut output);
        let relu = layer + 1 < layers;
        for mut row in output.rows_mut() {
            for (value, b) in row.iter_mut().zip(bias) {
                let z = *value + b;
                *value = if relu { z.max(0.0) } else { z };
            }
        }
    }
}

/// Softmax cross-entropy of the logits against `labels`; returns the summed loss and, when
/// `gradient` is given, writes `(softmax - onehot) / n` into it.
fn softmax_loss(
    logits: ArrayView2<f32>,
    labels: &[usize],
    mut gradient: Option<ArrayViewMut2<f32>>,
) -> f32 {
    let n = labels.len() as f32;
    let mut total = 0.0f32;
    for (row_index, (row, &label)) in logits.rows().into_iter().zip(labels).enumerate() {
        let max = row.fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let sum: f32 = row.iter().map(|&z| (z - max).exp()).sum();
        let log_sum = sum.ln();
        total += log_sum - (row[label] - max);
        if let Some(gradient) = gradient.as_mut() {
            let mut out = gradient.row_mut(row_index);
            for (class, (g, &z)) in out.iter_mut().zip(row.iter()).enumerate() {
                let p = (z - max).exp() / sum;
                *g = (p - if class == label { 1.0 } else { 0.0 }) / n;
            }
        }
    }
    total
}

/// Backpropagates the gradient in the last delta into `grad` (flat, same layout as params).
fn backward(model: &Model, params: &[f32], work: &mut Workspace, n: usize, grad: &mut [f32]) {
    for layer in (0..model.num_layers()).rev() {
        let (input, output) = model.layer_shape(layer);
        let (weight_at, bias_at) = model.layer_offsets(layer);
        let (weight_grad, bias_grad) =
            grad[weight_at..bias_at + output].split_at_mut(input * output);
        let mut weight_grad = ArrayViewMut2::from_shape((output, input), weight_grad)
            .expect("layout matches the model");
        let delta = work.deltas[layer].slice(s![..n, ..]);
        let activation = work.activations[layer].slice(s![..n, ..]);
        general_mat_mul(1.0, &delta.t(), &activation, 0.0, &mut weight_grad);
        bias_grad.fill(0.0);
        for row in delta.rows() {
            bias_grad.iter_mut().zip(row).for_each(|(g, d)| *g += d);
        }
        if layer > 0 {
            let (weight, _) = weight_view(model, params, layer);
            let (below, above) = work.deltas.split_at_mut(layer);
            let mut previous = below[layer - 1].slice_mut(s![..n, ..]);
            general_mat_mul(1.0, &above[0].slice(s![..n, ..]), &weight, 0.0, &mut previous);
            // ReLU's derivative: the gradient passes where the activation was positive.
            previous.zip_mut_with(&work.activations[layer].slice(s![..n, ..]), |d, &a| {
                if a <= 0.0 {
                    *d = 0.0;
                }
            });
        }
    }
}

/// Checks that `data` fits `model`: its feature count and its labels.
fn check_data(model: &Model, data: &Dataset) -> Result<()> {
    if data.num_features() != model.num_features() {
        return Err(LearningError::FeatureCount {
            expected: model.num_features(),
            found: data.num_features(),
        });
    }
    match data.labels.iter().find(|&&label| label >= model.num_classes()) {
        Some(bad) => Err(LearningError::Invalid(format!(
            "label {bad} is outside the model's {} classes",
            model.num_classes()
        ))),
        None => Ok(()),
    }
}

/// Minibatch SGD over a model's flat parameters.
pub struct Trainer<'m> {
    model: &'m Model,
    config: TrainConfig,
    params: Vec<f32>,
    /// The global model FedProx pulls towards.
    anchor: Vec<f32>,
    velocity: Vec<f32>,
    grad: Vec<f32>,
    work: Workspace,
    rng: StdRng,
}

impl<'m> Trainer<'m> {
    /// Starts from `params`; FedProx (if on) anchors to the same vector.
    pub fn new(model: &'m Model, params: Vec<f32>, config: TrainConfig) -> Result<Self> {
        model.check_params(&params)?;
        config.check()?;
        Ok(Self {
            model,
            anchor: if config.prox_mu > 0.0 { params.clone() } else { Vec::new() },
            velocity: if config.momentum > 0.0 { vec![0.0; params.len()] } else { Vec::new() },
            grad: vec![0.0; params.len()],
            work: Workspace::new(model, config.batch_size),
            rng: StdRng::seed_from_u64(config.seed),
            params,
            config,
        })
    }

    pub fn params(&self) -> &[f32] {
        &self.params
    }

    pub fn into_params(self) -> Vec<f32> {
        self.params
    }

    /// One pass over `data` in shuffled minibatches; returns the mean training loss.
    pub fn epoch(&mut self, data: &Dataset) -> Result<f32> {
        check_data(self.model, data)?;
        let mut order: Vec<usize> = (0..data.len()).collect();
        order.shuffle(&mut self.rng);
        let mut labels = Vec::with_capacity(self.config.batch_size);
        let mut total_loss = 0.0f64;
        for batch in order.chunks(self.config.batch_size) {
            let n = batch.len();
            labels.clear();
            labels.extend(batch.iter().map(|&i| data.labels[i]));
            for (row, &index) in batch.iter().enumerate() {
                self.work.activations[0].row_mut(row).assign(&data.features.row(index));
            }
            forward(self.model, &self.params, &mut self.work, n);
            let layers = self.model.num_layers();
            let logits = self.work.activations[layers].slice(s![..n, ..]);
            let gradient = self.work.deltas[layers - 1].slice_mut(s![..n, ..]);
            total_loss += f64::from(softmax_loss(logits, &labels, Some(gradient)));
            backward(self.model, &self.params, &mut self.work, n, &mut self.grad);
            self.step();
        }
        Ok((total_loss / data.len().max(1) as f64) as f32)
    }

    /// One SGD step with weight decay, the FedProx pull and momentum.
    fn step(&mut self) {
        let TrainConfig { lr, momentum, weight_decay, prox_mu, .. } = self.config;
        for i in 0..self.params.len() {
            let w = self.params[i];
            let mut g = self.grad[i] + weight_decay * w;
            if prox_mu > 0.0 {
                g += prox_mu * (w - self.anchor[i]);
            }
            if momentum > 0.0 {
                self.velocity[i] = momentum * self.velocity[i] + g;
                g = self.velocity[i];
            }
            self.params[i] = w - lr * g;
        }
    }
}

/// Trains from `start` for `config.epochs` epochs.
pub fn train(
    model: &Model,
    start: &[f32],
    data: &Dataset,
    config: &TrainConfig,
) -> Result<TrainOutcome> {
    let mut trainer = Trainer::new(model, start.to_vec(), config.clone())?;
    let mut loss = 0.0;
    for _ in 0..config.epochs {
        loss = trainer.epoch(data)?;
    }
    let params = trainer.into_params();
    let delta = params.iter().zip(start).map(|(new, old)| new - old).collect();
    Ok(TrainOutcome { params, delta, samples: data.len(), loss })
}

/// Loss, accuracy, per-class accuracy and the confusion matrix of `params` on `data`.
pub fn evaluate(model: &Model, params: &[f32], data: &Dataset) -> Result<Evaluation> {
    model.check_params(params)?;
    check_data(model, data)?;
    const BATCH: usize = 256;
    let classes = model.num_classes();
    let mut work = Workspace::new(model, BATCH.min(data.len().max(1)));
    let mut confusion = vec![vec![0u64; classes]; classes];
    let mut total_loss = 0.0f64;
    let indices: Vec<usize> = (0..data.len()).collect();
    for batch in indices.chunks(BATCH) {
        let n = batch.len();
        let rows = data.features.select(Axis(0), batch);
        work.activations[0].slice_mut(s![..n, ..]).assign(&rows);
        forward(model, params, &mut work, n);
        let labels: Vec<usize> = batch.iter().map(|&i| data.labels[i]).collect();
        let logits = work.activations[model.num_layers()].slice(s![..n, ..]);
        total_loss += f64::from(softmax_loss(logits, &labels, None));
        for (row, &truth) in logits.rows().into_iter().zip(&labels) {
            let predicted = row
                .iter()
                .enumerate()
                .fold(
                    (0, f32::NEG_INFINITY),
                    |best, (c, &v)| if v > best.1 { (c, v) } else { best },
                )
                .0;
            confusion[truth][predicted] += 1;
        }
    }
    let correct: u64 = (0..classes).map(|c| confusion[c][c]).sum();
    let samples = data.len();
    let per_class_accuracy = confusion
        .iter()
        .enumerate()
        .map(|(c, row)| {
            let total: u64 = row.iter().sum();
            (total > 0).then(|| row[c] as f32 / total as f32)
        })
        .collect();
    Ok(Evaluation {
        samples,
        loss: (total_loss / samples.max(1) as f64) as f32,
        accuracy: correct as f32 / samples.max(1) as f32,
        per_class_accuracy,
        confusion,
    })
}
