//! External trainers on real nodes: a job whose initial weights are shipped as safetensors by
//! hash trains with the NumPy example on two nodes while four others run broken trainers (one
//! exits non-zero, one outlives its timeout, one writes the wrong shapes, one writes garbage);
//! each broken node skips its rounds, shows the trainer's stderr tail in its run view and log, and
//! stays up; the model registry lists every round, and a round's model exports with the accuracy
//! the registry claims when Python scores it on the working members' own test splits. Needs python3 with numpy and safetensors.

mod common;

use common::{cli, federation, run_view, wait_completed_on};
use fedmesh_admin_api::ModelEntry;
use fedmesh_testnet::cluster::{Cluster, NodeSettings};
use serde_json::json;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const WRONG_SHAPES: &str = "import os, json, numpy as np\n\
from safetensors.numpy import save_file\n\
save_file({'fc1.weight': np.zeros((2, 2), np.float32)}, os.environ['FEDMESH_OUTPUT_WEIGHTS'])\n\
json.dump({'samples': 10, 'loss': 1.0}, open(os.environ['FEDMESH_METRICS'], 'w'))\n\
print('wrote a 2x2 fc1.weight', file=__import__('sys').stderr)";

/// Node i's trainer: 0 and 1 the NumPy example, then the broken ones.
fn trainer(i: usize) -> NodeSettings {
    let numpy = Path::new(
        &std::env::var("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR"),
    )
    .join("../examples/numpy-trainer/train.py");
    let command = |words: &[&str]| words.iter().map(|w| w.to_string()).collect();
    let (trainer, trainer_timeout_secs) = match i {
        0 | 1 => (command(&["python3", &numpy.display().to_string()]), None),
        2 => (command(&["sh", "-c", "echo the trainer broke on purpose >&2; exit 3"]), None),
        3 => (command(&["sh", "-c", "echo sleeping >&2; exec sleep 30"]), Some(1)),
        4 => (command(&["python3", "-c", WRONG_SHAPES]), None),
        _ => (
            command(&[
                "sh",
                "-c",
                "echo garbage > \"$FEDMESH_OUTPUT_WEIGHTS\"; echo '{\"samples\": 5, \"loss\": 1}' > \"$FEDMESH_METRICS\"",
            ]),
            None,
        ),
    };
    NodeSettings {
        trainer,
        trainer_timeout_secs,
        model_retention_rounds: Some(2),
        ..NodeSettings::default()
    }
}

/// Random initial weights of the 784-32-10 MLP, written with the `safetensors` package.
fn write_initial_weights(path: &Path) {
    let script = "import sys, numpy as np\nfrom safetensors.numpy import save_file\n\
        r = np.random.default_rng(0)\n\
        save_file({'fc1.weight': (r.standard_normal((32, 784)) * 0.05).astype(np.float32),\n\
        'fc1.bias': np.zeros(32, np.float32),\n\
        'fc2.weight': (r.standard_normal((10, 32)) * 0.2).astype(np.float32),\n\
        'fc2.bias': np.zeros(10, np.float32)}, sys.argv[1])";
    let status = Command::new("python3").args(["-c", script]).arg(path).status().unwrap();
    assert!(
        status.success(),
        "this test needs python3 with numpy and safetensors (.ci/run installs them)"
    );
}

