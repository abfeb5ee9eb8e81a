//! TAG validation, built-in topologies, deterministic aggregator election and per-round plans:
//! every member that sees the same job, round and membership computes the same plan.

pub mod election;
pub mod graph;
pub mod guided;
pub mod history;
pub mod plan;
pub mod ring;
pub mod selection;

pub use graph::{Tag, TagError, TagErrors};
pub use history::History;
pub use plan::{
    Destination, Duties, Input, MemberInfo, PlanError, RoundPlan, Slot, SlotId, TOP_SLOT, Vetting,
};
pub use selection::{Count, Selection};
