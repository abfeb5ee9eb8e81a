//! Flame's nine example directories, unchanged (`testnet/flame-examples`), run with `testnet
//! --flame DIR --rounds 3 --model softmax`: each becomes one fedmesh job (parallel_experiment
//! three), one node per data set id of its dataSpec in that data set's group, and completes. The
//! two asyncfl examples (Flame's fedbuff) run as asynchronous jobs, and syncfl_hier_coord_mnist's
//! coordinator role as a coordinator node orchestrating its job.

mod common;

use fedmesh_testnet::report::Report;
use std::path::Path;
use std::process::Command;

fn reports_under(dir: &Path) -> Vec<Report> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(reports_under(&path));
        } else if path.file_name().is_some_and(|name| name == "report.json") {
            found.push(serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap());
        }
    }
    found
}

#[test]
fn every_flame_example_runs_unchanged() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("flame-examples");
    let mut names: Vec<String> = std::fs::read_dir(&examples)
        .unwrap()
        .flatten()
        .filter(|entry| entry.path().is_dir())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 9, "{names:?}");
    for name in &names {
        let out = tempfile::tempdir().unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_testnet"))
            .arg("--binary")
            .arg(common::fedmesh_binary())
            .arg("--flame")
            .arg(examples.join(name))
            .args(["--rounds", "3", "--model", "softmax", "--out"])
            .arg(out.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{name}: {stdout}\n{stderr}");
        let reports = reports_under(out.path());
        let jobs = if name == "parallel_experiment" { 3 } else { 1 };
        assert_eq!(reports.len(), jobs, "{name}");
        for report in &reports {
            assert!(report.passed && report.rounds.len() == 3, "{name}: {:?}", report.checks);
            assert!(report.job_spec["tag"].is_object(), "{name}: Flame's schema is the TAG");
            // Flame's fedbuff examples are asynchronous FL: versions from aggGoal updates.
            let asynchronous = name.starts_with("asyncfl");
            assert_eq!(
                report.job_spec["mode"] == "async",
                asynchronous,
                "{name}: {}",
                report.job_spec
            );
            assert_eq!(report.unit, if asynchronous { "version" } else { "round" }, "{name}");
            // A schema's coordinator role is a coordinator node orchestrating the job.
            let coordinated = name == "syncfl_hier_coord_mnist";
            assert_eq!(report.job_spec["coordinator"].is_string(), coordinated, "{name}");
        }
    }
}
