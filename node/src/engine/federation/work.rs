//! A job's local work on the blocking pool, never on the engine's task: training on a round's
//! base model, making and storing a round's model, and evaluating each global model. Each comes
//! back to the job's machine as its event, so no other job, admin request or gossip message
//! waits behind a large model's work.

use crate::engine::{Engine, Internal};
use crate::misbehaviour::Misbehaviour;
use crate::network::Held;
use crate::store::Store;
use fedmesh_aggregation::ServerOptimizer;
use fedmesh_federation::member::{Event, LocalUpdate};
use fedmesh_protocol::ids::{ContentHash, JobId, MemberId, Round};
use fedmesh_protocol::message::{EvalMetrics, TrainMetrics};
use fedmesh_protocol::tensor::CheckedBlob;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Runs `work` on the blocking pool and hands the job's machine the event `wrap` makes of its
/// result (or of why the work died); `held` (a share of the bulk budget) is let go once the
/// machine took the event.
fn off_task<T: Send + 'static>(
    internal: mpsc::Sender<Internal>,
    job: JobId,
    held: Option<Held>,
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
    wrap: impl FnOnce(Result<T, String>) -> Option<Event> + Send + 'static,
) {
    tokio::spawn(async move {
        let result = match tokio::task::spawn_blocking(work).await {
            Ok(result) => result,
            Err(error) => Err(format!("the work on the blocking pool failed: {error}")),
        };
        if let Some(event) = wrap(result) {
            let _ = internal.send(Internal::Machine { job, event, held }).await;
        }
    });
}

impl Engine {
    /// Trains locally on `base` for `round`. The delta is a large buffer like a frame being
    /// received: it waits for its share of the bulk budget, so an aggregator never holds its own
    /// delta and a trainer's at once (for a 100 MB model: the model, the sum and one of those).
    pub(super) fn train(&self, id: JobId, round: Round, base: ContentHash, params: Arc<Vec<f32>>) {
        let Some(run) = self.runs.get(&id) else { return };
        let (local, network, internal) =
            (run.local.clone(), self.network.clone(), self.internal.clone());
        let (poisoning, slowdown) = (self.poisoning(), self.slowdown());
        tokio::spawn(async move {
            let held = network.reserve(params.len() * 4).await;
            let work = move || {
                let mut trained = local.train(&params, round).map_err(|e| format!("{e:#}"))?;
                trained.delta = poisoning.poison(trained.delta, round);
                if slowdown > 1.0 {
                    // As on a machine `slowdown` times slower (testing only).
                    let extra = trained.seconds * f64::from(slowdown - 1.0);
                    std::thread::sleep(std::time::Duration::from_secs_f64(extra));
                    trained.seconds += extra;
                }
                Ok(trained)
            };
            let wrap = move |trained: Result<super::Trained, String>| {
                let outcome = trained.map(|trained| {
                    tracing::info!(job = %id, round, loss = trained.loss, seconds = trained.seconds, "trained locally");
                    LocalUpdate {
                        delta: Arc::new(trained.delta),
                        samples: trained.samples as u64,
                        metrics: TrainMetrics { loss: trained.loss, accuracy: None },
                        seconds: trained.seconds,
                    }
                });
                Some(Event::Trained { round, base, outcome })
            };
            off_task(internal, id, Some(held), work, wrap);
        });
    }

    /// Encodes and stores a round's model this member made, with its server optimizer's state
    /// when the job has one; the machine hears their hashes.
    pub(super) fn store_model(
        &self,
        id: JobId,
        round: Round,
        params: Arc<Vec<f32>>,
        optimizer: Option<Arc<ServerOptimizer>>,
    ) {
        tracing::info!(job = %id, round, "making and storing the round's model");
        let (store, slow) = (self.store.clone(), self.misbehaves(Misbehaviour::SlowDisk));
        let in_memory = self.models_in_memory.clone();
        let forges = self.misbehaves(Misbehaviour::ForgeAggregate);
        if forges {
            tracing::warn!(job = %id, round, "misbehaving on purpose: a backdoor in the round's model");
        }
        let work = move || {
            let params = if forges { backdoored(&params) } else { params };
            // Stored as its parameters' own bytes: no encoded copy of a large model.
            let model = store_blob(&store, &CheckedBlob::of_params(&params), slow)?;
            in_memory.insert(model, &params);
            drop(params);
            let state = optimizer.map(|optimizer| {
                store_blob(&store, &CheckedBlob::hashing(optimizer.encode_state()), false)
            });
            Ok((model, state.transpose()?))
        };
        let wrap = move |stored: Result<(ContentHash, Option<ContentHash>), String>| match stored {
            Ok((model, optimizer_state)) => Some(Event::Stored { round, model, optimizer_state }),
            Err(error) => {
                tracing::error!(job = %id, round, %error, "cannot make or store the round's model");
                None
            }
        };
        off_task(self.internal.clone(), id, None, work, wrap);
    }

