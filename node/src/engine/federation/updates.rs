//! Updates on the wire, the heavy steps on the blocking pool: this member's delta (encoded as
//! the job says, with top-k's error feedback), a slot's partial aggregate and ring chunks are
//! encoded, hashed, signed and sent (again while the round's time allows); those that arrive
//! are verified and decoded before the job's machine judges and folds them.

use super::audits::hold_delta;
use super::misbehave::forged_deltas;
use crate::engine::requests::respond;
use crate::engine::{Engine, Internal};
use crate::identity::peer_of_member;
use crate::metrics::Metrics;
use crate::network::{Frame, Held, Network};
use fedmesh_federation::member::Reason;
use fedmesh_federation::member::{
    ChunkToSend, DeltaToSend, EncodedValues, Event, PartialToSend, Refusal, Update, UpdateValues,
};
use fedmesh_protocol::codec::{Payload, decode_response, encode_request_header};
use fedmesh_protocol::envelope::{CarriesPayload, Denied, Scope, Scoped, Signed, SignedBody};
use fedmesh_protocol::identity::Identity;
use fedmesh_protocol::ids::{JobId, MemberId};
use fedmesh_protocol::message::{
    ModelDelta, PartialAggregate, Request, Response, RingChunk, SecureAggregation, SecureBody,
    unix_millis,
};
use fedmesh_protocol::model::TensorLayout;
use fedmesh_protocol::spec::DeltaEncoding;
use fedmesh_protocol::tensor::{
    PayloadRef, SharedPayload, TensorEncoding, TensorError, decode_params, f32_payload,
};
use libp2p::request_response::ResponseChannel;
use std::sync::{Arc, Mutex};

/// Where a peer's update is answered: its request's channel, with the budget share its frame
/// holds until then.
pub type Reply = (ResponseChannel<Frame>, Option<Held>);

/// What this member's deltas have not sent yet (top-k's error feedback), shared with the
/// blocking task that encodes the next one.
pub type Residual = Arc<Mutex<Option<Vec<f32>>>>;

/// The first wait before an update that could not be sent is sent again; it doubles each time.
const FIRST_RETRY_MS: u64 = 1_000;

/// An update as it arrived, its signature not checked yet.
pub enum Unverified {
    Delta(Signed<ModelDelta>),
    Partial(Signed<PartialAggregate>),
    Chunk(Signed<RingChunk>),
}

impl Unverified {
    /// The job it claims to be for.
    pub fn job(&self) -> JobId {
        match self {
            Self::Delta(delta) => delta.unverified_body().job,
            Self::Partial(partial) => partial.unverified_body().job,
            Self::Chunk(chunk) => chunk.unverified_body().job,
        }
    }

    /// What kind of update it is, as the refusal metrics count it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Delta(_) => "delta",
            Self::Partial(_) => "partial",
            Self::Chunk(_) => "ring_chunk",
        }
    }

    /// Checks its signature, that it is for `job`, and that `payload` is the one it signs for
    /// (a hash over all of it), then checks the payload decodes: the heavy part, off the
    /// engine's task. A delta stays encoded (the fold reads it a chunk at a time, with no
    /// decoded copy); a partial aggregate or ring chunk is decoded. A delta or partial
    /// aggregate must carry the model's `params`; a ring chunk at most that many.
    fn verify(
        self,
        payload: Payload,
        params: usize,
    ) -> Result<(MemberId, Update, UpdateValues), Refusal> {
        match self {
            Self::Delta(delta) => {
                let (signer, body) = verify_payload(delta, &payload)?;
                let values = encoded(payload, &body.payload, params)?;
                Ok((signer, Update::Delta(body), values))
            }
            Self::Partial(partial) => {
                let (signer, body) = verify_payload(partial, &payload)?;
                let values = decode(&payload, &body.mean, Some(params))?;
                Ok((signer, Update::Partial(body), Arc::new(values).into()))
            }
            Self::Chunk(chunk) => {
                let (signer, body) = verify_payload(chunk, &payload)?;
                if body.values.params > params as u64 {
                    return Err(wrong_layout(&body.values, params));
                }
                let values = decode(&payload, &body.values, None)?;
                Ok((signer, Update::Chunk(body), Arc::new(values).into()))
            }
        }
    }
}

