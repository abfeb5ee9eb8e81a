//! The simulated world: every member's machine, its wake-ups, persisted snapshot and
//! incarnation, the single event queue that orders everything, kills and restarts, and the run
//! loop that ends in a report.

use crate::adversary;
use crate::blobs::Blobs;
use crate::check::Checker;
use crate::config::{AdversaryKind, Config};
use crate::faults::{Fault, Faults};
use crate::job;
use crate::local::{Learner, LocalError};
use crate::network::{Index, Network, mix};
use crate::queue::Queue;
use crate::report::{Counters, Report, Status};
use crate::trace::Trace;
use crate::transfer::{AskJob, FetchJob, Transfer};
use fedmesh_federation::member::{Effect, Event, Gossip, Member, Setup, Snapshot};
use fedmesh_federation::records::RunStatus;
use fedmesh_protocol::ids::{ContentHash, MemberId, Round};
use fedmesh_protocol::tensor::hash_f32;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

/// The virtual clock's start: a plausible Unix time in milliseconds.
pub const START_MS: u64 = 1_700_000_000_000;
/// Members join over this long after the start.
const JOIN_SPREAD_MS: u64 = 1_000;
/// How often the run checks whether every member is done.
const CHECK_EVERY_MS: u64 = 100;
/// How often a progress line is printed (simulated time).
const PROGRESS_EVERY_MS: u64 = 60_000;

/// Why a run cannot start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Job(#[from] crate::job::JobError),
    #[error(transparent)]
    Local(#[from] LocalError),
}

/// Something scheduled on the queue.
pub(crate) enum Action {
    /// Member `member` starts and joins the job.
    Start(Index),
    /// A gossip copy from `from` arrives at `to`.
    Gossip {
        to: Index,
        from: Index,
        message: Arc<Gossip>,
    },
    /// A message sent from `from` to `to` alone arrives (a join, a pull of the member list or
    /// its answer), as the event it is fed as.
    Direct {
        to: Index,
        from: Index,
        event: Box<Event>,
    },
    /// A member's wake-up (stale unless it is the member's pending one).
    Tick {
        member: Index,
        incarnation: u32,
        at: u64,
    },
    /// Local work (or a reply) for the incarnation of `member` that asked for it.
    Done {
        member: Index,
        incarnation: u32,
        event: Box<Event>,
    },
    /// A member's training finishes (the update is computed then). Boxed, as the other large
    /// actions: the queue holds millions of small ones (a broadcast to ten thousand members is
    /// ten thousand copies), each as large as the largest variant.
    Train(Box<Training>),
    /// An attempt to send an update, and its arrival.
    Send(Box<Transfer>),
    Arrive(Box<Transfer>),
    /// An attempt to fetch a model.
    Fetch(Box<FetchJob>),
    /// Ask the next member on an asker's list for a missed result.
    AskNext(Box<AskJob>),
    /// A request for a missed result arrives at the member it asks.
    AskArrive {
        request: u64,
    },
    /// A request for a missed result got no answer in time.
    AskTimeout {
        request: u64,
    },
    Fault(Fault),
}

/// A member's training, due when it finishes.
pub(crate) struct Training {
    pub(crate) member: Index,
    pub(crate) incarnation: u32,
    pub(crate) round: Round,
    pub(crate) base: ContentHash,
    pub(crate) params: Arc<Vec<f32>>,
}

/// One member: its machine while it runs, and what outlives a kill.
pub(crate) struct Node {
    pub(crate) setup: Setup,
    pub(crate) machine: Option<Member>,
    /// Bumped at every kill: work asked by an earlier incarnation is dropped.
    pub(crate) incarnation: u32,
    /// The pending wake-up, if any (the earliest asked for).
    pub(crate) wake: Option<u64>,
    /// The last snapshot it persisted, kept only for a member that will restart.
    pub(crate) snapshot: Option<Snapshot>,
    pub(crate) restarts: bool,
    pub(crate) adversary: Option<AdversaryKind>,
    /// Rounds a hijacker already answered.
    pub(crate) hijacked: BTreeSet<Round>,
}

impl Node {
    pub(crate) fn is_alive(&self) -> bool {
        self.machine.is_some()
    }

    pub(crate) fn is_honest(&self) -> bool {
        self.adversary.is_none()
    }
}

