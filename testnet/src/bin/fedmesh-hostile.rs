//! `fedmesh-hostile`: a hostile peer for testing a fedmesh federation's defences. It speaks
//! fedmesh's protocol as a member that joined the job or as an outsider and sends what honest
//! nodes must refuse (forged results, openings and assignments, replayed heartbeats, join
//! floods, oversized and trickled frames, inflated sample counts, NaN or huge deltas, early
//! inputs); it prints how the nodes answered. The testnet's `attack` events run it.

use clap::Parser;
use fedmesh_testnet::hostile::{self, Attack, Plan, Posing};
use std::time::Duration;

/// A hostile peer for testing a fedmesh federation's defences: it sends one kind of attack
/// to the nodes of a running job and prints how they answered. Run it only against your own
/// test federation.
#[derive(Debug, Parser)]
#[command(name = "fedmesh-hostile", version)]
struct Args {
    /// What to send.
    #[arg(long, value_enum)]
    attack: Attack,
    /// Whom to pose as: a member joins the job first (and leaves at the end); an outsider
    /// never joins. Frame attacks are always an outsider's.
    #[arg(long = "as", value_enum, default_value_t = Posing::Member)]
    posing: Posing,
    /// The job's id (hex), as `fedmesh jobs` prints it.
    #[arg(long)]
    job: String,
    /// A node's address ending in /p2p/PEERID (repeat for several; frames go to each).
    #[arg(long = "peer", required = true)]
    peers: Vec<String>,
    /// How many joins, deltas or replays a flood sends, or frames per node.
    #[arg(long, default_value_t = 100)]
    count: usize,
    /// replay-heartbeats: the PeerId whose heartbeats are captured and, once it is silent,
    /// replayed.
    #[arg(long)]
    victim: Option<String>,
    /// The longest the attack goes on, in seconds.
    #[arg(long, default_value_t = 20)]
    duration_secs: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let plan = Plan {
        attack: args.attack,
        posing: args.posing,
        job: args.job,
        peers: args.peers,
        count: args.count,
        victim: args.victim,
        duration: Duration::from_secs(args.duration_secs),
    };
    println!("fedmesh-hostile: {} as {}", plan.attack.name(), plan.posing.name());
    hostile::run(&plan).await?;
    println!("fedmesh-hostile: done");
    Ok(())
}
