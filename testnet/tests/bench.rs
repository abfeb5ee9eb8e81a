//! `testnet --bench` end to end, tiny: a 20,000-parameter bench model on 3 nodes for 2 rounds
//! prints its table (seconds per round, bytes, raw TCP, ratio, peak memory) and writes
//! bench.json with every figure.

mod common;

use common::fedmesh_binary;
use fedmesh_testnet::bench::BenchRow;
use std::process::Command;

#[test]
fn a_tiny_bench_runs_and_prints_its_figures() {
    let out = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_testnet"))
        .arg("--binary")
        .arg(fedmesh_binary())
        .args(["--bench", "--bench-params", "20000", "--bench-nodes", "3", "--bench-rounds", "2"])
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("s/round") && stdout.contains("ratio"), "{stdout}");
    let text = std::fs::read_to_string(out.path().join("bench.json")).unwrap();
    let rows: Vec<BenchRow> = serde_json::from_str(&text).unwrap();
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!((row.params, row.nodes, row.rounds), (20_000, 3, 2));
    assert_eq!(row.status, "completed");
    // Each round moves at least a delta from each of two trainers and the model to two members.
    assert!(row.bytes_per_round >= 4.0 * 80_000.0, "{row:?}");
    assert!(row.seconds_per_round.is_some_and(|s| s > 0.0), "{row:?}");
    assert!(row.ratio_to_raw_tcp.is_some_and(|r| r > 0.0), "{row:?}");
    assert!(row.peak_rss_mb_max.is_some_and(|mb| mb > 1.0), "{row:?}");
}
