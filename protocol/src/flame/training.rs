//! What `modelSpec.json` asks of training: its hyperparameters, its optimizer and its selector, in
//! fedmesh's terms, with a warning for each one fedmesh cannot honour.

use super::FlameError;
use super::documents::{MODEL_SPEC_FILE, ModelSpecFile, Plugin};
use crate::spec::{AsyncOptions, Hyperparameters, Mode};
use crate::strategy::{AdaptiveParams, ServerOptimizerSpec};
use crate::tag::FieldWarning;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// Whether a Flame job runs synchronous rounds or asynchronous FL (FedBuff).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synchrony {
    Synchronous,
    /// FedBuff: the aggregator folds in updates as they come, a new model every
    /// `aggregation_goal` of them (`hyperparameters.aggGoal`), with `concurrency` trainers at
    /// work at once (the fedbuff selector's `c`).
    Asynchronous {
        aggregation_goal: Option<u32>,
        concurrency: Option<u32>,
    },
}

impl Synchrony {
    /// The job spec's mode and FedBuff settings: a version every `aggregation_goal` updates
    /// (at most `concurrency`, so that one can complete), `concurrency` trainers a version.
    pub fn mode(self) -> (Mode, Option<AsyncOptions>) {
        let Self::Asynchronous { aggregation_goal, concurrency } = self else {
            return (Mode::Sync, None);
        };
        let defaults = AsyncOptions::default();
        let goal = aggregation_goal.unwrap_or(defaults.buffer).max(1);
        let buffer = concurrency.map_or(goal, |c| goal.min(c.max(1)));
        let options = AsyncOptions { buffer, concurrency, ..defaults };
        (Mode::Async, Some(options))
    }
}

/// Training as `modelSpec.json` states it.
#[derive(Debug, Clone, PartialEq)]
pub struct Training {
    pub hyperparameters: Hyperparameters,
    pub server: Option<ServerOptimizerSpec>,
    /// The random selector's `k`: trainers chosen per aggregator and round.
    pub per_group: Option<u32>,
    pub synchrony: Synchrony,
}

/// Flame's defaults for the hyperparameters a model spec leaves out.
const FLAME_ROUNDS: u64 = 1;
const FLAME_EPOCHS: u32 = 1;
const FLAME_BATCH_SIZE: u32 = 16;
const FEDBUFF: &str = "fedbuff";

impl Training {
    pub fn read(
        model: &ModelSpecFile,
        warnings: &mut Vec<FieldWarning>,
    ) -> Result<Self, FlameError> {
        let mut hyperparameters = model.hyperparameters.clone();
        let mut training = Self {
            hyperparameters: Hyperparameters {
                rounds: take(&mut hyperparameters, "rounds")?.unwrap_or(FLAME_ROUNDS),
                local_epochs: take(&mut hyperparameters, "epochs")?.unwrap_or(FLAME_EPOCHS),
                batch_size: take(&mut hyperparameters, "batchSize")?.unwrap_or(FLAME_BATCH_SIZE),
                ..Hyperparameters::default()
            },
            server: None,
            per_group: None,
            synchrony: Synchrony::Synchronous,
        };
        let defaults = &mut training.hyperparameters;
        defaults.lr = take(&mut hyperparameters, "learningRate")?.unwrap_or(defaults.lr);
        defaults.weight_decay =
            take(&mut hyperparameters, "weightDecay")?.unwrap_or(defaults.weight_decay);
        let aggregation_goal = take(&mut hyperparameters, "aggGoal")?;
        training.read_optimizer(model.optimizer.as_ref(), warnings)?;
        let concurrency = training.read_selector(model.selector.as_ref(), warnings)?;
        let fedbuff = [&model.optimizer, &model.selector]
            .iter()
            .any(|plugin| plugin.as_ref().and_then(|p| p.sort.as_deref()) == Some(FEDBUFF));
        if fedbuff {
            training.synchrony = Synchrony::Asynchronous { aggregation_goal, concurrency };
        } else if aggregation_goal.is_some() {
            let why = "an aggregation goal is FedBuff's (asynchronous FL, a \"fedbuff\" optimizer \
                       or selector); these rounds are synchronous";
            warnings.push(FieldWarning::ignored(at("hyperparameters.aggGoal"), why));
        }
        for key in hyperparameters.keys() {
            let why = match key.as_str() {
                "concurrency" => "it configures Flame's coordinator of asynchronous FL",
                _ => "not a hyperparameter fedmesh has",
            };
            warnings.push(FieldWarning::ignored(at(&format!("hyperparameters.{key}")), why));
        }
        model_warnings(model, warnings);
        Ok(training)
    }

