//! Secure aggregation in the simulator: members whose keys are ed25519 identities run masked
//! rounds (keys, shares, masked updates, unmasking) over the simulated network. A secure job
//! learns what the same job learns in the clear, survives members killed mid-round, sums each
//! group securely under the hierarchical topology, and, audited, convicts a forged aggregate
//! from the evidence its leader kept.

use fedmesh_protocol::model::ModelSpec;
use fedmesh_protocol::spec::Auditors;
use fedmesh_protocol::strategy::StrategySpec;
use fedmesh_protocol::tag::BuiltinTopology;
use fedmesh_sim::config::{AdversaryKind, AdversarySpec, Config};
use fedmesh_sim::{Report, Status, run};

/// Softmax on `digits`, 6 members, 5 rounds, trainers clipping at 20; secure or not.
fn digits(secure: bool, seed: u64) -> Config {
    Config {
        model: ModelSpec::Softmax,
        dataset: fedmesh_learning::Embedded::Digits,
        strategy: StrategySpec { clip_norm: Some(20.0), ..StrategySpec::default() },
        local_epochs: 3,
        lr: 0.1,
        quorum: 1.0,
        secure_aggregation: secure,
        ..Config::new(6, 5, seed)
    }
}

fn assert_completed(report: &Report) {
    assert_eq!(report.status, Status::Completed, "{report}");
    assert!(report.models_agree, "{report}");
    assert!(report.violations.is_empty(), "{report}");
}

#[test]
fn a_secure_job_learns_what_the_same_job_learns_in_the_clear() {
    let secure = run(digits(true, 3)).expect("the run starts");
    let plain = run(digits(false, 3)).expect("the run starts");
    assert_completed(&secure);
    assert_completed(&plain);
    let (with, without) = (secure.final_accuracy, plain.final_accuracy);
    let (with, without) = (with.expect("scored"), without.expect("scored"));
    assert!(with > 0.8, "{secure}");
    assert!((with - without).abs() <= 0.01, "secure {with}, plain {without}");
    assert!(secure.bytes > plain.bytes, "keys, shares and unmasking travel too");
}

#[test]
fn secure_rounds_complete_when_members_are_killed_and_restarted() {
    for seed in 0..4 {
        let config = Config {
            kill: 0.34,
            deadline_secs: 4,
            restart_after_secs: Some(6.0),
            ..digits(true, seed)
        };
        let report = run(config).expect("the run starts");
        assert_completed(&report);
        assert_eq!(report.counters.members_killed, 2, "{report}");
    }
}

#[test]
fn each_group_sums_securely_under_the_hierarchical_topology() {
    let config = Config {
        topology: BuiltinTopology::Hierarchical,
        groups: 2,
        ..Config { members: 8, ..digits(true, 5) }
    };
    let report = run(config).expect("the run starts");
    assert_completed(&report);
    assert!(report.final_accuracy.is_some_and(|a| a > 0.8), "{report}");
}

#[test]
fn an_audited_secure_job_convicts_a_forged_aggregate_from_its_evidence() {
    let forging = |seed: u64| Config {
        adversaries: vec![AdversarySpec { kind: AdversaryKind::ForgeAggregate, count: 1 }],
        min_participants: 5,
        verification: Some(Auditors::All),
        strategy: StrategySpec { clip_norm: Some(20.0), ..StrategySpec::default() },
        secure_aggregation: true,
        ..Config::new(6, 8, seed)
    };
    let report = run(forging(8)).expect("the run starts");
    assert_completed(&report);
    assert_eq!(report.counters.aggregates_forged, 1, "elected once, then excluded: {report}");
    assert_eq!(report.counters.fraud_proofs, 5, "{report}");
    assert_eq!(report.counters.forged_models_kept, 0, "{report}");
    assert_eq!(report.counters.audits_failed, 0, "{report}");
    let again = run(forging(8)).expect("the run starts");
    assert_eq!(report.trace_digest, again.trace_digest, "one seed, one run");
}
