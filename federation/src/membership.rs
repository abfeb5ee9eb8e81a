//! Who is in a job: members as their signed joins declare them, when each was last heard from,
//! and the live view that round plans are computed over (kept until a join, a leave, a revival
//! or the first expiry changes it, so asking for it on every tick costs nothing).

use crate::cadence::Cadence;
use fedmesh_protocol::ids::{ContentHash, MemberId, Round};
use fedmesh_protocol::message::Join;
use fedmesh_topologies::MemberInfo;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// One member of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    /// Shared, so that a snapshot of the membership copies no labels.
    #[serde(with = "shared")]
    pub info: Arc<MemberInfo>,
    pub samples: u64,
    pub last_seen_ms: u64,
    /// The round its last heartbeat said it is in (0 before one).
    #[serde(default)]
    pub round_heard: Round,
    /// The newest global model it is known to hold, with the round that made it: where a model
    /// is fetched first (kept here, beside what a heartbeat already looks up, rather than in a
    /// set of holders per model that every heartbeat grew).
    #[serde(default)]
    pub holds: Option<(Round, ContentHash)>,
}

impl Member {
    /// Notes that it holds `model`, made by `round`, unless it is known to hold a newer one.
    fn hold(&mut self, round: Round, model: ContentHash) {
        if self.holds.is_none_or(|(newest, _)| round >= newest) {
            self.holds = Some((round, model));
        }
    }
}

/// Every member a node has heard join a job and not leave.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Membership {
    members: BTreeMap<MemberId, Member>,
    /// The live members as last computed, until something but time passing changes them.
    #[serde(skip)]
    live: Option<LiveView>,
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
        self.members == other.members
    }
}

impl Membership {
    /// How long a silent member still counts as live, in a job of this size.
    pub fn liveness_ms(&self) -> u64 {
        Cadence::for_members(self.members.len()).liveness_ms()
    }

    /// Whether a member last heard at `last_seen_ms` counts as live at `now_ms`.
    fn is_fresh(&self, last_seen_ms: u64, now_ms: u64) -> bool {
        now_ms.saturating_sub(last_seen_ms) <= self.liveness_ms()
    }

    /// Records a join (again); says whether the member is new.
    pub fn join(&mut self, join: &Join, now_ms: u64) -> bool {
        let liveness = self.liveness_ms();
        if let Some(known) = self.members.get_mut(&join.member) {
            // A repeated join (most joins in a large job) changes nothing but the times.
            let same = known.info.group == join.group && known.info.roles == join.roles;
            if !same || now_ms.saturating_sub(known.last_seen_ms) > liveness {
                self.live = None;
            }
            if !same {
                let info = Arc::make_mut(&mut known.info);
                info.group.clone_from(&join.group);
                info.roles.clone_from(&join.roles);
            }
            known.samples = join.samples;
            known.last_seen_ms = now_ms;
            return false;
        }
        self.live = None;
        let info = Arc::new(MemberInfo {
            id: join.member,
            group: join.group.clone(),
            roles: join.roles.clone(),
        });
        let member = Member {
            info,
            samples: join.samples,
            last_seen_ms: now_ms,
            round_heard: 0,
            holds: None,
        };
        self.members.insert(join.member, member);
        true
    }

    /// Records a leave; says whether the member was known.
    pub fn leave(&mut self, member: &MemberId) -> bool {
        self.live = None;
        self.members.remove(member).is_some()
    }

    /// Records a sign of life; says whether the member is known (a heartbeat from a member whose
    /// join was missed does not make it one: its group and roles are unknown).
    pub fn seen(&mut self, member: &MemberId, now_ms: u64) -> bool {
        self.touch(member, now_ms).is_some()
    }

    /// Records a member's heartbeat: a sign of life, the round it is in and the model it holds
    /// (the previous round's result); says whether the member is known.
    pub fn heartbeat(
        &mut self,
        member: &MemberId,
        round: Round,
        model: ContentHash,
        now_ms: u64,
    ) -> bool {
        let Some(known) = self.touch(member, now_ms) else { return false };
        known.round_heard = round;
        known.hold(round.saturating_sub(1), model);
        true
    }

    /// A known member's sign of life, and the member for more of what it said.
    fn touch(&mut self, member: &MemberId, now_ms: u64) -> Option<&mut Member> {
        let liveness = self.liveness_ms();
        let known = self.members.get_mut(member)?;
        if now_ms.saturating_sub(known.last_seen_ms) > liveness {
            self.live = None; // silent until now: it comes back to life
        }
        known.last_seen_ms = known.last_seen_ms.max(now_ms);
        Some(known)
    }

    /// Notes that a known member holds `model`, the result of `round`.
    pub fn holds(&mut self, member: &MemberId, round: Round, model: ContentHash) {
        if let Some(known) = self.members.get_mut(member) {
            known.hold(round, model);
        }
    }

    /// The members known to hold `model` as their newest model, by key.
    pub fn holders_of(&self, model: &ContentHash) -> impl Iterator<Item = MemberId> {
        let holds = |m: &&Member| m.holds.is_some_and(|(_, held)| held == *model);
        self.members.values().filter(holds).map(|m| m.info.id)
    }

