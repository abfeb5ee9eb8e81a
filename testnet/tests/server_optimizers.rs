//! Server optimizers over rotating aggregators on real `fedmesh` processes: each round's
//! aggregator fetches the optimizer state its predecessor stored beside the model (named in its
//! result), applies its step and passes the new state on. FedAvgM, FedAdam and FedYogi jobs of 8
//! nodes complete 20 rounds whose aggregator changes from round to round, and learn.

mod common;

use common::run_scenario;

fn job(optimizer: &str) -> common::Run {
    run_scenario(
        optimizer,
        &format!(
            r#"
            nodes = 8
            rounds = 20
            lr = 0.05
            local_epochs = 2
            strategy = {{ rule = "fedavg", server = {{ optimizer = "{optimizer}", eta = {eta} }} }}
            "#,
            eta = if optimizer == "fedavgm" { 1.0 } else { 0.01 },
        ),
    )
}

#[test]
fn fedavgm_fedadam_and_fedyogi_carry_their_state_from_aggregator_to_aggregator() {
    for optimizer in ["fedavgm", "fedadam", "fedyogi"] {
        let run = job(optimizer);
        run.assert_passed();
        let aggregators: Vec<&str> =
            run.report.rounds.iter().filter_map(|r| r.aggregator.as_deref()).collect();
        let changes = aggregators.windows(2).filter(|pair| pair[0] != pair[1]).count();
        let accuracy = run.final_accuracy();
        eprintln!("{optimizer}: {accuracy:.4}, the aggregator changed {changes} times in 19");
        assert_eq!(run.participants().len(), 20, "{:#?}", run.lines);
        assert_eq!(changes, 19, "the aggregator changes every round: {optimizer}: {aggregators:?}");
        assert!(accuracy >= 0.8, "{optimizer}: {:#?}", run.lines);
    }
}
