//! Participant selection on real `fedmesh` processes: Oort against random selection at the same
//! fraction with two of eight nodes five times slower (`testnet/scenarios/oort-slow-nodes.toml`),
//! and `max_participants` capping every round's trainers.

mod common;

use common::{run_scenario, run_scenario_file};

/// The shipped Oort scenario, or the same job with the random selector.
fn job(selector: &str) -> common::Run {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/oort-slow-nodes.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let text = match selector {
        "oort" => text,
        _ => text.replace("selector = { oort = { exploration = 0.1 } }", "selector = \"random\""),
    };
    run_scenario_file(selector, &text)
}

/// How many times the slow nodes (node0 and node1) trained in a round, in all.
fn slow_picks(run: &common::Run) -> usize {
    let slow = |node: &String| node == "node0" || node == "node1";
    run.report.rounds.iter().map(|round| round.trainers.iter().filter(|n| slow(n)).count()).sum()
}

#[test]
fn oort_picks_the_slow_nodes_less_often_and_makes_shorter_rounds_than_random() {
    let random = job("random");
    let oort = job("oort");
    random.assert_passed();
    oort.assert_passed();
    for run in [&random, &oort] {
        assert!(
            run.report.rounds.iter().all(|r| r.trainers.len() == 4),
            "{:#?}",
            run.report.rounds
        );
    }
    let (random_picks, oort_picks) = (slow_picks(&random), slow_picks(&oort));
    let (Some(random_secs), Some(oort_secs)) =
        (random.report.time_to_target, oort.report.time_to_target)
    else {
        panic!("both reach 0.88: {:#?}\n{:#?}", random.lines, oort.lines);
    };
    eprintln!(
        "20 rounds of 4 of 8 nodes: the 2 slow ones picked {random_picks} times by random, \
         {oort_picks} by oort; time to 0.88: random {random_secs:.2} s, oort {oort_secs:.2} s; \
         mean round {:.3} s and {:.3} s",
        random.report.mean_round_seconds.unwrap_or_default(),
        oort.report.mean_round_seconds.unwrap_or_default(),
    );
    assert!(oort_picks < random_picks, "{:#?}\n{:#?}", random.report.rounds, oort.report.rounds);
    assert!(oort_picks > 0, "oort explores the slow nodes too");
    // Its rounds are shorter for picking the slow nodes less. (Which round first reaches the
    // target also depends on which shares trained before it: a clean-clone CI saw oort take
    // 5.24 s to random's 4.82 s with rounds of 0.462 s to random's 0.514 s.)
    let mean_round = |run: &common::Run| run.report.mean_round_seconds.unwrap_or(f64::MAX);
    assert!(mean_round(&oort) < mean_round(&random), "{:#?}\n{:#?}", random.lines, oort.lines);
}

#[test]
fn max_participants_caps_every_rounds_trainers() {
    let run = run_scenario(
        "max-participants",
        "nodes = 5\nrounds = 4\nmin_participants = 3\nparticipation = { max_participants = 3 }",
    );
    run.assert_passed();
    assert_eq!(run.participants(), vec![3; 4], "{:#?}", run.lines);
    for round in &run.report.rounds {
        assert_eq!(round.trainers.len(), 3, "{round:?}");
    }
    let trained: std::collections::BTreeSet<&String> =
        run.report.rounds.iter().flat_map(|r| &r.trainers).collect();
    assert!(trained.len() > 3, "another 3 each round: {trained:?}");
}
