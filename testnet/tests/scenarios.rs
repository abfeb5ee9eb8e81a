//! Small versions of the shipped scenarios (testnet/scenarios/), each on real `fedmesh`
//! processes with softmax on mnist5k and short deadlines: the aggregator killed mid-round, two
//! trainers leaving, a node joining, a node killed and restarted, and Byzantine members under
//! trimmed mean and under FedAvg. Each checks completion, every round once, one final model on
//! every member, and its accuracy.

mod common;

use common::{FLOOR, run_scenario, run_scenario_file};

#[test]
fn the_aggregator_killed_mid_round_is_taken_over() {
    let run = run_scenario(
        "aggregator-killed",
        r#"
        nodes = 4
        rounds = 4
        quorum = { fraction = 0.7 }
        # Rounds slow enough (about 0.2 s of training) that the kill lands while the round is open.
        local_epochs = 20
        batch_size = 16
        [[events]]
        round = 2
        action = "kill"
        target = "aggregator"
        "#,
    );
    run.assert_passed();
    let event = &run.report.events[0];
    assert_eq!(event.fired_in_round, 2, "{:#?}", run.lines);
    let round2 = &run.report.rounds[1];
    assert_ne!(round2.aggregator.as_deref(), Some(event.nodes[0].as_str()), "{:#?}", run.lines);
    assert_eq!(*run.participants().last().unwrap(), 3, "{:#?}", run.lines);
}

#[test]
fn two_trainers_leave_and_the_rest_finish() {
    let run = run_scenario(
        "trainers-leave",
        r#"
        nodes = 5
        rounds = 4
        quorum = { fraction = 0.7 }
        [[events]]
        round = 2
        action = "leave"
        target = 3
        [[events]]
        round = 3
        action = "leave"
        target = 4
        "#,
    );
    run.assert_passed();
    for node in ["node3", "node4"] {
        let left = format!("leave {node} -> {node}");
        let line = run.lines.iter().find(|line| line.contains(&left));
        assert!(line.is_some_and(|l| l.contains("left the job")), "{:#?}", run.lines);
    }
    // Rounds open once the three that stay have joined (min_participants), so how many of the
    // leavers' joins the first rounds saw depends on timing; the rounds after both leaves have
    // the three.
    let participants = run.participants();
    assert!(participants.iter().all(|&p| (3..=5).contains(&p)), "{:#?}", run.lines);
    assert_eq!(*participants.last().unwrap(), 3, "{:#?}", run.lines);
}

#[test]
fn a_node_joining_mid_job_trains_once_its_first_heartbeat_proves_it() {
    let run = run_scenario(
        "node-joins",
        r#"
        nodes = 3
        rounds = 20
        # Rounds of about 0.2 s: the joiner counts from its first heartbeat (within a second of
        # its join, then the members' views hold 2 s), well before the last round.
        local_epochs = 20
        batch_size = 16
        [[events]]
        round = 2
        action = "join"
        "#,
    );
    run.assert_passed();
    assert_eq!(run.report.partitions.len(), 4, "the data is split for the joiner too");
    let participants = run.participants();
    assert_eq!(participants[0], 3, "{:#?}", run.lines);
    assert_eq!(*participants.last().unwrap(), 4, "{:#?}", run.lines);
}

#[test]
fn a_node_killed_and_restarted_catches_up() {
    let run = run_scenario(
        "kill-restart",
        r#"
        nodes = 4
        rounds = 5
        quorum = { fraction = 0.7 }
        [[events]]
        round = 2
        action = "kill"
        target = 2
        [[events]]
        round = 3
        action = "restart"
        target = 2
        "#,
    );
    // The check "same final model" covers the restarted node: it completed the job too, whether
    // it came back while rounds were still running (and trained in them) or after the job ended
    // (the last round's aggregator announces the result again when it hears its heartbeat).
    run.assert_passed();
}

