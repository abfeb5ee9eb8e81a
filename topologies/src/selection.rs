//! Participant selection: which of the eligible trainers train this round (all, a seeded random
//! fraction, at most k, or a selector's choice from what past rounds showed), computed
//! identically by every member from the same inputs.

use crate::election::rank;
use crate::guided::{self, Learner};
use crate::history::History;
use fedmesh_protocol::ids::{JobId, MemberId, Round};
use fedmesh_protocol::spec::{Participation, Selector};
use std::sync::Arc;

/// How a round's trainers are chosen from the eligible members.
#[derive(Debug, Clone, PartialEq)]
pub enum Selection {
    /// `fraction` of the eligible members (rounded up, at least one), at most `max`.
    Sample { fraction: f32, max: Option<usize> },
    /// Exactly these members, as a coordinator's assignment names them (M8); members not eligible
    /// are left out.
    Explicit(Vec<MemberId>),
    /// As many as `count` says, chosen by a selector that learns from past rounds (`fedbuff`,
    /// `oort`) from what `history` holds.
    Guided { learner: Learner, count: Count, history: Arc<History> },
}

/// How many of the eligible members a round selects: `fraction` of them (rounded up, at least
/// one), at most `max`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Count {
    pub fraction: f32,
    pub max: Option<usize>,
}

impl Count {
    /// How many of `eligible` members are selected.
    pub fn of(&self, eligible: usize) -> usize {
        fraction_of(self.fraction, eligible)
            .clamp(1, eligible.max(1))
            .min(self.max.unwrap_or(usize::MAX))
            .min(eligible)
    }
}

impl Selection {
    /// Every eligible member trains.
    pub const ALL: Self = Self::Sample { fraction: 1.0, max: None };

    /// The selection a job spec's participation section asks for, a learning selector's from
    /// `history` (the results this member took).
    pub fn from_participation(participation: &Participation, history: &Arc<History>) -> Self {
        let max = participation.max_participants.map(|max| max as usize);
        let (learner, count) = match participation.selector {
            Selector::Random => return Self::Sample { fraction: participation.fraction, max },
            Selector::Fedbuff(fedbuff) => {
                let concurrency = fedbuff.concurrency as usize;
                let max = Some(max.map_or(concurrency, |m| m.min(concurrency)));
                (Learner::Fedbuff, Count { fraction: 1.0, max })
            }
            Selector::Oort(params) => {
                (Learner::Oort(params), Count { fraction: participation.fraction, max })
            }
        };
        Self::Guided { learner, count, history: history.clone() }
    }

    /// The selected members, sorted by key. A sample is the top of a rendezvous ranking seeded by
    /// job and round, so every member picks the same ones and the choice changes every round.
    pub fn select(&self, job: &JobId, round: Round, eligible: &[MemberId]) -> Vec<MemberId> {
        let mut chosen = match self {
            Self::Sample { fraction, max } => {
                let wanted = Count { fraction: *fraction, max: *max }.of(eligible.len());
                if wanted >= eligible.len() {
                    // Everyone is chosen: the ranking would only be sorted away below.
                    eligible.to_vec()
                } else {
                    let mut ranked = rank(job, round, "selection", eligible);
                    ranked.truncate(wanted);
                    ranked
                }
            }
            Self::Explicit(named) => {
                named.iter().filter(|member| eligible.contains(member)).copied().collect()
            }
            Self::Guided { learner, count, history } => {
                let wanted = count.of(eligible.len());
                match learner {
                    Learner::Fedbuff => guided::fedbuff(job, round, eligible, history, wanted),
                    Learner::Oort(params) => {
                        guided::oort(params, job, round, eligible, history, wanted)
                    }
                }
            }
        };
        chosen.sort();
        chosen.dedup();
        chosen
    }
}

/// `fraction` of `n`, rounded up; the f32 fraction's representation error (0.3 is 0.30000001)
/// does not round 3.0000001 up to 4.
fn fraction_of(fraction: f32, n: usize) -> usize {
    (f64::from(fraction) * n as f64 - 1e-6).ceil().max(0.0) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedmesh_protocol::ids::ContentHash;

    fn members(n: u8) -> Vec<MemberId> {
        (0..n).map(|i| MemberId([i; 32])).collect()
    }

    #[test]
    fn fraction_rounds_up_and_max_caps() {
        let job = JobId(ContentHash::of(b"j"));
        let half = Selection::Sample { fraction: 0.5, max: None };
        assert_eq!(half.select(&job, 1, &members(9)).len(), 5);
        let capped = Selection::Sample { fraction: 1.0, max: Some(3) };
        assert_eq!(capped.select(&job, 1, &members(9)).len(), 3);
        assert_eq!(Selection::ALL.select(&job, 1, &members(9)), members(9));
        assert!(Selection::ALL.select(&job, 1, &[]).is_empty());
    }

    #[test]
    fn a_sample_changes_with_the_round_and_covers_everyone_over_time() {
        let job = JobId(ContentHash::of(b"j"));
        let all = members(10);
        let pick = Selection::Sample { fraction: 0.3, max: None };
        let mut times = [0u32; 10];
        for round in 1..=300 {
            for member in pick.select(&job, round, &all) {
                times[member.0[0] as usize] += 1;
            }
        }
        // Each member is picked with probability 0.3: 90 of 300 rounds expected.
        assert!(times.iter().all(|&t| (60..=120).contains(&t)), "{times:?}");
    }

    #[test]
    fn explicit_selection_keeps_only_eligible_members() {
        let job = JobId(ContentHash::of(b"j"));
        let named = vec![MemberId([3; 32]), MemberId([40; 32]), MemberId([1; 32])];
        let chosen = Selection::Explicit(named).select(&job, 1, &members(5));
        assert_eq!(chosen, vec![MemberId([1; 32]), MemberId([3; 32])]);
    }
}
