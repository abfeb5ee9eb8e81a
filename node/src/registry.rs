//! The model registry: every global model of every round of the jobs this node takes part in, by
//! content hash, with its job, round and metrics, in the store's `models` column family (job id ++
//! big-endian round); and the retention that drops old rounds' weights but keeps their record.

use crate::store::{Store, StoreBatch, StoreError, Table};
use fedmesh_protocol::ids::{ContentHash, JobId, Round};
use serde::{Deserialize, Serialize};

/// One round's global model of one job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelEntry {
    pub job: JobId,
    pub round: Round,
    /// The model blob's hash (f32 little-endian parameters).
    pub model: ContentHash,
    pub params: u64,
    /// Test-size-weighted over the members' evaluations this node has received.
    pub accuracy: Option<f64>,
    pub loss: Option<f64>,
    pub eval_samples: u64,
    pub evaluations: usize,
    pub closed_at_ms: Option<u64>,
    /// Whether the weights are still stored (retention drops old rounds' weights).
    pub weights_kept: bool,
}

fn job_prefix(job: &JobId) -> Vec<u8> {
    job.0.0.to_vec()
}

fn key(job: &JobId, round: Round) -> Vec<u8> {
    [job_prefix(job).as_slice(), &round.to_be_bytes()].concat()
}

/// Adds (or updates) an entry to `batch`, with the store's retention applied to the entry's job:
/// each older round's weights are deleted in the same write.
pub fn record(
    store: &Store,
    batch: &mut StoreBatch<'_>,
    entry: &ModelEntry,
) -> Result<(), StoreError> {
    // A re-recorded round (a late evaluation) keeps the weights only if they are still there.
    let entry = ModelEntry { weights_kept: store.has_blob(&entry.model)?, ..entry.clone() };
    batch.put(Table::Models, &key(&entry.job, entry.round), &entry)?;
    let keep_rounds = store.model_retention();
    if keep_rounds == 0 {
        return Ok(());
    }
    let cutoff = entry.round.saturating_sub(keep_rounds);
    for mut old in entries(store, Some(&entry.job))? {
        if old.round > cutoff || !old.weights_kept || old.model == entry.model {
            continue;
        }
        batch.delete_blob(&old.model)?;
        old.weights_kept = false;
        batch.put(Table::Models, &key(&old.job, old.round), &old)?;
    }
    Ok(())
}

/// Every entry (of one job, or of all), by job and round.
pub fn entries(store: &Store, job: Option<&JobId>) -> Result<Vec<ModelEntry>, StoreError> {
    let prefix = job.map(job_prefix).unwrap_or_default();
    Ok(store.scan::<ModelEntry>(Table::Models, &prefix)?.into_iter().map(|(_, e)| e).collect())
}

/// One round's entry.
pub fn entry(store: &Store, job: &JobId, round: Round) -> Result<Option<ModelEntry>, StoreError> {
    store.get(Table::Models, &key(job, round))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry_for(store: &Store, job: JobId, round: Round) -> ModelEntry {
        let mut batch = store.batch();
        let model =
            batch.put_blob(format!("weights of job {job} round {round}").as_bytes()).unwrap();
        batch.commit().unwrap();
        ModelEntry {
            job,
            round,
            model,
            params: 4,
            accuracy: Some(0.5),
            loss: Some(1.0),
            eval_samples: 10,
            evaluations: 1,
            closed_at_ms: None,
            weights_kept: true,
        }
    }

    #[test]
    fn retention_drops_old_weights_and_keeps_their_records() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap().with_model_retention(2);
        let save = |entry: &ModelEntry| {
            let mut batch = store.batch();
            record(&store, &mut batch, entry).unwrap();
            batch.commit().unwrap();
        };
        let (job, other) = (JobId(ContentHash([1; 32])), JobId(ContentHash([2; 32])));
        let kept_elsewhere = entry_for(&store, other, 1);
        save(&kept_elsewhere);
        for round in 1..=5 {
            save(&entry_for(&store, job, round));
        }
        let all = entries(&store, Some(&job)).unwrap();
        assert_eq!(all.iter().map(|e| e.round).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
        let kept: Vec<Round> = all.iter().filter(|e| e.weights_kept).map(|e| e.round).collect();
        assert_eq!(kept, [4, 5]);
        for e in &all {
            assert_eq!(store.has_blob(&e.model).unwrap(), e.weights_kept, "round {}", e.round);
        }
        assert!(store.has_blob(&kept_elsewhere.model).unwrap());
        assert_eq!(entries(&store, None).unwrap().len(), 6);
        assert_eq!(entry(&store, &job, 3).unwrap().unwrap().round, 3);
    }
}
