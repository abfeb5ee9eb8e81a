//! The model registry: every global model of every round of the jobs this node takes part in, by
//! content hash, with its job, round and metrics, in the store's `models` column family (job id ++
//! big-endian round); and the retention that drops old rounds' weights but keeps their record (and
//! a blob another entry still uses).

use crate::store::{Store, StoreBatch, StoreError, Table};
use fedmesh_admin_api::ModelEntry;
use fedmesh_protocol::ids::{ContentHash, JobId, Round};
use std::collections::HashSet;

fn job_prefix(job: &JobId) -> Vec<u8> {
    job.0.0.to_vec()
}

fn key(job: &JobId, round: Round) -> Vec<u8> {
    [job_prefix(job).as_slice(), &round.to_be_bytes()].concat()
}

/// Adds (or updates) an entry to `batch`, with the store's retention applied to the entry's job:
/// each older round's weights are dropped in the same write, their blob deleted unless another
/// entry still keeps it (a round that left the model as it was, or another job with the same
/// weights: blobs are stored once per content hash).
pub fn record(
    store: &Store,
    batch: &mut StoreBatch<'_>,
    entry: &ModelEntry,
) -> Result<(), StoreError> {
    // A re-recorded round (a late evaluation) keeps the weights only if they are still there.
    let entry = ModelEntry { weights_kept: store.has_blob(&entry.model)?, ..entry.clone() };
    batch.put(Table::Models, &key(&entry.job, entry.round), &entry)?;
    batch.keep_blob(entry.model);
    let keep_rounds = store.model_retention();
    if keep_rounds == 0 {
        return Ok(());
    }
    let cutoff = entry.round.saturating_sub(keep_rounds);
    let dropped = |e: &ModelEntry| e.job == entry.job && e.round <= cutoff;
    let all = entries(store, None)?;
    let in_use: HashSet<ContentHash> =
        all.iter().filter(|e| e.weights_kept && !dropped(e)).map(|e| e.model).collect();
    for mut old in all.into_iter().filter(|e| dropped(e) && e.weights_kept) {
        if !in_use.contains(&old.model) {
            batch.delete_blob(&old.model)?;
        }
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

    /// Stores `weights` (as a round's model is, before its record).
    fn stored(store: &Store, weights: &[u8]) -> ContentHash {
        let mut batch = store.batch();
        let model = batch.put_blob(weights).unwrap();
        batch.commit().unwrap();
        model
    }

    /// `job`'s round `round`, whose model is `weights`, recorded with retention applied.
    fn save(store: &Store, job: JobId, round: Round, weights: &[u8]) -> ModelEntry {
        let model = stored(store, weights);
        let mut batch = store.batch();
        let entry = ModelEntry { round, model, ..entry_for(store, job, round) };
        record(store, &mut batch, &entry).unwrap();
        batch.commit().unwrap();
        entry
    }

    #[test]
    fn retention_keeps_a_blob_another_job_or_round_still_uses() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap().with_model_retention(2);
        let (job, other) = (JobId(ContentHash([1; 32])), JobId(ContentHash([2; 32])));
        let shared = save(&store, job, 1, b"the initial weights, unchanged").model;
        assert_eq!(save(&store, other, 1, b"the initial weights, unchanged").model, shared);
        // `job`'s round 2 left the model as it was; rounds 3 to 5 moved it.
        save(&store, job, 2, b"the initial weights, unchanged");
        for round in 3..=5 {
            save(&store, job, round, format!("weights of round {round}").as_bytes());
        }
        let kept: Vec<Round> = entries(&store, Some(&job))
            .unwrap()
            .iter()
            .filter(|e| e.weights_kept)
            .map(|e| e.round)
            .collect();
        assert_eq!(kept, [4, 5], "the job's own old rounds are dropped");
        assert!(store.has_blob(&shared).unwrap(), "the other job's model is still stored");
        let other_entry = entry(&store, &other, 1).unwrap().unwrap();
        assert!(other_entry.weights_kept);
        assert!(store.blob(&shared).unwrap().is_some());
    }

    #[test]
    fn a_blob_dropped_and_kept_in_one_write_stays() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap().with_model_retention(1);
        let job = JobId(ContentHash([1; 32]));
        let first = save(&store, job, 1, b"weights that come back").model;
        save(&store, job, 2, b"other weights");
        // Rounds 3 and 4 recorded in one write: 3 drops round 2, 4 (same weights as round 1)
        // keeps round 1's blob alive although round 3's record had it dropped.
        let mut batch = store.batch();
        for (round, weights) in [(3, b"weights that come back".as_slice()), (4, b"new weights")] {
            let model = stored(&store, weights);
            let entry = ModelEntry { round, model, ..entry_for(&store, job, round) };
            record(&store, &mut batch, &entry).unwrap();
        }
        batch.commit().unwrap();
        assert!(store.has_blob(&first).unwrap(), "round 3's weights are still stored");
    }
}
