//! A job's heavy steps on the blocking pool, never on the engine's task: verifying an update's
//! signature over its payload, and making and storing a round's model. Each comes back to the
//! engine as an `Internal` event, so no other job, admin request or gossip message waits behind
//! a large model's work.

use super::collect::{Checked, Refused, Unverified};
use super::encode_model;
use super::misbehave::{SLOW_DISK, SLOW_DISK_DELAY};
use crate::engine::requests::respond;
use crate::engine::{Engine, Internal};
use crate::network::{Frame, Held};
use crate::store::Store;
use fedmesh_protocol::codec::Payload;
use fedmesh_protocol::ids::{ContentHash, JobId, Round};
use fedmesh_protocol::message::Contribution;
use libp2p::request_response::ResponseChannel;
use std::ops::Deref;
use std::sync::Arc;
use tokio::sync::mpsc;

/// An update's payload: as it came in a peer's request, or this node's own.
pub enum UpdatePayload {
    Received(Payload),
    Own(Arc<Vec<u8>>),
}

impl Deref for UpdatePayload {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Self::Received(payload) => payload,
            Self::Own(payload) => payload,
        }
    }
}

/// Where a peer's update is answered: its request's channel, with the budget share its frame
/// holds until then.
pub type Reply = (ResponseChannel<Frame>, Option<Held>);

/// An update whose signature was checked off the engine's task.
pub struct CheckedUpdate {
    job: JobId,
    kind: &'static str,
    checked: Result<Checked, Refused>,
    payload: UpdatePayload,
    /// None for this node's own update.
    reply: Option<Reply>,
}

/// A round's model as it was made and stored off the engine's task.
pub struct RoundModel {
    pub round: Round,
    pub base: ContentHash,
    /// Whether this node announces it (the round's leader) or only keeps it (a ring member).
    pub announce: bool,
    /// The model's hash and the updates in it.
    pub stored: Result<(ContentHash, Vec<Contribution>), String>,
}

/// Runs `work` on the blocking pool and hands its result (or why the work died) to the engine
/// as `wrap(result)`.
fn off_task<T: Send + 'static>(
    internal: mpsc::Sender<Internal>,
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
    wrap: impl FnOnce(Result<T, String>) -> Internal + Send + 'static,
) {
    tokio::spawn(async move {
        let result = match tokio::task::spawn_blocking(work).await {
            Ok(result) => result,
            Err(error) => Err(format!("the work on the blocking pool failed: {error}")),
        };
        let _ = internal.send(wrap(result)).await;
    });
}

/// Stores a model blob in one committed write; returns its hash. A `slow` disk makes a large
/// blob's write take `SLOW_DISK_DELAY` longer.
fn store_blob(store: &Store, blob: &[u8], slow: bool) -> Result<ContentHash, String> {
    if slow && blob.len() >= crate::network::LARGE_FRAME_BYTES {
        std::thread::sleep(SLOW_DISK_DELAY);
    }
    let mut batch = store.batch();
    let hash = batch.put_blob(blob).map_err(|e| e.to_string())?;
    batch.commit().map_err(|e| e.to_string())?;
    Ok(hash)
}

/// What making a round's model gives: its parameters and the updates in it.
pub type Made = Result<(Vec<f32>, Vec<Contribution>), String>;

impl Engine {
    /// Verifies an update's signature over its payload off the engine's task; the engine takes
    /// it back in `on_checked_update`.
    pub(in crate::engine) fn verify_update(
        &self,
        update: Unverified,
        payload: UpdatePayload,
        reply: Option<Reply>,
    ) {
        let (job, kind, internal) = (update.job(), update.kind(), self.internal.clone());
        tokio::spawn(async move {
            let verify = move || (update.verify(&payload), payload);
            let (checked, payload) = match tokio::task::spawn_blocking(verify).await {
                Ok(done) => done,
                Err(error) => return tracing::error!(%job, %error, "verifying an update failed"),
            };
            let update = CheckedUpdate { job, kind, checked, payload, reply };
            let _ = internal.send(Internal::UpdateChecked(update)).await;
        });
    }

    /// Folds a verified update in (or refuses it) and answers its sender.
    pub(in crate::engine) async fn on_checked_update(&mut self, update: CheckedUpdate) {
        let CheckedUpdate { job, kind, checked, payload, reply } = update;
        let response = match checked {
            Ok(Checked::Delta(delta)) => self.on_delta_request(delta, &payload).await,
            Ok(Checked::Partial(partial)) => self.on_partial_request(partial, &payload).await,
            Err(refused) => self.answer_input(job, kind, Err(refused)).await,
        };
        // Let go before the answer: the slot it completed is then finished holding no update.
        drop(payload);
        if let Some((channel, _held)) = reply {
            respond(&self.network, channel, response, Vec::new(), None).await;
        }
    }

    /// Makes round `round`'s model with `make` and stores it off the engine's task; the engine
    /// takes it back in `on_round_model`. Until then the round counts as closing: its deadline
    /// does not open it again.
    pub(super) fn store_round_model(
        &mut self,
        id: JobId,
        (round, base): (Round, ContentHash),
        announce: bool,
        make: impl FnOnce() -> Made + Send + 'static,
    ) {
        if let Some(run) = self.runs.get_mut(&id) {
            run.closing = Some(round);
        }
        tracing::info!(job = %id, round, "making and storing the round's model");
        let (store, slow) = (self.store.clone(), self.misbehaves(SLOW_DISK));
        let work = move || {
            let (params, contributions) = make()?;
            let blob = encode_model(&params).map_err(|e| e.to_string())?;
            // The model goes as soon as it is encoded: a large model's aggregator holds few
            // copies of it at once.
            drop(params);
            Ok((store_blob(&store, &blob, slow)?, contributions))
        };
        let wrap = move |stored| Internal::RoundModel {
            job: id,
            made: RoundModel { round, base, announce, stored },
        };
        off_task(self.internal.clone(), work, wrap);
    }

    /// A round's model is stored: its leader announces it, unless the round's result was taken
    /// from another member meanwhile.
    pub(in crate::engine) async fn on_round_model(&mut self, id: JobId, made: RoundModel) {
        let Some(run) = self.runs.get_mut(&id) else { return };
        if run.closing == Some(made.round) {
            run.closing = None;
        }
        let round = made.round;
        let (model, contributions) = match made.stored {
            Ok(stored) => stored,
            Err(error) => {
                return tracing::error!(job = %id, round, %error, "cannot make or store the round's model");
            }
        };
        if run.state.completed_round >= round {
            return tracing::info!(job = %id, round, "the round's result came from another member while its model was stored here");
        }
        if made.announce {
            self.announce_model(id, round, made.base, model, contributions).await;
        }
    }
}
