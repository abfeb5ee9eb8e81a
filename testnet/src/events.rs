//! Scenario events: what happens to which nodes when the job reaches a round (kill, restart,
//! join, leave, turn Byzantine, come under attack from the hostile peer), and the record of
//! each one as it fired.

use crate::hostile::{Attack, Posing};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use std::fmt;

/// What an event does to its nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// SIGKILL, as a crash would.
    Kill,
    /// Starts a killed node again from its data directory.
    Restart,
    /// Starts new nodes (each with its own share of the data) that join the running job.
    Join,
    /// The node's operator leaves the job through the admin API (a signed leave).
    Leave,
    /// A node that left joins the running job again through the admin API (`fedmesh job
    /// join`): afresh, catching up from what the others serve.
    Rejoin,
    /// The node is stopped and restarted from its data directory with `misbehave` set (for
    /// round 1 and nodes by index, the node starts with it: the first round may be over before
    /// a restart).
    Byzantine,
    /// Starts `fedmesh-hostile` against the running nodes: the event's `attack`, posing `as` a
    /// member or an outsider, with its `count`; its `target` is the victim of
    /// `replay-heartbeats`.
    Attack,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Self::Kill => "kill",
            Self::Restart => "restart",
            Self::Join => "join",
            Self::Leave => "leave",
            Self::Rejoin => "rejoin",
            Self::Byzantine => "byzantine",
            Self::Attack => "attack",
        }
    }
}

pub use fedmesh_node::misbehaviour::Misbehaviour;

/// How a `byzantine` event's node misbehaves when the event does not say.
pub const DEFAULT_MISBEHAVIOUR: Misbehaviour = Misbehaviour::SignFlip;

/// Whom an event is for: nodes by index, or the member aggregating the round in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Target {
    Nodes(Vec<usize>),
    #[serde(serialize_with = "aggregator_name")]
    Aggregator,
}

fn aggregator_name<S: serde::Serializer>(serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str("aggregator")
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Aggregator => f.write_str("the aggregator"),
            Self::Nodes(nodes) => {
                let names: Vec<String> = nodes.iter().map(|n| format!("node{n}")).collect();
                f.write_str(&names.join(", "))
            }
        }
    }
}

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TargetVisitor)
    }
}

struct TargetVisitor;

impl<'de> Visitor<'de> for TargetVisitor {
    type Value = Target;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a node index, a list of node indices, or \"aggregator\"")
    }

    fn visit_u64<E: de::Error>(self, index: u64) -> Result<Target, E> {
        let index = usize::try_from(index).map_err(|_| E::custom("node index out of range"))?;
        Ok(Target::Nodes(vec![index]))
    }

    fn visit_i64<E: de::Error>(self, index: i64) -> Result<Target, E> {
        let index =
            u64::try_from(index).map_err(|_| E::custom("a node index is never negative"))?;
        self.visit_u64(index)
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<Target, E> {
        if name == "aggregator" {
            return Ok(Target::Aggregator);
        }
        Err(E::custom(format!("unknown target {name:?}: the only name is \"aggregator\"")))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Target, A::Error> {
        let mut nodes = Vec::new();
        while let Some(index) = seq.next_element::<usize>()? {
            nodes.push(index);
        }
        if nodes.is_empty() {
            return Err(de::Error::custom("an empty list of nodes"));
        }
        Ok(Target::Nodes(nodes))
    }
}

/// One event of a scenario file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// Fires while this round is in progress (right after the round before it closed).
    pub round: u64,
    pub action: Action,
    /// Required for every action but `join` and `attack` (where it names the victim of
    /// `replay-heartbeats`).
    #[serde(default)]
    pub target: Option<Target>,
    /// `join`: how many nodes join (default 1); `attack`: how many joins, deltas or replays a
    /// flood sends, or frames per node.
    #[serde(default)]
    pub count: Option<usize>,
    /// `byzantine`: how the node misbehaves (default `sign-flip`).
    #[serde(default)]
    pub misbehave: Option<Misbehaviour>,
    /// `attack`: what the hostile peer sends.
    #[serde(default)]
    pub attack: Option<Attack>,
    /// `attack`: whom the hostile peer poses as (default `member`).
    #[serde(default, rename = "as")]
    pub posing: Option<Posing>,
    /// `attack`: the longest the attack goes on, in seconds (default 20).
    #[serde(default)]
    pub duration_secs: Option<u64>,
    /// `kill`: the step of the round the kill waits for on its node (default: none, at once).
    #[serde(default)]
    pub after: Option<KillAfter>,
}

