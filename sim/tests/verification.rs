//! Verifiable aggregation: an elected aggregator that announces a model which is not the
//! recomputation of the contributions it lists (`forge-aggregate`) is caught in the round it
//! lies, convicted by a fraud proof every member checks, and never elected again; the round is
//! run again and the job completes on one model path. Without verification the forgery stands.

use fedmesh_protocol::spec::Auditors;
use fedmesh_sim::config::{AdversaryKind, AdversarySpec, Config};
use fedmesh_sim::{Report, Status, run};

const MEMBERS: usize = 6;
const ROUNDS: u64 = 8;

fn forging(seed: u64, verification: Option<Auditors>) -> Config {
    Config {
        adversaries: vec![AdversarySpec { kind: AdversaryKind::ForgeAggregate, count: 1 }],
        min_participants: 5,
        verification,
        ..Config::new(MEMBERS, ROUNDS, seed)
    }
}

fn assert_completed_on_one_path(report: &Report) {
    assert_eq!(report.status, Status::Completed, "{report}");
    assert!(report.models_agree, "{report}");
    assert!(report.violations.is_empty(), "{report}");
    assert_eq!(report.round_models.len() as u64, ROUNDS, "{report}");
}

/// Seed 7: the forger is elected for a round (without verification, for two). Every member audits: each honest one publishes a
/// fraud proof, the forger is excluded (it forges once: it is never elected again), and the
/// honest members roll back to round 2's model and agree on every round's model.
#[test]
fn a_forged_aggregate_is_caught_and_its_aggregator_never_elected_again() {
    let report = run(forging(7, Some(Auditors::All))).expect("the run starts");
    assert_completed_on_one_path(&report);
    assert_eq!(report.counters.aggregates_forged, 1, "elected once, then excluded: {report}");
    assert_eq!(report.counters.fraud_proofs, (MEMBERS - 1) as u64, "{report}");
    assert_eq!(report.counters.forged_models_kept, 0, "{report}");
    assert_eq!(report.counters.audits_failed, 0, "{report}");
}

/// With a fraction of auditors the forgery is still caught (some members audit; the others
/// check the proof) and the job completes.
#[test]
fn a_fraction_of_auditors_catches_it_too() {
    let report = run(forging(2, Some(Auditors::Fraction(0.5)))).expect("the run starts");
    assert_completed_on_one_path(&report);
    assert_eq!(report.counters.aggregates_forged, 1, "{report}");
    assert!(report.counters.fraud_proofs >= 1, "{report}");
    assert!(report.counters.fraud_proofs < (MEMBERS - 1) as u64, "not everyone audits: {report}");
    assert_eq!(report.counters.forged_models_kept, 0, "{report}");
}

/// The same run without verification: every honest member keeps the forged models, and the
/// forger forges again when it is elected again (twice with seed 7).
#[test]
fn without_verification_the_forgery_goes_undetected() {
    let report = run(forging(7, None)).expect("the run starts");
    assert_eq!(report.status, Status::Completed, "{report}");
    assert!(report.models_agree, "the honest members agree, on forged models: {report}");
    assert_eq!(report.counters.fraud_proofs, 0, "{report}");
    assert_eq!(report.counters.aggregates_forged, 2, "{report}");
    let kept = 2 * (MEMBERS - 1) as u64;
    assert_eq!(report.counters.forged_models_kept, kept, "every honest member kept both: {report}");
}

/// One seed, one run: the audits and rollbacks are deterministic.
#[test]
fn verified_runs_are_deterministic() {
    let a = run(forging(2, Some(Auditors::All))).expect("the run starts");
    let b = run(forging(2, Some(Auditors::All))).expect("the run starts");
    assert_eq!(a.trace_digest, b.trace_digest);
    assert_completed_on_one_path(&a);
}

/// Seeds 30 and 46: the forger is elected for the job's last round, and an honest member completes
/// the job on the forged model before its own audit convicts it. It rolls back and runs the
/// last round again with the others (before, it stayed completed on round 7's model, and the
/// honest members ended on two models).
#[test]
fn a_member_that_completed_on_a_forged_last_round_runs_it_again() {
    for seed in [30, 46] {
        let report = run(forging(seed, Some(Auditors::All))).expect("the run starts");
        assert_completed_on_one_path(&report);
        assert_eq!(report.counters.aggregates_forged, 1, "seed {seed}: {report}");
        assert_eq!(report.counters.forged_models_kept, 0, "seed {seed}: {report}");
    }
}
