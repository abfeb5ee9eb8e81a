//! Carrying a scenario's events out on the running cluster when the job reaches their round, and
//! knowing which nodes are still members and which one is safe to follow.

use crate::attack_runs::Attacks;
use crate::cluster::{Cluster, NodeProcess, NodeSpec};
use crate::events::{Action, Event, FiredEvent, KillAfter, Target};
use crate::follow::open_round;
use fedmesh_admin_api::{RunView, metric_value};
use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

/// How long a joining node may take to learn the job and join it.
const JOIN_LIMIT: Duration = Duration::from_secs(30);

/// The events still to fire, and what the fired ones did to the cluster.
pub struct EventRunner {
    job: String,
    pending: VecDeque<Event>,
    pub fired: Vec<FiredEvent>,
    /// Nodes some event was carried out on: they are not followed.
    touched: BTreeSet<usize>,
    /// Nodes whose operator left the job.
    left: BTreeSet<usize>,
    /// How each node that will ever exist is started (joiners are started from theirs).
    specs: Vec<NodeSpec>,
    started: Instant,
    /// The hostile processes `attack` events started (none without a hostile binary).
    pub attacks: Option<Attacks>,
}

impl EventRunner {
    /// `events` in firing order; `specs` for every node that will ever exist.
    /// The events that make nodes misbehave from the start count as fired when the nodes started
    /// (their specs carry the `misbehave` line).
    pub fn new(job: String, events: &[Event], specs: Vec<NodeSpec>, started: Instant) -> Self {
        let (at_start, pending): (Vec<&Event>, Vec<&Event>) =
            events.iter().partition(|event| event.misbehaves_from_start().is_some());
        let mut runner = Self {
            job,
            pending: pending.into_iter().cloned().collect(),
            fired: Vec::new(),
            touched: BTreeSet::new(),
            left: BTreeSet::new(),
            specs,
            started,
            attacks: None,
        };
        for event in at_start {
            runner.record_started_misbehaving(event);
        }
        runner
    }

    /// Runs `attack` events with the hostile `binary`, logging into `dir`.
    pub fn with_hostile(mut self, binary: std::path::PathBuf, dir: std::path::PathBuf) -> Self {
        self.attacks = Some(Attacks::new(binary, dir));
        self
    }

    fn record_started_misbehaving(&mut self, event: &Event) {
        let Some((nodes, kind)) = event.misbehaves_from_start() else { return };
        self.touched.extend(nodes);
        self.fired.push(FiredEvent {
            event: event.describe(),
            round: event.round,
            fired_in_round: event.round,
            at_seconds: 0.0,
            nodes: nodes.iter().map(|node| format!("node{node}")).collect(),
            outcome: format!("started with misbehave = {kind}"),
            ok: true,
        });
    }

    pub fn pending(&self) -> impl Iterator<Item = &Event> {
        self.pending.iter()
    }

    /// The node to follow the job on: the first running node no event has touched.
    pub fn observer(&self, cluster: &Cluster) -> Option<usize> {
        (0..cluster.nodes.len())
            .find(|i| cluster.nodes[*i].is_running() && !self.touched.contains(i))
    }

    /// The nodes taking part now: running and not left.
    pub fn members(&self, cluster: &Cluster) -> Vec<usize> {
        (0..cluster.nodes.len())
            .filter(|i| cluster.nodes[*i].is_running() && !self.left.contains(i))
            .collect()
    }

    /// Fires every pending event whose round `run` (the followed node's run view) has reached.
    pub async fn fire_due(
        &mut self,
        cluster: &mut Cluster,
        run: Option<&RunView>,
    ) -> Vec<FiredEvent> {
        let mut fired = Vec::new();
        let Some(run) = run else {
            return fired; // not joined yet, or the node did not answer this time
        };
        while let Some(event) = self.pending.front() {
            let in_progress = run.completed_round + 1;
            if in_progress < event.round {
                break;
            }
            let Some(nodes) = self.resolve(cluster, event, run, in_progress) else {
                break; // the round in progress has not opened yet: its aggregator is unknown
            };
            let Some(event) = self.pending.pop_front() else { break };
            let record = self.carry_out(cluster, &event, nodes, in_progress).await;
            self.fired.push(record.clone());
            fired.push(record);
        }
        fired
    }

    /// The nodes an event is for, or `None` while the round's aggregator is not known yet.
    fn resolve(
        &self,
        cluster: &Cluster,
        event: &Event,
        run: &RunView,
        in_progress: u64,
    ) -> Option<Result<Vec<usize>, String>> {
        if event.action == Action::Attack && event.target.is_none() {
            return Some(Ok(Vec::new()));
        }
        if event.action == Action::Join {
            let first = cluster.nodes.len();
            return Some(Ok((first..first + event.count.unwrap_or(1)).collect()));
        }
        match &event.target {
            Some(Target::Nodes(nodes)) => Some(Ok(nodes.clone())),
            Some(Target::Aggregator) => {
                let (round, aggregator) = open_round(run).filter(|(r, _)| *r >= in_progress)?;
                let index = cluster.nodes.iter().position(|n| n.peer_id == aggregator);
                Some(index.map(|i| vec![i]).ok_or_else(|| {
                    format!("round {round}'s aggregator {aggregator} is no node of this testnet")
                }))
            }
            None => Some(Err("the event names no target".into())),
        }
    }

