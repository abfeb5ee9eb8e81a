//! Property tests over random seeds and fault schedules (loss, latency, kills with restarts, a
//! partition): no member adopts a round's model twice or records another, every honest member
//! adopts the same model for each round, the job runs all its rounds while a quorum stays
//! live, and (the strict form, waiting for a machine fix) every live member completes.

use fedmesh_protocol::tag::BuiltinTopology;
use fedmesh_sim::config::{Config, LatencyRange, PartitionSpec};
use fedmesh_sim::{Report, Status, run};
use proptest::prelude::*;

fn topology() -> impl Strategy<Value = BuiltinTopology> {
    prop_oneof![Just(BuiltinTopology::Central), Just(BuiltinTopology::Hierarchical)]
}

fn partition() -> impl Strategy<Value = Option<PartitionSpec>> {
    prop_oneof![
        2 => Just(None),
        1 => (1u64..=3, 0.1f64..0.3)
            .prop_map(|(round, fraction)| Some(PartitionSpec { round, fraction })),
    ]
}

prop_compose! {
    fn world()(
        members in 5usize..=24,
        rounds in 2u64..=4,
        seed in any::<u64>(),
        topology in topology(),
        loss in 0.0f64..0.05,
        kill in 0.0f64..0.15,
        low in 1u64..40,
        spread in 0u64..150,
        partition in partition(),
    ) -> Config {
        Config {
            topology,
            loss,
            kill,
            restart_after_secs: Some(10.0),
            latency: LatencyRange { min_ms: low, max_ms: low + spread },
            partition,
            groups: 3,
            // A round waits for a majority: a member that (re)joined and heard nobody yet
            // does not open one alone (the machine bug `min_participants: 1` shows, see
            // /work/sim-requests.md).
            min_participants: (members / 2 + 1) as u32,
            max_sim_secs: 1_200.0,
            ..Config::new(members, rounds, seed)
        }
    }
}

/// The invariants that hold whatever happened to the stragglers.
fn check_rounds(report: &Report, rounds: u64) -> Result<(), TestCaseError> {
    prop_assert!(report.violations.is_empty(), "{}", report);
    prop_assert_ne!(report.status, Status::Failed, "{}", report);
    prop_assert_eq!(
        report.round_models.len() as u64,
        rounds,
        "every round has a model: {}",
        report
    );
    let quorum = (report.members as f64 * 0.8).floor() as usize;
    prop_assert!(report.members_completed >= quorum.min(report.live_members), "{}", report);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn members_agree_on_every_round_and_a_quorum_completes(config in world()) {
        let rounds = config.rounds;
        check_rounds(&run(config).expect("the run starts"), rounds)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, failure_persistence: None, ..ProptestConfig::default() })]

    /// Members that fall behind once the others completed (a lost last result, a partition, a
    /// late restart) stay stuck: completed machines go silent and ignore them.
    #[test]
    #[ignore = "machine bug: a member behind after the others completed never catches up"]
    fn every_live_member_completes(config in world()) {
        let rounds = config.rounds;
        let report = run(config).expect("the run starts");
        check_rounds(&report, rounds)?;
        prop_assert_eq!(report.status, Status::Completed, "{}", report);
        prop_assert!(report.models_agree, "{}", report);
        prop_assert_eq!(report.rounds_completed, rounds, "{}", report);
    }
}

/// With `min_participants` 1, a member restarted before it hears anyone opens the next round
/// alone and adopts a model no other member has for it.
#[test]
#[ignore = "machine bug: a restarted member opens a round alone before hearing the others"]
fn a_lone_restarted_member_does_not_adopt_its_own_model_for_a_round() {
    let config = Config {
        topology: BuiltinTopology::Hierarchical,
        kill: 0.05,
        loss: 0.01,
        restart_after_secs: Some(60.0),
        ..Config::new(100, 5, 7)
    };
    let report = run(config).expect("the run starts");
    assert!(report.violations.is_empty(), "{report}");
}
