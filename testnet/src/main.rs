//! `testnet`: runs a federated job on N real `fedmesh` nodes on this machine, or one scenario
//! file after another, and reports on each.

use anyhow::Context;
use clap::Parser;
use fedmesh_testnet::bench::{self, BenchCase, BenchRow};
use fedmesh_testnet::cluster::Transport;
use fedmesh_testnet::netns::{NatKind, Placement};
use fedmesh_testnet::repeats;
use fedmesh_testnet::report::Report;
use fedmesh_testnet::scenario::Scenario;
use fedmesh_testnet::scenario_file::ScenarioFile;
use serde_json::json;
use std::path::{Path, PathBuf};

/// The flags a scenario file sets instead.
const JOB_FLAGS: [&str; 15] = [
    "nodes",
    "rounds",
    "topology",
    "groups",
    "delta_encoding",
    "dataset",
    "label_column",
    "model",
    "partition",
    "local_epochs",
    "batch_size",
    "lr",
    "seed",
    "round_deadline_secs",
    "secure_aggregation",
];

/// Runs one federated job on N `fedmesh` nodes on 127.0.0.1: partitions the data set among them,
/// starts them, announces the job, prints a line per round, stops them, and writes report.json
/// and report.png into --out. With --scenario, runs each scenario file's job with its events
/// instead (into --out/NAME, with summary.json over all of them). Exits non-zero when a job does
/// not complete or a check fails.
#[derive(Debug, Parser)]
#[command(name = "testnet", version)]
struct Args {
    /// A scenario file (TOML: the job's settings, its events by round, its target accuracy);
    /// repeat it to run several one after another. See testnet/scenarios/. Its `attack`
    /// events start the hostile peer `fedmesh-hostile` (built beside `testnet`) against the
    /// nodes, and its `refused` reasons must each be counted in some node's metrics by the end
    /// (testnet/scenarios/attack-*.toml; `fedmesh-hostile --help` lists the attacks).
    #[arg(long, value_name = "FILE", conflicts_with_all = JOB_FLAGS)]
    scenario: Vec<PathBuf>,
    /// The communication benchmark: for every --bench-params and --bench-nodes, a job whose
    /// model is P f32 parameters with no training (a cheap deterministic delta), over real
    /// nodes; prints seconds per round, bytes moved, the ratio to a raw loopback TCP transfer of
    /// the same bytes (the fastest of five), and the nodes' peak memory (into --out/bench.json).
    #[arg(long, conflicts_with = "scenario")]
    bench: bool,
    /// Model sizes (parameters) the benchmark runs, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000000,10000000,25000000")]
    bench_params: Vec<u64>,
    /// Node counts the benchmark runs, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "4,8")]
    bench_nodes: Vec<usize>,
    /// Rounds of each benchmark case.
    #[arg(long, default_value_t = 5)]
    bench_rounds: u64,
    /// How many nodes to run.
    #[arg(long, default_value_t = ScenarioFile::default().nodes)]
    nodes: usize,
    /// Federated rounds (default 10; with --flame, the Flame job's own).
    #[arg(long)]
    rounds: Option<u64>,
    /// The job's topology (TAG): central, hierarchical, ring, hybrid, or a Flame-style TAG
    /// schema file (.json; see topologies/tests/fixtures/).
    #[arg(long, default_value_t = ScenarioFile::default().topology)]
    topology: String,
    /// Group labels, comma-separated, handed to the nodes in turn (node i gets label i mod n):
    /// hierarchical and hybrid TAGs aggregate per group; a schema file's labels must match.
    #[arg(long, default_value = "eu,na", value_delimiter = ',')]
    groups: Vec<String>,
    /// How trainers encode their deltas: f32 (exact), f16, int8 (one scale per tensor) or
    /// top_k:FRACTION (that share of the parameters, the largest, with error feedback).
    #[arg(long, default_value_t = ScenarioFile::default().delta_encoding)]
    delta_encoding: String,
    /// An embedded data set (mnist5k, digits, breast-cancer) or a data file (.csv, .npy, IDX).
    #[arg(long, default_value_t = ScenarioFile::default().dataset)]
    dataset: String,
    /// A CSV data set's label column, by header name or 0-based index (default: the last);
    /// labels that are names become classes in sorted order, named in the job spec.
    #[arg(long)]
    label_column: Option<String>,
    /// The model: softmax or mlp:H1,H2,... (hidden layer sizes).
    #[arg(long, default_value_t = ScenarioFile::default().model)]
    model: String,
    /// How the data is split among nodes: iid, dirichlet:ALPHA (label skew; smaller is more
    /// skewed) or shards:K (K labels per node).
    #[arg(long, default_value_t = ScenarioFile::default().partition)]
    partition: String,
    /// Passes over its local data each node makes per round.
    #[arg(long, default_value_t = ScenarioFile::default().local_epochs)]
    local_epochs: u32,
    #[arg(long, default_value_t = ScenarioFile::default().batch_size)]
    batch_size: u32,
    /// Learning rate of local SGD (0.3 suits FedAvg over 8 IID shares of mnist5k: compare with
    /// `fedmesh train-local --lr 0.3`).
    #[arg(long, default_value_t = ScenarioFile::default().lr)]
    lr: f32,
    /// Seed of the partition, the model's initialization and the local shuffling.
    #[arg(long, default_value_t = ScenarioFile::default().seed)]
    seed: u64,
    /// A round closes at this deadline if its quorum is met (and is retried if not).
    #[arg(long, default_value_t = ScenarioFile::default().round_deadline_secs)]
    round_deadline_secs: u64,
    /// An external trainer command for every node, e.g. "python3 examples/numpy-trainer/train.py"
    /// (split on spaces); the job's model is then `external` with the layout of --model.
    #[arg(long)]
    trainer: Option<String>,
    /// Secure aggregation: each round's aggregator learns only the sum of the trainers'
    /// updates, which they clip to --clip-norm, quantize and mask (the job spec's
    /// `privacy.secure_aggregation`; central or hierarchical topology, FedAvg, models of at
    /// most 100,000 parameters, such as softmax).
    #[arg(long)]
    secure_aggregation: bool,
    /// The norm trainers clip their updates to under --secure-aggregation.
    #[arg(long, default_value_t = 20.0, requires = "secure_aggregation")]
    clip_norm: f32,
    /// The final accuracy the job must reach (the report also gives the time it took).
    #[arg(long)]
    target: Option<f64>,
    /// Runs a Flame example directory (schema.json, job.json, modelSpec.json, dataSpec.json),
    /// unchanged: one node per data set id of its dataSpec, in its group, each with a share of
    /// --dataset; its hyperparameters, optimizer and selector from modelSpec (--rounds and
    /// --model override). A schema of parallel experiments runs each as a job of its own.
    #[arg(long, value_name = "DIR", conflicts_with = "scenario")]
    flame: Option<PathBuf>,
    /// Runs each job N times, over the seeds --seed (or the file's seed), +1, ..., and reports
    /// the mean and standard deviation of its figures.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    repeat: u64,
    /// Testing only: node NODE's local training takes FACTOR times as long, as on a slower
    /// machine (repeatable, e.g. --slow 0:5 --slow 1:5).
    #[arg(long, value_name = "NODE:FACTOR")]
    slow: Vec<SlowNode>,
    /// Run the jobs orchestrated: a coordinator node (not a member) owns each job, selects its
    /// trainers and assigns its aggregators every round.
    #[arg(long)]
    orchestrated: bool,
    /// Run every node in a Linux network namespace of its own, joined to a virtual LAN (a
    /// bridge) with addresses from 100.64.0.0/10, with no loopback between them; the
    /// namespaces are removed when the run ends. Needs root, iproute2 and iptables.
    #[arg(long)]
    netns: bool,
    /// With --netns: every node but node0 (the bootstrap node and relay) behind a NAT router
    /// of its own, whose private LAN is in 198.18.0.0/15: endpoint-independent (hole punching
    /// works), symmetric (it does not: the path stays relayed) or mixed (in turn).
    #[arg(long, value_name = "KIND", requires = "netns", num_args = 0..=1,
          default_missing_value = "mixed")]
    nat: Option<NatKind>,
    /// What the nodes listen on and bootstrap over: TCP (with Noise and yamux) or QUIC
    /// [default: tcp, or a scenario file's `transport`].
    #[arg(long, value_enum)]
    transport: Option<Transport>,
    /// The fedmesh binary (default: `fedmesh` next to this program).
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Where node folders, data partitions and the report are written.
    #[arg(long, default_value = "testnet-out")]
    out: PathBuf,
}

