//! A member's own side of a job: its data set (split, scaled), the job's model, and local training
//! and evaluation, run off the engine's task: by the built-in learner, or by the node's external
//! trainer when the job's model is `external`, or as a cheap deterministic delta for a `bench`
//! model.

use crate::external::{ExternalBridge, TrainerSettings};
use fedmesh_learning::{
    BenchModel, DataSource, Dataset, Embedded, Evaluation, Init, Model, Scaler, TrainConfig,
};
use fedmesh_protocol::ids::JobId;
use fedmesh_protocol::model::{ExternalInit, ModelSpec, TensorLayout};
use fedmesh_protocol::spec::JobSpec;
use std::time::Instant;

/// Share of a member's data kept aside to evaluate global models.
const TEST_FRACTION: f32 = 0.2;

/// Who trains the job's model on this node.
pub enum LocalModel {
    BuiltIn(Model),
    External(Box<ExternalBridge>),
    Bench(BenchModel),
}

impl LocalModel {
    pub fn layout(&self) -> TensorLayout {
        match self {
            Self::BuiltIn(model) => model.layout(),
            Self::External(bridge) => bridge.layout().clone(),
            Self::Bench(bench) => bench.layout(),
        }
    }

    pub fn num_params(&self) -> usize {
        match self {
            Self::BuiltIn(model) => model.num_params(),
            Self::External(bridge) => bridge.layout().num_params(),
            Self::Bench(bench) => bench.params,
        }
    }
}

/// A member's data for one job and the model the job trains.
pub struct LocalData {
    pub model: LocalModel,
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
    /// the job's model (or, for an external model, its bridge, which gets the splits as `.npy`).
    /// The class count is the job's `classes` when the spec names them (labels are then mapped to
    /// the job's classes), else the data set's when it is a known one, so that every member
    /// builds the same model from a partition that lacks some classes.
    pub fn load(
        id: JobId,
        spec: &JobSpec,
        source: &str,
        trainers: &TrainerSettings,
    ) -> anyhow::Result<Self> {
        let parsed = DataSource::from_setting(source)?;
        let data = parsed.load(spec.classes.as_ref())?;
        let (mut train, mut test) = data.split(TEST_FRACTION, spec.seed)?;
        // A share of a known data set is scaled as that data set prefers, so that every member
        // scales alike.
        let known = Embedded::from_name(&spec.dataset);
        let scaling = known.map_or_else(|| parsed.preferred_scaling(), Embedded::preferred_scaling);
        let scaler = Scaler::fit(scaling, &train);
        scaler.apply(&mut train);
        scaler.apply(&mut test);
        let model = match &spec.model {
            ModelSpec::External(external) => {
                let mut bridge =
                    ExternalBridge::new(trainers, external.layout(), id, spec, source)?;
                bridge.write_splits(&train, &test)?;
                LocalModel::External(Box::new(bridge))
            }
            ModelSpec::Bench { params } => {
                LocalModel::Bench(BenchModel { params: usize::try_from(*params)? })
            }
            builtin => {
                let classes = data.num_classes.max(known.map_or(0, Embedded::num_classes));
                LocalModel::BuiltIn(Model::from_spec(builtin, data.num_features(), classes)?)
            }
        };
        let config = TrainConfig::for_job(spec);
        Ok(Self { model, train, test, config })
    }

    /// The job's first global model: every member computes the same one from the job's seed, or
    /// (an external model's `init.safetensors`) reads it from the blob the job names.
    pub fn initial_params(&self, spec: &JobSpec, blob: Option<&[u8]>) -> anyhow::Result<Vec<f32>> {
        let layout = self.model.layout();
        let ModelSpec::External(external) = &spec.model else {
            return Ok(fedmesh_learning::init_layout(&layout, Init::Auto, spec.seed));
        };
        match (&external.init, blob) {
            (ExternalInit::Seed(seed), _) => {
                Ok(fedmesh_learning::init_layout(&layout, Init::Auto, *seed))
            }
            (ExternalInit::Safetensors(_), Some(bytes)) => {
                Ok(fedmesh_learning::external::from_safetensors(&layout, bytes)?)
            }
            (ExternalInit::Safetensors(hash), None) => {
                anyhow::bail!("the job's initial weights {hash} are not in this node's store")
            }
        }
    }

    /// Trains from `base` (local epochs, or one run of the external trainer); the shuffling seed
    /// varies with the round.
    pub fn train(&self, base: &[f32], round: u64) -> anyhow::Result<Trained> {
        let started = Instant::now();
        let (params, samples, loss) = match &self.model {
            LocalModel::BuiltIn(model) => {
                let config =
                    self.config.for_round(round, self.config.seed ^ round.wrapping_mul(0x9E37));
                let outcome = fedmesh_learning::train(model, base, &self.train, &config)?;
                (outcome.params, outcome.samples, outcome.loss)
            }
            LocalModel::External(bridge) => {
                let trained = bridge.train(base, round)?;
                (trained.params, trained.metrics.samples as usize, trained.metrics.loss)
            }
            LocalModel::Bench(bench) => {
                // Already a delta: no copy of the model is made.
                let seed = self.config.seed ^ round.wrapping_mul(0x9E37) ^ self.train.len() as u64;
                let delta = bench.delta(seed);
                let seconds = started.elapsed().as_secs_f64();
                return Ok(Trained { delta, samples: self.train.len(), loss: 0.0, seconds });
            }
        };
        let delta = params.iter().zip(base).map(|(new, old)| new - old).collect();
        Ok(Trained { delta, samples, loss, seconds: started.elapsed().as_secs_f64() })
    }

    /// Loss and accuracy of `params` (the global model of `round`) on the local test split (an
    /// external evaluation runs a process; called on the blocking pool).
    pub fn evaluate(&self, params: &[f32], round: u64) -> anyhow::Result<Evaluation> {
        match &self.model {
            LocalModel::BuiltIn(model) => {
                Ok(fedmesh_learning::evaluate(model, params, &self.test)?)
            }
            LocalModel::External(bridge) => {
                let metrics = bridge.evaluate(params, round)?;
                Ok(Evaluation {
                    samples: metrics.samples as usize,
                    loss: metrics.loss,
                    accuracy: metrics.accuracy.unwrap_or_default(),
                    per_class_accuracy: Vec::new(),
                    confusion: Vec::new(),
                })
            }
            LocalModel::Bench(_) => Ok(Evaluation {
                samples: self.test.len(),
                loss: BenchModel::rms(params),
                accuracy: 0.0,
                per_class_accuracy: Vec::new(),
                confusion: Vec::new(),
            }),
        }
    }

    /// The external trainer's last failure, if the job has one and it failed.
    pub fn trainer_failure(&self) -> Option<String> {
        match &self.model {
            LocalModel::BuiltIn(_) | LocalModel::Bench(_) => None,
            LocalModel::External(bridge) => bridge.last_failure(),
        }
    }
}
