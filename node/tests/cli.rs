//! The `fedmesh` command line as a user meets it: help, train-local's JSON report, and clear
//! errors for wrong flags, bad files and missing nodes.

use std::process::{Command, Output};

fn fedmesh(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fedmesh"))
        .args(args)
        .output()
        .expect("the fedmesh binary runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn train_local_prints_one_json_report() {
    let output = fedmesh(&[
        "train-local",
        "--dataset",
        "breast-cancer",
        "--model",
        "softmax",
        "--epochs",
        "5",
        "--json",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("stdout is one JSON object");
    let accuracy = report["test_accuracy"].as_f64().unwrap();
    assert!(accuracy > 0.9, "accuracy {accuracy}");
    assert_eq!(report["epochs"], 5);
    assert!(report["test_loss"].as_f64().is_some() && report["seconds"].as_f64().is_some());
}

#[test]
fn train_local_prints_a_line_per_epoch() {
    let output =
        fedmesh(&["train-local", "--dataset", "digits", "--model", "mlp:32", "--epochs", "3"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(stdout.lines().filter(|l| l.starts_with("epoch")).count(), 3, "{stdout}");
    assert!(stdout.contains("final test accuracy"));
}

#[test]
fn wrong_flags_and_bad_files_get_clear_errors() {
    let cases: [(&[&str], &str); 5] = [
        (&["train-local", "--model", "cnn"], "invalid model `cnn`"),
        (&["train-local", "--dataset", "imagenet"], "unknown data set `imagenet`"),
        (&["train-local", "--dataset", "/nonexistent/data.csv"], "/nonexistent/data.csv"),
        (&["train-local", "--epochs", "many"], "invalid value 'many'"),
        (&["job", "list", "--data-dir", "/nonexistent"], "is a fedmesh node running"),
    ];
    for (args, expected) in cases {
        let output = fedmesh(args);
        assert!(!output.status.success(), "{args:?} succeeded");
        assert!(stderr(&output).contains(expected), "{args:?}: {}", stderr(&output));
    }
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("ragged.csv");
    std::fs::write(&csv, "1,2,0\n3,1\n").unwrap();
    let output = fedmesh(&["train-local", "--dataset", csv.to_str().unwrap()]);
    assert!(stderr(&output).contains("line 2"), "{}", stderr(&output));
}

#[test]
fn node_refuses_bad_settings_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.key");
    assert!(fedmesh(&["keygen", "--out", key.to_str().unwrap()]).status.success());
    let data = dir.path().join("data");
    let base = ["node", "--key", key.to_str().unwrap(), "--data-dir", data.to_str().unwrap()];
    let cases: [(&[&str], &str); 4] = [
        (&["--listen", "not-an-address"], "setting `listen`"),
        (&["--bootstrap", "/ip4/127.0.0.1/tcp/1/p2p/garbage"], "setting `bootstrap`"),
        (&["--trust", "nobody"], "setting `trust`"),
        (&["--admin", "0.0.0.0:7000"], "setting `admin`"),
    ];
    for (extra, expected) in cases {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        let output = fedmesh(&args);
        assert!(!output.status.success(), "{extra:?} was accepted");
        assert!(stderr(&output).contains(expected), "{extra:?}: {}", stderr(&output));
    }
    let missing_key =
        fedmesh(&["node", "--key", "/nonexistent.key", "--data-dir", data.to_str().unwrap()]);
    assert!(stderr(&missing_key).contains("setting `key`"), "{}", stderr(&missing_key));
    let config = dir.path().join("node.toml");
    std::fs::write(&config, "key = 'k'\ndata_dir = 'd'\nlisten_on = []\n").unwrap();
    let output = fedmesh(&["node", "--config", config.to_str().unwrap()]);
    assert!(stderr(&output).contains("listen_on"), "{}", stderr(&output));
}