    fn read_optimizer(
        &mut self,
        optimizer: Option<&Plugin>,
        warnings: &mut Vec<FieldWarning>,
    ) -> Result<(), FlameError> {
        let Some(optimizer) = optimizer else { return Ok(()) };
        let mut kwargs = optimizer.kwargs.clone();
        let sort = optimizer.sort.as_deref().unwrap_or("fedavg");
        match sort {
            "fedavg" | FEDBUFF => {}
            "fedadam" | "fedyogi" | "fedadagrad" => {
                let params = adaptive_params(&mut kwargs)?;
                self.server = Some(match sort {
                    "fedadam" => ServerOptimizerSpec::FedAdam(params),
                    "fedyogi" => ServerOptimizerSpec::FedYogi(params),
                    _ => ServerOptimizerSpec::FedAdagrad(params),
                });
            }
            "fedprox" => {
                let mu = take(&mut kwargs, "mu")?;
                self.hyperparameters.fedprox_mu =
                    mu.ok_or_else(|| invalid("optimizer.kwargs.mu", "fedprox needs mu"))?;
            }
            "feddyn" | "scaffold" | "fedgft" => {
                let why = format!(
                    "\"{sort}\" is not an optimizer fedmesh has: it aggregates with FedAvg"
                );
                warnings.push(FieldWarning::ignored(at("optimizer.sort"), why));
            }
            other => {
                let message = format!(
                    "unknown optimizer \"{other}\", expected one of: fedavg, fedadagrad, fedadam, \
                     fedyogi, fedbuff, fedprox, feddyn, scaffold, fedgft"
                );
                return Err(invalid("optimizer.sort", &message));
            }
        }
        unused_kwargs(&kwargs, "optimizer", warnings);
        Ok(())
    }

    /// Reads the selector; returns the fedbuff selector's concurrency.
    fn read_selector(
        &mut self,
        selector: Option<&Plugin>,
        warnings: &mut Vec<FieldWarning>,
    ) -> Result<Option<u32>, FlameError> {
        let Some(selector) = selector else { return Ok(None) };
        let mut kwargs = selector.kwargs.clone();
        let mut concurrency = None;
        match selector.sort.as_deref().unwrap_or("default") {
            "default" => {}
            "random" => {
                let k: i64 = take(&mut kwargs, "k")?
                    .ok_or_else(|| invalid("selector.kwargs.k", "the random selector needs k"))?;
                // Flame's random selector takes a negative k as 1.
                self.per_group = Some(u32::try_from(k).unwrap_or(1).max(1));
            }
            FEDBUFF => concurrency = take(&mut kwargs, "c")?,
            "oort" => {
                let why = "Oort is not a selector fedmesh has: every trainer is selected";
                warnings.push(FieldWarning::ignored(at("selector.sort"), why));
            }
            other => {
                let message = format!(
                    "unknown selector \"{other}\", expected one of: default, random, fedbuff, oort"
                );
                return Err(invalid("selector.sort", &message));
            }
        }
        unused_kwargs(&kwargs, "selector", warnings);
        Ok(concurrency)
    }
}

/// FedOpt's arguments as Flame names them, fedmesh's defaults (Flame's too) for those left out.
fn adaptive_params(kwargs: &mut Map<String, Value>) -> Result<AdaptiveParams, FlameError> {
    let defaults: AdaptiveParams = serde_json::from_value(Value::Object(Map::new()))
        .map_err(|error| invalid("optimizer.kwargs", &error.to_string()))?;
    Ok(AdaptiveParams {
        eta: take(kwargs, "eta")?.unwrap_or(defaults.eta),
        beta1: take(kwargs, "beta_1")?.unwrap_or(defaults.beta1),
        beta2: take(kwargs, "beta_2")?.unwrap_or(defaults.beta2),
        tau: take(kwargs, "tau")?.unwrap_or(defaults.tau),
    })
}

fn model_warnings(model: &ModelSpecFile, warnings: &mut Vec<FieldWarning>) {
    if let Some(base) = model.base_model.as_ref().filter(|base| !base.name.is_empty()) {
        let why = format!(
            "\"{}\" version {}: fedmesh starts from the model its caller chose, initialized from \
             the job's seed",
            base.name, base.version
        );
        warnings.push(FieldWarning::ignored(at("baseModel"), why));
    }
    if !model.dependencies.is_empty() {
        let why = format!(
            "{}: fedmesh installs no Python packages (an external trainer brings its own)",
            model.dependencies.join(", ")
        );
        warnings.push(FieldWarning::ignored(at("dependencies"), why));
    }
    if let Some(registry) = &model.registry {
        let why = format!(
            "\"{}\" {}: fedmesh keeps every round's model in its members' own stores",
            registry.sort, registry.uri
        );
        warnings.push(FieldWarning::ignored(at("registry"), why));
    }
}

fn unused_kwargs(kwargs: &Map<String, Value>, plugin: &str, warnings: &mut Vec<FieldWarning>) {
    for key in kwargs.keys() {
        let field = at(&format!("{plugin}.kwargs.{key}"));
        warnings.push(FieldWarning::ignored(field, "not an argument fedmesh has for it"));
    }
}

/// Removes `key` from `map` and parses it.
fn take<T: DeserializeOwned>(
    map: &mut Map<String, Value>,
    key: &str,
) -> Result<Option<T>, FlameError> {
    let Some(value) = map.remove(key) else { return Ok(None) };
    serde_json::from_value(value).map(Some).map_err(|error| invalid(key, &error.to_string()))
}

fn invalid(field: &str, message: &str) -> FlameError {
    FlameError::Invalid {
        file: MODEL_SPEC_FILE.to_owned(),
        problems: vec![format!("{field}: {message}")],
    }
}

fn at(field: &str) -> String {
    format!("{MODEL_SPEC_FILE}: {field}")
}
