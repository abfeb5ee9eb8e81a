//! The round rules on the machines themselves: a few members wired to each other by a queue,
//! with a manual clock, instant delivery, and faults chosen per test.

use super::*;
use crate::coordinator::{CoordinatedJob, CoordinatedState};
use fedmesh_aggregation::ServerOptimizer;
use fedmesh_protocol::message::{
    Assignment, Contribution, EvalMetrics, EvalReport, JobStop, ModelDelta, PartialAggregate,
    RoundOpen,
};
use fedmesh_protocol::tensor::{PayloadRef, TensorEncoding, hash_f32};
use std::collections::BTreeSet;

const PARAMS: usize = 8;
/// The clock's step between ticks.
const STEP_MS: u64 = 100;

thread_local! {
    /// Whether this test's members have real keys (a secure job's round keys are signed).
    static REAL_KEYS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn member_id(byte: u8) -> MemberId {
    if REAL_KEYS.get() {
        return identity(byte).member_id();
    }
    MemberId([byte; 32])
}

fn identity(byte: u8) -> fedmesh_protocol::identity::Identity {
    fedmesh_protocol::identity::Identity::from_seed([byte; 32])
}

fn spec(topology: &str, rounds: u64, deadline_secs: u64) -> JobSpec {
    let json = serde_json::json!({
        "name": "rules", "owner": member_id(1).to_string(), "model": "softmax",
        "dataset": "mnist5k", "tag": topology,
        "hyperparameters": {"rounds": rounds}, "round_deadline_secs": deadline_secs,
    });
    let bytes = serde_json::to_vec(&json).expect("json");
    JobSpec::from_json(&bytes).expect("a valid spec")
}

fn payload_ref(values: &[f32]) -> PayloadRef {
    PayloadRef {
        hash: hash_f32(values),
        encoding: TensorEncoding::F32Le,
        bytes: values.len() as u64 * 4,
        params: values.len() as u64,
    }
}

/// A filter on deliveries: (from, to, effect) -> deliver?
type Drop = Box<dyn Fn(MemberId, MemberId, &Event) -> bool>;

/// The key the coordinator of an orchestrated job signs with.
fn coordinator_id() -> MemberId {
    member_id(100)
}

/// A job its coordinator orchestrates; with `fallback_secs`, members elect leaders themselves
/// once they have not heard it for that long.
fn orchestrated_spec(rounds: u64, fallback_secs: Option<u64>) -> JobSpec {
    let mut spec = spec("central", rounds, 5);
    spec.coordinator = Some(coordinator_id());
    spec.coordinator_fallback_secs = fallback_secs;
    spec
}

/// The job's coordinator as the node runs it (`CoordinatedJob`): it hears the members' gossip,
/// says it is there every second, assigns each round (again when it must) and repeats the
/// assignment every 3 s for members that missed it.
struct Coordinator {
    job: CoordinatedJob,
    /// Says nothing while set (it still hears the members).
    silent: bool,
    /// Assigns each round's top slot to another member than the one the election picks.
    overrides: bool,
    /// The leader of each round's last assignment, and the member the election picked.
    assigned: BTreeMap<Round, MemberId>,
    elected: BTreeMap<Round, MemberId>,
}

impl Coordinator {
    fn new(job: JobId, spec: JobSpec) -> Self {
        let tag = fedmesh_topologies::Tag::from_spec(&spec.tag).expect("tag");
        let job = CoordinatedJob::new(job, spec, tag, CoordinatedState::new());
        Self {
            job,
            silent: false,
            overrides: false,
            assigned: BTreeMap::new(),
            elected: BTreeMap::new(),
        }
    }

    /// A member's gossip, as the node's coordinator hears it.
    fn hear(&mut self, signer: MemberId, message: &Gossip, now: u64) {
        match message {
            Gossip::Join(join) => _ = self.job.on_join(join, now),
            Gossip::Leave(leave) => self.job.on_leave(&leave.member),
            Gossip::Heartbeat(beat) => self.job.on_heartbeat(beat, now),
            Gossip::Result(ready) => {
                self.job.on_result(signer, ready);
            }
            _ => {}
        }
    }

    /// The next assignment of the round in progress (or of the next round), its top slot
    /// given to another member than the elected one when `overrides` is set.
    fn assignment(&mut self, now: u64) -> Option<(Assignment, MemberId)> {
        let (mut assignment, elected) = self.job.assign(now).ok()?;
        self.elected.insert(assignment.round, elected);
        if !self.overrides {
            return Some((assignment, elected));
        }
        let other = assignment.roles.keys().copied().find(|m| *m != elected)?;
        assignment.aggregators.insert("top".into(), other);
        Some((assignment, other))
    }

    /// What it publishes now (as `tick_coordinated` in the node).
    fn tick(&mut self, now: u64) -> Vec<Gossip> {
        if self.silent {
            return Vec::new();
        }
        let mut said = Vec::new();
        if now.saturating_sub(self.job.last_heartbeat_ms) >= 1_000 {
            self.job.last_heartbeat_ms = now;
            self.job.heartbeat_sequence += 1;
            let state = &self.job.state;
            said.push(Gossip::Heartbeat(Heartbeat {
                job: self.job.id,
                member: coordinator_id(),
                round: state.completed_round + 1,
                model: state.model.unwrap_or(ContentHash([0; 32])),
                sequence: self.job.heartbeat_sequence,
                sent_at_ms: now,
            }));
        }
        if self.job.state.completed_round >= self.job.spec.hyperparameters.rounds {
            return said;
        }
        let why = match (self.job.take_back_lost_result(now), &self.job.state.assignment) {
            (Some(why), _) => Some(why),
            (None, None) => None,
            (None, Some(assignment)) => match self.job.needs_reassignment(now, 2_000) {
                Some(why) => Some(why),
                None if now.saturating_sub(self.job.published_ms) >= 3_000 => {
                    self.job.published_ms = now;
                    let again = Assignment { sent_at_ms: now, ..assignment.clone() };
                    said.push(Gossip::Assign(Arc::new(again)));
                    return said;
                }
                None => return said,
            },
        };
        if let Some((assignment, leader)) = self.assignment(now) {
            self.job.record_assignment(&assignment, leader, why);
            self.job.published_ms = now;
            self.assigned.insert(assignment.round, leader);
            said.push(Gossip::Assign(Arc::new(assignment)));
        }
        said
    }
}

/// Members wired to each other through one queue.
struct Net {
    spec: JobSpec,
    job: JobId,
    now: u64,
    members: BTreeMap<MemberId, Member>,
    down: BTreeSet<MemberId>,
    queue: VecDeque<(MemberId, MemberId, Event)>,
    blobs: BTreeMap<ContentHash, Arc<Vec<f32>>>,
    snapshots: BTreeMap<MemberId, Snapshot>,
    groups: BTreeMap<MemberId, String>,
    drop: Option<Drop>,
    refusals: Vec<Refusal>,
    /// The owner's tickets the members present in their joins (an owner-admitted job).
    tickets: BTreeMap<MemberId, Signed<Ticket>>,
    opened: BTreeMap<(Round, u64), MemberId>,
    next_request: u64,
    /// Members added late or restarted: they record only the rounds they saw.
    may_miss_rounds: BTreeSet<MemberId>,
    /// Members whose joins say peers cannot dial them.
    behind_nat: BTreeSet<MemberId>,
    /// How long a member's local training takes (instant for the others).
    train_ms: BTreeMap<MemberId, u64>,
    /// How many updates each member sent for each round.
    deltas_sent: BTreeMap<(MemberId, Round), usize>,
    /// How late gossip reaches a member (at once for the others): a slow mesh path, or a
    /// validation that finishes after the direct messages sent on the same news.
    gossip_lag_ms: BTreeMap<MemberId, u64>,
    /// Events held until their time: (due, member, event).
    later: Vec<(u64, MemberId, Event)>,
    /// How many times each member was asked to train for each round.
    trainings: BTreeMap<(MemberId, Round), usize>,
    /// Every join sent: (from, to one member or `None` for the topic, asks).
    joins: Vec<(MemberId, Option<MemberId>, bool)>,
    /// The job's coordinator, when its spec names one.
    coordinator: Option<Coordinator>,
    /// Every gossip message a member refused, and why.
    rejections: Vec<(MemberId, Refusal)>,
    /// Every model a member asked for: (member, round, model, when).
    fetches: Vec<(MemberId, Round, ContentHash, u64)>,
    /// Server optimizers' state blobs stored, by hash, and every one a member asked for:
    /// (member, round, state).
    states: BTreeMap<ContentHash, Vec<u8>>,
    /// Every update trained, by the hash of its values, and the base model it trained on.
    trained: BTreeMap<ContentHash, Arc<Vec<f32>>>,
    trained_bases: BTreeMap<ContentHash, ContentHash>,
    state_fetches: Vec<(MemberId, Round, ContentHash)>,
    /// Members whose fetches fail.
    cannot_fetch: BTreeSet<MemberId>,
    /// Every message published, with its signer (what a hostile peer could capture).
    published: Vec<(MemberId, Gossip)>,
    /// Deltas kept for auditors (verifiable jobs), by payload hash.
    deltas: BTreeMap<ContentHash, Arc<Vec<f32>>>,
    /// Every audit asked for: (auditor, round).
    audits: Vec<(MemberId, Round)>,
    /// A member whose stored models get a backdoor (it announces a forged aggregate).
    forger: Option<MemberId>,
    /// The secure rounds' evidence kept for auditors, by hash.
    evidence: BTreeMap<ContentHash, Arc<Vec<u8>>>,
    /// Members' signing keys (secure jobs).
    identities: BTreeMap<MemberId, Arc<fedmesh_protocol::identity::Identity>>,
    /// Every secure message sent: (from, to, message).
    secure_sent: Vec<(MemberId, MemberId, fedmesh_protocol::message::SecureAggregation)>,
}

impl Net {
    /// A job of `members`, who all know each other before the first tick.
    fn new(spec: JobSpec, members: &[(u8, &str)]) -> Self {
        Self::with_job(spec, members, JobId(ContentHash::of(b"rules")))
    }

    /// A job of `members` with the id `job` (its elections follow from it).
    fn with_job(spec: JobSpec, members: &[(u8, &str)], job: JobId) -> Self {
        let initial = Arc::new(vec![0.0f32; PARAMS]);
        let model = hash_f32(&initial);
        let coordinator = spec.coordinator.map(|_| Coordinator::new(job, spec.clone()));
        let mut net = Self {
            spec,
            job,
            now: 1_000,
            members: BTreeMap::new(),
            down: BTreeSet::new(),
            queue: VecDeque::new(),
            blobs: BTreeMap::from([(model, initial)]),
            snapshots: BTreeMap::new(),
            groups: BTreeMap::new(),
            drop: None,
            refusals: Vec::new(),
            opened: BTreeMap::new(),
            next_request: 0,
            may_miss_rounds: BTreeSet::new(),
            behind_nat: BTreeSet::new(),
            train_ms: BTreeMap::new(),
            gossip_lag_ms: BTreeMap::new(),
            deltas_sent: BTreeMap::new(),
            later: Vec::new(),
            trainings: BTreeMap::new(),
            joins: Vec::new(),
            coordinator,
            rejections: Vec::new(),
            fetches: Vec::new(),
            states: BTreeMap::new(),
            trained: BTreeMap::new(),
            trained_bases: BTreeMap::new(),
            state_fetches: Vec::new(),
            cannot_fetch: BTreeSet::new(),
            published: Vec::new(),
            tickets: BTreeMap::new(),
            deltas: BTreeMap::new(),
            audits: Vec::new(),
            forger: None,
            evidence: BTreeMap::new(),
            identities: BTreeMap::new(),
            secure_sent: Vec::new(),
        };
        for (byte, group) in members {
            net.add(*byte, group);
        }
        net.introduce();
        net
    }

    /// Every member's join reaches every other (those added later missed the first ones).
    fn introduce(&mut self) {
        let joins: Vec<(MemberId, Join)> = self
            .members
            .values()
            .map(|m| {
                let members = &m.state().members;
                let info = members.info(&m.me()).expect("itself");
                let join = Join {
                    job: self.job,
                    member: m.me(),
                    group: info.group,
                    roles: info.roles,
                    samples: members.declared_samples(&m.me()).expect("itself"),
                    reachable: info.reachable,
                    sent_at_ms: self.now,
                    ticket: m.setup.ticket.clone().map(Box::new),
                };
                (m.me(), join)
            })
            .collect();
        for (id, join) in joins {
            self.publish(id, Publish::Join(join));
        }
    }

    fn setup(&self, id: MemberId) -> Setup {
        Setup {
            me: id,
            job: self.job,
            spec: self.spec.clone(),
            tag: fedmesh_topologies::Tag::from_spec(&self.spec.tag).expect("tag"),
            group: self.groups[&id].clone(),
            roles: Vec::new(),
            samples: 10 + u64::from(id.0[0]),
            reachable: !self.behind_nat.contains(&id),
            noise_key: [id.0[0]; 32],
            ticket: self.tickets.get(&id).cloned(),
            identity: self.identities.get(&id).cloned(),
        }
    }

    fn add(&mut self, byte: u8, group: &str) {
        let id = member_id(byte);
        if REAL_KEYS.get() {
            self.identities.insert(id, Arc::new(identity(byte)));
        }
        self.groups.insert(id, group.to_owned());
        let initial = Arc::new(vec![0.0f32; PARAMS]);
        let (member, effects) = Member::join(self.setup(id), hash_f32(&initial), initial, self.now);
        self.members.insert(id, member);
        self.route(id, effects);
    }

    fn kill(&mut self, byte: u8) {
        self.down.insert(member_id(byte));
    }

    /// Rebuilds a killed member from its last snapshot.
    fn restart(&mut self, byte: u8) {
        let id = member_id(byte);
        self.down.remove(&id);
        self.may_miss_rounds.insert(id);
        let snapshot = self.snapshots[&id].clone();
        let params = self.blobs[&snapshot.state.model].clone();
        let (member, effects) = Member::restore(self.setup(id), snapshot, params, self.now);
        self.members.insert(id, member);
        self.route(id, effects);
    }

    fn send(&mut self, from: MemberId, to: MemberId, event: Event) {
        let dropped = self.drop.as_ref().is_some_and(|drop| drop(from, to, &event));
        if !self.down.contains(&to) && !dropped {
            self.queue.push_back((from, to, event));
        }
    }

    fn request(&mut self) -> u64 {
        self.next_request += 1;
        self.next_request
    }

    /// Carries out what a member asked for.
    fn route(&mut self, from: MemberId, effects: Vec<Effect>) {
        for effect in effects {
            self.carry_out(from, effect);
        }
    }

    fn carry_out(&mut self, from: MemberId, effect: Effect) {
        match effect {
            Effect::Publish(publish) => self.publish(from, publish),
            Effect::SendSecure { to, message, .. } => {
                self.secure_sent.push((from, to, message.clone()));
                let request = self.request();
                self.send(from, to, Event::Secure { signer: from, message, request });
            }
            Effect::SendDelta { to, delta, .. } => {
                *self.deltas_sent.entry((from, delta.round)).or_default() += 1;
                let body = ModelDelta {
                    job: self.job,
                    round: delta.round,
                    base_model: delta.base,
                    member: from,
                    samples: delta.samples,
                    metrics: delta.metrics,
                    payload: payload_ref(&delta.values),
                };
                self.deltas.insert(body.payload.hash, delta.values.clone());
                let request = self.request();
                let update = Update::Delta(body);
                self.send(
                    from,
                    to,
                    Event::Update { signer: from, update, values: delta.values.into(), request },
                );
            }
            Effect::SendPartial { to, partial, .. } => {
                let body = PartialAggregate {
                    job: self.job,
                    round: partial.round,
                    base_model: partial.base,
                    opened_at_ms: partial.opened_at_ms,
                    group: partial.group,
                    aggregator: from,
                    mean: payload_ref(&partial.mean),
                    total_weight: partial.total_weight,
                    contributions: partial.contributions,
                };
                let request = self.request();
                let update = Update::Partial(body);
                self.send(
                    from,
                    to,
                    Event::Update { signer: from, update, values: partial.mean.into(), request },
                );
            }
            Effect::SendChunk { to, chunk, .. } => {
                let body = fedmesh_protocol::message::RingChunk {
                    job: self.job,
                    round: chunk.round,
                    base_model: chunk.base,
                    opened_at_ms: chunk.opened_at_ms,
                    member: from,
                    step: chunk.step,
                    chunk: chunk.chunk,
                    contributions: chunk.contributions,
                    values: payload_ref(&chunk.values),
                };
                let request = self.request();
                let update = Update::Chunk(body);
                self.send(
                    from,
                    to,
                    Event::Update { signer: from, update, values: chunk.values.into(), request },
                );
            }
            Effect::SendJoin { to, join, asks, heartbeat } => {
                self.joins.push((from, Some(to), asks));
                self.send(from, to, Event::JoinSent { signer: from, join, asks, heartbeat });
            }
            Effect::AskMembers { to, digest } => {
                self.send(from, to, Event::MembersAsked { from, digest })
            }
            Effect::SendMembers { to, members } => {
                self.send(from, to, Event::MembersSent { from, members })
            }
            Effect::Answer { outcome: Err(refusal), .. } => self.refusals.push(refusal),
            Effect::ServeResult { to, result, .. } => {
                let (signer, ready) = match result {
                    Served::Own(ready) => (from, ready),
                    Served::Taken { signer, ready } => (signer, ready),
                };
                self.send(
                    from,
                    to,
                    Event::Gossip { signer, message: Gossip::Result(Arc::new(ready)) },
                );
            }
            Effect::AskResult { round, from: asked } => {
                for member in asked {
                    let request = self.request();
                    self.send(from, member, Event::ResultAsked { from, round, request });
                }
            }
            Effect::Train { round, base, params } => {
                let step = f32::from(from.0[0]) / 100.0;
                let delta: Vec<f32> = params.iter().map(|p| step - p / 10.0).collect();
                let update = LocalUpdate {
                    delta: Arc::new(delta),
                    samples: 10 + u64::from(from.0[0]),
                    metrics: fedmesh_protocol::message::TrainMetrics { loss: 1.0, accuracy: None },
                    seconds: 0.1,
                };
                self.trained.insert(hash_f32(&update.delta), update.delta.clone());
                self.trained_bases.insert(hash_f32(&update.delta), base);
                *self.trainings.entry((from, round)).or_default() += 1;
                let trained = Event::Trained { round, base, outcome: Ok(update) };
                match self.train_ms.get(&from) {
                    Some(ms) => self.later.push((self.now + ms, from, trained)),
                    None => self.send(from, from, trained),
                }
            }
            Effect::Fetch { round, model, .. } => {
                self.fetches.push((from, round, model, self.now));
                let found = self.blobs.get(&model).filter(|_| !self.cannot_fetch.contains(&from));
                let outcome = found.cloned().ok_or_else(|| "nowhere".to_owned());
                self.send(from, from, Event::Fetched { model, outcome });
            }
            Effect::FetchOptimizerState { round, state, .. } => {
                self.state_fetches.push((from, round, state));
                let outcome = self.decoded_state(&state);
                self.send(from, from, Event::OptimizerStateFetched { state, outcome });
            }
            Effect::StoreModel { round, params, optimizer } => {
                let params = match self.forger {
                    Some(forger) if forger == from => {
                        Arc::new(params.iter().map(|p| p + 0.5).collect::<Vec<f32>>())
                    }
                    _ => params,
                };
                let model = hash_f32(&params);
                self.blobs.insert(model, params);
                let optimizer_state = optimizer.map(|optimizer| {
                    let blob = optimizer.encode_state();
                    let state = ContentHash::of(&blob);
                    self.states.insert(state, blob);
                    state
                });
                self.send(from, from, Event::Stored { round, model, optimizer_state });
            }
            Effect::Evaluate { round, model, .. } => {
                let metrics = fedmesh_protocol::message::EvalMetrics::default();
                self.send(from, from, Event::Evaluated { round, model, metrics });
            }
            Effect::Persist(snapshot) => {
                self.snapshots.insert(from, snapshot);
            }
            Effect::Log(notice) => {
                if std::env::var_os("RULES_LOG").is_some() {
                    eprintln!("{} {} {:?}", self.now, from.0[0], notice);
                }
            }
            Effect::Rejected(refusal) => self.rejections.push((from, refusal)),
            Effect::Audit { round, result, .. } => {
                self.audits.push((from, round));
                let outcome = self.recompute(&result);
                self.send(from, from, Event::Audited { model: result.model, outcome });
            }
            Effect::KeepContributions { own, evidence, .. } => {
                if let Some(own) = own {
                    self.deltas.insert(hash_f32(&own), own);
                }
                for record in evidence {
                    self.evidence.insert(ContentHash::of(&record), record);
                }
            }
            Effect::ProofRefuted { refusal, .. } => self.rejections.push((from, refusal)),
            Effect::ServeContribution { .. } => {}
            Effect::Answer { .. } | Effect::WakeAt(_) => {}
        }
    }

    fn publish(&mut self, from: MemberId, publish: Publish) {
        let message = match publish {
            Publish::Join(join) => {
                self.joins.push((from, None, false));
                Gossip::Join(join)
            }
            Publish::Leave(leave) => Gossip::Leave(leave),
            Publish::Heartbeat(beat) => Gossip::Heartbeat(beat),
            Publish::Open(open) => {
                self.opened.insert((open.round, open.opened_at_ms), from);
                Gossip::Open(Arc::new(open))
            }
            Publish::Result(ready) => Gossip::Result(Arc::new(ready)),
            Publish::Eval(report) => Gossip::Eval(report),
            Publish::FraudProof(accusation) => Gossip::FraudProof(Arc::new(accusation)),
        };
        if let Some(coordinator) = self.coordinator.as_mut() {
            coordinator.hear(from, &message, self.now);
        }
        self.published.push((from, message.clone()));
        self.gossip(from, message);
    }

    /// A stored optimizer state, decoded as the node's executor decodes it.
    fn decoded_state(&self, state: &ContentHash) -> Result<Arc<ServerOptimizer>, String> {
        let blob = self.states.get(state).ok_or("no such optimizer state")?;
        let spec = self.spec.strategy.server.as_ref();
        let decoded = ServerOptimizer::decode_state(spec, PARAMS, blob);
        decoded.map(Arc::new).map_err(|e| e.to_string())
    }

    /// What an auditor's executor reports: the result's model recomputed from its base and the
    /// kept deltas it lists.
    fn recompute(&self, result: &AggregateReady) -> Result<ContentHash, String> {
        let base = self.blobs.get(&result.base_model).ok_or("no base model")?;
        if self.spec.privacy.secure_aggregation {
            let mut evidence = Vec::new();
            for c in &result.contributions {
                let record = self.evidence.get(&c.delta).ok_or("no evidence kept")?;
                let decoded = fedmesh_protocol::codec::decode_evidence(record);
                evidence.push((*c, decoded.map_err(|e| e.to_string())?));
            }
            let clip_norm = self.spec.strategy.clip_norm.unwrap_or(1.0);
            let params = recompute_secure((self.job, result.round), clip_norm, base, &evidence)?;
            return Ok(hash_f32(&params));
        }
        let mut deltas = Vec::new();
        for c in &result.contributions {
            let values = self.deltas.get(&c.delta).ok_or("a contribution is not kept")?;
            deltas.push((c.member, c.samples, values.as_slice()));
        }
        let strategy = &self.spec.strategy;
        let params = fedmesh_aggregation::verifiable::recompute(strategy, base, &deltas)
            .map_err(|e| e.to_string())?;
        Ok(hash_f32(&params))
    }

    /// Delivers a gossip message signed by `from` to every member but itself.
    fn gossip(&mut self, from: MemberId, message: Gossip) {
        let others: Vec<MemberId> = self.members.keys().filter(|m| **m != from).copied().collect();
        for to in others {
            let event = Event::Gossip { signer: from, message: message.clone() };
            match self.gossip_lag_ms.get(&to) {
                Some(lag) => self.later.push((self.now + lag, to, event)),
                None => self.send(from, to, event),
            }
        }
    }

    /// Delivers everything queued, then moves the clock one step and ticks every live member.
    fn step(&mut self) {
        let (due, later) =
            std::mem::take(&mut self.later).into_iter().partition(|(at, ..)| *at <= self.now);
        self.later = later;
        for (_, member, event) in due {
            self.send(member, member, event);
        }
        while let Some((_, to, event)) = self.queue.pop_front() {
            if self.down.contains(&to) {
                continue;
            }
            let Some(member) = self.members.get_mut(&to) else { continue };
            let effects = member.handle(event, self.now);
            self.route(to, effects);
        }
        self.now += STEP_MS;
        let said = self.coordinator.as_mut().map(|c| c.tick(self.now)).unwrap_or_default();
        for message in said {
            self.gossip(coordinator_id(), message);
        }
        let live: Vec<MemberId> =
            self.members.keys().filter(|m| !self.down.contains(m)).copied().collect();
        for id in live {
            let effects = self.members.get_mut(&id).map(|m| m.handle(Event::Tick, self.now));
            self.route(id, effects.unwrap_or_default());
        }
    }

    /// Steps until every live member is done, or `limit_ms` of clock passed.
    fn run(&mut self, limit_ms: u64) {
        let until = self.now + limit_ms;
        while self.now < until && !self.all_done() {
            self.step();
        }
    }

    fn run_until(&mut self, limit_ms: u64, done: impl Fn(&Net) -> bool) {
        let until = self.now + limit_ms;
        while self.now < until && !done(self) {
            self.step();
        }
    }

    fn live_members(&self) -> impl Iterator<Item = &Member> {
        self.members.values().filter(|m| !self.down.contains(&m.me()))
    }

    fn all_done(&self) -> bool {
        self.live_members().all(|m| !m.is_active())
    }

    fn member(&self, byte: u8) -> &Member {
        &self.members[&member_id(byte)]
    }

    /// Every live member completed the job with one model, and recorded every round once with
    /// the same model.
    fn assert_agree(&self) {
        let rounds = self.spec.hyperparameters.rounds;
        let first = self.live_members().next().expect("a live member");
        for member in self.live_members() {
            assert_eq!(member.status(), &RunStatus::Completed, "{} did not complete", member.me());
            assert_eq!(member.completed_round(), rounds);
            assert_eq!(member.model(), first.model(), "{} holds another model", member.me());
            for round in 1..=rounds {
                let theirs = member.rounds().get(&round).and_then(|r| r.model);
                let ours = self.round_model(round);
                if theirs.is_some() || !self.may_miss_rounds.contains(&member.me()) {
                    assert_eq!(theirs, ours, "round {round} differs on {}", member.me());
                }
            }
        }
    }

    /// The model of `round` as the members that recorded one agree on it.
    fn round_model(&self, round: Round) -> Option<ContentHash> {
        let models: BTreeSet<ContentHash> = self
            .live_members()
            .filter_map(|m| m.rounds().get(&round).and_then(|r| r.model))
            .collect();
        assert!(models.len() <= 1, "round {round} has several models: {models:?}");
        models.into_iter().next()
    }

    fn openings_of(&self, round: Round) -> usize {
        self.opened.keys().filter(|(r, _)| *r == round).count()
    }

    fn coordinator(&mut self) -> &mut Coordinator {
        self.coordinator.as_mut().expect("an orchestrated job")
    }

    /// Whether some member refused a gossip message for `reason`.
    fn rejected(&self, reason: &str) -> bool {
        self.rejections.iter().any(|(_, refusal)| refusal.reason.label() == reason)
    }
}

fn four_central(rounds: u64) -> Net {
    Net::new(spec("central", rounds, 5), &[(1, "a"), (2, "a"), (3, "a"), (4, "a")])
}

#[test]
fn a_central_job_completes_with_one_model_on_every_member() {
    let mut net = four_central(3);
    net.run(60_000);
    net.assert_agree();
    for round in 1..=3 {
        assert_eq!(net.openings_of(round), 1, "round {round} opened once");
        let record = &net.member(2).rounds()[&round];
        assert_eq!(record.participants, 4, "every member's update is in round {round}");
    }
    assert!(net.refusals.is_empty(), "{:?}", net.refusals);
}

#[test]
fn a_hierarchical_job_sends_partial_aggregates_up_and_completes() {
    let members = [(1, "eu"), (2, "eu"), (3, "eu"), (4, "na"), (5, "na"), (6, "na")];
    let mut net = Net::new(spec("hierarchical", 2, 5), &members);
    net.run(60_000);
    net.assert_agree();
    let record = &net.member(1).rounds()[&2];
    assert_eq!(record.participants, 6);
    assert!(record.slots.len() >= 3, "two group slots and a top: {:?}", record.slots);
}

#[test]
fn a_ring_all_reduces_and_every_member_computes_the_model_its_leader_announces() {
    let members = [(1, "a"), (2, "a"), (3, "a"), (4, "a"), (5, "a")];
    let mut net = Net::new(spec("ring", 3, 5), &members);
    net.run(60_000);
    net.assert_agree();
    assert_eq!(net.member(2).rounds()[&3].participants, 5);
    assert!(net.refusals.is_empty(), "{:?}", net.refusals);
}

#[test]
fn a_hybrid_job_reduces_each_group_in_a_ring_and_sends_the_sums_up() {
    let members = [(1, "eu"), (2, "eu"), (3, "eu"), (4, "na"), (5, "na"), (6, "na")];
    let mut net = Net::new(spec("hybrid", 2, 5), &members);
    net.run(60_000);
    net.assert_agree();
    let record = &net.member(4).rounds()[&2];
    assert_eq!(record.participants, 6);
    assert_eq!(record.rings.len(), 2, "a ring per group: {:?}", record.rings);
}

#[test]
fn the_model_is_the_sample_weighted_mean_of_the_updates() {
    let mut net = four_central(1);
    net.run(30_000);
    net.assert_agree();
    // Member b trains to b/100 with 10 + b samples.
    let weights: Vec<(f32, f32)> =
        (1..=4u8).map(|b| (f32::from(b) / 100.0, 10.0 + f32::from(b))).collect();
    let total: f32 = weights.iter().map(|(_, w)| w).sum();
    let mean: f32 = weights.iter().map(|(v, w)| v * w).sum::<f32>() / total;
    let params = net.member(3).params();
    assert!(params.iter().all(|p| (p - mean).abs() < 1e-6), "{params:?} vs {mean}");
}

/// Under distributed DP each trainer clips its update and adds its own share of the noise
/// before sending; the leader neither clips again nor adds noise. The model is exactly the
/// weighted mean of the noised updates as each trainer made them (rebuilt here from each
/// trainer's secret), and far from the mean without noise.
#[test]
fn distributed_noise_is_drawn_by_each_trainer_and_the_aggregator_adds_none() {
    use fedmesh_aggregation::privacy::{add_seeded_gaussian_noise, clip, trainer_noise_std};
    let (clip_norm, multiplier) = (0.05f32, 2.0f32);
    let mut spec = spec("central", 1, 30);
    spec.strategy.clip_norm = Some(clip_norm);
    spec.strategy.noise_multiplier = Some(multiplier);
    spec.privacy.noise = fedmesh_protocol::spec::NoisePlacement::Distributed;
    spec.validate().unwrap();
    let mut net = Net::new(spec, &[(1, "eu"), (2, "eu"), (3, "eu"), (4, "eu")]);
    net.run(30_000);
    net.assert_agree();
    let (&(round, opened_at_ms), _) = net.opened.iter().next().unwrap();
    let (mut noised_sum, mut clean_sum, mut total) = (vec![0.0f64; PARAMS], 0.0f64, 0.0f64);
    for b in 1..=4u8 {
        // Member b trains to b/100 with 10 + b samples; member 4 weighs the most.
        let weight = 10.0 + f64::from(b);
        let mut update = vec![f32::from(b) / 100.0; PARAMS];
        clip(&mut update, clip_norm);
        clean_sum += weight * f64::from(update[0]);
        let std = trainer_noise_std(multiplier, clip_norm, 14.0, weight, 4);
        let seed = super::rounds::noise_share_seed(&[b; 32], round, opened_at_ms);
        add_seeded_gaussian_noise(&mut update, std, seed);
        noised_sum.iter_mut().zip(&update).for_each(|(sum, v)| *sum += weight * f64::from(*v));
        total += weight;
    }
    let params = net.member(2).params();
    for (param, sum) in params.iter().zip(&noised_sum) {
        assert!((f64::from(*param) - sum / total).abs() < 1e-6, "{params:?} vs {noised_sum:?}");
    }
    let clean = clean_sum / total;
    let off = params.iter().map(|p| (f64::from(*p) - clean).abs()).fold(0.0, f64::max);
    assert!(off > 1e-3, "no noise in {params:?} (the mean without noise is {clean})");
}

#[test]
fn a_leader_lost_after_opening_is_replaced_once_it_falls_silent() {
    let mut net = four_central(2);
    // Round 1's leader dies right after opening it.
    net.run_until(10_000, |net| net.openings_of(1) == 1);
    let leader = net.opened.values().next().copied().expect("an opener");
    net.down.insert(leader);
    net.run(120_000);
    net.assert_agree();
    let record = &net.live_members().next().expect("live").rounds()[&1];
    assert_ne!(record.aggregator, leader, "another member aggregated round 1");
}

/// A job of four whose member 4 hears no result by gossip, ever: it must ask for each.
fn four_central_member_4_missing_results(rounds: u64) -> Net {
    let mut net = four_central(rounds);
    net.drop = Some(Box::new(|from, to, event| {
        to == member_id(4)
            && from != to
            && matches!(event, Event::Gossip { message: Gossip::Result(_), signer } if *signer == from)
    }));
    net
}

#[test]
fn a_member_that_missed_a_result_asks_for_it_after_the_deadline() {
    let mut net = four_central_member_4_missing_results(2);
    net.run(120_000);
    net.assert_agree();
    assert_eq!(net.openings_of(1), 1, "nobody ran round 1 again");
}

#[test]
fn evaluations_heard_before_a_member_takes_the_result_are_recorded_when_it_does() {
    // Member 4 takes each result late (it asks for it past the deadline), after the others'
    // evaluation reports of its model reached it.
    let mut net = four_central_member_4_missing_results(2);
    net.run(120_000);
    net.assert_agree();
    for round in [1, 2] {
        let record = &net.member(4).rounds()[&round];
        assert_eq!(record.evaluations.len(), 4, "round {round}: {record:?}");
    }
}

#[test]
fn a_leader_opens_the_next_round_only_once_another_member_holds_its_model() {
    let mut net = four_central(2);
    // No evaluation report says who holds a model: a leader learns it from heartbeats.
    net.drop = Some(Box::new(|_, _, event| {
        matches!(event, Event::Gossip { message: Gossip::Eval(_), .. })
    }));
    net.run(120_000);
    net.assert_agree();
    let closed = net.member(1).rounds()[&1].closed_at_ms.expect("round 1 closed");
    let opened = net.opened.keys().filter(|(r, _)| *r == 2).map(|(_, at)| *at).min();
    let opened = opened.expect("round 2 opened");
    assert!(opened > closed, "round 2 opened at {opened}, when round 1's model was made");
    assert!(opened <= closed + SPREAD_WAIT_MS + STEP_MS, "opened at {opened}, closed {closed}");
}

#[test]
fn a_dead_trainer_makes_the_leader_open_the_round_again_keeping_the_updates_in() {
    let mut net = four_central(2);
    net.run_until(10_000, |net| net.openings_of(1) == 1);
    let leader = net.opened.values().next().copied().expect("an opener");
    let trainer = net.members.keys().copied().find(|m| *m != leader).expect("a trainer");
    net.down.insert(trainer);
    net.run(120_000);
    net.assert_agree();
    assert!(net.openings_of(1) >= 2, "round 1 was opened again");
    let record = &net.member(leader.0[0]).rounds()[&1];
    assert_eq!(record.participants, 3, "the three live members' updates");
}

#[test]
fn a_leader_opening_again_keeps_the_update_of_a_member_it_no_longer_hears_beat() {
    // Deadlines of 8 s: the second comes after the 10 s a member may be silent and live.
    let members = [(1, "a"), (2, "a"), (3, "a"), (4, "a"), (5, "a")];
    let mut net = Net::new(spec("central", 1, 8), &members);
    let slow = [member_id(4), member_id(5)];
    for member in slow {
        net.train_ms.insert(member, 60_000); // the round is opened again until it closes short
    }
    net.run_until(10_000, |net| net.openings_of(1) == 1);
    let leader = net.opened.values().next().copied().expect("an opener");
    let quiet = net.members.keys().copied().find(|m| *m != leader && !slow.contains(m));
    let quiet = quiet.expect("a trainer");
    // From now on the quiet member's gossip (heartbeats, joins) reaches no one; its update
    // does. At the second deadline the leader holds three updates of the four live members'
    // (the slow ones' missing): it opens the round again, and keeps the quiet one's update.
    net.drop = Some(Box::new(move |from, _, event| {
        from == quiet && matches!(event, Event::Gossip { .. })
    }));
    net.run(120_000);
    net.assert_agree();
    assert!(net.openings_of(1) >= 3, "round 1 was opened again after the silence began");
    let record = &net.member(leader.0[0]).rounds()[&1];
    assert_eq!(record.participants, 3, "all but the slow members' updates: {record:?}");
}

#[test]
fn a_trainer_slower_than_the_deadline_trains_once_and_its_update_reaches_the_round_opened_again() {
    let mut net = four_central(2);
    let slow = member_id(3);
    // Member 3's training takes over two deadlines (5 s each): round 1 is opened again while
    // it runs, and it must not start another training each time.
    net.train_ms.insert(slow, 12_000);
    net.run(180_000);
    net.assert_agree();
    assert!(net.openings_of(1) >= 2, "round 1 was opened again while member 3 trained");
    assert_eq!(net.trainings[&(slow, 1)], 1, "member 3 trained for round 1 once");
    let record = &net.member(1).rounds()[&1];
    assert_eq!(record.participants, 4, "member 3's update is in round 1");
    // The leader kept the others' updates, and its openings said so: each sent one.
    for trainer in net.members.keys().filter(|m| **m != record.aggregator && **m != slow) {
        assert_eq!(net.deltas_sent.get(&(*trainer, 1)), Some(&1), "{trainer} sent again");
    }
    // The round's time runs from its first opening: it took member 3's whole training.
    let seconds = record.closed_at_ms.expect("closed") - record.opened_at_ms;
    assert!(seconds >= 12_000, "round 1 took {seconds} ms from its first opening");
}

#[test]
fn a_restarted_member_rebuilds_from_its_snapshot_and_catches_up() {
    let mut net = four_central(4);
    net.run_until(30_000, |net| net.member(4).completed_round() >= 1);
    net.kill(4);
    net.run_until(120_000, |net| net.member(1).completed_round() >= 3);
    net.restart(4);
    net.run(120_000);
    net.assert_agree();
}

/// As `node/tests/churn.rs` does on real nodes (6 rounds, at least 3 members, a quorum of 0.7):
/// a trainer killed after round 1 is restarted the moment the others complete the job (they
/// fall silent, but still count as live), and takes the final model from the results it asks
/// for.
#[test]
fn a_member_restarted_the_moment_the_others_complete_catches_up_to_the_end() {
    let mut job = spec("central", 6, 3);
    job.participation.min_participants = 3;
    job.quorum = fedmesh_protocol::spec::Quorum::Fraction(0.7);
    let mut net = Net::new(job, &[(1, "a"), (2, "a"), (3, "a"), (4, "a")]);
    net.run_until(30_000, |net| net.member(4).completed_round() >= 1);
    net.kill(4);
    net.run_until(300_000, |net| (1..=3).all(|m| net.member(m).completed_round() >= 6));
    net.restart(4);
    net.run(60_000);
    net.assert_agree();
}

#[test]
fn a_late_joiner_takes_part_in_later_rounds_once_its_heartbeat_proves_it() {
    // Rounds take milliseconds here: enough of them that the newcomer's first heartbeat (within
    // a second of its join) comes before the last.
    let mut net = Net::new(spec("central", 12, 5), &[(1, "a"), (2, "a"), (3, "a")]);
    net.run_until(30_000, |net| net.member(1).completed_round() >= 2);
    net.add(9, "a");
    net.may_miss_rounds.insert(member_id(9));
    net.run(120_000);
    net.assert_agree();
    let last = &net.member(1).rounds()[&12];
    assert_eq!(last.participants, 4, "the newcomer trained in the last round");
    let third = &net.member(1).rounds()[&3];
    assert_eq!(third.participants, 3, "not before its first heartbeat");
}

#[test]
fn keys_that_never_had_an_update_accepted_are_not_elected_and_their_silence_holds_no_round() {
    // Six fresh keys join a running job and beat like members, but none of their updates ever
    // arrives: two thirds of the live members, they would lead most rounds by the hash alone,
    // and a round waiting for all its trainers would wait for them for ever.
    let mut net = Net::new(spec("central", 12, 5), &[(1, "a"), (2, "a"), (3, "a")]);
    net.run_until(30_000, |net| net.member(1).completed_round() >= 2);
    let fresh: Vec<MemberId> = (20..26).map(member_id).collect();
    let silent = fresh.clone();
    net.drop = Some(Box::new(move |from, _, event| {
        silent.contains(&from) && matches!(event, Event::Update { .. })
    }));
    for key in &fresh {
        net.add(key.0[0], "a");
        net.may_miss_rounds.insert(*key);
    }
    net.run(900_000);
    let honest = [1, 2, 3].map(member_id);
    let member = net.member(1);
    assert_eq!(member.completed_round(), 12, "the job completed");
    assert!(fresh.iter().all(|key| member.state().members.is_live(key, net.now)));
    for record in member.rounds().values() {
        assert!(
            honest.contains(&record.aggregator),
            "round {} led by {}",
            record.round,
            record.aggregator
        );
        assert!(record.slots.values().all(|a| honest.contains(a)), "{:?}", record.slots);
    }
    let trained =
        |key: &MemberId| net.trainings.keys().any(|(who, round)| who == key && *round >= 10);
    assert!(fresh.iter().all(trained), "the fresh keys were planned with as trainers");
}

/// Whether member `who` knows every member in `of`.
fn knows_all(net: &Net, who: u8, of: &[u8]) -> bool {
    of.iter().all(|b| net.member(who).state().members.contains(&member_id(*b)))
}

#[test]
fn a_newcomer_is_answered_by_each_member_alone_and_nobody_repeats_its_join_to_the_job() {
    let mut net = Net::new(spec("central", 4, 5), &[(1, "a"), (2, "a"), (3, "a")]);
    net.run_until(30_000, |net| net.member(1).completed_round() >= 1);
    net.joins.clear();
    net.add(9, "a");
    net.run_until(10_000, |net| knows_all(net, 9, &[1, 2, 3]) && knows_all(net, 1, &[9]));
    assert!(knows_all(&net, 9, &[1, 2, 3]), "the newcomer learned every member");
    let newcomer = member_id(9);
    let on_topic: Vec<MemberId> =
        net.joins.iter().filter(|(_, to, _)| to.is_none()).map(|(from, ..)| *from).collect();
    assert_eq!(on_topic, [newcomer], "only the newcomer's own join went to the whole job");
    let answered: BTreeSet<MemberId> = net
        .joins
        .iter()
        .filter(|(_, to, asks)| *to == Some(newcomer) && !asks)
        .map(|(from, ..)| *from)
        .collect();
    assert_eq!(answered, [1, 2, 3].map(member_id).into(), "each member answered it alone");
}

/// Adds member 9, whose join member 1 hears only as an answer to its own question (not on the
/// topic, nor when member 9 asks member 1 for its join, nor as member 9's answer to member 1's
/// repeated join before member 1 asked).
fn add_newcomer_member_1_does_not_hear(net: &mut Net) {
    let asked = Arc::new(std::sync::atomic::AtomicBool::new(false));
    net.drop = Some(Box::new(move |from, to, event| {
        let question = matches!(event, Event::JoinSent { asks: true, .. });
        if (from, to) == (member_id(1), member_id(9)) && question {
            asked.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let unasked = !asked.load(std::sync::atomic::Ordering::Relaxed);
        (from, to) == (member_id(9), member_id(1))
            && match event {
                Event::Gossip { message: Gossip::Join(_), .. } => true,
                Event::JoinSent { asks, .. } => *asks || unasked,
                _ => false,
            }
    }));
    net.add(9, "a");
    net.may_miss_rounds.insert(member_id(9));
}

#[test]
fn a_member_heard_from_but_unknown_is_asked_for_its_join() {
    // Rounds enough that the newcomer, which beats once it caught up, beats before the end.
    let mut net = Net::new(spec("central", 40, 5), &[(1, "a"), (2, "a"), (3, "a")]);
    net.run_until(30_000, |net| net.member(1).completed_round() >= 1);
    add_newcomer_member_1_does_not_hear(&mut net);
    net.run_until(90_000, |net| knows_all(net, 1, &[9]));
    assert!(knows_all(&net, 1, &[9]), "member 1 learned the newcomer from its question");
    let asked = net.joins.iter().any(|j| *j == (member_id(1), Some(member_id(9)), true));
    assert!(asked, "member 1 asked the newcomer for its join: {:?}", net.joins);
    net.drop = None;
    net.run(120_000);
    net.assert_agree();
}

#[test]
fn heartbeats_signed_by_made_up_keys_make_a_member_ask_a_bounded_number_of_them() {
    let mut net = four_central(2);
    net.run_until(30_000, |net| net.member(1).completed_round() >= 1);
    net.joins.clear();
    let job = net.job;
    for n in 0..3 * MAX_ASKED as u32 {
        let mut key = [0xee; 32];
        key[..4].copy_from_slice(&n.to_le_bytes());
        let fake = MemberId(key);
        let beat = Heartbeat {
            job,
            member: fake,
            round: 1,
            model: ContentHash::of(b"x"),
            sequence: 1,
            sent_at_ms: net.now,
        };
        let event = Event::Gossip { signer: fake, message: Gossip::Heartbeat(beat) };
        net.send(fake, member_id(1), event);
    }
    net.step();
    let asked = net.joins.iter().filter(|(from, _, asks)| *from == member_id(1) && *asks).count();
    assert_eq!(asked, MAX_ASKED, "member 1 asked at most MAX_ASKED unknown signers");
    net.run(120_000);
    net.assert_agree();
}

#[test]
fn a_member_that_leaves_is_planned_without_and_the_job_goes_on() {
    let mut net = four_central(3);
    net.run_until(30_000, |net| net.member(1).completed_round() >= 1);
    let effects = net
        .members
        .get_mut(&member_id(4))
        .map(|m| m.handle(Event::LeaveRequested { reason: "operator".into() }, net.now));
    net.route(member_id(4), effects.unwrap_or_default());
    assert_eq!(net.member(4).status(), &RunStatus::Left);
    net.down.insert(member_id(4));
    net.run(120_000);
    net.assert_agree();
    assert_eq!(net.member(1).rounds()[&3].participants, 3);
}

/// Four members of a `topology` job with 60 s deadlines, every training taking 10 s, run until
/// round 2 is open; with its leader.
fn round_2_open_with_slow_training(topology: &str) -> (Net, MemberId) {
    let mut net = Net::new(spec(topology, 4, 60), &[(1, "a"), (2, "a"), (3, "a"), (4, "a")]);
    net.run_until(30_000, |net| net.member(1).completed_round() >= 1);
    for byte in 1..=4 {
        net.train_ms.insert(member_id(byte), 10_000);
    }
    net.run_until(30_000, |net| net.member(1).phase.open().is_some_and(|o| o.round == 2));
    let leader = net.member(1).phase.open().map(|o| o.opener).expect("round 2 is open");
    (net, leader)
}

/// Member `byte`'s operator leaves the job now.
fn leave_now(net: &mut Net, byte: u8) {
    let id = member_id(byte);
    let now = net.now;
    let effects = net
        .members
        .get_mut(&id)
        .map(|m| m.handle(Event::LeaveRequested { reason: "operator".into() }, now));
    net.route(id, effects.unwrap_or_default());
    net.down.insert(id);
}

#[test]
fn a_trainer_that_signs_its_leave_mid_round_is_not_waited_for() {
    let (mut net, leader) = round_2_open_with_slow_training("central");
    let leaver = (1..=4).find(|b| member_id(*b) != leader).expect("a trainer");
    let lost = member_id(leaver);
    net.drop =
        Some(Box::new(move |from, _, event| from == lost && matches!(event, Event::Update { .. })));
    net.run(11_000); // every trainer has sent its update; the leaver's is lost
    let left_at = net.now;
    leave_now(&mut net, leaver);
    net.run_until(60_000, |net| net.member(leader.0[0]).completed_round() >= 2);
    let round = &net.member(leader.0[0]).rounds()[&2];
    assert_eq!(round.participants, 3);
    let closed = round.closed_at_ms.expect("round 2 closed");
    assert!(closed <= left_at + 1_000, "closed at {closed}, the leave went out at {left_at}");
    assert_eq!(net.openings_of(2), 1, "not opened again");
}

#[test]
fn a_ring_member_that_signs_its_leave_mid_round_makes_the_ring_form_again_at_once() {
    let (mut net, leader) = round_2_open_with_slow_training("ring");
    net.run(1_000); // every member is still training
    let leaver = (1..=4).find(|b| member_id(*b) != leader).expect("a ring member");
    let left_at = net.now;
    leave_now(&mut net, leaver);
    net.run_until(60_000, |net| net.member(leader.0[0]).completed_round() >= 2);
    let round = &net.member(leader.0[0]).rounds()[&2];
    let closed = round.closed_at_ms.expect("round 2 closed");
    assert!(closed < left_at + 20_000, "closed at {closed}, the leave went out at {left_at}");
    assert_eq!(round.participants, 3, "the ring formed again without the leaver");
    net.run(300_000);
    net.assert_agree();
}

#[test]
fn a_leader_that_signs_its_leave_mid_round_is_replaced_at_once() {
    let (mut net, leader) = round_2_open_with_slow_training("central");
    net.run(1_000);
    let left_at = net.now;
    leave_now(&mut net, leader.0[0]);
    net.run_until(60_000, |net| {
        net.member(1).completed_round() >= 2 || net.member(2).completed_round() >= 2
    });
    let follower = if leader == member_id(1) { net.member(2) } else { net.member(1) };
    let round = &follower.rounds()[&2];
    assert_ne!(round.aggregator, leader, "another member led round 2");
    let closed = round.closed_at_ms.expect("round 2 closed");
    assert!(
        closed < left_at + 20_000,
        "closed at {closed}: the leave went out at {left_at}, the deadline was 60 s"
    );
    net.run(300_000);
    net.assert_agree();
}

#[test]
fn a_member_that_leaves_and_joins_again_catches_up_and_nobody_waits_for_it() {
    let rounds = 12;
    let mut net = Net::new(spec("central", rounds, 30), &[(1, "a"), (2, "a"), (3, "a"), (4, "a")]);
    net.run_until(30_000, |net| net.member(1).completed_round() >= 2);
    leave_now(&mut net, 4);
    net.run_until(30_000, |net| net.member(1).completed_round() >= 5);
    net.down.remove(&member_id(4));
    let published_before = net.published.len();
    net.add(4, "a"); // joins again, from the job's initial model and knowing no one
    net.may_miss_rounds.insert(member_id(4));
    net.run(300_000);
    net.assert_agree();
    // Its first heartbeat, which makes the others plan with it, waited until it caught up.
    let first_beat =
        net.published[published_before..].iter().find_map(|(from, message)| match message {
            Gossip::Heartbeat(beat) if *from == member_id(4) => Some(beat.round),
            _ => None,
        });
    assert!(
        first_beat.is_some_and(|round| round > 5),
        "its first heartbeat named round {first_beat:?}"
    );
    let rejoined = net.member(4);
    assert_eq!(rejoined.status(), &RunStatus::Completed, "the member that joined again completed");
    assert_eq!(rejoined.model(), net.member(1).model(), "with the job's final model");
    for record in net.member(1).rounds().values() {
        let (opened, closed) = (record.opened_at_ms, record.closed_at_ms.expect("closed"));
        assert!(closed - opened < 30_000, "round {} waited out its deadline", record.round);
    }
    let last = &net.member(1).rounds()[&rounds];
    assert_eq!(last.participants, 4, "it trained again before the end");
}

/// Who leaves as member 3 joins again in `joined_again_as_others_left`.
#[derive(Clone, Copy)]
enum Leavers {
    /// Members 1 and 2, at round 3's opening.
    OneAndTwoAtRound3Opening,
    /// Round 2's aggregator and one more, the moment round 2 closes (before round 3 opens, so
    /// round 3 is planned with member 3): the result member 3 needs is signed by a member it
    /// never hears of.
    Round2AggregatorAsItCloses,
}

/// Eight members with 200 ms of training: member 3 leaves mid-round 2, and joins again from
/// scratch just as two others leave (the leave-rejoin scenario's rounds 2 and 3). The results
/// member 3 needs name two members it never hears of. Members `behind_nat` are elected to
/// aggregate no round.
fn joined_again_as_others_left(behind_nat: &[u8], leavers: Leavers) -> Net {
    let mut net = Net::new(spec("central", 8, 10), &[]);
    net.behind_nat.extend(behind_nat.iter().copied().map(member_id));
    for byte in 1..=8 {
        net.add(byte, "a");
        net.train_ms.insert(member_id(byte), 200);
    }
    net.introduce();
    net.run_until(30_000, |net| net.member(4).phase.open().is_some_and(|o| o.round == 2));
    net.run(100);
    leave_now(&mut net, 3);
    let leavers = match leavers {
        Leavers::OneAndTwoAtRound3Opening => {
            net.run_until(30_000, |net| net.member(4).phase.open().is_some_and(|o| o.round == 3));
            [1, 2]
        }
        Leavers::Round2AggregatorAsItCloses => {
            net.run_until(30_000, |net| net.member(4).completed_round() >= 2);
            let aggregator = net.member(4).rounds()[&2].aggregator;
            let byte = (1..=8).find(|b| member_id(*b) == aggregator).expect("an aggregator");
            let another = (1..=8).find(|b| ![3, byte].contains(b)).expect("another member");
            [byte, another]
        }
    };
    for leaver in leavers {
        leave_now(&mut net, leaver);
    }
    net.down.remove(&member_id(3));
    net.add(3, "a");
    net.may_miss_rounds.insert(member_id(3));
    net
}

/// The member that joined again takes the results naming members it never heard of on the
/// word of the live members holding their models: it catches up at once, and no round
/// waits for it (it refused them before, and a round planned with it waited out three
/// deadlines: a real run's round 3 took 30 s).
#[test]
fn a_member_joining_again_as_others_leave_catches_up_and_stalls_no_round() {
    for leavers in [Leavers::OneAndTwoAtRound3Opening, Leavers::Round2AggregatorAsItCloses] {
        let net = joined_again_as_others_left(&[], leavers);
        assert_caught_up_without_stalling(net);
    }
}

fn assert_caught_up_without_stalling(mut net: Net) {
    net.run(300_000);
    net.assert_agree();
    let stayed = (4..=8).find(|b| !net.down.contains(&member_id(*b))).expect("a member stayed");
    let rounds = net.member(stayed).rounds();
    for record in rounds.values() {
        let (opened, closed) = (record.opened_at_ms, record.closed_at_ms.expect("closed"));
        assert!(closed - opened < 10_000, "round {} waited out its deadline", record.round);
    }
    assert_eq!(rounds[&8].participants, 6, "member 3 trained again");
}

/// A result naming members the newcomer never heard of is taken only if live members other
/// than its signer hold its model: a made-up result from a member that holds it alone (and
/// that no plan elects: it is behind NAT) is refused.
#[test]
fn a_made_up_result_naming_members_a_newcomer_never_heard_of_is_refused() {
    let mut net = joined_again_as_others_left(&[8], Leavers::OneAndTwoAtRound3Opening);
    let forger = member_id(8);
    let mut forged = forged_result(&mut net, 1);
    let made_up_params = Arc::new(vec![1.0_f32; net.member(4).params().len()]);
    let made_up = hash_f32(&made_up_params);
    net.blobs.insert(made_up, made_up_params);
    forged.model = made_up;
    forged.base_model = net.member(3).model(); // round 1's base: the newcomer's model
    forged.members = (1..=8).map(member_id).collect();
    net.carry_out(forger, Effect::Publish(Publish::Result(forged)));
    net.run(300_000);
    net.assert_agree();
    let taken = net.member(3).rounds().values().any(|r| r.model == Some(made_up));
    assert!(!taken, "the newcomer took the made-up result");
}

/// Every trainer sends its update to the aggregator: members whose joins say peers cannot dial
/// them aggregate no round while a reachable member can (the owner's first round aside: it is
/// the only member vetted before any update was counted, and vetting comes first).
#[test]
fn members_behind_nat_aggregate_no_round_while_a_reachable_member_can() {
    let mut net = Net::new(spec("central", 8, 30), &[]);
    net.behind_nat.extend([member_id(1), member_id(2)]);
    for byte in 1..=4 {
        net.add(byte, "a");
    }
    net.introduce();
    net.run(300_000);
    net.assert_agree();
    let rounds = net.member(1).rounds();
    assert_eq!(rounds.len(), 8, "the job completed");
    let aggregators: BTreeSet<MemberId> =
        rounds.values().filter(|r| r.round >= 2).map(|r| r.aggregator).collect();
    assert_eq!(aggregators, BTreeSet::from([member_id(3), member_id(4)]), "rotating over both");
}

/// A member whose node learns mid-job that it is behind NAT says so in a join at once, and the
/// others elect it no more (the round open then was planned before).
#[test]
fn a_member_that_learns_it_is_behind_nat_says_so_and_aggregates_no_more() {
    let mut net = Net::new(spec("central", 12, 30), &[(1, "a"), (2, "a"), (3, "a"), (4, "a")]);
    net.run_until(30_000, |net| net.member(1).completed_round() >= 3);
    for byte in [3, 4] {
        let (id, now) = (member_id(byte), net.now);
        let behind_nat = Event::ReachabilityChanged { reachable: false };
        let effects = net.members.get_mut(&id).map(|m| m.handle(behind_nat, now));
        net.route(id, effects.unwrap_or_default());
    }
    let planned_before = net.member(1).completed_round() + 1;
    net.run(300_000);
    net.assert_agree();
    let rounds = net.member(1).rounds();
    assert_eq!(rounds.len(), 12, "the job completed");
    let later: BTreeSet<MemberId> =
        rounds.values().filter(|r| r.round > planned_before).map(|r| r.aggregator).collect();
    assert_eq!(later, BTreeSet::from([member_id(1), member_id(2)]));
}

/// Members keep the last `RESULTS_KEPT` results to serve: a member that joins again further
/// behind than that finds the next round's result gone from every window, and asks for the
/// newest at once instead of waiting `ASK_AGAIN_MS` for the next one in vain (a round that
/// planned with it waited as long for it).
#[test]
fn a_member_that_joins_again_further_behind_than_the_results_kept_asks_for_the_newest_at_once() {
    let behind = RESULTS_KEPT as u64 * 2;
    let mut net = Net::new(spec("central", behind + 10, 30), &[(1, "a"), (2, "a"), (3, "a")]);
    net.run_until(30_000, |net| net.member(1).completed_round() >= 2);
    leave_now(&mut net, 3);
    net.run_until(60_000, |net| net.member(1).completed_round() >= behind);
    net.down.remove(&member_id(3));
    let rejoined_at = net.now;
    let reached = net.member(1).completed_round();
    net.add(3, "a");
    net.may_miss_rounds.insert(member_id(3));
    net.run_until(30_000, |net| net.member(3).completed_round() >= reached);
    let caught_up_ms = net.now - rejoined_at;
    assert!(
        caught_up_ms < results::ASK_AGAIN_MS,
        "it caught up {caught_up_ms} ms after joining again"
    );
    net.run(300_000);
    net.assert_agree();
}

#[test]
fn openings_and_results_from_a_member_the_plan_does_not_elect_are_refused() {
    let mut net = four_central(1);
    net.run_until(10_000, |net| net.openings_of(1) == 1);
    let leader = net.opened.values().next().copied().expect("an opener");
    let hijacker = net.members.keys().copied().find(|m| *m != leader).expect("another");
    let forged = AggregateReady {
        job: net.job,
        round: 1,
        base_model: net.member(1).model(),
        model: ContentHash::of(b"a made-up model"),
        contributions: Vec::new(),
        feedback: Vec::new(),
        metrics: Default::default(),
        members: vec![hijacker],
        vetted: Vec::new(),
        sent_at_ms: net.now,
        optimizer_state: None,
    };
    net.carry_out(hijacker, Effect::Publish(Publish::Result(forged)));
    net.run(60_000);
    net.assert_agree();
    let record = &net.member(1).rounds()[&1];
    assert_ne!(record.model, Some(ContentHash::of(b"a made-up model")));
}

/// The member that leads `round` of a four-member central job of `rounds` rounds: it would be
/// elected over every member, so it may announce that round's result (the election is a public
/// hash: a member finds such a round offline).
fn elected_leader_of(rounds: u64, round: Round) -> MemberId {
    let mut net = four_central(rounds);
    net.run(600_000);
    net.opened.iter().find(|((r, _), _)| *r == round).map(|(_, opener)| *opener).expect("opened")
}

/// A result for `round` over every member, naming a model of its forger's making (which it
/// serves to whoever asks).
fn forged_result(net: &mut Net, round: Round) -> AggregateReady {
    let made_up = Arc::new(vec![0.0_f32; net.member(1).params().len()]);
    let model = hash_f32(&made_up);
    net.blobs.insert(model, made_up);
    AggregateReady {
        job: net.job,
        round,
        base_model: ContentHash::of(b"a base nobody holds"),
        model,
        contributions: Vec::new(),
        feedback: Vec::new(),
        metrics: Default::default(),
        members: net.members.keys().copied().collect(),
        vetted: Vec::new(),
        sent_at_ms: net.now,
        optimizer_state: None,
    }
}

#[test]
fn a_members_result_for_the_jobs_last_round_is_refused_and_the_job_goes_on() {
    let rounds = 12;
    let forger = elected_leader_of(rounds, rounds);
    let mut net = four_central(rounds);
    net.run_until(30_000, |net| net.member(1).completed_round() >= 1);
    let forged = forged_result(&mut net, rounds);
    let made_up = forged.model;
    net.carry_out(forger, Effect::Publish(Publish::Result(forged)));
    net.run(600_000);
    net.assert_agree();
    assert!(net.rejected("ahead_of_round"), "the forged result was refused: {:?}", net.rejections);
    for member in net.live_members() {
        assert_ne!(member.model(), made_up, "{} took the made-up model", member.me());
        assert_eq!(member.rounds()[&rounds].aggregator, forger, "the forger led the last round");
    }
}

#[test]
fn an_opening_ahead_of_the_members_round_is_not_followed_until_the_rounds_between_arrive() {
    let rounds = 12;
    let forger = elected_leader_of(rounds, 8);
    let mut net = four_central(rounds);
    net.run_until(30_000, |net| net.member(1).completed_round() >= 1);
    let open = RoundOpen {
        job: net.job,
        round: 8,
        base_model: ContentHash::of(b"a base nobody holds"),
        deadline_ms: net.now + 5_000,
        opened_at_ms: net.now,
        members: net.members.keys().copied().collect(),
        trainers: Vec::new(),
        kept: Vec::new(),
    };
    net.carry_out(forger, Effect::Publish(Publish::Open(open)));
    net.step();
    assert!(net.rejected("ahead_of_round"), "the opening was refused: {:?}", net.rejections);
    let trained_8 = net.trainings.keys().any(|(_, round)| *round == 8);
    assert!(!trained_8, "nobody trained for round 8 ahead of round 2");
    net.run(600_000);
    net.assert_agree();
}

#[test]
fn a_result_past_the_jobs_last_round_is_refused() {
    let mut net = four_central(3);
    net.run_until(30_000, |net| net.member(1).completed_round() >= 1);
    let forger = member_id(2);
    let forged = forged_result(&mut net, 4);
    net.carry_out(forger, Effect::Publish(Publish::Result(forged)));
    net.step();
    assert!(net.rejected("past_last_round"), "refused: {:?}", net.rejections);
    net.run(120_000);
    net.assert_agree();
}

#[test]
fn a_dead_members_joins_and_heartbeats_replayed_keep_it_out_of_the_rounds() {
    let mut net = four_central(6);
    net.run_until(30_000, |net| net.member(1).completed_round() >= 1);
    let dead = member_id(4);
    net.kill(4);
    let captured: Vec<Gossip> = net
        .published
        .iter()
        .filter(|(from, message)| {
            *from == dead && matches!(message, Gossip::Heartbeat(_) | Gossip::Join(_))
        })
        .map(|(_, message)| message.clone())
        .collect();
    assert!(captured.len() >= 2, "member 4 joined and beat: {}", captured.len());
    // A hostile peer replays everything member 4 said, every second, until the job ends.
    while net.now < 600_000 && !net.all_done() {
        for message in &captured {
            net.gossip(dead, message.clone());
        }
        net.run(1_000);
    }
    net.assert_agree();
    assert!(net.rejected("replayed"), "the replays were refused: {:?}", net.rejections);
    let planned_over = |round: Round| {
        net.published.iter().rev().find_map(|(_, message)| match message {
            Gossip::Open(open) if open.round == round => Some(open.members.clone()),
            _ => None,
        })
    };
    let last = planned_over(6).expect("round 6 opened");
    assert!(!last.contains(&dead), "member 4 was planned out of the last round: {last:?}");
}

/// Round 1's leader and another member, once round 1 opened.
fn leader_and_trainer_of_round_1(net: &mut Net) -> (MemberId, MemberId) {
    net.run_until(10_000, |net| net.openings_of(1) == 1);
    let leader = net.opened.values().next().copied().expect("an opener");
    let sender = net.members.keys().copied().find(|m| *m != leader).expect("a trainer");
    (leader, sender)
}

/// Hands `leader` a delta from `sender` for `round` over `base`, weighing `samples`.
fn send_delta(
    net: &mut Net,
    pair: (MemberId, MemberId),
    round: Round,
    base: ContentHash,
    samples: u64,
) {
    send_delta_of(net, pair, (round, base, samples), 0.5);
}

/// [`send_delta`] with `value` in every place.
fn send_delta_of(
    net: &mut Net,
    pair: (MemberId, MemberId),
    (round, base, samples): (Round, ContentHash, u64),
    value: f32,
) {
    send_delta_values(net, pair, (round, base, samples), value, |values| values.into());
}

/// [`send_delta_of`] still encoded, as a node hands a received delta to its machine.
fn send_encoded_delta_of(
    net: &mut Net,
    pair: (MemberId, MemberId),
    (round, base, samples): (Round, ContentHash, u64),
    value: f32,
) {
    send_delta_values(net, pair, (round, base, samples), value, |values| {
        let bytes = fedmesh_protocol::tensor::encode_params(&values, TensorEncoding::F32Le, None)
            .expect("f32 encodes");
        let encoded = EncodedValues::new(Arc::new(bytes), TensorEncoding::F32Le, values.len());
        UpdateValues::Encoded(encoded.expect("its own encoding decodes"))
    });
}

/// Hands `leader` a delta from `sender` of `value` in every place, as `handed` makes its values.
fn send_delta_values(
    net: &mut Net,
    (leader, sender): (MemberId, MemberId),
    (round, base, samples): (Round, ContentHash, u64),
    value: f32,
    handed: impl FnOnce(Arc<Vec<f32>>) -> UpdateValues,
) {
    let values = Arc::new(vec![value; PARAMS]);
    let body = ModelDelta {
        job: net.job,
        round,
        base_model: base,
        member: sender,
        samples,
        metrics: fedmesh_protocol::message::TrainMetrics { loss: 1.0, accuracy: None },
        payload: payload_ref(&values),
    };
    let update = Update::Delta(body);
    let event = Event::Update { signer: sender, update, values: handed(values), request: 99 };
    let effects = net.members.get_mut(&leader).map(|m| m.handle(event, net.now));
    net.route(leader, effects.unwrap_or_default());
}

#[test]
fn updates_for_the_wrong_round_or_base_are_refused_with_a_reason() {
    let mut net = four_central(1);
    let pair = leader_and_trainer_of_round_1(&mut net);
    let model = net.member(1).model();
    send_delta(&mut net, pair, 7, model, 5);
    send_delta(&mut net, pair, 1, ContentHash::of(b"another base"), 5);
    let reasons: Vec<&str> = net.refusals.iter().map(|r| r.reason.label()).collect();
    assert_eq!(reasons, ["wrong_round", "wrong_base"]);
    net.run(60_000);
    net.assert_agree();
}

#[test]
fn an_update_weighing_more_than_its_member_declared_or_the_job_caps_is_refused() {
    let mut spec = spec("central", 2, 5);
    spec.participation.max_samples = Some(12);
    let mut net = Net::new(spec, &[(1, "a"), (2, "a"), (3, "a"), (4, "a")]);
    let pair = leader_and_trainer_of_round_1(&mut net);
    let model = net.member(1).model();
    for samples in [u64::MAX, 13] {
        send_delta(&mut net, pair, 1, model, samples);
    }
    let reasons: Vec<&str> = net.refusals.iter().map(|r| r.reason.label()).collect();
    assert_eq!(reasons, ["inflated_samples", "inflated_samples"]);
    net.run(60_000);
    net.assert_agree();
    // Members 3 and 4 declared 13 and 14 samples: their own updates went out at the cap.
    assert_eq!(net.member(1).rounds()[&1].participants, 4, "every honest update was taken");
}

#[test]
fn an_update_with_a_huge_value_is_refused_and_the_model_stays_the_honest_mean() {
    let mut net = four_central(1);
    let pair = leader_and_trainer_of_round_1(&mut net);
    let model = net.member(1).model();
    send_delta_of(&mut net, pair, (1, model, 5), 1e30);
    send_delta_of(&mut net, pair, (1, model, 5), -2e6);
    let reasons: Vec<&str> = net.refusals.iter().map(|r| r.reason.label()).collect();
    assert_eq!(reasons, ["huge_values", "huge_values"]);
    net.run(60_000);
    net.assert_agree();
    assert_eq!(net.member(1).rounds()[&1].participants, 4, "every honest update was taken");
    let params = net.member(1).params();
    assert!(params.iter().all(|v| v.abs() < 10.0), "the honest mean: {params:?}");
}

#[test]
fn an_encoded_delta_is_judged_and_folded_as_its_decoded_values_are() {
    let run = |encoded: bool| {
        let mut net = four_central(1);
        let pair = leader_and_trainer_of_round_1(&mut net);
        let model = net.member(1).model();
        let send = if encoded { send_encoded_delta_of } else { send_delta_of };
        send(&mut net, pair, (1, model, 5), 1e30);
        send(&mut net, pair, (1, model, 5), 0.25);
        let reasons: Vec<String> =
            net.refusals.iter().map(|r| r.reason.label().to_owned()).collect();
        net.run(60_000);
        net.assert_agree();
        (reasons, net.member(1).rounds()[&1].participants, net.member(1).params().to_vec())
    };
    let (decoded, encoded) = (run(false), run(true));
    assert_eq!(encoded.0, ["huge_values"], "the huge encoded delta was refused");
    assert_eq!(encoded.1, 4, "every update was taken");
    assert_eq!(encoded, decoded, "the same refusals, participants and model, bit for bit");
}

#[test]
fn a_group_aggregator_cannot_reweigh_its_members_updates() {
    let members = [(1, "eu"), (2, "eu"), (3, "eu"), (4, "na"), (5, "na"), (6, "na")];
    let mut net = Net::new(spec("hierarchical", 2, 5), &members);
    for byte in 1..=6 {
        net.train_ms.insert(member_id(byte), 2_000); // round 1 stays open a while
    }
    net.run_until(10_000, |net| net.member(1).phase().open().is_some());
    let open = net.member(1).phase().open().expect("round 1 open");
    let (plan, round, base, opened_at) =
        (open.plan.clone(), open.round, open.base, open.opened_at_ms);
    let top = plan.leader().expect("a top aggregator");
    let group = (0..plan.slots.len()).find(|i| plan.slots[*i].parent.is_some()).expect("a group");
    let (sender, label) = plan.sender_of(fedmesh_topologies::Input::Slot(group));
    let trainers = plan.trainers_in(fedmesh_topologies::Input::Slot(group));
    let values = Arc::new(vec![0.5f32; PARAMS]);
    // Its first member's update made to weigh a million samples: the group's mean is its own.
    let contributions: Vec<Contribution> = trainers
        .iter()
        .enumerate()
        .map(|(i, member)| Contribution {
            member: *member,
            delta: ContentHash::of(&[i as u8]),
            samples: if i == 0 { 1_000_000 } else { 10 },
        })
        .collect();
    let total_weight = contributions.iter().map(|c| c.samples as f64).sum();
    let partial = PartialAggregate {
        job: net.job,
        round,
        base_model: base,
        opened_at_ms: opened_at,
        group: label,
        aggregator: sender,
        mean: payload_ref(&values),
        total_weight,
        contributions,
    };
    let update = Update::Partial(partial);
    let event = Event::Update { signer: sender, update, values: values.into(), request: 99 };
    let effects = net.members.get_mut(&top).map(|m| m.handle(event, net.now));
    net.route(top, effects.unwrap_or_default());
    let reasons: Vec<&str> = net.refusals.iter().map(|r| r.reason.label()).collect();
    assert_eq!(reasons, ["inflated_samples"], "the reweighed partial was refused");
    net.run(60_000);
    net.assert_agree();
}

#[test]
fn an_allow_listed_jobs_results_and_member_list_go_to_its_members_alone() {
    let mut spec = spec("central", 2, 5);
    spec.participation.allow = [1, 2, 3].map(member_id).to_vec();
    let mut net = Net::new(spec, &[(1, "a"), (2, "a"), (3, "a")]);
    net.run_until(30_000, |net| net.member(1).completed_round() >= 1);
    let ask = |net: &mut Net, from: MemberId| {
        let effects = net.members.get_mut(&member_id(1)).map(|member| {
            let mut effects = member.handle(Event::ResultAsked { from, round: 1, request: 7 }, 0);
            let digest = crate::membership::Membership::default().digest();
            effects.extend(member.handle(Event::MembersAsked { from, digest }, 0));
            effects
        });
        let effects = effects.unwrap_or_default();
        let served = effects.iter().any(|e| matches!(e, Effect::ServeResult { .. }));
        let listed = effects.iter().any(|e| matches!(e, Effect::SendMembers { .. }));
        (served, listed)
    };
    assert_eq!(ask(&mut net, member_id(2)), (true, true), "a member is served both");
    assert_eq!(ask(&mut net, member_id(9)), (false, false), "an outsider is told nothing");
    net.run(60_000);
    net.assert_agree();
}

/// An owner-admitted job of members 1, 2 and 3 with the owner's tickets (the owner, a key of
/// its own, is no member); member 4 joins without one and member 5 with member 1's.
fn owner_admitted_job() -> Net {
    let owner = fedmesh_protocol::identity::Identity::from_seed([42; 32]);
    let mut spec = spec("central", 3, 5);
    spec.owner = owner.member_id();
    spec.participation.admission = Some(Admission::Owner);
    let job = JobId(ContentHash::of(b"rules"));
    let ticket = |byte| {
        let ticket = Ticket { job, member: member_id(byte), issued_at_ms: 0 };
        Signed::sign(&owner, ticket).expect("signs")
    };
    let mut net = Net::new(spec, &[]);
    net.tickets = [1, 2, 3].map(|byte| (member_id(byte), ticket(byte))).into_iter().collect();
    net.tickets.insert(member_id(5), ticket(1));
    for byte in 1..=5 {
        net.add(byte, "a");
    }
    net.introduce();
    net
}

#[test]
fn an_owner_admitted_job_takes_only_the_members_its_owner_signed_a_ticket_for() {
    let mut net = owner_admitted_job();
    net.may_miss_rounds.extend([member_id(4), member_id(5)]);
    net.run_until(60_000, |net| net.member(1).completed_round() >= 3);
    for member in [1, 2, 3].map(|byte| net.member(byte)) {
        let known: Vec<MemberId> = member.state().members.ids().collect();
        assert_eq!(known, [1, 2, 3].map(member_id), "{} knows only the admitted", member.me());
        assert_eq!(member.rounds()[&3].participants, 3);
    }
    let reasons: Vec<&str> = net.rejections.iter().map(|(_, r)| r.reason.label()).collect();
    assert!(reasons.contains(&"not_admitted"), "{reasons:?}");
    let details: Vec<&str> = net.rejections.iter().map(|(_, r)| r.detail.as_str()).collect();
    assert!(details.iter().any(|d| d.contains("no ticket")), "member 4's join: {details:?}");
    let other = format!("the ticket is for {}", member_id(1));
    assert!(details.iter().any(|d| d.contains(&other)), "member 5's join: {details:?}");
}

#[test]
fn an_evaluation_weighs_no_more_than_its_member_declared() {
    let mut net = four_central(2);
    net.run_until(30_000, |net| net.member(1).completed_round() >= 1);
    let boaster = member_id(2);
    let report = EvalReport {
        job: net.job,
        round: 1,
        model: net.round_model(1).expect("round 1's model"),
        member: boaster,
        metrics: EvalMetrics { loss: Some(0.0), accuracy: Some(1.0), samples: u64::MAX },
        sent_at_ms: net.now,
    };
    net.gossip(boaster, Gossip::Eval(report));
    net.run(60_000);
    net.assert_agree();
    let recorded = &net.member(1).rounds()[&1].evaluations[&boaster];
    assert_eq!(recorded.samples, 12, "member 2 declared 12 samples at join");
}

#[test]
fn every_member_of_a_small_job_reports_its_evaluation_and_a_sample_of_a_large_one_does() {
    let job = JobId(ContentHash::of(b"eval sample"));
    let ids = |n: u32| (0..n).map(|i| MemberId(ContentHash::of(&i.to_le_bytes()).0));
    let reporting = |n: u32, round: Round| {
        ids(n)
            .filter(|m| results::reports_evaluation(&job, round, m, n as usize))
            .collect::<BTreeSet<MemberId>>()
    };
    assert_eq!(reporting(results::EVAL_REPORTERS as u32, 3).len(), results::EVAL_REPORTERS);
    for members in [1_000, 10_000] {
        let sampled = reporting(members, 3).len();
        assert!((16..=48).contains(&sampled), "{sampled} of {members} report, about 32");
    }
    assert_ne!(reporting(1_000, 3), reporting(1_000, 4), "the sample changes every round");
}

/// An orchestrated job of four members, `rounds` rounds, its coordinator assigning each round's
/// top slot to another member than the election would.
fn four_orchestrated(rounds: u64, fallback_secs: Option<u64>) -> Net {
    let spec = orchestrated_spec(rounds, fallback_secs);
    let mut net = Net::new(spec, &[(1, "a"), (2, "a"), (3, "a"), (4, "a")]);
    net.coordinator().overrides = true;
    net
}

/// Whether every member follows an opening of `round`.
fn all_follow(net: &Net, round: Round) -> bool {
    net.live_members().all(|m| m.phase().open().is_some_and(|open| open.round == round))
}

#[test]
fn an_orchestrated_job_completes_with_the_coordinators_aggregator_leading_each_round() {
    let mut net = four_orchestrated(3, None);
    net.run(60_000);
    net.assert_agree();
    assert!(net.opened.is_empty(), "no member opened a round: {:?}", net.opened);
    let (assigned, elected) =
        (net.coordinator().assigned.clone(), net.coordinator().elected.clone());
    for round in 1..=3 {
        let record = &net.member(2).rounds()[&round];
        assert_eq!(record.aggregator, assigned[&round], "round {round} led by its assignee");
        assert_ne!(record.aggregator, elected[&round], "not by the member the election picks");
        assert_eq!(record.participants, 4, "every member's update is in round {round}");
    }
    assert_eq!(net.coordinator().job.state.completed_round, 3, "the coordinator took each result");
    assert!(net.refusals.is_empty(), "{:?}", net.refusals);
}

/// Round 2's aggregator dies with its model after the coordinator took the result and assigned
/// round 3: no member could fetch that model, so the coordinator takes the result back and
/// assigns round 2 again, a later word than round 3's, which the members follow.
#[test]
fn members_follow_the_coordinator_assigning_a_round_again_after_it_assigned_the_next() {
    let mut net = four_orchestrated(4, None);
    let assigned = |round: Round| {
        move |net: &Net| net.coordinator.as_ref().is_some_and(|c| c.assigned.contains_key(&round))
    };
    net.run_until(30_000, assigned(2));
    let leader = net.coordinator().assigned[&2];
    let others: Vec<MemberId> = net.members.keys().copied().filter(|m| *m != leader).collect();
    net.cannot_fetch.extend(others.iter().copied());
    net.run_until(30_000, assigned(3));
    let lost = net.coordinator().job.state.model.expect("round 2's model");
    net.kill(leader.0[0]);
    net.blobs.remove(&lost);
    net.cannot_fetch.clear();
    net.run(300_000);
    net.assert_agree();
    let round = &net.coordinator().job.state.rounds[&2];
    assert!(round.reassigned.iter().any(|why| why.contains("lost")), "{round:?}");
    assert_ne!(net.member(others[0].0[0]).rounds()[&2].model, Some(lost));
}

#[test]
fn members_own_openings_are_refused_while_the_coordinator_is_heard() {
    let mut net = four_orchestrated(2, None);
    // Training takes two seconds: round 1 is open when the opening below comes.
    for id in net.members.keys().copied().collect::<Vec<_>>() {
        net.train_ms.insert(id, 2_000);
    }
    net.run_until(10_000, |net| all_follow(net, 1));
    let assigned = net.coordinator().assigned[&1];
    // The member the election picks opens round 1 itself: under the election it would lead.
    let elected = net.coordinator().elected[&1];
    let open = RoundOpen {
        job: net.job,
        round: 1,
        base_model: net.member(1).model(),
        deadline_ms: net.now + 5_000,
        opened_at_ms: net.now + 1,
        members: net.members.keys().copied().collect(),
        trainers: Vec::new(),
        kept: Vec::new(),
    };
    net.carry_out(elected, Effect::Publish(Publish::Open(open)));
    net.step();
    assert!(net.rejected("orchestrated"), "the opening was refused as orchestrated");
    for member in net.live_members() {
        let opener = member.phase().open().map(|open| open.opener);
        assert!(opener.is_none_or(|o| o == assigned), "{} follows {opener:?}", member.me());
    }
    net.run(60_000);
    net.assert_agree();
    assert_eq!(net.member(3).rounds()[&1].aggregator, assigned);
}

#[test]
fn with_a_fallback_members_elect_leaders_once_the_coordinator_falls_silent() {
    let mut net = four_orchestrated(3, Some(5));
    net.run_until(30_000, |net| net.live_members().all(|m| m.completed_round() >= 1));
    assert!(net.opened.is_empty(), "no member opened a round while the coordinator spoke");
    let assigned = net.coordinator().assigned[&1];
    net.coordinator().silent = true;
    net.run(120_000);
    net.assert_agree();
    assert_eq!(net.member(1).rounds()[&1].aggregator, assigned, "round 1 as assigned");
    assert_eq!(net.openings_of(3), 1, "an elected member opened round 3");
    let opener = net.opened.iter().find(|((round, _), _)| *round == 3).map(|(_, m)| *m);
    assert_eq!(net.member(1).rounds()[&3].aggregator, opener.expect("an opener"));
}

#[test]
fn without_a_fallback_members_wait_for_a_silent_coordinator() {
    let mut net = four_orchestrated(2, None);
    net.coordinator().silent = true;
    net.run(30_000);
    assert!(net.opened.is_empty(), "no member opened a round");
    assert!(net.live_members().all(|m| m.completed_round() == 0 && m.is_active()));
    net.coordinator().silent = false;
    net.run(60_000);
    net.assert_agree();
}

#[test]
fn an_assignment_not_signed_by_the_coordinator_is_refused() {
    let mut net = four_orchestrated(2, None);
    // The coordinator hears the members but says nothing yet.
    net.coordinator().silent = true;
    net.run(2_000);
    let now = net.now;
    let (forged, _) = net.coordinator().assignment(now).expect("an assignment");
    // Even the job's owner may not assign its rounds.
    let owner = member_id(1);
    assert_eq!(net.spec.owner, owner);
    net.gossip(owner, Gossip::Assign(Arc::new(forged)));
    net.step();
    assert!(net.rejected("not_the_coordinator"), "the forged assignment was refused");
    assert!(net.live_members().all(|m| m.phase().open().is_none()), "and nobody follows it");
    net.coordinator().silent = false;
    net.run(60_000);
    net.assert_agree();
}

#[test]
fn a_member_behind_fetches_the_assignments_base_model_before_following_it() {
    let mut net = four_orchestrated(3, None);
    let behind = member_id(4);
    // Member 4 hears no result of rounds 1 and 2: it learns each from the next assignment.
    net.drop = Some(Box::new(move |_, to, event| {
        to == behind
            && matches!(event, Event::Gossip { message: Gossip::Result(ready), .. } if ready.round < 3)
    }));
    net.run(90_000);
    net.assert_agree();
    for round in 1..=2 {
        let model = net.round_model(round).expect("a model");
        assert!(
            net.fetches.iter().any(|f| (f.0, f.1, f.2) == (behind, round, model)),
            "member 4 fetched round {round}'s model as round {}'s base: {:?}",
            round + 1,
            net.fetches
        );
        assert_eq!(net.trainings.get(&(behind, round + 1)), Some(&1), "and trained on it");
        assert_eq!(net.member(1).rounds()[&(round + 1)].participants, 4);
    }
}

#[test]
fn a_member_behind_whose_base_cannot_be_had_asks_for_it_again_at_most_every_five_seconds() {
    let mut spec = orchestrated_spec(2, None);
    spec.round_deadline_secs = 60;
    let mut net = Net::new(spec, &[(1, "a"), (2, "a"), (3, "a"), (4, "a")]);
    net.coordinator().overrides = true;
    let behind = member_id(4);
    net.drop = Some(Box::new(move |_, to, event| {
        to == behind
            && matches!(event, Event::Gossip { message: Gossip::Result(ready), .. } if ready.round == 1)
    }));
    net.cannot_fetch.insert(behind);
    net.run_until(30_000, |net| net.member(1).completed_round() >= 1);
    let base = net.round_model(1).expect("round 1's model");
    // The coordinator repeats round 2's assignment every 3 s; member 4 cannot have its base.
    net.run(16_000);
    let asked: Vec<u64> =
        net.fetches.iter().filter(|f| (f.0, f.2) == (behind, base)).map(|f| f.3).collect();
    assert!(asked.len() >= 2, "member 4 asked for the base again: {asked:?}");
    assert!(asked.windows(2).all(|w| w[1] >= w[0] + 5_000), "at most every 5 s: {asked:?}");
    net.cannot_fetch.clear();
    net.run(60_000);
    net.assert_agree();
    assert_eq!(net.member(1).rounds()[&2].participants, 4, "member 4 trained in round 2");
}

#[test]
fn an_assignment_naming_a_member_not_known_yet_is_held_until_its_join_arrives() {
    // Rounds enough that the newcomer, which beats once it caught up, is assigned before the end.
    let spec = orchestrated_spec(40, None);
    let mut net = Net::new(spec, &[(1, "a"), (2, "a"), (3, "a")]);
    net.run_until(30_000, |net| net.member(1).completed_round() >= 1);
    add_newcomer_member_1_does_not_hear(&mut net);
    net.run(300_000);
    net.assert_agree();
    let asked = net.joins.iter().any(|j| *j == (member_id(1), Some(member_id(9)), true));
    assert!(asked, "member 1 asked the newcomer for its join");
    let last = &net.member(1).rounds()[&40];
    assert_eq!(last.participants, 4, "member 1 followed the assignments naming the newcomer");
}

#[test]
fn a_stop_counts_only_from_the_coordinator_of_an_orchestrated_job() {
    let mut net = four_orchestrated(5, None);
    net.run_until(30_000, |net| net.member(1).completed_round() >= 1);
    let stop = JobStop { job: net.job, reason: "enough".into(), sent_at_ms: net.now };
    net.gossip(member_id(1), Gossip::Stop(stop.clone()));
    net.step();
    assert!(net.rejected("not_the_coordinator"), "the owner's stop was refused");
    assert!(net.live_members().filter(|m| m.me() != member_id(1)).all(Member::is_active));
    net.gossip(coordinator_id(), Gossip::Stop(stop));
    net.step();
    let stopped = RunStatus::Stopped("enough".into());
    assert!(net.live_members().all(|m| *m.status() == stopped), "the coordinator's stop ends it");
}

/// Member 1 of a job, alone on a manual clock, fed joins as answers from `others`.
fn lone_member(others: impl IntoIterator<Item = u8>, now: u64) -> (Member, JobId) {
    lone_member_of(spec("central", 4, 5), others, now)
}

/// [`lone_member`] in a job of `spec`.
fn lone_member_of(
    spec: JobSpec,
    others: impl IntoIterator<Item = u8>,
    now: u64,
) -> (Member, JobId) {
    let net = Net::new(spec, &[(1, "a")]);
    let initial = Arc::new(vec![0.0f32; PARAMS]);
    let (mut member, _) = Member::join(net.setup(member_id(1)), hash_f32(&initial), initial, now);
    for byte in others {
        member.handle(answer_from(net.job, byte, now), now);
        member.handle(beat_from(net.job, byte, member.model(), now), now);
    }
    (member, net.job)
}

/// A peer subscribing to the job's topic hears this member's join again only if it is no
/// member this one knows: a known member subscribes again at each new connection.
#[test]
fn a_join_goes_out_again_for_a_subscriber_it_does_not_know_only() {
    let mut now = 1_000_000;
    let (mut member, _) = lone_member_of(spec("central", 3, 30), [2], now);
    member.handle(Event::Tick, now); // its first join goes out
    let joins_after = |member: &mut Member, peer: u8, now: &mut u64| {
        member.handle(Event::PeerSubscribed { peer: member_id(peer) }, *now);
        *now += JOIN_ECHO_DELAY_MS;
        let effects = member.handle(Event::Tick, *now);
        let join = |e: &Effect| matches!(e, Effect::Publish(Publish::Join(_)));
        effects.iter().filter(|e| join(e)).count()
    };
    assert_eq!(joins_after(&mut member, 2, &mut now), 0, "member 2 knows it");
    assert_eq!(joins_after(&mut member, 9, &mut now), 1, "a peer it does not know");
}

/// Member `byte`'s heartbeat sent at `now`, in round 1 over `model`.
fn beat_from(job: JobId, byte: u8, model: ContentHash, now: u64) -> Event {
    let beat =
        Heartbeat { job, member: member_id(byte), round: 1, model, sequence: 1, sent_at_ms: now };
    Event::Gossip { signer: member_id(byte), message: Gossip::Heartbeat(beat) }
}

/// Member `byte`'s join, sent as an answer.
fn answer_from(job: JobId, byte: u8, now: u64) -> Event {
    let join = Join {
        job,
        member: member_id(byte),
        group: "a".into(),
        roles: Vec::new(),
        samples: 10,
        reachable: true,
        sent_at_ms: now,
        ticket: None,
    };
    Event::JoinSent { signer: member_id(byte), join, asks: false, heartbeat: None }
}

/// The members a machine asked for their joins among `effects`.
fn asked_joins(effects: &[Effect]) -> Vec<MemberId> {
    let asked = |effect: &Effect| match effect {
        Effect::SendJoin { to, asks: true, .. } => Some(*to),
        _ => None,
    };
    effects.iter().filter_map(asked).collect()
}

#[test]
fn a_member_pulls_the_member_list_and_asks_the_members_it_missed_for_their_joins() {
    let start = 1_000;
    let (mut member, _) = lone_member([2, 3], start);
    let now = start + pull::FIRST_PULL_MS;
    let effects = member.handle(Event::Tick, now);
    let pulled = effects.iter().find_map(|effect| match effect {
        Effect::AskMembers { to, digest } => Some((*to, digest.clone())),
        _ => None,
    });
    let (peer, digest) = pulled.expect("a pull once the first pull is due");
    assert!([member_id(2), member_id(3)].contains(&peer), "a live member: {peer}");
    assert_eq!(digest, member.state().members.digest(), "its own membership's digest");
    let stranger = if peer == member_id(2) { member_id(3) } else { member_id(2) };
    let listed = vec![member_id(8)];
    let effects = member.handle(Event::MembersSent { from: stranger, members: listed }, now);
    assert!(asked_joins(&effects).is_empty(), "a list from a member not pulled is ignored");
    let listed = vec![member_id(2), member_id(3), member_id(7)];
    let effects = member.handle(Event::MembersSent { from: peer, members: listed }, now);
    assert_eq!(asked_joins(&effects), [member_id(7)], "only the member it missed is asked");
}

#[test]
fn a_member_answers_a_pull_with_the_members_where_the_memberships_differ() {
    let (mut member, job) = lone_member([2, 3, 4], 1_000);
    let mut theirs = crate::membership::Membership::default();
    for byte in [1, 2, 3] {
        let Event::JoinSent { join, .. } = answer_from(job, byte, 1_000) else { continue };
        theirs.join(&join, 1_000).expect("a join");
    }
    let listed = |effects: Vec<Effect>| {
        effects.into_iter().find_map(|effect| match effect {
            Effect::SendMembers { to, members } => Some((to, members)),
            _ => None,
        })
    };
    let asked = Event::MembersAsked { from: member_id(2), digest: theirs.digest() };
    let answer = listed(member.handle(asked, 1_100)).expect("an answer");
    assert_eq!(answer, (member_id(2), vec![member_id(4)]), "the part holding member 4");
    let same = member.state().members.digest();
    let asked = Event::MembersAsked { from: member_id(3), digest: same };
    let answer = listed(member.handle(asked, 1_200)).expect("an answer");
    assert_eq!(answer, (member_id(3), Vec::new()), "nothing where the memberships agree");
}

#[test]
fn a_newcomer_settles_until_a_pull_of_the_member_list_finds_no_member_it_missed() {
    // 40 members: a heartbeat interval of 4 s, so at most 8 s of settling.
    let start = 1_000;
    let others = 2..41;
    let (mut member, job) = lone_member(others.clone(), start);
    let effects = member.handle(Event::Tick, start + pull::FIRST_PULL_MS);
    let peer = effects.iter().find_map(|effect| match effect {
        Effect::AskMembers { to, .. } => Some(*to),
        _ => None,
    });
    let peer = peer.expect("a pull");
    let now = start + SETTLE_MIN_MS + 500;
    for byte in others.take(SETTLE_HEARTBEATS as usize) {
        member.handle(beat_from(job, byte, member.model(), now), now);
    }
    assert!(member.settling(now), "heard enough heartbeats, but no pull answered");
    member.handle(Event::MembersSent { from: peer, members: vec![member_id(41)] }, now);
    assert!(member.settling(now), "the pull found member 41 missed: it waits for its join");
    member.handle(answer_from(job, 41, now), now);
    assert!(member.settling(now), "no pull found nothing missed yet");
    let later = now + 1_000;
    let effects = member.handle(Event::Tick, later);
    let peer = effects.iter().find_map(|effect| match effect {
        Effect::AskMembers { to, .. } => Some(*to),
        _ => None,
    });
    let peer = peer.expect("another pull at once after one that found a member missed");
    member.handle(Event::MembersSent { from: peer, members: vec![member_id(41)] }, later);
    assert!(!member.settling(later), "a pull found nothing missed: its view agrees");
}

#[test]
fn a_member_opens_no_round_until_its_view_of_the_members_held_for_a_while() {
    let mut net = four_central(1);
    // The members settle 2 s after joining (a small job's two heartbeat intervals).
    net.run_until(10_000, |net| net.now >= 2_500);
    assert_eq!(net.openings_of(1), 0, "nobody opened while settling");
    net.add(9, "a");
    net.may_miss_rounds.insert(member_id(9));
    let learned = net.now;
    net.run_until(20_000, |net| net.openings_of(1) >= 1);
    let opened = net.opened.keys().map(|(_, at)| *at).min().expect("an opening");
    assert!(opened >= learned + VIEW_HOLD_MS, "opened at {opened}, a member learned at {learned}");
    net.run(60_000);
    net.assert_agree();
}

/// Floods the job with `count` joins from fresh keys (each heard by every member and the
/// coordinator, if any); says when and after which round.
fn flood_joins(net: &mut Net, count: u32) -> (u64, Round) {
    let flooded_at = (net.now, net.member(1).completed_round());
    for n in 0..count {
        let mut key = [0xee; 32];
        key[..4].copy_from_slice(&n.to_be_bytes());
        let join = Join {
            job: net.job,
            member: MemberId(key),
            group: "a".into(),
            roles: Vec::new(),
            samples: 1_000,
            reachable: true,
            sent_at_ms: net.now,
            ticket: None,
        };
        let (now, message) = (net.now, Gossip::Join(join));
        if let Some(coordinator) = net.coordinator.as_mut() {
            coordinator.hear(MemberId(key), &message, now);
        }
        net.gossip(MemberId(key), message);
    }
    flooded_at
}

/// Runs a flooded job to its end: every round after the flood had the four members and the
/// rounds took less than a minute.
fn assert_unstalled(net: &mut Net, (flooded_at, round): (u64, Round), rounds: Round) {
    net.run(600_000);
    net.assert_agree();
    let member = net.member(1);
    assert!(member.state().members.len() <= 4 + crate::membership::NEWCOMERS_FLOOR);
    for round in round + 1..=rounds {
        assert_eq!(member.rounds()[&round].participants, 4, "round {round} had the four members");
    }
    let took = net.now - flooded_at;
    assert!(took < 60_000, "the rounds after the flood took {took} ms");
}

#[test]
fn a_flood_of_joins_from_fresh_keys_does_not_stall_the_rounds() {
    let rounds = 10;
    let mut net = four_central(rounds);
    net.run_until(30_000, |net| net.member(1).completed_round() >= 2);
    let flooded = flood_joins(&mut net, 3_000);
    assert_unstalled(&mut net, flooded, rounds);
    assert!(net.rejected("crowded"), "joins past the newcomers' bound were refused");
}

#[test]
fn a_flood_of_joins_does_not_stall_an_orchestrated_job_nor_fill_its_coordinator() {
    let rounds = 10;
    let mut net = four_orchestrated(rounds, None);
    net.run_until(30_000, |net| net.member(1).completed_round() >= 2);
    let flooded = flood_joins(&mut net, 3_000);
    let known = net.coordinator().job.state.members.len();
    assert_eq!(known, 4 + crate::membership::NEWCOMERS_FLOOR, "the coordinator kept the bound");
    assert_unstalled(&mut net, flooded, rounds);
}

/// An update from `sender` for round 1 over the member's model, with `value` in each place.
fn early_delta(member: &Member, job: JobId, sender: u8, value: f32) -> Event {
    early_part(member, job, sender, value, PARAMS)
}

/// An update of `len` values from `sender` for round 1 over the member's model (a ring chunk's
/// size when shorter than the model), with `value` in each place.
fn early_part(member: &Member, job: JobId, sender: u8, value: f32, len: usize) -> Event {
    let values = Arc::new(vec![value; len]);
    let body = ModelDelta {
        job,
        round: 1,
        base_model: member.model(),
        member: member_id(sender),
        samples: 10,
        metrics: fedmesh_protocol::message::TrainMetrics { loss: 1.0, accuracy: None },
        payload: payload_ref(&values),
    };
    let signer = member_id(sender);
    Event::Update { signer, update: Update::Delta(body), values: values.into(), request: 1 }
}

#[test]
fn early_updates_are_capped_per_member_counted_in_bytes_and_dropped_on_request() {
    let now = 1_000;
    let (mut member, job) = lone_member([2, 3], now);
    for copy in 0..5 {
        member.handle(early_delta(&member, job, 2, copy as f32), now);
    }
    member.handle(early_delta(&member, job, 3, 0.5), now);
    let one = PARAMS * size_of::<f32>();
    let kept = MAX_EARLY_MODELS_PER_MEMBER + 1;
    assert_eq!(member.early_bytes(), kept * one, "member 2's newest two models' worth, and 3's");
    member.drop_early();
    assert_eq!(member.early_bytes(), 0);
}

/// A member that follows a ring's opening late (catching up) has received every chunk its ring
/// predecessor could send before it: n − 1 chunks of 1/n of the model. All of them are kept
/// (four were before, and the ring never finished), up to the per-member count.
#[test]
fn a_ring_predecessors_chunks_of_a_round_are_all_kept_until_the_opening_is_followed() {
    let now = 1_000;
    let (mut member, job) = lone_member([2, 3], now);
    let chunks = PARAMS - 1;
    for chunk in 0..chunks {
        member.handle(early_part(&member, job, 2, chunk as f32, 1), now);
    }
    assert_eq!(member.early_bytes(), chunks * size_of::<f32>(), "every chunk kept");
    for chunk in 0..MAX_EARLY_PER_MEMBER {
        member.handle(early_part(&member, job, 3, chunk as f32, 0), now);
    }
    member.handle(early_part(&member, job, 3, 0.5, 1), now);
    let of_three = member.early.iter().filter(|kept| kept.signer == member_id(3)).count();
    assert_eq!(of_three, MAX_EARLY_PER_MEMBER, "no more than the count from one member");
    assert_eq!(member.early_bytes(), (chunks + 1) * size_of::<f32>(), "and member 2's kept");
}

#[test]
fn a_member_that_left_keeps_no_early_update() {
    let now = 1_000;
    let (mut member, job) = lone_member([2, 3], now);
    member.handle(early_delta(&member, job, 2, 0.5), now);
    assert!(member.early_bytes() > 0);
    member.handle(Event::LeaveRequested { reason: "done".into() }, now);
    assert_eq!(member.early_bytes(), 0);
}

/// Trainers' round keys for an opening the member has not followed are kept, at most two per
/// member (the newest), and only for the next round and the one after.
#[test]
fn early_round_keys_are_capped_per_member_and_kept_for_the_next_two_rounds_only() {
    use fedmesh_protocol::message::{SecureBody, SecureKeys};
    let now = 1_000;
    let mut secure = spec("central", 4, 5);
    secure.strategy.clip_norm = Some(100.0);
    secure.privacy.secure_aggregation = true;
    let (mut member, job) = lone_member_of(secure, [2, 3], now);
    let keys = |sender: u8, round: Round, opened_at_ms: u64| {
        let keys = SecureKeys {
            member: member_id(sender),
            mask_key: [sender; 32],
            encryption_key: [sender; 32],
            self_mask_commitment: [0; 32],
            signature: vec![0; 64],
        };
        let body = SecureBody::Keys(keys);
        let message =
            SecureAggregation { job, round, opened_at_ms, sender: member_id(sender), body };
        Event::Secure { signer: member_id(sender), message, request: opened_at_ms }
    };
    for opened_at_ms in 0..5 {
        member.handle(keys(2, 1, opened_at_ms), now);
    }
    member.handle(keys(3, 2, 0), now);
    member.handle(keys(3, 3, 0), now); // three rounds ahead: refused
    let kept: Vec<(MemberId, Round, u64)> =
        member.early_keys.iter().map(|(from, m)| (*from, m.round, m.opened_at_ms)).collect();
    let (two, three) = (member_id(2), member_id(3));
    assert_eq!(kept, [(two, 1, 3), (two, 1, 4), (three, 2, 0)]);
    member.handle(Event::LeaveRequested { reason: "done".into() }, now);
    assert!(member.early_keys.is_empty(), "a member that left keeps no round keys");
}

/// A central job whose results every member audits (or a fraction of them).
fn verifiable(members: u8, rounds: u64, auditors: serde_json::Value) -> Net {
    let mut spec = spec("central", rounds, 5);
    let verification = serde_json::json!({"auditors": auditors, "audit_window_secs": 60});
    spec.verification = Some(serde_json::from_value(verification).expect("verification"));
    spec.validate().expect("a verifiable spec");
    let list: Vec<(u8, &str)> = (1..=members).map(|byte| (byte, "a")).collect();
    Net::new(spec, &list)
}

/// The fraud proofs published: (accuser, liar, round).
fn proofs(net: &Net) -> Vec<(MemberId, MemberId, Round)> {
    let proof = |(signer, message): &(MemberId, Gossip)| match message {
        Gossip::FraudProof(a) => Some((*signer, a.liar, a.result.round)),
        _ => None,
    };
    net.published.iter().filter_map(proof).collect()
}

#[test]
fn a_forged_aggregate_is_proven_its_aggregator_excluded_and_its_round_run_again() {
    let rounds = 6;
    let forger = elected_leader_of(rounds, 2);
    let mut net = verifiable(4, rounds, serde_json::json!("all"));
    net.forger = Some(forger);
    let convicted = |net: &Net| {
        net.live_members().all(|m| m.state().excluded.contains(&forger) && m.completed_round() >= 3)
    };
    net.run_until(600_000, convicted);
    // While the job runs, a result built on the condemned model (signed by anyone) is refused.
    let honest = net.live_members().map(|m| m.me()).find(|m| *m != forger).expect("a member");
    let bad = net.member(honest.0[0]).state().condemned.first().copied().expect("condemned");
    let next = net.member(honest.0[0]).completed_round() + 1;
    let mut built_on_bad = forged_result(&mut net, next);
    built_on_bad.base_model = bad;
    net.carry_out(honest, Effect::Publish(Publish::Result(built_on_bad)));
    net.run(600_000);
    assert!(net.rejected("condemned_model"), "{:?}", net.rejections);
    let accused = proofs(&net);
    assert!(!accused.is_empty(), "the forgery was proven");
    assert!(accused.iter().all(|(_, liar, _)| *liar == forger), "{accused:?}");
    let round = accused[0].2;
    for member in net.live_members() {
        assert!(member.state().excluded.contains(&forger), "{} did not exclude it", member.me());
        assert_eq!(member.completed_round(), rounds, "{} completed", member.me());
    }
    net.assert_agree();
    let forged: BTreeSet<ContentHash> =
        net.live_members().flat_map(|m| m.state().condemned.clone()).collect();
    assert!(!forged.is_empty());
    for member in net.live_members() {
        let models: Vec<_> = member.rounds().values().filter_map(|r| r.model).collect();
        assert!(models.iter().all(|m| !forged.contains(m)), "{} kept a forged model", member.me());
    }
    let leaders_after: Vec<MemberId> =
        net.opened.iter().filter(|((r, _), _)| *r > round).map(|(_, opener)| *opener).collect();
    assert!(!leaders_after.contains(&forger), "the liar was elected again");
    let snapshot = &net.snapshots[&member_id(1)];
    assert!(snapshot.state.excluded.contains(&forger), "the exclusion is persisted");
}

#[test]
fn a_false_fraud_proof_is_refused_and_its_accuser_not_believed_again() {
    let mut net = verifiable(4, 40, serde_json::json!("all"));
    net.run_until(600_000, |net| net.live_members().all(|m| m.completed_round() >= 2));
    assert!(proofs(&net).is_empty(), "honest results are not accused");
    let (liar, result) = net
        .member(2)
        .taken
        .iter()
        .find(|(_, r)| r.round == 1)
        .map(|(s, r)| (*s, r.clone()))
        .or_else(|| {
            net.member(3).taken.iter().find(|(_, r)| r.round == 1).map(|(s, r)| (*s, r.clone()))
        })
        .expect("a result of round 1 taken from another member");
    let accuser = net.live_members().map(|m| m.me()).find(|m| *m != liar).expect("an accuser");
    let recomputed = ContentHash::of(b"a lie");
    let accusation = || Accusation { liar, result: result.clone(), recomputed };
    let round_1_audits = |net: &Net| net.audits.iter().filter(|(_, r)| *r == 1).count();
    let audits_before = round_1_audits(&net);
    net.carry_out(accuser, Effect::Publish(Publish::FraudProof(accusation())));
    net.run(1_000);
    let refuted = |net: &Net| {
        net.rejections.iter().filter(|(_, r)| r.reason == Reason::FalseFraudProof).count()
    };
    assert_eq!(refuted(&net), 3, "every other member recomputed and refused it");
    assert!(Reason::FalseFraudProof.proves_misbehaviour());
    // The members that audited round 1 already answer from their verdict; only its
    // aggregator, which did not audit its own result, recomputes it.
    assert_eq!(round_1_audits(&net), audits_before + 1, "one recomputation per result");
    for member in net.live_members() {
        assert!(member.state().excluded.is_empty(), "{} believed it", member.me());
    }
    // The same accuser again: refused unread, no recomputation.
    net.carry_out(accuser, Effect::Publish(Publish::FraudProof(accusation())));
    net.run(1_000);
    assert_eq!(round_1_audits(&net), audits_before + 1, "no more work");
    assert_eq!(refuted(&net), 6, "refused unread by the 3 others");
    net.run(600_000);
    net.assert_agree();
}

#[test]
fn a_fraction_of_auditors_audits_some_results_and_all_audit_every_one() {
    let mut all = verifiable(6, 3, serde_json::json!("all"));
    all.run(600_000);
    all.assert_agree();
    // Every member but each round's aggregator audits its result.
    assert_eq!(all.audits.len(), 3 * 5, "{:?}", all.audits);
    let mut some = verifiable(6, 3, serde_json::json!({"fraction": 0.5}));
    some.run(600_000);
    some.assert_agree();
    let audited = some.audits.len();
    assert!(audited > 0 && audited < 3 * 5, "about half audit: {audited}");
    let auditors: BTreeSet<MemberId> = some.audits.iter().map(|(m, _)| *m).collect();
    assert!(auditors.len() > 1, "not one member alone: {auditors:?}");
}

/// Four members with real keys running a central job (secure when asked), every trainer's
/// update within the clip.
fn four_central_secure(rounds: u64, secure: bool) -> Net {
    REAL_KEYS.set(true);
    let mut spec = spec("central", rounds, 5);
    spec.strategy.clip_norm = Some(100.0);
    spec.privacy.secure_aggregation = secure;
    spec.validate().expect("a valid spec");
    Net::new(spec, &[(1, "a"), (2, "a"), (3, "a"), (4, "a")])
}

/// Asserts that two runs of a job end with the same model, up to the quantization of secure
/// aggregation.
fn assert_same_model(plain: &Net, secure: &Net) {
    let (a, b) = (final_params(plain), final_params(secure));
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() < 1e-4, "plain {a:?}, secure {b:?}");
    }
}

