//! How a job run is kept in RocksDB: its state and membership under `s` + job id and the last
//! round result it announced as aggregator under `a` + job id in the members table, each round
//! record under `r` + job id + round in the rounds table (with the round's model registry entry).

use super::JobRun;
use crate::registry::{self, ModelEntry};
use crate::store::{Store, StoreError, Table};
use fedmesh_federation::records::{RoundRecord, RunState};
use fedmesh_protocol::ids::{ContentHash, JobId, Round};
use fedmesh_protocol::message::AggregateReady;
use std::collections::BTreeMap;

fn state_key(job: &JobId) -> Vec<u8> {
    [b"s".as_slice(), &job.0.0].concat()
}

fn announced_key(job: &JobId) -> Vec<u8> {
    [b"a".as_slice(), &job.0.0].concat()
}

fn round_prefix(job: &JobId) -> Vec<u8> {
    [b"r".as_slice(), &job.0.0].concat()
}

fn round_key(job: &JobId, round: Round) -> Vec<u8> {
    [round_prefix(job).as_slice(), &round.to_be_bytes()].concat()
}

/// Saves the run's state and membership (one write).
pub fn save_state(store: &Store, run: &JobRun) -> Result<(), StoreError> {
    let mut batch = store.batch();
    batch.put(Table::Members, &state_key(&run.id), &run.state)?;
    batch.commit()
}

/// Saves one round's record and, once the round has its model, its model registry entry (one
/// write).
pub fn save_round(store: &Store, run: &JobRun, round: Round) -> Result<(), StoreError> {
    let Some(record) = run.rounds.get(&round) else { return Ok(()) };
    let mut batch = store.batch();
    batch.put(Table::Rounds, &round_key(&run.id, round), record)?;
    if let Some(model) = record.model {
        let (loss, accuracy, eval_samples) = record.weighted_metrics();
        let entry = ModelEntry {
            job: run.id,
            round,
            model,
            params: run.local.model.num_params() as u64,
            accuracy,
            loss,
            eval_samples,
            evaluations: record.evaluations.len(),
            closed_at_ms: record.closed_at_ms,
            weights_kept: true,
        };
        registry::record(store, &mut batch, &entry)?;
    }
    batch.commit()
}

/// Saves the run's state together with the record of the round it has just taken (one write:
/// a node killed in between must not hold a round's model without the round's record).
pub fn save_progress(store: &Store, run: &JobRun, round: Round) -> Result<(), StoreError> {
    let mut batch = store.batch();
    batch.put(Table::Members, &state_key(&run.id), &run.state)?;
    if let Some(record) = run.rounds.get(&round) {
        batch.put(Table::Rounds, &round_key(&run.id, round), record)?;
    }
    batch.commit()
}

/// Saves the last round result this node announced as its aggregator (one write).
pub fn save_announced(store: &Store, run: &JobRun) -> Result<(), StoreError> {
    let mut batch = store.batch();
    batch.put(Table::Members, &announced_key(&run.id), &run.announced)?;
    batch.commit()
}

/// The last round result this node announced in a job, if any.
pub fn load_announced(store: &Store, job: &JobId) -> Result<Option<AggregateReady>, StoreError> {
    Ok(store.get::<Option<AggregateReady>>(Table::Members, &announced_key(job))?.flatten())
}

/// Every stored run state; a record that cannot be read is skipped with a warning.
pub fn load_states(store: &Store) -> Vec<(JobId, RunState)> {
    match store.scan::<RunState>(Table::Members, b"s") {
        Ok(states) => states
            .into_iter()
            .filter_map(|(key, state)| {
                let bytes: [u8; 32] = key.get(1..33)?.try_into().ok()?;
                Some((JobId(ContentHash(bytes)), state))
            })
            .collect(),
        Err(error) => {
            tracing::warn!(%error, "cannot read the jobs this node took part in");
            Vec::new()
        }
    }
}

/// A job's stored round records.
pub fn load_rounds(store: &Store, job: &JobId) -> Result<BTreeMap<Round, RoundRecord>, StoreError> {
    Ok(store
        .scan::<RoundRecord>(Table::Rounds, &round_prefix(job))?
        .into_iter()
        .map(|(_, record)| (record.round, record))
        .collect())
}
