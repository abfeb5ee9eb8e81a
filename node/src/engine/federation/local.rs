//! A member's own side of a job: its data set (split, scaled), the job's model, and local training
//! and evaluation, run off the engine's task.

use fedmesh_learning::{DataSource, Dataset, Embedded, Init, Model, Scaler, TrainConfig};
use fedmesh_protocol::spec::JobSpec;
use std::time::Instant;

/// Share of a member's data kept aside to evaluate global models.
const TEST_FRACTION: f32 = 0.2;

/// A member's data for one job and the model the job trains.
pub struct LocalData {
    pub model: Model,
    pub train: Dataset,
    pub test: Dataset,
    pub config: TrainConfig,
}

/// What one round of local training produced.
pub struct Trained {
    pub delta: Vec<f32>,
    pub samples: usize,
    pub loss: f32,
    pub seconds: f64,
}

impl LocalData {
    /// Loads the node's file for the job's data set (`source` is the node's setting), splits it
    /// with the job's seed, scales both splits with the training split's statistics, and builds
    /// the job's model. The class count is the data set's when it is a known one, so that every
    /// member builds the same model from a partition that lacks some classes.
    pub fn load(spec: &JobSpec, source: &str) -> anyhow::Result<Self> {
        let source = DataSource::parse(source, None)?;
        let data = source.load()?;
        let (mut train, mut test) = data.split(TEST_FRACTION, spec.seed)?;
        // A share of a known data set is scaled as that data set prefers, so that every member
        // scales alike.
        let known = Embedded::from_name(&spec.dataset);
        let scaling = known.map_or_else(|| source.preferred_scaling(), Embedded::preferred_scaling);
        let scaler = Scaler::fit(scaling, &train);
        scaler.apply(&mut train);
        scaler.apply(&mut test);
        let classes = data.num_classes.max(known.map_or(0, Embedded::num_classes));
        let model = Model::from_spec(&spec.model, data.num_features(), classes)?;
        let h = &spec.hyperparameters;
        let config = TrainConfig {
            epochs: h.local_epochs as usize,
            batch_size: h.batch_size as usize,
            lr: h.lr,
            momentum: h.momentum,
            weight_decay: h.weight_decay,
            prox_mu: h.fedprox_mu,
            seed: spec.seed,
        };
        Ok(Self { model, train, test, config })
    }

    /// The job's first global model: every member computes the same one from the job's seed.
    pub fn initial_params(&self, seed: u64) -> Vec<f32> {
        self.model.init(Init::Auto, seed)
    }

    /// Trains `epochs` local epochs from `base`; the shuffling seed varies with the round.
    pub fn train(&self, base: &[f32], round: u64) -> anyhow::Result<Trained> {
        let started = Instant::now();
        let config = TrainConfig {
            seed: self.config.seed ^ round.wrapping_mul(0x9E37),
            ..self.config.clone()
        };
        let outcome = fedmesh_learning::train(&self.model, base, &self.train, &config)?;
        Ok(Trained {
            delta: outcome.delta,
            samples: outcome.samples,
            loss: outcome.loss,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Loss and accuracy of `params` on the local test split.
    pub fn evaluate(&self, params: &[f32]) -> anyhow::Result<fedmesh_learning::Evaluation> {
        Ok(fedmesh_learning::evaluate(&self.model, params, &self.test)?)
    }
}
