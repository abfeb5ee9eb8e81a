//! The `fedmesh` command line as a user meets it: help, train-local's JSON report (iris by its
//! `species` column too), clear errors for wrong flags, bad files and missing nodes, a flag and a
//! variable for every setting of the README's node.toml, and their precedence.

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

/// The README's node.toml example: its text and its top-level keys (`datasets` is a table).
fn readme_node_toml() -> (String, Vec<String>) {
    let readme = include_str!("../../README.md");
    let after = readme.split("`node.toml` (only").nth(1).expect("the README shows a node.toml");
    let block = after.split("```toml\n").nth(1).and_then(|rest| rest.split("```").next());
    let text = block.expect("a toml block follows").to_owned();
    let table: toml::Table = toml::from_str(&text).expect("the README's node.toml parses");
    (text, table.keys().cloned().collect())
}

#[test]
fn every_setting_of_the_readme_node_toml_has_a_flag_and_a_variable() {
    let (text, keys) = readme_node_toml();
    assert!(keys.len() >= 23, "{keys:?}");
    let help = fedmesh(&["node", "--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    for key in &keys {
        let flag = format!("--{}", key.replace('_', "-"));
        let variable = format!("FEDMESH_{}", key.to_uppercase());
        assert!(help.contains(&format!("{flag} ")), "no flag {flag} in:\n{help}");
        assert!(help.contains(&variable), "no variable {variable} in:\n{help}");
    }
    // And the example is a valid node.toml.
    let config: fedmesh_node::config::NodeConfig = toml::from_str(&text).unwrap();
    assert_eq!(config.datasets["iris"], "/srv/data/iris.csv#species");
}

#[test]
fn flags_override_variables_which_override_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        "key = 'file.key'\ndata_dir = 'file-data'\nmdns = true\ngroup = 'file'\n\
         trust = ['12D3KooWfile']\nreannounce_secs = 7\n[datasets]\nmnist = 'mnist5k'\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_fedmesh"))
        .args(["node", "--config", config.to_str().unwrap(), "--print-config"])
        .args(["--mdns", "false", "--group", "flag", "--dataset", "iris=iris.csv#species"])
        .env("FEDMESH_GROUP", "variable")
        .env("FEDMESH_AUTO_JOIN", "false")
        .env("FEDMESH_LISTEN", "/ip4/127.0.0.1/tcp/4001,/ip4/127.0.0.1/tcp/4002")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let printed: fedmesh_node::config::NodeConfig =
        toml::from_str(&String::from_utf8_lossy(&output.stdout)).unwrap();
    assert!(!printed.mdns && !printed.auto_join);
    assert_eq!(printed.group, "flag");
    assert_eq!(printed.listen.len(), 2);
    assert_eq!((printed.reannounce_secs, printed.trust.len()), (7, 1));
    assert_eq!(printed.key, std::path::PathBuf::from("file.key"));
    assert_eq!(printed.datasets.len(), 2);
    let bare = fedmesh(&["node", "--key", "k", "--data-dir", "d", "--mdns", "--print-config"]);
    assert!(String::from_utf8_lossy(&bare.stdout).contains("mdns = true"), "{}", stderr(&bare));
}

#[test]
fn train_local_reads_iris_by_its_species_column() {
    let iris: &str = &format!(
        "{}/../data/iris.csv",
        std::env::var("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR")
    );
    let train = |more: &[&str]| {
        let args = ["train-local", "--dataset", iris, "--label-column", "species"];
        fedmesh(&[&args[..], &["--model", "mlp:16"], more].concat())
    };
    let output = train(&["--epochs", "50", "--lr", "0.3", "--json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["dataset"], iris);
    assert_eq!(report["label_column"], "species");
    assert_eq!(report["classes"], serde_json::json!(["setosa", "versicolor", "virginica"]));
    assert_eq!(report["model"], serde_json::json!({"mlp": [16]}));
    let accuracy = report["test_accuracy"].as_f64().unwrap();
    assert!(accuracy >= 0.9, "iris: {accuracy}");
    let text = train(&["--epochs", "2"]);
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(stdout.contains("classes: 0 = setosa, 1 = versicolor, 2 = virginica"), "{stdout}");
}

/// `fedmesh job from-flame DIR` prints a Flame example's fedmesh job specs (three for the
/// parallel experiments), without an owner, and what it ignores on stderr; a directory that
/// is not a Flame job is a clear error.
#[test]
fn from_flame_prints_a_flame_examples_job_specs() {
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../testnet/flame-examples");
    let parallel = format!("{examples}/parallel_experiment");
    let output = fedmesh(&["job", "from-flame", &parallel, "--model", "softmax"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let specs: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let specs = specs.as_array().expect("one spec per parallel experiment");
    assert_eq!(specs.len(), 3, "{specs:?}");
    for spec in specs {
        assert!(spec.get("owner").is_none(), "job announce fills the owner in");
        assert_eq!(spec["model"], "softmax");
        assert!(spec["tag"]["roles"].is_array(), "Flame's schema is the TAG: {spec}");
    }
    assert!(stderr.contains("ignored"), "{stderr}");
    let coordinated = format!("{examples}/syncfl_hier_coord_mnist");
    let coordinator = fedmesh_protocol::identity::Identity::from_seed([7; 32]).member_id();
    let output =
        fedmesh(&["job", "from-flame", &coordinated, "--coordinator", &coordinator.to_string()]);
    let spec: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(spec["coordinator"], coordinator.to_string(), "orchestration mode: {spec}");
    let wrong = fedmesh(&["job", "from-flame", &coordinated, "--coordinator", "nobody"]);
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(!wrong.status.success() && stderr.contains("--coordinator nobody"), "{stderr}");
    let missing = fedmesh(&["job", "from-flame", "/nonexistent/flame-job"]);
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success());
    assert!(stderr.contains("cannot read the Flame job in /nonexistent/flame-job"), "{stderr}");
}
