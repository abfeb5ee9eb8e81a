//! The part of a participant that holds data, trains a model and evaluates it: data sets and
//! their formats, scaling, partitioners, models as flat parameter vectors, local training and
//! evaluation, the centralized baseline, and the pure half of the external-trainer bridge. Pure: no sockets, no async, no database.

pub mod baseline;
pub mod bench;
pub mod data;
pub mod error;
pub mod external;
pub mod formats;
pub mod labels;
pub mod model;
pub mod partition;
pub mod scale;
pub mod train;

pub use bench::BenchModel;
pub use data::{DataSource, Dataset, Embedded};
pub use error::LearningError;
pub use model::{Init, Model, init_layout};
pub use partition::Partitioner;
pub use scale::{Scaler, Scaling};
pub use train::{Evaluation, TrainConfig, TrainOutcome, Trainer, evaluate, train};
