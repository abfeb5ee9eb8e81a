//! The external-trainer bridge: a job whose model is `external` is trained and evaluated by the
//! commands this node's operator configured (never by anything a job names). Each call writes the
//! global weights as safetensors into the job's work directory, runs the command there with the
//! documented `FEDMESH_*` environment and a timeout, and reads back and checks the updated weights
//! and the metrics JSON. A failure keeps the trainer's stderr tail for the log and the API.

mod process;

pub use process::TrainerError;

use fedmesh_learning::Dataset;
use fedmesh_learning::external::{
    NpyData, TrainerMetrics, from_safetensors, npy_bytes, to_safetensors,
};
use fedmesh_protocol::ids::{JobId, Round};
use fedmesh_protocol::model::TensorLayout;
use fedmesh_protocol::spec::JobSpec;
use process::{Finished, Run};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// The node's external-trainer settings (from node.toml).
#[derive(Debug, Clone)]
pub struct TrainerSettings {
    /// The training command, e.g. `["python3", "train.py"]`; empty: no external jobs.
    pub trainer: Vec<String>,
    /// The evaluation command; empty: the trainer, with `FEDMESH_MODE=evaluate`.
    pub evaluator: Vec<String>,
    pub timeout: Duration,
    /// Under which each job gets a work directory.
    pub root: PathBuf,
}

/// What a trainer is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Train,
    Evaluate,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Train => "train",
            Mode::Evaluate => "evaluate",
        }
    }
}

/// A trainer's result: the updated weights (in layout order) and what it reported.
pub struct TrainedWeights {
    pub params: Vec<f32>,
    pub metrics: TrainerMetrics,
}

/// One job's bridge to the node's external trainer.
pub struct ExternalBridge {
    settings: TrainerSettings,
    layout: TensorLayout,
    job: JobId,
    dir: PathBuf,
    /// The node's `[datasets]` entry for the job's data set, as configured.
    data_source: String,
    /// The node's own split of that data set as `.npy` files, when it could load it.
    data_dir: Option<PathBuf>,
    /// The job's hyperparameters and seed as JSON.
    hyperparameters: String,
    /// The last failure of each mode (train, evaluate), for the API.
    failures: Mutex<[Option<String>; 2]>,
    /// Held from a run's start until its output is read: a mode's work directory holds one run's
    /// files at a time (a second training of the same job would clear the first one's output).
    runs: [Mutex<()>; 2],
}

impl ExternalBridge {
    /// The bridge for job `job` with `layout`; its work directory is created when first used.
    pub fn new(
        settings: &TrainerSettings,
        layout: TensorLayout,
        job: JobId,
        spec: &JobSpec,
        data_source: &str,
    ) -> Result<Self, TrainerError> {
        if settings.trainer.is_empty() {
            return Err(TrainerError::NotConfigured);
        }
        let mut hyperparameters = serde_json::to_value(&spec.hyperparameters).unwrap_or_default();
        if let Some(object) = hyperparameters.as_object_mut() {
            object.insert("seed".to_owned(), spec.seed.into());
        }
        Ok(Self {
            settings: settings.clone(),
            layout,
            dir: settings.root.join(job.to_string()),
            job,
            data_source: data_source.to_owned(),
            data_dir: None,
            hyperparameters: hyperparameters.to_string(),
            failures: Mutex::new([None, None]),
            runs: [Mutex::new(()), Mutex::new(())],
        })
    }

    pub fn layout(&self) -> &TensorLayout {
        &self.layout
    }

    /// Writes the node's training and test splits (scaled) as `train_x.npy`, `train_y.npy`,
    /// `test_x.npy` and `test_y.npy` for the trainer (`FEDMESH_DATA_DIR`).
    pub fn write_splits(&mut self, train: &Dataset, test: &Dataset) -> Result<(), TrainerError> {
        let dir = self.dir.join("data");
        create_dir(&dir)?;
        for (name, data) in [("train", train), ("test", test)] {
            let features = data.features.as_standard_layout();
            let values = features.as_slice().unwrap_or_default();
            let shape = [data.len(), data.num_features()];
            write_file(
                &dir.join(format!("{name}_x.npy")),
                &npy_bytes(&shape, NpyData::F32(values)),
            )?;
            let labels: Vec<i64> = data.labels.iter().map(|&l| l as i64).collect();
            let bytes = npy_bytes(&[labels.len()], NpyData::I64(&labels));
            write_file(&dir.join(format!("{name}_y.npy")), &bytes)?;
        }
        self.data_dir = Some(dir);
        Ok(())
    }

