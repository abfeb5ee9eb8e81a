//! Global models: a round's announced model is fetched by hash from any live member that holds
//! it (each fetcher tries them in its own random order, so the announcer serves a few and the
//! model spreads from those), adopted as the job's current model, evaluated on the local test
//! split and reported.

use super::{Holders, store};
use crate::engine::{Engine, Internal};
use crate::identity::peer_of_member;
use crate::network::Network;
use fedmesh_federation::records::{RoundRecord, RunStatus};
use fedmesh_protocol::codec::{decode_response, encode_request};
use fedmesh_protocol::ids::{ContentHash, JobId, MemberId, Round};
use fedmesh_protocol::message::{
    AggregateReady, EvalMetrics, EvalReport, GossipMessage, Request, Response, unix_millis,
};
use fedmesh_protocol::tensor::{TensorEncoding, decode_params};
use rand::seq::SliceRandom;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

impl Engine {
    /// Records a round's result and takes its model (fetching it first if needed).
    pub(super) async fn on_aggregate_ready(
        &mut self,
        id: JobId,
        aggregator: MemberId,
        ready: AggregateReady,
    ) {
        let Some(run) = self.runs.get_mut(&id) else { return };
        if ready.round <= run.state.completed_round {
            if let Some(record) = run.rounds.get_mut(&ready.round) {
                record.complete_late(&ready);
            }
            return;
        }
        let record = run.rounds.entry(ready.round).or_insert_with(|| {
            RoundRecord::new(ready.round, aggregator, ready.base_model, ready.sent_at_ms)
        });
        record.close(&ready);
        if run.open.as_ref().is_some_and(|open| open.round <= ready.round) {
            run.open = None;
        }
        // The round is over: whatever this node still collected or led for it is moot, and its
        // own update for it will not be sent again.
        run.slots.retain(|slot| slot.round > ready.round);
        if run.last_update.as_ref().is_some_and(|(update, _, _)| update.round <= ready.round) {
            run.last_update = None;
        }
        if run.leading.as_ref().is_some_and(|leading| leading.round <= ready.round) {
            run.leading = None;
        }
        self.holders.add(ready.model, aggregator);
        match self.store.blob(&ready.model) {
            Ok(Some(bytes)) => self.adopt_model(id, ready.round, ready.model, &bytes).await,
            _ => self.fetch_model(id, ready.round, ready.model, aggregator),
        }
    }

    /// Fetches a model blob in the background from the live members: first those known to hold
    /// it (`announcer`, and every member whose heartbeat or evaluation report names it), then the
    /// others, each group in a random order, again and again with a short pause until one sends
    /// it. A busy holder or a member that does not hold it yet costs one small answer, so N
    /// fetchers do not all download from the announcer. A model already being fetched is not
    /// fetched twice.
    pub(super) fn fetch_model(
        &mut self,
        id: JobId,
        round: Round,
        model: ContentHash,
        announcer: MemberId,
    ) {
        // Known to hold it even when a fetch is under way: that fetch asks it on its next pass.
        self.holders.add(model, announcer);
        if !self.fetching.insert((id, model)) {
            return;
        }
        let me = self.identity.member_id();
        let mut members: Vec<MemberId> = self.runs.get(&id).map_or_else(Vec::new, |run| {
            let live = run.state.members.live_at(unix_millis());
            live.iter().map(|m| m.id).collect()
        });
        members.push(announcer);
        let source = Sources { members, holders: self.holders.clone(), me };
        let (network, internal) = (self.network.clone(), self.internal.clone());
        let size = self.largest_model_bytes();
        tokio::spawn(async move {
            let result = fetch_from_any(&network, &source, model, size).await;
            let _ = internal.send(Internal::ModelFetched { job: id, round, model, result }).await;
        });
    }

    /// The encoded size of the largest model of this node's jobs: what a blob served is sized
    /// by before it is read.
    pub(in crate::engine) fn largest_model_bytes(&self) -> usize {
        self.runs.values().map(|run| run.params.len() * 4).max().unwrap_or(0)
    }

    pub(in crate::engine) async fn on_model_fetched(
        &mut self,
        id: JobId,
        round: Round,
        model: ContentHash,
        result: Result<Vec<u8>, String>,
    ) {
        self.fetching.remove(&(id, model));
        match result {
            Ok(bytes) => {
                let mut batch = self.store.batch();
                let stored = batch.put_blob(&bytes).and_then(|_| batch.commit());
                if let Err(error) = stored {
                    return tracing::error!(job = %id, %error, "cannot store a fetched model");
                }
                self.adopt_model(id, round, model, &bytes).await;
            }
            Err(error) => {
                tracing::warn!(job = %id, round, %model, %error, "cannot fetch the model")
            }
        }
    }

