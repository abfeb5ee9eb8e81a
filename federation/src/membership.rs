//! Who is in a job: members as their signed joins declare them, when each was last heard from,
//! and the live view that round plans are computed over (kept until a join, a leave, a revival
//! or the first expiry changes it, so asking for it on every tick costs nothing).
//!
//! A simulator runs thousands of members' machines in one process, each knowing every member
//! and hearing every heartbeat, so an entry is small and found in one hash lookup: the
//! declaration is shared process-wide ([`crate::shared`]), the model a member holds is an index
//! into a short table of models, and the whole map is shared with the snapshots taken of it
//! until it next changes. Whatever is listed is sorted by key.
//!
//! A join costs nothing to send from a fresh key, so a member counts only once it has proven it
//! runs: its first heartbeat after the join. Until then it is a newcomer: not in the live view
//! rounds are planned over, not in the count the job's cadence follows, and one of at most
//! `max(NEWCOMERS_FLOOR, proven members)` kept, dropped when silent for a while. A
//! flood of joins from fresh keys fills that queue and no more: the job's rounds never see it.

use crate::cadence::Cadence;
use crate::keyhash::KeyHashing;
use crate::shared::{self, Declared};
use fedmesh_protocol::ids::{ContentHash, MemberId, Round};
use fedmesh_protocol::message::Join;
use fedmesh_topologies::MemberInfo;
use serde::{Deserialize, Serialize};
use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// How many distinct models the table of held models grows to before the models no member
/// holds any more are dropped from it.
const MODELS_KEPT: usize = 64;
/// The table index that stands for no model.
const NO_MODEL: u32 = u32::MAX;
/// How many parts of the key space a membership's digest summarises separately (by the first
/// ten bits of a key): two memberships that differ by a hundred members of ten thousand differ
/// in about a hundred parts, and only those parts' members are sent.
pub const DIGEST_PARTS: usize = 1_024;
/// Most members listed in answer to a digest (the rest follow in the next pull).
pub const MAX_LISTED: usize = 2_048;
/// Newcomers (joined, no heartbeat yet) a membership keeps at least room for; it keeps as many
/// as it has proven members when that is more, so a large job's start (thousands joining within
/// a second, each proven within a heartbeat interval) fills it no faster than it drains.
pub const NEWCOMERS_FLOOR: usize = 1_024;

/// A summary of the members a node knows, to find where another node's membership differs
/// without sending either: per part of the key space, the XOR of its members' keys' bytes 8 to
/// 16 (keys are public keys, evenly spread).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest(pub Vec<u64>);

/// The part of the key space a key falls in.
fn part_of(member: &MemberId) -> usize {
    usize::from(u16::from_be_bytes([member.0[0], member.0[1]])) * DIGEST_PARTS / 65_536
}

/// A key's share of its part's digest.
fn fold_of(member: &MemberId) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&member.0[8..16]);
    u64::from_le_bytes(bytes)
}

/// One member of a job, as listed and persisted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    pub info: MemberInfo,
    pub samples: u64,
    pub last_seen_ms: u64,
    /// The round its last heartbeat said it is in (0 before one).
    #[serde(default)]
    pub round_heard: Round,
    /// The newest global model it is known to hold, with the round that made it: where a model
    /// is fetched first.
    #[serde(default)]
    pub holds: Option<(Round, ContentHash)>,
    /// Whether it was heard beat since it joined (a newcomer is not planned with).
    #[serde(default)]
    pub proven: bool,
}

/// A member's declaration as the key of its entry: ordered by the member's key.
#[derive(Debug, Clone)]
struct Key(Arc<Declared>);

impl Borrow<MemberId> for Key {
    fn borrow(&self) -> &MemberId {
        &self.0.info.id
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.0.info.id == other.0.info.id
    }
}

impl Eq for Key {}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.info.id.hash(state);
    }
}

impl Key {
    fn id(&self) -> &MemberId {
        &self.0.info.id
    }
}

/// What is known of a member beside its declaration (rounds saturate at `u32::MAX`, past any
/// job's last round), with the send times of its newest join and heartbeat: the high-water
/// marks a replayed copy falls below.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Entry {
    last_seen_ms: u64,
    join_sent_ms: u64,
    beat_sent_ms: u64,
    round_heard: u32,
    held_round: u32,
    /// An index into the table of models, or `NO_MODEL`.
    held_model: u32,
    /// Heard beat since it joined.
    proven: bool,
}

impl Entry {
    /// Notes that the member holds model `index`, made by `round`, unless it is known to hold a
    /// newer one.
    fn hold(&mut self, round: Round, index: u32) {
        let round = narrow(round);
        if self.held_model == NO_MODEL || round >= self.held_round {
            (self.held_round, self.held_model) = (round, index);
        }
    }
}

fn narrow(round: Round) -> u32 {
    u32::try_from(round).unwrap_or(u32::MAX)
}