    /// The round a known member's last heartbeat said it is in.
    pub fn round_heard(&self, member: &MemberId) -> Option<Round> {
        self.members.get(member).map(|m| m.round_heard)
    }

    /// What a member declared when it joined.
    pub fn info(&self, member: &MemberId) -> Option<MemberInfo> {
        self.members.get(member).map(|m| MemberInfo::clone(&m.info))
    }

    /// How many members there are.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn contains(&self, member: &MemberId) -> bool {
        self.members.contains_key(member)
    }

    /// Whether `member` is known and heard from within the liveness window of `now_ms`.
    pub fn is_live(&self, member: &MemberId, now_ms: u64) -> bool {
        self.members.get(member).is_some_and(|m| self.is_fresh(m.last_seen_ms, now_ms))
    }

    /// The members heard from within the liveness window of `now_ms`, sorted by key.
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
        let live: Vec<&Member> =
            self.members.values().filter(|m| self.is_fresh(m.last_seen_ms, now_ms)).collect();
        let first_expiry = live.iter().map(|m| m.last_seen_ms.saturating_add(liveness)).min();
        LiveView {
            members: live.into_iter().map(|m| MemberInfo::clone(&m.info)).collect(),
            valid_until_ms: first_expiry.unwrap_or(u64::MAX),
        }
    }

    pub fn all(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }
}

/// A shared declaration, persisted as the declaration itself.
mod shared {
    use fedmesh_topologies::MemberInfo;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::sync::Arc;

    pub fn serialize<S: Serializer>(info: &Arc<MemberInfo>, to: S) -> Result<S::Ok, S::Error> {
        info.as_ref().serialize(to)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(from: D) -> Result<Arc<MemberInfo>, D::Error> {
        MemberInfo::deserialize(from).map(Arc::new)
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

    #[test]
    fn live_members_are_those_heard_from_recently() {
        let mut members = Membership::default();
        assert!(members.join(&join(1), 1_000));
        assert!(members.join(&join(2), 1_000));
        assert!(!members.join(&join(2), 1_500), "a repeated join is not a new member");
        assert!(members.seen(&MemberId([1; 32]), 9_000));
        assert!(!members.seen(&MemberId([3; 32]), 9_000), "unknown members stay unknown");
        assert_eq!(members.liveness_ms(), 10_000, "a small job's window");
        let live: Vec<MemberId> = members.live(12_000).iter().map(|m| m.id).collect();
        assert_eq!(live, [MemberId([1; 32])]);
        assert!(members.is_live(&MemberId([1; 32]), 12_000));
        assert!(!members.is_live(&MemberId([2; 32]), 12_000));
        assert!(members.leave(&MemberId([1; 32])));
        assert!(members.live(12_000).is_empty());
    }

    #[test]
    fn the_kept_live_view_follows_expiries_revivals_and_joins() {
        let ids = |live: Arc<[MemberInfo]>| live.iter().map(|m| m.id.0[0]).collect::<Vec<_>>();
        let mut members = Membership::default();
        members.join(&join(1), 1_000);
        members.join(&join(2), 5_000);
        let first = members.live(6_000);
        assert!(Arc::ptr_eq(&first, &members.live(10_000)), "nothing changed: kept");
        members.seen(&MemberId([2; 32]), 10_500);
        assert!(Arc::ptr_eq(&first, &members.live(10_900)), "a live member heard: kept");
        assert_eq!(ids(members.live(11_001)), [2], "member 1 fell silent at 11 s");
        members.seen(&MemberId([1; 32]), 12_000);
        assert_eq!(ids(members.live(12_000)), [1, 2], "member 1 came back");
        members.join(&join(3), 12_500);
        assert_eq!(ids(members.live(12_500)), [1, 2, 3], "a newcomer");
        let mut moved = join(3);
        moved.group = "us".into();
        members.join(&moved, 12_600);
        assert_eq!(members.live(12_600)[2].group, "us", "a member's new declaration");
    }

    #[test]
    fn a_member_holds_the_newest_model_it_was_heard_with() {
        let (old, new) = (ContentHash::of(b"round 1"), ContentHash::of(b"round 2"));
        let mut members = Membership::default();
        members.join(&join(1), 0);
        members.join(&join(2), 0);
        assert!(members.heartbeat(&MemberId([1; 32]), 3, new, 100), "in round 3, holds round 2's");
        members.holds(&MemberId([1; 32]), 1, old);
        members.holds(&MemberId([2; 32]), 1, old);
        members.holds(&MemberId([9; 32]), 1, old);
        assert_eq!(members.holders_of(&new).collect::<Vec<_>>(), [MemberId([1; 32])]);
        assert_eq!(members.holders_of(&old).collect::<Vec<_>>(), [MemberId([2; 32])]);
        assert_eq!(members.round_heard(&MemberId([1; 32])), Some(3));
        members.join(&join(1), 200);
        assert_eq!(members.round_heard(&MemberId([1; 32])), Some(3), "a repeated join keeps it");
        assert!(!members.heartbeat(&MemberId([9; 32]), 3, new, 100), "not a member");
    }
}
