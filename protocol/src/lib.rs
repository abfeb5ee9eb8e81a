//! The vocabulary every fedmesh node speaks: ids, job and TAG specs, wire messages, the signed
//! envelope, keys, and the bounded bincode codec. Nothing a peer sends is trusted until this crate
//! has checked it.

pub mod ids;
pub mod model;
pub mod strategy;
pub mod tag;
