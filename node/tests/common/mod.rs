//! Helpers of the multi-node tests: a federation of real `fedmesh` processes that trust node0 and
//! each hold their own share of mnist5k (disjoint rows, of different sizes, so a wrong weighting
//! or a wrong group's data shows), announcing a job, and waiting for it.
#![allow(dead_code)] // each test crate uses its own subset

use fedmesh_admin_api::{RunView, metric_value};
use fedmesh_node::misbehaviour::Misbehaviour;
use fedmesh_protocol::strategy::StrategySpec;
use fedmesh_testnet::cluster::{Cluster, NodeSettings, NodeSpec};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

pub const BINARY: &str = env!("CARGO_BIN_EXE_fedmesh");

/// Into how many shares mnist5k is cut: one per node, for the most nodes a test starts (six,
/// and a late joiner) and one to spare.
pub const SHARES: usize = 8;
/// Share `k` holds `k + SHARE_BASE` parts of the rows: from 333 rows (node0) to 916 (node7), so
/// no two nodes declare the same number of samples.
const SHARE_BASE: usize = 4;
const SHARE_SEED: u64 = 7;

/// The CSV file of node `node`'s own share of mnist5k (see [`SHARES`]), written once per test
/// process under cargo's scratch directory for tests.
pub fn data_share(node: usize) -> String {
    assert!(node < SHARES, "node{node}: mnist5k is cut into only {SHARES} shares");
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    let dir = DIR.get_or_init(write_shares);
    dir.join(format!("node{node}.csv")).to_string_lossy().into_owned()
}

/// The directory of the shares (see [`SHARES`]): written once, kept under cargo's scratch
/// directory for tests and reused by later runs.
fn write_shares() -> std::path::PathBuf {
    let scratch = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = scratch.join(format!("mnist5k-shares-{SHARES}-{SHARE_BASE}-{SHARE_SEED}"));
    if dir.join(format!("node{}.csv", SHARES - 1)).exists() {
        return dir;
    }
    // Written aside and renamed, so a test process running beside this one never reads half.
    let fresh = tempfile::Builder::new().prefix("mnist5k-shares").tempdir_in(scratch).unwrap();
    cut_shares(fresh.path());
    if std::fs::rename(fresh.path(), &dir).is_ok() {
        let _ = fresh.keep();
    }
    dir
}

/// Shuffles mnist5k's rows and cuts them into [`SHARES`] disjoint shares, share `k` of
/// `k + SHARE_BASE` parts; writes each as a CSV file in `dir`.
fn cut_shares(dir: &std::path::Path) {
    use fedmesh_learning::{DataSource, formats::write_csv};
    use rand::{SeedableRng, seq::SliceRandom};
    let data = DataSource::parse("mnist5k", None).unwrap().load(None).unwrap();
    let mut rows: Vec<usize> = (0..data.len()).collect();
    rows.shuffle(&mut rand::rngs::StdRng::seed_from_u64(SHARE_SEED));
    let parts: Vec<usize> = (0..SHARES).map(|k| k + SHARE_BASE).collect();
    let unit = rows.len() / parts.iter().sum::<usize>();
    let mut rest = rows.as_slice();
    for (k, part) in parts.iter().enumerate() {
        let (share, after) = rest.split_at(if k + 1 == SHARES { rest.len() } else { part * unit });
        write_csv(&data.select(share), &dir.join(format!("node{k}.csv"))).unwrap();
        rest = after;
    }
}

/// Starts `n` nodes that all trust node0, each with its own share of mnist5k; `extra(i)` sets
/// node i's settings beyond those.
pub async fn federation(
    root: &std::path::Path,
    n: usize,
    extra: impl Fn(usize) -> NodeSettings,
) -> Cluster {
    let first = |owner: &str| member_spec(0, owner, extra(0));
    cluster_under_owner(root, first, 1..n, &extra).await
}

/// Starts node0 as `first(owner)` under a new owner key, then the `members` nodes, which trust
/// that key and hold their own share of mnist5k (node i with the settings `extra(i)`).
pub async fn cluster_under_owner(
    root: &std::path::Path,
    first: impl FnOnce(&str) -> NodeSpec,
    members: impl Iterator<Item = usize>,
    extra: impl Fn(usize) -> NodeSettings,
) -> Cluster {
    let mut cluster = Cluster::new(BINARY.as_ref(), root);
    let owner_key = root.join("owner.key");
    let owner = cluster.keygen(&owner_key).unwrap();
    cluster.start_node_with_key(&first(&owner), &owner_key).await.unwrap();
    for i in members {
        cluster.start_node(&member_spec(i, &owner, extra(i))).await.unwrap();
    }
    cluster
}

