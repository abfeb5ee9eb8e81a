//! `testnet --flame DIR`: a Flame example directory (its schema, job, model and data specs) run
//! as fedmesh jobs, one per parallel experiment, with one node per data set id of its dataSpec
//! in that data set's group, on the testnet's own data set split among them.

use crate::scenario::Scenario;
use fedmesh_protocol::flame::{FlameExperiment, FlameJob, FlameOptions};
use fedmesh_protocol::identity::Identity;
use fedmesh_protocol::model::ModelSpec;
use std::path::Path;

/// A Flame job as scenarios, from `base` (the flags' run: its model, data set, seed and
/// binary); `rounds` overrides the job's own. Prints what fedmesh ignores of the job.
pub fn scenarios(
    dir: &Path,
    base: &Scenario,
    model: ModelSpec,
    rounds: Option<u64>,
) -> anyhow::Result<Vec<Scenario>> {
    // The owner is node0's key, which the testnet sets when it announces; a schema with a
    // coordinator role runs orchestrated, by a coordinator node that makes the job its own.
    let placeholder = Identity::from_seed([0; 32]).member_id();
    let options = FlameOptions {
        owner: placeholder,
        model,
        dataset: base.dataset.clone(),
        coordinator: Some(placeholder),
    };
    let flame = FlameJob::from_dir(dir, &options)?;
    for warning in &flame.warnings {
        eprintln!("flame: {}: {}", warning.field, warning.reason);
    }
    if let Some(role) = &flame.coordinator_role {
        eprintln!("flame: role `{role}` coordinates: a coordinator node orchestrates the job");
    }
    let base = Scenario {
        orchestrated: base.orchestrated || flame.coordinator_role.is_some(),
        ..base.clone()
    };
    let several = flame.experiments.len() > 1;
    flame.experiments.iter().map(|e| scenario(e, &base, rounds, several)).collect()
}

fn scenario(
    experiment: &FlameExperiment,
    base: &Scenario,
    rounds: Option<u64>,
    several: bool,
) -> anyhow::Result<Scenario> {
    let spec = &experiment.spec;
    let name =
        if several { format!("{}-{}", base.name, experiment.label) } else { base.name.clone() };
    let out = if several { base.out.join(&experiment.label) } else { base.out.clone() };
    let nodes = experiment.nodes.len();
    anyhow::ensure!(nodes > 0, "flame experiment {}: its dataSpec names no data set", name);
    Ok(Scenario {
        name,
        nodes,
        total_nodes: nodes,
        rounds: rounds.unwrap_or(spec.hyperparameters.rounds),
        groups: experiment.nodes.iter().map(|node| node.group.clone()).collect(),
        local_epochs: spec.hyperparameters.local_epochs,
        batch_size: spec.hyperparameters.batch_size,
        lr: spec.hyperparameters.lr,
        min_participants: spec.participation.min_participants as usize,
        base_spec: Some(serde_json::to_value(spec)?),
        out,
        ..base.clone()
    })
}