/// The members and the models they hold (shared with snapshots until it changes), when the
/// members that left the newest `LEAVES_KEPT` times sent their leaves, how many members are
/// proven, and the newcomers in the order they joined.
#[derive(Debug, Clone, Default)]
struct Known {
    members: HashMap<Key, Entry, KeyHashing>,
    models: Vec<ContentHash>,
    /// Members that left: when they sent their leave, and what they had declared (an update
    /// of theirs sent before they left still weighs the samples they declared, and a round
    /// opened just before they left still names them).
    left: HashMap<MemberId, Left, KeyHashing>,
    left_order: VecDeque<MemberId>,
    proven: usize,
    newcomers: VecDeque<MemberId>,
}

/// A member that left, as remembered.
#[derive(Debug, Clone)]
struct Left {
    sent_at_ms: u64,
    samples: u64,
    info: MemberInfo,
}

/// How many members that left a membership remembers, so that their old joins replayed do not
/// bring them back.
const LEAVES_KEPT: usize = 1_024;

/// A join, heartbeat or leave sent before the newest one heard from its member (or, for a
/// heartbeat, at the same time): a copy replayed, refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replayed {
    pub sent_at_ms: u64,
    pub newest_ms: u64,
}

/// Why a join was not recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Replayed(Replayed),
    /// A new key while the newcomers kept are at their bound (`room`): it joins again later.
    Crowded {
        room: usize,
    },
}

/// A member's signed sign of life, as [`Membership::replay_of`] checks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignOfLife {
    Join,
    Heartbeat,
    Leave,
}

impl SignOfLife {
    /// As a refusal names it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Join => "join",
            Self::Heartbeat => "heartbeat",
            Self::Leave => "leave",
        }
    }
}

/// What a heartbeat told of its member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    /// Not a member (its join was missed, or it never joined).
    Unknown,
    /// A member heard beat before.
    Again,
    /// A newcomer's first: it is proven, and planned with from now on.
    First,
}

impl Known {
    /// How many newcomers it keeps at most.
    fn newcomer_room(&self) -> usize {
        NEWCOMERS_FLOOR.max(self.proven)
    }

    /// Drops the newcomers silent past `grace_ms` at `now_ms` (those first in the queue: the
    /// oldest joins) and the queue's entries of newcomers proven or gone since.
    fn collect_newcomers(&mut self, now_ms: u64, grace_ms: u64) {
        while let Some(first) = self.newcomers.front() {
            match self.members.get(first) {
                Some(entry) if !entry.proven => {
                    if now_ms.saturating_sub(entry.last_seen_ms) <= grace_ms {
                        return;
                    }
                    self.members.remove(first);
                }
                _ => {}
            }
            self.newcomers.pop_front();
        }
    }

    /// Remembers that `member`, which had declared `samples` and `info`, left with a leave sent
    /// at `sent_at_ms`.
    fn remember_leave(
        &mut self,
        member: MemberId,
        sent_at_ms: u64,
        samples: u64,
        info: MemberInfo,
    ) {
        if self.left.insert(member, Left { sent_at_ms, samples, info }).is_none() {
            self.left_order.push_back(member);
        }
        while self.left_order.len() > LEAVES_KEPT {
            if let Some(oldest) = self.left_order.pop_front() {
                self.left.remove(&oldest);
            }
        }
    }

    /// The index of `model` in the table, added if new (after dropping unheld models when the
    /// table is full).
    fn model_index(&mut self, model: ContentHash) -> u32 {
        if let Some(index) = self.models.iter().rposition(|m| *m == model) {
            return index as u32;
        }
        if self.models.len() >= MODELS_KEPT {
            self.drop_unheld_models();
        }
        self.models.push(model);
        (self.models.len() - 1) as u32
    }

    /// Keeps only the models some member holds, in their order.
    fn drop_unheld_models(&mut self) {
        let mut held = vec![false; self.models.len()];
        for entry in self.members.values().filter(|e| e.held_model != NO_MODEL) {
            held[entry.held_model as usize] = true;
        }
        let mut renumbered = vec![NO_MODEL; self.models.len()];
        let mut kept = Vec::new();
        for (index, model) in self.models.iter().enumerate().filter(|(i, _)| held[*i]) {
            renumbered[index] = kept.len() as u32;
            kept.push(*model);
        }
        for entry in self.members.values_mut().filter(|e| e.held_model != NO_MODEL) {
            entry.held_model = renumbered[entry.held_model as usize];
        }
        self.models = kept;
    }

    /// Notes that a member holds `model`, made by `round`, unless it is known to hold a newer
    /// one.
    fn hold(&mut self, member: &MemberId, round: Round, model: ContentHash) {
        let index = self.model_index(model);
        if let Some(entry) = self.members.get_mut(member) {
            entry.hold(round, index);
        }
    }

    /// The members in key order.
    fn sorted(&self) -> Vec<(&Key, &Entry)> {
        let mut members: Vec<(&Key, &Entry)> = self.members.iter().collect();
        members.sort_unstable_by(|(a, _), (b, _)| a.id().cmp(b.id()));
        members
    }