impl Args {
    fn binary(&self) -> anyhow::Result<PathBuf> {
        let binary = match &self.binary {
            Some(binary) => binary.clone(),
            None => std::env::current_exe()
                .context("cannot find this program's path")?
                .with_file_name("fedmesh"),
        };
        anyhow::ensure!(
            binary.is_file(),
            "no fedmesh binary at {} (build it with `cargo build -p fedmesh-node`, or pass --binary)",
            binary.display()
        );
        Ok(binary)
    }

    /// The run the flags describe.
    fn flags_scenario(&self, binary: PathBuf) -> anyhow::Result<Scenario> {
        let file = ScenarioFile {
            nodes: self.nodes,
            rounds: self.rounds.unwrap_or(ScenarioFile::default().rounds),
            topology: self.topology.clone(),
            groups: self.groups.clone(),
            delta_encoding: self.delta_encoding.clone(),
            dataset: self.dataset.clone(),
            label_column: self.label_column.clone(),
            model: self.model.clone(),
            partition: self.partition.clone(),
            local_epochs: self.local_epochs,
            batch_size: self.batch_size,
            lr: self.lr,
            seed: self.seed,
            round_deadline_secs: self.round_deadline_secs,
            trainer: trainer_command(self.trainer.as_deref())?,
            orchestrated: self.orchestrated,
            strategy: self
                .secure_aggregation
                .then(|| json!({"rule": "fedavg", "clip_norm": self.clip_norm})),
            privacy: self.secure_aggregation.then(|| json!({"secure_aggregation": true})),
            target: self.target,
            transport: self.transport.unwrap_or_default(),
            ..ScenarioFile::default()
        };
        let problems = file.problems();
        anyhow::ensure!(problems.is_empty(), "{}", problems.join("; "));
        Ok(file.into_scenario(binary, self.out.clone()))
    }

