//! Owner admission over real nodes: a job whose spec sets `participation.admission = "owner"`
//! takes the nodes its owner signed a ticket for (`fedmesh job admit`, then `fedmesh job join
//! --ticket`), and no other: a node without a ticket, or with another node's, cannot join.

mod common;

use common::{BINARY, federation, plain, poll_until, wait_completed_on};
use fedmesh_admin_api::JobView;
use serde_json::json;
use std::time::Duration;

/// Runs `fedmesh ARGS` against the node with data directory `data_dir`: its stdout, or its
/// stderr as the error.
fn fedmesh(data_dir: &std::path::Path, args: &[&str]) -> Result<String, String> {
    let output = std::process::Command::new(BINARY)
        .args(args)
        .env("FEDMESH_DATA_DIR", data_dir)
        .output()
        .map_err(|e| e.to_string())?;
    let (out, err) =
        (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    if output.status.success() { Ok(out.trim().to_owned()) } else { Err(err.into_owned()) }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_owner_admitted_job_takes_the_node_its_owner_gave_a_ticket_and_no_other() {
    let root = tempfile::tempdir().unwrap();
    let cluster = federation(root.path(), 3, plain).await;
    let spec = json!({
        "name": "admitted", "owner": cluster.nodes[0].peer_id, "model": "softmax",
        "dataset": "mnist5k", "hyperparameters": {"rounds": 3, "lr": 0.1},
        "participation": {"min_participants": 2, "admission": "owner"},
        "round_deadline_secs": 10,
    });
    let job = cluster.nodes[0].api.announce(serde_json::to_vec(&spec).unwrap()).await.unwrap().id;
    for node in [1, 2] {
        let known = || async { cluster.nodes[node].api.job(&job).await.ok() };
        let reached = |view: &Option<_>| view.as_ref().is_some_and(|v: &JobView| v.id == job);
        poll_until("the announcement reached the node", known, reached).await;
    }
    let (owner_dir, admitted_dir, other_dir) =
        (cluster.nodes[0].data_dir(), cluster.nodes[1].data_dir(), cluster.nodes[2].data_dir());

    let refused = fedmesh(&other_dir, &["job", "join", &job]).expect_err("no ticket");
    assert!(refused.contains("admits members by its owner's ticket"), "{refused}");
    let not_owner = fedmesh(&other_dir, &["job", "admit", &job, &cluster.nodes[2].peer_id]);
    assert!(not_owner.expect_err("not the owner").contains("not this node"));

    let ticket = fedmesh(&owner_dir, &["job", "admit", &job, &cluster.nodes[1].peer_id]).unwrap();
    let borrowed = fedmesh(&other_dir, &["job", "join", &job, "--ticket", &ticket]);
    let borrowed = borrowed.expect_err("node1's ticket presented by node2");
    assert!(borrowed.contains("does not admit this node"), "{borrowed}");
    fedmesh(&admitted_dir, &["job", "join", &job, "--ticket", &ticket]).unwrap();

    let runs = wait_completed_on(&cluster, &[0, 1], &job, Duration::from_secs(120)).await;
    for run in &runs {
        assert_eq!(run.rounds.len(), 3, "{run:#?}");
        assert!(run.rounds.iter().all(|r| r.participants == 2), "the owner and node1: {run:#?}");
    }
    let outsider = cluster.nodes[2].api.job(&job).await.unwrap();
    assert!(outsider.run.is_none(), "node2 never took part: {outsider:#?}");
}