    /// The listed form of one entry.
    fn member(&self, key: &Key, entry: &Entry) -> Member {
        let holds = self.models.get(entry.held_model as usize);
        Member {
            info: key.0.info.clone(),
            samples: key.0.samples,
            last_seen_ms: entry.last_seen_ms,
            round_heard: Round::from(entry.round_heard),
            holds: holds.map(|model| (Round::from(entry.held_round), *model)),
            proven: entry.proven,
        }
    }
}

/// Every member a node has heard join a job and not leave.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(from = "Persisted", into = "Persisted")]
pub struct Membership {
    known: Arc<Known>,
    /// The live members as last computed, until something but time passing changes them.
    live: Option<LiveView>,
}

/// A membership as persisted: its members by key.
#[derive(Serialize, Deserialize)]
struct Persisted {
    members: BTreeMap<MemberId, Member>,
}

impl From<Membership> for Persisted {
    fn from(membership: Membership) -> Self {
        Self { members: membership.all().map(|m| (m.info.id, m)).collect() }
    }
}

impl From<Persisted> for Membership {
    fn from(persisted: Persisted) -> Self {
        let mut known = Known::default();
        for member in persisted.members.into_values() {
            let id = member.info.id;
            // The high-water marks are not persisted: the first message after a restart sets them.
            let entry = Entry {
                last_seen_ms: member.last_seen_ms,
                join_sent_ms: 0,
                beat_sent_ms: 0,
                round_heard: narrow(member.round_heard),
                held_round: 0,
                held_model: NO_MODEL,
                proven: member.proven,
            };
            known.proven += usize::from(member.proven);
            if !member.proven {
                known.newcomers.push_back(id);
            }
            let declared = Declared { info: member.info, samples: member.samples };
            known.members.insert(Key(shared::declaration(declared)), entry);
            if let Some((round, model)) = member.holds {
                known.hold(&id, round, model);
            }
        }
        Self { known: Arc::new(known), live: None }
    }
}

/// The live members at some time, sorted by key, and until when they stay the live ones if
/// nothing is heard.
#[derive(Debug, Clone)]
struct LiveView {
    members: Arc<[MemberInfo]>,
    /// The earliest time a live member's silence outlasts the liveness window.
    valid_until_ms: u64,
}

/// Two memberships are equal when their members are (the live view is derived).
impl PartialEq for Membership {
    fn eq(&self, other: &Self) -> bool {
        self.all().eq(other.all())
    }
}

impl Membership {
    /// How often its members speak, and how long silence is tolerated: set by the proven
    /// members (newcomers from fresh keys cannot slow the job's heartbeats down, nor keep
    /// themselves live longer).
    pub fn cadence(&self) -> Cadence {
        Cadence::for_members(self.known.proven)
    }

    /// How long a silent member still counts as live, in a job of this size.
    pub fn liveness_ms(&self) -> u64 {
        self.cadence().liveness_ms()
    }

    /// How long a newcomer is kept without a heartbeat: the liveness window, and at least two
    /// heartbeat intervals of a job of every member known (its first heartbeat, or the next
    /// if that copy was lost; a large job's first heartbeats are spread over seconds).
    fn newcomer_grace_ms(&self) -> u64 {
        let beat = Cadence::for_members(self.len()).heartbeat_ms();
        self.liveness_ms().max(2 * beat)
    }

    /// Whether a member last heard at `last_seen_ms` counts as live at `now_ms`.
    fn is_fresh(&self, last_seen_ms: u64, now_ms: u64) -> bool {
        now_ms.saturating_sub(last_seen_ms) <= self.liveness_ms()
    }

    /// Records another member's join (again); says whether the member is new (a newcomer, see
    /// the module doc; refused when there is no room for one). A join sent before the newest
    /// one heard from its member, or before its leave, is a replay; a copy of the newest (it
    /// came on the topic and as an answer) changes nothing.
    pub fn join(&mut self, join: &Join, now_ms: u64) -> Result<bool, Refused> {
        let grace = self.newcomer_grace_ms();
        let known = Arc::make_mut(&mut self.known);
        if !known.members.contains_key(&join.member) {
            known.collect_newcomers(now_ms, grace);
            if known.newcomers.len() >= known.newcomer_room() {
                return Err(Refused::Crowded { room: known.newcomer_room() });
            }
        }
        self.record_join(join, now_ms).map_err(Refused::Replayed)
    }

    /// Records this member's own join: never crowded out.
    pub fn join_own(&mut self, join: &Join, now_ms: u64) {
        // Its own join is never older than the last it sent (the clock only moves on).
        let _ = self.record_join(join, now_ms);
    }

