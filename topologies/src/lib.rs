//! TAG validation, built-in topologies, deterministic aggregator election and per-round plans.
//! Not written yet (issue M4): the crate is empty so that the workspace has its final shape.
