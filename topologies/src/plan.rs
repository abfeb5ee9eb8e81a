//! Round plans: from a TAG, a job, a round and the live membership, who trains, which member
//! aggregates each slot (with its failover order), where every update goes, and the rings.

use crate::election::{rank, rotated};
use crate::graph::{ANY_GROUP, Tag, Tier};
use crate::ring::{RingStep, schedule};
use crate::selection::Selection;
use fedmesh_protocol::ids::{JobId, MemberId, Round};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// What a member declares when it joins: its key, its group label and the roles it accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub id: MemberId,
    pub group: String,
    /// The roles it accepts; empty accepts any.
    pub roles: Vec<String>,
    /// Whether peers can dial it directly: elections prefer such members as aggregators.
    pub reachable: bool,
}

impl MemberInfo {
    pub fn accepts(&self, role: &str) -> bool {
        self.roles.is_empty() || self.roles.iter().any(|r| r == role)
    }
}

/// An aggregation slot: a role serving one group label.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SlotId {
    pub role: String,
    pub label: String,
}

impl fmt::Display for SlotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.role, self.label)
    }
}

/// What a slot or a ring receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Input {
    /// A trainer's delta.
    Trainer(MemberId),
    /// A lower slot's partial aggregate (index into [`RoundPlan::slots`]).
    Slot(usize),
    /// A ring's reduced sum, sent up by the ring's first member (index into [`RoundPlan::rings`]).
    Ring(usize),
}

/// Where a trainer's update goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Destination {
    Slot(usize),
    Ring(usize),
}

/// One aggregation slot of a round.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    pub id: SlotId,
    /// 1 for the tier just above the trainers.
    pub tier: usize,
    /// The eligible members in election order: the first aggregates, the rest take over in turn.
    pub ranking: Vec<MemberId>,
    /// The slot this one sends its partial aggregate to; none for the top.
    pub parent: Option<usize>,
    pub inputs: Vec<Input>,
}

impl Slot {
    /// The elected aggregator.
    pub fn aggregator(&self) -> MemberId {
        self.ranking[0]
    }

    /// The first member of the ranking not in `failed`: who aggregates after failovers.
    pub fn aggregator_excluding(&self, failed: &BTreeSet<MemberId>) -> Option<MemberId> {
        self.ranking.iter().find(|member| !failed.contains(member)).copied()
    }
}

/// A ring of trainers that all-reduce their updates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ring {
    pub label: String,
    pub order: Vec<MemberId>,
    /// The slot the ring's first member sends the reduced sum to; none in a pure ring.
    pub parent: Option<usize>,
}

impl Ring {
    /// The member that sends the ring's sum up.
    pub fn uploader(&self) -> MemberId {
        self.order[0]
    }

    /// `member`'s all-reduce steps, if it is in the ring.
    pub fn schedule_of(&self, member: &MemberId) -> Option<Vec<RingStep>> {
        let position = self.order.iter().position(|m| m == member)?;
        Some(schedule(&self.order, position))
    }
}

/// How an assignment names the top slot.
pub const TOP_SLOT: &str = "top";

/// Why no plan can be made for a round.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("no member can train: none accepts role `{role}` with a group the TAG serves")]
    NoTrainers { role: String },
    #[error("no member accepts role `{role}`, so slot `{slot}` has no aggregator")]
    NoAggregator { role: String, slot: String },
    #[error("the assignment names {member} for slot `{slot}`, which it may not aggregate")]
    NotEligible { slot: String, member: MemberId },
    #[error("the assignment names no aggregator for slot `{slot}`")]
    Unassigned { slot: String },
}

/// Everything every member needs to know about one round.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundPlan {
    pub job: JobId,
    pub round: Round,
    /// The selected trainers, sorted by key.
    pub trainers: Vec<MemberId>,
    /// Aggregation slots, tier by tier from the bottom; the top slot is last.
    pub slots: Vec<Slot>,
    pub rings: Vec<Ring>,
    destinations: BTreeMap<MemberId, Destination>,
}

/// One member's duties in a round.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Duties {
    pub trains: bool,
    pub destination: Option<Destination>,
    /// The slots it aggregates (as elected, before any failover).
    pub aggregates: Vec<usize>,
}