    /// Whether `member`'s `kind` sent at `sent_at_ms` is a replay, the same check that recording
    /// it makes, without recording anything: a node asks before it verifies the message's
    /// signature (at 200 members, late gossip brought each node twice as many copies of old
    /// heartbeats and joins as new ones). A join sent no later than the member's leave, or
    /// before its newest join; a heartbeat sent no later than its newest; a leave sent before
    /// its newest join.
    pub fn replay_of(
        &self,
        kind: SignOfLife,
        member: &MemberId,
        sent_at_ms: u64,
    ) -> Option<Replayed> {
        let replayed = |newest_ms| Some(Replayed { sent_at_ms, newest_ms });
        let Some(entry) = self.known.members.get(member) else {
            let left = self.known.left.get(member).map(|left| left.sent_at_ms);
            return match left {
                Some(left_ms) if kind == SignOfLife::Join && sent_at_ms <= left_ms => {
                    replayed(left_ms)
                }
                _ => None,
            };
        };
        match kind {
            SignOfLife::Heartbeat if sent_at_ms <= entry.beat_sent_ms => {
                replayed(entry.beat_sent_ms)
            }
            SignOfLife::Join | SignOfLife::Leave if sent_at_ms < entry.join_sent_ms => {
                replayed(entry.join_sent_ms)
            }
            _ => None,
        }
    }

    fn record_join(&mut self, join: &Join, now_ms: u64) -> Result<bool, Replayed> {
        if let Some(replayed) = self.replay_of(SignOfLife::Join, &join.member, join.sent_at_ms) {
            return Err(replayed);
        }
        let liveness = self.liveness_ms();
        let known = Arc::make_mut(&mut self.known);
        let declared = Declared {
            info: MemberInfo {
                id: join.member,
                group: join.group.clone(),
                roles: join.roles.clone(),
                reachable: join.reachable,
            },
            samples: join.samples,
        };
        let Some((key, entry)) = known.members.get_key_value(&join.member) else {
            let entry = Entry {
                last_seen_ms: now_ms,
                join_sent_ms: join.sent_at_ms,
                beat_sent_ms: 0,
                round_heard: 0,
                held_round: 0,
                held_model: NO_MODEL,
                proven: false,
            };
            known.members.insert(Key(shared::declaration(declared)), entry);
            known.newcomers.push_back(join.member);
            return Ok(true);
        };
        if join.sent_at_ms == entry.join_sent_ms {
            return Ok(false);
        }
        // A repeated join (most joins in a large job) changes nothing but the times.
        let silent = now_ms.saturating_sub(entry.last_seen_ms) > liveness;
        if entry.proven && (key.0.info != declared.info || silent) {
            self.live = None;
        }
        let redeclared = *key.0 != declared;
        let entry = Entry { last_seen_ms: now_ms, join_sent_ms: join.sent_at_ms, ..*entry };
        if redeclared {
            known.members.remove(&join.member);
            known.members.insert(Key(shared::declaration(declared)), entry);
        } else if let Some(kept) = known.members.get_mut(&join.member) {
            *kept = entry;
        }
        Ok(false)
    }

    /// Records a leave sent at `sent_at_ms`; says whether the member was known. A leave sent
    /// before the member's newest join is a replay (it left, then joined again).
    pub fn leave(&mut self, member: &MemberId, sent_at_ms: u64) -> Result<bool, Replayed> {
        if let Some(replayed) = self.replay_of(SignOfLife::Leave, member, sent_at_ms) {
            return Err(replayed);
        }
        let known = Arc::make_mut(&mut self.known);
        let Some(entry) = known.members.get(member) else { return Ok(false) };
        if entry.proven {
            self.live = None;
            known.proven -= 1;
        }
        let Some((key, _)) = known.members.remove_entry(member) else { return Ok(false) };
        known.remember_leave(*member, sent_at_ms, key.0.samples, key.0.info.clone());
        Ok(true)
    }

    /// Records this member's own heartbeat: a sign of life as others see it, which proves it.
    pub fn beat_own(&mut self, me: &MemberId, now_ms: u64) {
        self.touch(me, now_ms);
        self.prove(me);
    }

    /// Records a member's heartbeat sent at `sent_at_ms`: a sign of life, the round it is in
    /// and the model it holds (the previous round's result). A newcomer's first proves it. One
    /// sent no later than the newest heard from it is a replay: it keeps no one live.
    pub fn heartbeat(
        &mut self,
        member: &MemberId,
        (round, model): (Round, ContentHash),
        sent_at_ms: u64,
        now_ms: u64,
    ) -> Result<Beat, Replayed> {
        if !self.contains(member) {
            return Ok(Beat::Unknown);
        }
        if let Some(replayed) = self.replay_of(SignOfLife::Heartbeat, member, sent_at_ms) {
            return Err(replayed);
        }
        let index = Arc::make_mut(&mut self.known).model_index(model);
        let Some(entry) = self.touch(member, now_ms) else { return Ok(Beat::Unknown) };
        entry.beat_sent_ms = sent_at_ms;
        entry.round_heard = narrow(round);
        entry.hold(round.saturating_sub(1), index);
        Ok(if self.prove(member) { Beat::First } else { Beat::Again })
    }

