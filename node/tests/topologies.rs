//! Every topology the TAG can express, run by real `fedmesh` processes: hierarchical (group
//! aggregators send signed partial aggregates to a top aggregator), ring (all-reduce, no
//! aggregator), hybrid (rings inside groups, one aggregator across them), Flame schema files as
//! the TAG (three and four tiers), and failures mid-round (a ring member, a group aggregator)
//! that the round survives.

mod common;

use common::{
    Job, accepted, accuracy, assert_own_shares, assert_rounds_once, assert_same_model, federation,
    participants, plain, refusals, wait_completed, wait_completed_on, wait_for,
};
use fedmesh_admin_api::{RoundView, RunView};
use fedmesh_testnet::cluster::NodeSettings;
use serde_json::{Value, json};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(120);

/// Settings giving node `i` the group `groups[i]`.
fn grouped(groups: &'static [&'static str]) -> impl Fn(usize) -> NodeSettings {
    move |i| NodeSettings { group: Some(groups[i].to_owned()), ..NodeSettings::default() }
}

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/../topologies/tests/fixtures/{name}",
        std::env::var("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The last round's plan as node `observer` recorded it.
fn last_round(run: &RunView) -> &RoundView {
    run.rounds.last().unwrap()
}

/// Checks a completed job: same model everywhere, every round once with every member's
/// update (each member's own share of the data), and a model that learned.
fn assert_learned_with_everyone(runs: &[RunView], rounds: u64, members: usize) {
    assert_same_model(runs);
    assert_own_shares(&runs[0]);
    assert_rounds_once(runs, rounds);
    let counts = participants(&runs[0]);
    assert!(counts.iter().all(|&c| c == members), "every member in every round: {counts:?}");
    let last = accuracy(&runs[0], rounds as usize - 1);
    assert!(last > 0.8, "softmax on mnist5k learns: {last} in {:#?}", runs[0].rounds);
}

#[tokio::test(flavor = "multi_thread")]
async fn hierarchical_group_aggregates_compose_into_one_global_model() {
    let root = tempfile::tempdir().unwrap();
    let cluster = federation(root.path(), 5, grouped(&["eu", "eu", "na", "na", "na"])).await;
    let job = Job { tag: json!("hierarchical"), ..Job::new(4, 5) }.announce(&cluster).await;
    let runs = wait_completed(&cluster, &job, LIMIT).await;
    assert_learned_with_everyone(&runs, 4, 5);
    let plan = last_round(&runs[0]);
    assert_eq!(plan.slots.len(), 3, "a slot per group and a top: {plan:#?}");
    // Group aggregators sent partial aggregates up (at least the one that is not the top
    // aggregator, every round), and the top took them all.
    let all = [0, 1, 2, 3, 4];
    let sent_up = accepted(&cluster, &all, &job, "partial").await;
    assert!(sent_up >= 4.0, "{sent_up} partial aggregates accepted in 4 rounds");
    let refused = refusals(&cluster, &all, "partial", "not_selected").await;
    assert_eq!(refused, 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ring_all_reduces_every_round_without_an_aggregator() {
    let root = tempfile::tempdir().unwrap();
    let cluster = federation(root.path(), 4, plain).await;
    let job = Job { tag: json!("ring"), ..Job::new(4, 4) }.announce(&cluster).await;
    let runs = wait_completed(&cluster, &job, LIMIT).await;
    assert_learned_with_everyone(&runs, 4, 4);
    let plan = last_round(&runs[0]);
    assert!(plan.slots.is_empty(), "no aggregator: {plan:#?}");
    let ring = plan.rings.values().next();
    assert_eq!(ring.map(Vec::len), Some(4), "{plan:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn hybrid_rings_inside_groups_feed_one_aggregator() {
    let root = tempfile::tempdir().unwrap();
    let cluster = federation(root.path(), 4, grouped(&["eu", "eu", "na", "na"])).await;
    let job = Job { tag: json!("hybrid"), ..Job::new(3, 4) }.announce(&cluster).await;
    let runs = wait_completed(&cluster, &job, LIMIT).await;
    assert_learned_with_everyone(&runs, 3, 4);
    let plan = last_round(&runs[0]);
    assert_eq!(plan.rings.len(), 2, "{plan:#?}");
    assert_eq!(plan.slots.len(), 1, "{plan:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flame_schema_is_the_jobs_tag() {
    let root = tempfile::tempdir().unwrap();
    let cluster = federation(root.path(), 4, grouped(&["eu", "eu", "na", "na"])).await;
    let job = Job { tag: fixture("hier_mnist.json"), ..Job::new(3, 4) }.announce(&cluster).await;
    let runs = wait_completed(&cluster, &job, LIMIT).await;
    assert_learned_with_everyone(&runs, 3, 4);
    let plan = last_round(&runs[0]);
    let slots: Vec<&String> = plan.slots.keys().collect();
    assert_eq!(
        slots,
        ["middle-aggregator/eu", "middle-aggregator/na", "top-aggregator/default"],
        "{plan:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_four_tier_schema_sends_partial_aggregates_up_two_levels() {
    let root = tempfile::tempdir().unwrap();
    let groups = &["paris", "paris", "lyon", "lyon", "berlin", "berlin"];
    let cluster = federation(root.path(), 6, grouped(groups)).await;
    let job = Job { tag: fixture("four_tier.json"), ..Job::new(3, 6) }.announce(&cluster).await;
    let runs = wait_completed(&cluster, &job, LIMIT).await;
    assert_learned_with_everyone(&runs, 3, 6);
    let plan = last_round(&runs[0]);
    assert_eq!(plan.slots.len(), 6, "{plan:#?}");
    // Two levels of partial aggregates: at least one from each level every round.
    let sent_up = accepted(&cluster, &[0, 1, 2, 3, 4, 5], &job, "partial").await;
    assert!(sent_up >= 6.0, "{sent_up} partial aggregates accepted in 3 rounds");
}

/// Waits for a round from round 2 on whose opening is planned but not closed; returns it.
async fn open_round(cluster: &fedmesh_testnet::cluster::Cluster, job: &str) -> RoundView {
    let open = |run: &RunView| run.rounds.last().is_some_and(|r| r.round >= 2 && r.model.is_none());
    let run = wait_for(cluster, 0, job, "an open round", open).await;
    last_round(&run).clone()
}

fn node_of(cluster: &fedmesh_testnet::cluster::Cluster, peer: &str) -> usize {
    cluster.nodes.iter().position(|n| n.peer_id == peer).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ring_member_killed_mid_round_makes_the_ring_re_form() {
    let root = tempfile::tempdir().unwrap();
    let mut cluster = federation(root.path(), 4, plain).await;
    let job =
        Job { tag: json!("ring"), deadline_secs: 3, ..Job::new(5, 3) }.announce(&cluster).await;
    let round = open_round(&cluster, &job).await;
    // A member of the ring that does not lead the round (nor is node0, the observer).
    let leader = node_of(&cluster, &round.aggregator);
    let victim = (1..4).find(|&i| i != leader).unwrap();
    cluster.nodes[victim].kill();
    let survivors: Vec<usize> = (0..4).filter(|&i| i != victim).collect();
    let runs = wait_completed_on(&cluster, &survivors, &job, LIMIT).await;
    assert_same_model(&runs);
    assert_rounds_once(&runs, 5);
    assert_eq!(*participants(&runs[0]).last().unwrap(), 3, "the ring re-formed without it");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_group_aggregator_killed_mid_round_is_replaced_by_the_next_in_its_failover_order() {
    let root = tempfile::tempdir().unwrap();
    let groups = &["eu", "eu", "eu", "na", "na", "na"];
    let mut cluster = federation(root.path(), 6, grouped(groups)).await;
    let job = Job { tag: json!("hierarchical"), deadline_secs: 3, ..Job::new(5, 4) }
        .announce(&cluster)
        .await;
    let round = open_round(&cluster, &job).await;
    let leader = node_of(&cluster, &round.aggregator);
    let victim = round
        .slots
        .iter()
        .filter(|(slot, _)| slot.ends_with("/eu") || slot.ends_with("/na"))
        .map(|(_, peer)| node_of(&cluster, peer))
        .find(|&node| node != leader && node != 0)
        .expect("a group aggregator that does not lead the round");
    cluster.nodes[victim].kill();
    let survivors: Vec<usize> = (0..6).filter(|&i| i != victim).collect();
    let runs = wait_completed_on(&cluster, &survivors, &job, LIMIT).await;
    assert_same_model(&runs);
    assert_rounds_once(&runs, 5);
    assert_eq!(*participants(&runs[0]).last().unwrap(), 5, "{:#?}", runs[0].rounds);
}