/// What a `kill` event waits for its node to do first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KillAfter {
    /// Its masked update of the event's round (or a later one) reached its aggregator, in a
    /// secure-aggregation job: the node drops out after sending, before it helps unmask.
    MaskedUpdate,
}

impl Event {
    /// A `byzantine` event for round 1 and nodes by index: those nodes start misbehaving, since
    /// the job could run past its first round while a node restarts.
    pub fn misbehaves_from_start(&self) -> Option<(&[usize], Misbehaviour)> {
        match (&self.target, self.action) {
            (Some(Target::Nodes(nodes)), Action::Byzantine) if self.round <= 1 => {
                Some((nodes, self.misbehaviour()))
            }
            _ => None,
        }
    }

    /// How a `byzantine` event's node misbehaves.
    pub fn misbehaviour(&self) -> Misbehaviour {
        self.misbehave.unwrap_or(DEFAULT_MISBEHAVIOUR)
    }

    /// `round 3: kill the aggregator`.
    pub fn describe(&self) -> String {
        let whom = match (&self.target, self.action) {
            (_, Action::Join) => format!("{} new node(s)", self.count.unwrap_or(1)),
            (target, Action::Attack) => self.attack_line(target.as_ref()),
            (Some(target), _) => target.to_string(),
            (None, _) => "nobody".to_owned(),
        };
        let how = match (self.action, self.after) {
            (Action::Byzantine, _) => format!(" (misbehave = {})", self.misbehaviour()),
            (Action::Kill, Some(KillAfter::MaskedUpdate)) => {
                " right after its masked update".to_owned()
            }
            _ => String::new(),
        };
        format!("round {}: {} {whom}{how}", self.round, self.action.name())
    }
}

impl Event {
    /// `forge-result as member`, `replay-heartbeats as outsider (victim node2)`.
    fn attack_line(&self, target: Option<&Target>) -> String {
        let attack = self.attack.map_or("(no attack named)", Attack::name);
        let posing = self.posing.unwrap_or_default().name();
        let count = self.count.map(|count| format!(", count {count}")).unwrap_or_default();
        let victim = target.map(|t| format!(" (victim {t})")).unwrap_or_default();
        format!("{attack} as {posing}{count}{victim}")
    }
}

/// An event as it fired, for the report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FiredEvent {
    /// The event as the scenario names it.
    pub event: String,
    /// The round the event was for.
    pub round: u64,
    /// The round in progress when it fired (later than `round` if the job moved on before the
    /// event could fire).
    pub fired_in_round: u64,
    /// Seconds since the testnet started.
    pub at_seconds: f64,
    /// The nodes it was carried out on.
    pub nodes: Vec<String>,
    /// What happened, or why it could not be carried out.
    pub outcome: String,
    pub ok: bool,
}

impl FiredEvent {
    /// The line printed when the event fires.
    pub fn line(&self) -> String {
        let late = if self.fired_in_round > self.round {
            format!(" (late: fired in round {})", self.fired_in_round)
        } else {
            String::new()
        };
        format!(
            "event  {} -> {} at {:.1} s{late}: {}",
            self.event,
            self.nodes.join(", "),
            self.at_seconds,
            self.outcome
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn byzantine(round: u64, target: Target) -> Event {
        let (action, count) = (Action::Byzantine, None);
        Event {
            round,
            action,
            target: Some(target),
            count,
            misbehave: Some(Misbehaviour::Noise),
            attack: None,
            posing: None,
            duration_secs: None,
            after: None,
        }
    }

    #[test]
    fn only_a_round_one_byzantine_event_by_node_index_starts_its_nodes_misbehaving() {
        let first = byzantine(1, Target::Nodes(vec![2, 4]));
        let (nodes, kind) = first.misbehaves_from_start().unwrap();
        assert_eq!((nodes, kind), (&[2, 4][..], Misbehaviour::Noise));
        assert_eq!(byzantine(2, Target::Nodes(vec![2])).misbehaves_from_start(), None);
        assert_eq!(byzantine(1, Target::Aggregator).misbehaves_from_start(), None);
        let kill = Event { action: Action::Kill, ..first };
        assert_eq!(kill.misbehaves_from_start(), None);
    }
}