    /// Marks a known member proven (heard beat since its join); says whether it was a newcomer.
    fn prove(&mut self, member: &MemberId) -> bool {
        let known = Arc::make_mut(&mut self.known);
        match known.members.get_mut(member) {
            Some(entry) if !entry.proven => {
                entry.proven = true;
                known.proven += 1;
                self.live = None;
                true
            }
            _ => false,
        }
    }

    /// A known member's sign of life, and its entry for more of what it said.
    fn touch(&mut self, member: &MemberId, now_ms: u64) -> Option<&mut Entry> {
        let liveness = self.liveness_ms();
        let entry = Arc::make_mut(&mut self.known).members.get_mut(member)?;
        if entry.proven && now_ms.saturating_sub(entry.last_seen_ms) > liveness {
            self.live = None; // silent until now: it comes back to life
        }
        entry.last_seen_ms = entry.last_seen_ms.max(now_ms);
        Some(entry)
    }

    /// Notes that a known member holds `model`, the result of `round`.
    pub fn holds(&mut self, member: &MemberId, round: Round, model: ContentHash) {
        if self.contains(member) {
            Arc::make_mut(&mut self.known).hold(member, round, model);
        }
    }

    /// The members known to hold `model` as their newest model, by key.
    pub fn holders_of(&self, model: &ContentHash) -> impl Iterator<Item = MemberId> + use<> {
        let index = self.model_index(model);
        let holds = |(_, entry): &(&Key, &Entry)| Some(entry.held_model) == index;
        let mut holders: Vec<MemberId> =
            self.known.members.iter().filter(holds).map(|(key, _)| *key.id()).collect();
        holders.sort_unstable();
        holders.into_iter()
    }

    /// Whether a known member was heard to hold `model` as its newest model.
    pub fn is_holding(&self, member: &MemberId, model: &ContentHash) -> bool {
        let index = self.model_index(model);
        let entry = self.known.members.get(member);
        entry.is_some_and(|e| index.is_some_and(|index| e.held_model == index))
    }

    /// Where `model` is in the table of models members were heard to hold.
    fn model_index(&self, model: &ContentHash) -> Option<u32> {
        self.known.models.iter().position(|m| m == model).map(|i| i as u32)
    }

    /// Whether a known member was heard to hold a model made by `round` or a later round.
    pub fn holds_past(&self, member: &MemberId, round: Round) -> bool {
        let entry = self.known.members.get(member);
        entry.is_some_and(|e| e.held_model != NO_MODEL && Round::from(e.held_round) >= round)
    }

    /// The round a known member's last heartbeat said it is in.
    pub fn round_heard(&self, member: &MemberId) -> Option<Round> {
        self.known.members.get(member).map(|m| Round::from(m.round_heard))
    }

    /// How many samples a member declared when it joined (its update weighs no more), also for
    /// one that left since (the last `LEAVES_KEPT`): an update it sent before its leave, inside
    /// a group's partial aggregate, still weighs what it declared.
    pub fn declared_samples(&self, member: &MemberId) -> Option<u64> {
        let known = self.known.members.get_key_value(member).map(|(key, _)| key.0.samples);
        known.or_else(|| self.known.left.get(member).map(|left| left.samples))
    }

    /// What a member declared when it joined.
    pub fn info(&self, member: &MemberId) -> Option<MemberInfo> {
        self.known.members.get_key_value(member).map(|(key, _)| key.0.info.clone())
    }

    /// What a member, or one that left (the last `LEAVES_KEPT`), declared when it joined: a
    /// round opened just before a member left still names it.
    pub fn info_even_if_left(&self, member: &MemberId) -> Option<MemberInfo> {
        self.info(member).or_else(|| self.known.left.get(member).map(|left| left.info.clone()))
    }

    /// Whether `member` left (one of the last `LEAVES_KEPT` that did) and did not join again.
    pub fn has_left(&self, member: &MemberId) -> bool {
        self.known.left.contains_key(member) && !self.contains(member)
    }

    /// How many members there are, newcomers included.
    pub fn len(&self) -> usize {
        self.known.members.len()
    }

    /// How many members are proven (heard beat since they joined).
    pub fn proven(&self) -> usize {
        self.known.proven
    }

    pub fn is_empty(&self) -> bool {
        self.known.members.is_empty()
    }

    pub fn contains(&self, member: &MemberId) -> bool {
        self.known.members.contains_key(member)
    }

    /// Whether `member` is known and heard from within the liveness window of `now_ms`.
    pub fn is_live(&self, member: &MemberId, now_ms: u64) -> bool {
        self.known.members.get(member).is_some_and(|m| self.is_fresh(m.last_seen_ms, now_ms))
    }

    /// The proven members heard from within the liveness window of `now_ms`, sorted by key (a
    /// list shared with every equal one in the process).
    pub fn live(&mut self, now_ms: u64) -> Arc<[MemberInfo]> {
        match &self.live {
            Some(view) if now_ms <= view.valid_until_ms => view.members.clone(),
            _ => {
                let view = self.compute_live(now_ms);
                let members = view.members.clone();
                self.live = Some(view);
                members
            }
        }
    }