    /// Trains from `base` for `round`: the trainer's weights, checked against the layout, and its
    /// metrics (at least one sample).
    pub fn train(&self, base: &[f32], round: Round) -> Result<TrainedWeights, TrainerError> {
        let _run = self.runs[Mode::Train as usize].lock().unwrap_or_else(|p| p.into_inner());
        let result = self.invoke(Mode::Train, base, round).and_then(|(finished, dir)| {
            let bytes = std::fs::read(dir.join("output.safetensors"))
                .map_err(|e| finished.bad_output(format!("no output.safetensors ({e})")))?;
            let params =
                from_safetensors(&self.layout, &bytes).map_err(|e| finished.bad_output(e))?;
            let metrics = read_metrics(&finished, &dir)?;
            if metrics.samples == 0 {
                return Err(finished.bad_output("metrics: samples must be at least 1"));
            }
            Ok(TrainedWeights { params, metrics })
        });
        self.remember(Mode::Train, round, result)
    }

    /// Evaluates `params` (the global model of `round`) on the trainer's test data.
    pub fn evaluate(&self, params: &[f32], round: Round) -> Result<TrainerMetrics, TrainerError> {
        let _run = self.runs[Mode::Evaluate as usize].lock().unwrap_or_else(|p| p.into_inner());
        let result = self.invoke(Mode::Evaluate, params, round).and_then(|(finished, dir)| {
            let metrics = read_metrics(&finished, &dir)?;
            if metrics.accuracy.is_none() {
                return Err(finished.bad_output("metrics: an evaluation must report accuracy"));
            }
            Ok(metrics)
        });
        self.remember(Mode::Evaluate, round, result)
    }

    /// The last failure of training and of evaluation, each with its round, as the API shows it.
    pub fn last_failure(&self) -> Option<String> {
        let failures = self.failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let text: Vec<&str> = failures.iter().flatten().map(String::as_str).collect();
        (!text.is_empty()).then(|| text.join("\n"))
    }

    fn remember<T>(
        &self,
        mode: Mode,
        round: Round,
        result: Result<T, TrainerError>,
    ) -> Result<T, TrainerError> {
        if let Err(error) = &result {
            tracing::warn!(job = %self.job, round, mode = mode.name(), %error, "the external trainer failed; this node skips its part");
            let mut failures =
                self.failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            failures[mode as usize] = Some(format!("round {round} ({}): {error}", mode.name()));
        }
        result
    }

    /// Writes the weights, clears old outputs and runs the mode's command in its directory.
    fn invoke(
        &self,
        mode: Mode,
        weights: &[f32],
        round: Round,
    ) -> Result<(Finished, PathBuf), TrainerError> {
        let dir = self.dir.join(mode.name());
        create_dir(&dir)?;
        for stale in ["output.safetensors", "metrics.json"] {
            let path = dir.join(stale);
            if path.exists() {
                std::fs::remove_file(&path)
                    .map_err(|source| TrainerError::Files { path, source })?;
            }
        }
        let metadata = HashMap::from([
            ("job".to_owned(), self.job.to_string()),
            ("round".to_owned(), round.to_string()),
        ]);
        let input =
            to_safetensors(&self.layout, weights, metadata).map_err(|e| TrainerError::Files {
                path: dir.join("input.safetensors"),
                source: std::io::Error::other(e.to_string()),
            })?;
        write_file(&dir.join("input.safetensors"), &input)?;
        let command = match mode {
            Mode::Evaluate if !self.settings.evaluator.is_empty() => &self.settings.evaluator,
            _ => &self.settings.trainer,
        };
        let env = self.environment(mode, round, &dir);
        let run = Run { command, env, dir: &dir, timeout: self.settings.timeout };
        Ok((run.execute()?, dir))
    }

    /// The documented environment (README, "Bring your own trainer").
    fn environment(&self, mode: Mode, round: Round, dir: &Path) -> Vec<(&'static str, String)> {
        let path = |name: &str| dir.join(name).display().to_string();
        let mut env = vec![
            ("FEDMESH_MODE", mode.name().to_owned()),
            ("FEDMESH_JOB_ID", self.job.to_string()),
            ("FEDMESH_ROUND", round.to_string()),
            ("FEDMESH_INPUT_WEIGHTS", path("input.safetensors")),
            ("FEDMESH_OUTPUT_WEIGHTS", path("output.safetensors")),
            ("FEDMESH_METRICS", path("metrics.json")),
            ("FEDMESH_DATA", self.data_source.clone()),
            ("FEDMESH_HYPERPARAMETERS", self.hyperparameters.clone()),
            ("FEDMESH_WORK_DIR", dir.display().to_string()),
        ];
        if let Some(data_dir) = &self.data_dir {
            env.push(("FEDMESH_DATA_DIR", data_dir.display().to_string()));
        }
        env
    }
}

