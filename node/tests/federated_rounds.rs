//! Real `fedmesh node` processes run federated jobs end to end (central topology): every member
//! ends with the same final model, accuracy rises, the model exports as safetensors, forged
//! deltas are refused, counted, and do not stop the rounds, a member killed mid-job resumes from
//! its data directory, a robust strategy withstands a member that poisons its updates, and a
//! member that opens rounds and announces models it was not elected for is ignored, deltas sent
//! as f16 or int8 are taken like exact ones, and members that miss a round's result ask for it
//! rather than run the round again.

mod common;

use common::{
    Job, accuracy, assert_own_shares, assert_same_model, cli, federation, misbehaving, plain,
    refusals, wait_completed,
};
use fedmesh_node::misbehaviour::Misbehaviour;
use fedmesh_protocol::strategy::{AggregationRule, StrategySpec};
use fedmesh_testnet::cluster::NodeSettings;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread")]
async fn a_small_federation_trains_and_every_member_ends_with_the_same_model() {
    let root = tempfile::tempdir().unwrap();
    let cluster = federation(root.path(), 4, plain).await;
    let job = Job::new(3, 4).announce(&cluster).await;
    let runs = wait_completed(&cluster, &job, Duration::from_secs(90)).await;

    assert_same_model(&runs);
    assert_own_shares(&runs[0]);
    let rounds = &runs[0].rounds;
    assert_eq!(rounds.len(), 3);
    assert!(rounds.iter().all(|r| r.participants == 4), "{rounds:#?}");
    // Softmax on the four nodes' shares of mnist5k (1,466 training samples in all): well above
    // chance after one round, higher after three.
    assert!(accuracy(&runs[0], 0) > 0.6, "{rounds:#?}");
    assert!(accuracy(&runs[0], 2) > accuracy(&runs[0], 0), "accuracy did not rise: {rounds:#?}");

    let out = root.path().join("model.safetensors");
    let out_arg = out.display().to_string();
    cli(&cluster.nodes[1].data_dir(), &["model", "export", "--job", &job[..12], "--out", &out_arg]);
    let bytes = std::fs::read(&out).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names = tensors.names();
    names.sort();
    assert_eq!(names, ["fc1.bias", "fc1.weight"]);
    assert_eq!(tensors.tensor("fc1.weight").unwrap().shape(), [10, 784]);

    cli(&cluster.nodes[2].data_dir(), &["job", "watch", &job]);
    cli(&cluster.nodes[3].data_dir(), &["job", "leave", &job]);
    let view = cluster.nodes[3].api.job(&job).await.unwrap();
    assert_eq!(view.run.map(|run| run.status).as_deref(), Some("left"));
}

