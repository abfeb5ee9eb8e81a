//! Flame jobs in fedmesh: a Flame job's four documents (`schema.json`, `job.json`,
//! `modelSpec.json`, `dataSpec.json`) converted into fedmesh job specs, one per parallel
//! experiment, with the node layout a testnet needs (a node per data set, in its group) and a
//! warning for each field fedmesh cannot honour.
//!
//! Flame's data sets themselves are not fedmesh's (a node maps the spec's `dataset` to its own
//! data); the caller chooses the model.

mod documents;
mod training;

pub use documents::{DATA_SPEC_FILE, JOB_FILE, MODEL_SPEC_FILE, SCHEMA_FILE};
pub use training::{Synchrony, Training};

use crate::ids::MemberId;
use crate::model::ModelSpec;
use crate::spec::{
    DEFAULT_ROUND_DEADLINE_SECS, DeltaEncoding, JobSpec, MAX_ROUND_DEADLINE_SECS, Participation,
    Privacy, Quorum, SpecErrors,
};
use crate::strategy::{AggregationRule, StrategySpec};
use crate::tag::{Experiment, FieldWarning, TagSchema, TagSpec};
use documents::{JobFile, RoleDatasetGroups, parse, parse_schema};
use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

/// Why a Flame job cannot be converted.
#[derive(Debug, thiserror::Error)]
pub enum FlameError {
    #[error("{}: {source}", .path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}", .problems.iter().map(|p| format!("{file}: {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid { file: String, problems: Vec<String> },
    #[error("the job spec made for experiment `{experiment}` is not valid:\n{errors}")]
    Spec { experiment: String, errors: SpecErrors },
}

/// The text of a Flame job's four documents.
#[derive(Debug, Clone, Copy)]
pub struct FlameDocuments<'a> {
    pub schema: &'a str,
    pub job: &'a str,
    pub model_spec: &'a str,
    pub data_spec: &'a str,
}

/// What the conversion needs that Flame's documents do not say.
#[derive(Debug, Clone, PartialEq)]
pub struct FlameOptions {
    /// The member whose key signs the jobs.
    pub owner: MemberId,
    pub model: ModelSpec,
    /// The data set name each node maps to its own data.
    pub dataset: String,
    /// The member taking the schema's coordinator role, if it has one.
    pub coordinator: Option<MemberId>,
}

/// One node of a Flame job: a data set of `dataSpec.json`, in its group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlameNode {
    pub dataset_id: String,
    /// Its `datasetGroups` label: the group label the node joins with.
    pub group: String,
}

/// One experiment of a Flame job, run as a fedmesh job of its own.
#[derive(Debug, Clone, PartialEq)]
pub struct FlameExperiment {
    /// The experiment's own group labels (`us`), or the schema's name when it is the only one.
    pub label: String,
    pub spec: JobSpec,
    /// The nodes that join it, by group, in `dataSpec.json`'s order within a group.
    pub nodes: Vec<FlameNode>,
}

/// A Flame job in fedmesh's terms.
#[derive(Debug, Clone, PartialEq)]
pub struct FlameJob {
    /// One per parallel experiment (one for most schemas).
    pub experiments: Vec<FlameExperiment>,
    pub synchrony: Synchrony,
    /// The schema's coordinator role: its jobs are orchestrated by `FlameOptions::coordinator`.
    pub coordinator_role: Option<String>,
    /// Every field fedmesh ignores or honours only in part, each naming it.
    pub warnings: Vec<FieldWarning>,
}

