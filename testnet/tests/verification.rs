//! Verifiable aggregation end to end on real `fedmesh` processes: a member that forges the
//! model of every round it aggregates (`forge-aggregate`, a backdoor added to the honest
//! aggregate) is caught by the members' audits in the first round it lies, proven a liar by a
//! signed fraud proof, and never aggregates again; the job completes with one model and
//! reaches its target (`testnet/scenarios/lying-aggregator.toml`, smaller). With secure
//! aggregation the audits recompute the masked sum from the evidence the leader keeps.

mod common;

use common::{FLOOR, run_scenario};

/// 4 members over 40 rounds, node 2 forging: the liar, vetted from round 2, aggregates some
/// round but with a chance of (3/4)^39. The round it forged is run again, so the report may
/// show it aggregated by another member.
fn caught_once(name: &str, settings: &str) {
    let run = run_scenario(
        name,
        &format!(
            r#"
            nodes = 4
            rounds = 40
            verification = {{ auditors = "all" }}
            refused = ["forged_aggregate"]
            {settings}
            [[events]]
            round = 1
            action = "byzantine"
            target = 2
            misbehave = "forge-aggregate"
            "#
        ),
    );
    run.assert_passed();
    // One lie, refused by each of the three honest members once: the liar never aggregated
    // again (each round it aggregated would be another lie, refused by them all again).
    let refused = run.report.checks.iter().find(|check| check.name == "refused");
    let detail = refused.map_or("", |check| check.detail.as_str());
    assert!(detail.contains("forged_aggregate 3 times on 3 nodes"), "{:#?}", run.report.checks);
    let forged = run.report.rounds.iter().filter(|r| r.aggregator.as_deref() == Some("node2"));
    assert!(forged.count() <= 1, "{:#?}", run.lines);
    assert!(run.final_accuracy() >= FLOOR, "{:#?}", run.lines);
}

#[test]
fn a_lying_aggregator_is_caught_in_the_round_it_lies_and_never_aggregates_again() {
    caught_once("lying-aggregator", "");
}

#[test]
fn a_lying_secure_aggregator_is_caught_from_the_evidence_of_its_masked_sum() {
    let secure = r#"
        strategy = { rule = "fedavg", clip_norm = 20.0 }
        privacy = { secure_aggregation = true }
    "#;
    caught_once("lying-secure-aggregator", secure);
}
