//! Leaderless election: a deterministic ranking of members per (job, round, slot) by rendezvous
//! (highest-random-weight) hashing, the same on every member that sees the same membership.

use fedmesh_protocol::ids::{JobId, MemberId, Round};

/// A member's weight for a slot: the first 8 bytes of BLAKE3(domain, job, round, slot, member).
pub fn score(job: &JobId, round: Round, slot: &str, member: &MemberId) -> u64 {
    Weigher::new(job, round, slot).weigh(member)
}

/// The members in descending rendezvous weight for the slot (ties, which need a hash collision,
/// broken by key): the first aggregates, the rest is the failover order.
pub fn rank(job: &JobId, round: Round, slot: &str, members: &[MemberId]) -> Vec<MemberId> {
    let mut weigher = Weigher::new(job, round, slot);
    let mut scored: Vec<(u64, MemberId)> =
        members.iter().map(|member| (weigher.weigh(member), *member)).collect();
    scored.sort_unstable_by(|a, b| b.cmp(a));
    scored.dedup_by_key(|(_, member)| *member);
    scored.into_iter().map(|(_, member)| member).collect()
}

/// The first of [`rank`]'s order but `not`, without sorting the rest.
fn top_but(
    job: &JobId,
    round: Round,
    slot: &str,
    members: &[MemberId],
    not: Option<MemberId>,
) -> Option<MemberId> {
    let mut weigher = Weigher::new(job, round, slot);
    let others = members.iter().filter(|member| Some(**member) != not);
    others.map(|member| (weigher.weigh(member), *member)).max().map(|(_, member)| member)
}

/// How many rounds a rotation looks back at most (see [`rotated`]).
pub const ROTATION_EPOCH: Round = 32;
/// Slots with more candidates than this do not rotate: each round's first is then its
/// predecessor with probability below 1/64, and the look back costs a ranking per round.
pub const MAX_ROTATED_CANDIDATES: usize = 64;

/// The member a slot's rotation puts first in `round` over `candidates`: the first of the
/// round's ranking that is not the one it put first the round before, since the start of the
/// round's epoch of [`ROTATION_EPOCH`] rounds (whose first round takes its ranking's first).
/// Every member computes it alike from the same candidates, and the duty passes on every round
/// of an epoch (into an epoch's first round, with the probability of a plain ranking). `None`
/// without candidates, or with more than [`MAX_ROTATED_CANDIDATES`]. The job's first round is
/// `first`'s when it is a candidate (its owner's: the only member vetted before any update
/// counted).
pub fn rotated(
    job: &JobId,
    round: Round,
    slot: &str,
    candidates: &[MemberId],
    first: Option<&MemberId>,
) -> Option<MemberId> {
    if candidates.len() > MAX_ROTATED_CANDIDATES {
        return None;
    }
    let start = round.saturating_sub(1) / ROTATION_EPOCH * ROTATION_EPOCH + 1;
    let owner = first.filter(|first| start == 1 && candidates.contains(first)).copied();
    let (start, opening) = match owner {
        Some(owner) => (2, Some(owner)),
        None => (start, None),
    };
    (start..=round).try_fold(opening, |previous, r| {
        Some(top_but(job, r, slot, candidates, previous).or(previous))
    })?
}

/// Weighs members for one slot: the hashed bytes but the member's key are laid out once, and
/// each weight is one BLAKE3 call over them (ranking thousands of members every round is the
/// bulk of a large job's planning).
struct Weigher {
    input: Vec<u8>,
    prefix: usize,
}

impl Weigher {
    fn new(job: &JobId, round: Round, slot: &str) -> Self {
        let mut input = Vec::with_capacity(64 + slot.len() + 32);
        input.extend_from_slice(b"fedmesh/rendezvous/1");
        input.extend_from_slice(&job.0.0);
        input.extend_from_slice(&round.to_le_bytes());
        input.extend_from_slice(&(slot.len() as u64).to_le_bytes());
        input.extend_from_slice(slot.as_bytes());
        let prefix = input.len();
        Self { input, prefix }
    }

    fn weigh(&mut self, member: &MemberId) -> u64 {
        self.input.truncate(self.prefix);
        self.input.extend_from_slice(&member.0);
        let digest = blake3::hash(&self.input);
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest.as_bytes()[..8]);
        u64::from_le_bytes(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedmesh_protocol::ids::ContentHash;

    fn members(n: u8) -> Vec<MemberId> {
        (0..n).map(|i| MemberId([i; 32])).collect()
    }

    #[test]
    fn ranking_is_a_permutation_independent_of_input_order() {
        let job = JobId(ContentHash::of(b"job"));
        let all = members(20);
        let mut reversed = all.clone();
        reversed.reverse();
        let ranked = rank(&job, 3, "top", &all);
        assert_eq!(ranked, rank(&job, 3, "top", &reversed));
        let mut sorted = ranked.clone();
        sorted.sort();
        assert_eq!(sorted, all);
    }

    #[test]
    fn slots_and_rounds_rank_differently() {
        let job = JobId(ContentHash::of(b"job"));
        let all = members(20);
        assert_ne!(rank(&job, 1, "top", &all), rank(&job, 2, "top", &all));
        assert_ne!(rank(&job, 1, "top", &all), rank(&job, 1, "eu", &all));
    }

    #[test]
    fn a_weight_hashes_the_domain_job_round_slot_and_member() {
        let job = JobId(ContentHash::of(b"job"));
        let member = MemberId([7; 32]);
        let mut hasher = blake3::Hasher::new();
        for part in [&b"fedmesh/rendezvous/1"[..], &job.0.0, &5u64.to_le_bytes()] {
            hasher.update(part);
        }
        hasher.update(&3u64.to_le_bytes());
        hasher.update(b"top");
        hasher.update(&member.0);
        let mut first = [0u8; 8];
        first.copy_from_slice(&hasher.finalize().as_bytes()[..8]);
        assert_eq!(score(&job, 5, "top", &member), u64::from_le_bytes(first));
    }
}