impl RoundPlan {
    /// Plans `round` of `job` over the live `members`, as every member computes it, with every
    /// member as eligible as any other to aggregate.
    pub fn compute(
        tag: &Tag,
        job: &JobId,
        round: Round,
        members: &[MemberInfo],
        selection: &Selection,
    ) -> Result<Self, PlanError> {
        Self::compute_vetted(tag, job, round, members, selection, &Vetting::default())
    }

    /// Plans `round` as [`RoundPlan::compute`] does, electing each slot's aggregator among the
    /// `vetting`'s members (sorted by key: those whose updates were accepted) when the slot has
    /// any, and ranking the others after them, as failover only.
    pub fn compute_vetted(
        tag: &Tag,
        job: &JobId,
        round: Round,
        members: &[MemberInfo],
        selection: &Selection,
        vetting: &Vetting<'_>,
    ) -> Result<Self, PlanError> {
        let vetted = vetting.vetted;
        let members = sorted_unique(members);
        let labels = labels_by_group(tag, &members);
        let labelled = |m: &MemberInfo| labels.get(m.group.as_str()).is_some_and(Option::is_some);
        let trainer_tier = tag.trainers();
        let eligible: Vec<MemberId> = members
            .iter()
            .filter(|m| m.accepts(&trainer_tier.role) && labelled(m))
            .map(|m| m.id)
            .collect();
        let trainers = selection.select(job, round, &eligible);
        if trainers.is_empty() {
            return Err(PlanError::NoTrainers { role: trainer_tier.role.clone() });
        }
        let mut plan = Self {
            job: *job,
            round,
            trainers,
            slots: Vec::new(),
            rings: Vec::new(),
            destinations: BTreeMap::new(),
        };
        let mut pending = plan.bottom_inputs(tag, &members, &labels, vetted);
        let mut elected = BTreeSet::new();
        let unreachable: Vec<MemberId> =
            members.iter().filter(|m| !m.reachable).map(|m| m.id).collect();
        for (tier_index, tier) in tag.tiers.iter().enumerate().skip(1) {
            let election = Election {
                vetted,
                unreachable: &unreachable,
                owner: vetting.owner,
                elected: &mut elected,
            };
            pending = plan.fill_tier(tier_index, tier, pending, &members, election)?;
        }
        Ok(plan)
    }

    /// The trainers' inputs to the first aggregating tier, by their labels on the channel up:
    /// one per trainer, or one per ring (led by its first vetted member, when it has one: the
    /// leader of a pure ring announces the round's model).
    fn bottom_inputs(
        &mut self,
        tag: &Tag,
        members: &[&MemberInfo],
        labels: &GroupLabels,
        vetted: &[MemberId],
    ) -> Pending {
        let labels_of = |id: &MemberId| {
            let member = members[members.binary_search_by_key(id, |m| m.id).ok()?];
            labels.get(member.group.as_str())?.as_ref()
        };
        let mut pending = Pending::new();
        if tag.ring.is_none() {
            for id in &self.trainers {
                if let Some((_, up)) = labels_of(id) {
                    add_input(&mut pending, up, Input::Trainer(*id));
                }
            }
            return pending;
        }
        let mut rings: BTreeMap<String, (Vec<MemberId>, String)> = BTreeMap::new();
        for id in &self.trainers {
            let Some((ring_label, up)) = labels_of(id) else { continue };
            let label = ring_label.clone().unwrap_or_default();
            rings.entry(label).or_insert_with(|| (Vec::new(), up.clone())).0.push(*id);
        }
        for (label, (ring_members, up)) in rings {
            let mut order = rank(&self.job, self.round, &format!("ring/{label}"), &ring_members);
            if let Some(first) = order.iter().position(|m| vetted.binary_search(m).is_ok()) {
                order[..=first].rotate_right(1);
            }
            let index = self.rings.len();
            for member in &order {
                self.destinations.insert(*member, Destination::Ring(index));
            }
            self.rings.push(Ring { label, order, parent: None });
            add_input(&mut pending, &up, Input::Ring(index));
        }
        pending
    }

