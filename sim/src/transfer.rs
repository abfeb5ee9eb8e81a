//! Everything that crosses the simulated network: gossip broadcast to every live member, updates
//! (deltas and partial aggregates) sent again with doubling backoff until their deadline, model
//! fetches from holders, and requests for missed results asked of one member at a time.

use crate::adversary;
use crate::config::AdversaryKind;
use crate::network::Index;
use crate::world::{Action, World};
use fedmesh_aggregation::ServerOptimizer;
use fedmesh_federation::member::{
    ChunkToSend, DeltaToSend, Digest, Event, Gossip, PartialToSend, Served, Update,
};
use fedmesh_protocol::ids::{ContentHash, MemberId, Round};
use fedmesh_protocol::message::{
    Heartbeat, Join, ModelDelta, PartialAggregate, RingChunk, SecureAggregation, SecureBody,
};
use fedmesh_protocol::tensor::{PayloadRef, TensorEncoding, hash_f32};
use std::sync::Arc;

/// Bytes a signed envelope adds to a body: the signer's key, the signature, a domain tag.
const ENVELOPE_BYTES: u64 = 32 + 64 + 8;
/// The first wait before an update is sent again.
const FIRST_BACKOFF_MS: u64 = 1_000;
/// How often a fetch that found no holder tries again, and for how long.
const FETCH_RETRY_MS: u64 = 100;
const FETCH_TIMEOUT_MS: u64 = 300_000;
/// How long an asker waits for a member that does not answer at all.
const ASK_TIMEOUT_MS: u64 = 2_000;
/// The size of a small request or a "not held" answer.
const SMALL_BYTES: u64 = 128;
/// How many copies of a message sent to one member go out, at most (a request sent again while
/// it gets no answer).
const DIRECT_ATTEMPTS: u32 = 5;

/// An update on its way to an aggregator.
pub struct Transfer {
    pub from: Index,
    /// The sender's incarnation: a killed sender stops sending.
    pub incarnation: u32,
    pub to: Index,
    pub update: Update,
    pub values: Arc<Vec<f32>>,
    pub until_ms: u64,
    pub backoff_ms: u64,
    /// A forgery whose signature does not verify: the receiving driver drops it.
    pub bad_signature: bool,
}

/// A model being fetched.
pub struct FetchJob {
    pub member: Index,
    pub incarnation: u32,
    pub model: ContentHash,
    /// The holders the machine named, in order.
    pub from: Vec<Index>,
    pub started_ms: u64,
}

/// A member asking others, one at a time, for a round's result it missed.
pub struct AskJob {
    pub asker: Index,
    pub incarnation: u32,
    pub round: Round,
    pub from: Vec<Index>,
    /// The position in `from` of the member asked next.
    pub next: usize,
    /// The member asked now.
    pub asked: Index,
}

/// The bytes a gossip message takes on the wire.
fn gossip_bytes(message: &Gossip) -> u64 {
    let config = bincode::config::standard();
    let encoded = match message {
        Gossip::Join(body) => bincode::serde::encode_to_vec(body, config),
        Gossip::Leave(body) => bincode::serde::encode_to_vec(body, config),
        Gossip::Heartbeat(body) => bincode::serde::encode_to_vec(body, config),
        Gossip::Open(body) => bincode::serde::encode_to_vec(&**body, config),
        Gossip::Result(body) => bincode::serde::encode_to_vec(&**body, config),
        Gossip::Eval(body) => bincode::serde::encode_to_vec(body, config),
        Gossip::Stop(body) => bincode::serde::encode_to_vec(body, config),
        Gossip::Assign(body) => bincode::serde::encode_to_vec(&**body, config),
        // The accused result travels inside with its own envelope, beside the recomputed hash.
        Gossip::FraudProof(accusation) => {
            bincode::serde::encode_to_vec(&*accusation.result, config)
                .map(|bytes| [bytes, vec![0; ENVELOPE_BYTES as usize + 32]].concat())
        }
    };
    encoded.map_or(0, |bytes| bytes.len() as u64) + ENVELOPE_BYTES
}

/// The bytes a signed body sent to one member (a join, a heartbeat) takes on the wire.
fn gossip_bytes_of(body: &impl serde::Serialize) -> u64 {
    let encoded = bincode::serde::encode_to_vec(body, bincode::config::standard());
    encoded.map_or(0, |bytes| bytes.len() as u64) + ENVELOPE_BYTES
}

