//! A member's and a coordinator's side of a fedmesh job as sans-IO state machines: fed events
//! (verified messages, the clock, the results of work they asked for), they answer with effects
//! (publish, send, fetch, train, evaluate, store, persist, wake) that a driver carries out — the
//! node's executor over libp2p and RocksDB, or the simulator. Pure: no I/O, no clock, no
//! randomness of its own.

pub mod cadence;
pub mod collect;
pub mod member;
pub mod membership;
pub mod records;
pub mod ring;
