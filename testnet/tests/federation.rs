//! A small federation end to end through the testnet's own code: 4 real `fedmesh` processes, 3
//! rounds on mnist5k; the job completes, accuracy rises, and the report and plot are written.

use fedmesh_testnet::report::Report;
use fedmesh_testnet::scenario::Scenario;
use std::path::PathBuf;

/// The `fedmesh` binary of this build (`cargo test --workspace` builds it before any test runs).
fn fedmesh_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/debug/deps/federation-HASH -> target/debug/fedmesh
    let binary = exe.parent().and_then(|deps| deps.parent()).unwrap().join("fedmesh");
    assert!(
        binary.is_file(),
        "no fedmesh binary at {}: run `cargo build -p fedmesh-node` (or `cargo test --workspace`)",
        binary.display()
    );
    binary
}

#[test]
fn four_nodes_train_mnist_and_the_report_is_written() {
    let out = tempfile::tempdir().unwrap();
    let scenario = Scenario {
        nodes: 4,
        rounds: 3,
        topology: "central".into(),
        dataset: "mnist5k".into(),
        model: "softmax".into(),
        partition: "iid".into(),
        local_epochs: 1,
        batch_size: 32,
        lr: 0.1,
        seed: 7,
        round_deadline_secs: 20,
        trainer: Vec::new(),
        binary: fedmesh_binary(),
        out: out.path().to_owned(),
    };
    let partitions = scenario.write_partitions().unwrap();
    assert_eq!(partitions.iter().map(|p| p.samples).sum::<usize>(), 5000);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut lines = Vec::new();
    let report = runtime.block_on(scenario.run(partitions, |r| lines.push(r.line(3)))).unwrap();
    assert_eq!(report.status, "completed", "{lines:#?}");
    assert_eq!(lines.len(), 3);
    assert!(report.rounds.iter().all(|r| r.participants == 4), "{lines:#?}");
    let first = report.rounds[0].accuracy.unwrap();
    let last = report.final_accuracy.unwrap();
    // Softmax on mnist5k, 4 x 1000 training samples: measured 0.85 after one round, 0.87 after
    // three.
    assert!(first > 0.7 && last > first, "accuracy did not rise: {lines:#?}");

    let json = report.write_json(out.path()).unwrap();
    let parsed: Report = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    assert_eq!(parsed.rounds.len(), 3);
    assert_eq!(parsed.final_accuracy, report.final_accuracy);
    let plot = report.write_plot(out.path()).unwrap();
    let png = std::fs::read(plot).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{} bytes", png.len());
}