/// The reference to an f32 payload of `values`, as the node describes it.
fn payload_of(values: &[f32]) -> PayloadRef {
    let bytes = values.len() as u64 * 4;
    PayloadRef {
        hash: hash_f32(values),
        encoding: TensorEncoding::F32Le,
        bytes,
        params: values.len() as u64,
    }
}

impl World {
    fn id_of(&self, member: Index) -> MemberId {
        self.nodes[member].setup.me
    }

    /// Indices of the members a machine named (ids the simulation does not know are skipped).
    fn indices(&self, members: &[MemberId]) -> Vec<Index> {
        members.iter().filter_map(|id| self.index_of(id)).collect()
    }

    /// Counts one message copy of `bytes` put on the network.
    fn count(&mut self, bytes: u64) {
        self.counters.messages += 1;
        self.counters.bytes += bytes;
    }

    /// Whether a copy from `from` to `to` gets through now: `to` alive, on `from`'s side of
    /// any partition, and the copy not lost.
    fn gets_through(&mut self, from: Index, to: Index) -> bool {
        if !self.is_alive(to) || !self.network.reachable(from, to) {
            self.counters.undeliverable += 1;
            return false;
        }
        if self.network.lost(&mut self.rng) {
            self.counters.lost += 1;
            return false;
        }
        true
    }

    /// Broadcasts `message` from `from` to every other live member.
    pub fn publish(&mut self, from: Index, message: Gossip) {
        let bytes = gossip_bytes(&message);
        let message = Arc::new(message);
        for to in 0..self.nodes.len() {
            if to == from || !self.is_alive(to) {
                continue;
            }
            self.count(bytes);
            if self.gets_through(from, to) {
                let delay = self.network.latency_ms(from, to);
                self.queue.after(delay, Action::Gossip { to, from, message: message.clone() });
            }
        }
    }

    /// Sends `from`'s join (and, with an answer, its heartbeat) to one member as a request.
    pub fn send_join(
        &mut self,
        from: Index,
        to: MemberId,
        (join, heartbeat): (Join, Option<Heartbeat>),
        asks: bool,
    ) {
        let bytes = gossip_bytes_of(&join) + heartbeat.as_ref().map_or(0, gossip_bytes_of);
        let signer = self.id_of(from);
        self.send_direct(from, to, bytes, Event::JoinSent { signer, join, asks, heartbeat });
    }

    /// Sends `from`'s pull of the member list (its membership's digest) to one member.
    pub fn ask_members(&mut self, from: Index, to: MemberId, digest: Digest) {
        let bytes = digest.0.len() as u64 * 8 + ENVELOPE_BYTES;
        let signer = self.id_of(from);
        self.send_direct(from, to, bytes, Event::MembersAsked { from: signer, digest });
    }

    /// Sends the members `from` lists in answer to a pull.
    pub fn send_members(&mut self, from: Index, to: MemberId, members: Vec<MemberId>) {
        let bytes = members.len() as u64 * 32 + ENVELOPE_BYTES;
        let signer = self.id_of(from);
        self.send_direct(from, to, bytes, Event::MembersSent { from: signer, members });
    }

    /// Sends a secure-aggregation message to one member as a request (its masked values inline).
    pub fn send_secure(&mut self, from: Index, to: MemberId, message: SecureAggregation) {
        let values = match &message.body {
            SecureBody::Masked { values, .. } => values.len() as u64 * 8,
            _ => 0,
        };
        let bytes = values + ENVELOPE_BYTES;
        let signer = self.id_of(from);
        let event = Event::Secure { signer, message, request: 0 };
        self.send_direct(from, to, bytes, event);
    }

