//! The TAG as a checked graph: built-in topologies expanded to roles and channels, Flame schemas
//! validated, and the chain of tiers (trainers at the bottom, aggregators above) that plans use.
//! Channels to a coordinator role carry no model: they are no part of the chain.

use fedmesh_protocol::tag::{BuiltinTopology, ChannelSpec, FuncTag, GroupBy, RoleSpec};
use fedmesh_protocol::tag::{TagSchema, TagSpec};
use std::collections::{BTreeMap, BTreeSet};

/// A group label that stands for "each member's own group label" (built-in topologies group by
/// whatever labels the members declare).
pub const ANY_GROUP: &str = "*";

/// One problem in a TAG.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TagError {
    #[error("channel `{channel}` names role `{role}`, which the TAG does not define")]
    UnknownRole { channel: String, role: String },
    #[error("no role consumes data (set `isDataConsumer: true` on the trainer role)")]
    NoDataConsumer,
    #[error("{count} roles consume data ({roles}); fedmesh plans one trainer role")]
    SeveralDataConsumers { count: usize, roles: String },
    #[error("the graph is disconnected: {roles} cannot be reached from `{from}` through channels")]
    Disconnected { from: String, roles: String },
    #[error(
        "channel `{channel}` wires data-consuming roles `{a}` and `{b}` to each other; only a ring \
         (one role twice, with `ringAllreduce`) may"
    )]
    DataConsumersWired { channel: String, a: String, b: String },
    #[error(
        "group `{label}` of channel `{channel}` has no aggregator to serve it (no `{role}` \
             groupAssociation maps `{channel}` to `{label}`)"
    )]
    UnservedGroup { channel: String, label: String, role: String },
    #[error("role `{role}` is defined twice")]
    DuplicateRole { role: String },
    #[error("channel `{channel}` is defined twice")]
    DuplicateChannel { channel: String },
    #[error("role `{role}` has {count} channels towards the top; a tier sends up one channel")]
    Branching { role: String, count: usize },
    #[error(
        "the top role `{role}` serves {count} groups: these are parallel experiments, each a job \
         of its own (split the schema with `TagSchema::parallel_experiments`)"
    )]
    SeveralTops { role: String, count: usize },
}

/// Every problem found in a TAG, one line each.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct TagErrors(pub Vec<TagError>);

/// A tier of the TAG's chain: the trainer role at the bottom, or an aggregator role above it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    pub role: String,
    /// The channel to the tier below (none for the trainers).
    pub down: Option<String>,
    /// The channel to the tier above (none for the top).
    pub up: Option<String>,
    /// Each group association of the role: channel name to group label.
    pub associations: Vec<BTreeMap<String, String>>,
}

impl Tier {
    /// The labels this tier's role serves on `channel`, in association order, without repeats.
    pub fn labels_on(&self, channel: &str) -> Vec<&str> {
        let mut seen = BTreeSet::new();
        self.associations
            .iter()
            .filter_map(|a| a.get(channel).map(String::as_str))
            .filter(|label| seen.insert(*label))
            .collect()
    }

    /// The label a member of `group` uses on `channel`: its own group when the role serves it (or
    /// serves any group), the role's single label when it has only one, else none.
    pub fn label_for(&self, channel: &str, group: &str) -> Option<String> {
        let labels = self.labels_on(channel);
        if labels.iter().any(|label| *label == ANY_GROUP || *label == group) {
            Some(group.to_owned())
        } else if let [only] = labels.as_slice() {
            Some((*only).to_owned())
        } else {
            None
        }
    }
}

/// A validated TAG, reduced to what planning needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    pub name: String,
    /// The trainer tier first, the top aggregator last; a pure ring has only the trainer tier.
    pub tiers: Vec<Tier>,
    /// The trainers' ring channel, if they run ring all-reduce.
    pub ring: Option<String>,
}