fn final_params(net: &Net) -> Vec<f32> {
    let model = net.member(1).model();
    net.blobs[&model].to_vec()
}

/// Whether a secure message is a masked update (or the unmask request) to or from `byte`.
fn is_body(event: &Event, kind: &str) -> bool {
    matches!(event, Event::Secure { message, .. } if message.body.kind() == kind)
}

#[test]
fn a_secure_central_round_sends_only_masked_updates_and_makes_the_plain_model() {
    let mut plain = four_central_secure(3, false);
    plain.run(60_000);
    plain.assert_agree();
    let mut secure = four_central_secure(3, true);
    secure.run(60_000);
    secure.assert_agree();
    assert!(secure.refusals.is_empty(), "{:?}", secure.refusals);
    for round in 1..=3 {
        assert_eq!(secure.member(2).rounds()[&round].participants, 4, "round {round}");
    }
    assert!(secure.deltas.is_empty(), "no plain delta travels in a secure job");
    let masked = secure.secure_sent.iter().filter(|(_, _, m)| m.body.kind() == "secure_masked");
    assert_eq!(masked.count(), 3 * 3, "three trainers send the leader a masked update a round");
    assert_same_model(&plain, &secure);
}

/// What a secure round's leader receives is masked, never a trainer's update: member b's update
/// is b/100 on every parameter, so its quantized form is a constant vector, while each masked
/// vector the leader got has no two coordinates alike. No plain delta reaches it, and the
/// other messages carry keys and shares, not vectors.
#[test]
fn a_secure_rounds_leader_receives_only_masked_updates_keys_and_shares() {
    use fedmesh_protocol::message::SecureBody;
    let mut secure = four_central_secure(2, true);
    secure.run(60_000);
    secure.assert_agree();
    assert!(secure.deltas.is_empty(), "no plain update travels");
    let mut masked = 0;
    for (from, to, message) in &secure.secure_sent {
        let SecureBody::Masked { values, .. } = &message.body else { continue };
        assert_ne!(from, to);
        let distinct: BTreeSet<u64> = values.iter().copied().collect();
        assert_eq!(distinct.len(), values.len(), "{from} sent {to} an unmasked update: {values:?}");
        masked += 1;
    }
    assert_eq!(masked, 2 * 3, "three trainers a round send the leader a masked update");
}