    /// Sends a message to one member as a request: a lost copy is sent again after a doubling
    /// backoff (1 s first), as an unanswered request is, up to `DIRECT_ATTEMPTS` copies.
    fn send_direct(&mut self, from: Index, to: MemberId, bytes: u64, event: Event) {
        let Some(to) = self.index_of(&to) else { return };
        let (mut wait, mut backoff) = (0, FIRST_BACKOFF_MS);
        for _ in 0..DIRECT_ATTEMPTS {
            self.count(bytes);
            if self.gets_through(from, to) {
                let delay = wait + self.network.latency_ms(from, to);
                let event = Box::new(event);
                self.queue.after(delay, Action::Direct { to, from, event });
                return;
            }
            if !self.is_alive(to) || !self.network.reachable(from, to) {
                return; // no answer will come: the request fails
            }
            wait += backoff;
            backoff *= 2;
        }
    }

    /// A message sent to one member arrives (if its link is still up and its receiver alive).
    pub fn deliver_direct(&mut self, to: Index, from: Index, event: Event) {
        if !self.is_alive(to) || !self.network.reachable(from, to) {
            self.counters.undeliverable += 1;
            return;
        }
        self.feed(to, event);
    }

    /// A gossip copy arrives (if its link is still up and its receiver alive).
    pub fn deliver_gossip(&mut self, to: Index, from: Index, message: &Gossip) {
        if !self.is_alive(to) || !self.network.reachable(from, to) {
            self.counters.undeliverable += 1;
            return;
        }
        let signer = self.id_of(from);
        self.feed(to, Event::Gossip { signer, message: message.clone() });
        self.maybe_hijack(to, from, message);
    }

    /// Sends a trainer's delta (and a forger's forgeries beside it).
    pub fn send_delta(&mut self, from: Index, to: MemberId, delta: DeltaToSend, until_ms: u64) {
        let body = ModelDelta {
            job: self.nodes[from].setup.job,
            round: delta.round,
            base_model: delta.base,
            member: self.id_of(from),
            samples: delta.samples,
            metrics: delta.metrics,
            payload: payload_of(&delta.values),
        };
        if self.config.verification.is_some() {
            // Kept for auditors, as the node's executor keeps each delta it sends.
            self.deltas.put(body.payload.hash, delta.values.clone(), from);
        }
        if self.nodes[from].adversary == Some(AdversaryKind::ForgedDeltas) {
            for forgery in adversary::forgeries(&body) {
                let update = Update::Delta(forgery.delta);
                let values = delta.values.clone();
                self.send(from, to, update, values, until_ms, forgery.bad_signature);
            }
        }
        self.send(from, to, Update::Delta(body), delta.values, until_ms, false);
    }

    /// Sends a slot's partial aggregate up a tier.
    pub fn send_partial(
        &mut self,
        from: Index,
        to: MemberId,
        partial: PartialToSend,
        until_ms: u64,
    ) {
        let body = PartialAggregate {
            job: self.nodes[from].setup.job,
            round: partial.round,
            base_model: partial.base,
            opened_at_ms: partial.opened_at_ms,
            group: partial.group,
            aggregator: self.id_of(from),
            mean: payload_of(&partial.mean),
            total_weight: partial.total_weight,
            contributions: partial.contributions,
        };
        self.send(from, to, Update::Partial(body), partial.mean, until_ms, false);
    }

    /// Sends one ring all-reduce chunk to the ring's next member.
    pub fn send_chunk(&mut self, from: Index, to: MemberId, chunk: ChunkToSend, until_ms: u64) {
        let body = RingChunk {
            job: self.nodes[from].setup.job,
            round: chunk.round,
            base_model: chunk.base,
            opened_at_ms: chunk.opened_at_ms,
            member: self.id_of(from),
            step: chunk.step,
            chunk: chunk.chunk,
            contributions: chunk.contributions,
            values: payload_of(&chunk.values),
        };
        self.send(from, to, Update::Chunk(body), chunk.values, until_ms, false);
    }

    fn send(
        &mut self,
        from: Index,
        to: MemberId,
        update: Update,
        values: Arc<Vec<f32>>,
        until_ms: u64,
        bad_signature: bool,
    ) {
        let Some(to) = self.index_of(&to) else { return };
        let incarnation = self.nodes[from].incarnation;
        self.attempt_send(Transfer {
            from,
            incarnation,
            to,
            update,
            values,
            until_ms,
            backoff_ms: FIRST_BACKOFF_MS,
            bad_signature,
        });
    }