    /// Creates the slots of one aggregating tier for the labels its inputs carry, elects their
    /// aggregators and returns the tier's own inputs to the next tier.
    fn fill_tier(
        &mut self,
        tier_index: usize,
        tier: &Tier,
        by_label: Pending,
        members: &[&MemberInfo],
        mut election: Election,
    ) -> Result<Pending, PlanError> {
        let per_group = tier.down.as_ref().is_some_and(|down| {
            let labels = tier.labels_on(down);
            labels.len() > 1 || labels.contains(&ANY_GROUP)
        });
        let candidates = Candidates::for_tier(tier, members);
        let mut next = Pending::new();
        for (label, inputs) in by_label {
            let id = SlotId { role: tier.role.clone(), label: label.clone() };
            let eligible = candidates.for_slot(&label, per_group);
            let ranking = election.elect(self, &id, tier, eligible)?;
            let index = self.slots.len();
            for input in &inputs {
                self.connect(*input, index);
            }
            self.slots.push(Slot { id, tier: tier_index, ranking, parent: None, inputs });
            if let Some(up) = &tier.up {
                add_input(&mut next, &up_label(tier, &label, up), Input::Slot(index));
            }
        }
        Ok(next)
    }

    fn connect(&mut self, input: Input, slot: usize) {
        match input {
            Input::Trainer(member) => {
                self.destinations.insert(member, Destination::Slot(slot));
            }
            Input::Slot(child) => self.slots[child].parent = Some(slot),
            Input::Ring(ring) => self.rings[ring].parent = Some(slot),
        }
    }

    /// How an assignment names slot `index`: `top` for the top slot, `role/label` otherwise.
    pub fn slot_key(&self, index: usize) -> String {
        let slot = &self.slots[index];
        if slot.parent.is_none() { TOP_SLOT.to_owned() } else { slot.id.to_string() }
    }

    /// Each slot's aggregator by its key, as a coordinator assigns them.
    pub fn aggregators(&self) -> BTreeMap<String, MemberId> {
        (0..self.slots.len()).map(|i| (self.slot_key(i), self.slots[i].aggregator())).collect()
    }

    /// Makes the members a coordinator assigned the aggregators of their slots (the elected
    /// order stays behind them); every slot must be assigned an eligible member.
    pub fn assign_aggregators(
        &mut self,
        assigned: &BTreeMap<String, MemberId>,
    ) -> Result<(), PlanError> {
        for index in 0..self.slots.len() {
            let key = self.slot_key(index);
            let Some(member) = assigned.get(&key).copied() else {
                return Err(PlanError::Unassigned { slot: key });
            };
            let ranking = &mut self.slots[index].ranking;
            let Some(position) = ranking.iter().position(|m| *m == member) else {
                return Err(PlanError::NotEligible { slot: key, member });
            };
            let chosen = ranking.remove(position);
            ranking.insert(0, chosen);
        }
        Ok(())
    }

    /// The top slot, whose aggregator announces the round's model; none for a pure ring.
    pub fn top(&self) -> Option<&Slot> {
        self.slots.iter().find(|slot| slot.parent.is_none())
    }

    /// Where the next global model is fetched: the top aggregator (in a pure ring every member
    /// computes it itself).
    pub fn fetch_from(&self) -> Option<MemberId> {
        self.top().map(Slot::aggregator)
    }

    /// The member that opens the round and announces its model: the top aggregator, or in a pure
    /// ring the first member of the ring.
    pub fn leader(&self) -> Option<MemberId> {
        self.fetch_from().or_else(|| self.rings.first().map(Ring::uploader))
    }

    /// Where `member`'s update goes, if it trains this round.
    pub fn destination(&self, member: &MemberId) -> Option<Destination> {
        self.destinations.get(member).copied()
    }

    /// Everything `member` does this round.
    pub fn duties(&self, member: &MemberId) -> Duties {
        Duties {
            trains: self.trainers.binary_search(member).is_ok(),
            destination: self.destination(member),
            aggregates: (0..self.slots.len())
                .filter(|i| self.slots[*i].aggregator() == *member)
                .collect(),
        }
    }

    /// How many trainers' updates a slot's aggregate covers when every input arrives.
    pub fn trainers_under(&self, slot: usize) -> usize {
        self.trainers_in(Input::Slot(slot)).len()
    }

