//! Leaderless election: a deterministic ranking of members per (job, round, slot) by rendezvous
//! (highest-random-weight) hashing, the same on every member that sees the same membership.

use fedmesh_protocol::ids::{JobId, MemberId, Round};

/// A member's weight for a slot: the first 8 bytes of BLAKE3(domain, job, round, slot, member).
pub fn score(job: &JobId, round: Round, slot: &str, member: &MemberId) -> u64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"fedmesh/rendezvous/1");
    hasher.update(&job.0.0);
    hasher.update(&round.to_le_bytes());
    hasher.update(&(slot.len() as u64).to_le_bytes());
    hasher.update(slot.as_bytes());
    hasher.update(&member.0);
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_bytes()[..8]);
    u64::from_le_bytes(first)
}

/// The members in descending rendezvous weight for the slot (ties, which need a hash collision,
/// broken by key): the first aggregates, the rest is the failover order.
pub fn rank(job: &JobId, round: Round, slot: &str, members: &[MemberId]) -> Vec<MemberId> {
    let mut scored: Vec<(u64, MemberId)> =
        members.iter().map(|member| (score(job, round, slot, member), *member)).collect();
    scored.sort_unstable_by(|a, b| b.cmp(a));
    scored.dedup_by_key(|(_, member)| *member);
    scored.into_iter().map(|(_, member)| member).collect()
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
}
