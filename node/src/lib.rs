//! The fedmesh node: everything with I/O (the libp2p swarm, the RocksDB store, the job engine, the
//! admin API) behind the `fedmesh` command line.

pub mod config;
pub mod metrics;
pub mod network;
pub mod store;
