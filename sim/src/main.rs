//! `fedmesh-sim`: runs one deterministic simulation of a fedmesh job from its flags and prints
//! a summary (progress on stderr), or one JSON object as the last line of stdout with `--json`.

use anyhow::Context;
use clap::Parser;
use fedmesh_protocol::strategy::StrategySpec;
use fedmesh_sim::config::{
    AdversarySpec, AuditorsChoice, Config, DatasetChoice, LatencyRange, ModelChoice, PartitionSpec,
    Strategy, Topology,
};

/// Simulates N fedmesh members running one job over a simulated network, deterministically
/// from --seed.
#[derive(Debug, Parser)]
#[command(name = "fedmesh-sim", version)]
struct Args {
    /// How many members take part.
    #[arg(long, default_value_t = 100)]
    members: usize,
    /// How many rounds the job runs.
    #[arg(long, default_value_t = 10)]
    rounds: u64,
    /// central, hierarchical, ring or hybrid.
    #[arg(long, default_value = "central")]
    topology: Topology,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Per-link one-way latency range in milliseconds (each link's is drawn from the seed).
    #[arg(long, default_value = "10..50")]
    latency_ms: LatencyRange,
    /// Bandwidth of every link, in megabits a second.
    #[arg(long, default_value_t = 100.0)]
    bandwidth_mbps: f64,
    /// Probability that a message copy is lost.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Fraction of the members killed at seeded times over the first half of the run (any
    /// member but an adversary may be, the job's owner too).
    #[arg(long, default_value_t = 0.0)]
    kill: f64,
    /// Killed members restart after this many seconds (default: two round deadlines).
    #[arg(long)]
    restart_after_secs: Option<f64>,
    /// Killed members never restart.
    #[arg(long, conflicts_with = "restart_after_secs")]
    no_restart: bool,
    /// Fraction of the members whose operators leave the job (a signed leave) at seeded times
    /// over the first half of the run (none of them killed too).
    #[arg(long, default_value_t = 0.0)]
    leave: f64,
    /// Members that left join the job again, afresh, after this many seconds (default: two
    /// round deadlines).
    #[arg(long)]
    rejoin_after_secs: Option<f64>,
    /// Members that left never join again.
    #[arg(long, conflicts_with = "rejoin_after_secs")]
    no_rejoin: bool,
    /// ROUND:FRACTION: when ROUND first opens, FRACTION of the members is cut off for one
    /// round deadline.
    #[arg(long)]
    partition: Option<PartitionSpec>,
    /// KIND:COUNT (repeatable): sign-flip, noise, withhold-results, hijack-rounds,
    /// forged-deltas, forge-aggregate.
    #[arg(long)]
    adversary: Vec<AdversarySpec>,
    /// bench:P (P parameters, no data), softmax or mlp:H,... (on --dataset).
    #[arg(long, default_value = "bench:1000")]
    model: ModelChoice,
    /// The embedded data set a softmax or mlp model trains on: mnist5k, digits, breast-cancer.
    #[arg(long, default_value = "mnist5k")]
    dataset: DatasetChoice,
    /// fedavg, median or trimmed-mean:BETA.
    #[arg(long, default_value = "fedavg")]
    strategy: Strategy,
    /// Passes over a member's data per round (softmax and mlp models).
    #[arg(long, default_value_t = 1)]
    local_epochs: u32,
    /// The local learning rate (softmax and mlp models).
    #[arg(long, default_value_t = 0.05)]
    lr: f32,
    /// A round closes at its quorum or after this many seconds.
    #[arg(long, default_value_t = 30)]
    deadline_secs: u64,
    /// The fraction of a round's trainers whose updates close it.
    #[arg(long, default_value_t = 0.8)]
    quorum: f64,
    /// A round starts only with at least this many members.
    #[arg(long, default_value_t = 1)]
    min_participants: u32,
    /// Group labels handed out round-robin (default: 10 for hierarchical and hybrid, else 1).
    #[arg(long)]
    groups: Option<usize>,
    /// Give up (status "stalled") after this much simulated time.
    #[arg(long, default_value_t = 3_600.0)]
    max_sim_secs: f64,
    /// Verifiable aggregation: `all` members audit each result, or a fraction of them (0.3).
    #[arg(long)]
    verify: Option<AuditorsChoice>,
    /// Secure aggregation: trainers clip their updates to --clip-norm and mask them, and each
    /// slot's aggregator learns only their sum (central or hierarchical topology, fedavg).
    #[arg(long)]
    secure_aggregation: bool,
    /// The norm trainers clip their updates to under --secure-aggregation.
    #[arg(long, default_value_t = 20.0, requires = "secure_aggregation")]
    clip_norm: f32,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    json: bool,
    /// Print the machines' log notices (stderr).
    #[arg(long)]
    verbose: bool,
}

impl Args {
    fn into_config(self) -> Config {
        let topology = self.topology.0;
        let grouped = matches!(
            topology,
            fedmesh_protocol::tag::BuiltinTopology::Hierarchical
                | fedmesh_protocol::tag::BuiltinTopology::Hybrid
        );
        let default_restart = 2.0 * self.deadline_secs as f64;
        Config {
            members: self.members,
            rounds: self.rounds,
            topology,
            seed: self.seed,
            latency: self.latency_ms,
            bandwidth_mbps: self.bandwidth_mbps,
            loss: self.loss,
            kill: self.kill,
            restart_after_secs: (!self.no_restart)
                .then_some(self.restart_after_secs.unwrap_or(default_restart)),
            leave: self.leave,
            rejoin_after_secs: (!self.no_rejoin)
                .then_some(self.rejoin_after_secs.unwrap_or(default_restart)),
            partition: self.partition,
            adversaries: self.adversary,
            model: self.model.0,
            dataset: self.dataset.0,
            strategy: StrategySpec {
                rule: self.strategy.0,
                clip_norm: self.secure_aggregation.then_some(self.clip_norm),
                ..StrategySpec::default()
            },
            local_epochs: self.local_epochs,
            lr: self.lr,
            deadline_secs: self.deadline_secs,
            quorum: self.quorum,
            min_participants: self.min_participants,
            groups: self.groups.unwrap_or(if grouped { 10 } else { 1 }),
            max_sim_secs: self.max_sim_secs,
            verification: self.verify.map(|choice| choice.0),
            secure_aggregation: self.secure_aggregation,
            verbose: self.verbose,
            progress: !self.json,
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let json = args.json;
    let report = fedmesh_sim::run(args.into_config()).context("the simulation cannot start")?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{report}");
    }
    Ok(())
}
