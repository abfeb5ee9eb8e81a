//! `fedmesh model export`: a job's global model from the local node, written as safetensors with
//! the model's tensor names.

use crate::admin::AdminClient;
use crate::cli::ModelCommand;
use crate::engine::ModelExport;
use anyhow::{Context, bail};
use safetensors::tensor::{Dtype, TensorView};
use std::path::Path;

pub fn run(command: ModelCommand) -> anyhow::Result<()> {
    let ModelCommand::Export { job, out, api } = command;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let model: ModelExport = runtime.block_on(async {
        let client = AdminClient::for_data_dir(&api.data_dir)?;
        client.get(&format!("/v1/jobs/{job}/model")).await
    })?;
    write_safetensors(&model, &out)?;
    eprintln!(
        "wrote the round {} model of job {} ({} parameters, {} tensors) to {}",
        model.round,
        model.job,
        model.params.len(),
        model.layout.tensors.len(),
        out.display()
    );
    Ok(())
}

/// Writes the model's tensors, little-endian f32, under their layout names.
pub fn write_safetensors(model: &ModelExport, out: &Path) -> anyhow::Result<()> {
    if model.layout.num_params() != model.params.len() {
        bail!(
            "the node sent {} parameters for a layout of {}",
            model.params.len(),
            model.layout.num_params()
        );
    }
    let bytes: Vec<Vec<u8>> = model
        .layout
        .tensors
        .iter()
        .map(|slot| {
            let values = model
                .params
                .get(slot.offset..slot.offset + slot.len())
                .with_context(|| format!("tensor {} lies outside the parameters", slot.name))?;
            Ok(values.iter().flat_map(|v| v.to_le_bytes()).collect())
        })
        .collect::<anyhow::Result<_>>()?;
    let views = model
        .layout
        .tensors
        .iter()
        .zip(&bytes)
        .map(|(slot, data)| {
            let view = TensorView::new(Dtype::F32, slot.shape.clone(), data)
                .with_context(|| format!("tensor {}", slot.name))?;
            Ok((slot.name.clone(), view))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let metadata = std::collections::HashMap::from([
        ("job".to_owned(), model.job.clone()),
        ("round".to_owned(), model.round.to_string()),
    ]);
    safetensors::serialize_to_file(views, Some(metadata), out)
        .with_context(|| format!("cannot write {}", out.display()))
}