/// Node `node`, which trusts `owner` and holds share `node` of mnist5k as its `mnist5k`.
pub fn member_spec(node: usize, owner: &str, settings: NodeSettings) -> NodeSpec {
    NodeSpec {
        datasets: vec![("mnist5k".into(), data_share(node))],
        trust: vec![owner.to_owned()],
        settings,
    }
}

/// No settings beyond the tests' own, for every node.
pub fn plain(_node: usize) -> NodeSettings {
    NodeSettings::default()
}

/// Epochs of local training a round: a node's share is a few hundred samples, so one pass is
/// too few steps for softmax to learn much in the tests' three rounds; four passes over a share
/// cost less than the one pass over all of mnist5k each node made before the data was shared out.
pub const LOCAL_EPOCHS: u32 = 4;

/// A softmax job on mnist5k.
pub struct Job {
    pub rounds: u64,
    pub min_participants: usize,
    pub deadline_secs: u64,
    pub strategy: StrategySpec,
    pub quorum: Value,
    /// The TAG: a built-in's name or a Flame schema.
    pub tag: Value,
    /// `f32`, `f16` or `int8`.
    pub delta_encoding: &'static str,
    /// The model: `softmax`, or another model spec.
    pub model: Value,
    /// The keys (PeerIds) allowed to join; empty for an open job.
    pub allow: Vec<String>,
    /// Passes over a node's share each round.
    pub local_epochs: u32,
}

impl Job {
    pub fn new(rounds: u64, min_participants: usize) -> Self {
        Self {
            rounds,
            min_participants,
            deadline_secs: 20,
            strategy: StrategySpec::default(),
            quorum: json!({"fraction": 1.0}),
            tag: json!("central"),
            delta_encoding: "f32",
            model: json!("softmax"),
            allow: Vec::new(),
            local_epochs: LOCAL_EPOCHS,
        }
    }

    /// Announces the job on node0; returns its id.
    pub async fn announce(&self, cluster: &Cluster) -> String {
        let spec = json!({
            "name": format!("rounds-test-{:?}", self.strategy.rule),
            "strategy": self.strategy,
            "tag": self.tag,
            "delta_encoding": self.delta_encoding,
            "owner": cluster.nodes[0].peer_id,
            "model": self.model,
            "dataset": "mnist5k",
            "hyperparameters": {"rounds": self.rounds, "local_epochs": self.local_epochs, "lr": 0.1},
            "participation": {"min_participants": self.min_participants, "allow": self.allow},
            "quorum": self.quorum,
            "round_deadline_secs": self.deadline_secs,
        });
        let spec = serde_json::to_vec(&spec).unwrap();
        cluster.nodes[0].api.announce(spec).await.unwrap().id
    }
}

/// A node's view of its part in the job (none if it has none or does not answer).
pub async fn run_view(cluster: &Cluster, node: usize, job: &str) -> Option<RunView> {
    cluster.nodes[node].api.job(job).await.ok().and_then(|view| view.run)
}

/// Waits until every node reports the job completed; returns each node's run view.
pub async fn wait_completed(cluster: &Cluster, job: &str, limit: Duration) -> Vec<RunView> {
    let all: Vec<usize> = (0..cluster.nodes.len()).collect();
    wait_completed_on(cluster, &all, job, limit).await
}