impl FlameJob {
    /// Reads `job.json` in `dir`, the data and model specs it names (or `dataSpec.json` and
    /// `modelSpec.json`) and `schema.json`, and converts them.
    pub fn from_dir(dir: &Path, options: &FlameOptions) -> Result<Self, FlameError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| FlameError::Read { path, source })
        };
        let job = read(JOB_FILE)?;
        let paths: JobFile = parse(JOB_FILE, &job, &mut Vec::new())?;
        let data_spec = read(&relative_path(paths.data_spec_path.as_deref(), DATA_SPEC_FILE)?)?;
        let model_spec = read(&relative_path(paths.model_spec_path.as_deref(), MODEL_SPEC_FILE)?)?;
        let schema = read(SCHEMA_FILE)?;
        let documents = FlameDocuments {
            schema: &schema,
            job: &job,
            model_spec: &model_spec,
            data_spec: &data_spec,
        };
        Self::from_documents(&documents, options)
    }

    /// Converts a Flame job's documents.
    pub fn from_documents(
        documents: &FlameDocuments,
        options: &FlameOptions,
    ) -> Result<Self, FlameError> {
        let mut warnings = Vec::new();
        let job: JobFile = parse(JOB_FILE, documents.job, &mut warnings)?;
        let model = parse(MODEL_SPEC_FILE, documents.model_spec, &mut warnings)?;
        let data: Vec<RoleDatasetGroups> =
            parse(DATA_SPEC_FILE, documents.data_spec, &mut warnings)?;
        let schema = parse_schema(documents.schema, &mut warnings)?;
        warnings.extend(schema.warnings().into_iter().map(|w| w.under(SCHEMA_FILE)));
        warnings.extend(job_warnings(&job));
        let training = Training::read(&model, &mut warnings)?;
        let nodes = nodes(&schema, &data)?;
        let coordinator_role = schema.coordinator_role().map(str::to_owned);
        if let (Some(role), None) = (&coordinator_role, options.coordinator) {
            warnings.push(FieldWarning::new(
                format!("{SCHEMA_FILE}: roles[{role}]"),
                "no coordinator member given (FlameOptions::coordinator): the job self-organizes",
            ));
        }
        let experiments = schema.parallel_experiments();
        let several = experiments.len() > 1;
        let mut converted = Vec::new();
        for experiment in experiments {
            let mine: Vec<FlameNode> =
                nodes.iter().filter(|n| experiment.groups.contains(&n.group)).cloned().collect();
            if mine.is_empty() {
                let field = format!("{SCHEMA_FILE}: experiment `{}`", experiment.label);
                warnings
                    .push(FieldWarning::ignored(field, "no data set of dataSpec.json is in it"));
                continue;
            }
            let draft = Draft { job: &job, training: &training, options, several };
            let coordinated = coordinator_role.is_some();
            converted.push(draft.experiment(experiment, mine, coordinated, &mut warnings)?);
        }
        Ok(Self {
            experiments: converted,
            synchrony: training.synchrony,
            coordinator_role,
            warnings,
        })
    }
}

/// A path `job.json` names, which must stay inside the job's directory.
fn relative_path(named: Option<&str>, default: &str) -> Result<String, FlameError> {
    let path = named.unwrap_or(default);
    let inside =
        Path::new(path).components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if inside && !path.is_empty() {
        Ok(path.to_owned())
    } else {
        Err(FlameError::Invalid {
            file: JOB_FILE.to_owned(),
            problems: vec![format!("{path:?}: must be a path inside the job's directory")],
        })
    }
}

/// The job-wide fields fedmesh has no use for.
fn job_warnings(job: &JobFile) -> Vec<FieldWarning> {
    let at = |field: &str| format!("{JOB_FILE}: {field}");
    let mut warnings = Vec::new();
    let mut ignore = |field: &str, value: Option<String>, why: &str| {
        if let Some(value) = value {
            warnings.push(FieldWarning::ignored(at(field), format!("{value:?}: {why}")));
        }
    };
    ignore("id", job.id.clone(), "a fedmesh job's id is the hash of its signed spec");
    ignore("userId", job.user_id.clone(), "a fedmesh job's owner is FlameOptions::owner");
    ignore(
        "designId",
        job.design_id.clone(),
        "fedmesh keeps no designs: the schema comes with the job",
    );
    let revision = |r: Option<i64>| r.map(|r| r.to_string());
    ignore("schemaRevision", revision(job.schema_revision), "fedmesh keeps no designs");
    ignore("codeRevision", revision(job.code_revision), "fedmesh trains with its own code");
    ignore("priority", job.priority.clone(), "fedmesh jobs have no priorities");
    let backend = job.backend.clone().filter(|b| b != "p2p");
    ignore("backend", backend, "fedmesh carries every channel over its libp2p mesh");
    warnings
}