    /// The same members as `live`, for a reader that holds the membership shared: the kept view
    /// when it still holds, else computed afresh and not kept.
    pub fn live_at(&self, now_ms: u64) -> Arc<[MemberInfo]> {
        match &self.live {
            Some(view) if now_ms <= view.valid_until_ms => view.members.clone(),
            _ => self.compute_live(now_ms).members,
        }
    }

    fn compute_live(&self, now_ms: u64) -> LiveView {
        let liveness = self.liveness_ms();
        let mut live: Vec<(&Key, &Entry)> = self
            .known
            .members
            .iter()
            .filter(|(_, entry)| entry.proven && self.is_fresh(entry.last_seen_ms, now_ms))
            .collect();
        live.sort_unstable_by(|(a, _), (b, _)| a.id().cmp(b.id()));
        let first_expiry = live.iter().map(|(_, e)| e.last_seen_ms.saturating_add(liveness)).min();
        let members: Vec<&MemberInfo> = live.into_iter().map(|(key, _)| &key.0.info).collect();
        LiveView {
            members: shared::member_list_of(&members),
            valid_until_ms: first_expiry.unwrap_or(u64::MAX),
        }
    }

    /// The live proven member but `except` at position `draw` modulo their number, in key order; found
    /// without listing the live view (a newcomer's changes with every member it learns of, and
    /// listing it again for every pull took most of a 10,000-member job's time).
    pub fn drawn_live(&self, draw: u64, except: &MemberId, now_ms: u64) -> Option<MemberId> {
        let mut live: Vec<&MemberId> = self
            .known
            .members
            .iter()
            .filter(|(key, e)| {
                key.id() != except && e.proven && self.is_fresh(e.last_seen_ms, now_ms)
            })
            .map(|(key, _)| key.id())
            .collect();
        if live.is_empty() {
            return None;
        }
        let position = (draw % live.len() as u64) as usize;
        let (_, drawn, _) = live.select_nth_unstable(position);
        Some(**drawn)
    }

