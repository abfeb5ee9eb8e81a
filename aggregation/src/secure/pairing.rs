//! Sparse pairing (SecAgg+): who masks with whom and who holds whose shares, as a Harary graph
//! over a seeded permutation of the members (Bell et al. 2020); the complete graph when the
//! degree reaches `n − 1` (plain SecAgg, Bonawitz et al. 2017).

use super::error::SecAggError;
use fedmesh_protocol::MemberId;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use std::collections::BTreeSet;

/// The KDF context that turns a round's seed into the permutation's PRG seed.
const PAIRING_CONTEXT: &str = "fedmesh secagg 2026 pairing permutation v1";

/// The round's neighbour graph: symmetric, deterministic in (seed, members, degree).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pairing {
    /// The members, sorted.
    members: Vec<MemberId>,
    /// Each member's neighbours, as indices into `members`, by member index.
    neighbours: Vec<BTreeSet<usize>>,
}

impl Pairing {
    /// The graph for these members (any order, no duplicates) with about `degree` neighbours
    /// each: members are placed on a ring in the order of a permutation drawn from `seed`, and
    /// each is linked to the `⌊degree/2⌋` nearest on either side, plus, for an odd degree, the
    /// one diametrically opposite (so with an odd degree and an odd member count one member has
    /// `degree + 1`). With `degree >= n − 1` every member neighbours every other.
    pub fn new(seed: &[u8], members: &[MemberId], degree: usize) -> Result<Self, SecAggError> {
        let mut sorted = members.to_vec();
        sorted.sort_unstable();
        if let Some(pair) = sorted.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(SecAggError::DuplicateMember(pair[0]));
        }
        let n = sorted.len();
        if n < 2 {
            return Err(SecAggError::TooFewMembers { members: n });
        }
        let neighbours = if degree >= n - 1 {
            (0..n).map(|i| (0..n).filter(|&j| j != i).collect()).collect()
        } else {
            harary(&permutation(seed, n), degree)
        };
        Ok(Self { members: sorted, neighbours })
    }

    /// The members, sorted.
    pub fn members(&self) -> &[MemberId] {
        &self.members
    }

    /// The member's position in [`Self::members`], if it is one.
    pub fn index_of(&self, member: &MemberId) -> Option<usize> {
        self.members.binary_search(member).ok()
    }

    /// The member's neighbours, sorted; `None` for a non-member.
    pub fn neighbours(&self, member: &MemberId) -> Option<Vec<MemberId>> {
        let index = self.index_of(member)?;
        Some(self.neighbours[index].iter().map(|&j| self.members[j]).collect())
    }

    /// Whether `a` and `b` are neighbours (false if either is not a member).
    pub fn are_neighbours(&self, a: &MemberId, b: &MemberId) -> bool {
        match (self.index_of(a), self.index_of(b)) {
            (Some(i), Some(j)) => self.neighbours[i].contains(&j),
            _ => false,
        }
    }

    /// The smallest and the largest number of neighbours a member has.
    pub fn degree_range(&self) -> (usize, usize) {
        let degrees = self.neighbours.iter().map(BTreeSet::len);
        (degrees.clone().min().unwrap_or(0), degrees.max().unwrap_or(0))
    }
}

/// A uniform permutation of `0..n` (Fisher–Yates) from a ChaCha20 stream keyed by the seed, with
/// rejection sampling so it does not depend on any library's range-sampling algorithm.
fn permutation(seed: &[u8], n: usize) -> Vec<usize> {
    let mut rng = ChaCha20Rng::from_seed(blake3::derive_key(PAIRING_CONTEXT, seed));
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, uniform_below(&mut rng, i as u64 + 1) as usize);
    }
    order
}

/// A uniform value in `0..bound` (bound > 0).
fn uniform_below(rng: &mut ChaCha20Rng, bound: u64) -> u64 {
    let zone = u64::MAX - (u64::MAX % bound + 1) % bound;
    loop {
        let value = rng.next_u64();
        if value <= zone {
            return value % bound;
        }
    }
}

/// The Harary-style graph on a ring of `order` (member indices by ring position).
fn harary(order: &[usize], degree: usize) -> Vec<BTreeSet<usize>> {
    let n = order.len();
    let mut neighbours = vec![BTreeSet::new(); n];
    let mut link = |p: usize, q: usize| {
        let (a, b) = (order[p % n], order[q % n]);
        if a != b {
            neighbours[a].insert(b);
            neighbours[b].insert(a);
        }
    };
    for position in 0..n {
        for step in 1..=degree / 2 {
            link(position, position + step);
        }
        if degree % 2 == 1 && position < n.div_ceil(2) {
            link(position, position + n / 2);
        }
    }
    neighbours
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn members(n: u8) -> Vec<MemberId> {
        (0..n).map(|i| MemberId([i; 32])).collect()
    }

    #[test]
    fn degree_at_least_n_minus_one_is_the_complete_graph() {
        let pairing = Pairing::new(b"seed", &members(6), 5).unwrap();
        assert_eq!(pairing.degree_range(), (5, 5));
        assert_eq!(Pairing::new(b"seed", &members(6), 50).unwrap(), pairing);
    }

    #[test]
    fn sparse_graphs_are_symmetric_with_the_asked_degree() {
        for (n, k, range) in [(20, 6, (6, 6)), (20, 7, (7, 7)), (21, 7, (7, 8)), (9, 2, (2, 2))] {
            let ms = members(n);
            let pairing = Pairing::new(b"round 3", &ms, k).unwrap();
            assert_eq!(pairing.degree_range(), range, "n={n} k={k}");
            for a in &ms {
                for b in pairing.neighbours(a).unwrap() {
                    assert!(pairing.are_neighbours(&b, a));
                    assert_ne!(&b, a);
                }
            }
        }
    }

    #[test]
    fn deterministic_in_the_seed_and_independent_of_input_order() {
        let ms = members(30);
        let mut reversed = ms.clone();
        reversed.reverse();
        let a = Pairing::new(b"x", &ms, 4).unwrap();
        assert_eq!(Pairing::new(b"x", &reversed, 4).unwrap(), a);
        assert_ne!(Pairing::new(b"y", &ms, 4).unwrap(), a, "another seed, another graph");
    }

    #[test]
    fn duplicates_and_too_few_members_are_refused() {
        let mut ms = members(3);
        ms.push(ms[1]);
        assert_eq!(Pairing::new(b"", &ms, 2), Err(SecAggError::DuplicateMember(ms[1])));
        assert_eq!(
            Pairing::new(b"", &members(1), 2),
            Err(SecAggError::TooFewMembers { members: 1 })
        );
        let pairing = Pairing::new(b"", &members(3), 2).unwrap();
        assert_eq!(pairing.neighbours(&MemberId([9; 32])), None);
    }
}
