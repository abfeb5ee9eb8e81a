//! Each member's local work: its share of the data, training on a round's base model and
//! evaluating a global model (the built-in learner on an embedded data set), or the bench
//! model's cheap deterministic deltas; and how long that work takes in simulated time.

use crate::config::Config;
use crate::network::{Index, mix};
use fedmesh_learning::{BenchModel, Dataset, Embedded, Init, Model, Partitioner, Scaler};
use fedmesh_learning::{TrainConfig, evaluate, init_layout, train};
use fedmesh_protocol::message::{EvalMetrics, TrainMetrics};
use fedmesh_protocol::model::ModelSpec;
use fedmesh_protocol::spec::JobSpec;

/// Share of the data set kept aside for evaluation.
const TEST_FRACTION: f32 = 0.2;
/// Simulated training time: a fixed start-up plus this much per sample.
const TRAIN_BASE_MS: f64 = 200.0;
const TRAIN_MS_PER_SAMPLE: f64 = 1.0;
/// Samples a bench member declares: between these.
const BENCH_SAMPLES: (u64, u64) = (100, 1_000);

/// Why the members' local work cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("the model cannot be built: {0}")]
    Model(#[from] fedmesh_learning::LearningError),
    #[error("the data set has {samples} training samples, fewer than the {members} members")]
    TooFewSamples { samples: usize, members: usize },
    #[error("the bench model's size {0} does not fit in memory")]
    BenchSize(u64),
}

/// A built-in model with every member's share of an embedded data set.
pub struct DataLearner {
    model: Model,
    train: Vec<Dataset>,
    test: Vec<Dataset>,
    /// The whole test split, to score the final model.
    all_test: Dataset,
    config: TrainConfig,
}

/// Who trains what.
pub enum Learner {
    Bench { model: BenchModel, seed: u64 },
    Data(Box<DataLearner>),
}

/// What a member's training produced (before any poisoning).
pub struct Trained {
    pub delta: Vec<f32>,
    pub samples: u64,
    pub metrics: TrainMetrics,
}

impl Learner {
    /// Sets up the job's model and, for a data model, deals the data set out among `members`.
    pub fn new(config: &Config, spec: &JobSpec) -> Result<Self, LocalError> {
        match &spec.model {
            ModelSpec::Bench { params } => {
                let params =
                    usize::try_from(*params).map_err(|_| LocalError::BenchSize(*params))?;
                Ok(Self::Bench { model: BenchModel { params }, seed: spec.seed })
            }
            other => DataLearner::new(other, config.dataset, config.members, spec)
                .map(|learner| Self::Data(Box::new(learner))),
        }
    }

    /// The job's first global model: the same seeded initialization every member makes.
    pub fn initial_params(&self, seed: u64) -> Vec<f32> {
        let layout = match self {
            Self::Bench { model, .. } => model.layout(),
            Self::Data(learner) => learner.model.layout(),
        };
        init_layout(&layout, Init::Auto, seed)
    }

    /// How many training samples `member` declares.
    pub fn samples(&self, member: Index) -> u64 {
        match self {
            Self::Bench { seed, .. } => {
                let (low, high) = BENCH_SAMPLES;
                low + mix(seed ^ mix(member as u64)) % (high - low + 1)
            }
            Self::Data(learner) => learner.train[member].len() as u64,
        }
    }

    /// How long `member`'s training of `round` takes: proportional to its samples, with a
    /// seeded jitter of up to 20% either way.
    pub fn train_ms(&self, member: Index, round: u64) -> u64 {
        let jitter = (mix(mix(member as u64) ^ round) % 401) as f64 / 1_000.0 + 0.8;
        ((TRAIN_BASE_MS + TRAIN_MS_PER_SAMPLE * self.samples(member) as f64) * jitter) as u64
    }

    /// How long evaluating a model takes on `member`.
    pub fn evaluate_ms(&self, member: Index) -> u64 {
        20 + self.samples(member) / 10
    }

    /// `member`'s training of `round` from `base`.
    pub fn train(&self, member: Index, round: u64, base: &[f32]) -> Result<Trained, String> {
        match self {
            Self::Bench { model, seed } => Ok(Trained {
                delta: model.delta(mix(seed ^ mix(member as u64) ^ mix(round << 20))),
                samples: self.samples(member),
                metrics: TrainMetrics { loss: 0.0, accuracy: None },
            }),
            Self::Data(learner) => learner.train(member, round, base),
        }
    }

    /// `member`'s evaluation of a global model: on its test share, or for a bench model the
    /// model's root mean square as its "loss".
    pub fn evaluate(&self, member: Index, params: &[f32]) -> EvalMetrics {
        match self {
            Self::Bench { .. } => EvalMetrics {
                loss: Some(BenchModel::rms(params)),
                accuracy: None,
                samples: self.samples(member),
            },
            Self::Data(learner) => learner.evaluate_on(&learner.test[member], params),
        }
    }

    /// A model's loss and accuracy on the whole test split (none for a bench model).
    pub fn score(&self, params: &[f32]) -> Option<EvalMetrics> {
        match self {
            Self::Bench { .. } => None,
            Self::Data(learner) => Some(learner.evaluate_on(&learner.all_test, params)),
        }
    }
}

impl DataLearner {
    fn new(
        spec_model: &ModelSpec,
        dataset: Embedded,
        members: usize,
        spec: &JobSpec,
    ) -> Result<Self, LocalError> {
        let data = fedmesh_learning::DataSource::Embedded(dataset).load(spec.classes.as_ref())?;
        let (mut train_split, mut test_split) = data.split(TEST_FRACTION, spec.seed)?;
        if train_split.len() < members {
            return Err(LocalError::TooFewSamples { samples: train_split.len(), members });
        }
        let scaler = Scaler::fit(dataset.preferred_scaling(), &train_split);
        scaler.apply(&mut train_split);
        scaler.apply(&mut test_split);
        let classes = data.num_classes.max(dataset.num_classes());
        let model = Model::from_spec(spec_model, data.num_features(), classes)?;
        let deal = |split: &Dataset, salt: u64| -> Result<Vec<Dataset>, LocalError> {
            let parts = Partitioner::Iid.partition(&split.labels, members, spec.seed ^ salt)?;
            Ok(parts.iter().map(|indices| split.select(indices)).collect())
        };
        let config = TrainConfig::for_job(spec);
        Ok(Self {
            train: deal(&train_split, 1)?,
            test: deal(&test_split, 2)?,
            all_test: test_split,
            model,
            config,
        })
    }

    fn train(&self, member: Index, round: u64, base: &[f32]) -> Result<Trained, String> {
        let config =
            self.config.for_round(round, mix(self.config.seed ^ mix(member as u64) ^ round));
        let outcome =
            train(&self.model, base, &self.train[member], &config).map_err(|e| e.to_string())?;
        Ok(Trained {
            delta: outcome.delta,
            samples: outcome.samples as u64,
            metrics: TrainMetrics { loss: outcome.loss, accuracy: None },
        })
    }

    fn evaluate_on(&self, data: &Dataset, params: &[f32]) -> EvalMetrics {
        if data.is_empty() {
            return EvalMetrics::default();
        }
        match evaluate(&self.model, params, data) {
            Ok(evaluation) => EvalMetrics {
                loss: Some(evaluation.loss).filter(|l| l.is_finite()),
                accuracy: Some(evaluation.accuracy),
                samples: evaluation.samples as u64,
            },
            Err(_) => EvalMetrics::default(),
        }
    }
}
