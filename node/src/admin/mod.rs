//! The node's local admin API: HTTP on loopback, opened by a bearer token the node writes into its
//! data directory. The CLI and the testnet use it; it also serves Prometheus metrics.

mod client;
mod endpoint;
mod server;

pub use client::AdminClient;
pub use endpoint::{Endpoint, EndpointError};
pub use server::serve;