fn read_metrics(finished: &Finished, dir: &Path) -> Result<TrainerMetrics, TrainerError> {
    let bytes = std::fs::read(dir.join("metrics.json"))
        .map_err(|e| finished.bad_output(format!("no metrics.json ({e})")))?;
    TrainerMetrics::parse(&bytes).map_err(|e| finished.bad_output(e))
}

fn create_dir(dir: &Path) -> Result<(), TrainerError> {
    crate::owner_only::create_dir(dir)
        .map_err(|source| TrainerError::Files { path: dir.to_owned(), source })
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), TrainerError> {
    crate::owner_only::write(path, bytes)
        .map_err(|source| TrainerError::Files { path: path.to_owned(), source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedmesh_protocol::model::TensorSpec;

    fn bridge(dir: &Path, script: &str) -> ExternalBridge {
        let settings = TrainerSettings {
            trainer: vec!["sh".into(), "-c".into(), script.into()],
            evaluator: Vec::new(),
            timeout: Duration::from_secs(10),
            root: dir.to_owned(),
        };
        let layout = TensorLayout::packed([TensorSpec { name: "w".into(), shape: vec![2, 3] }]);
        let spec: JobSpec = serde_json::from_value(serde_json::json!({
            "name": "t",
            "owner": fedmesh_protocol::identity::Identity::from_seed([1; 32]).member_id(),
            "model": "softmax", "dataset": "d", "seed": 9,
        }))
        .unwrap();
        ExternalBridge::new(
            &settings,
            layout,
            JobId(fedmesh_protocol::ids::ContentHash([3; 32])),
            &spec,
            "d",
        )
        .unwrap()
    }

    const COPY: &str = "test \"$FEDMESH_MODE\" = train && cp \"$FEDMESH_INPUT_WEIGHTS\" \"$FEDMESH_OUTPUT_WEIGHTS\"; \
        echo \"{\\\"samples\\\": 4, \\\"loss\\\": 0.5, \\\"accuracy\\\": 0.25}\" > \"$FEDMESH_METRICS\"; \
        echo \"$FEDMESH_HYPERPARAMETERS\" >&2";

    #[test]
    fn a_trainer_that_copies_its_input_gives_back_the_same_weights() {
        let dir = tempfile::tempdir().unwrap();
        let bridge = bridge(dir.path(), COPY);
        let base = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let trained = bridge.train(&base, 1).unwrap();
        assert_eq!(trained.params, base);
        assert_eq!(trained.metrics.samples, 4);
        assert_eq!(bridge.evaluate(&base, 1).unwrap().accuracy, Some(0.25));
        assert!(bridge.last_failure().is_none());
        let stderr = std::fs::read_to_string(bridge.dir.join("train/stderr.log")).unwrap();
        assert!(stderr.contains("\"seed\":9") && stderr.contains("\"lr\""), "{stderr}");
    }

    #[test]
    fn outputs_of_an_earlier_round_are_never_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let good = bridge(dir.path(), COPY);
        good.train(&[0.0; 6], 1).unwrap();
        let lazy = bridge(dir.path(), "true");
        let error = lazy.train(&[0.0; 6], 2).err().unwrap().to_string();
        assert!(error.contains("no output.safetensors"), "{error}");
        let failure = lazy.last_failure().unwrap();
        assert!(failure.starts_with("round 2 (train): "), "{failure}");
    }

    #[test]
    fn trainings_of_one_job_at_the_same_time_each_read_their_own_output() {
        let dir = tempfile::tempdir().unwrap();
        let slow_copy = format!("sleep 0.2; {COPY}");
        let bridge = bridge(dir.path(), &slow_copy);
        std::thread::scope(|scope| {
            let runs: Vec<_> = (0..3)
                .map(|round| {
                    let bridge = &bridge;
                    scope.spawn(move || bridge.train(&[round as f32; 6], round))
                })
                .collect();
            for (round, run) in runs.into_iter().enumerate() {
                let trained = run.join().unwrap().unwrap();
                assert_eq!(trained.params, [round as f32; 6]);
            }
        });
    }
}
