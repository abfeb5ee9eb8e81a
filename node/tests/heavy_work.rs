//! One job's heavy work stalls nothing else on a node: while a 100 MB model is made and stored on
//! a disk made slow (the `slow-disk` fault), another job on the same nodes keeps completing its
//! rounds and the admin API keeps answering. Checked by the order of the node's own events, not
//! by timings.

mod common;

use common::{Job, federation, plain, wait_completed, wait_for};
use fedmesh_node::misbehaviour::Misbehaviour;
use fedmesh_testnet::cluster::{Cluster, NodeSettings};
use serde_json::json;
use std::time::{Duration, Instant};

/// The log line that starts a round's model being made and stored, and the one that ends it.
const STORING: &str = "making and storing the round's model";
const CLOSED: &str = "round closed";

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_model_store_in_one_job_stalls_no_other_job_and_no_admin_request() {
    let root = tempfile::tempdir().unwrap();
    let cluster = federation(root.path(), 2, |_| NodeSettings {
        misbehave: vec![Misbehaviour::SlowDisk],
        ..plain(0)
    })
    .await;
    let small = Job::new(10_000, 2).announce(&cluster).await;
    wait_for(&cluster, 0, &small, "two small rounds", |run| run.completed_round >= 2).await;
    let big = Job {
        model: json!({"bench": {"params": 25_000_000}}),
        deadline_secs: 120,
        ..Job::new(1, 2)
    };
    let big = big.announce(&cluster).await;

    // While the big model is being stored, the admin API is asked again and again.
    let (leader, answered) = admin_answers_while_storing(&cluster, &big).await;
    let log = cluster.nodes[leader].log();
    let during = lines_between(&log, &big, STORING, CLOSED);
    let small_rounds =
        during.iter().filter(|l| l.contains(&small) && l.contains("evaluated global model"));
    let small_rounds = small_rounds.count();
    assert!(
        small_rounds >= 2,
        "the small job completed {small_rounds} rounds while the big model was stored:\n{}",
        during.join("\n")
    );
    assert!(answered >= 3, "the admin API answered {answered} times meanwhile");
    let runs = wait_completed(&cluster, &big, Duration::from_secs(120)).await;
    assert_eq!(runs[0].model, runs[1].model, "both nodes hold the big job's model");
}

/// Waits until a node starts storing `job`'s round model, then asks its admin API for its status
/// until the log says the round closed; returns that node and how many answers came meanwhile.
async fn admin_answers_while_storing(cluster: &Cluster, job: &str) -> (usize, usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let storing = |node: usize| log_has(cluster, node, job, STORING);
    let leader = loop {
        if let Some(node) = (0..cluster.nodes.len()).find(|&node| storing(node)) {
            break node;
        }
        assert!(Instant::now() < deadline, "no node started storing the big job's model");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut answered = 0;
    while !log_has(cluster, leader, job, CLOSED) {
        assert!(Instant::now() < deadline, "the big job's round never closed");
        let status = cluster.nodes[leader].api.jobs().await;
        // Counted only if the store was still under way once it came.
        if status.is_ok() && !log_has(cluster, leader, job, CLOSED) {
            answered += 1;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (leader, answered)
}

/// Whether a node's log has a line with `what` about `job`.
fn log_has(cluster: &Cluster, node: usize, job: &str, what: &str) -> bool {
    cluster.nodes[node].log().lines().any(|line| line.contains(job) && line.contains(what))
}

/// The log lines after the first `from` line about `job` and before the first `to` line about it
/// that follows.
fn lines_between<'a>(log: &'a str, job: &str, from: &str, to: &str) -> Vec<&'a str> {
    let about = |line: &str, what: &str| line.contains(job) && line.contains(what);
    let after = log.lines().skip_while(|line| !about(line, from)).skip(1);
    after.take_while(|line| !about(line, to)).collect()
}
