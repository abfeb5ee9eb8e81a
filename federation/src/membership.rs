//! Who is in a job: members as their signed joins declare them, when each was last heard from,
//! and the live view that round plans are computed over (kept until a join, a leave, a revival
//! or the first expiry changes it, so asking for it on every tick costs nothing).
//!
//! A simulator runs thousands of members' machines in one process, each knowing every member
//! and hearing every heartbeat, so an entry is small and found in one hash lookup: the
//! declaration is shared process-wide ([`crate::shared`]), the model a member holds is an index
//! into a short table of models, and the whole map is shared with the snapshots taken of it
//! until it next changes. Whatever is listed is sorted by key.

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

/// The members and the models they hold (shared with snapshots until it changes), and when
/// the members that left the newest `LEAVES_KEPT` times sent their leaves.
#[derive(Debug, Clone, Default)]
struct Known {
    members: HashMap<Key, Entry, KeyHashing>,
    models: Vec<ContentHash>,
    left: HashMap<MemberId, u64, KeyHashing>,
    left_order: VecDeque<MemberId>,
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

impl Known {
    /// Remembers that `member` left with a leave sent at `sent_at_ms`.
    fn remember_leave(&mut self, member: MemberId, sent_at_ms: u64) {
        if self.left.insert(member, sent_at_ms).is_none() {
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
            };
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
    /// How long a silent member still counts as live, in a job of this size.
    pub fn liveness_ms(&self) -> u64 {
        Cadence::for_members(self.len()).liveness_ms()
    }

    /// Whether a member last heard at `last_seen_ms` counts as live at `now_ms`.
    fn is_fresh(&self, last_seen_ms: u64, now_ms: u64) -> bool {
        now_ms.saturating_sub(last_seen_ms) <= self.liveness_ms()
    }

    /// Records a join (again); says whether the member is new. A join sent before the newest
    /// one heard from its member, or before its leave, is a replay; a copy of the newest (it
    /// came on the topic and as an answer) changes nothing.
    pub fn join(&mut self, join: &Join, now_ms: u64) -> Result<bool, Replayed> {
        let liveness = self.liveness_ms();
        let known = Arc::make_mut(&mut self.known);
        let declared = Declared {
            info: MemberInfo {
                id: join.member,
                group: join.group.clone(),
                roles: join.roles.clone(),
            },
            samples: join.samples,
        };
        let replayed = |newest_ms| Replayed { sent_at_ms: join.sent_at_ms, newest_ms };
        let Some((key, entry)) = known.members.get_key_value(&join.member) else {
            if let Some(left_ms) = known.left.get(&join.member).filter(|l| join.sent_at_ms <= **l) {
                return Err(replayed(*left_ms));
            }
            self.live = None;
            let entry = Entry {
                last_seen_ms: now_ms,
                join_sent_ms: join.sent_at_ms,
                beat_sent_ms: 0,
                round_heard: 0,
                held_round: 0,
                held_model: NO_MODEL,
            };
            known.members.insert(Key(shared::declaration(declared)), entry);
            return Ok(true);
        };
        if join.sent_at_ms < entry.join_sent_ms {
            return Err(replayed(entry.join_sent_ms));
        }
        if join.sent_at_ms == entry.join_sent_ms {
            return Ok(false);
        }
        // A repeated join (most joins in a large job) changes nothing but the times.
        let silent = now_ms.saturating_sub(entry.last_seen_ms) > liveness;
        if key.0.info != declared.info || silent {
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
        let known = Arc::make_mut(&mut self.known);
        let Some(entry) = known.members.get(member) else { return Ok(false) };
        if sent_at_ms < entry.join_sent_ms {
            return Err(Replayed { sent_at_ms, newest_ms: entry.join_sent_ms });
        }
        self.live = None;
        known.members.remove(member);
        known.remember_leave(*member, sent_at_ms);
        Ok(true)
    }

    /// Records a sign of life; says whether the member is known (a heartbeat from a member whose
    /// join was missed does not make it one: its group and roles are unknown).
    pub fn seen(&mut self, member: &MemberId, now_ms: u64) -> bool {
        self.touch(member, now_ms).is_some()
    }

    /// Records a member's heartbeat sent at `sent_at_ms`: a sign of life, the round it is in
    /// and the model it holds (the previous round's result); says whether the member is known.
    /// One sent no later than the newest heard from it is a replay: it keeps no one live.
    pub fn heartbeat(
        &mut self,
        member: &MemberId,
        (round, model): (Round, ContentHash),
        sent_at_ms: u64,
        now_ms: u64,
    ) -> Result<bool, Replayed> {
        let newest_ms = match self.known.members.get(member) {
            None => return Ok(false),
            Some(entry) => entry.beat_sent_ms,
        };
        if sent_at_ms <= newest_ms {
            return Err(Replayed { sent_at_ms, newest_ms });
        }
        let index = Arc::make_mut(&mut self.known).model_index(model);
        let Some(entry) = self.touch(member, now_ms) else { return Ok(false) };
        entry.beat_sent_ms = sent_at_ms;
        entry.round_heard = narrow(round);
        entry.hold(round.saturating_sub(1), index);
        Ok(true)
    }

    /// A known member's sign of life, and its entry for more of what it said.
    fn touch(&mut self, member: &MemberId, now_ms: u64) -> Option<&mut Entry> {
        let liveness = self.liveness_ms();
        let entry = Arc::make_mut(&mut self.known).members.get_mut(member)?;
        if now_ms.saturating_sub(entry.last_seen_ms) > liveness {
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
        let index = self.known.models.iter().position(|m| m == model).map(|i| i as u32);
        let holds = |(_, entry): &(&Key, &Entry)| Some(entry.held_model) == index;
        let mut holders: Vec<MemberId> =
            self.known.members.iter().filter(holds).map(|(key, _)| *key.id()).collect();
        holders.sort_unstable();
        holders.into_iter()
    }

    /// The round a known member's last heartbeat said it is in.
    pub fn round_heard(&self, member: &MemberId) -> Option<Round> {
        self.known.members.get(member).map(|m| Round::from(m.round_heard))
    }

    /// How many samples a member declared when it joined (its update weighs no more).
    pub fn declared_samples(&self, member: &MemberId) -> Option<u64> {
        self.known.members.get_key_value(member).map(|(key, _)| key.0.samples)
    }

    /// What a member declared when it joined.
    pub fn info(&self, member: &MemberId) -> Option<MemberInfo> {
        self.known.members.get_key_value(member).map(|(key, _)| key.0.info.clone())
    }

    /// How many members there are.
    pub fn len(&self) -> usize {
        self.known.members.len()
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

    /// The members heard from within the liveness window of `now_ms`, sorted by key (a list
    /// shared with every equal one in the process).
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
            .filter(|(_, entry)| self.is_fresh(entry.last_seen_ms, now_ms))
            .collect();
        live.sort_unstable_by(|(a, _), (b, _)| a.id().cmp(b.id()));
        let first_expiry = live.iter().map(|(_, e)| e.last_seen_ms.saturating_add(liveness)).min();
        let members: Vec<&MemberInfo> = live.into_iter().map(|(key, _)| &key.0.info).collect();
        LiveView {
            members: shared::member_list_of(&members),
            valid_until_ms: first_expiry.unwrap_or(u64::MAX),
        }
    }

    /// The live member but `except` at position `draw` modulo their number, in key order; found
    /// without listing the live view (a newcomer's changes with every member it learns of, and
    /// listing it again for every pull took most of a 10,000-member job's time).
    pub fn drawn_live(&self, draw: u64, except: &MemberId, now_ms: u64) -> Option<MemberId> {
        let mut live: Vec<&MemberId> = self
            .known
            .members
            .iter()
            .filter(|(key, entry)| key.id() != except && self.is_fresh(entry.last_seen_ms, now_ms))
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
            sent_at_ms: 0,
        }
    }

    /// `join` as sent at `at`.
    fn sent(join: Join, at: u64) -> Join {
        Join { sent_at_ms: at, ..join }
    }

    #[test]
    fn live_members_are_those_heard_from_recently() {
        let mut members = Membership::default();
        assert_eq!(members.join(&join(1), 1_000), Ok(true));
        assert_eq!(members.join(&join(2), 1_000), Ok(true));
        let again = sent(join(2), 1_500);
        assert_eq!(members.join(&again, 1_500), Ok(false), "a repeated join is not a new member");
        assert!(members.seen(&MemberId([1; 32]), 9_000));
        assert!(!members.seen(&MemberId([3; 32]), 9_000), "unknown members stay unknown");
        assert_eq!(members.liveness_ms(), 10_000, "a small job's window");
        let live: Vec<MemberId> = members.live(12_000).iter().map(|m| m.id).collect();
        assert_eq!(live, [MemberId([1; 32])]);
        assert!(members.is_live(&MemberId([1; 32]), 12_000));
        assert!(!members.is_live(&MemberId([2; 32]), 12_000));
        assert_eq!(members.leave(&MemberId([1; 32]), 12_000), Ok(true));
        assert!(members.live(12_000).is_empty());
    }

    #[test]
    fn the_kept_live_view_follows_expiries_revivals_and_joins() {
        let ids = |live: Arc<[MemberInfo]>| live.iter().map(|m| m.id.0[0]).collect::<Vec<_>>();
        let mut members = Membership::default();
        members.join(&join(1), 1_000).expect("a join");
        members.join(&join(2), 5_000).expect("a join");
        let first = members.live(6_000);
        assert!(Arc::ptr_eq(&first, &members.live(10_000)), "nothing changed: kept");
        members.seen(&MemberId([2; 32]), 10_500);
        assert!(Arc::ptr_eq(&first, &members.live(10_900)), "a live member heard: kept");
        assert_eq!(ids(members.live(11_001)), [2], "member 1 fell silent at 11 s");
        members.seen(&MemberId([1; 32]), 12_000);
        assert_eq!(ids(members.live(12_000)), [1, 2], "member 1 came back");
        members.join(&join(3), 12_500).expect("a join");
        assert_eq!(ids(members.live(12_500)), [1, 2, 3], "a newcomer");
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
        assert_eq!(beat, Ok(true), "in round 3, holds round 2's");
        members.holds(&MemberId([1; 32]), 1, old);
        members.holds(&MemberId([2; 32]), 1, old);
        members.holds(&MemberId([9; 32]), 1, old);
        assert_eq!(members.holders_of(&new).collect::<Vec<_>>(), [MemberId([1; 32])]);
        assert_eq!(members.holders_of(&old).collect::<Vec<_>>(), [MemberId([2; 32])]);
        assert_eq!(members.round_heard(&MemberId([1; 32])), Some(3));
        members.join(&sent(join(1), 200), 200).expect("a newer join");
        assert_eq!(members.round_heard(&MemberId([1; 32])), Some(3), "a repeated join keeps it");
        let stranger = members.heartbeat(&MemberId([9; 32]), (3, new), 100, 100);
        assert_eq!(stranger, Ok(false), "not a member");
    }

    #[test]
    fn replayed_joins_heartbeats_and_leaves_are_refused() {
        let mut members = Membership::default();
        let id = MemberId([1; 32]);
        let model = ContentHash::of(b"round 1");
        members.join(&sent(join(1), 1_000), 1_000).expect("a join");
        assert_eq!(members.heartbeat(&id, (2, model), 5_000, 5_000), Ok(true));
        let replay = members.heartbeat(&id, (2, model), 5_000, 30_000);
        assert_eq!(replay, Err(Replayed { sent_at_ms: 5_000, newest_ms: 5_000 }));
        assert!(!members.is_live(&id, 30_000), "a dead member's heartbeat replayed keeps it dead");
        let older = members.join(&sent(join(1), 900), 30_000);
        assert_eq!(older, Err(Replayed { sent_at_ms: 900, newest_ms: 1_000 }));
        members.join(&sent(join(1), 31_000), 31_000).expect("it joins again");
        let old_leave = members.leave(&id, 20_000);
        assert_eq!(old_leave, Err(Replayed { sent_at_ms: 20_000, newest_ms: 31_000 }));
        assert_eq!(members.leave(&id, 40_000), Ok(true), "it leaves");
        let rejoin_replayed = members.join(&sent(join(1), 31_000), 41_000);
        assert_eq!(rejoin_replayed, Err(Replayed { sent_at_ms: 31_000, newest_ms: 40_000 }));
        assert!(!members.contains(&id), "its old join replayed does not bring it back");
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