    /// Makes `model` (the result of `round`) the current global model, evaluates it, and moves
    /// on: training if a round on it is open, opening the next if this node is elected.
    pub(super) async fn adopt_model(
        &mut self,
        id: JobId,
        round: Round,
        model: ContentHash,
        bytes: &[u8],
    ) {
        let me = self.identity.member_id();
        let Some(run) = self.runs.get_mut(&id) else { return };
        if round < run.state.completed_round
            || (round == run.state.completed_round && model == run.state.model)
        {
            // Already past it (a later round's model arrived sooner): its result is still
            // recorded for good.
            if let Err(error) = store::save_progress(&self.store, run, round) {
                tracing::error!(job = %id, %error, "cannot record the round");
            }
            return;
        }
        let params = match decode_params(bytes, TensorEncoding::F32Le, run.params.len()) {
            Ok(params) => params,
            Err(error) => {
                return tracing::warn!(job = %id, round, %error, "model does not fit the job's layout");
            }
        };
        run.params = Arc::new(params);
        run.state.model = model;
        run.state.completed_round = round;
        if run.open.as_ref().is_some_and(|open| open.round <= round) {
            run.open = None; // an opening of a round whose model this is (heard while fetching)
        }
        if round >= run.spec.hyperparameters.rounds {
            run.state.status = RunStatus::Completed;
            tracing::info!(job = %id, rounds = round, %model, "job complete");
        }
        let evaluation = run.local.evaluate(&run.params, round);
        let metrics = match evaluation {
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
        if round > 0 {
            // A member that caught up by fetching a round's model has no record of the round yet.
            let record = run
                .rounds
                .entry(round)
                .or_insert_with(|| RoundRecord::new(round, me, model, unix_millis()));
            record.model = Some(model);
            record.evaluations.insert(me, metrics);
            tracing::info!(job = %id, round, accuracy = ?metrics.accuracy, loss = ?metrics.loss, "evaluated global model");
        }
        if let Err(error) = store::save_progress(&self.store, run, round) {
            tracing::error!(job = %id, %error, "cannot record the round");
        }
        if round > 0 {
            let report = EvalReport {
                job: id,
                round,
                model,
                member: me,
                metrics,
                sent_at_ms: unix_millis(),
            };
            self.publish_signed(id, report, GossipMessage::EvalReport).await;
        }
        self.start_training(id);
        self.maybe_open(id, round + 1).await;
    }
}

/// How long a model is looked for among the members before the fetch gives up.
const FETCH_GIVE_UP: Duration = Duration::from_secs(300);
/// The pause after asking every source in vain, before asking them again.
const FETCH_PAUSE: Duration = Duration::from_millis(100);

/// Where a model may be fetched from.
struct Sources {
    /// The job's live members when the fetch began.
    members: Vec<MemberId>,
    /// Who is known to hold which model, as it is learned during the fetch.
    holders: Holders,
    /// This node, which is never asked.
    me: MemberId,
}

impl Sources {
    /// The order of one pass over the sources of `model`: its known holders, then the other
    /// members, each shuffled.
    fn ask_order(&self, model: &ContentHash) -> Vec<MemberId> {
        let rng = &mut rand::rng();
        let mut holders = self.holders.of(model);
        holders.remove(&self.me);
        let others: BTreeSet<MemberId> = self.members.iter().copied().collect();
        let mut others: Vec<MemberId> =
            others.into_iter().filter(|m| *m != self.me && !holders.contains(m)).collect();
        let mut order: Vec<MemberId> = holders.into_iter().collect();
        order.shuffle(rng);
        others.shuffle(rng);
        order.extend(others);
        order
    }
}

/// Asks the sources, one pass after another, for a blob until one sends it.
async fn fetch_from_any(
    network: &Network,
    sources: &Sources,
    hash: ContentHash,
    size: usize,
) -> Result<Vec<u8>, String> {
    let started = Instant::now();
    let mut last = "no member to fetch it from".to_owned();
    while started.elapsed() < FETCH_GIVE_UP {
        let order = sources.ask_order(&hash);
        if order.is_empty() {
            break;
        }
        for source in order {
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
) -> Result<Vec<u8>, String> {
    let fetch = async {
        let bytes = encode_request(&Request::Blob { hash }, &[])?;
        let peer = peer_of_member(&peer)?;
        let answer = network.request_expecting(peer, bytes.into(), size).await?;
        let (frame, _) = answer.into_received();
        let (response, payload) = decode_response(frame)?;
        match response {
            Response::Blob { hash: got } if got == hash => {
                let payload = payload.into_vec();
                fedmesh_protocol::tensor::check_blob(&hash, &payload)?;
                Ok(payload)
            }
            other => Err(anyhow::anyhow!("peer answered {other:?}")),
        }
    };
    fetch.await.map_err(|e: anyhow::Error| format!("{e:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(byte: u8) -> MemberId {
        MemberId([byte; 32])
    }

    #[test]
    fn known_holders_are_asked_first_and_this_node_never() {
        let model = ContentHash::of(b"model");
        let holders = Holders::default();
        let sources = Sources {
            members: (0..10).map(member).chain([member(3)]).collect(),
            holders: holders.clone(),
            me: member(0),
        };
        holders.add(model, member(7));
        holders.add(model, member(0));
        holders.add(ContentHash::of(b"another model"), member(5));
        for _ in 0..20 {
            let order = sources.ask_order(&model);
            assert_eq!(order[0], member(7), "the one holder first: {order:?}");
            let asked: BTreeSet<MemberId> = order.iter().copied().collect();
            assert_eq!(asked.len(), order.len(), "nobody twice: {order:?}");
            assert_eq!(asked, (1..10).map(member).collect(), "every member but this node");
        }
    }
}
