//! Verifiable aggregation end to end on real `fedmesh` processes: a member that forges the
//! model of every round it aggregates (`forge-aggregate`, a backdoor added to the honest
//! aggregate) is caught by the members' audits in the first round it lies, proven a liar by a
//! signed fraud proof, and never aggregates again; the job completes with one model and
//! reaches its target (`testnet/scenarios/lying-aggregator.toml`, smaller).

mod common;

use common::{FLOOR, run_scenario};

#[test]
fn a_lying_aggregator_is_caught_in_the_round_it_lies_and_never_aggregates_again() {
    // 4 members over 40 rounds: the liar, vetted from round 2, aggregates some round but with
    // a chance of (3/4)^39. The round it forged is run again, so the report may show it
    // aggregated by another member.
    let run = run_scenario(
        "lying-aggregator",
        r#"
        nodes = 4
        rounds = 40
        verification = { auditors = "all" }
        refused = ["forged_aggregate"]
        [[events]]
        round = 1
        action = "byzantine"
        target = 2
        misbehave = "forge-aggregate"
        "#,
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