impl Tag {
    /// Expands a built-in or validates a schema.
    pub fn from_spec(spec: &TagSpec) -> Result<Self, TagErrors> {
        match spec {
            TagSpec::Builtin(builtin) => Self::from_schema(&builtin_schema(*builtin)),
            TagSpec::Schema(schema) => Self::from_schema(schema),
        }
    }

    /// Validates a Flame-style schema, reporting every problem.
    pub fn from_schema(schema: &TagSchema) -> Result<Self, TagErrors> {
        let mut problems = check_names(schema);
        problems.extend(check_channels(schema));
        let consumers: Vec<&RoleSpec> =
            schema.roles.iter().filter(|r| r.is_data_consumer).collect();
        match consumers.as_slice() {
            [] => problems.push(TagError::NoDataConsumer),
            [_] => {}
            many => problems.push(TagError::SeveralDataConsumers {
                count: many.len(),
                roles: many.iter().map(|r| format!("`{}`", r.name)).collect::<Vec<_>>().join(", "),
            }),
        }
        if let Some(first) = schema.roles.first() {
            problems.extend(check_connected(schema, &first.name));
        }
        problems.extend(check_groups_served(schema));
        if !problems.is_empty() {
            return Err(TagErrors(problems));
        }
        let trainer = consumers[0];
        let tag = build_chain(schema, trainer).map_err(|e| TagErrors(vec![e]))?;
        Ok(tag)
    }

    /// The trainer tier.
    pub fn trainers(&self) -> &Tier {
        &self.tiers[0]
    }

    /// The role names of the TAG, trainers first.
    pub fn roles(&self) -> impl Iterator<Item = &str> {
        self.tiers.iter().map(|tier| tier.role.as_str())
    }
}

fn check_names(schema: &TagSchema) -> Vec<TagError> {
    let mut problems = Vec::new();
    let mut roles = BTreeSet::new();
    for role in &schema.roles {
        if !roles.insert(role.name.as_str()) {
            problems.push(TagError::DuplicateRole { role: role.name.clone() });
        }
    }
    let mut channels = BTreeSet::new();
    for channel in &schema.channels {
        if !channels.insert(channel.name.as_str()) {
            problems.push(TagError::DuplicateChannel { channel: channel.name.clone() });
        }
    }
    problems
}

fn role<'s>(schema: &'s TagSchema, name: &str) -> Option<&'s RoleSpec> {
    schema.roles.iter().find(|role| role.name == name)
}

fn is_ring(channel: &ChannelSpec) -> bool {
    channel.pair[0] == channel.pair[1]
        && channel.func_tags.values().flatten().any(|tag| *tag == FuncTag::RingAllreduce)
}

fn check_channels(schema: &TagSchema) -> Vec<TagError> {
    let mut problems = Vec::new();
    for channel in &schema.channels {
        let ends: Vec<Option<&RoleSpec>> = channel.pair.iter().map(|r| role(schema, r)).collect();
        for (name, end) in channel.pair.iter().zip(&ends) {
            if end.is_none() && !problems.iter().any(|p| is_unknown(p, &channel.name, name)) {
                problems.push(TagError::UnknownRole {
                    channel: channel.name.clone(),
                    role: name.clone(),
                });
            }
        }
        if let [Some(a), Some(b)] = ends.as_slice()
            && a.is_data_consumer
            && b.is_data_consumer
            && !is_ring(channel)
        {
            problems.push(TagError::DataConsumersWired {
                channel: channel.name.clone(),
                a: a.name.clone(),
                b: b.name.clone(),
            });
        }
    }
    problems
}

fn is_unknown(problem: &TagError, channel_name: &str, role_name: &str) -> bool {
    matches!(problem, TagError::UnknownRole { channel, role } if channel == channel_name && role == role_name)
}

