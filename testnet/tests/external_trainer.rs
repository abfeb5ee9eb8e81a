//! The NumPy example trainer on a 4-node testnet: the same MLP, data and hyperparameters as the
//! built-in learner reach its accuracy within 2 points; node0's exported final model loads in
//! Python with the `safetensors` package and scores, on the four nodes' test splits, the accuracy
//! the report claims. Needs python3 with numpy and safetensors (`.ci/run` installs them).

use fedmesh_testnet::report::Report;
use fedmesh_testnet::scenario::Scenario;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn fedmesh_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(|deps| deps.parent()).unwrap().join("fedmesh")
}

fn repository() -> PathBuf {
    Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn require_python_packages() {
    let found = Command::new("python3").args(["-c", "import numpy, safetensors"]).status();
    assert!(
        found.is_ok_and(|status| status.success()),
        "this test needs python3 with numpy and safetensors: `python3 -m pip install numpy \
         safetensors` (.ci/run installs them)"
    );
}

fn scenario(out: &Path, trainer: Vec<String>) -> Scenario {
    Scenario {
        nodes: 4,
        total_nodes: 4,
        rounds: 4,
        model: "mlp:200,200".into(),
        lr: 0.1,
        seed: 5,
        min_participants: 4,
        trainer,
        ..Scenario::new(fedmesh_binary(), out.to_owned())
    }
}

fn run(scenario: &Scenario) -> (Report, Vec<String>) {
    let partitions = scenario.write_partitions().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut lines = Vec::new();
    let report = runtime.block_on(scenario.run(partitions, |r| lines.push(r.line(4)))).unwrap();
    assert_eq!(report.status, "completed", "{lines:#?}");
    assert!(report.rounds.iter().all(|r| r.participants == 4), "{lines:#?}");
    (report, lines)
}

/// Runs `fedmesh ARGS` against a node's data directory; returns stdout.
fn cli(data_dir: &Path, args: &[&str]) -> String {
    let output = Command::new(fedmesh_binary())
        .args(args)
        .env("FEDMESH_DATA_DIR", data_dir)
        .output()
        .unwrap();
    assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Starts node0 again from its folder (it resumes the completed job from its store) and waits for
/// its admin API.
fn restart_node0(out: &Path) -> std::process::Child {
    let dir = out.join("nodes/node0");
    let _ = std::fs::remove_file(dir.join("data/admin.json"));
    let log = std::fs::File::create(dir.join("node-restarted.log")).unwrap();
    let child = Command::new(fedmesh_binary())
        .args(["node", "--config"])
        .arg(dir.join("node.toml"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !dir.join("data/admin.json").exists() {
        assert!(started.elapsed() < Duration::from_secs(60), "node0 did not come back");
        std::thread::sleep(Duration::from_millis(100));
    }
    child
}

const EVALUATE: &str = r#"
import sys, numpy as np
from safetensors.numpy import load_file
weights = load_file(sys.argv[1])
layers = sorted({k.split(".")[0] for k in weights}, key=lambda n: int(n[2:]))
correct = total = 0
for folder in sys.argv[2:]:
    x, y = np.load(folder + "/test_x.npy"), np.load(folder + "/test_y.npy")
    for i, name in enumerate(layers):
        x = x @ weights[name + ".weight"].T + weights[name + ".bias"]
        x = np.maximum(x, 0) if i + 1 < len(layers) else x
    correct += int((x.argmax(axis=1) == y).sum())
    total += len(y)
print(correct / total)
"#;

#[test]
fn the_numpy_trainer_reaches_the_builtin_accuracy_and_its_export_loads_in_python() {
    require_python_packages();
    let out = tempfile::tempdir().unwrap();
    let builtin = out.path().join("builtin");
    let (builtin_report, builtin_lines) = run(&scenario(&builtin, Vec::new()));
    let numpy = out.path().join("numpy");
    let script = repository().join("examples/numpy-trainer/train.py");
    let trainer = vec!["python3".to_owned(), script.display().to_string()];
    let (numpy_report, numpy_lines) = run(&scenario(&numpy, trainer));
    let (a, b) = (builtin_report.final_accuracy.unwrap(), numpy_report.final_accuracy.unwrap());
    eprintln!("built-in {a:.4}, numpy {b:.4}\n{builtin_lines:#?}\n{numpy_lines:#?}");
    assert!(a > 0.85, "the built-in MLP learned too little: {builtin_lines:#?}");
    assert!((a - b).abs() <= 0.02, "built-in {a:.4} vs numpy {b:.4}");

    let mut node0 = restart_node0(&numpy);
    let data_dir = numpy.join("nodes/node0/data");
    let listing = cli(&data_dir, &["model", "list", "--json"]);
    let entries: Vec<fedmesh_admin_api::ModelEntry> = serde_json::from_str(&listing).unwrap();
    assert_eq!(entries.len(), 4, "{listing}");
    let job = entries[0].job.to_string();
    let exported = out.path().join("final.safetensors");
    cli(&data_dir, &["model", "export", "--job", &job[..12], "--out", exported.to_str().unwrap()]);
    let npy = out.path().join("npy");
    cli(
        &data_dir,
        &[
            "model",
            "export",
            "--job",
            &job,
            "--round",
            "2",
            "--format",
            "npy",
            "--out",
            npy.to_str().unwrap(),
        ],
    );
    let _ = node0.kill();
    let _ = node0.wait();
    assert!(npy.join("fc1.weight.npy").is_file() && npy.join("fc2.bias.npy").is_file());

    let splits: Vec<String> = (0..4)
        .map(|node| {
            numpy.join(format!("nodes/node{node}/data/trainers/{job}/data")).display().to_string()
        })
        .collect();
    let output = Command::new("python3")
        .args(["-c", EVALUATE, exported.to_str().unwrap()])
        .args(&splits)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let python: f64 = String::from_utf8_lossy(&output.stdout).trim().parse().unwrap();
    assert!((python - b).abs() < 1e-3, "python scores the export {python}, the report says {b}");
}