    /// The trainers whose updates `input` carries when all of them arrive.
    pub fn trainers_in(&self, input: Input) -> Vec<MemberId> {
        match input {
            Input::Trainer(member) => vec![member],
            Input::Slot(slot) => {
                self.slots[slot].inputs.iter().flat_map(|input| self.trainers_in(*input)).collect()
            }
            Input::Ring(ring) => self.rings[ring].order.clone(),
        }
    }

    /// Who sends `input` up, and the group label it carries: the trainer itself (with its slot's
    /// label), a slot's elected aggregator, or a ring's uploader.
    pub fn sender_of(&self, input: Input) -> (MemberId, String) {
        match input {
            Input::Trainer(member) => (member, String::new()),
            Input::Slot(slot) => (self.slots[slot].aggregator(), self.slots[slot].id.label.clone()),
            Input::Ring(ring) => (self.rings[ring].uploader(), self.rings[ring].label.clone()),
        }
    }

    /// The number of aggregating tiers (0 for a pure ring).
    pub fn depth(&self) -> usize {
        self.slots.iter().map(|slot| slot.tier).max().unwrap_or(0)
    }
}

/// The members sorted by key, each once (borrowed: a plan over thousands of members is asked
/// for every round by every member, and copying their labels was much of its cost).
fn sorted_unique(members: &[MemberInfo]) -> Vec<&MemberInfo> {
    let mut sorted: Vec<&MemberInfo> = members.iter().collect();
    sorted.sort_by_key(|member| member.id);
    sorted.dedup_by(|a, b| a.id == b.id);
    sorted
}

/// A tier's inputs by the label they carry up, each label's in the order they were made.
type Pending = BTreeMap<String, Vec<Input>>;

/// Adds an input carrying `label` (the label is copied only the first time it is seen: a tier
/// of thousands of trainers carries a handful of labels).
fn add_input(pending: &mut Pending, label: &str, input: Input) {
    match pending.get_mut(label) {
        Some(inputs) => inputs.push(input),
        None => {
            pending.insert(label.to_owned(), vec![input]);
        }
    }
}

/// Each group's trainer labels (see [`trainer_labels`]), worked out once per group.
type GroupLabels<'a> = BTreeMap<&'a str, Option<(Option<String>, String)>>;

/// The trainer labels of every group among `members`: they depend on the group alone, and
/// working them out for each of thousands of members was much of a plan's cost.
fn labels_by_group<'a>(tag: &Tag, members: &[&'a MemberInfo]) -> GroupLabels<'a> {
    let mut labels = GroupLabels::new();
    for member in members {
        if !labels.contains_key(member.group.as_str()) {
            labels.insert(member.group.as_str(), trainer_labels(tag, &member.group));
        }
    }
    labels
}

/// A trainer's label on the ring channel (if any) and on the channel up (its group when there is
/// no tier above); none if the TAG serves neither for its group.
fn trainer_labels(tag: &Tag, group: &str) -> Option<(Option<String>, String)> {
    let tier = tag.trainers();
    let ring = match &tag.ring {
        Some(channel) => Some(tier.label_for(channel, group)?),
        None => None,
    };
    let up = match &tier.up {
        Some(channel) => tier.label_for(channel, group)?,
        None => ring.clone().unwrap_or_else(|| group.to_owned()),
    };
    Some((ring, up))
}

/// The label a slot serving `label` uses on the channel up: from the association that maps the
/// channel down to `label` (or to any group).
fn up_label(tier: &Tier, label: &str, up: &str) -> String {
    let down = tier.down.as_deref().unwrap_or_default();
    let association = tier
        .associations
        .iter()
        .find(|a| a.get(down).is_some_and(|l| l == label))
        .or_else(|| tier.associations.iter().find(|a| a.get(down).is_some_and(|l| l == ANY_GROUP)))
        .or_else(|| tier.associations.first());
    match association.and_then(|a| a.get(up)) {
        Some(l) if l == ANY_GROUP => label.to_owned(),
        Some(l) => l.clone(),
        None => label.to_owned(),
    }
}

/// The members that accept a tier's role, all of them and by group (sorted by key), sorted out
/// once per tier rather than once per slot.
struct Candidates {
    accepting: Vec<MemberId>,
    by_group: BTreeMap<String, Vec<MemberId>>,
}