    /// The runs asked for: each scenario file (into --out/NAME), or the one the flags describe;
    /// each with the --slow nodes.
    fn scenarios(&self) -> anyhow::Result<Vec<Scenario>> {
        let binary = self.binary()?;
        let mut scenarios = if let Some(dir) = &self.flame {
            let model = fedmesh_learning::Model::parse_spec(&self.model)?;
            let base = self.flags_scenario(binary)?;
            fedmesh_testnet::flame::scenarios(dir, &base, model, self.rounds)?
        } else if self.scenario.is_empty() {
            vec![self.flags_scenario(binary)?]
        } else {
            let files = self.scenario.iter().map(|path| {
                let mut file = ScenarioFile::load(path)?;
                file.orchestrated |= self.orchestrated;
                let out = self.out.join(file.name.as_deref().unwrap_or("scenario"));
                Ok(file.into_scenario(binary.clone(), out))
            });
            files.collect::<anyhow::Result<Vec<Scenario>>>()?
        };
        if self.repeat > 1 {
            scenarios = scenarios.iter().flat_map(|s| repeated(s, self.repeat)).collect();
        }
        for scenario in &mut scenarios {
            for SlowNode { node, factor } in &self.slow {
                anyhow::ensure!(
                    *node < scenario.total_nodes,
                    "--slow {node}:{factor}: there is no node{node} ({} nodes)",
                    scenario.total_nodes
                );
                scenario.slow.insert(*node, *factor);
            }
            if let Some(transport) = self.transport {
                scenario.transport = transport;
            }
            if self.netns {
                scenario.placement = Placement::Namespaces { nat: self.nat };
            }
        }
        Ok(scenarios)
    }
}

