//! How a job run is kept in RocksDB: its state and membership under `s` + job id and the last
//! round result it announced as aggregator under `a` + job id in the members table, each round
//! record under `r` + job id + round in the rounds table (with the round's model registry entry).

use crate::registry;
use crate::store::{Store, StoreError, Table};
use fedmesh_admin_api::ModelEntry;
use fedmesh_federation::member::Snapshot;
use fedmesh_federation::membership::Membership;
use fedmesh_federation::records::{RoundRecord, RunState, RunStatus};
use fedmesh_protocol::ids::{ContentHash, JobId, MemberId, Round};
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

/// The round records and announced result a run last persisted.
#[derive(Debug, Default)]
pub struct Persisted {
    rounds: BTreeMap<Round, RoundRecord>,
    announced: Option<AggregateReady>,
}

impl Persisted {
    pub fn of(rounds: &BTreeMap<Round, RoundRecord>, announced: &Option<AggregateReady>) -> Self {
        Self { rounds: rounds.clone(), announced: announced.clone() }
    }
}

/// Persists a machine's snapshot in one write: its state and membership, the round records that
/// changed since the last one (with each round's model registry entry once it has a model), and
/// the last result it announced if that changed. A node killed in between never holds a round's
/// model without the round's record.
pub fn save_snapshot(
    store: &Store,
    job: &JobId,
    params: usize,
    snapshot: Snapshot,
    persisted: &mut Persisted,
) -> Result<(), StoreError> {
    let mut batch = store.batch();
    batch.put(Table::Members, &state_key(job), &snapshot.state)?;
    let changed: Vec<RoundRecord> = snapshot
        .rounds
        .into_iter()
        .filter(|record| persisted.rounds.get(&record.round) != Some(record))
        .collect();
    for record in &changed {
        batch.put(Table::Rounds, &round_key(job, record.round), record)?;
        if let Some(model) = record.model {
            let (loss, accuracy, eval_samples) = record.weighted_metrics();
            let entry = ModelEntry {
                job: *job,
                round: record.round,
                model,
                params: params as u64,
                accuracy,
                loss,
                eval_samples,
                evaluations: record.evaluations.len(),
                closed_at_ms: record.closed_at_ms,
                weights_kept: true,
            };
            registry::record(store, &mut batch, &entry)?;
        }
    }
    let announced_changed = persisted.announced != snapshot.announced;
    if announced_changed {
        batch.put(Table::Members, &announced_key(job), &snapshot.announced)?;
    }
    batch.commit()?;
    persisted.rounds.extend(changed.into_iter().map(|record| (record.round, record)));
    if announced_changed {
        persisted.announced = snapshot.announced;
    }
    Ok(())
}

/// The last round result this node announced in a job, if any (as an earlier build wrote it
/// too).
pub fn load_announced(store: &Store, job: &JobId) -> Result<Option<AggregateReady>, StoreError> {
    let key = announced_key(job);
    let announced =
        store.get_upgrading::<Option<AggregateReady>, AnnouncedBefore>(Table::Members, &key)?;
    Ok(announced.flatten())
}

/// A round result as builds before selectors and server optimizers wrote it (without the
/// aggregator's feedback and the optimizer state): read, and kept with neither.
#[derive(serde::Deserialize)]
struct ResultBeforeFeedback {
    job: JobId,
    round: Round,
    base_model: ContentHash,
    model: ContentHash,
    contributions: Vec<fedmesh_protocol::message::Contribution>,
    metrics: fedmesh_protocol::message::EvalMetrics,
    members: Vec<MemberId>,
    vetted: Vec<u8>,
    sent_at_ms: u64,
}

/// What an earlier build kept as the last result it announced.
#[derive(serde::Deserialize)]
#[serde(transparent)]
struct AnnouncedBefore(Option<ResultBeforeFeedback>);

impl From<AnnouncedBefore> for Option<AggregateReady> {
    fn from(old: AnnouncedBefore) -> Self {
        old.0.map(AggregateReady::from)
    }
}

impl From<ResultBeforeFeedback> for AggregateReady {
    fn from(old: ResultBeforeFeedback) -> Self {
        let ResultBeforeFeedback {
            job,
            round,
            base_model,
            model,
            contributions,
            metrics,
            members,
            vetted,
            sent_at_ms,
        } = old;
        Self {
            job,
            round,
            base_model,
            model,
            contributions,
            feedback: Vec::new(),
            metrics,
            members,
            vetted,
            sent_at_ms,
            optimizer_state: None,
        }
    }
}

/// A run state as builds before verifiable aggregation wrote it (without the aggregators a
/// fraud proof excluded and the models it condemned): read, and kept with none of either.
#[derive(serde::Deserialize)]
struct RunStateBeforeAudits {
    status: RunStatus,
    completed_round: Round,
    model: ContentHash,
    members: Membership,
    vetted: Vec<MemberId>,
}

impl From<RunStateBeforeAudits> for RunState {
    fn from(old: RunStateBeforeAudits) -> Self {
        let RunStateBeforeAudits { status, completed_round, model, members, vetted } = old;
        Self {
            status,
            completed_round,
            model,
            members,
            vetted,
            excluded: Vec::new(),
            condemned: Vec::new(),
        }
    }
}

/// Every stored run state (those an earlier build wrote too); if the records cannot be read,
/// none is, with a warning.
pub fn load_states(store: &Store) -> Vec<(JobId, RunState)> {
    match store.scan_upgrading::<RunState, RunStateBeforeAudits>(Table::Members, b"s") {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The run state's layout before verifiable aggregation, as an earlier build wrote it.
    #[derive(serde::Serialize)]
    struct Written {
        status: RunStatus,
        completed_round: Round,
        model: ContentHash,
        members: Membership,
        vetted: Vec<MemberId>,
    }

    #[test]
    fn a_run_state_an_earlier_build_wrote_is_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (job, model) = (JobId(ContentHash([7; 32])), ContentHash([9; 32]));
        let written = Written {
            status: RunStatus::Running,
            completed_round: 12,
            model,
            members: Membership::default(),
            vetted: vec![MemberId([3; 32])],
        };
        let mut batch = store.batch();
        batch.put(Table::Members, &state_key(&job), &written).unwrap();
        batch.commit().unwrap();
        let states = load_states(&store);
        assert_eq!(states.len(), 1, "the old record is read");
        let (id, state) = &states[0];
        assert_eq!((*id, state.completed_round, state.model), (job, 12, model));
        assert_eq!(state.vetted, vec![MemberId([3; 32])]);
        assert!(state.excluded.is_empty() && state.condemned.is_empty());
    }
}
