//! Orchestration mode with real processes: a coordinator (`coordinate = true`, no data) runs
//! jobs submitted to it; members follow its signed assignments and refuse (and count) forged
//! ones; a killed aggregator is replaced by a new assignment; a member that joins mid-job catches
//! up from its first assignment; a coordinator killed mid-job resumes from its store and no round
//! is lost.

mod common;

use common::{
    BINARY, assert_every_round_once, assert_rounds_once, assert_same_model, cluster_under_owner,
    member_spec, misbehaving, plain, poll_until, refusals, run_view, wait_completed_on, wait_for,
};
use fedmesh_admin_api::{CoordinationView, RoundProgressView};
use fedmesh_node::misbehaviour::Misbehaviour;
use fedmesh_testnet::cluster::{Cluster, NodeSettings, NodeSpec};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// node0 is the coordinator (it holds no data); nodes 1..=members trust it and hold mnist5k.
async fn orchestrated(
    root: &std::path::Path,
    members: usize,
    extra: impl Fn(usize) -> NodeSettings,
) -> Cluster {
    let settings = NodeSettings { coordinate: true, ..NodeSettings::default() };
    let coordinator = |_: &str| NodeSpec { settings, ..NodeSpec::default() };
    cluster_under_owner(root, coordinator, 1..=members, extra).await
}

