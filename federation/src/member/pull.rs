//! Pulling the member list: a member compares its membership with one other member's by digest
//! and asks the members it finds it missed for their joins, so members' views agree before
//! they plan.
//!
//! A join reaches each member once, on the topic, and is answered directly; when both copies of
//! a pair's joins are lost (1% at 1% loss), the pair miss each other until one hears the
//! other's heartbeat, which in a 10,000-member job comes once in 1,000 s. Each member then
//! missed a different hundred members, and ten thousand distinct views each needed a plan of
//! their own. As in the push-pull exchange of gossip membership protocols, a member compares
//! its membership with a member drawn from its live view: the other answers with the keys it
//! knows in the parts of the key space where the two differ, and the member asks each key it
//! lacks for its signed join (introducing itself, so both learn of each other). A pull that
//! finds a member missed is followed by another at once, to another member; otherwise the next
//! comes `PULL_EVERY_MS` later. Every pair missing each other is found by a pull that reaches a
//! member knowing either: a hundred misses per member fall to one in the job within three
//! pulls.

use super::{Effect, Member};
use fedmesh_protocol::ids::MemberId;
use fedmesh_topologies::election::score;

/// How long after joining a member first pulls the member list (the answers to its join are in
/// within a round trip).
pub(super) const FIRST_PULL_MS: u64 = 2_000;
/// How long after a pull that found a member missed the next one goes out (the members asked
/// answer within a round trip, so the next pull does not list them again).
const PULL_SOON_MS: u64 = 1_000;
/// How long a pull waits for its answer before another member is asked.
const PULL_WAIT_MS: u64 = 5_000;
/// How often a member pulls while pulls find nothing missed (memberlist's default).
const PULL_EVERY_MS: u64 = 30_000;

impl Member {
    /// Pulls the member list from a live member drawn from this member's key and how many
    /// pulls it made, if it is time.
    pub(super) fn maybe_pull(&mut self, now: u64) {
        if now < self.next_pull_ms {
            return;
        }
        self.next_pull_ms = now + PULL_WAIT_MS;
        let Some(peer) = self.pull_peer(now) else { return };
        self.pulls += 1;
        self.pulling = Some(peer);
        let digest = self.state.members.digest();
        self.effects.push(Effect::AskMembers { to: peer, digest });
    }

    /// The member the next pull goes to: one of the live members but this one, drawn from this
    /// member's key and its count of pulls.
    fn pull_peer(&self, now: u64) -> Option<MemberId> {
        let me = self.me();
        let draw = score(&self.setup.job, self.pulls, "member-pull", &me);
        self.state.members.drawn_live(draw, &me, now)
    }

    /// A member pulls the member list: it is answered with the members this one knows where
    /// their memberships differ (and asked for its join if this member does not know it).
    pub(super) fn on_members_asked(&mut self, from: MemberId, digest: &super::Digest, now: u64) {
        if !self.is_active() || !self.may_learn_of_job(&from) {
            return;
        }
        let members = self.state.members.differing(digest);
        self.effects.push(Effect::SendMembers { to: from, members });
        self.ask_for_join(from, now);
    }

    /// The answer to this member's pull: each member listed that it does not know is asked for
    /// its join. The member list agrees with the asked member's once a pull finds nothing to
    /// ask (`Member::settling` waits for it).
    pub(super) fn on_members_sent(&mut self, from: MemberId, members: &[MemberId], now: u64) {
        if self.pulling != Some(from) || !self.is_active() {
            return; // not an answer to the pull under way
        }
        self.pulling = None;
        let mut asked = 0;
        for member in members {
            asked += usize::from(self.ask_for_join(*member, now));
        }
        self.pulled_all |= asked == 0;
        self.next_pull_ms = now + if asked == 0 { PULL_EVERY_MS } else { PULL_SOON_MS };
    }
}
