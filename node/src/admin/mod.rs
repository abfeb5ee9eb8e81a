//! The node's local admin API: HTTP on loopback, opened by a bearer token the node writes into its
//! data directory. The CLI, the testnet and the web page at `/` use it; the metrics are also
//! served on their own address, without a token, for Prometheus.

mod client;
mod endpoint;
mod page;
mod server;

pub use client::AdminClient;
pub use endpoint::{Endpoint, EndpointError};
pub use server::{serve, serve_metrics};
