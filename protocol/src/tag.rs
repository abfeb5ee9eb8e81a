//! The Topology Abstraction Graph (TAG) as a job spec states it: a built-in topology by name, or
//! roles and channels in Flame's schema format, with a warning for each Flame field fedmesh cannot
//! honour. Validation and planning live in `fedmesh-topologies`.

mod parallel;
mod warnings;

pub use parallel::Experiment;
pub use warnings::FieldWarning;

use serde::{Deserialize, Serialize};
use serde_json::Value;
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
    /// Flame's count of workers per group association of an aggregating role (high
    /// availability); fedmesh elects one per group and round, the next in the ranking taking over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<u32>,
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
    /// Flame's transport of the channel (`p2p`, `mqtt`...); fedmesh carries every channel over its
    /// own peer-to-peer mesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// Flame's MQTT broker of the channel.
    #[serde(rename = "brokerHost", default, skip_serializing_if = "Option::is_none")]
    pub broker_host: Option<String>,
    /// Flame's one-way channels; fedmesh's channels carry models down and updates up.
    #[serde(rename = "isUnidirectional", default, skip_serializing_if = "Option::is_none")]
    pub is_unidirectional: Option<bool>,
}

impl ChannelSpec {
    /// Whether the channel links a role to the job's coordinator (its funcTags `coordinate*`)
    /// rather than carrying models.
    pub fn coordinates(&self) -> bool {
        self.func_tags.values().flatten().any(|tag| tag.is_coordination())
    }
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
    /// A worker's side of a channel to the coordinator.
    Coordinate,
    /// The coordinator's side of its channel to each kind of worker.
    CoordinateWithTopAgg,
    CoordinateWithMidAgg,
    CoordinateWithLeafAgg,
    CoordinateWithTrainer,
    /// Flame's dataset-size exchange; fedmesh members declare their sample counts when joining.
    GetDatasetSize,
    UploadDatasetSize,
    /// FedGFT's separate bias terms, which fedmesh does not aggregate.
    AggregateBias,
    DistributeBias,
    FetchBias,
    UploadBias,
}

impl FuncTag {
    /// Whether it is one of the `coordinate*` tags of a channel to the coordinator.
    pub fn is_coordination(self) -> bool {
        self.is_coordinator_side() || self == Self::Coordinate
    }

    /// Whether it is the coordinator's own side of a channel (`coordinateWith*`).
    pub fn is_coordinator_side(self) -> bool {
        matches!(
            self,
            Self::CoordinateWithTopAgg
                | Self::CoordinateWithMidAgg
                | Self::CoordinateWithLeafAgg
                | Self::CoordinateWithTrainer
        )
    }

    /// Whether fedmesh has no meaning for it (FedGFT's bias exchange).
    pub fn is_bias(self) -> bool {
        matches!(
            self,
            Self::AggregateBias | Self::DistributeBias | Self::FetchBias | Self::UploadBias
        )
    }

    /// Its name in a schema.
    pub fn name(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|value| value.as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

impl TagSchema {
    /// The role that coordinates the job (the `coordinateWith*` end of its channels): fedmesh runs
    /// such a job orchestrated, with its `coordinator` taking that role.
    pub fn coordinator_role(&self) -> Option<&str> {
        self.channels.iter().find_map(|channel| {
            channel
                .func_tags
                .iter()
                .find(|(_, tags)| tags.iter().any(|tag| tag.is_coordinator_side()))
                .map(|(role, _)| role.as_str())
        })
    }
}

/// The keys a TAG schema object, its roles, channels and their `groupBy` may have.
const SCHEMA_KEYS: &[&str] = &["name", "description", "roles", "channels"];
const ROLE_KEYS: &[&str] =
    &["name", "description", "isDataConsumer", "groupAssociation", "replica"];
const CHANNEL_KEYS: &[&str] = &[
    "name",
    "description",
    "pair",
    "groupBy",
    "funcTags",
    "backend",
    "brokerHost",
    "isUnidirectional",
];
const GROUP_BY_KEYS: &[&str] = &["type", "value"];

/// A key a schema may not have: its path below the schema (`roles[1].replicas`) and the keys
/// allowed there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownKey {
    pub path: String,
    pub allowed: &'static [&'static str],
}

impl UnknownKey {
    /// The message a spec error carries for it.
    pub fn message(&self) -> String {
        format!("unknown field, expected one of: {}", self.allowed.join(", "))
    }
}

/// Every key of a schema object (as JSON) that Flame's format does not have.
pub fn unknown_schema_keys(schema: &Value) -> Vec<UnknownKey> {
    let mut unknown = unknown_keys(schema, "", SCHEMA_KEYS);
    for (index, role) in items(schema.get("roles")) {
        unknown.extend(unknown_keys(role, &format!("roles[{index}]"), ROLE_KEYS));
    }
    for (index, channel) in items(schema.get("channels")) {
        let path = format!("channels[{index}]");
        unknown.extend(unknown_keys(channel, &path, CHANNEL_KEYS));
        if let Some(group_by) = channel.get("groupBy") {
            unknown.extend(unknown_keys(group_by, &format!("{path}.groupBy"), GROUP_BY_KEYS));
        }
    }
    unknown
}

fn items(value: Option<&Value>) -> impl Iterator<Item = (usize, &Value)> {
    value.and_then(Value::as_array).into_iter().flatten().enumerate()
}

fn unknown_keys(value: &Value, path: &str, allowed: &'static [&'static str]) -> Vec<UnknownKey> {
    let Some(map) = value.as_object() else { return Vec::new() };
    map.keys()
        .filter(|key| !allowed.contains(&key.as_str()))
        .map(|key| UnknownKey {
            path: if path.is_empty() { key.clone() } else { format!("{path}.{key}") },
            allowed,
        })
        .collect()
}