/// `scenario` over `times` seeds from its own, each named `NAME-seedS` and written into
/// `OUT/seedS`.
fn repeated(scenario: &Scenario, times: u64) -> Vec<Scenario> {
    (0..times)
        .map(|i| {
            let seed = scenario.seed + i;
            let name = format!("{}-seed{seed}", scenario.name);
            let out = scenario.out.join(format!("seed{seed}"));
            Scenario { seed, name, out, ..scenario.clone() }
        })
        .collect()
}

/// `--slow NODE:FACTOR`.
#[derive(Debug, Clone, Copy)]
struct SlowNode {
    node: usize,
    factor: f32,
}

impl std::str::FromStr for SlowNode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let wrong = || format!("`{text}` is not NODE:FACTOR (a node index, a factor >= 1)");
        let (node, factor) = text.split_once(':').ok_or_else(wrong)?;
        let node = node.trim().parse().map_err(|_| wrong())?;
        let factor: f32 = factor.trim().parse().map_err(|_| wrong())?;
        if !(factor.is_finite() && factor >= 1.0) {
            return Err(wrong());
        }
        Ok(Self { node, factor })
    }
}

/// The trainer command's words; a relative script path is made absolute, since nodes run in their
/// own folders.
fn trainer_command(text: Option<&str>) -> anyhow::Result<Vec<String>> {
    let Some(text) = text else { return Ok(Vec::new()) };
    text.split_whitespace()
        .map(|word| {
            let path = std::path::Path::new(word);
            if path.is_file() && path.is_relative() {
                let absolute = std::fs::canonicalize(path)
                    .with_context(|| format!("cannot resolve {word}"))?;
                Ok(absolute.display().to_string())
            } else {
                Ok(word.to_owned())
            }
        })
        .collect()
}

/// Runs one scenario, printing as it goes; its report.
fn run(runtime: &tokio::runtime::Runtime, scenario: &Scenario) -> anyhow::Result<Report> {
    std::fs::create_dir_all(&scenario.out)
        .with_context(|| format!("cannot create {}", scenario.out.display()))?;
    let partitions = scenario.write_partitions()?;
    for p in &partitions {
        println!("node{}: {} samples, per label {:?}", p.node, p.samples, p.labels);
    }
    println!(
        "{}: starting {} nodes; job: {} on {} for {} rounds; {} event(s)",
        scenario.name,
        scenario.nodes,
        scenario.model,
        scenario.dataset,
        scenario.rounds,
        scenario.events.len()
    );
    let rounds = scenario.rounds;
    let job = scenario.run(partitions, |progress| println!("{}", progress.line(rounds)));
    // Interrupted, the run still stops its nodes and removes what it made (its namespaces).
    let report = runtime.block_on(async {
        tokio::select! {
            report = job => report,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    })?;
    for check in &report.checks {
        println!("{}", check.line());
    }
    let json = report.write_json(&scenario.out)?;
    let plot = report.write_plot(&scenario.out)?;
    println!("{}", summary_line(&report));
    println!("report: {}\nplot:   {}", json.display(), plot.display());
    Ok(report)
}

fn figure(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.4}"))
}

/// `NAME: passed | FAILED, status, final accuracy, mean round, total time`.
fn summary_line(report: &Report) -> String {
    format!(
        "{}: {}; {}: final accuracy {} (target {}), loss {}, mean {} {} s (local training {} s), node peak memory {} MB (mean {}), {:.1} s in all",
        report.name,
        if report.passed { "passed" } else { "FAILED" },
        report.status,
        figure(report.final_accuracy),
        report
            .target
            .map_or_else(|| "none".to_owned(), |t| format!("{t}, {}", report.expect.name())),
        figure(report.final_loss),
        report.unit,
        figure(report.mean_round_seconds),
        figure(report.mean_train_seconds),
        report.peak_rss_mb_max.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}")),
        report.peak_rss_mb_mean.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}")),
        report.total_seconds
    ) + &target_figure(report)
        + &privacy_figure(report)
}