/// Verifies a signed update for its job and the payload beside it.
fn verify_payload<T: SignedBody + CarriesPayload + Scoped>(
    signed: Signed<T>,
    payload: &Payload,
) -> Result<(MemberId, T), Refusal> {
    let scope = Scope::job(signed.unverified_body().job());
    let verified = signed
        .verify_with_payload(payload, |_, body| scope.admits(body))
        .map_err(|e| Refusal::new(Reason::BadSignature, e.to_string()))?;
    Ok((verified.signer(), verified.into_body()))
}

/// Decodes a payload, which must carry `params` values when given.
fn decode(
    payload: &[u8],
    reference: &PayloadRef,
    params: Option<usize>,
) -> Result<Vec<f32>, Refusal> {
    let expected = params.unwrap_or(reference.params as usize);
    if reference.params != expected as u64 {
        return Err(wrong_layout(reference, expected));
    }
    decode_params(payload, reference.encoding, expected)
        .map_err(|e| Refusal::new(Reason::MalformedPayload, e.to_string()))
}

/// A payload kept encoded, which must decode to the model's `params` finite values.
fn encoded(
    payload: Payload,
    reference: &PayloadRef,
    params: usize,
) -> Result<UpdateValues, Refusal> {
    if reference.params != params as u64 {
        return Err(wrong_layout(reference, params));
    }
    EncodedValues::new(Arc::new(payload), reference.encoding, params)
        .map(UpdateValues::Encoded)
        .map_err(|e| Refusal::new(Reason::MalformedPayload, e.to_string()))
}

fn wrong_layout(reference: &PayloadRef, params: usize) -> Refusal {
    let detail = format!("the update has {} parameters, the model {params}", reference.params);
    Refusal::new(Reason::WrongLayout, detail)
}

impl Engine {
    /// Verifies and decodes an update a peer sent, off the engine's task; it comes back as
    /// `Internal::Update` for its job's machine, which answers it. One refused here is
    /// answered at once.
    pub(in crate::engine) fn receive_update(
        &self,
        update: Unverified,
        payload: Payload,
        reply: Reply,
    ) {
        let (job, kind) = (update.job(), update.kind());
        let run = self.runs.get(&job);
        let params = run.map(|run| run.machine.params().len());
        let keeping = run.and_then(|run| Some((run.contributions.clone()?, audit_window_ms(run))));
        let (network, internal, metrics) =
            (self.network.clone(), self.internal.clone(), self.metrics.clone());
        tokio::spawn(async move {
            let Some(params) = params else {
                let refused =
                    Refusal::new(Reason::NotJoined, format!("this node is not in job {job}"));
                return refuse(&network, &metrics, (job, kind), refused, reply).await;
            };
            let verify = move || {
                let checked = update.verify(payload, params);
                // A verifiable job keeps each delta it takes for auditors (checked, as sent, the
                // received bytes themselves).
                if let (Ok((_, Update::Delta(delta), UpdateValues::Encoded(encoded))), Some(kept)) =
                    (&checked, keeping)
                {
                    let (kept, window_ms) = kept;
                    hold_delta(Some(&kept), delta.payload.hash, encoded.shared(), window_ms);
                }
                checked
            };
            let started = std::time::Instant::now();
            let checked = tokio::task::spawn_blocking(verify).await;
            tracing::debug!(%job, kind, took = ?started.elapsed(), "checked an update");
            let checked = match checked {
                Ok(checked) => checked,
                Err(error) => {
                    Err(Refusal::new(Reason::Internal, format!("verifying failed: {error}")))
                }
            };
            match checked {
                Ok((signer, update, values)) => {
                    let update = Internal::Update { job, signer, update, values, reply };
                    let _ = internal.send(update).await;
                }
                Err(refused) => refuse(&network, &metrics, (job, kind), refused, reply).await,
            }
        });
    }