fn output(data_dir: &Path, args: &[&str]) -> String {
    let output =
        Command::new(common::BINARY).args(args).env("FEDMESH_DATA_DIR", data_dir).output().unwrap();
    assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

const SCORE: &str = "import sys, numpy as np\nfrom safetensors.numpy import load_file\n\
w = load_file(sys.argv[1])\n\
x, y = np.load(sys.argv[2] + '/test_x.npy'), np.load(sys.argv[2] + '/test_y.npy')\n\
h = np.maximum(x @ w['fc1.weight'].T + w['fc1.bias'], 0)\n\
print(((h @ w['fc2.weight'].T + w['fc2.bias']).argmax(axis=1) == y).sum(), len(y))";

/// How many of node `node`'s test samples the model in `model` gets right, and of how many,
/// as Python scores it.
fn python_score(cluster: &Cluster, node: usize, job: &str, model: &Path) -> (f64, f64) {
    let splits = cluster.nodes[node].data_dir().join(format!("trainers/{job}/data"));
    let scored = Command::new("python3")
        .args(["-c", SCORE, model.to_str().unwrap(), splits.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(scored.status.success(), "{}", String::from_utf8_lossy(&scored.stderr));
    let text = String::from_utf8_lossy(&scored.stdout).into_owned();
    let numbers: Vec<f64> = text.split_whitespace().map(|n| n.parse().unwrap()).collect();
    (numbers[0], numbers[1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_trainers_skip_their_rounds_and_the_federation_goes_on() {
    let root = tempfile::tempdir().unwrap();
    let cluster = federation(root.path(), 6, trainer).await;
    let weights = root.path().join("init.safetensors");
    write_initial_weights(&weights);
    let tensors = json!([
        {"name": "fc1.weight", "shape": [32, 784]}, {"name": "fc1.bias", "shape": [32]},
        {"name": "fc2.weight", "shape": [10, 32]}, {"name": "fc2.bias", "shape": [10]},
    ]);
    let spec = json!({
        "name": "external", "owner": cluster.nodes[0].peer_id, "dataset": "mnist5k",
        "model": {"external": {"tensors": tensors, "init": {"seed": 0}}},
        "hyperparameters": {"rounds": 3, "local_epochs": 1, "lr": 0.1},
        "participation": {"min_participants": 6}, "quorum": {"count": 2},
        "round_deadline_secs": 4,
    });
    let spec_path = root.path().join("job.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let node0 = cluster.nodes[0].data_dir();
    let args =
        ["job", "announce", spec_path.to_str().unwrap(), "--init", weights.to_str().unwrap()];
    let job = output(&node0, &args).trim().to_owned();

    let runs = wait_completed_on(&cluster, &[0, 1], &job, Duration::from_secs(90)).await;
    for run in &runs {
        assert_eq!(run.rounds.len(), 3, "{run:#?}");
        assert!(run.rounds.iter().all(|r| r.participants == 2), "{run:#?}");
        assert!(run.trainer_error.is_none(), "{run:#?}");
    }
    let expected = [
        (2, "exited with code 3"),
        (2, "the trainer broke on purpose"),
        (3, "did not finish within 1 s"),
        (3, "sleeping"),
        (4, "has shape [2, 2], the layout needs [32, 784]"),
        (4, "wrote a 2x2 fc1.weight"),
        (5, "not a safetensors file"),
    ];
    for (node, text) in expected {
        let run = run_view(&cluster, node, &job).await;
        let error = run.as_ref().and_then(|run| run.trainer_error.as_deref()).unwrap_or_default();
        assert!(error.contains(text), "node{node}: `{text}` not in {run:#?}");
        assert!(cluster.nodes[node].log().contains(text), "node{node}'s log lacks `{text}`");
    }

    // The registry on node1 (which fetched the initial weights from node0 by hash).
    let node1 = cluster.nodes[1].data_dir();
    let listing: Vec<ModelEntry> =
        serde_json::from_str(&output(&node1, &["model", "list", "--json", "--job", &job])).unwrap();
    let kept: Vec<bool> = listing.iter().map(|e| e.weights_kept).collect();
    assert_eq!(kept, [false, true, true], "{listing:#?}");
    let table = output(&node1, &["model", "list"]);
    assert!(table.contains("dropped (retention)"), "{table}");
    let last = &listing[2];
    let exported = root.path().join("round3.safetensors");
    cli(
        &node1,
        &["model", "export", "--job", &job, "--round", "3", "--out", exported.to_str().unwrap()],
    );
    // The registry's accuracy is over the evaluations of the two working members (the broken
    // ones evaluate nothing), each on its own share's test split, weighted by its size.
    let scores = [0, 1].map(|node| python_score(&cluster, node, &job, &exported));
    let (right, total) = (scores[0].0 + scores[1].0, scores[0].1 + scores[1].1);
    assert_eq!(last.eval_samples as f64, total, "{last:#?}");
    let python = right / total;
    let claimed = last.accuracy.unwrap();
    assert!((python - claimed).abs() < 1e-3, "python {python} vs registry {claimed}");
    let status = Command::new(common::BINARY)
        .args(["model", "export", "--job", &job, "--round", "1", "--out", "/dev/null"])
        .env("FEDMESH_DATA_DIR", &node1)
        .output()
        .unwrap();
    assert!(!status.status.success());
    assert!(String::from_utf8_lossy(&status.stderr).contains("no longer kept"));
}
