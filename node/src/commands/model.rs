//! `fedmesh model list` and `fedmesh model export`: the local node's model registry as a table,
//! and a job's current (or one round's) global model written as safetensors with the model's
//! tensor names, or as one `.npy` file per tensor.

use crate::cli::{ExportFormat, ModelCommand};
use anyhow::Context;
use fedmesh_admin_api::{AdminClient, ModelEntry, ModelExport};
use fedmesh_learning::external::{NpyData, npy_bytes, to_safetensors};
use std::collections::HashMap;
use std::path::Path;

pub fn run(command: ModelCommand) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match command {
        ModelCommand::List { job, json, api } => {
            let client = AdminClient::for_data_dir(&api.data_dir)?;
            let entries = runtime.block_on(client.models(job.as_deref()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
            } else {
                print_table(&entries);
            }
            Ok(())
        }
        ModelCommand::Export { job, round, out, format, api } => {
            let client = AdminClient::for_data_dir(&api.data_dir)?;
            let model = runtime.block_on(client.model(&job, round))?;
            match format {
                ExportFormat::Safetensors => write_safetensors(&model, &out)?,
                ExportFormat::Npy => write_npy(&model, &out)?,
            }
            eprintln!(
                "wrote the round {} model of job {} ({} parameters, {} tensors, accuracy {}) to {}",
                model.round,
                model.job,
                model.params.len(),
                model.layout.tensors.len(),
                model.accuracy.map_or_else(|| "unknown".to_owned(), |a| format!("{a:.4}")),
                out.display()
            );
            Ok(())
        }
    }
}

fn print_table(entries: &[ModelEntry]) {
    println!(
        "{:<14} {:>5}  {:<14} {:>9} {:>8} {:>8}  weights",
        "job", "round", "model", "params", "accuracy", "loss"
    );
    let figure = |value: Option<f64>| value.map_or_else(|| "-".to_owned(), |v| format!("{v:.4}"));
    for entry in entries {
        println!(
            "{:<14} {:>5}  {:<14} {:>9} {:>8} {:>8}  {}",
            &entry.job.to_string()[..12],
            entry.round,
            &entry.model.to_hex()[..12],
            entry.params,
            figure(entry.accuracy),
            figure(entry.loss),
            if entry.weights_kept { "kept" } else { "dropped (retention)" }
        );
    }
}

/// Writes the model's tensors, little-endian f32, under their layout names, with the job, round
/// and accuracy as metadata.
pub fn write_safetensors(model: &ModelExport, out: &Path) -> anyhow::Result<()> {
    let mut metadata = HashMap::from([
        ("job".to_owned(), model.job.clone()),
        ("round".to_owned(), model.round.to_string()),
    ]);
    if let Some(accuracy) = model.accuracy {
        metadata.insert("accuracy".to_owned(), accuracy.to_string());
    }
    let bytes = to_safetensors(&model.layout, &model.params, metadata)?;
    std::fs::write(out, bytes).with_context(|| format!("cannot write {}", out.display()))
}

/// Writes one `NAME.npy` per tensor into the directory `out` (created if missing).
pub fn write_npy(model: &ModelExport, out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    for slot in &model.layout.tensors {
        let values = model
            .params
            .get(slot.offset..slot.offset + slot.len())
            .with_context(|| format!("tensor {} lies outside the parameters", slot.name))?;
        if !fedmesh_protocol::spec::is_plain_tensor_name(&slot.name) {
            anyhow::bail!("tensor name {:?} is not a plain file name: not exported", slot.name);
        }
        let path = out.join(format!("{}.npy", slot.name));
        std::fs::write(&path, npy_bytes(&slot.shape, NpyData::F32(values)))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}