/// Four members with real keys running a secure central job whose every result all audit.
fn verifiable_secure(rounds: u64) -> Net {
    let mut net = four_central_secure(rounds, true);
    let verification = serde_json::json!({"auditors": "all", "audit_window_secs": 60});
    let verification = serde_json::from_value(verification).expect("verification");
    net.spec.verification = Some(verification);
    for member in net.members.values_mut() {
        member.setup.spec.verification = net.spec.verification.clone();
    }
    net.spec.validate().expect("a verifiable secure spec");
    net
}

/// A verifiable secure job: every member audits each result from the evidence its leader kept
/// (signed masked updates, the revealed seeds), finds each honest, and the model is the plain
/// job's. A forged aggregate is proven and its aggregator excluded.
#[test]
fn a_secure_rounds_result_is_audited_from_its_evidence_and_a_forgery_proven() {
    let mut honest = verifiable_secure(3);
    honest.run(60_000);
    honest.assert_agree();
    assert!(honest.refusals.is_empty(), "{:?}", honest.refusals);
    assert_eq!(honest.audits.len(), 3 * 3, "three members audit each result");
    assert!(proofs(&honest).is_empty(), "honest results are not accused");
    assert!(honest.deltas.is_empty(), "no plain delta travels");
    let mut plain = four_central_secure(3, false);
    plain.run(60_000);
    assert_same_model(&plain, &honest);

    let rounds = 5;
    let mut rehearsal = verifiable_secure(rounds);
    rehearsal.run(600_000);
    let opener = rehearsal.opened.iter().find(|((r, _), _)| *r == 2).map(|(_, opener)| *opener);
    let forger = opener.expect("round 2 opened");
    let mut lying = verifiable_secure(rounds);
    lying.forger = Some(forger);
    lying.run(600_000);
    let accused = proofs(&lying);
    assert!(!accused.is_empty(), "the forgery was proven");
    assert!(accused.iter().all(|(_, liar, _)| *liar == forger), "{accused:?}");
    for member in lying.live_members() {
        assert!(member.state().excluded.contains(&forger), "{} did not exclude it", member.me());
        assert_eq!(member.completed_round(), rounds, "{} completed", member.me());
    }
    lying.assert_agree();
}