#[tokio::test(flavor = "multi_thread")]
async fn compact_deltas_are_decoded_by_the_aggregator_and_the_job_learns() {
    let root = tempfile::tempdir().unwrap();
    let cluster = federation(root.path(), 3, plain).await;
    for encoding in ["f16", "int8"] {
        let job = Job { delta_encoding: encoding, ..Job::new(3, 3) }.announce(&cluster).await;
        let runs = wait_completed(&cluster, &job, Duration::from_secs(90)).await;
        assert_same_model(&runs);
        let rounds = &runs[0].rounds;
        assert!(rounds.iter().all(|r| r.participants == 3), "{encoding}: {rounds:#?}");
        assert!(accuracy(&runs[0], 2) > 0.8, "{encoding}: {rounds:#?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_deltas_are_refused_and_counted_and_the_rounds_complete() {
    let root = tempfile::tempdir().unwrap();
    let forger = 3;
    let cluster = federation(root.path(), 4, misbehaving(forger, Misbehaviour::ForgedDeltas)).await;
    // Enough rounds that some other member aggregates one (the forger leads a round by chance:
    // all three of a 3-round job, one run in 64).
    let job = Job::new(8, 4).announce(&cluster).await;
    let runs = wait_completed(&cluster, &job, Duration::from_secs(90)).await;
    assert!(runs[0].rounds.iter().all(|r| r.participants == 4));

    // One forged copy of each kind per round whose aggregator is another member (a member that
    // aggregates its own update folds it in, sending nothing).
    let rounds = &runs[0].rounds;
    let forger_id = &cluster.nodes[forger].peer_id;
    let sent = rounds.iter().filter(|r| r.aggregator != *forger_id).count() as f64;
    assert!(sent >= 1.0, "{rounds:#?}");
    for reason in ["not_a_member", "wrong_round", "wrong_base"] {
        assert_eq!(refusals(&cluster, &[0, 1, 2, 3], "delta", reason).await, sent, "{reason}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_killed_mid_job_resumes_from_its_store_and_the_job_completes() {
    let root = tempfile::tempdir().unwrap();
    let mut cluster = federation(root.path(), 4, plain).await;
    // Short deadlines: rounds the killed member misses are retried quickly.
    let job = Job { deadline_secs: 3, ..Job::new(8, 4) }.announce(&cluster).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let view = cluster.nodes[0].api.job(&job).await.unwrap();
        if view.run.as_ref().is_some_and(|run| run.completed_round >= 2) {
            break;
        }
        assert!(Instant::now() < deadline, "no progress: {view:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.nodes[2].kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.restart(2).await.unwrap();
    let runs = wait_completed(&cluster, &job, Duration::from_secs(120)).await;
    assert_same_model(&runs);
    let rounds: Vec<u64> = runs[2].rounds.iter().map(|r| r.round).collect();
    assert_eq!(rounds, (1..=8).collect::<Vec<_>>(), "the restarted member knows every round");
    assert!(cluster.nodes[2].log().contains("resumed job from the store"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_median_withstands_a_sign_flipping_member_that_ruins_fedavg() {
    let root = tempfile::tempdir().unwrap();
    let attacker = 4;
    let cluster = federation(root.path(), 5, misbehaving(attacker, Misbehaviour::SignFlip)).await;
    // Both jobs run side by side on the same five nodes.
    let fedavg = Job::new(3, 5).announce(&cluster).await;
    let strategy = StrategySpec { rule: AggregationRule::Median, ..StrategySpec::default() };
    let median = Job { strategy, ..Job::new(3, 5) }.announce(&cluster).await;
    let fedavg_runs = wait_completed(&cluster, &fedavg, Duration::from_secs(90)).await;
    let median_runs = wait_completed(&cluster, &median, Duration::from_secs(90)).await;
    let (poisoned, robust) = (accuracy(&fedavg_runs[0], 2), accuracy(&median_runs[0], 2));
    eprintln!(
        "accuracy after 3 rounds with one sign-flipping member of 5: FedAvg {poisoned:.3}, median {robust:.3}"
    );
    // Honest softmax reaches about 0.87 after three rounds (see the first test); the median of
    // five updates ignores the one scaled by -10, the mean follows it.
    assert!(robust > 0.8, "median: {robust}");
    assert!(poisoned < robust - 0.2, "FedAvg {poisoned} vs median {robust}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_that_hijacks_rounds_is_ignored_and_the_job_completes() {
    let root = tempfile::tempdir().unwrap();
    let hijacker = 3;
    let cluster =
        federation(root.path(), 4, misbehaving(hijacker, Misbehaviour::HijackRounds)).await;
    let job = Job::new(4, 4).announce(&cluster).await;
    let runs = wait_completed(&cluster, &job, Duration::from_secs(90)).await;
    assert_same_model(&runs);
    let rounds = &runs[0].rounds;
    assert!(rounds.iter().all(|r| r.participants == 4), "{rounds:#?}");
    assert!(accuracy(&runs[0], 3) > 0.8, "{rounds:#?}");
    let ignored = refusals(&cluster, &[0, 1, 2], "gossip", "not_the_aggregator").await;
    assert!(ignored >= 3.0, "honest members refused {ignored} hijacking messages");
}

#[tokio::test(flavor = "multi_thread")]
async fn members_that_miss_a_rounds_result_ask_for_it_and_no_round_runs_twice() {
    let root = tempfile::tempdir().unwrap();
    // Every round's result reaches nobody by gossip, as if each aggregator died right after
    // closing its round: the members must ask for it once the round's deadline passes.
    let withhold = |_| NodeSettings { misbehave: vec![Misbehaviour::WithholdResults], ..plain(0) };
    let cluster = federation(root.path(), 4, withhold).await;
    let job = Job { deadline_secs: 2, ..Job::new(4, 4) }.announce(&cluster).await;
    let runs = wait_completed(&cluster, &job, Duration::from_secs(90)).await;
    assert_same_model(&runs);
    // No round ran twice: every member holds one model per round, the same as every other's
    // (one that took a round's model from the next round's opening records no participants).
    for round in 0..4 {
        let models: Vec<Option<&str>> =
            runs.iter().map(|run| run.rounds[round].model.as_deref()).collect();
        assert!(
            models.iter().all(|m| *m == models[0] && m.is_some()),
            "round {}: {models:?}",
            round + 1
        );
        let counted = runs.iter().map(|run| run.rounds[round].participants);
        assert_eq!(counted.max(), Some(4), "round {}: {:#?}", round + 1, runs[0].rounds);
    }
}