    async fn carry_out(
        &mut self,
        cluster: &mut Cluster,
        event: &Event,
        nodes: Result<Vec<usize>, String>,
        in_progress: u64,
    ) -> FiredEvent {
        let at_seconds = self.started.elapsed().as_secs_f64();
        let (names, outcome) = match nodes {
            Ok(nodes) => {
                let names = nodes.iter().map(|i| format!("node{i}")).collect();
                (names, self.act_on_all(cluster, event, &nodes).await)
            }
            Err(problem) => (Vec::new(), Err(problem)),
        };
        let ok = outcome.is_ok();
        FiredEvent {
            event: event.describe(),
            round: event.round,
            fired_in_round: in_progress,
            at_seconds,
            nodes: names,
            outcome: outcome.unwrap_or_else(|problem| format!("FAILED: {problem}")),
            ok,
        }
    }

    /// Carries the event out on each node; what happened, or the first problem.
    async fn act_on_all(
        &mut self,
        cluster: &mut Cluster,
        event: &Event,
        nodes: &[usize],
    ) -> Result<String, String> {
        if event.action == Action::Attack {
            self.touched.extend(nodes);
            return self.attack(cluster, event, nodes.first().copied());
        }
        let mut outcome = String::new();
        for &node in nodes {
            self.touched.insert(node);
            outcome =
                self.act(cluster, event, node).await.map_err(|e| format!("node{node}: {e}"))?;
        }
        Ok(outcome)
    }

    async fn act(
        &mut self,
        cluster: &mut Cluster,
        event: &Event,
        node: usize,
    ) -> Result<String, String> {
        if event.action == Action::Join {
            return self.join(cluster, node).await;
        }
        let process = cluster.nodes.get_mut(node).ok_or("no such node")?;
        let running = process.is_running();
        match event.action {
            Action::Restart if running => return Err("is running, not killed".into()),
            Action::Kill | Action::Leave | Action::Rejoin | Action::Byzantine if !running => {
                return Err("is not running".into());
            }
            _ => {}
        }
        match event.action {
            Action::Kill => match event.after {
                Some(KillAfter::MaskedUpdate) => {
                    let sent = masked_update_sent(process, &self.job, event.round).await?;
                    process.kill();
                    Ok(format!("killed (SIGKILL) right after its masked update of round {sent}"))
                }
                None => {
                    process.kill();
                    Ok("killed (SIGKILL)".into())
                }
            },
            Action::Restart => {
                cluster.restart_with(node, None).await.map_err(|e| e.to_string())?;
                Ok("restarted from its data directory".into())
            }
            Action::Leave => {
                process.api.leave(&self.job).await.map_err(|e| e.to_string())?;
                self.left.insert(node);
                Ok("left the job through its admin API (a signed leave)".into())
            }
            Action::Rejoin => {
                process.api.join(&self.job, None).await.map_err(|e| e.to_string())?;
                self.left.remove(&node);
                Ok("joined the job again through its admin API".into())
            }
            Action::Byzantine => {
                let kind = event.misbehaviour();
                process.stop();
                cluster.restart_with(node, Some(kind)).await.map_err(|e| e.to_string())?;
                Ok(format!("restarted from its data directory with misbehave = {kind}"))
            }
            Action::Join | Action::Attack => Err("join and attack are handled above".into()),
        }
    }

    /// Starts the hostile peer against every running node, with `victim` (a node index).
    fn attack(
        &mut self,
        cluster: &Cluster,
        event: &Event,
        victim: Option<usize>,
    ) -> Result<String, String> {
        let victim = match victim {
            Some(node) => Some(cluster.nodes.get(node).ok_or("no such node")?.peer_id.as_str()),
            None => None,
        };
        let running = cluster.nodes.iter().filter(|node| node.is_running());
        let peers: Vec<String> = running.map(|node| node.address.clone()).collect();
        let attacks = self.attacks.as_mut().ok_or("this run has no hostile binary")?;
        attacks.launch(event, &self.job, &peers, victim)
    }

    /// Starts node `node` on its own share of the data; it joins the job by itself.
    async fn join(&mut self, cluster: &mut Cluster, node: usize) -> Result<String, String> {
        if node != cluster.nodes.len() {
            return Err(format!("would be node{}", cluster.nodes.len()));
        }
        let spec = self.specs.get(node).ok_or("has no share of the data")?;
        let process = cluster.start_node(spec).await.map_err(|e| e.to_string())?;
        let up = Instant::now();
        while up.elapsed() < JOIN_LIMIT {
            if process.api.job(&self.job).await.is_ok_and(|view| view.run.is_some()) {
                let later = up.elapsed().as_secs_f64();
                return Ok(format!(
                    "started on its own share of the data; it joined the job {later:.1} s later"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!("started, but had not joined the job after {} s", JOIN_LIMIT.as_secs()))
    }

    /// What every event did, for the checks: the events that never fired or failed.
    pub fn problems(&self) -> Vec<String> {
        let failed =
            self.fired.iter().filter(|e| !e.ok).map(|e| format!("{}: {}", e.event, e.outcome));
        let unfired = self
            .pending
            .iter()
            .map(|e| format!("{}: never fired (the job ended first)", e.describe()));
        failed.chain(unfired).collect()
    }
}

/// The longest a kill waits for its node's masked update.
const MASKED_UPDATE_WAIT: Duration = Duration::from_secs(60);

/// Waits (polling its metrics every 5 ms) until `node` delivered its masked update of `round`
/// or a later one; that round.
async fn masked_update_sent(node: &NodeProcess, job: &str, round: u64) -> Result<u64, String> {
    let sample = format!("fedmesh_job_masked_update_round{{job=\"{job}\"}}");
    let started = Instant::now();
    loop {
        let metrics = node.api.metrics().await.map_err(|e| e.to_string())?;
        let sent = metric_value(&metrics, &sample) as u64;
        if sent >= round {
            return Ok(sent);
        }
        if started.elapsed() > MASKED_UPDATE_WAIT {
            return Err(format!("sent no masked update of round {round} or later in 60 s"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
