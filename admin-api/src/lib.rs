//! The fedmesh node's admin API contract: the endpoint file a node writes into its data
//! directory, the request and view types of every route, and one typed client, shared by the
//! node's server, its CLI, the testnet and the tests.

mod client;
mod coordination;
mod endpoint;
mod metrics;
mod requests;
mod views;

pub use client::{AdminClient, ApiError};
pub use coordination::{CoordinationView, MemberStateView, RoundProgressView};
pub use endpoint::{Endpoint, EndpointError};
pub use metrics::metric_value;
pub use requests::{
    AdmitRequest, Admitted, Announced, ErrorAnswer, JoinRequest, Joined, Left, StopRequest,
    Stopped, StoredBlob,
};
pub use views::{
    JobView, LogLine, MemberView, ModelEntry, ModelExport, PrivacyView, RoundView, RunView,
    StatusView,
};
