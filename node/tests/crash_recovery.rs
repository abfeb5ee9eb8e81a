//! Crash recovery (central topology, real processes): while a job runs, one member at a time (a
//! plain trainer or the round's aggregator) is SIGKILLed at a seeded-random moment and restarted
//! from its data directory. Each time its store reopens, it still knows the job and every round it
//! had completed, and it takes part again; the job then completes on every member with one model
//! per round. `FEDMESH_CRASH_SEED=N` repeats the random draws of a run (whom to kill, when).

mod common;

use common::{
    Job, assert_rounds_once, assert_same_model, federation, plain, run_view, tail, wait_completed,
    wait_for,
};
use fedmesh_admin_api::{RoundView, RunView};
use fedmesh_testnet::cluster::Cluster;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::time::{Duration, Instant};

/// Members of the federation; node0 owns the job, is never killed and sees every round.
const NODES: usize = 4;
/// Kills (and restarts) in the test.
const TRIALS: usize = 20;
/// Rounds of the job: enough that it still runs after the last trial.
const ROUNDS: u64 = 150;
/// Kills land at most this many typical round durations after a round is seen open: during
/// training, the round's close and store writes, the model fetch, or the next round's opening.
const KILL_SPREAD_ROUNDS: f64 = 1.5;
/// How long a restarted member may take to train in a round again.
const RESUME_LIMIT: Duration = Duration::from_secs(30);

/// Whom a trial kills.
#[derive(Debug, Clone, Copy)]
enum Target {
    Trainer,
    Aggregator,
}

/// The latest recorded round, if its model is not in yet (the round is open).
fn open_round(run: &RunView) -> Option<&RoundView> {
    let last = run.rounds.last()?;
    (last.model.is_none() && last.round > run.completed_round).then_some(last)
}

/// The recorded round `round`, if any.
fn round_record(run: &RunView, round: u64) -> Option<&RoundView> {
    run.rounds.iter().find(|r| r.round == round)
}

/// What a member was doing when its view (if it answered one) was read.
fn phase(run: Option<&RunView>) -> String {
    let done = run.map_or(0, |run| run.completed_round);
    match run.and_then(|run| run.rounds.last()) {
        Some(r) if r.model.is_none() => {
            format!("round {} open (training or collecting)", r.round)
        }
        Some(r) if r.round > done => {
            format!("round {} closed, model not taken yet (fetching or storing)", r.round)
        }
        _ => format!("between rounds (holds round {done})"),
    }
}

/// The median duration of the rounds `run` recorded, in milliseconds (at least 50).
fn typical_round_ms(run: &RunView) -> u64 {
    let mut seconds: Vec<f64> = run.rounds.iter().filter_map(|r| r.seconds).collect();
    seconds.sort_by(f64::total_cmp);
    let median = seconds.get(seconds.len() / 2).copied().unwrap_or(0.2);
    ((median * 1e3) as u64).max(50)
}

/// The node whose PeerId is `peer`, if any.
fn node_of(cluster: &Cluster, peer: &str) -> Option<usize> {
    cluster.nodes.iter().position(|n| n.peer_id == peer)
}

/// Checks a restarted member's view against the one read just before it was killed (if it
/// answered one): it knows the job, has not gone back, and still holds every round it had
/// completed, with its model.
fn assert_resumed(before: Option<&RunView>, after: Option<&RunView>, trial: usize) {
    let context =
        || format!("trial {trial}: before the kill {before:#?}\nafter the restart {after:#?}");
    let Some(after) = after else {
        panic!("the restarted member does not know the job: {}", context());
    };
    let status = after.status.as_str();
    assert!(
        ["waiting", "running", "completed"].contains(&status),
        "status {status}: {}",
        context()
    );
    let done = after.completed_round;
    let Some(before) = before else { return };
    assert!(done >= before.completed_round, "completed_round went back: {}", context());
    for round in 1..=before.completed_round {
        let had = round_record(before, round).and_then(|r| r.model.as_ref());
        let has = round_record(after, round).and_then(|r| r.model.as_ref());
        if had.is_some() {
            assert_eq!(had, has, "round {round} lost or changed: {}", context());
        }
    }
    if done > 0 {
        let model = round_record(after, done).and_then(|r| r.model.as_ref());
        assert_eq!(model, Some(&after.model), "no record of the held round: {}", context());
    }
}

