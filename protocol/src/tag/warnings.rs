//! The Flame schema fields fedmesh reads but cannot honour, each reported as a warning that
//! names it.

use super::{ChannelSpec, RoleSpec, TagSchema};
use std::fmt;

/// A field fedmesh ignores (or honours only in part), by its path
/// (`roles[middle-aggregator].replica`), and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldWarning {
    pub field: String,
    pub reason: String,
}

impl FieldWarning {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { field: field.into(), reason: reason.into() }
    }

    /// A field fedmesh ignores altogether, and why.
    pub fn ignored(field: impl Into<String>, why: impl fmt::Display) -> Self {
        Self::new(field, format!("ignored: {why}"))
    }

    /// The same warning with its field path under `prefix` (a file name, `tag`).
    pub fn under(self, prefix: &str) -> Self {
        Self { field: format!("{prefix}: {}", self.field), reason: self.reason }
    }
}

impl fmt::Display for FieldWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// The one transport whose meaning fedmesh has.
const PEER_TO_PEER: &str = "p2p";

impl TagSchema {
    /// A warning for each field of the schema that fedmesh ignores.
    pub fn warnings(&self) -> Vec<FieldWarning> {
        let roles = self.roles.iter().flat_map(role_warnings);
        roles.chain(self.channels.iter().flat_map(channel_warnings)).collect()
    }
}

fn role_warnings(role: &RoleSpec) -> Vec<FieldWarning> {
    let field = format!("roles[{}].replica", role.name);
    match role.replica {
        Some(count) if role.is_data_consumer => vec![FieldWarning::ignored(
            field,
            format!(
                "{count} for a data-consuming role: it has one member per data set, and replicas \
                 are for aggregating roles"
            ),
        )],
        Some(count) if count > 1 => vec![FieldWarning::ignored(
            field,
            format!(
                "{count}: fedmesh elects one aggregator per group each round, and the next \
                 member in the election's ranking takes over when it fails"
            ),
        )],
        _ => Vec::new(),
    }
}

fn channel_warnings(channel: &ChannelSpec) -> Vec<FieldWarning> {
    let at = |key: &str| format!("channels[{}].{key}", channel.name);
    let mut warnings = Vec::new();
    if let Some(backend) = channel.backend.as_deref().filter(|b| *b != PEER_TO_PEER) {
        let reason = format!("\"{backend}\": fedmesh carries every channel over its libp2p mesh");
        warnings.push(FieldWarning::ignored(at("backend"), reason));
    }
    if let Some(host) = &channel.broker_host {
        let reason = format!("\"{host}\": fedmesh has no broker, its members talk directly");
        warnings.push(FieldWarning::ignored(at("brokerHost"), reason));
    }
    if channel.is_unidirectional == Some(true) {
        let reason = "fedmesh channels carry models down and updates up";
        warnings.push(FieldWarning::ignored(at("isUnidirectional"), reason));
    }
    if channel.group_by.kind != "tag" {
        let reason = format!("\"{}\": fedmesh groups by tag (label) only", channel.group_by.kind);
        warnings.push(FieldWarning::ignored(at("groupBy.type"), reason));
    }
    for (role, tags) in &channel.func_tags {
        for tag in tags.iter().filter(|tag| tag.is_bias()) {
            let reason = "fedmesh aggregates no separate bias terms (FedGFT)";
            warnings.push(FieldWarning::ignored(
                format!("{}[{role}].{}", at("funcTags"), tag.name()),
                reason,
            ));
        }
    }
    warnings
}
