//! The Topology Abstraction Graph (TAG) as a job spec states it: a built-in topology by name, or
//! roles and channels in Flame's schema format. Validation and planning live in `fedmesh-topologies`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The topology a job runs: a built-in by name (`"central"`), or a Flame-style schema object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TagSpec {
    Builtin(BuiltinTopology),
    Schema(TagSchema),
}

impl TagSpec {
    /// Whether trainers all-reduce in a ring (a channel from a role to itself).
    pub fn has_rings(&self) -> bool {
        match self {
            Self::Builtin(builtin) => {
                matches!(builtin, BuiltinTopology::Ring | BuiltinTopology::Hybrid)
            }
            Self::Schema(schema) => schema.channels.iter().any(|c| c.pair[0] == c.pair[1]),
        }
    }
}

/// The topologies fedmesh knows by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuiltinTopology {
    /// One aggregator, every other member trains.
    Central,
    /// An aggregator per group label, and one top aggregator over the groups.
    Hierarchical,
    /// Ring all-reduce among the trainers; no aggregator.
    Ring,
    /// Ring all-reduce inside each group, one aggregator across the groups.
    Hybrid,
}

/// A TAG in Flame's schema format (`roles`, `channels`, `groupBy`, `funcTags`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TagSchema {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub roles: Vec<RoleSpec>,
    pub channels: Vec<ChannelSpec>,
}

/// A role of the TAG: what a member taking it does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoleSpec {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Whether members in this role train on their own data.
    #[serde(rename = "isDataConsumer", default)]
    pub is_data_consumer: bool,
    /// One entry per group this role serves: channel name to group label.
    #[serde(rename = "groupAssociation", default)]
    pub group_association: Vec<BTreeMap<String, String>>,
}

/// A channel between two roles (the same role twice for a ring).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelSpec {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub pair: [String; 2],
    #[serde(rename = "groupBy", default)]
    pub group_by: GroupBy,
    /// Role name to the functions that end of the channel performs.
    #[serde(rename = "funcTags", default)]
    pub func_tags: BTreeMap<String, Vec<FuncTag>>,
}

/// How a channel is split into groups: the group labels it carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupBy {
    #[serde(rename = "type", default = "GroupBy::default_kind")]
    pub kind: String,
    #[serde(default)]
    pub value: Vec<String>,
}

impl GroupBy {
    fn default_kind() -> String {
        "tag".to_owned()
    }
}

impl Default for GroupBy {
    fn default() -> Self {
        Self { kind: Self::default_kind(), value: vec!["default".to_owned()] }
    }
}

/// A function one end of a channel performs, as Flame's `funcTags` name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FuncTag {
    Distribute,
    Aggregate,
    Fetch,
    Upload,
    #[serde(alias = "ring_allreduce", alias = "allreduce")]
    RingAllreduce,
}