    /// Evaluates a global model on the local test split (an external evaluator runs here too).
    pub(super) fn evaluate(
        &self,
        id: JobId,
        round: Round,
        model: ContentHash,
        params: Arc<Vec<f32>>,
    ) {
        let Some(run) = self.runs.get(&id) else { return };
        let local = run.local.clone();
        let work = move || local.evaluate(&params, round).map_err(|e| format!("{e:#}"));
        let wrap = move |evaluated: Result<fedmesh_learning::Evaluation, String>| {
            let metrics = match evaluated {
                Ok(e) => EvalMetrics {
                    loss: Some(e.loss),
                    accuracy: Some(e.accuracy),
                    samples: e.samples as u64,
                },
                Err(error) => {
                    tracing::warn!(job = %id, round, %error, "cannot evaluate the model");
                    EvalMetrics::default()
                }
            };
            tracing::info!(job = %id, round, accuracy = ?metrics.accuracy, loss = ?metrics.loss, "evaluated global model");
            Some(Event::Evaluated { round, model, metrics })
        };
        off_task(self.internal.clone(), id, None, work, wrap);
    }
}

/// How much longer the `slow-disk` misbehaviour makes a large model's write.
const SLOW_DISK_DELAY: std::time::Duration = std::time::Duration::from_secs(4);

/// Stores a model blob (see [`Store::put_model_blob`]); returns its hash. A `slow` disk makes a large
/// blob's write take `SLOW_DISK_DELAY` longer.
fn store_blob(store: &Store, blob: &CheckedBlob<'_>, slow: bool) -> Result<ContentHash, String> {
    if slow && blob.bytes().len() >= crate::network::LARGE_FRAME_BYTES {
        std::thread::sleep(SLOW_DISK_DELAY);
    }
    store.put_model_blob(blob).map_err(|e| e.to_string())
}

impl Engine {
    /// Fetches a server optimizer's state blob (from this node's store, else from the members
    /// named) and decodes it for the job; the machine hears it, or why not. A fetched state is
    /// kept, so this node can serve it too.
    pub(super) fn fetch_optimizer_state(
        &self,
        id: JobId,
        round: Round,
        state: ContentHash,
        from: Vec<MemberId>,
    ) {
        let Some(run) = self.runs.get(&id) else { return };
        let (server, params) =
            (run.machine.spec().strategy.server.clone(), run.machine.params().len());
        let (store, network, internal) =
            (self.store.clone(), self.network.clone(), self.internal.clone());
        tokio::spawn(async move {
            let bytes = match read_blob(&store, state).await {
                Some(bytes) => Ok(bytes),
                None => fetch_state_blob(&network, &from, state, params).await,
            };
            let outcome = bytes.and_then(|bytes| {
                let decoded = ServerOptimizer::decode_state(server.as_ref(), params, &bytes)
                    .map_err(|e| format!("optimizer state {state}: {e}"))?;
                store_blob(&store, &CheckedBlob::hashing(bytes), false)?;
                Ok(Arc::new(decoded))
            });
            if let Err(error) = &outcome {
                tracing::warn!(job = %id, round, %error, "cannot fetch the optimizer state");
            }
            let event = Event::OptimizerStateFetched { state, outcome };
            let _ = internal.send(Internal::Machine { job: id, event, held: None }).await;
        });
    }
}

/// A blob from this node's store, if it holds it.
async fn read_blob(store: &Arc<Store>, hash: ContentHash) -> Option<Vec<u8>> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || store.blob(&hash).ok().flatten()).await.ok().flatten()
}

/// A server optimizer's state blob from the first of `from` that serves it (at most its two
/// moments of `params` values and a header).
async fn fetch_state_blob(
    network: &crate::network::Network,
    from: &[MemberId],
    state: ContentHash,
    params: usize,
) -> Result<Vec<u8>, String> {
    let largest = params.saturating_mul(8).saturating_add(1024);
    let mut last = "no member to fetch it from".to_owned();
    for member in from {
        match super::models::fetch_blob(network, *member, state, largest).await {
            Ok(blob) => return Ok(blob.into_bytes()),
            Err(error) => last = error,
        }
    }
    Err(last)
}

/// A round model with a backdoor delta added: 0.5 on each of its first 16 parameters (what a
/// `forge-aggregate` node announces instead of the honest model).
fn backdoored(params: &Arc<Vec<f32>>) -> Arc<Vec<f32>> {
    let mut forged = params.as_ref().clone();
    forged.iter_mut().take(16).for_each(|value| *value += 0.5);
    Arc::new(forged)
}
