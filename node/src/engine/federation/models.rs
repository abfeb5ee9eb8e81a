//! Global models fetched by hash for a job's machine: the bytes its result came with (a small
//! model travels with it), else its own store, else from the members the machine names (known
//! holders first, in its order), then any live member in a random order, again and again with
//! a short pause until one sends it. A busy holder or a member that does not hold it yet costs
//! one small answer, so N fetchers do not all download from the announcer. The blob is
//! hash-checked, stored and decoded off the engine's task.

use crate::engine::{Engine, Internal};
use crate::identity::peer_of_member;
use crate::network::Network;
use crate::store::Store;
use fedmesh_federation::member::Event;
use fedmesh_protocol::codec::{decode_response, encode_request};
use fedmesh_protocol::ids::{ContentHash, JobId, MemberId, Round};
use fedmesh_protocol::message::{Request, Response, unix_millis};
use fedmesh_protocol::tensor::{CheckedBlob, TensorEncoding, decode_params};
use rand::seq::SliceRandom;
use std::sync::Arc;
use std::time::{Duration, Instant};

impl Engine {
    /// Fetches a model for a job's machine in the background; it comes back as
    /// `Event::Fetched`.
    pub(super) fn fetch(&self, id: JobId, round: Round, model: ContentHash, from: Vec<MemberId>) {
        let Some(run) = self.runs.get(&id) else { return };
        let me = self.identity.member_id();
        let live = run.machine.state().members.live_at(unix_millis());
        let mut others: Vec<MemberId> =
            live.iter().map(|m| m.id).filter(|m| *m != me && !from.contains(m)).collect();
        others.shuffle(&mut rand::rng());
        let sources: Vec<MemberId> = from.into_iter().filter(|m| *m != me).chain(others).collect();
        let params = run.machine.params().len();
        let came_with_result =
            run.model_with_result.as_ref().filter(|blob| blob.hash() == model).cloned();
        let (network, store, internal) =
            (self.network.clone(), self.store.clone(), self.internal.clone());
        tokio::spawn(async move {
            let outcome = match came_with_result {
                Some(bytes) => match keep_blob(&store, bytes).await {
                    Ok(bytes) => decode_model(bytes, model, params).await,
                    Err(error) => Err(error),
                },
                None => fetch_model(&network, &store, &sources, model, params).await,
            };
            if let Err(error) = &outcome {
                tracing::warn!(job = %id, round, %model, %error, "cannot fetch the model");
            }
            let event = Event::Fetched { model, outcome: outcome.map(Arc::new) };
            let _ = internal.send(Internal::Machine { job: id, event, held: None }).await;
        });
    }
}

/// A model's parameters: from the store, else fetched from `sources` and stored.
pub(super) async fn fetch_model(
    network: &Network,
    store: &Arc<Store>,
    sources: &[MemberId],
    model: ContentHash,
    params: usize,
) -> Result<Vec<f32>, String> {
    let stored = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.blob(&model)).await
    };
    let bytes = match stored {
        Ok(Ok(Some(bytes))) => bytes,
        _ => {
            let started = Instant::now();
            let blob = fetch_from_any(network, sources, model, params * 4).await?;
            let fetched = started.elapsed();
            let bytes = keep_blob(store, blob).await?;
            let (stored, length) = (started.elapsed() - fetched, bytes.len());
            tracing::debug!(%model, length, ?fetched, ?stored, "fetched and stored a model");
            bytes
        }
    };
    decode_model(bytes, model, params).await
}

/// Stores a model's bytes under the hash they were checked against, so this node can serve
/// them too.
async fn keep_blob(store: &Arc<Store>, blob: CheckedBlob<'static>) -> Result<Vec<u8>, String> {
    let store = store.clone();
    let keep = move || store.put_model_blob(&blob).map(|_| blob.into_bytes());
    match tokio::task::spawn_blocking(keep).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(error)) => Err(format!("cannot store the fetched model: {error}")),
        Err(error) => Err(format!("storing the fetched model failed: {error}")),
    }
}

/// A model's parameters from its bytes, decoded off the engine's task.
async fn decode_model(
    bytes: Vec<u8>,
    model: ContentHash,
    params: usize,
) -> Result<Vec<f32>, String> {
    let decode = move || decode_params(&bytes, TensorEncoding::F32Le, params);
    match tokio::task::spawn_blocking(decode).await {
        Ok(decoded) => decoded.map_err(|e| format!("model {model}: {e}")),
        Err(error) => Err(format!("decoding the model failed: {error}")),
    }
}

/// How long a model is looked for among the members before the fetch gives up.
const FETCH_GIVE_UP: Duration = Duration::from_secs(300);
/// The pause after asking every source in vain, before asking them again.
const FETCH_PAUSE: Duration = Duration::from_millis(100);

/// Asks the sources, one pass after another, for a blob until one sends it.
async fn fetch_from_any(
    network: &Network,
    sources: &[MemberId],
    hash: ContentHash,
    size: usize,
) -> Result<CheckedBlob<'static>, String> {
    let started = Instant::now();
    let mut last = "no member to fetch it from".to_owned();
    while started.elapsed() < FETCH_GIVE_UP && !sources.is_empty() {
        for &source in sources {
            match fetch_blob(network, source, hash, size).await {
                Ok(bytes) => return Ok(bytes),
                Err(error) => {
                    tracing::trace!(%source, %hash, %error, "model not fetched; trying another member");
                    last = error;
                }
            }
        }
        tokio::time::sleep(FETCH_PAUSE).await;
    }
    Err(last)
}

/// Asks `peer` for a blob and checks it is the one asked for.
pub(super) async fn fetch_blob(
    network: &Network,
    peer: MemberId,
    hash: ContentHash,
    size: usize,
) -> Result<CheckedBlob<'static>, String> {
    let fetch = async {
        let bytes = encode_request(&Request::Blob { hash }, &[])?;
        let peer = peer_of_member(&peer)?;
        let answer = network.request_expecting(peer, bytes.into(), size).await?;
        let streamed = answer.streamed_hash();
        let (frame, _) = answer.into_received();
        let (response, payload) = decode_response(frame)?;
        match response {
            Response::Blob { hash: got } if got == hash => {
                Ok(CheckedBlob::check_payload(&hash, payload.with_streamed(streamed))?)
            }
            other => Err(anyhow::anyhow!("peer answered {other:?}")),
        }
    };
    fetch.await.map_err(|e: anyhow::Error| format!("{e:#}"))
}