impl Candidates {
    fn for_tier(tier: &Tier, members: &[&MemberInfo]) -> Self {
        let mut candidates = Self { accepting: Vec::new(), by_group: BTreeMap::new() };
        for member in members.iter().filter(|m| m.accepts(&tier.role)) {
            candidates.accepting.push(member.id);
            match candidates.by_group.get_mut(&member.group) {
                Some(group) => group.push(member.id),
                None => {
                    candidates.by_group.insert(member.group.clone(), vec![member.id]);
                }
            }
        }
        candidates
    }

    /// Who may aggregate the slot serving `label`: its group's members when the tier serves
    /// groups apart and the group has any, else every member accepting the role.
    fn for_slot(&self, label: &str, per_group: bool) -> &[MemberId] {
        match self.by_group.get(label) {
            Some(group) if per_group => group,
            _ => &self.accepting,
        }
    }
}

/// Who a round elects ahead of the rest: the members vetted (sorted by key; none: everyone
/// alike), and the job's owner, vetted from the start (its rotation starts from it).
#[derive(Debug, Clone, Copy, Default)]
pub struct Vetting<'a> {
    pub vetted: &'a [MemberId],
    pub owner: Option<&'a MemberId>,
}

/// A round's elections: the members vetted to aggregate first, those peers cannot dial
/// (sorted by key), and those already elected to a slot this round.
struct Election<'a> {
    vetted: &'a [MemberId],
    unreachable: &'a [MemberId],
    owner: Option<&'a MemberId>,
    elected: &'a mut BTreeSet<MemberId>,
}

impl Election<'_> {
    /// Ranks the members eligible for a slot, the vetted ones ahead of the rest and, within
    /// each, those peers can dial ahead of those behind NAT (every trainer sends its update to
    /// the aggregator, which a relay would carry), and moves the first one not already elected
    /// elsewhere this round to the front (among the first of those sets that has members), so
    /// duties spread when members allow it; the one the rotation puts first when it is free
    /// (for the top slot, even when not), so the round's aggregator changes every round when
    /// another can take it (a server optimizer's state, for one, goes from aggregator to
    /// aggregator).
    fn elect(
        &mut self,
        plan: &RoundPlan,
        id: &SlotId,
        tier: &Tier,
        eligible: &[MemberId],
    ) -> Result<Vec<MemberId>, PlanError> {
        let slot = id.to_string();
        let mut ranking = Vec::with_capacity(eligible.len());
        let mut pool = 0;
        for preferred in self.preference_order(eligible) {
            ranking.extend(rank(&plan.job, plan.round, &slot, &preferred));
            if pool == 0 {
                pool = ranking.len();
            }
        }
        let free = |m: &MemberId| !self.elected.contains(m);
        // The top slot rotates even onto a member aggregating a group below.
        let top = tier.up.is_none();
        let preferred = rotated(&plan.job, plan.round, &slot, &ranking[..pool], self.owner)
            .filter(|m| top || free(m));
        let preferred = preferred.and_then(|p| ranking.iter().position(|m| *m == p));
        let Some(first_free) = preferred.or_else(|| ranking[..pool].iter().position(free)).or(
            // Everyone eligible already aggregates another slot: the top-ranked doubles up.
            if ranking.is_empty() { None } else { Some(0) },
        ) else {
            return Err(PlanError::NoAggregator { role: tier.role.clone(), slot });
        };
        let primary = ranking.remove(first_free);
        ranking.insert(0, primary);
        self.elected.insert(primary);
        Ok(ranking)
    }

    /// `eligible` in sets by preference: vetted and reachable, vetted behind NAT, the rest
    /// reachable, the rest behind NAT (with nobody vetted, all are alike on that count).
    fn preference_order(&self, eligible: &[MemberId]) -> [Vec<MemberId>; 4] {
        let mut sets: [Vec<MemberId>; 4] = Default::default();
        for member in eligible {
            let vetted = self.vetted.is_empty() || self.vetted.binary_search(member).is_ok();
            let reachable = self.unreachable.binary_search(member).is_err();
            sets[usize::from(!vetted) * 2 + usize::from(!reachable)].push(*member);
        }
        sets
    }
}