/// The whole simulation.
pub struct World {
    pub(crate) config: Config,
    pub(crate) queue: Queue<Action>,
    pub(crate) rng: ChaCha8Rng,
    pub(crate) network: Network,
    pub(crate) learner: Learner,
    pub(crate) nodes: Vec<Node>,
    pub(crate) ids: BTreeMap<MemberId, Index>,
    pub(crate) blobs: Blobs,
    /// The deltas members keep for auditors (verifiable jobs), by payload hash.
    pub(crate) deltas: Blobs,
    /// The evidence secure rounds' leaders keep for auditors (verifiable secure jobs), by hash.
    pub(crate) evidence: Blobs<Arc<Vec<u8>>>,
    /// Server optimizers' state blobs (jobs with one), by hash, with the members holding each.
    pub(crate) optimizer_states: Blobs<Arc<Vec<u8>>>,
    /// The models forge-aggregate members announced.
    pub(crate) forged: BTreeSet<ContentHash>,
    pub(crate) initial: (ContentHash, Arc<Vec<f32>>),
    pub(crate) faults: Faults,
    /// Requests for missed results waiting for their answer.
    pub(crate) asks: BTreeMap<u64, AskJob>,
    pub(crate) next_request: u64,
    /// Each round's openings by honest members: (opener, opening time).
    pub(crate) openings: BTreeMap<Round, BTreeSet<(Index, u64)>>,
    pub(crate) counters: Counters,
    pub(crate) trace: Trace,
    pub(crate) checker: Checker,
    /// Members that will run but do not yet: not started, or killed and not yet restarted.
    pub(crate) awaited: usize,
    started: Instant,
}

impl World {
    /// Sets up the job, the members, the network and the fault schedule of `config`.
    pub fn new(config: Config) -> Result<Self, SimError> {
        config.validate()?;
        let spec = job::spec(&config)?;
        let learner = Learner::new(&config, &spec)?;
        let setups = job::setups(&config, &spec, |member| learner.samples(member))?;
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let adversaries = adversary::assign(&config.adversaries, config.members, &mut rng);
        let faults = Faults::plan(&config, |i| adversaries.contains_key(&i), &mut rng);
        let restarting = match config.restart_after_secs {
            Some(_) => faults.victims(),
            None => BTreeSet::new(),
        };
        let params = Arc::new(learner.initial_params(spec.seed));
        let model = hash_f32(&params);
        let mut blobs = Blobs::default();
        (0..config.members).for_each(|member| blobs.put(model, params.clone(), member));
        let ids = setups.iter().enumerate().map(|(index, setup)| (setup.me, index)).collect();
        let nodes = setups
            .into_iter()
            .enumerate()
            .map(|(index, setup)| Node {
                setup,
                machine: None,
                incarnation: 0,
                wake: None,
                snapshot: None,
                restarts: restarting.contains(&index),
                adversary: adversaries.get(&index).copied(),
                hijacked: BTreeSet::new(),
            })
            .collect();
        let network = Network::new(config.seed, config.latency, config.bandwidth_mbps, config.loss);
        let mut queue = Queue::new(START_MS);
        for member in 0..config.members {
            queue.after(rng.random_range(0..JOIN_SPREAD_MS), Action::Start(member));
        }
        let members = config.members;
        Ok(Self {
            checker: Checker::new(members),
            config,
            queue,
            rng,
            network,
            learner,
            nodes,
            ids,
            blobs,
            deltas: Blobs::default(),
            evidence: Blobs::default(),
            optimizer_states: Blobs::default(),
            forged: BTreeSet::new(),
            initial: (model, params),
            faults,
            asks: BTreeMap::new(),
            next_request: 0,
            openings: BTreeMap::new(),
            counters: Counters::default(),
            trace: Trace::default(),
            awaited: members,
            started: Instant::now(),
        })
    }

    /// Runs until every live honest member is done or simulated time runs out.
    pub fn run(mut self) -> Report {
        let limit = START_MS + (self.config.max_sim_secs * 1_000.0) as u64;
        let mut next_check = START_MS;
        let mut next_progress = START_MS + PROGRESS_EVERY_MS;
        let mut finished = false;
        while let Some(action) = self.queue.pop_until(limit) {
            self.act(action);
            if self.queue.now() >= next_check {
                next_check = self.queue.now() + CHECK_EVERY_MS;
                if self.config.progress && self.queue.now() >= next_progress {
                    next_progress += PROGRESS_EVERY_MS;
                    self.print_progress();
                }
                finished = self.finished();
                if finished {
                    break;
                }
            }
        }
        finished = finished || self.finished();
        self.report(finished)
    }

