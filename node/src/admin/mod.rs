//! The node's local admin API: HTTP on loopback, opened by a bearer token the node writes into its
//! data directory. The CLI, the testnet and the web page at `/` use it; the metrics are also
//! served on their own address, without a token, for Prometheus. Its contract (the endpoint file,
//! the request and view types, the client) is the `fedmesh-admin-api` crate.

mod page;
mod server;

pub use server::{serve, serve_metrics};