fn check_connected(schema: &TagSchema, from: &str) -> Vec<TagError> {
    let mut reached = BTreeSet::from([from]);
    let mut frontier = vec![from];
    while let Some(current) = frontier.pop() {
        for channel in schema.channels.iter().filter(|c| c.pair.iter().any(|r| r == current)) {
            for other in &channel.pair {
                if reached.insert(other.as_str()) {
                    frontier.push(other.as_str());
                }
            }
        }
    }
    let unreached: Vec<String> = schema
        .roles
        .iter()
        .filter(|role| !reached.contains(role.name.as_str()))
        .map(|role| format!("`{}`", role.name))
        .collect();
    if unreached.is_empty() {
        Vec::new()
    } else {
        vec![TagError::Disconnected { from: from.to_owned(), roles: unreached.join(", ") }]
    }
}

/// Every `groupBy` label of a channel between a role and an aggregating role must be served by an
/// association of the aggregating end.
fn check_groups_served(schema: &TagSchema) -> Vec<TagError> {
    let mut problems = Vec::new();
    for channel in schema.channels.iter().filter(|c| !is_ring(c) && !c.coordinates()) {
        let Some(aggregating) = aggregating_end(schema, channel) else { continue };
        let served: BTreeSet<&str> = aggregating
            .group_association
            .iter()
            .filter_map(|a| a.get(&channel.name).map(String::as_str))
            .collect();
        if served.contains(ANY_GROUP) {
            continue;
        }
        for label in channel.group_by.value.iter().filter(|l| !served.contains(l.as_str())) {
            problems.push(TagError::UnservedGroup {
                channel: channel.name.clone(),
                label: label.clone(),
                role: aggregating.name.clone(),
            });
        }
    }
    problems
}

/// The end of a channel that aggregates: the one whose funcTags say so, else the end that does
/// not consume data.
fn aggregating_end<'s>(schema: &'s TagSchema, channel: &ChannelSpec) -> Option<&'s RoleSpec> {
    let tagged = channel.pair.iter().find(|end| {
        channel.func_tags.get(*end).is_some_and(|tags| tags.contains(&FuncTag::Aggregate))
    });
    let name = tagged.or_else(|| {
        channel.pair.iter().find(|end| role(schema, end).is_some_and(|r| !r.is_data_consumer))
    })?;
    role(schema, name)
}

/// Walks from the trainer role up through aggregating channels to the top.
fn build_chain(schema: &TagSchema, trainer: &RoleSpec) -> Result<Tag, TagError> {
    let ring = schema.channels.iter().find(|c| is_ring(c) && c.pair[0] == trainer.name);
    let mut tiers = Vec::new();
    let mut current = trainer;
    let mut down: Option<String> = None;
    loop {
        let ups: Vec<&ChannelSpec> = schema
            .channels
            .iter()
            .filter(|c| !is_ring(c) && !c.coordinates() && Some(&c.name) != down.as_ref())
            .filter(|c| c.pair.contains(&current.name))
            .filter(|c| aggregating_end(schema, c).is_some_and(|a| a.name != current.name))
            .collect();
        let up = match ups.as_slice() {
            [] => None,
            [one] => Some(*one),
            many => {
                return Err(TagError::Branching { role: current.name.clone(), count: many.len() });
            }
        };
        tiers.push(Tier {
            role: current.name.clone(),
            down: down.clone(),
            up: up.map(|c| c.name.clone()),
            associations: current.group_association.clone(),
        });
        let Some(up) = up else { break };
        let next = aggregating_end(schema, up).ok_or_else(|| TagError::UnknownRole {
            channel: up.name.clone(),
            role: up.pair[1].clone(),
        })?;
        if tiers.iter().any(|tier| tier.role == next.name) {
            return Err(TagError::Branching { role: next.name.clone(), count: 2 });
        }
        down = Some(up.name.clone());
        current = next;
    }
    let top = &tiers[tiers.len() - 1];
    if let (Some(down), true) = (&top.down, tiers.len() > 1) {
        let count = top.labels_on(down).len();
        let serves_one = count <= 1 && !top.labels_on(down).contains(&ANY_GROUP);
        if !serves_one {
            return Err(TagError::SeveralTops { role: top.role.clone(), count: count.max(2) });
        }
    }
    Ok(Tag { name: schema.name.clone(), tiers, ring: ring.map(|c| c.name.clone()) })
}

