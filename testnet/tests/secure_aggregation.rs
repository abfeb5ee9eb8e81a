//! Secure aggregation end to end on real `fedmesh` processes: with `privacy.secure_aggregation`
//! the trainers send only masked, quantized updates, the aggregator unmasks only their sum, and
//! the job learns as the same job does without it.

mod common;

use common::{FLOOR, Run, run_scenario};

/// The same small job (softmax on mnist5k, 4 nodes, 4 rounds, trainers clipping at 20), with
/// or without secure aggregation.
fn job(secure: bool) -> Run {
    let name = if secure { "secure-aggregation" } else { "plain-aggregation" };
    run_scenario(
        name,
        &format!(
            r#"
            nodes = 4
            rounds = 4
            lr = 0.05
            seed = 0
            strategy = {{ rule = "fedavg", clip_norm = 20.0 }}
            privacy = {{ secure_aggregation = {secure} }}
            "#
        ),
    )
}

#[test]
fn a_secure_job_learns_as_the_same_job_without_it() {
    let secure = job(true);
    secure.assert_passed();
    let plain = job(false);
    plain.assert_passed();
    let (with, without) = (secure.final_accuracy(), plain.final_accuracy());
    eprintln!(
        "secure: {with:.4} in {:?} s a round; plain: {without:.4} in {:?} s a round",
        secure.report.mean_round_seconds, plain.report.mean_round_seconds
    );
    assert!(with >= FLOOR, "{:#?}", secure.lines);
    assert!((with - without).abs() <= 0.005, "secure {with}, plain {without}");
    assert!(secure.participants().iter().all(|p| *p == 4), "{:#?}", secure.lines);
}

/// `testnet/scenarios/secagg-dropouts.toml` as written: 8 nodes, node 5 killed in round 3 and
/// node 6 in round 6; every round completes without them (the survivors' shares unmask each
/// sum) and the job reaches its target.
#[test]
fn secure_rounds_complete_when_trainers_drop_out() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/secagg-dropouts.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let run = common::run_scenario_file("secagg-dropouts", &text);
    run.assert_passed();
    // A node killed right after its masked update reached the aggregator still counts in that
    // round's sum, and in no later one.
    let participants = run.participants();
    assert_eq!((participants[0], participants[9]), (8, 6), "{:#?}", run.lines);
    assert!(participants.windows(2).all(|w| w[1] <= w[0]), "{:#?}", run.lines);
    for fired in &run.report.events {
        let sent =
            fired.outcome.strip_prefix("killed (SIGKILL) right after its masked update of round ");
        let round: usize = sent.and_then(|r| r.parse().ok()).expect(&fired.outcome);
        assert!(round >= fired.round as usize, "{fired:?}");
        assert_eq!(participants[round - 1], participants[round] + 1, "{participants:?} {fired:?}");
    }
}

/// Under the hierarchical topology each group's aggregator sums its group's masked updates:
/// 6 nodes in two groups learn as the same job does without secure aggregation.
#[test]
fn a_secure_hierarchical_job_sums_each_group_securely_and_learns() {
    let grouped = |secure: bool| {
        let name = if secure { "secure-hierarchical" } else { "plain-hierarchical" };
        let scenario = format!(
            r#"
            nodes = 6
            rounds = 4
            topology = "hierarchical"
            groups = ["eu", "na"]
            lr = 0.05
            seed = 0
            strategy = {{ rule = "fedavg", clip_norm = 20.0 }}
            privacy = {{ secure_aggregation = {secure} }}
            "#
        );
        run_scenario(name, &scenario)
    };
    let secure = grouped(true);
    secure.assert_passed();
    let plain = grouped(false);
    plain.assert_passed();
    let (with, without) = (secure.final_accuracy(), plain.final_accuracy());
    eprintln!("hierarchical secure: {with:.4}; plain: {without:.4}");
    assert!(with >= FLOOR, "{:#?}", secure.lines);
    assert!((with - without).abs() <= 0.005, "secure {with}, plain {without}");
    assert!(secure.participants().iter().all(|p| *p == 6), "{:#?}", secure.lines);
}