    /// One attempt: on its way, or tried again later.
    pub fn attempt_send(&mut self, transfer: Transfer) {
        if !self.is_current(transfer.from, transfer.incarnation) {
            return;
        }
        let bytes = transfer.values.len() as u64 * 4 + 512;
        self.count(bytes);
        if !self.gets_through(transfer.from, transfer.to) {
            return self.send_again(transfer);
        }
        let delay = self.network.transfer_ms(transfer.from, transfer.to, bytes);
        self.queue.after(delay, Action::Arrive(Box::new(transfer)));
    }

    /// An update arrives: dropped if forged, handed to the aggregator's machine otherwise.
    pub fn arrive(&mut self, transfer: Transfer) {
        let (from, to) = (transfer.from, transfer.to);
        if !self.is_alive(to) || !self.network.reachable(from, to) {
            self.counters.undeliverable += 1;
            return self.send_again(transfer);
        }
        if transfer.bad_signature {
            self.counters.forged_dropped += 1;
            return;
        }
        let request = self.request_id();
        let signer = self.id_of(from);
        let event = Event::Update {
            signer,
            update: transfer.update,
            values: transfer.values.into(),
            request,
        };
        self.feed(to, event);
    }

    /// Schedules the next attempt, with a doubled wait, if the deadline allows it.
    fn send_again(&mut self, mut transfer: Transfer) {
        let wait = transfer.backoff_ms;
        if self.queue.now() + wait >= transfer.until_ms {
            return;
        }
        self.counters.resent += 1;
        transfer.backoff_ms *= 2;
        self.queue.after(wait, Action::Send(Box::new(transfer)));
    }

    /// Starts fetching `model` for `member`.
    pub fn fetch(&mut self, member: Index, model: ContentHash, from: &[MemberId]) {
        let job = FetchJob {
            member,
            incarnation: self.nodes[member].incarnation,
            model,
            from: self.indices(from),
            started_ms: self.queue.now(),
        };
        self.attempt_fetch(job);
    }

    /// The first member that can serve `model` to `member` now: its own store, then the named
    /// holders in order, then any live holder.
    fn source_of(&self, job: &FetchJob) -> Option<Index> {
        let member = job.member;
        if self.blobs.holds(member, &job.model) {
            return Some(member);
        }
        let usable = |holder: Index| {
            holder != member
                && self.is_alive(holder)
                && self.network.reachable(member, holder)
                && self.blobs.holds(holder, &job.model)
        };
        job.from
            .iter()
            .copied()
            .find(|&h| usable(h))
            .or_else(|| self.blobs.find_holder(&job.model, usable))
    }

    /// One attempt at a fetch: the model arrives, or the fetch tries again, or gives up.
    pub fn attempt_fetch(&mut self, job: FetchJob) {
        if !self.is_current(job.member, job.incarnation) {
            return;
        }
        let member = job.member;
        let source = self.source_of(&job);
        let params = self.blobs.get(&job.model).cloned();
        match (source, params) {
            (Some(source), Some(params)) if source == member => {
                self.later(member, 0, Event::Fetched { model: job.model, outcome: Ok(params) });
            }
            (Some(source), Some(params)) => {
                let bytes = params.len() as u64 * 4;
                self.count(bytes);
                if self.network.lost(&mut self.rng) {
                    self.counters.lost += 1;
                    return self.fetch_again(job);
                }
                self.blobs.put(job.model, params.clone(), member);
                let delay = self.network.transfer_ms(source, member, bytes);
                self.later(member, delay, Event::Fetched { model: job.model, outcome: Ok(params) });
            }
            _ => self.fetch_again(job),
        }
    }