/// Six members with real keys in two groups of three, under the hierarchical topology (secure
/// when asked).
fn two_secure_groups(rounds: u64, secure: bool) -> Net {
    REAL_KEYS.set(true);
    let mut spec = spec("hierarchical", rounds, 5);
    spec.strategy.clip_norm = Some(100.0);
    spec.privacy.secure_aggregation = secure;
    spec.validate().expect("a valid spec");
    let members = [(1, "eu"), (2, "eu"), (3, "eu"), (4, "na"), (5, "na"), (6, "na")];
    Net::new(spec, &members)
}

/// Under the hierarchical topology each group's aggregator runs its group's secure round: the
/// trainers send masked updates to their own group's aggregator alone, only group means travel
/// up, and the model is the plain job's.
#[test]
fn a_secure_hierarchical_round_masks_each_group_and_makes_the_plain_model() {
    use fedmesh_protocol::message::SecureBody;
    let mut plain = two_secure_groups(2, false);
    plain.run(60_000);
    plain.assert_agree();
    let mut secure = two_secure_groups(2, true);
    secure.run(60_000);
    secure.assert_agree();
    assert!(secure.refusals.is_empty(), "{:?}", secure.refusals);
    assert!(secure.deltas.is_empty(), "no plain delta travels in a secure job");
    for round in 1..=2 {
        let record = &secure.member(1).rounds()[&round];
        assert_eq!(record.participants, 6, "round {round}");
        let group_slot = |group: &str| {
            let slot = record.slots.iter().find(|(slot, _)| slot.ends_with(&format!("/{group}")));
            slot.map(|(_, aggregator)| *aggregator)
        };
        let (eu, na) = (group_slot("eu"), group_slot("na"));
        assert!(eu.is_some() && na.is_some(), "a slot per group: {:?}", record.slots);
        let masked = secure
            .secure_sent
            .iter()
            .filter(|(_, _, m)| m.round == round && matches!(m.body, SecureBody::Masked { .. }));
        let mut senders = 0;
        for (from, to, _) in masked {
            let own = if [4, 5, 6].map(member_id).contains(from) { na } else { eu };
            assert_eq!(Some(*to), own, "{from} masks for its own group's aggregator");
            senders += 1;
        }
        assert_eq!(senders, 4, "each group's two other trainers send masked updates");
    }
    assert_same_model(&plain, &secure);
}

