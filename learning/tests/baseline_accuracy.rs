//! The centralized baseline reaches the accuracy the issue sets on every embedded data set, with
//! lr 0.05, batch 32, 20 epochs and seed 0; and on data/iris.csv by its `species` column.

use fedmesh_learning::baseline::{BaselineConfig, BaselineReport, run_baseline};
use fedmesh_learning::{DataSource, Model, TrainConfig};

fn accuracy(dataset: &str, model: &str) -> f32 {
    run(DataSource::parse(dataset, None).unwrap(), model, 20, 0.05).test_accuracy
}

fn run(source: DataSource, model: &str, epochs: usize, lr: f32) -> BaselineReport {
    let dataset = source.name();
    let config = BaselineConfig {
        source,
        model: Model::parse_spec(model).unwrap(),
        scaling: None,
        test_fraction: 0.2,
        train: TrainConfig {
            epochs,
            batch_size: 32,
            lr,
            momentum: 0.0,
            weight_decay: 0.0,
            prox_mu: 0.0,
            seed: 0,
            lr_schedule: None,
            rounds: 1,
        },
    };
    let report = run_baseline(&config, |_| {}).unwrap();
    eprintln!(
        "{dataset} {model}: test accuracy {:.4} in {:.1} s",
        report.test_accuracy, report.seconds
    );
    report
}

#[test]
fn iris_by_its_species_column_reaches_90_percent() {
    let iris = &format!(
        "{}/../data/iris.csv",
        std::env::var("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR")
    );
    let report = run(DataSource::parse(iris, Some("species")).unwrap(), "mlp:16", 50, 0.3);
    assert_eq!(report.classes, ["setosa", "versicolor", "virginica"]);
    assert_eq!(report.label_column.as_deref(), Some("species"));
    // Measured 0.967 (29 of the 30 test flowers).
    assert!(report.test_accuracy >= 0.9, "MLP on iris: {}", report.test_accuracy);
}

#[test]
fn mlp_on_mnist5k_reaches_91_percent() {
    let accuracy = accuracy("mnist5k", "mlp:200,200");
    assert!(accuracy >= 0.91, "MLP on mnist5k: {accuracy}");
}

#[test]
fn softmax_on_mnist5k_reaches_87_percent() {
    let accuracy = accuracy("mnist5k", "softmax");
    assert!(accuracy >= 0.87, "softmax on mnist5k: {accuracy}");
}

#[test]
fn mlp_on_digits_reaches_95_percent() {
    let accuracy = accuracy("digits", "mlp:200,200");
    assert!(accuracy >= 0.95, "MLP on digits: {accuracy}");
}

#[test]
fn softmax_on_breast_cancer_reaches_94_percent() {
    let accuracy = accuracy("breast-cancer", "softmax");
    assert!(accuracy >= 0.94, "softmax on breast-cancer: {accuracy}");
}