    /// Fetches a server optimizer's state blob for `member` in one attempt (its machine asks
    /// again at a later tick if it fails): from its own store, the named holders in order, or
    /// any live holder it reaches; decoded as the node's executor decodes it.
    pub fn fetch_optimizer_state(&mut self, member: Index, state: ContentHash, from: &[MemberId]) {
        let named = self.indices(from);
        let usable = |holder: Index| {
            self.optimizer_states.holds(holder, &state)
                && (holder == member
                    || (self.is_alive(holder) && self.network.reachable(member, holder)))
        };
        let source = [member]
            .into_iter()
            .chain(named)
            .find(|&holder| usable(holder))
            .or_else(|| self.optimizer_states.find_holder(&state, usable));
        let blob = source.and_then(|_| self.optimizer_states.get(&state).cloned());
        let Some((source, blob)) = source.zip(blob) else {
            let outcome = Err(format!("no live member holds optimizer state {state}"));
            let event = Event::OptimizerStateFetched { state, outcome };
            return self.later(member, FETCH_RETRY_MS, event);
        };
        let bytes = blob.len() as u64;
        let delay = match source == member {
            true => 0,
            false => {
                self.count(bytes);
                self.optimizer_states.put(state, blob.clone(), member);
                self.network.transfer_ms(source, member, bytes)
            }
        };
        let spec = self.config.strategy.server.as_ref();
        let decoded = ServerOptimizer::decode_state(spec, self.initial.1.len(), &blob);
        let outcome = decoded.map(Arc::new).map_err(|error| error.to_string());
        self.later(member, delay, Event::OptimizerStateFetched { state, outcome });
    }

    fn fetch_again(&mut self, job: FetchJob) {
        if self.queue.now() + FETCH_RETRY_MS - job.started_ms > FETCH_TIMEOUT_MS {
            self.counters.fetch_failures += 1;
            let outcome = Err(format!("no live member holds {}", job.model));
            return self.later(job.member, 0, Event::Fetched { model: job.model, outcome });
        }
        self.queue.after(FETCH_RETRY_MS, Action::Fetch(Box::new(job)));
    }

    /// Starts asking `from`, in order, for the result of `round`.
    pub fn ask(&mut self, asker: Index, round: Round, from: &[MemberId]) {
        let job = AskJob {
            asker,
            incarnation: self.nodes[asker].incarnation,
            round,
            from: self.indices(from),
            next: 0,
            asked: asker,
        };
        self.ask_next(job);
    }

    /// Asks the next member on the list (nothing happens when the list is done).
    pub fn ask_next(&mut self, mut job: AskJob) {
        if !self.is_current(job.asker, job.incarnation) {
            return;
        }
        let Some(&asked) = job.from.get(job.next) else { return };
        job.next += 1;
        job.asked = asked;
        self.count(SMALL_BYTES);
        if asked == job.asker || !self.gets_through(job.asker, asked) {
            self.queue.after(ASK_TIMEOUT_MS, Action::AskNext(Box::new(job)));
            return;
        }
        let request = self.request_id();
        let delay = self.network.latency_ms(job.asker, asked);
        self.asks.insert(request, job);
        self.queue.after(delay, Action::AskArrive { request });
        self.queue.after(ASK_TIMEOUT_MS, Action::AskTimeout { request });
    }

    /// A request for a missed result reaches the member asked; if its machine serves nothing,
    /// the "not held" answer goes back and the asker moves on.
    pub fn ask_arrive(&mut self, request: u64) {
        let Some(job) = self.asks.get(&request) else { return };
        let (asked, asker, round) = (job.asked, job.asker, job.round);
        let from = self.id_of(asker);
        self.feed(asked, Event::ResultAsked { from, round, request });
        if self.is_alive(asked)
            && let Some(job) = self.asks.remove(&request)
        {
            self.count(SMALL_BYTES);
            let delay = self.network.latency_ms(asked, asker);
            self.queue.after(delay, Action::AskNext(Box::new(job)));
        }
    }

    /// Nobody answered in time: the asker moves on.
    pub fn ask_timeout(&mut self, request: u64) {
        if let Some(job) = self.asks.remove(&request) {
            self.ask_next(job);
        }
    }

    /// A member serves the result it was asked for: it reaches the asker as gossip signed by
    /// the aggregator (its own result) or by the member it was taken from.
    pub fn serve(&mut self, member: Index, request: u64, result: Served) {
        let Some(job) = self.asks.remove(&request) else { return };
        let (signer, ready) = match result {
            Served::Own(ready) => (member, ready),
            Served::Taken { signer, ready } => match self.index_of(&signer) {
                Some(signer) => (signer, ready),
                None => return,
            },
        };
        let message = Gossip::Result(Arc::new(ready));
        self.count(gossip_bytes(&message));
        if self.gets_through(member, job.asker) {
            let delay = self.network.latency_ms(member, job.asker);
            let signer = self.id_of(signer);
            self.later(job.asker, delay, Event::Gossip { signer, message });
        }
    }
}
