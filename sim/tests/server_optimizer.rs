//! Server optimizers in the simulator: each round's aggregator resumes from the optimizer state
//! its predecessor stored next to the model, fetched over the simulated network, and the job
//! completes with every member agreeing, with members killed and restarted too.

use fedmesh_protocol::model::ModelSpec;
use fedmesh_protocol::strategy::{AdaptiveParams, ServerOptimizerSpec, StrategySpec};
use fedmesh_protocol::tag::BuiltinTopology;
use fedmesh_sim::config::Config;
use fedmesh_sim::{Report, Status, run};

/// Softmax on `digits` over 8 members and 6 rounds, with the server optimizer `server`.
fn digits(server: ServerOptimizerSpec, topology: BuiltinTopology, seed: u64) -> Config {
    Config {
        model: ModelSpec::Softmax,
        dataset: fedmesh_learning::Embedded::Digits,
        strategy: StrategySpec { server: Some(server), ..StrategySpec::default() },
        topology,
        lr: 0.1,
        ..Config::new(8, 6, seed)
    }
}

fn every_optimizer() -> Vec<ServerOptimizerSpec> {
    let adaptive = AdaptiveParams { eta: 0.05, beta1: 0.9, beta2: 0.99, tau: 1e-3 };
    vec![
        ServerOptimizerSpec::FedAvgM { eta: 1.0, beta1: 0.5 },
        ServerOptimizerSpec::FedAdam(adaptive.clone()),
        ServerOptimizerSpec::FedYogi(adaptive.clone()),
        ServerOptimizerSpec::FedAdagrad(adaptive),
    ]
}

fn assert_completed(report: &Report) {
    assert_eq!(report.status, Status::Completed, "{report}");
    assert!(report.models_agree, "{report}");
    assert!(report.violations.is_empty(), "{report}");
}

#[test]
fn every_optimizer_completes_central_and_hierarchical_jobs_with_one_model() {
    for server in every_optimizer() {
        for topology in [BuiltinTopology::Central, BuiltinTopology::Hierarchical] {
            let report = run(digits(server.clone(), topology, 5)).expect("the run starts");
            assert_completed(&report);
            let accuracy = report.final_accuracy.expect("scored");
            // Better than chance on ten digits (FedAdagrad's steps shrink fast in 6 rounds).
            assert!(accuracy > 0.2, "{server:?} {topology:?}: {report}");
        }
    }
}

#[test]
fn a_job_with_a_server_optimizer_survives_kills_and_restarts() {
    for seed in 0..3 {
        let config = Config {
            kill: 0.25,
            restart_after_secs: Some(6.0),
            ..digits(every_optimizer()[1].clone(), BuiltinTopology::Central, seed)
        };
        let report = run(config).expect("the run starts");
        assert_completed(&report);
    }
}