/// Waits until the listed nodes report the job completed; returns their run views.
pub async fn wait_completed_on(
    cluster: &Cluster,
    nodes: &[usize],
    job: &str,
    limit: Duration,
) -> Vec<RunView> {
    let deadline = Instant::now() + limit;
    loop {
        let mut runs = Vec::new();
        for &node in nodes {
            runs.push(run_view(cluster, node, job).await);
        }
        if runs.iter().all(|run| run.as_ref().is_some_and(|run| run.status == "completed")) {
            return runs.into_iter().flatten().collect();
        }
        if Instant::now() > deadline {
            panic!("job not completed within {limit:?}: {runs:#?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The weighted accuracy of a run's `round`-th round (0-based), 0 if missing.
pub fn accuracy(run: &RunView, round: usize) -> f64 {
    run.rounds.get(round).and_then(|r| r.accuracy).unwrap_or(0.0)
}

/// Settings that make node `culprit` misbehave as `kind` (see the `misbehave` setting).
pub fn misbehaving(culprit: usize, kind: Misbehaviour) -> impl Fn(usize) -> NodeSettings {
    move |i| NodeSettings {
        misbehave: if i == culprit { vec![kind] } else { Vec::new() },
        ..NodeSettings::default()
    }
}

/// Asserts that every run ended with the same global model.
pub fn assert_same_model(runs: &[RunView]) {
    let models: Vec<&str> = runs.iter().map(|run| run.model.as_str()).collect();
    assert!(models.iter().all(|m| *m == models[0]), "final models differ: {models:?}");
}

/// How many messages of `kind` the listed nodes refused for `reason`, summed.
pub async fn refusals(cluster: &Cluster, nodes: &[usize], kind: &str, reason: &str) -> f64 {
    let sample = format!("fedmesh_messages_rejected_total{{kind=\"{kind}\",reason=\"{reason}\"}}");
    metric_sum(cluster, nodes, &sample).await
}

/// The value of the metric `sample` (name and labels) summed over the listed nodes.
pub async fn metric_sum(cluster: &Cluster, nodes: &[usize], sample: &str) -> f64 {
    let mut total = 0.0;
    for &node in nodes {
        let metrics = cluster.nodes[node].api.metrics().await.unwrap();
        total += metric_value(&metrics, sample);
    }
    total
}

/// Runs a `fedmesh` CLI command against the node whose data directory is `data_dir`, and
/// asserts it succeeded.
pub fn cli(data_dir: &std::path::Path, args: &[&str]) {
    let output = std::process::Command::new(BINARY)
        .args(args)
        .env("FEDMESH_DATA_DIR", data_dir)
        .output()
        .unwrap();
    assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
}

/// Polls node `observer` until it has a run view and `ready` holds for it (at most a minute).
pub async fn wait_for(
    cluster: &Cluster,
    observer: usize,
    job: &str,
    what: &str,
    ready: impl Fn(&RunView) -> bool,
) -> RunView {
    let ready = |run: &Option<RunView>| run.as_ref().is_some_and(&ready);
    poll_until(what, || run_view(cluster, observer, job), ready).await.unwrap()
}

/// Fetches a view again and again until `ready` holds for it (at most a minute; the test fails
/// with `what` and the last view after that).
pub async fn poll_until<T: std::fmt::Debug, F: std::future::Future<Output = T>>(
    what: &str,
    mut fetch: impl FnMut() -> F,
    ready: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let view = fetch().await;
        if ready(&view) {
            return view;
        }
        assert!(Instant::now() < deadline, "{what}: {view:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How many updates each recorded round's model includes.
pub fn participants(run: &RunView) -> Vec<usize> {
    run.rounds.iter().map(|r| r.participants).collect()
}

/// Every round 1..=n recorded once, each with a model, by the member that took part longest;
/// and no member records a round twice or out of order, and each ends at round n. (A member that
/// joined late, as under load after the first rounds closed, or caught up by taking the newest
/// model, has no record of the rounds it skipped.)
pub fn assert_rounds_once(runs: &[RunView], n: u64) {
    let Some(fullest) = runs.iter().max_by_key(|run| run.rounds.len()) else { return };
    assert_every_round_once(fullest, n);
    for run in runs {
        let numbers: Vec<u64> = run.rounds.iter().map(|r| r.round).collect();
        assert!(numbers.windows(2).all(|pair| pair[0] < pair[1]), "{run:#?}");
        assert_eq!(numbers.last(), Some(&n), "{run:#?}");
    }
}

/// Every round 1..=n recorded once, each with a model.
pub fn assert_every_round_once(run: &RunView, n: u64) {
    let numbers: Vec<u64> = run.rounds.iter().map(|r| r.round).collect();
    assert_eq!(numbers, (1..=n).collect::<Vec<_>>(), "{run:#?}");
    assert!(run.rounds.iter().all(|r| r.model.is_some()), "{run:#?}");
}

/// How many updates of `kind` (`delta`, `partial`, `ring_chunk`) for `job` the listed nodes
/// accepted, summed.
pub async fn accepted(cluster: &Cluster, nodes: &[usize], job: &str, kind: &str) -> f64 {
    let sample = format!("fedmesh_job_updates_accepted_total{{job=\"{job}\",kind=\"{kind}\"}}");
    metric_sum(cluster, nodes, &sample).await
}

/// Asserts that the run's members each declared a different number of samples: each trained
/// on its own share of the data, not on a copy of the same set.
pub fn assert_own_shares(run: &RunView) {
    let members = &run.members;
    let mut samples: Vec<u64> = members.iter().map(|m| m.samples).collect();
    let declared = samples.len();
    samples.sort_unstable();
    samples.dedup();
    assert!(declared > 1 && samples.len() == declared, "shares: {samples:?} of {members:#?}");
}
