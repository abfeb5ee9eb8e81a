//! The centralized baseline behind `fedmesh train-local`: load, scale, split, train and evaluate
//! after every epoch.

use crate::data::DataSource;
use crate::error::Result;
use crate::model::{Init, Model};
use crate::scale::{Scaler, Scaling};
use crate::train::{Evaluation, TrainConfig, Trainer, evaluate};
use fedmesh_protocol::model::ModelSpec;
use serde::Serialize;
use std::time::Instant;

/// Everything a baseline run needs.
#[derive(Debug, Clone)]
pub struct BaselineConfig {
    pub source: DataSource,
    pub model: ModelSpec,
    /// `None`: the data set's preferred scaling.
    pub scaling: Option<Scaling>,
    pub test_fraction: f32,
    pub train: TrainConfig,
}

/// One epoch's figures.
#[derive(Debug, Clone, Serialize)]
pub struct EpochReport {
    pub epoch: usize,
    pub train_loss: f32,
    pub test_loss: f32,
    pub test_accuracy: f32,
    pub seconds: f64,
}

/// The whole run's figures.
#[derive(Debug, Clone, Serialize)]
pub struct BaselineReport {
    /// The data set as the user named it: an embedded name or its file(s).
    pub dataset: String,
    /// A CSV file's label column, when one was named.
    pub label_column: Option<String>,
    /// Class i's name is `classes[i]` (labels that were names, in sorted order); empty when the
    /// labels were class numbers.
    pub classes: Vec<String>,
    pub model: ModelSpec,
    pub train_samples: usize,
    pub test_samples: usize,
    pub parameters: usize,
    pub epochs: usize,
    pub test_accuracy: f32,
    pub test_loss: f32,
    pub seconds: f64,
    pub per_epoch: Vec<EpochReport>,
    pub evaluation: Evaluation,
}

/// Runs the baseline, calling `on_epoch` after each epoch.
pub fn run_baseline(
    config: &BaselineConfig,
    mut on_epoch: impl FnMut(&EpochReport),
) -> Result<BaselineReport> {
    let started = Instant::now();
    let data = config.source.load(None)?;
    let (mut train, mut test) = data.split(config.test_fraction, config.train.seed)?;
    let scaler =
        Scaler::fit(config.scaling.unwrap_or_else(|| config.source.preferred_scaling()), &train);
    scaler.apply(&mut train);
    scaler.apply(&mut test);
    let model = Model::from_spec(&config.model, data.num_features(), data.num_classes)?;
    let params = model.init(Init::Auto, config.train.seed);
    let mut trainer = Trainer::new(&model, params, config.train.clone())?;
    let mut per_epoch = Vec::with_capacity(config.train.epochs);
    let mut evaluation = evaluate(&model, trainer.params(), &test)?;
    for epoch in 1..=config.train.epochs {
        let epoch_start = Instant::now();
        let train_loss = trainer.epoch(&train)?;
        evaluation = evaluate(&model, trainer.params(), &test)?;
        let report = EpochReport {
            epoch,
            train_loss,
            test_loss: evaluation.loss,
            test_accuracy: evaluation.accuracy,
            seconds: epoch_start.elapsed().as_secs_f64(),
        };
        on_epoch(&report);
        per_epoch.push(report);
    }
    Ok(BaselineReport {
        dataset: config.source.name(),
        label_column: config.source.label_column().map(str::to_owned),
        classes: data.classes.clone(),
        model: config.model.clone(),
        train_samples: train.len(),
        test_samples: test.len(),
        parameters: model.num_params(),
        epochs: config.train.epochs,
        test_accuracy: evaluation.accuracy,
        test_loss: evaluation.loss,
        seconds: started.elapsed().as_secs_f64(),
        per_epoch,
        evaluation,
    })
}
