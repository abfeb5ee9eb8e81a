//! The engine's side of the model registry for the admin API: listing every round's model,
//! exporting the current or one round's model with its layout and metrics, and storing a blob a
//! job owner ships (a job's initial weights).

use super::{Engine, EngineError};
use crate::registry;
use fedmesh_admin_api::{ModelEntry, ModelExport};
use fedmesh_protocol::ids::{ContentHash, JobId, Round};
use fedmesh_protocol::tensor::{TensorEncoding, decode_params};

impl Engine {
    /// The current model of a job this node is in, or the model of `round` from the registry.
    pub(super) fn model_export(
        &self,
        id: &str,
        round: Option<Round>,
    ) -> Result<ModelExport, EngineError> {
        let job = self.jobs.id_by_prefix(id)?;
        let run = self
            .job_run(&job)
            .ok_or_else(|| EngineError::NotFound(format!("this node is not in job {job}")))?;
        let (layout, current, completed) = run.model();
        let round = round.unwrap_or(completed);
        let entry = registry::entry(&self.store, &job, round)?;
        let params = match &entry {
            Some(entry) if round != completed => {
                self.stored_params(&job, entry, layout.num_params())?
            }
            None if round != completed => {
                return Err(EngineError::NotFound(format!(
                    "job {job} has no round {round} model here"
                )));
            }
            _ => current.to_vec(),
        };
        Ok(ModelExport {
            job: job.to_string(),
            round,
            model: entry.as_ref().map(|e| e.model.to_hex()),
            accuracy: entry.as_ref().and_then(|e| e.accuracy),
            loss: entry.as_ref().and_then(|e| e.loss),
            layout,
            params,
        })
    }

    /// A registry entry's weights, decoded.
    fn stored_params(
        &self,
        job: &JobId,
        entry: &ModelEntry,
        params: usize,
    ) -> Result<Vec<f32>, EngineError> {
        let bytes = self.store.blob(&entry.model)?.ok_or_else(|| {
            EngineError::NotFound(format!(
                "the round {} model of job {job} is no longer kept (model_retention_rounds)",
                entry.round
            ))
        })?;
        decode_params(&bytes, TensorEncoding::F32Le, params)
            .map_err(|e| EngineError::Invalid(format!("stored model {}: {e}", entry.model)))
    }

    /// Registry entries of the job `prefix` names, or of every job.
    pub(super) fn model_entries(
        &self,
        prefix: Option<&str>,
    ) -> Result<Vec<ModelEntry>, EngineError> {
        let job = prefix.map(|prefix| self.jobs.id_by_prefix(prefix)).transpose()?;
        Ok(registry::entries(&self.store, job.as_ref())?)
    }

    /// Stores `bytes` as a blob; peers can then fetch it by its hash.
    pub(super) fn put_blob(&self, bytes: &[u8]) -> Result<ContentHash, EngineError> {
        let mut batch = self.store.batch();
        let hash = batch.put_blob(bytes)?;
        batch.commit()?;
        Ok(hash)
    }
}