/// `, target reached in 12.3 s` when the run has a target its job met.
fn target_figure(report: &Report) -> String {
    report
        .time_to_target
        .map_or_else(String::new, |secs| format!(", target reached in {secs:.1} s"))
}

/// `, ε 2.31 at δ 1e-5 (distributed noise)` when the job added noise.
fn privacy_figure(report: &Report) -> String {
    report.privacy.as_ref().map_or_else(String::new, |spent| {
        format!(", ε {:.2} at δ {:e} ({} noise)", spent.epsilon, spent.delta, spent.noise)
    })
}

/// Writes `summary.json` over several scenario runs (and the spreads of repeated ones) into
/// `out`.
fn write_summary(
    out: &Path,
    reports: &[Report],
    spreads: &[repeats::Spread],
) -> anyhow::Result<PathBuf> {
    let rows: Vec<_> = reports
        .iter()
        .map(|r| {
            json!({
                "name": r.name, "passed": r.passed, "status": r.status,
                "final_accuracy": r.final_accuracy, "target": r.target, "expect": r.expect,
                "mean_round_seconds": r.mean_round_seconds, "total_seconds": r.total_seconds,
                "time_to_target": r.time_to_target, "failures": r.failures(),
            })
        })
        .collect();
    let summary = json!({"runs": rows, "repeats": spreads});
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let path = out.join("summary.json");
    std::fs::write(&path, serde_json::to_string_pretty(&summary)? + "\n")
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// Runs every benchmark case, prints the table and writes bench.json.
fn run_bench(runtime: &tokio::runtime::Runtime, args: &Args) -> anyhow::Result<()> {
    let base = Scenario { rounds: args.bench_rounds, ..args.flags_scenario(args.binary()?)? };
    let mut rows = Vec::new();
    for &params in &args.bench_params {
        for &nodes in &args.bench_nodes {
            let case = BenchCase { params, nodes };
            let scenario = bench::case_scenario(&base, case);
            let report = run(runtime, &scenario)?;
            let row = runtime.block_on(bench::row(case, &report))?;
            bench::remove_node_data(&scenario.out)?;
            println!("{}\n{}", BenchRow::header(), row.line());
            rows.push(row);
        }
    }
    println!("\nbench ({} rounds each):\n{}", args.bench_rounds, BenchRow::header());
    for row in &rows {
        println!("{}", row.line());
    }
    let path = args.out.join("bench.json");
    std::fs::write(&path, serde_json::to_string_pretty(&rows)? + "\n")
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!("bench: {}", path.display());
    let failed: Vec<String> = rows
        .iter()
        .filter(|r| r.status != "completed")
        .map(|r| format!("P={} on {} nodes: {}", r.params, r.nodes, r.status))
        .collect();
    anyhow::ensure!(failed.is_empty(), "benchmark cases failed:\n  {}", failed.join("\n  "));
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.bench {
        let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
        return run_bench(&runtime, &args);
    }
    let scenarios = args.scenarios()?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let mut reports = Vec::new();
    for scenario in &scenarios {
        reports.push(run(&runtime, scenario)?);
    }
    if reports.len() > 1 {
        println!("\nsummary:");
        for report in &reports {
            println!("  {}", summary_line(report));
        }
        let spreads = repeats::spreads(&reports, args.repeat as usize);
        for spread in &spreads {
            println!("  {}", spread.line());
        }
        println!("summary: {}", write_summary(&args.out, &reports, &spreads)?.display());
    }
    let failed: Vec<String> = reports
        .iter()
        .filter(|r| !r.passed)
        .map(|r| format!("{}: {}", r.name, r.failures().join("; ")))
        .collect();
    anyhow::ensure!(failed.is_empty(), "the run failed:\n  {}", failed.join("\n  "));
    Ok(())
}