/// The nodes of `dataSpec.json`: one per data set id of the schema's data-consuming role, each in
/// a group one of the role's associations serves.
fn nodes(schema: &TagSchema, data: &[RoleDatasetGroups]) -> Result<Vec<FlameNode>, FlameError> {
    let invalid = |problem: String| FlameError::Invalid {
        file: DATA_SPEC_FILE.to_owned(),
        problems: vec![problem],
    };
    let mut nodes = Vec::new();
    let mut seen = BTreeSet::new();
    for (index, entry) in data.iter().enumerate() {
        let role =
            schema.roles.iter().find(|role| role.name == entry.role && role.is_data_consumer);
        let Some(role) = role else {
            return Err(invalid(format!(
                "[{index}].role: `{}` is not a data-consuming role of the schema",
                entry.role
            )));
        };
        for (group, ids) in &entry.dataset_groups {
            let served = role.group_association.is_empty()
                || role.group_association.iter().any(|a| a.values().any(|label| label == group));
            if !served {
                let problem = format!(
                    "[{index}].datasetGroups.{group}: no groupAssociation of role `{}` has this group",
                    role.name
                );
                return Err(invalid(problem));
            }
            if ids.is_empty() {
                return Err(invalid(format!("[{index}].datasetGroups.{group}: lists no data set")));
            }
            for id in ids {
                if !seen.insert(id.as_str()) {
                    return Err(invalid(format!(
                        "[{index}].datasetGroups.{group}: data set {id} is listed twice"
                    )));
                }
                nodes.push(FlameNode { dataset_id: id.clone(), group: group.clone() });
            }
        }
    }
    if nodes.is_empty() {
        return Err(invalid("lists no data set".to_owned()));
    }
    Ok(nodes)
}

/// What every experiment's spec is made from.
struct Draft<'a> {
    job: &'a JobFile,
    training: &'a Training,
    options: &'a FlameOptions,
    several: bool,
}

impl Draft<'_> {
    fn experiment(
        &self,
        experiment: Experiment,
        nodes: Vec<FlameNode>,
        coordinated: bool,
        warnings: &mut Vec<FieldWarning>,
    ) -> Result<FlameExperiment, FlameError> {
        let name = if self.several {
            format!("{} ({})", self.job.name, experiment.label)
        } else {
            self.job.name.clone()
        };
        let (mode, asynchronous) = self.training.synchrony.mode();
        let spec = JobSpec {
            name,
            owner: self.options.owner,
            tag: TagSpec::Schema(experiment.schema),
            model: self.options.model.clone(),
            dataset: self.options.dataset.clone(),
            hyperparameters: self.training.hyperparameters.clone(),
            strategy: StrategySpec {
                rule: AggregationRule::FedAvg,
                server: self.training.server.clone(),
                clip_norm: None,
                noise_multiplier: None,
            },
            participation: self.participation(&experiment.label, &nodes, warnings),
            quorum: Quorum::default(),
            round_deadline_secs: self.round_deadline(),
            coordinator: self.options.coordinator.filter(|_| coordinated),
            coordinator_fallback_secs: None,
            seed: 0,
            delta_encoding: DeltaEncoding::default(),
            classes: None,
            privacy: Privacy::default(),
            verification: None,
            mode,
            asynchronous,
        };
        let label = experiment.label;
        spec.validate().map_err(|errors| FlameError::Spec { experiment: label.clone(), errors })?;
        Ok(FlameExperiment { label, spec, nodes })
    }

    /// Every node takes part from the first round, as Flame deploys a worker per data set; the
    /// random selector's `k` per group caps each round at `k` times the groups.
    fn participation(
        &self,
        label: &str,
        nodes: &[FlameNode],
        warnings: &mut Vec<FieldWarning>,
    ) -> Participation {
        let groups: BTreeSet<&str> = nodes.iter().map(|n| n.group.as_str()).collect();
        let max = self.training.per_group.map(|k| k.saturating_mul(groups.len() as u32));
        if let (Some(max), true) = (max, groups.len() > 1) {
            warnings.push(FieldWarning::new(
                format!("{MODEL_SPEC_FILE}: selector.kwargs.k"),
                format!(
                    "Flame draws k per aggregator; fedmesh draws {max} trainers per round across \
                     the {} groups of experiment `{label}`",
                    groups.len()
                ),
            ));
        }
        let count = u32::try_from(nodes.len()).unwrap_or(u32::MAX);
        Participation {
            min_participants: max.map_or(count, |max| count.min(max)),
            max_participants: max,
            ..Participation::default()
        }
    }

    /// Flame stops a job after `maxRunTime` seconds: each round gets its share as its deadline.
    fn round_deadline(&self) -> u64 {
        let Some(total) = self.job.max_run_time else { return DEFAULT_ROUND_DEADLINE_SECS };
        let rounds = self.training.hyperparameters.rounds.max(1);
        (total / rounds).clamp(1, MAX_ROUND_DEADLINE_SECS)
    }
}

#[cfg(test)]
mod tests;
