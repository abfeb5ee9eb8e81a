//! A deterministic simulator of a fedmesh job: thousands of members' state machines
//! (`fedmesh-federation`) in one process, over a simulated network with a virtual clock,
//! latency, bandwidth, loss, partitions, kills and restarts, and adversarial members. One seed
//! gives one run, bit for bit: the same event order, the same models, the same trace digest.

pub mod adversary;
pub mod blobs;
pub mod check;
pub mod config;
mod effects;
pub mod faults;
pub mod job;
pub mod local;
pub mod network;
pub mod queue;
pub mod report;
pub mod trace;
mod transfer;
pub mod world;

pub use config::Config;
pub use report::{Report, Status};
pub use world::{SimError, World};

/// Runs one simulation of `config` to its end.
pub fn run(config: Config) -> Result<Report, SimError> {
    Ok(World::new(config)?.run())
}
