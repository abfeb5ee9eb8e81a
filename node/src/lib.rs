//! The fedmesh node: everything with I/O (the libp2p swarm, the RocksDB store, the job engine, the
//! admin API) behind the `fedmesh` command line.

pub mod admin;
pub mod cli;
pub mod commands;
pub mod config;
pub mod engine;
pub mod external;
pub mod identity;
pub mod metrics;
pub mod misbehaviour;
pub mod network;
pub mod owner_only;
pub mod recent;
pub mod registry;
pub mod store;