/// A group's aggregator that hears the round's gossip (results, openings) later than its
/// trainers gets their updates, plain or secure, before it follows the opening they answer, and
/// before it holds the base they trained on: it keeps them until it does, and every round has
/// every member.
#[test]
fn a_group_aggregator_that_hears_gossip_late_keeps_the_updates_that_come_first() {
    for secure in [false, true] {
        let mut net = two_secure_groups(6, secure);
        for lagging in [2, 5] {
            net.gossip_lag_ms.insert(member_id(lagging), 300);
        }
        net.run(120_000);
        net.assert_agree();
        let rounds = net.member(1).rounds();
        let participants: Vec<usize> = rounds.values().map(|r| r.participants).collect();
        assert_eq!(participants, [6; 6], "secure: {secure}; {:?}", net.refusals);
        assert!(net.refusals.is_empty(), "secure: {secure}; {:?}", net.refusals);
        let lagging_led = rounds.values().filter(|r| {
            r.slots.values().any(|aggregator| [2, 5].map(member_id).contains(aggregator))
        });
        assert!(lagging_led.count() > 0, "a lagging member aggregated some round's group");
        for record in rounds.values() {
            let seconds = record.closed_at_ms.expect("closed") - record.opened_at_ms;
            assert!(seconds < 2_500, "round {} waited for a group's deadline", record.round);
        }
    }
}