/// Waits until `node` has trained in a round after `round` and taken that round's model.
async fn wait_takes_part(cluster: &Cluster, node: usize, job: &str, round: u64, trial: usize) {
    let deadline = Instant::now() + RESUME_LIMIT;
    loop {
        let run = run_view(cluster, node, job).await;
        let trained = run.as_ref().is_some_and(|run| {
            run.rounds.iter().any(|r| {
                r.round > round
                    && r.round <= run.completed_round
                    && r.train_seconds.is_some()
                    && r.model.is_some()
            })
        });
        if trained || run.as_ref().is_some_and(|run| run.status == "completed") {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "trial {trial}: node{node} did not take part again within {RESUME_LIMIT:?}: {run:#?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn members_killed_at_random_moments_reopen_their_store_and_resume() {
    let seed = std::env::var("FEDMESH_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("crash_recovery: seed {seed} (FEDMESH_CRASH_SEED={seed} repeats its random draws)");
    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();
    let root = tempfile::tempdir().unwrap();
    let mut cluster = federation(root.path(), NODES, plain).await;
    let job = Job { deadline_secs: 2, quorum: json!({"fraction": 0.75}), ..Job::new(ROUNDS, 3) }
        .announce(&cluster)
        .await;
    let mut last_open = 0;
    for trial in 0..TRIALS {
        let target = if trial % 2 == 0 { Target::Trainer } else { Target::Aggregator };
        // Anchor on a round opening that node0 sees, then kill a while later.
        let run = wait_for(&cluster, 0, &job, "a new round open", |run| {
            open_round(run).is_some_and(|r| r.round > last_open)
        })
        .await;
        let open = open_round(&run).unwrap();
        let round = open.round;
        assert!(round < ROUNDS, "the job is ending before trial {trial}: raise ROUNDS");
        last_open = round;
        let aggregator = node_of(&cluster, &open.aggregator);
        let victim = match (target, aggregator) {
            (Target::Aggregator, Some(a)) if a != 0 => a,
            _ => {
                let trainers: Vec<usize> = (1..NODES).filter(|&i| Some(i) != aggregator).collect();
                trainers[rng.random_range(0..trainers.len())]
            }
        };
        let spread = (typical_round_ms(&run) as f64 * KILL_SPREAD_ROUNDS) as u64;
        let delay = rng.random_range(0..spread);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        let before = run_view(&cluster, victim, &job).await;
        cluster.nodes[victim].kill();
        let killed_log = cluster.nodes[victim].log();
        let role = if Some(victim) == aggregator { "aggregator" } else { "trainer" };
        eprintln!(
            "trial {trial:2}: {:5.1} s  killed node{victim} ({role} of round {round}) {delay:3} ms after it opened: {}",
            started.elapsed().as_secs_f64(),
            phase(before.as_ref())
        );
        assert!(
            !killed_log.contains("panicked"),
            "node{victim} panicked:\n{}",
            tail(&killed_log, 40)
        );
        if let Err(error) = cluster.restart(victim).await {
            eprintln!("--- node{victim} before the kill:\n{}", tail(&killed_log, 40));
            panic!(
                "trial {trial}: node{victim} does not restart: {error}\n{}",
                cluster.nodes[victim].log()
            );
        }
        let after = run_view(&cluster, victim, &job).await;
        assert_resumed(before.as_ref(), after.as_ref(), trial);
        let done = after.map_or(0, |after| after.completed_round);
        wait_takes_part(&cluster, victim, &job, done, trial).await;
    }
    eprintln!("crash_recovery: {TRIALS} kills done at {:.1} s", started.elapsed().as_secs_f64());
    let runs = wait_completed(&cluster, &job, Duration::from_secs(120)).await;
    eprintln!("crash_recovery: job complete at {:.1} s", started.elapsed().as_secs_f64());
    assert_same_model(&runs);
    assert_rounds_once(&runs, ROUNDS);
    for (node, run) in runs.iter().enumerate() {
        for round in &run.rounds {
            let number = round.round;
            let reference = round_record(&runs[0], number).and_then(|r| r.model.as_ref());
            assert!(
                round.model.is_none() || reference == round.model.as_ref(),
                "node{node} holds another model for round {number} than node0: {round:#?}"
            );
        }
    }
    let counts = common::participants(&runs[0]);
    assert!(counts.iter().all(|&c| c >= 3), "a round closed below its quorum: {counts:?}");
}
