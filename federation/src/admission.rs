//! Who may join a job, as its members and its coordinator apply `participation.admission` to a
//! join: anyone (`open`), the keys on its allow-list (`allow`), or those the owner signed a
//! ticket for (`owner`, and the allow-list too); and who may learn what an admitted-only job's
//! members keep.

use fedmesh_protocol::ids::{JobId, MemberId};
use fedmesh_protocol::message::{Join, Ticket};
use fedmesh_protocol::spec::{Admission, JobSpec};

/// Why a join is refused: a line for the log, naming the key.
pub fn refusal(spec: &JobSpec, job: &JobId, join: &Join) -> Option<String> {
    let part = &spec.participation;
    let member = &join.member;
    if *member == spec.owner || part.allow.contains(member) {
        return None;
    }
    match part.admission() {
        Admission::Open => None,
        Admission::Allow => Some(format!("{member}: not on the allow-list")),
        Admission::Owner => Ticket::admits(join.ticket.as_deref(), &spec.owner, job, member)
            .err()
            .map(|why| format!("{member}: not admitted by the owner ({why})")),
    }
}

/// Whether `peer` may be told what an admitted-only job's members keep (its results, models and
/// member list): anyone for an open job; else its owner, its coordinator, the keys on its
/// allow-list and, for an owner-admitted job, the members admitted (`is_member`).
pub fn may_learn(spec: &JobSpec, peer: &MemberId, is_member: bool) -> bool {
    let part = &spec.participation;
    let listed =
        *peer == spec.owner || spec.coordinator == Some(*peer) || part.allow.contains(peer);
    match part.admission() {
        Admission::Open => true,
        Admission::Allow => listed,
        Admission::Owner => listed || is_member,
    }
}