/// A group's trainer whose masked updates are lost: its group's aggregator closes the group's
/// secure round at the group's deadline with the two others, and every round completes.
#[test]
fn a_secure_group_goes_on_without_a_trainer_whose_masked_update_is_lost() {
    let mut net = two_secure_groups(2, true);
    let five = member_id(5);
    net.drop = Some(Box::new(move |from, to, event| {
        from == five && from != to && is_body(event, "secure_masked")
    }));
    net.run(120_000);
    net.assert_agree();
    let counted: Vec<usize> = (1..=2).map(|r| net.member(1).rounds()[&r].participants).collect();
    // Member 5's own masked update is lost unless it aggregates its group that round.
    assert!(counted.iter().all(|n| *n == 5 || *n == 6), "{counted:?}");
    assert!(counted.contains(&5), "{counted:?}");
}

#[test]
fn a_secure_round_completes_when_a_trainer_drops_after_its_masked_update_or_before() {
    // Member 3 never hears the unmask request (dropped after sending its masked update).
    let mut after = four_central_secure(2, true);
    let three = member_id(3);
    after.drop = Some(Box::new(move |_, to, event| to == three && is_body(event, "secure_unmask")));
    after.run(60_000);
    after.assert_agree();
    // Member 4's masked updates are lost (dropped after dealing its shares): the leader closes
    // at its deadline with the quorum, the dropout's masks removed from its mask key's shares.
    let mut before = four_central_secure(2, true);
    before.spec.quorum = fedmesh_protocol::spec::Quorum::Count(3);
    for member in before.members.values_mut() {
        member.setup.spec.quorum = fedmesh_protocol::spec::Quorum::Count(3);
    }
    let four = member_id(4);
    before.drop =
        Some(Box::new(move |from, _, event| from == four && is_body(event, "secure_masked")));
    before.run(60_000);
    before.assert_agree();
    let counted: Vec<usize> = (1..=2).map(|r| before.member(1).rounds()[&r].participants).collect();
    assert!(counted.iter().all(|&n| n == 3 || n == 4), "{counted:?}");
}