    /// Every member, by key.
    pub fn all(&self) -> impl Iterator<Item = Member> + '_ {
        self.known.sorted().into_iter().map(|(key, entry)| self.known.member(key, entry))
    }

    /// The digest of the members known (see [`Digest`]).
    pub fn digest(&self) -> Digest {
        let mut parts = vec![0u64; DIGEST_PARTS];
        for key in self.known.members.keys() {
            parts[part_of(key.id())] ^= fold_of(key.id());
        }
        Digest(parts)
    }

    /// The members known in the parts of the key space where `theirs` (another node's digest)
    /// differs, by key, at most `MAX_LISTED`; none for a digest of another shape.
    pub fn differing(&self, theirs: &Digest) -> Vec<MemberId> {
        let ours = self.digest();
        if theirs.0.len() != ours.0.len() {
            return Vec::new();
        }
        let differs = |id: &MemberId| ours.0[part_of(id)] != theirs.0[part_of(id)];
        let mut listed: Vec<MemberId> =
            self.known.members.keys().map(Key::id).filter(|id| differs(id)).copied().collect();
        listed.sort_unstable();
        listed.truncate(MAX_LISTED);
        listed
    }

    /// Every member's key, in order.
    pub fn ids(&self) -> impl Iterator<Item = MemberId> + use<> {
        let mut ids: Vec<MemberId> = self.known.members.keys().map(|key| *key.id()).collect();
        ids.sort_unstable();
        ids.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedmesh_protocol::ids::JobId;

    fn join(member: u8) -> Join {
        Join {
            job: JobId(ContentHash::of(b"j")),
            member: MemberId([member; 32]),
            group: "eu".into(),
            roles: vec![],
            samples: 10,
            reachable: true,
            sent_at_ms: 0,
            ticket: None,
        }
    }

    /// `join` as sent at `at`.
    fn sent(join: Join, at: u64) -> Join {
        Join { sent_at_ms: at, ..join }
    }

    /// A heartbeat of member `member` sent and heard at `at`, in round 1.
    fn beat(members: &mut Membership, member: u8, at: u64) -> Result<Beat, Replayed> {
        members.heartbeat(&MemberId([member; 32]), (1, ContentHash::of(b"m")), at, at)
    }

    /// Member `member` joined at `at` and proven by a heartbeat right after.
    fn joined(members: &mut Membership, member: u8, at: u64) {
        members.join(&sent(join(member), at), at).expect("a join");
        assert_eq!(beat(members, member, at + 1), Ok(Beat::First));
    }

    #[test]
    fn live_members_are_those_heard_from_recently() {
        let mut members = Membership::default();
        joined(&mut members, 1, 1_000);
        joined(&mut members, 2, 1_000);
        let again = sent(join(2), 1_500);
        assert_eq!(members.join(&again, 1_500), Ok(false), "a repeated join is not a new member");
        assert_eq!(beat(&mut members, 1, 9_000), Ok(Beat::Again));
        assert_eq!(beat(&mut members, 3, 9_000), Ok(Beat::Unknown), "unknown stays unknown");
        assert_eq!(members.liveness_ms(), 10_000, "a small job's window");
        let live: Vec<MemberId> = members.live(12_000).iter().map(|m| m.id).collect();
        assert_eq!(live, [MemberId([1; 32])]);
        assert!(members.is_live(&MemberId([1; 32]), 12_000));
        assert!(!members.is_live(&MemberId([2; 32]), 12_000));
        assert_eq!(members.leave(&MemberId([1; 32]), 12_000), Ok(true));
        assert!(members.live(12_000).is_empty());
        assert_eq!(members.proven(), 1);
    }

    #[test]
    fn the_kept_live_view_follows_expiries_revivals_and_proofs() {
        let ids = |live: Arc<[MemberInfo]>| live.iter().map(|m| m.id.0[0]).collect::<Vec<_>>();
        let mut members = Membership::default();
        joined(&mut members, 1, 1_000);
        joined(&mut members, 2, 5_000);
        let first = members.live(6_000);
        assert!(Arc::ptr_eq(&first, &members.live(10_000)), "nothing changed: kept");
        beat(&mut members, 2, 10_500).expect("a beat");
        assert!(Arc::ptr_eq(&first, &members.live(10_900)), "a live member heard: kept");
        assert_eq!(ids(members.live(11_002)), [2], "member 1 fell silent at 11 s");
        beat(&mut members, 1, 12_000).expect("a beat");
        assert_eq!(ids(members.live(12_000)), [1, 2], "member 1 came back");
        members.join(&sent(join(3), 12_500), 12_500).expect("a join");
        assert!(Arc::ptr_eq(&members.live(12_000), &members.live(12_500)), "a newcomer: kept");
        assert_eq!(beat(&mut members, 3, 12_550), Ok(Beat::First));
        assert_eq!(ids(members.live(12_550)), [1, 2, 3], "the newcomer proven");
        let mut moved = sent(join(3), 12_600);
        moved.group = "us".into();
        members.join(&moved, 12_600).expect("a join");
        assert_eq!(members.live(12_600)[2].group, "us", "a member's new declaration");
    }

    #[test]
    fn a_member_holds_the_newest_model_it_was_heard_with() {
        let (old, new) = (ContentHash::of(b"round 1"), ContentHash::of(b"round 2"));
        let mut members = Membership::default();
        members.join(&join(1), 0).expect("a join");
        members.join(&join(2), 0).expect("a join");
        let beat = members.heartbeat(&MemberId([1; 32]), (3, new), 100, 100);
        assert_eq!(beat, Ok(Beat::First), "in round 3, holds round 2's");
        members.holds(&MemberId([1; 32]), 1, old);
        members.holds(&MemberId([2; 32]), 1, old);
        members.holds(&MemberId([9; 32]), 1, old);
        assert_eq!(members.holders_of(&new).collect::<Vec<_>>(), [MemberId([1; 32])]);
        assert_eq!(members.holders_of(&old).collect::<Vec<_>>(), [MemberId([2; 32])]);
        assert_eq!(members.round_heard(&MemberId([1; 32])), Some(3));
        members.join(&sent(join(1), 200), 200).expect("a newer join");
        assert_eq!(members.round_heard(&MemberId([1; 32])), Some(3), "a repeated join keeps it");
        let stranger = members.heartbeat(&MemberId([9; 32]), (3, new), 100, 100);
        assert_eq!(stranger, Ok(Beat::Unknown), "not a member");
    }

    #[test]
    fn a_member_that_left_still_weighs_what_it_declared() {
        let mut members = Membership::default();
        joined(&mut members, 1, 1_000);
        assert_eq!(members.leave(&MemberId([1; 32]), 2_000), Ok(true));
        assert!(!members.contains(&MemberId([1; 32])), "it is no member any more");
        assert_eq!(
            members.declared_samples(&MemberId([1; 32])),
            Some(10),
            "its update sent before"
        );
        assert_eq!(members.declared_samples(&MemberId([2; 32])), None);
    }

    #[test]
    fn replayed_joins_heartbeats_and_leaves_are_refused() {
        let mut members = Membership::default();
        let id = MemberId([1; 32]);
        let model = ContentHash::of(b"round 1");
        let replayed =
            |sent_at_ms, newest_ms| Err(Refused::Replayed(Replayed { sent_at_ms, newest_ms }));
        members.join(&sent(join(1), 1_000), 1_000).expect("a join");
        assert_eq!(members.heartbeat(&id, (2, model), 5_000, 5_000), Ok(Beat::First));
        let replay = members.heartbeat(&id, (2, model), 5_000, 30_000);
        assert_eq!(replay, Err(Replayed { sent_at_ms: 5_000, newest_ms: 5_000 }));
        assert!(!members.is_live(&id, 30_000), "a dead member's heartbeat replayed keeps it dead");
        let older = members.join(&sent(join(1), 900), 30_000);
        assert_eq!(older, replayed(900, 1_000));
        members.join(&sent(join(1), 31_000), 31_000).expect("it joins again");
        let old_leave = members.leave(&id, 20_000);
        assert_eq!(old_leave, Err(Replayed { sent_at_ms: 20_000, newest_ms: 31_000 }));
        assert_eq!(members.leave(&id, 40_000), Ok(true), "it leaves");
        let rejoin_replayed = members.join(&sent(join(1), 31_000), 41_000);
        assert_eq!(rejoin_replayed, replayed(31_000, 40_000));
        assert!(!members.contains(&id), "its old join replayed does not bring it back");
    }

    /// A join from fresh key number `n`.
    fn fresh(n: u32) -> Join {
        let mut key = [0xee; 32];
        key[..4].copy_from_slice(&n.to_be_bytes());
        Join { member: MemberId(key), ..join(0) }
    }

    #[test]
    fn a_flood_of_joins_from_fresh_keys_stays_out_of_the_live_view_and_the_cadence() {
        let mut members = Membership::default();
        joined(&mut members, 1, 1_000);
        joined(&mut members, 2, 1_000);
        joined(&mut members, 3, 1_000);
        let (view, cadence) = (members.live(2_000), members.cadence());
        let mut crowded = 0;
        for n in 0..3_000 {
            match members.join(&fresh(n), 2_000) {
                Ok(true) => {}
                Err(Refused::Crowded { room }) => {
                    assert_eq!(room, NEWCOMERS_FLOOR);
                    crowded += 1;
                }
                other => panic!("a fresh key's join: {other:?}"),
            }
        }
        assert_eq!(crowded, 3_000 - NEWCOMERS_FLOOR, "newcomers beyond the bound are refused");
        assert_eq!(members.len(), 3 + NEWCOMERS_FLOOR);
        assert!(Arc::ptr_eq(&view, &members.live(2_000)), "the live view did not change");
        assert_eq!(members.cadence(), cadence, "nor did the cadence");
        assert_eq!(members.liveness_ms(), 10_000, "a three-member job's window");
        // Past two heartbeat intervals of a job of every key known (1,027 keys: 103 s each), the
        // silent newcomers are dropped and fresh keys find room again.
        let later = 2_000 + 2 * Cadence::for_members(members.len()).heartbeat_ms() + 1;
        (1..=3).for_each(|member| _ = beat(&mut members, member, later - 1_000));
        assert_eq!(members.join(&fresh(5_000), later), Ok(true));
        assert_eq!(members.len(), 4, "the flood's newcomers were dropped");
        // A newcomer that beats is proven, planned with and takes no room.
        assert_eq!(beat(&mut members, 0xee, later), Ok(Beat::Unknown), "not a member's key");
        let newcomer = fresh(5_000).member;
        let proof = members.heartbeat(&newcomer, (1, ContentHash::of(b"m")), later, later);
        assert_eq!(proof, Ok(Beat::First));
        assert_eq!(members.live(later).len(), 4);
    }

    #[test]
    fn the_newcomers_kept_grow_with_the_proven_members_and_survive_a_restart() {
        let mut members = Membership::default();
        for n in 0..2_000 {
            let join = fresh(n);
            if members.join(&join, 0).is_err() {
                members.join_own(&join, 0); // its own join is never crowded out
            }
            members.heartbeat(&join.member, (1, ContentHash::of(b"m")), 1, 1).expect("a beat");
        }
        assert_eq!(members.proven(), 2_000);
        for n in 2_000..5_000 {
            let _ = members.join(&fresh(n), 2);
        }
        assert_eq!(members.len(), 4_000, "room for as many newcomers as proven members");
        let persisted = serde_json::to_string(&members).expect("serializes");
        let mut restored: Membership = serde_json::from_str(&persisted).expect("deserializes");
        assert_eq!(restored.proven(), 2_000);
        assert_eq!(restored.live(3).len(), 2_000, "only the proven are planned with");
        assert!(matches!(restored.join(&fresh(9_999), 3), Err(Refused::Crowded { .. })));
    }

    #[test]
    fn a_digest_finds_the_parts_where_two_memberships_differ() {
        let key = |first: u8, n: u8| {
            let mut id = [n; 32];
            id[..2].copy_from_slice(&[first, first]);
            let mut join = join(0);
            join.member = MemberId(id);
            join
        };
        let (mut ours, mut theirs) = (Membership::default(), Membership::default());
        for n in 0..8 {
            ours.join(&key(n, n), 0).expect("a join");
            theirs.join(&key(n, n), 0).expect("a join");
        }
        assert_eq!(ours.digest(), theirs.digest(), "the same members, in another order");
        assert!(theirs.differing(&ours.digest()).is_empty());
        theirs.join(&key(3, 100), 0).expect("a join");
        let listed = theirs.differing(&ours.digest());
        assert_eq!(listed, [key(3, 3).member, key(3, 100).member], "the differing part's members");
        assert!(ours.differing(&Digest(vec![0; 3])).is_empty(), "a digest of another shape");
    }
}
