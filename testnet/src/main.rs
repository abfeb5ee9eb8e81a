//! `testnet`: runs a federated job on N real `fedmesh` nodes on this machine and reports on it.

use anyhow::Context;
use clap::Parser;
use fedmesh_testnet::scenario::Scenario;
use std::path::PathBuf;

/// Runs one federated job on N `fedmesh` nodes on 127.0.0.1: partitions the data set among them,
/// starts them, announces the job, prints a line per round, stops them, and writes report.json
/// and report.png into --out. Exits non-zero when the job does not complete.
#[derive(Debug, Parser)]
#[command(name = "testnet", version)]
struct Args {
    /// How many nodes to run.
    #[arg(long, default_value_t = 4)]
    nodes: usize,
    /// Federated rounds.
    #[arg(long, default_value_t = 10)]
    rounds: u64,
    /// The job's topology (TAG): central (this node runs central jobs).
    #[arg(long, default_value = "central")]
    topology: String,
    /// An embedded data set (mnist5k, digits, breast-cancer) or a data file (.csv, .npy, IDX).
    #[arg(long, default_value = "mnist5k")]
    dataset: String,
    /// The model: softmax or mlp:H1,H2,... (hidden layer sizes).
    #[arg(long, default_value = "mlp:200,200")]
    model: String,
    /// How the data is split among nodes: iid, dirichlet:ALPHA (label skew; smaller is more
    /// skewed) or shards:K (K labels per node).
    #[arg(long, default_value = "iid")]
    partition: String,
    /// Passes over its local data each node makes per round.
    #[arg(long, default_value_t = 1)]
    local_epochs: u32,
    #[arg(long, default_value_t = 32)]
    batch_size: u32,
    /// Learning rate of local SGD (0.3 suits FedAvg over 8 IID shares of mnist5k: compare with
    /// `fedmesh train-local --lr 0.3`).
    #[arg(long, default_value_t = 0.3)]
    lr: f32,
    /// Seed of the partition, the model's initialization and the local shuffling.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// A round closes at this deadline if its quorum is met (and is retried if not).
    #[arg(long, default_value_t = 30)]
    round_deadline_secs: u64,
    /// An external trainer command for every node, e.g. "python3 examples/numpy-trainer/train.py"
    /// (split on spaces); the job's model is then `external` with the layout of --model.
    #[arg(long)]
    trainer: Option<String>,
    /// The fedmesh binary (default: `fedmesh` next to this program).
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Where node folders, data partitions and the report are written.
    #[arg(long, default_value = "testnet-out")]
    out: PathBuf,
}

impl Args {
    fn scenario(self) -> anyhow::Result<Scenario> {
        let binary = match self.binary {
            Some(binary) => binary,
            None => std::env::current_exe()
                .context("cannot find this program's path")?
                .with_file_name("fedmesh"),
        };
        anyhow::ensure!(
            binary.is_file(),
            "no fedmesh binary at {} (build it with `cargo build -p fedmesh-node`, or pass --binary)",
            binary.display()
        );
        anyhow::ensure!(self.nodes >= 1, "--nodes must be at least 1");
        anyhow::ensure!(self.rounds >= 1, "--rounds must be at least 1");
        Ok(Scenario {
            nodes: self.nodes,
            rounds: self.rounds,
            topology: self.topology,
            dataset: self.dataset,
            model: self.model,
            partition: self.partition,
            local_epochs: self.local_epochs,
            batch_size: self.batch_size,
            lr: self.lr,
            seed: self.seed,
            round_deadline_secs: self.round_deadline_secs,
            trainer: trainer_command(self.trainer.as_deref())?,
            binary,
            out: self.out,
        })
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

fn main() -> anyhow::Result<()> {
    let scenario = Args::parse().scenario()?;
    std::fs::create_dir_all(&scenario.out)
        .with_context(|| format!("cannot create {}", scenario.out.display()))?;
    let partitions = scenario.write_partitions()?;
    for p in &partitions {
        println!("node{}: {} samples, per label {:?}", p.node, p.samples, p.labels);
    }
    println!(
        "starting {} nodes; job: {} on {} for {} rounds",
        scenario.nodes, scenario.model, scenario.dataset, scenario.rounds
    );
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let rounds = scenario.rounds;
    let report =
        runtime.block_on(scenario.run(partitions, |round| println!("{}", round.line(rounds))))?;
    let json = report.write_json(&scenario.out)?;
    let plot = report.write_plot(&scenario.out)?;
    let figure = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.4}"));
    println!(
        "{}: final accuracy {}, loss {}, mean round {} s (local training {} s), {:.1} s in all",
        report.status,
        figure(report.final_accuracy),
        figure(report.final_loss),
        figure(report.mean_round_seconds),
        figure(report.mean_train_seconds),
        report.total_seconds
    );
    println!("report: {}\nplot:   {}", json.display(), plot.display());
    anyhow::ensure!(report.completed(), "the job did not complete: {}", report.status);
    Ok(())
}