/// The server optimizers of the FedOpt family, as a job spec states them.
fn every_server_optimizer() -> Vec<fedmesh_protocol::strategy::ServerOptimizerSpec> {
    use fedmesh_protocol::strategy::{AdaptiveParams, ServerOptimizerSpec};
    let adaptive = AdaptiveParams { eta: 0.05, beta1: 0.9, beta2: 0.99, tau: 1e-3 };
    vec![
        ServerOptimizerSpec::FedAvgM { eta: 1.0, beta1: 0.9 },
        ServerOptimizerSpec::FedAdam(adaptive.clone()),
        ServerOptimizerSpec::FedYogi(adaptive.clone()),
        ServerOptimizerSpec::FedAdagrad(adaptive),
    ]
}

/// A central job of 8 members and `rounds` rounds with the server optimizer `server`, whose id
/// is drawn from `draw`.
fn eight_with_optimizer(
    server: fedmesh_protocol::strategy::ServerOptimizerSpec,
    rounds: u64,
    draw: u64,
) -> Net {
    let mut spec = spec("central", rounds, 5);
    spec.strategy.server = Some(server);
    let members: Vec<(u8, &str)> = (1..=8).map(|byte| (byte, "a")).collect();
    let job = JobId(ContentHash::of(format!("rotating {draw}").as_bytes()));
    Net::with_job(spec, &members, job)
}

