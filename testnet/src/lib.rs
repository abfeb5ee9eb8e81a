//! Runs many real `fedmesh` processes on one machine, drives them through their CLI and admin API
//! as a user would, fires scenario events (kill, restart, join, leave, Byzantine) at given rounds,
//! and reports on what they did.

pub mod attack_runs;
pub mod bench;
pub mod checks;
pub mod cluster;
pub mod events;
pub mod firing;
pub mod flame;
pub mod follow;
pub mod hostile;
pub mod netns;
pub mod repeats;
pub mod report;
pub mod scenario;
pub mod scenario_file;