/// A built-in topology as a schema, grouping by the members' own labels where it groups at all.
pub fn builtin_schema(builtin: BuiltinTopology) -> TagSchema {
    const TRAINER: &str = "trainer";
    match builtin {
        BuiltinTopology::Central => schema(
            "central",
            vec![
                data_role(TRAINER, &[&[("param-channel", "default")]]),
                agg_role("aggregator", &[&[("param-channel", "default")]]),
            ],
            vec![upload_channel("param-channel", TRAINER, "aggregator", "default")],
        ),
        BuiltinTopology::Hierarchical => schema(
            "hierarchical",
            vec![
                data_role(TRAINER, &[&[("param-channel", ANY_GROUP)]]),
                agg_role(
                    "group-aggregator",
                    &[&[("param-channel", ANY_GROUP), ("global-channel", "default")]],
                ),
                agg_role("top-aggregator", &[&[("global-channel", "default")]]),
            ],
            vec![
                upload_channel("param-channel", TRAINER, "group-aggregator", ANY_GROUP),
                upload_channel("global-channel", "group-aggregator", "top-aggregator", "default"),
            ],
        ),
        BuiltinTopology::Ring => schema(
            "ring",
            vec![data_role(TRAINER, &[&[("ring-channel", "default")]])],
            vec![ring_channel("ring-channel", TRAINER, "default")],
        ),
        BuiltinTopology::Hybrid => schema(
            "hybrid",
            vec![
                data_role(TRAINER, &[&[("ring-channel", ANY_GROUP), ("param-channel", "default")]]),
                agg_role("aggregator", &[&[("param-channel", "default")]]),
            ],
            vec![
                ring_channel("ring-channel", TRAINER, ANY_GROUP),
                upload_channel("param-channel", TRAINER, "aggregator", "default"),
            ],
        ),
    }
}

fn schema(name: &str, roles: Vec<RoleSpec>, channels: Vec<ChannelSpec>) -> TagSchema {
    TagSchema { name: name.to_owned(), description: String::new(), roles, channels }
}

fn role_spec(name: &str, is_data_consumer: bool, associations: &[&[(&str, &str)]]) -> RoleSpec {
    RoleSpec {
        name: name.to_owned(),
        description: String::new(),
        is_data_consumer,
        group_association: associations
            .iter()
            .map(|pairs| pairs.iter().map(|(c, l)| ((*c).to_owned(), (*l).to_owned())).collect())
            .collect(),
        replica: None,
    }
}

fn data_role(name: &str, associations: &[&[(&str, &str)]]) -> RoleSpec {
    role_spec(name, true, associations)
}

fn agg_role(name: &str, associations: &[&[(&str, &str)]]) -> RoleSpec {
    role_spec(name, false, associations)
}

fn channel(
    name: &str,
    pair: [&str; 2],
    label: &str,
    tags: Vec<(&str, Vec<FuncTag>)>,
) -> ChannelSpec {
    ChannelSpec {
        name: name.to_owned(),
        description: String::new(),
        pair: pair.map(str::to_owned),
        group_by: GroupBy { kind: "tag".to_owned(), value: vec![label.to_owned()] },
        func_tags: tags.into_iter().map(|(role, tags)| (role.to_owned(), tags)).collect(),
        backend: None,
        broker_host: None,
        is_unidirectional: None,
    }
}

fn upload_channel(name: &str, lower: &str, upper: &str, label: &str) -> ChannelSpec {
    channel(
        name,
        [lower, upper],
        label,
        vec![
            (lower, vec![FuncTag::Fetch, FuncTag::Upload]),
            (upper, vec![FuncTag::Distribute, FuncTag::Aggregate]),
        ],
    )
}

fn ring_channel(name: &str, role: &str, label: &str) -> ChannelSpec {
    channel(name, [role, role], label, vec![(role, vec![FuncTag::RingAllreduce])])
}