/// The first draw of a job id whose 20 rounds each elect another aggregator than the round
/// before (the election ranks members by job, round and key: about one job id in twelve).
fn rotating_draw() -> u64 {
    let rotates = |draw: &u64| {
        let mut net = eight_with_optimizer(every_server_optimizer().remove(0), 20, *draw);
        net.run(600_000);
        net.aggregators().windows(2).all(|pair| pair[0] != pair[1])
    };
    (0..200).find(rotates).expect("a job id whose aggregator changes every round")
}

impl Net {
    /// The result of `round` its aggregator announced, for the model the members agree on.
    fn announced_result(&self, round: Round) -> &AggregateReady {
        let model = self.round_model(round).expect("the round's model");
        let announced = self.published.iter().find_map(|(_, message)| match message {
            Gossip::Result(ready) if ready.round == round && ready.model == model => Some(ready),
            _ => None,
        });
        announced.expect("the round's result")
    }

    /// Each round's aggregator, as the members recorded it.
    fn aggregators(&self) -> Vec<MemberId> {
        let rounds = self.member(1).rounds();
        (1..=self.spec.hyperparameters.rounds).map(|round| rounds[&round].aggregator).collect()
    }
}

#[test]
fn each_aggregator_resumes_the_server_optimizer_its_predecessor_left_bit_for_bit() {
    let draw = rotating_draw();
    for server in every_server_optimizer() {
        let mut net = eight_with_optimizer(server.clone(), 20, draw);
        net.run(600_000);
        net.assert_agree();
        let aggregators = net.aggregators();
        let changes = aggregators.windows(2).filter(|pair| pair[0] != pair[1]).count();
        assert_eq!(changes, 19, "{server:?}: the aggregator changes every round: {aggregators:?}");
        // One optimizer that saw every round's combined delta, as a single aggregator would.
        let mut single = ServerOptimizer::from_spec(Some(&server)).expect("a valid optimizer");
        let mut model = net.blobs[&net.announced_result(1).base_model].to_vec();
        for round in 1..=20 {
            let ready = net.announced_result(round);
            let mut sum = fedmesh_aggregation::PartialAggregate::new(PARAMS);
            for c in &ready.contributions {
                let values = &net.trained[&c.delta];
                sum.add(&c.member.to_peer_id_string(), c.samples as f64, values).expect("added");
            }
            single.apply(&mut model, &sum.mean().expect("a mean")).expect("applied");
            let state = ready.optimizer_state.expect("the result names its optimizer state");
            assert_eq!(net.states[&state], single.encode_state(), "{server:?}: round {round}");
            assert_eq!(hash_f32(&model), ready.model, "{server:?}: round {round}'s model");
        }
        // Each aggregator but the first two fetched the state its predecessor made.
        let fetched: BTreeSet<Round> =
            net.state_fetches.iter().map(|(_, round, _)| *round).collect();
        assert!(fetched.len() >= 18, "{server:?}: states fetched for rounds {fetched:?}");
    }
}

#[test]
fn eight_members_complete_twenty_rounds_with_each_optimizer_and_a_new_aggregator_each_round() {
    let draw = rotating_draw();
    for server in every_server_optimizer() {
        let mut net = eight_with_optimizer(server.clone(), 20, draw);
        net.run(600_000);
        net.assert_agree();
        let aggregators = net.aggregators();
        assert!(aggregators.windows(2).all(|pair| pair[0] != pair[1]), "{aggregators:?}");
        let final_model = &net.blobs[&net.member(1).model()];
        assert!(final_model.iter().all(|v| v.is_finite()), "{server:?}: {final_model:?}");
        assert_ne!(net.member(1).model(), net.announced_result(1).base_model);
    }
}

#[test]
fn a_result_without_the_optimizer_state_its_job_needs_is_refused() {
    let server = every_server_optimizer().remove(1);
    let mut net = eight_with_optimizer(server, 3, 0);
    net.run_until(60_000, |net| net.member(2).completed_round() >= 1);
    let mut stateless = net.announced_result(1).clone();
    stateless.optimizer_state = None;
    let (signer, to) = (net.member(1).me(), net.member(2).me());
    let message = Gossip::Result(Arc::new(stateless));
    net.send(signer, to, Event::Gossip { signer, message });
    net.step();
    assert!(net.rejected("bad_message"), "{:?}", net.rejections);
}

/// A central job of `members` whose spec's participation section is `participation`.
fn selecting(participation: serde_json::Value, members: u8, rounds: u64) -> Net {
    let mut spec = spec("central", rounds, 10);
    let json = serde_json::json!({"participation": participation});
    spec.participation = serde_json::from_value(json["participation"].clone()).expect("parses");
    spec.validate().expect("a valid spec");
    let members: Vec<(u8, &str)> = (1..=members).map(|byte| (byte, "a")).collect();
    Net::new(spec, &members)
}

/// The members asked to train for each round.
fn trainers_by_round(net: &Net) -> BTreeMap<Round, BTreeSet<MemberId>> {
    let mut by_round: BTreeMap<Round, BTreeSet<MemberId>> = BTreeMap::new();
    for (member, round) in net.trainings.keys() {
        by_round.entry(*round).or_default().insert(*member);
    }
    by_round
}

fn assert_trainers_per_round(net: &Net, rounds: u64, expected: usize) {
    let by_round = trainers_by_round(net);
    assert_eq!(by_round.len() as u64, rounds, "{by_round:?}");
    for (round, trainers) in &by_round {
        assert_eq!(trainers.len(), expected, "round {round}: {trainers:?}");
        let record = &net.member(1).rounds()[round];
        assert_eq!(record.participants, expected, "round {round}'s result");
    }
}

#[test]
fn a_fraction_below_one_and_max_participants_select_their_counts_every_round() {
    for (participation, expected) in [
        (serde_json::json!({"fraction": 0.5}), 3),
        (serde_json::json!({"max_participants": 2}), 2),
        (serde_json::json!({"fraction": 0.5, "selector": {"oort": {}}}), 3),
        (serde_json::json!({"max_participants": 2, "selector": {"oort": {}}}), 2),
        (serde_json::json!({"selector": {"fedbuff": {"concurrency": 4}}}), 4),
    ] {
        let mut net = selecting(participation.clone(), 6, 6);
        net.run(300_000);
        net.assert_agree();
        assert_trainers_per_round(&net, 6, expected);
        assert!(net.refusals.is_empty(), "{participation}: {:?}", net.refusals);
    }
}

#[test]
fn fedbuff_selects_the_members_counted_least_recently_first() {
    let mut net = selecting(serde_json::json!({"selector": {"fedbuff": {"concurrency": 2}}}), 6, 6);
    net.run(300_000);
    net.assert_agree();
    let by_round = trainers_by_round(&net);
    for first in [1, 4] {
        let three: BTreeSet<MemberId> =
            (first..first + 3).flat_map(|round| by_round[&round].iter().copied()).collect();
        assert_eq!(three.len(), 6, "rounds {first} to {} cover all six: {by_round:?}", first + 2);
    }
}

#[test]
fn openings_of_a_learning_selector_name_the_trainers_and_random_ones_none() {
    for (selector, named) in
        [(serde_json::json!("random"), false), (serde_json::json!({"oort": {}}), true)]
    {
        let mut net = selecting(serde_json::json!({"fraction": 0.5, "selector": selector}), 4, 2);
        net.run(120_000);
        net.assert_agree();
        let openings = net.published.iter().filter_map(|(_, gossip)| match gossip {
            Gossip::Open(open) => Some(open.clone()),
            _ => None,
        });
        for open in openings {
            assert_eq!(open.trainers.is_empty(), !named, "{selector}: {open:?}");
        }
    }
}

/// How many rounds of 30 picked members 1 and 2, five times slower to train than the other
/// eight, when half of ten are selected by `selector`.
fn slow_members_picked(selector: serde_json::Value) -> (u32, u32) {
    let rounds = 30;
    let mut net = selecting(serde_json::json!({"fraction": 0.5, "selector": selector}), 10, rounds);
    for byte in 1..=10u8 {
        let ms = if byte <= 2 { 2_000 } else { 400 };
        net.train_ms.insert(member_id(byte), ms);
    }
    net.run(1_200_000);
    net.assert_agree();
    assert_trainers_per_round(&net, rounds, 5);
    let by_round = trainers_by_round(&net);
    let picked = |byte| by_round.values().filter(|t| t.contains(&member_id(byte))).count() as u32;
    (picked(1), picked(2))
}

#[test]
fn oort_selects_slow_members_less_often_than_random_and_still_explores_them() {
    let (random_1, random_2) = slow_members_picked(serde_json::json!("random"));
    let (oort_1, oort_2) = slow_members_picked(serde_json::json!({"oort": {"exploration": 0.2}}));
    eprintln!(
        "slow members picked in 30 rounds: random {random_1} + {random_2}, oort {oort_1} + {oort_2}"
    );
    assert!(
        oort_1 + oort_2 < random_1 + random_2,
        "oort {oort_1} + {oort_2}, random {random_1} + {random_2}"
    );
    assert!(oort_1 > 0 && oort_2 > 0, "exploration picks each sometimes: {oort_1}, {oort_2}");
}

mod asynchronous;