    /// Encodes, signs and sends this member's delta to its slot's aggregator (after the forged
    /// copies a node misbehaving on purpose sends first).
    pub(super) fn send_delta(&self, id: JobId, to: MemberId, delta: DeltaToSend, until_ms: u64) {
        let Some(run) = self.runs.get(&id) else { return };
        let encoding = run.machine.spec().delta_encoding;
        let (layout, residual) = (run.local.model.layout(), run.residual.clone());
        let forges = self.poisoning().forges_deltas();
        let (identity, network) = (self.identity.clone(), self.network.clone());
        let (contributions, window_ms) = (run.contributions.clone(), audit_window_ms(run));
        tokio::spawn(async move {
            let make = move || {
                let payload = encode_delta(encoding, &layout, &delta.values, &residual)?;
                let body = ModelDelta {
                    job: id,
                    round: delta.round,
                    base_model: delta.base,
                    member: identity.member_id(),
                    samples: delta.samples,
                    metrics: delta.metrics,
                    payload: PayloadRef::describe(
                        payload.bytes(),
                        encoding.tensor_encoding(),
                        layout.num_params(),
                    ),
                };
                let forged = forges.then(|| forged_deltas(&identity, &body));
                let signed = Signed::sign(&identity, body).map_err(|e| e.to_string())?;
                Ok::<_, String>((Request::Delta(signed), payload, forged))
            };
            let started = std::time::Instant::now();
            let (request, payload, forged) = match tokio::task::spawn_blocking(make).await {
                Ok(Ok(made)) => {
                    tracing::debug!(job = %id, took = ?started.elapsed(), "encoded, hashed and signed the delta");
                    made
                }
                Ok(Err(error)) => {
                    return tracing::error!(job = %id, %error, "cannot make the update");
                }
                Err(error) => return tracing::error!(job = %id, %error, "making the update failed"),
            };
            if let Request::Delta(signed) = &request {
                let hash = signed.unverified_body().payload.hash;
                hold_delta(contributions.as_ref(), hash, payload.clone(), window_ms);
            }
            for forgery in forged.into_iter().flatten() {
                tracing::warn!(job = %id, "misbehaving on purpose: sending a forged delta");
                let answer = request_with_payload(&network, to, &forgery, &payload).await.ok();
                tracing::info!(?answer, "forged delta answered");
            }
            send_until(&network, to, request, payload, (id, until_ms)).await;
        });
    }

    /// Encodes, signs and sends a slot's partial aggregate to the aggregator above.
    pub(super) fn send_partial(
        &self,
        id: JobId,
        to: MemberId,
        partial: PartialToSend,
        until_ms: u64,
    ) {
        let aggregator = self.identity.member_id();
        let make = move |identity: &Identity| {
            let payload = encode_f32(&partial.mean)?;
            let body = PartialAggregate {
                job: id,
                round: partial.round,
                base_model: partial.base,
                opened_at_ms: partial.opened_at_ms,
                group: partial.group,
                aggregator,
                mean: PayloadRef::describe(&payload, TensorEncoding::F32Le, partial.mean.len()),
                total_weight: partial.total_weight,
                contributions: partial.contributions,
            };
            let signed = Signed::sign(identity, body).map_err(|e| e.to_string())?;
            Ok((Request::Partial(signed), payload))
        };
        self.send_encoded((id, to, until_ms), make, || {});
    }

