//! Verifiable jobs on the node: the deltas this member sent, or took as a round's aggregator,
//! kept by payload hash for the audit window (within a byte bound) and served to the job's
//! members as its machine allows; a result's model recomputed from the contributions it lists,
//! off the engine's task; fraud proofs signed and published, and a false one counted against
//! its accuser.

use super::models::{fetch_blob, fetch_model};
use crate::engine::requests::{respond, respond_shared};
use crate::engine::{Engine, Internal};
use fedmesh_federation::member::{Accusation, Event, OwnPayloads, Refusal, recompute_secure};
use fedmesh_protocol::codec::decode_evidence;
use fedmesh_protocol::ids::{ContentHash, JobId, MemberId};
use fedmesh_protocol::message::{
    AggregateReady, Contribution, FraudProof, GossipMessage, MAX_EVIDENCE_BYTES, Response,
    unix_millis,
};
use fedmesh_protocol::tensor::{
    SharedPayload, TensorEncoding, decode_params, f32_payload, hash_f32, no_payload,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

/// Most bytes of contributions a job keeps for auditors; the ones whose window ends first go
/// when more arrive.
pub const MAX_KEPT_BYTES: usize = 1 << 30;

/// The deltas a verifiable job keeps for auditors, by payload hash, each until its audit
/// window closes; indexed by that time too, so dropping what expired (or expires first) never
/// walks the whole map.
#[derive(Default)]
pub struct Contributions {
    kept: BTreeMap<ContentHash, (SharedPayload, u64)>,
    by_expiry: BTreeSet<(u64, ContentHash)>,
    bytes: usize,
}

/// A job's kept contributions, shared with the tasks that encode and receive deltas.
pub type SharedContributions = Arc<Mutex<Contributions>>;

impl Contributions {
    /// Keeps `bytes` (the payload hashing to `hash`) until `until_ms`, dropping what expired,
    /// then what expires first while the bound is exceeded.
    pub fn hold(&mut self, hash: ContentHash, bytes: SharedPayload, until_ms: u64, now: u64) {
        self.drop_expiring_before(now);
        let length = bytes.bytes().len();
        if length > MAX_KEPT_BYTES {
            return;
        }
        let until_ms = self.kept.get(&hash).map_or(until_ms, |(_, until)| until_ms.max(*until));
        self.drop_one(&hash);
        self.bytes += length;
        self.kept.insert(hash, (bytes, until_ms));
        self.by_expiry.insert((until_ms, hash));
        while self.bytes > MAX_KEPT_BYTES {
            let Some(&(_, first)) = self.by_expiry.first() else { break };
            self.drop_one(&first);
        }
    }

    /// Keeps the listed contributions at least until `until_ms`.
    pub fn keep_until(&mut self, hashes: &[ContentHash], until_ms: u64) {
        for hash in hashes {
            let Some((_, until)) = self.kept.get_mut(hash) else { continue };
            if *until < until_ms {
                self.by_expiry.remove(&(*until, *hash));
                self.by_expiry.insert((until_ms, *hash));
                *until = until_ms;
            }
        }
    }

    /// The payload hashing to `hash`, if it is kept still.
    pub fn get(&self, hash: &ContentHash, now: u64) -> Option<SharedPayload> {
        self.kept.get(hash).filter(|(_, until)| *until >= now).map(|(bytes, _)| bytes.clone())
    }

    fn drop_expiring_before(&mut self, now: u64) {
        while let Some(&(until, hash)) = self.by_expiry.first() {
            if until >= now {
                break;
            }
            self.drop_one(&hash);
        }
    }

    fn drop_one(&mut self, hash: &ContentHash) {
        if let Some((bytes, until)) = self.kept.remove(hash) {
            self.bytes -= bytes.bytes().len();
            self.by_expiry.remove(&(until, *hash));
        }
    }
}

/// Keeps a delta this member sent or took in a verifiable job (`contributions` is `None` in
/// others) for `window_ms` from now, until the machine says how long its round needs it.
pub fn hold_delta(
    contributions: Option<&SharedContributions>,
    hash: ContentHash,
    bytes: SharedPayload,
    window_ms: u64,
) {
    let Some(contributions) = contributions else { return };
    let now = unix_millis();
    if let Ok(mut kept) = contributions.lock() {
        kept.hold(hash, bytes, now + window_ms, now);
    }
}

impl Engine {
    /// The machine names the deltas of a round to keep for auditors: those held already stay
    /// until `until_ms`, this member's own update (folded in unencoded) is kept as f32, and a
    /// secure round's evidence as it was encoded.
    pub(super) fn keep_contributions(
        &self,
        id: JobId,
        deltas: &[ContentHash],
        (own, evidence): OwnPayloads,
        until_ms: u64,
    ) {
        let Some(contributions) = self.runs.get(&id).and_then(|run| run.contributions.clone())
        else {
            return;
        };
        let own = own.map(|values| (hash_f32(&values), f32_payload(values)));
        if let Ok(mut kept) = contributions.lock() {
            kept.keep_until(deltas, until_ms);
            if let Some((hash, bytes)) = own {
                kept.hold(hash, bytes, until_ms, unix_millis());
            }
            for record in evidence {
                kept.hold(ContentHash::of(&record), record, until_ms, unix_millis());
            }
        }
    }

    /// Whether some verifiable job of this node keeps a contribution hashing to `hash`: then
    /// a blob request for it goes to that job's machine.
    pub(in crate::engine) fn job_keeping(&self, hash: &ContentHash) -> Option<JobId> {
        let now = unix_millis();
        self.runs.iter().find_map(|(id, run)| {
            let kept = run.contributions.as_ref()?.lock().ok()?.get(hash, now);
            kept.map(|_| *id)
        })
    }

    /// A peer asks for a contribution a verifiable job keeps: the job's machine decides
    /// whether it may have it (a member of the job, while the contribution is kept).
    pub(in crate::engine) async fn on_contribution_request(
        &mut self,
        id: JobId,
        peer: libp2p::PeerId,
        hash: ContentHash,
        channel: libp2p::request_response::ResponseChannel<crate::network::Frame>,
    ) {
        let Ok(from) = MemberId::from_peer_id_string(&peer.to_string()) else { return };
        let Some(run) = self.runs.get_mut(&id) else { return };
        let request = run.keep_reply((channel, None), "contribution");
        self.handle(id, Event::ContributionAsked { from, hash, request }).await;
        // Not answered: the machine no longer runs the job.
        let Some(run) = self.runs.get_mut(&id) else { return };
        if let Some(((channel, _), _)) = run.replies.remove(&request) {
            respond(&self.network, channel, Response::NotFound { hash }, Vec::new(), None).await;
        }
    }

    /// Answers a blob request for a kept contribution as the machine decided.
    pub(super) async fn serve_contribution(
        &mut self,
        id: JobId,
        request: u64,
        hash: ContentHash,
        outcome: Result<(), Refusal>,
    ) {
        let Some(run) = self.runs.get_mut(&id) else { return };
        let Some(((channel, held), _)) = run.replies.remove(&request) else { return };
        let kept =
            run.contributions.as_ref().and_then(|c| c.lock().ok()?.get(&hash, unix_millis()));
        let (response, payload) = match (outcome, kept) {
            (Ok(()), Some(bytes)) => (Response::Blob { hash }, bytes),
            (Ok(()), None) => (Response::NotFound { hash }, no_payload()),
            (Err(refusal), _) => {
                self.metrics.rejected("blob", refusal.reason.label());
                (Response::Refused { reason: refusal.detail }, no_payload())
            }
        };
        respond_shared(&self.network, channel, response, payload, held).await;
    }

    /// Recomputes a result's model from the contributions it lists, in the background: each
    /// delta from this node's own keeping, else from its member, else from `from`; the base
    /// model from the store or the members. Its hash comes back as `Event::Audited`.
    pub(super) fn audit(
        &self,
        id: JobId,
        result: Arc<AggregateReady>,
        aggregator: MemberId,
        from: Vec<MemberId>,
    ) {
        let Some(run) = self.runs.get(&id) else { return };
        let spec = run.machine.spec();
        let (strategy, encoding) =
            (spec.aggregator_strategy(), spec.delta_encoding.tensor_encoding());
        let secure = spec.privacy.secure_aggregation.then_some(spec.strategy.clip_norm);
        let params = run.machine.params().len();
        let largest = match secure {
            Some(_) => MAX_EVIDENCE_BYTES,
            None => largest_delta_bytes(params),
        };
        let contributions = run.contributions.clone();
        let (network, store, internal) =
            (self.network.clone(), self.store.clone(), self.internal.clone());
        tokio::spawn(async move {
            let model = result.model;
            let base = fetch_model(&network, &store, &from, result.base_model, params).await;
            let mut deltas = Vec::with_capacity(result.contributions.len());
            let mut missing = None;
            for contribution in &result.contributions {
                let kept = contributions
                    .as_ref()
                    .and_then(|c| c.lock().ok()?.get(&contribution.delta, unix_millis()));
                let bytes = match kept {
                    Some(bytes) => Ok(bytes.bytes().to_vec()),
                    None => {
                        fetch_contribution(
                            &network,
                            contribution.member,
                            &from,
                            contribution.delta,
                            largest,
                        )
                        .await
                    }
                };
                match bytes {
                    Ok(bytes) => deltas.push((contribution.member, contribution.samples, bytes)),
                    Err(error) => {
                        missing = Some(format!("contribution {}: {error}", contribution.delta));
                        break;
                    }
                }
            }
            let listed = result.clone();
            let work = move || {
                if let Some(missing) = missing {
                    return Err(missing);
                }
                let base = base?;
                match secure {
                    Some(clip_norm) => {
                        let (round, listed) = (listed.round, &listed.contributions);
                        recompute_secure_round((id, round), clip_norm, &base, deltas, listed)
                    }
                    None => recompute(&strategy, &base, deltas, (aggregator, encoding), params),
                }
            };
            let outcome = match tokio::task::spawn_blocking(work).await {
                Ok(outcome) => outcome,
                Err(error) => Err(format!("the recomputation failed: {error}")),
            };
            if let Err(error) = &outcome {
                tracing::warn!(job = %id, round = result.round, %error, "cannot audit the result");
            }
            let event = Event::Audited { model, outcome };
            let _ = internal.send(Internal::Machine { job: id, event, held: None }).await;
        });
    }

    /// Signs and publishes a fraud proof against the result the machine found forged: the
    /// liar's announcement as it signed it, which this node kept when it took the result.
    pub(super) async fn publish_fraud_proof(&mut self, id: JobId, accusation: Accusation) {
        let Some(run) = self.runs.get(&id) else { return };
        let signed = run.taken.iter().find(|kept| *kept.unverified_body() == *accusation.result);
        let Some(result) = signed.cloned() else {
            return tracing::warn!(job = %id, round = accusation.result.round, "the forged result is no longer kept as it was signed: no fraud proof");
        };
        tracing::warn!(job = %id, round = accusation.result.round, liar = %accusation.liar, recomputed = %accusation.recomputed, "the round's model is not what its contributions make: publishing a fraud proof");
        // The forged result is refused here after its audit, as a forged message is on arrival.
        self.metrics.rejected("result", "forged_aggregate");
        let proof = FraudProof {
            job: id,
            round: accusation.result.round,
            accuser: self.identity.member_id(),
            result,
            recomputed: accusation.recomputed,
            sent_at_ms: unix_millis(),
        };
        self.publish_signed(id, proof, |signed| GossipMessage::FraudProof(Box::new(signed))).await;
    }

    /// A fraud proof this node took in turned out false once recomputed: its accuser lied.
    pub(super) fn proof_refuted(&self, id: JobId, accuser: MemberId, refusal: &Refusal) {
        tracing::warn!(job = %id, %accuser, detail = %refusal.detail, "a false fraud proof");
        self.metrics.rejected("gossip", refusal.reason.label());
    }
}

/// A contribution's payload: from its member, else from the others named.
async fn fetch_contribution(
    network: &crate::network::Network,
    member: MemberId,
    from: &[MemberId],
    hash: ContentHash,
    largest: usize,
) -> Result<Vec<u8>, String> {
    let mut last = "no member to fetch it from".to_owned();
    for source in std::iter::once(member).chain(from.iter().copied()) {
        match fetch_blob(network, source, hash, largest).await {
            Ok(blob) => return Ok(blob.into_bytes()),
            Err(error) => last = error,
        }
    }
    Err(last)
}

/// The most bytes a delta of `params` values takes in any encoding (top-k's (index, value)
/// pairs, 8 bytes each, at a fraction of 1; f32 takes 4), with room for its header.
fn largest_delta_bytes(params: usize) -> usize {
    params.saturating_mul(8).saturating_add(1024)
}

/// The model a result's contributions make over `base`, and its hash as the aggregator's
/// store makes it: each delta decoded (the aggregator's own is f32, the others the job's
/// encoding), then recomputed exactly as a verifiable job's aggregator does.
fn recompute(
    strategy: &fedmesh_protocol::strategy::StrategySpec,
    base: &[f32],
    deltas: Vec<(MemberId, u64, Vec<u8>)>,
    (aggregator, encoding): (MemberId, TensorEncoding),
    params: usize,
) -> Result<ContentHash, String> {
    let mut decoded = Vec::with_capacity(deltas.len());
    for (member, samples, bytes) in deltas {
        let encoding = if member == aggregator { TensorEncoding::F32Le } else { encoding };
        let values = decode_params(&bytes, encoding, params)
            .map_err(|e| format!("{member}'s delta: {e}"))?;
        decoded.push((member, samples, values));
    }
    let contributions: Vec<(MemberId, u64, &[f32])> = decoded
        .iter()
        .map(|(member, samples, values)| (*member, *samples, values.as_slice()))
        .collect();
    let model = fedmesh_aggregation::verifiable::recompute(strategy, base, &contributions)
        .map_err(|e| e.to_string())?;
    Ok(hash_f32(&model))
}

/// The model a secure round's evidence makes over `base` (see `recompute_secure`), and its
/// hash as the aggregator's store makes it.
fn recompute_secure_round(
    job_round: (JobId, fedmesh_protocol::ids::Round),
    clip_norm: Option<f32>,
    base: &[f32],
    records: Vec<(MemberId, u64, Vec<u8>)>,
    contributions: &[Contribution],
) -> Result<ContentHash, String> {
    let clip_norm = clip_norm.ok_or("a secure job without clip_norm")?;
    let mut evidence = Vec::with_capacity(records.len());
    for ((member, _, bytes), contribution) in records.into_iter().zip(contributions) {
        let record = decode_evidence(&bytes).map_err(|e| format!("{member}'s evidence: {e}"))?;
        evidence.push((*contribution, record));
    }
    let model = recompute_secure(job_round, clip_norm, base, &evidence)?;
    Ok(hash_f32(&model))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(byte: u8) -> ContentHash {
        ContentHash([byte; 32])
    }

    #[test]
    fn contributions_expire_and_stay_within_the_byte_bound() {
        let mut kept = Contributions::default();
        kept.hold(hash(1), Arc::new(vec![0; 10]), 100, 0);
        kept.hold(hash(2), Arc::new(vec![0; 10]), 300, 0);
        assert!(kept.get(&hash(1), 50).is_some());
        assert!(kept.get(&hash(1), 101).is_none(), "past its window");
        kept.keep_until(&[hash(1)], 500);
        assert!(kept.get(&hash(1), 400).is_some(), "kept longer once its round names it");
        kept.hold(hash(3), Arc::new(vec![0; 10]), 50, 350);
        assert!(kept.get(&hash(2), 350).is_none(), "expired entries go when one arrives");
        assert_eq!(kept.bytes, 20);
        let half = Arc::new(vec![0; MAX_KEPT_BYTES / 2 + 1]);
        kept.hold(hash(4), half.clone(), 1_000, 360);
        kept.hold(hash(5), half, 2_000, 360);
        assert!(kept.bytes <= MAX_KEPT_BYTES, "{}", kept.bytes);
        assert!(kept.get(&hash(5), 360).is_some(), "the newest stays");
        assert!(kept.get(&hash(4), 360).is_none(), "the one whose window ends first goes");
    }
}