/// Submits a softmax job on mnist5k to the coordinator; returns its id.
async fn submit(cluster: &Cluster, rounds: u64, extra: Value) -> String {
    let mut spec = json!({
        "name": "orchestrated",
        "model": "softmax",
        "dataset": "mnist5k",
        "hyperparameters": {"rounds": rounds, "local_epochs": 1, "lr": 0.1},
        "participation": {"min_participants": 3},
        "round_deadline_secs": 20,
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    cluster.nodes[0].api.submit(serde_json::to_vec(&spec).unwrap()).await.unwrap().id
}

/// The coordinator's status of the job (none if it does not answer).
async fn status(cluster: &Cluster, job: &str) -> Option<CoordinationView> {
    cluster.nodes[0].api.coordinated_job(job).await.ok()
}

/// Polls the coordinator's status until it answers and `ready` holds (at most a minute).
async fn wait_status(
    cluster: &Cluster,
    job: &str,
    what: &str,
    ready: impl Fn(&CoordinationView) -> bool,
) -> CoordinationView {
    let ready = |view: &Option<CoordinationView>| view.as_ref().is_some_and(&ready);
    poll_until(what, || status(cluster, job), ready).await.unwrap()
}

fn node_of(cluster: &Cluster, peer: &str) -> usize {
    cluster.nodes.iter().position(|n| n.peer_id == peer).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn members_follow_the_coordinators_assignments_and_refuse_forged_ones() {
    let root = tempfile::tempdir().unwrap();
    let forger = 4;
    let cluster =
        orchestrated(root.path(), 4, misbehaving(forger, Misbehaviour::ForgeAssignments)).await;
    // Every round is to count all four members: the first is assigned once all four are heard
    // (on a loaded machine a member may still be starting when three already are).
    let job = submit(&cluster, 4, json!({"participation": {"min_participants": 4}})).await;
    let members: Vec<usize> = (1..=4).collect();
    let runs = wait_completed_on(&cluster, &members, &job, Duration::from_secs(120)).await;
    assert_same_model(&runs);
    assert_rounds_once(&runs, 4);
    let view = wait_status(&cluster, &job, "completed", |v| v.state == "completed").await;
    let rounds = &view.rounds;
    assert_eq!(rounds.len(), 4, "{view:#?}");
    for (round, record) in rounds.iter().zip(&runs[0].rounds) {
        assert_eq!(round.contributions, 4, "every member trained: {round:#?}");
        assert_eq!(round.leaders.last(), Some(&record.aggregator));
    }
    let accuracy = rounds[3].accuracy.unwrap();
    assert!(accuracy > 0.8, "the coordinator gathers the members' evaluations: {accuracy}");
    assert!(view.members.iter().all(|m| m.state == "done"), "{view:#?}");
    // The forger's assignments named itself everywhere; the others refused every one.
    let honest: Vec<usize> = (1..forger).collect();
    let refused = refusals(&cluster, &honest, "gossip", "not_the_coordinator").await;
    assert!(refused >= 3.0, "forged assignments refused and counted: {refused}");
    // The CLI reads the same status for a person.
    let output = std::process::Command::new(BINARY)
        .args(["job", "status", &job[..12], "--coordinator"])
        .arg(cluster.nodes[0].data_dir())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(text.contains(": completed, round 4/4") && text.contains("4/4 updates"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_aggregator_is_replaced_by_a_new_assignment_within_the_deadline() {
    let root = tempfile::tempdir().unwrap();
    let mut cluster = orchestrated(root.path(), 4, plain).await;
    // Training long enough (about 0.2 s) that the test sees round 2 open: with one epoch a
    // round closed in 15 ms, and the whole job often ended between two of the test's polls.
    let hyperparameters = json!({"rounds": 5, "local_epochs": 100, "lr": 0.1});
    let job = submit(&cluster, 5, json!({ "hyperparameters": hyperparameters })).await;
    let open_round = |view: &CoordinationView| -> Option<RoundProgressView> {
        view.rounds.last().filter(|r| r.round >= 2 && r.model.is_none()).cloned()
    };
    let view = wait_status(&cluster, &job, "round 2 assigned", |v| open_round(v).is_some()).await;
    let open = open_round(&view).unwrap();
    let victim = node_of(&cluster, &open.leaders[0]);
    let killed_at = Instant::now();
    cluster.nodes[victim].kill();
    let survivors: Vec<usize> = (1..=4).filter(|&i| i != victim).collect();
    let runs = wait_completed_on(&cluster, &survivors, &job, Duration::from_secs(120)).await;
    assert_same_model(&runs);
    assert_rounds_once(&runs, 5);
    let view = status(&cluster, &job).await.unwrap();
    let round = &view.rounds[open.round as usize - 1];
    assert!(round.reassigned.iter().any(|why| why.contains("lost")), "{round:#?}");
    assert_ne!(round.leaders.last(), Some(&open.leaders[0]));
    assert!(killed_at.elapsed() < Duration::from_secs(100), "five rounds after the kill");
    let lost = view.members.iter().find(|m| node_of(&cluster, &m.peer_id) == victim).unwrap();
    assert_eq!(lost.state, "done", "the job is over for every member: {lost:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_that_joins_mid_job_fetches_its_first_assignments_base_model_and_trains() {
    let root = tempfile::tempdir().unwrap();
    let mut cluster = orchestrated(root.path(), 2, plain).await;
    let job = submit(&cluster, 40, json!({"participation": {"min_participants": 2}})).await;
    wait_for(&cluster, 1, &job, "two rounds", |run| run.completed_round >= 2).await;
    // It missed every result so far; the rounds it is assigned cannot close without its update
    // (the quorum is every trainer), so the job completes only if it catches up.
    let owner = cluster.nodes[0].peer_id.clone();
    let joiner = cluster.nodes.len();
    cluster.start_node(&member_spec(joiner, &owner, plain(joiner))).await.unwrap();
    let runs = wait_completed_on(&cluster, &[1, 2, 3], &job, Duration::from_secs(120)).await;
    assert_same_model(&runs);
    let trained = runs[2].rounds.iter().filter(|r| r.train_seconds.is_some()).count();
    assert!(trained >= 1, "the late member trained: {:#?}", runs[2]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_coordinator_killed_mid_job_resumes_from_its_store_and_no_round_is_lost() {
    let root = tempfile::tempdir().unwrap();
    let mut cluster = orchestrated(root.path(), 3, plain).await;
    let job = submit(&cluster, 6, json!({})).await;
    wait_for(&cluster, 1, &job, "two rounds", |run| run.completed_round >= 2).await;
    cluster.nodes[0].kill();
    // Without it the members wait: at most the round it had assigned completes.
    let completed_round =
        |run: Option<_>| run.map_or(0, |run: fedmesh_admin_api::RunView| run.completed_round);
    let before = completed_round(run_view(&cluster, 1, &job).await);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let waited = completed_round(run_view(&cluster, 1, &job).await);
    assert!(waited <= before + 1, "no round without the coordinator: {before} then {waited}");
    cluster.restart_with(0, None).await.unwrap();
    let runs = wait_completed_on(&cluster, &[1, 2, 3], &job, Duration::from_secs(120)).await;
    assert_same_model(&runs);
    for run in &runs {
        assert_every_round_once(run, 6);
    }
    let view = wait_status(&cluster, &job, "completed", |v| v.state == "completed").await;
    let rounds: Vec<u64> = view.rounds.iter().map(|r| r.round).collect();
    assert_eq!(rounds, [1, 2, 3, 4, 5, 6], "{view:#?}");
    assert_eq!(view.model.as_ref(), Some(&runs[0].model));
}

#[tokio::test(flavor = "multi_thread")]
async fn members_of_a_job_that_allows_it_fall_back_to_the_election_without_their_coordinator() {
    let root = tempfile::tempdir().unwrap();
    let mut cluster = orchestrated(root.path(), 3, plain).await;
    let job = submit(&cluster, 5, json!({"coordinator_fallback_secs": 2})).await;
    wait_for(&cluster, 1, &job, "one round", |run| run.completed_round >= 1).await;
    cluster.nodes[0].kill();
    let runs = wait_completed_on(&cluster, &[1, 2, 3], &job, Duration::from_secs(120)).await;
    assert_same_model(&runs);
    assert_rounds_once(&runs, 5);
}