    /// The index of a member id, if it is one of the simulation's.
    pub(crate) fn index_of(&self, id: &MemberId) -> Option<Index> {
        self.ids.get(id).copied()
    }

    pub(crate) fn is_alive(&self, member: Index) -> bool {
        self.nodes[member].is_alive()
    }

    /// Whether `member` is alive in `incarnation`.
    pub(crate) fn is_current(&self, member: Index, incarnation: u32) -> bool {
        let node = &self.nodes[member];
        node.is_alive() && node.incarnation == incarnation
    }

    /// A fresh request id.
    pub(crate) fn request_id(&mut self) -> u64 {
        self.next_request += 1;
        self.next_request
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::Start(member) => self.start(member),
            Action::Gossip { to, from, message } => self.deliver_gossip(to, from, &message),
            Action::Direct { to, from, event } => self.deliver_direct(to, from, *event),
            Action::Tick { member, incarnation, at } => {
                if self.is_current(member, incarnation) && self.nodes[member].wake == Some(at) {
                    self.nodes[member].wake = None;
                    self.feed(member, Event::Tick);
                }
            }
            Action::Done { member, incarnation, event } => {
                if self.is_current(member, incarnation) {
                    self.feed(member, *event);
                }
            }
            Action::Train(training) => {
                let Training { member, incarnation, round, base, params } = *training;
                if self.is_current(member, incarnation) {
                    let event = self.trained(member, round, base, &params);
                    self.feed(member, event);
                }
            }
            Action::Send(transfer) => self.attempt_send(*transfer),
            Action::Arrive(transfer) => self.arrive(*transfer),
            Action::Fetch(fetch) => self.attempt_fetch(*fetch),
            Action::AskNext(ask) => self.ask_next(*ask),
            Action::AskArrive { request } => self.ask_arrive(request),
            Action::AskTimeout { request } => self.ask_timeout(request),
            Action::Fault(fault) => self.apply(fault),
        }
    }

    /// Feeds one event to a live member's machine and carries out what it asks.
    pub(crate) fn feed(&mut self, member: Index, event: Event) {
        let now = self.queue.now();
        let Some(machine) = self.nodes[member].machine.as_mut() else { return };
        self.trace.record(now, member, &event);
        let effects = machine.handle(event, now);
        self.observe(member);
        self.carry_out(member, effects);
    }

    /// Checks the invariants after `member`'s machine moved.
    fn observe(&mut self, member: Index) {
        let node = &self.nodes[member];
        let Some(machine) = &node.machine else { return };
        let (round, model) = (machine.completed_round(), machine.model());
        let known = self.checker.agreed().len();
        // A verifiable job's members take a forged model until its fraud proof arrives: that
        // provisional adoption is no agreement.
        let provisional = self.config.verification.is_some() && self.forged.contains(&model);
        let honest = node.is_honest() && !provisional;
        self.checker.observe(member, honest, round, model);
        if self.config.progress && self.checker.agreed().len() > known {
            eprintln!(
                "round {round}: model {} first adopted at {:.1} s (wall {:.1} s)",
                &model.to_hex()[..12],
                self.sim_seconds(),
                self.started.elapsed().as_secs_f64()
            );
        }
    }

    fn start(&mut self, member: Index) {
        let now = self.queue.now();
        if self.config.verbose {
            let node = &self.nodes[member];
            let adversary = node.adversary.map_or(String::new(), |kind| format!(" ({kind})"));
            eprintln!(
                "{:>9.3} s member {member} starts as {}{adversary}, group {}",
                self.sim_seconds(),
                node.setup.me,
                node.setup.group
            );
        }
        let (model, params) = self.initial.clone();
        let setup = self.nodes[member].setup.clone();
        let (machine, effects) = Member::join(setup, model, params, now);
        self.awaited -= 1;
        self.nodes[member].machine = Some(machine);
        self.carry_out(member, effects);
    }

    /// A member's training of `round` on `base`, poisoned if it is an adversary that poisons.
    fn trained(&self, member: Index, round: Round, base: ContentHash, params: &[f32]) -> Event {
        let learner = &self.learner;
        let outcome = learner.train(member, round, params).map(|trained| {
            let mut delta = trained.delta;
            if let Some(kind) = self.nodes[member].adversary {
                adversary::poison(kind, &mut delta, mix(self.config.seed ^ member as u64) ^ round);
            }
            fedmesh_federation::member::LocalUpdate {
                delta: Arc::new(delta),
                samples: trained.samples,
                metrics: trained.metrics,
                seconds: learner.train_ms(member, round) as f64 / 1_000.0,
            }
        });
        Event::Trained { round, base, outcome }
    }

    fn apply(&mut self, fault: Fault) {
        if self.config.verbose {
            eprintln!("{:>9.3} s fault: {fault:?}", self.sim_seconds());
        }
        match fault {
            Fault::Kill(member) => self.kill(member),
            Fault::Restart(member) => self.restart(member),
            Fault::Leave(member) => self.leave(member),
            Fault::Rejoin(member) => self.rejoin(member),
            Fault::Partition(cut_off) => self.network.partition(self.config.members, &cut_off),
            Fault::Heal => self.network.heal(),
        }
    }

    fn kill(&mut self, member: Index) {
        let node = &mut self.nodes[member];
        if node.machine.take().is_none() {
            return;
        }
        node.incarnation += 1;
        node.wake = None;
        self.counters.members_killed += 1;
        self.await_back(self.config.restart_after_ms(), Fault::Restart(member));
    }

    /// Schedules `back` (a restart, or a join again) `after` milliseconds from now, if the run
    /// brings members back; the run is not over until it happened.
    fn await_back(&mut self, after: Option<u64>, back: Fault) {
        if let Some(after) = after {
            self.awaited += 1;
            self.queue.after(after, Action::Fault(back));
        }
    }

    /// Rebuilds a killed member from its last snapshot and its model's blob (or joins it anew
    /// if it never persisted).
    fn restart(&mut self, member: Index) {
        self.counters.members_restarted += 1;
        let now = self.queue.now();
        let node = &self.nodes[member];
        let snapshot = node.snapshot.clone();
        let params = snapshot.as_ref().and_then(|s| self.blobs.get(&s.state.model)).cloned();
        let started = match (snapshot, params) {
            (Some(snapshot), Some(params)) => {
                Member::restore(node.setup.clone(), snapshot, params, now)
            }
            _ => {
                let (model, params) = self.initial.clone();
                Member::join(node.setup.clone(), model, params, now)
            }
        };
        self.bring_back(member, started);
    }

    /// Puts the machine of a member awaited back (restarted, or joined again) in place, and
    /// carries out its first effects.
    fn bring_back(&mut self, member: Index, (machine, effects): (Member, Vec<Effect>)) {
        self.awaited -= 1;
        self.nodes[member].machine = Some(machine);
        self.observe(member);
        self.carry_out(member, effects);
    }

    /// A member's operator leaves the job: its machine signs a leave and ends its part (it
    /// joins again later, if the run says so).
    fn leave(&mut self, member: Index) {
        let now = self.queue.now();
        let Some(machine) = self.nodes[member].machine.as_mut().filter(|m| m.is_active()) else {
            return;
        };
        let effects =
            machine.handle(Event::LeaveRequested { reason: "simulated operator".into() }, now);
        self.counters.members_left += 1;
        self.carry_out(member, effects);
        self.await_back(self.config.rejoin_after_ms(), Fault::Rejoin(member));
    }

    /// A member that left joins the job again as a node does: afresh, from the job's initial
    /// model, knowing no member (it catches up from what the others serve).
    fn rejoin(&mut self, member: Index) {
        self.counters.members_rejoined += 1;
        let now = self.queue.now();
        let (model, params) = self.initial.clone();
        let node = &mut self.nodes[member];
        node.incarnation += 1;
        node.wake = None;
        let joined = Member::join(node.setup.clone(), model, params, now);
        self.bring_back(member, joined);
    }

    /// Whether every honest member is done: ended (its job over), or dead for good.
    fn finished(&self) -> bool {
        self.awaited == 0
            && self
                .nodes
                .iter()
                .filter(|node| node.is_honest())
                .all(|node| node.machine.as_ref().is_none_or(|m| !m.is_active()))
    }

    fn print_progress(&self) {
        eprintln!(
            "{:.0} s simulated (wall {:.1} s): {} events, {} queued, {} rounds agreed",
            self.sim_seconds(),
            self.started.elapsed().as_secs_f64(),
            self.trace.events(),
            self.queue.len(),
            self.checker.agreed().len()
        );
    }

    /// Simulated seconds since the start.
    pub(crate) fn sim_seconds(&self) -> f64 {
        (self.queue.now() - START_MS) as f64 / 1_000.0
    }

    /// Checks every live honest member's round records against what it adopted, and counts
    /// the forged models they kept (in all their records).
    fn check_records(&mut self) {
        for (index, node) in self.nodes.iter().enumerate().filter(|(_, n)| n.is_honest()) {
            if let Some(machine) = &node.machine {
                let records = machine.rounds().values().map(|r| (r.round, r.model));
                self.checker.check_records(index, records);
                let forged = machine.rounds().values().filter_map(|r| r.model);
                let kept = forged.filter(|model| self.forged.contains(model)).count();
                self.counters.forged_models_kept += kept as u64;
            }
        }
    }

    /// Prints where every live member stands (for `--verbose`).
    fn print_members(&self) {
        for (index, node) in self.nodes.iter().enumerate() {
            if let Some(machine) = &node.machine {
                let phase = machine.phase();
                eprintln!(
                    "member {index}: {}, completed round {}, phase {} {:?}, model {:?}",
                    machine.status().label(),
                    machine.completed_round(),
                    phase.label(),
                    phase.round(),
                    machine.model()
                );
            }
        }
    }

    fn report(mut self, finished: bool) -> Report {
        if self.config.verbose {
            self.print_members();
        }
        self.check_records();
        let live: Vec<(Index, &Node)> =
            self.nodes.iter().enumerate().filter(|(_, node)| node.is_alive()).collect();
        let machines = |honest_only: bool| {
            live.iter()
                .filter(move |(_, node)| !honest_only || node.is_honest())
                .filter_map(|(index, node)| node.machine.as_ref().map(|m| (*index, m)))
        };
        let honest_models: BTreeSet<ContentHash> = machines(true).map(|(_, m)| m.model()).collect();
        let models_agree = honest_models.len() == 1;
        let failed = machines(true).any(|(_, m)| {
            !matches!(m.status(), RunStatus::Completed | RunStatus::Running | RunStatus::Waiting)
        });
        let members_completed =
            machines(true).filter(|(_, m)| *m.status() == RunStatus::Completed).count();
        let status = match (finished, failed) {
            (_, true) => Status::Failed,
            (true, false) => Status::Completed,
            (false, false) => Status::Stalled,
        };
        let rounds_completed = machines(false).map(|(_, m)| m.completed_round()).min().unwrap_or(0);
        let final_model = models_agree.then(|| honest_models.first().copied()).flatten();
        let live_members = live.len();
        let (final_loss, final_accuracy) = self.final_scores(final_model);
        let mut adversaries = BTreeMap::new();
        for kind in self.nodes.iter().filter_map(|node| node.adversary) {
            *adversaries.entry(kind.name().to_owned()).or_insert(0) += 1;
        }
        Report {
            status,
            members: self.config.members,
            rounds: self.config.rounds,
            topology: format!("{:?}", self.config.topology).to_lowercase(),
            seed: self.config.seed,
            rounds_completed,
            models_agree,
            rounds_repeated: self.openings.values().filter(|o| o.len() > 1).count() as u64,
            messages: self.counters.messages,
            bytes: self.counters.bytes,
            sim_seconds: self.sim_seconds(),
            wall_seconds: self.started.elapsed().as_secs_f64(),
            trace_digest: self.trace.digest(),
            events: self.trace.events(),
            live_members,
            members_completed,
            adversaries,
            final_model: final_model.map(|m| m.to_hex()),
            final_loss,
            final_accuracy,
            round_models: self.checker.agreed().iter().map(|(r, m)| (*r, m.to_hex())).collect(),
            violations: self.checker.violations().to_vec(),
            counters: self.counters,
        }
    }

    /// The final model's loss and accuracy (bench: its root mean square as the loss).
    fn final_scores(&self, model: Option<ContentHash>) -> (Option<f32>, Option<f32>) {
        let Some(params) = model.and_then(|m| self.blobs.get(&m)) else { return (None, None) };
        match self.learner.score(params) {
            Some(metrics) => (metrics.loss, metrics.accuracy),
            None => (Some(fedmesh_learning::BenchModel::rms(params)), None),
        }
    }
}