/// Byzantine members under trimmed mean reach the target; the same under FedAvg does not.
#[test]
fn byzantine_members_are_withstood_by_trimmed_mean_and_ruin_fedavg() {
    let byzantine = |strategy: &str, expect: &str| {
        let text = format!(
            r#"
            nodes = 5
            rounds = 4
            expect = "{expect}"
            strategy = {strategy}
            [[events]]
            round = 1
            action = "byzantine"
            target = 4
            misbehave = "sign-flip"
            "#
        );
        run_scenario(&format!("byzantine-{expect}"), &text)
    };
    let trimmed = byzantine(r#"{ rule = "trimmed_mean", beta = 0.3 }"#, "reach-target");
    let fedavg = byzantine(r#"{ rule = "fedavg" }"#, "below-target");
    trimmed.assert_passed();
    fedavg.assert_passed();
    let (robust, plain) = (trimmed.final_accuracy(), fedavg.final_accuracy());
    assert!(robust >= FLOOR && plain < robust - 0.2, "trimmed mean {robust}, FedAvg {plain}");
}

/// `testnet/scenarios/leave-rejoin.toml` as written: members leave and join again (one three
/// times), the aggregator of round 8 leaves in the middle of it, and no round waits out its
/// deadline for any of them.
#[test]
fn members_leave_and_join_again_without_stalling_a_round() {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/leave-rejoin.toml"),
    )
    .unwrap();
    let run = run_scenario_file("leave-rejoin", &text);
    run.assert_passed();
    let no_stall = run.report.checks.iter().find(|check| check.name == "no stall");
    assert!(no_stall.is_some_and(|check| check.passed), "{:#?}", run.report.checks);
    // Four rejoin events (one of them for two nodes), each fired.
    let rejoins = run.lines.iter().filter(|line| line.contains("joined the job again")).count();
    assert_eq!(rejoins, 4, "{:#?}", run.lines);
}

/// A researcher's knobs from a scenario file reach every node: FedProx, momentum and a step
/// learning-rate schedule in `hyperparameters`, and a fraction of the members each round in
/// `participation`; the job learns, and each round has the trainers the fraction selects.
#[test]
fn fedprox_momentum_an_lr_schedule_and_a_fraction_run_end_to_end() {
    let run = common::run_scenario(
        "researchers-knobs",
        r#"
        nodes = 4
        rounds = 8
        partition = "dirichlet:1.0"
        lr = 0.1
        hyperparameters = { fedprox_mu = 0.01, momentum = 0.5, lr_schedule = "step:3,0.5" }
        participation = { fraction = 0.5 }
        "#,
    );
    run.assert_passed();
    assert!(run.participants().iter().all(|p| *p == 2), "{:#?}", run.lines);
    assert!(run.final_accuracy() >= common::FLOOR, "{:#?}", run.lines);
}

/// `slow = { nodes = [0], factor = 20.0 }` makes node0's local training take 20 times as long:
/// rounds that wait for it are several times as long as the same job's without it (training
/// long enough to be most of a round: with 5 epochs, node0 trained in 0.02 s, and the fast
/// job's training, measured in another run under the load of other tests, was 0.05 s). The
/// deadline is long enough for node0's training (3.4 s in a clean-clone CI run), though a
/// round opened again at its deadline would still count from its first opening.
#[test]
fn a_slow_node_trains_its_factor_times_as_long() {
    let job = |slow: &str| {
        let name = if slow.is_empty() { "all-fast" } else { "one-slow" };
        let settings = "model = \"softmax\"\nround_deadline_secs = 30\nnodes = 3\nrounds = 3";
        run_scenario_file(name, &format!("{settings}\nlocal_epochs = 15\n{slow}"))
    };
    let fast = job("");
    let slow = job("slow = { nodes = [0], factor = 20.0 }");
    fast.assert_passed();
    slow.assert_passed();
    let (fast_round, slow_round) = (
        fast.report.mean_round_seconds.unwrap_or(0.0),
        slow.report.mean_round_seconds.unwrap_or(0.0),
    );
    let fast_training = fast.report.mean_train_seconds.unwrap_or(0.0);
    eprintln!(
        "rounds: {fast_round:.2} s, with a slow node {slow_round:.2} s; training {fast_training:.2} s"
    );
    assert!(slow_round > 5.0 * fast_round, "{:#?}", slow.lines);
}

/// `testnet --repeat 2` runs the flags' job over two seeds and reports each figure's mean and
/// standard deviation, with the time to the target accuracy, in summary.json.
#[test]
fn repeat_runs_a_job_over_seeds_and_reports_mean_and_std() {
    let out = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_testnet"))
        .arg("--binary")
        .arg(common::fedmesh_binary())
        .args(["--nodes", "3", "--rounds", "3", "--model", "softmax", "--seed", "4"])
        .args(["--round-deadline-secs", "5", "--repeat", "2", "--target", "0.5", "--out"])
        .arg(out.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("testnet over 2 seeds (2 passed): final accuracy 0."), "{stdout}");
    let text = std::fs::read_to_string(out.path().join("summary.json")).unwrap();
    let summary: serde_json::Value = serde_json::from_str(&text).unwrap();
    let runs = summary["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert!(runs.iter().all(|run| run["time_to_target"].as_f64().is_some_and(|t| t > 0.0)));
    let spread = &summary["repeats"][0];
    assert_eq!(spread["seeds"], serde_json::json!([4, 5]));
    assert_eq!(spread["final_accuracy"]["runs"], 2);
    assert!(spread["final_accuracy"]["std"].as_f64().is_some_and(|s| s >= 0.0), "{spread}");
    assert!(spread["time_to_target"]["mean"].as_f64().is_some_and(|t| t > 0.0), "{spread}");
}
