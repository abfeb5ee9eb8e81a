//! Following a job through one node's run view: each round's figures once they are final, and
//! when the job has ended (completed, failed, or stalled).

use crate::cluster::Cluster;
use crate::report::RoundFigures;
use fedmesh_admin_api::{JobView, RoundView, RunView};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long a closed round waits for every member's evaluation before it is reported anyway.
const EVALUATION_GRACE: Duration = Duration::from_secs(3);

/// The end status of a run that followed a long job for only some of its rounds.
pub const STILL_RUNNING: &str = "still running";

/// The round a run view shows open (no model yet), with its aggregator's PeerId.
pub fn open_round(run: &RunView) -> Option<(u64, String)> {
    let open = run.rounds.iter().rev().find(|round| round.model.is_none())?;
    Some((open.round, open.aggregator.clone()))
}

/// Gathers a job's rounds in order, as the followed node records them.
pub struct Follower {
    pub job: String,
    rounds_total: u64,
    /// Stop following after this many rounds, the job still running.
    followed_only: Option<u64>,
    /// A round short of its quorum is opened again at each deadline and closes with what it
    /// has after three (if that is the job's minimum): past four deadlines and half a minute
    /// without a round, the job is stalled. A larger cluster gets a deadline more for every
    /// 25 nodes past 50: its leader shares the cores with all of them and takes their updates
    /// in slowly (at 200 nodes on 2 cores, rounds closed after 5 to 8 deadlines).
    stall_limit: Duration,
    pub rounds: Vec<RoundFigures>,
    /// When each closed but not yet reported round was first seen closed.
    closed_at: BTreeMap<u64, Instant>,
    /// When a round last closed or a new one was first seen open.
    last_progress: Instant,
    /// The newest round seen open: its opening is progress (the first round's comes after
    /// the members joined, which takes minutes for hundreds of nodes).
    newest_opened: u64,
}

impl Follower {
    pub fn new(job: String, rounds_total: u64, round_deadline_secs: u64, nodes: usize) -> Self {
        let deadlines = 4 + nodes.saturating_sub(50) as u64 / 25;
        Self {
            job,
            rounds_total,
            followed_only: None,
            stall_limit: Duration::from_secs(deadlines * round_deadline_secs + 30),
            rounds: Vec::new(),
            closed_at: BTreeMap::new(),
            last_progress: Instant::now(),
            newest_opened: 0,
        }
    }

    /// Ends the run after `rounds` rounds (if some), with the job still running.
    pub fn following_only(mut self, rounds: Option<u64>) -> Self {
        self.followed_only = rounds;
        self
    }

    /// Takes the rounds of `run` (the followed node's run view, if it answered one) that are
    /// final, in order; `members` is how many evaluations a round should get.
    pub async fn take_rounds(
        &mut self,
        cluster: &Cluster,
        run: Option<&RunView>,
        members: usize,
    ) -> Vec<RoundFigures> {
        if let Some((round, _)) = run.and_then(open_round)
            && round > self.newest_opened
        {
            self.newest_opened = round;
            self.last_progress = Instant::now();
        }
        let mut taken = Vec::new();
        let mut training = None;
        for round in run.iter().flat_map(|run| &run.rounds) {
            if let Some(mut figures) = self.final_figures(cluster, round, members) {
                // Every node's view is fetched once a call, not once a round: a fast job's
                // views hold thousands of rounds, and fetching them for each round left the
                // testnet hundreds of rounds behind the job (and its events late).
                if training.is_none() {
                    training = Some(self.training_times(cluster).await);
                }
                let trained = training.as_ref().and_then(|t| t.get(&figures.round));
                figures.train_seconds = mean(trained.map(|t| &t.times));
                figures.trainers = trained.map(|t| t.nodes.clone()).unwrap_or_default();
                self.rounds.push(figures.clone());
                taken.push(figures);
            }
        }
        if !taken.is_empty() {
            self.last_progress = Instant::now();
        }
        taken
    }

