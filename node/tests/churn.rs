//! Peers come and go during a job (central topology, real processes): a late joiner catches up
//! and trains, a trainer killed mid-job is left behind at the quorum (and, restarted after the
//! job ended, takes its final model), and when the round's aggregator is killed another member
//! takes the round over; no round is lost or counted twice.

mod common;

use common::{
    Job, assert_rounds_once, assert_same_model, federation, member_spec, participants, plain,
    wait_completed_on, wait_for,
};
use fedmesh_admin_api::RunView;
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn a_late_joiner_fetches_the_current_model_and_trains_from_the_next_round() {
    const ROUNDS: u64 = 150;
    let root = tempfile::tempdir().unwrap();
    let mut cluster = federation(root.path(), 3, plain).await;
    // Rounds of this job take a few hundredths of a second: enough of them that the joiner,
    // which starts once two are done, has rounds left to train in.
    let job = Job::new(ROUNDS, 3).announce(&cluster).await;
    wait_for(&cluster, 0, &job, "two rounds", |run| run.completed_round >= 2).await;
    let owner = cluster.nodes[0].peer_id.clone();
    let joiner = cluster.nodes.len();
    cluster.start_node(&member_spec(joiner, &owner, plain(joiner))).await.unwrap();
    let runs = wait_completed_on(&cluster, &[0, 1, 2, 3], &job, Duration::from_secs(120)).await;
    assert_same_model(&runs);
    let counts = participants(&runs[0]);
    assert_eq!(counts[0], 3);
    assert_eq!(*counts.last().unwrap(), 4, "the late joiner trains in the last rounds: {counts:?}");
    assert_rounds_once(&runs, ROUNDS);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trainer_killed_mid_job_is_left_behind_and_restarted_after_the_end_takes_the_final_model()
{
    let root = tempfile::tempdir().unwrap();
    let mut cluster = federation(root.path(), 4, plain).await;
    let job = Job { deadline_secs: 3, quorum: json!({"fraction": 0.7}), ..Job::new(6, 3) }
        .announce(&cluster)
        .await;
    let run = wait_for(&cluster, 0, &job, "round 2 open", |run| run.completed_round >= 1).await;
    // Kill a member that does not aggregate the round in progress.
    let aggregator = run.rounds.last().map(|r| r.aggregator.as_str());
    let victim = (1..4).find(|&i| Some(cluster.nodes[i].peer_id.as_str()) != aggregator).unwrap();
    cluster.nodes[victim].kill();
    let survivors: Vec<usize> = (0..4).filter(|&i| i != victim).collect();
    let runs = wait_completed_on(&cluster, &survivors, &job, Duration::from_secs(120)).await;
    assert_rounds_once(&runs, 6);
    let counts = participants(&runs[0]);
    assert!(counts.iter().all(|&c| c >= 3), "every round met the quorum of 3: {counts:?}");
    assert_eq!(*counts.last().unwrap(), 3, "the killed trainer is out: {counts:?}");
    // Restarted once the job is over, it hears no more rounds: the last round's aggregator
    // announces the result again for it, and it takes it although it followed none of them.
    cluster.restart(victim).await.unwrap();
    let runs = wait_completed_on(&cluster, &[0, 1, 2, 3], &job, Duration::from_secs(60)).await;
    assert_same_model(&runs);
}

#[tokio::test(flavor = "multi_thread")]
async fn when_the_aggregator_is_killed_mid_round_another_member_takes_the_round_over() {
    let root = tempfile::tempdir().unwrap();
    let mut cluster = federation(root.path(), 4, plain).await;
    // Rounds long enough (about a second of training) that the aggregator seen waiting is
    // still waiting when it is killed: with fast rounds it sometimes closed the round first.
    let job = Job { deadline_secs: 4, local_epochs: 40, ..Job::new(6, 3) }.announce(&cluster).await;
    // Wait for an open round (no model yet) from round 2 on, aggregated by a node other than node0.
    let peers: Vec<String> = cluster.nodes.iter().map(|n| n.peer_id.clone()).collect();
    let open_elsewhere = |run: &RunView| {
        run.rounds
            .last()
            .is_some_and(|r| r.round >= 2 && r.model.is_none() && r.aggregator != peers[0])
    };
    let run = wait_for(&cluster, 0, &job, "a round open on another node", open_elsewhere).await;
    let open = run.rounds.last().unwrap();
    let victim = peers.iter().position(|p| *p == open.aggregator).unwrap();
    cluster.nodes[victim].kill();
    let survivors: Vec<usize> = (0..4).filter(|&i| i != victim).collect();
    let runs = wait_completed_on(&cluster, &survivors, &job, Duration::from_secs(120)).await;
    assert_same_model(&runs);
    assert_rounds_once(&runs, 6);
    let taken_over = &runs[0].rounds[open.round as usize - 1];
    assert_ne!(taken_over.aggregator, open.aggregator, "{taken_over:#?}");
}

/// The longest any recorded round of a run took, from its opening to its model's announcement.
fn longest_round_secs(run: &RunView) -> f64 {
    run.rounds.iter().filter_map(|r| r.seconds).fold(0.0, f64::max)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_that_leaves_and_joins_again_stalls_no_round_and_ends_with_the_final_model() {
    const ROUNDS: u64 = 120;
    let root = tempfile::tempdir().unwrap();
    let cluster = federation(root.path(), 3, plain).await;
    // Rounds take a tenth of a second; a round waiting for the member that left would wait out
    // its 10 s deadline.
    let job = Job { deadline_secs: 10, ..Job::new(ROUNDS, 2) }.announce(&cluster).await;
    let api = &cluster.nodes[2].api;
    wait_for(&cluster, 0, &job, "round 10", |run| run.completed_round >= 10).await;
    api.leave(&job).await.unwrap();
    wait_for(&cluster, 0, &job, "round 40", |run| run.completed_round >= 40).await;
    api.join(&job, None).await.unwrap();
    let runs = wait_completed_on(&cluster, &[0, 1, 2], &job, Duration::from_secs(180)).await;
    assert_same_model(&runs);
    for (node, run) in runs.iter().enumerate() {
        let longest = longest_round_secs(run);
        assert!(longest < 5.0, "node {node} recorded a round of {longest} s: {run:#?}");
    }
    let counts = participants(&runs[0]);
    assert_eq!(*counts.last().unwrap(), 3, "it trained again before the end: {counts:?}");
    let listed = api.jobs().await.unwrap();
    let shown = api.job(&job).await.unwrap();
    let listed_status = listed.iter().find(|j| j.id == job).map(|j| j.status.as_str());
    assert_eq!(listed_status, Some("completed"), "the job list says what its page says");
    assert_eq!(shown.status, "completed");
}