    /// Encodes, signs and sends one ring all-reduce chunk to the ring's next member.
    pub(super) fn send_chunk(&self, id: JobId, to: MemberId, chunk: ChunkToSend, until_ms: u64) {
        let member = self.identity.member_id();
        let make = move |identity: &Identity| {
            let payload = encode_f32(&chunk.values)?;
            let body = RingChunk {
                job: id,
                round: chunk.round,
                base_model: chunk.base,
                opened_at_ms: chunk.opened_at_ms,
                member,
                step: chunk.step,
                chunk: chunk.chunk,
                contributions: chunk.contributions,
                values: PayloadRef::describe(&payload, TensorEncoding::F32Le, chunk.values.len()),
            };
            let signed = Signed::sign(identity, body).map_err(|e| e.to_string())?;
            Ok((Request::RingChunk(signed), payload))
        };
        self.send_encoded((id, to, until_ms), make, || {});
    }

    /// Signs and sends a secure round's message (keys, shares, a masked update, an unmasking)
    /// to `to` until `until_ms`.
    pub(super) fn send_secure(
        &self,
        id: JobId,
        to: MemberId,
        message: SecureAggregation,
        until_ms: u64,
    ) {
        let masked_round =
            matches!(message.body, SecureBody::Masked { .. }).then_some(message.round);
        let metrics = self.metrics.clone();
        let make = move |identity: &Identity| {
            let signed = Signed::sign(identity, message).map_err(|e| e.to_string())?;
            Ok((Request::Secure(signed), Vec::new()))
        };
        self.send_encoded((id, to, until_ms), make, move || {
            if let Some(round) = masked_round {
                metrics.masked_update_delivered(&id.to_string(), round);
            }
        });
    }

    /// A secure round's message from a peer: verified (its signer is the sender it names, for
    /// a job this node runs), then handed to the job's machine, which answers it.
    pub(in crate::engine) async fn on_secure_request(
        &mut self,
        message: Signed<SecureAggregation>,
        reply: Reply,
    ) {
        let job = message.unverified_body().job;
        let scope = Scope::job(job);
        let verified = message.verify(|signer, body| {
            scope.admits(body)?;
            Denied::unless_signer_is(signer, &body.sender, "the message's sender")
        });
        let refused = match (verified, self.runs.get_mut(&job)) {
            (Ok(verified), Some(run)) => {
                let (signer, message) = (verified.signer(), verified.into_body());
                let request = run.keep_reply(reply, "secure");
                // The machine answers through `Effect::Answer`.
                self.handle(job, Event::Secure { signer, message, request }).await;
                return;
            }
            (Ok(_), None) => {
                Refusal::new(Reason::NotJoined, format!("this node is not in job {job}"))
            }
            (Err(error), _) => Refusal::new(Reason::BadMessage, error.to_string()),
        };
        refuse(&self.network, &self.metrics, (job, "secure"), refused, reply).await;
    }

    /// Makes a request with `make` on the blocking pool and sends it to `to` until `until_ms`;
    /// `on_accepted` runs once the receiver accepted it.
    fn send_encoded(
        &self,
        (id, to, until_ms): (JobId, MemberId, u64),
        make: impl FnOnce(&Identity) -> Result<(Request, Vec<u8>), String> + Send + 'static,
        on_accepted: impl FnOnce() + Send + 'static,
    ) {
        let (identity, network) = (self.identity.clone(), self.network.clone());
        tokio::spawn(async move {
            let (request, payload) = match tokio::task::spawn_blocking(move || make(&identity))
                .await
            {
                Ok(Ok(made)) => made,
                Ok(Err(error)) => {
                    return tracing::error!(job = %id, %error, "cannot make an update");
                }
                Err(error) => return tracing::error!(job = %id, %error, "making an update failed"),
            };
            if send_until(&network, to, request, Arc::new(payload), (id, until_ms)).await {
                on_accepted();
            }
        });
    }
}