    /// `Some(status)` once the job has ended: `"completed"`, or why not (`view` is the
    /// followed node's job view, if it answered one); [`STILL_RUNNING`] once the rounds it
    /// follows only are in.
    pub fn end(&self, view: Option<&JobView>, observer: &str) -> Option<String> {
        if let Some(error) = view.and_then(|view| view.join_error.as_deref()) {
            return Some(format!("{observer} cannot take part: {error}"));
        }
        let run = view.and_then(|view| view.run.as_ref());
        let status = run.map_or("not joined yet", |run| run.status.as_str());
        if status.starts_with("failed") || status == "left" {
            return Some(format!("{observer}: {status}"));
        }
        let taken = self.rounds.len() as u64;
        if self.followed_only.is_some_and(|followed| taken >= followed) {
            return Some(STILL_RUNNING.to_owned());
        }
        if taken >= self.rounds_total {
            return Some("completed".to_owned());
        }
        (self.last_progress.elapsed() > self.stall_limit).then(|| {
            format!(
                "stalled at round {}: no round completed for {} s (see the node logs)",
                self.rounds.len() + 1,
                self.stall_limit.as_secs()
            )
        })
    }

    /// A round's figures (but its training time), if it is the next to report and its
    /// evaluations are in (or late).
    fn final_figures(
        &mut self,
        cluster: &Cluster,
        round: &RoundView,
        members: usize,
    ) -> Option<RoundFigures> {
        let number = round.round;
        if number != self.rounds.len() as u64 + 1 || round.model.is_none() {
            return None;
        }
        let first_seen = *self.closed_at.entry(number).or_insert_with(Instant::now);
        if round.evaluations < members && first_seen.elapsed() < EVALUATION_GRACE {
            return None;
        }
        Some(RoundFigures {
            round: number,
            aggregator: Some(node_name(cluster, &round.aggregator)),
            participants: round.participants,
            evaluations: round.evaluations,
            accuracy: round.accuracy,
            loss: round.loss,
            seconds: round.seconds,
            opened_at_ms: Some(round.opened_at_ms),
            closed_at_ms: round.closed_at_ms,
            train_seconds: None,
            trainers: Vec::new(),
        })
    }

    /// Adds the nodes whose training for a round ended after the round did (an asynchronous
    /// job's slower trainers), and their mean training time, to every round reported.
    pub async fn complete_trainers(&mut self, cluster: &Cluster) {
        let mut training = self.training_times(cluster).await;
        for figures in &mut self.rounds {
            if let Some(trained) = training.remove(&figures.round) {
                figures.train_seconds = mean(Some(&trained.times));
                figures.trainers = trained.nodes;
            }
        }
    }

    /// Each round's local training on every running node that trained in it.
    async fn training_times(&self, cluster: &Cluster) -> BTreeMap<u64, Training> {
        let views =
            cluster.ask_running(|node| async move { (node, node.api.job(&self.job).await) }).await;
        let mut training: BTreeMap<u64, Training> = BTreeMap::new();
        for (node, view) in views {
            let Ok(view) = view else { continue };
            for round in view.run.iter().flat_map(|run| &run.rounds) {
                if let Some(time) = round.train_seconds {
                    let trained = training.entry(round.round).or_default();
                    trained.times.push(time);
                    trained.nodes.push(node.name.clone());
                }
            }
        }
        training
    }
}

/// The nodes that trained in a round, and how long each took.
#[derive(Default)]
struct Training {
    nodes: Vec<String>,
    times: Vec<f64>,
}

/// The mean of some times, if there are any.
fn mean(times: Option<&Vec<f64>>) -> Option<f64> {
    let times = times.filter(|t| !t.is_empty())?;
    Some(times.iter().sum::<f64>() / times.len() as f64)
}

/// The testnet's name for the node with PeerId `peer` (`node3`), or the PeerId.
pub fn node_name(cluster: &Cluster, peer: &str) -> String {
    cluster
        .nodes
        .iter()
        .find(|node| node.peer_id == peer)
        .map_or_else(|| peer.to_owned(), |node| node.name.clone())
}
