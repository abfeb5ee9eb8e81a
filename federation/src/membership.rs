//! Who is in a job: members as their signed joins declare them, when each was last heard from,
//! and the live view that round plans are computed over.

use fedmesh_protocol::ids::MemberId;
use fedmesh_protocol::message::Join;
use fedmesh_topologies::MemberInfo;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One member of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    pub info: MemberInfo,
    pub samples: u64,
    pub last_seen_ms: u64,
}

/// Every member a node has heard join a job and not leave.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Membership {
    members: BTreeMap<MemberId, Member>,
}

impl Membership {
    /// Records a join (again); says whether the member is new.
    pub fn join(&mut self, join: &Join, now_ms: u64) -> bool {
        let info =
            MemberInfo { id: join.member, group: join.group.clone(), roles: join.roles.clone() };
        let member = Member { info, samples: join.samples, last_seen_ms: now_ms };
        self.members.insert(join.member, member).is_none()
    }

    /// Records a leave; says whether the member was known.
    pub fn leave(&mut self, member: &MemberId) -> bool {
        self.members.remove(member).is_some()
    }

    /// Records a sign of life; says whether the member is known (a heartbeat from a member whose
    /// join was missed does not make it one: its group and roles are unknown).
    pub fn seen(&mut self, member: &MemberId, now_ms: u64) -> bool {
        match self.members.get_mut(member) {
            Some(known) => {
                known.last_seen_ms = known.last_seen_ms.max(now_ms);
                true
            }
            None => false,
        }
    }

    /// What a member declared when it joined.
    pub fn info(&self, member: &MemberId) -> Option<MemberInfo> {
        self.members.get(member).map(|m| m.info.clone())
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

    /// The members heard from within `window_ms` of `now_ms`.
    pub fn live(&self, now_ms: u64, window_ms: u64) -> Vec<MemberInfo> {
        self.members
            .values()
            .filter(|m| now_ms.saturating_sub(m.last_seen_ms) <= window_ms)
            .map(|m| m.info.clone())
            .collect()
    }

    pub fn all(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedmesh_protocol::ids::{ContentHash, JobId};

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
        let live: Vec<MemberId> = members.live(10_000, 5_000).iter().map(|m| m.id).collect();
        assert_eq!(live, [MemberId([1; 32])]);
        assert!(members.leave(&MemberId([1; 32])));
        assert!(members.live(10_000, 5_000).is_empty());
    }
}