/// Answers a refused update at once, and counts it.
async fn refuse(
    network: &Network,
    metrics: &Metrics,
    (job, kind): (JobId, &'static str),
    refused: Refusal,
    (channel, _held): Reply,
) {
    tracing::warn!(%job, kind, reason = refused.reason.label(), detail = %refused.detail, "refused an update");
    metrics.rejected(kind, refused.reason.label());
    metrics.update(&job.to_string(), kind, Some(refused.reason.label()));
    let response = Response::Refused { reason: refused.detail };
    respond(network, channel, response, Vec::new(), None).await;
}

fn encode_f32(values: &[f32]) -> Result<Vec<u8>, String> {
    fedmesh_protocol::tensor::encode_params(values, TensorEncoding::F32Le, None)
        .map_err(|e| e.to_string())
}

/// Encodes a delta as the job says: in f32, the values themselves are the payload (no copy on a
/// little-endian machine); with error feedback (top-k), what the last delta did not send is
/// added to this one first, and what this one does not send is kept for the next.
fn encode_delta(
    encoding: DeltaEncoding,
    layout: &TensorLayout,
    delta: &Arc<Vec<f32>>,
    residual: &Residual,
) -> Result<SharedPayload, String> {
    let error = |e: TensorError| e.to_string();
    if encoding == DeltaEncoding::F32 {
        return Ok(f32_payload(delta.clone()));
    }
    if !encoding.carries_residual() {
        return encoding.encode(delta, layout).map(|p| Arc::new(p) as SharedPayload).map_err(error);
    }
    let mut owed = residual.lock().map_err(|_| "the residual's lock is poisoned".to_owned())?;
    let mut delta = delta.to_vec();
    if let Some(owed) = owed.take().filter(|r| r.len() == delta.len()) {
        delta.iter_mut().zip(&owed).for_each(|(d, r)| *d += r);
    }
    let payload = encoding.encode(&delta, layout).map_err(error)?;
    let sent = decode_params(&payload, encoding.tensor_encoding(), delta.len()).map_err(error)?;
    delta.iter_mut().zip(&sent).for_each(|(d, s)| *d -= s);
    *owed = Some(delta);
    Ok(Arc::new(payload))
}

/// Sends a request with a payload and waits for the answer.
pub(super) async fn request_with_payload(
    network: &Network,
    to: MemberId,
    request: &Request,
    payload: &SharedPayload,
) -> anyhow::Result<Response> {
    let frame = Frame::new(encode_request_header(request, payload.bytes().len())?, payload.clone());
    let (bytes, _) = network.request(peer_of_member(&to)?, frame).await?.into_received();
    let (response, _) = decode_response(bytes)?;
    Ok(response)
}

/// Sends a request with a payload and logs the answer. A request that fails (the peer is
/// unreachable, or too loaded to answer in time) is sent again, after a wait that doubles, while
/// `until_ms` allows; the receiver counts an update it already has once.
async fn send_until(
    network: &Network,
    to: MemberId,
    request: Request,
    payload: SharedPayload,
    (id, until_ms): (JobId, u64),
) -> bool {
    let mut wait_ms = FIRST_RETRY_MS + rand::random_range(0..FIRST_RETRY_MS);
    loop {
        match request_with_payload(network, to, &request, &payload).await {
            Ok(Response::Accepted) => {
                tracing::debug!(job = %id, %to, "update accepted");
                return true;
            }
            Ok(Response::Refused { reason }) => {
                tracing::warn!(job = %id, %to, %reason, "update refused");
                return false;
            }
            Ok(other) => {
                tracing::warn!(job = %id, %to, ?other, "unexpected answer to an update");
                return false;
            }
            Err(error) if unix_millis() + wait_ms < until_ms => {
                tracing::warn!(job = %id, %to, %error, retry_in_ms = wait_ms, "cannot send the update; trying again");
            }
            Err(error) => {
                tracing::warn!(job = %id, %to, %error, "cannot send the update");
                return false;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(wait_ms)).await;
        wait_ms *= 2;
    }
}

/// How long a verifiable job keeps a delta before its round names it (its audit window).
fn audit_window_ms(run: &super::JobRun) -> u64 {
    let spec = run.machine.spec();
    spec.verification.as_ref().map_or(0, |v| v.audit_window_secs * 1_000)
}
