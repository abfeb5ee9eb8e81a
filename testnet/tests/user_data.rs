//! A user's own CSV through the testnet: data/iris.csv (a header, `species` as text) split over
//! 3 real `fedmesh` nodes by `--label-column species`; the job spec names the classes, every
//! node maps its share's labels to them, and the federation reaches 0.85. And `testnet --help`,
//! which `testnet/run.sh --help` prints from testnet/help.txt without a build.

mod common;

use common::fedmesh_binary;
use fedmesh_testnet::scenario::Scenario;

#[test]
fn iris_by_its_species_column_trains_across_three_nodes() {
    let out = tempfile::tempdir().unwrap();
    let scenario = Scenario {
        nodes: 3,
        total_nodes: 3,
        rounds: 20,
        dataset: format!(
            "{}/../data/iris.csv",
            std::env::var("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR")
        ),
        label_column: Some("species".into()),
        model: "mlp:16".into(),
        local_epochs: 5,
        lr: 0.3,
        seed: 1,
        round_deadline_secs: 20,
        min_participants: 3,
        ..Scenario::new(fedmesh_binary(), out.path().to_owned())
    };
    let partitions = scenario.write_partitions().unwrap();
    assert_eq!(partitions.iter().map(|p| p.samples).sum::<usize>(), 150);
    let share = std::fs::read_to_string(&partitions[0].path).unwrap();
    assert!(share.contains("setosa") || share.contains("virginica"), "{share}");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut lines = Vec::new();
    let report = runtime.block_on(scenario.run(partitions, |p| lines.push(p.line(20)))).unwrap();
    assert_eq!(report.status, "completed", "{lines:#?}");
    assert!(report.passed, "{:#?}", report.checks);
    let accuracy = report.final_accuracy.unwrap();
    eprintln!("iris on 3 nodes: final accuracy {accuracy:.4}");
    assert!(accuracy >= 0.85, "iris on 3 nodes: {accuracy}\n{lines:#?}");
}

#[test]
fn run_sh_help_is_the_testnet_help() {
    let output =
        std::process::Command::new(env!("CARGO_BIN_EXE_testnet")).arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    let kept = include_str!("../help.txt");
    assert_eq!(
        kept, help,
        "testnet/help.txt is stale: write it again with `testnet --help > testnet/help.txt`"
    );
    let script = std::process::Command::new(format!(
        "{}/run.sh",
        std::env::var("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR")
    ))
    .arg("--help")
    .env("PATH", "/usr/bin:/bin") // no cargo: the script must not build
    .output()
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&script.stdout), help);
}
