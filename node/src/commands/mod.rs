//! One module per `fedmesh` subcommand; each takes its parsed arguments and returns `anyhow`
//! errors that the binary prints.

pub mod coordinated;
pub mod job;
pub mod keygen;
pub mod model;
pub mod node;
pub mod status;
pub mod train_local;
