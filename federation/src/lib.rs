//! A member's side of a fedmesh job as a sans-IO state machine: fed events (verified messages,
//! the clock, the results of work it asked for), it answers with effects (publish, send, fetch,
//! train, evaluate, store, persist, wake) that a driver carries out — the simulator, and next the
//! node's executor over libp2p and RocksDB. Pure: no I/O, no clock, no randomness of its own.

pub mod admission;
pub mod cadence;
pub mod collect;
pub mod coordinator;
pub mod keyhash;
pub mod member;
pub mod membership;
pub mod records;
pub mod ring;
pub mod shared;
