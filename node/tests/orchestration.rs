//! Orchestration mode with real processes: a coordinator (`coordinate = true`, no data) runs
//! jobs submitted to it; members follow its signed assignments and refuse (and count) forged
//! ones; a killed aggregator is replaced by a new assignment; a member that joins mid-job catches
//! up from its first assignment; a coordinator killed mid-job resumes from its store and no round
//! is lost.

mod common;

use common::{
    BINARY, assert_every_round_once, assert_rounds_once, assert_same_model, cluster_under_owner,
    completed_round, member_spec, misbehaving, plain, poll_until, refusals, wait_completed_on,
    wait_for,
};
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
    let answer: Value = cluster.nodes[0].api.post("/v1/coordinator/jobs", &spec).await.unwrap();
    answer["id"].as_str().unwrap().to_owned()
}

async fn status(cluster: &Cluster, job: &str) -> Value {
    cluster.nodes[0].api.get(&format!("/v1/coordinator/jobs/{job}")).await.unwrap_or_default()
}

/// Polls the coordinator's status until `ready` holds (at most a minute).
async fn wait_status(
    cluster: &Cluster,
    job: &str,
    what: &str,
    ready: impl Fn(&Value) -> bool,
) -> Value {
    poll_until(what, || status(cluster, job), ready).await
}

fn node_of(cluster: &Cluster, peer: &Value) -> usize {
    cluster.nodes.iter().position(|n| json!(n.peer_id) == *peer).unwrap()
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
    let view = wait_status(&cluster, &job, "completed", |v| v["state"] == "completed").await;
    let rounds = view["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 4, "{view:#?}");
    for (round, record) in rounds.iter().zip(runs[0]["rounds"].as_array().unwrap()) {
        assert_eq!(round["contributions"], 4, "every member trained: {round:#?}");
        assert_eq!(round["leaders"].as_array().unwrap().last(), Some(&record["aggregator"]));
    }
    let accuracy = rounds[3]["accuracy"].as_f64().unwrap();
    assert!(accuracy > 0.8, "the coordinator gathers the members' evaluations: {accuracy}");
    assert!(view["members"].as_array().unwrap().iter().all(|m| m["state"] == "done"), "{view:#?}");
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
    let job = submit(&cluster, 5, json!({})).await;
    let open_round = |view: &Value| {
        let rounds = view["rounds"].as_array().cloned().unwrap_or_default();
        rounds.last().filter(|r| r["round"].as_u64() >= Some(2) && r["model"].is_null()).cloned()
    };
    let view = wait_status(&cluster, &job, "round 2 assigned", |v| open_round(v).is_some()).await;
    let open = open_round(&view).unwrap();
    let victim = node_of(&cluster, &open["leaders"][0]);
    let killed_at = Instant::now();
    cluster.nodes[victim].kill();
    let survivors: Vec<usize> = (1..=4).filter(|&i| i != victim).collect();
    let runs = wait_completed_on(&cluster, &survivors, &job, Duration::from_secs(120)).await;
    assert_same_model(&runs);
    assert_rounds_once(&runs, 5);
    let view = status(&cluster, &job).await;
    let round = &view["rounds"][open["round"].as_u64().unwrap() as usize - 1];
    let why = round["reassigned"].as_array().unwrap();
    assert!(why.iter().any(|w| w.as_str().unwrap().contains("lost")), "{round:#?}");
    assert_ne!(round["leaders"].as_array().unwrap().last(), Some(&open["leaders"][0]));
    assert!(killed_at.elapsed() < Duration::from_secs(100), "five rounds after the kill");
    let members = view["members"].as_array().unwrap();
    let lost = members.iter().find(|m| node_of(&cluster, &m["peer_id"]) == victim).unwrap();
    assert_eq!(lost["state"], "done", "the job is over for every member: {lost:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_that_joins_mid_job_fetches_its_first_assignments_base_model_and_trains() {
    let root = tempfile::tempdir().unwrap();
    let mut cluster = orchestrated(root.path(), 2, plain).await;
    let job = submit(&cluster, 40, json!({"participation": {"min_participants": 2}})).await;
    wait_for(&cluster, 1, &job, "two rounds", |run| completed_round(run) >= 2).await;
    // It missed every result so far; the rounds it is assigned cannot close without its update
    // (the quorum is every trainer), so the job completes only if it catches up.
    let owner = cluster.nodes[0].peer_id.clone();
    let joiner = cluster.nodes.len();
    cluster.start_node(&member_spec(joiner, &owner, plain(joiner))).await.unwrap();
    let runs = wait_completed_on(&cluster, &[1, 2, 3], &job, Duration::from_secs(120)).await;
    assert_same_model(&runs);
    let rounds = runs[2]["rounds"].as_array().cloned().unwrap_or_default();
    let trained = rounds.iter().filter(|r| r["train_seconds"].is_number()).count();
    assert!(trained >= 1, "the late member trained: {:#?}", runs[2]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_coordinator_killed_mid_job_resumes_from_its_store_and_no_round_is_lost() {
    let root = tempfile::tempdir().unwrap();
    let mut cluster = orchestrated(root.path(), 3, plain).await;
    let job = submit(&cluster, 6, json!({})).await;
    wait_for(&cluster, 1, &job, "two rounds", |run| completed_round(run) >= 2).await;
    cluster.nodes[0].kill();
    // Without it the members wait: at most the round it had assigned completes.
    let before = completed_round(&common::run_view(&cluster, 1, &job).await);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let waited = completed_round(&common::run_view(&cluster, 1, &job).await);
    assert!(waited <= before + 1, "no round without the coordinator: {before} then {waited}");
    cluster.restart_with(0, None).await.unwrap();
    let runs = wait_completed_on(&cluster, &[1, 2, 3], &job, Duration::from_secs(120)).await;
    assert_same_model(&runs);
    for run in &runs {
        assert_every_round_once(run, 6);
    }
    let view = wait_status(&cluster, &job, "completed", |v| v["state"] == "completed").await;
    let rounds: Vec<u64> =
        view["rounds"].as_array().unwrap().iter().map(|r| r["round"].as_u64().unwrap()).collect();
    assert_eq!(rounds, [1, 2, 3, 4, 5, 6], "{view:#?}");
    assert_eq!(view["model"], runs[0]["model"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn members_of_a_job_that_allows_it_fall_back_to_the_election_without_their_coordinator() {
    let root = tempfile::tempdir().unwrap();
    let mut cluster = orchestrated(root.path(), 3, plain).await;
    let job = submit(&cluster, 5, json!({"coordinator_fallback_secs": 2})).await;
    wait_for(&cluster, 1, &job, "one round", |run| completed_round(run) >= 1).await;
    cluster.nodes[0].kill();
    let runs = wait_completed_on(&cluster, &[1, 2, 3], &job, Duration::from_secs(120)).await;
    assert_same_model(&runs);
    assert_rounds_once(&runs, 5);
}
