//! What an operator sees of real nodes: a job announced from a spec without `owner` gets the
//! node's PeerId; `fedmesh status` shows peers, jobs and the start-up warnings (an empty trust
//! list, a missing data set file); the metrics address answers without a token in the
//! OpenMetrics format, which a Prometheus parser reads, with the job's round metrics.

mod common;

use common::{BINARY, federation, plain, wait_completed};
use fedmesh_admin_api::{Endpoint, JobView, metric_value};
use fedmesh_testnet::cluster::NodeSpec;
use serde_json::json;
use std::process::Command;
use std::time::Duration;

/// Runs `fedmesh ARGS` against the node whose data directory is `data_dir`; its stdout.
fn fedmesh(data_dir: &std::path::Path, args: &[&str]) -> String {
    let output = Command::new(BINARY).args(args).arg("--data-dir").arg(data_dir).output().unwrap();
    assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_announced_job_is_owned_by_the_node_and_seen_in_status_and_metrics() {
    let root = tempfile::tempdir().unwrap();
    let mut cluster = federation(root.path(), 3, plain).await;
    let spec = json!({
        "name": "operator-view",
        "model": "softmax",
        "dataset": "mnist5k",
        "hyperparameters": {"rounds": 3, "local_epochs": 1, "lr": 0.1},
        "participation": {"min_participants": 3},
        "round_deadline_secs": 20,
    });
    let spec_file = root.path().join("job.json");
    std::fs::write(&spec_file, spec.to_string()).unwrap();
    let node0 = cluster.nodes[0].data_dir();
    let job = fedmesh(&node0, &["job", "announce", spec_file.to_str().unwrap()]).trim().to_owned();
    let runs = wait_completed(&cluster, &job, Duration::from_secs(90)).await;
    assert_eq!(runs.len(), 3);
    let shown: JobView = serde_json::from_str(&fedmesh(&node0, &["job", "show", &job])).unwrap();
    assert_eq!(shown.owner, cluster.nodes[0].peer_id);
    // A job no node can run is refused when it is announced, with the reason.
    let unrunnable = json!({
        "name": "clipped-ring", "model": "softmax", "dataset": "mnist5k", "tag": "ring",
        "strategy": {"rule": "fedavg", "clip_norm": 1.0},
    });
    let unrunnable_file = root.path().join("ring.json");
    std::fs::write(&unrunnable_file, unrunnable.to_string()).unwrap();
    let refused = Command::new(BINARY)
        .args(["job", "announce", unrunnable_file.to_str().unwrap(), "--data-dir"])
        .arg(&node0)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "announced: {stderr}");
    assert!(stderr.contains("without clip_norm"), "{stderr}");

    let status = fedmesh(&cluster.nodes[2].data_dir(), &["status"]);
    assert!(status.contains(&cluster.nodes[2].peer_id), "{status}");
    assert!(status.contains("peers: 2"), "{status}");
    assert!(status.contains("operator-view  completed, 3 members"), "{status}");
    // A node that trusts no one and names a data set file that is not there says so.
    let missing = root.path().join("missing.csv").display().to_string();
    let careless = NodeSpec { datasets: vec![("lost".into(), missing)], ..NodeSpec::default() };
    cluster.start_node(&careless).await.unwrap();
    let status = fedmesh(&cluster.nodes[3].data_dir(), &["status"]);
    assert!(status.contains("`trust` is empty"), "{status}");
    assert!(status.contains("missing.csv does not exist"), "{status}");
    // It trusts no job owner, so it keeps no announcement.
    assert!(status.contains("jobs: 0"), "{status}");

    let endpoint = Endpoint::read(&node0).unwrap();
    let address = endpoint.metrics.expect("the endpoint file names the metrics address");
    let response = reqwest::get(format!("http://{address}/metrics")).await.unwrap();
    assert!(response.status().is_success());
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
    let text = response.text().await.unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .unwrap_or_else(|e| panic!("not parseable: {e}\n{text}"));
    let of_job = |name: &str| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && s.labels.get("job") == Some(job.as_str()))
    };
    let value = |name: &str| match of_job(name).map(|s| &s.value) {
        Some(prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v)) => *v,
        Some(prometheus_parse::Value::Untyped(v)) => *v,
        other => panic!("{name} for job {job}: {other:?}\n{text}"),
    };
    assert_eq!(value("fedmesh_job_rounds_completed_total"), 3.0, "{text}");
    assert_eq!(value("fedmesh_job_members"), 3.0, "{text}");
    let accuracy = value("fedmesh_job_accuracy");
    assert!(accuracy > 0.6 && accuracy <= 1.0, "{text}");
    assert!(value("fedmesh_job_loss") > 0.0, "{text}");
    match of_job("fedmesh_job_round_seconds").map(|s| &s.value) {
        Some(prometheus_parse::Value::Histogram(buckets)) => {
            let all = buckets.iter().map(|b| b.count).fold(0.0, f64::max);
            assert_eq!(all, 3.0, "three rounds observed: {text}");
        }
        other => panic!("no round-seconds histogram: {other:?}\n{text}"),
    }
    // Every trainer's update reached its aggregator: accepted ones are counted per job (each
    // round's aggregator folds its own update in without a request, so 2 of 3 are counted).
    let mut accepted = 0.0;
    for node in &cluster.nodes {
        let text = node.api.metrics().await.unwrap();
        let sample = format!("fedmesh_job_updates_accepted_total{{job=\"{job}\",kind=\"delta\"}}");
        accepted += metric_value(&text, &sample);
    }
    assert!(accepted >= 6.0, "3 rounds of 2 updates sent, {accepted} counted");
}
