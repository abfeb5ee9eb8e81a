//! Selectors that learn from past rounds: FedBuff's (the members whose updates counted least
//! recently) and Oort's (Lai et al., OSDI 2021: statistical utility times a speed factor, a
//! staleness bonus, and an exploration share), each a pure function of the job, the round,
//! the eligible members and a [`History`], seeded by job and round where it draws.
//!
//! The history is the selecting member's own (every member builds it from the results it takes:
//! a late joiner's is short), so the opener of a round selects and its opening names the
//! trainers; the others follow that choice (see `fedmesh_federation::member`).

use crate::election::{rank, score};
use crate::history::History;
use fedmesh_protocol::ids::{JobId, MemberId, Round};
use fedmesh_protocol::spec::OortSelector;

/// Oort's clip of statistical utilities: none counts more than the 95th percentile of them.
const UTILITY_CLIP_QUANTILE: f64 = 0.95;
/// Oort's exploitation cut-off: members scoring at least this share of the last one that would
/// make the cut are sampled from, weighted by score.
const CUT_OFF: f64 = 0.95;
/// Oort's staleness weight: sqrt(0.1 · ln(round) / the round a member was last counted).
const STALENESS_WEIGHT: f64 = 0.1;
/// The least score a candidate is weighted with (one with none is still drawn last).
const MIN_WEIGHT: f64 = 1e-9;

/// A selector that learns from past rounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Learner {
    Fedbuff,
    Oort(OortSelector),
}

/// FedBuff's choice: `count` of the `eligible`, those whose updates counted least recently
/// first (never counted ones before all), in a seeded order among equals.
pub fn fedbuff(
    job: &JobId,
    round: Round,
    eligible: &[MemberId],
    history: &History,
    count: usize,
) -> Vec<MemberId> {
    let mut order: Vec<(Round, usize, MemberId)> = rank(job, round, "selection", eligible)
        .into_iter()
        .enumerate()
        .map(|(seeded, member)| (history.last_round(&member), seeded, member))
        .collect();
    order.sort_unstable();
    order.into_iter().take(count).map(|(_, _, member)| member).collect()
}

/// Oort's choice of `count` of the `eligible`: a share `exploration` of them explored (never
/// counted members first, then seeded-random others), the rest exploited among the members
/// with feedback by score, except those exploited `max_consecutive` rounds in a row.
pub fn oort(
    params: &OortSelector,
    job: &JobId,
    round: Round,
    eligible: &[MemberId],
    history: &History,
    count: usize,
) -> Vec<MemberId> {
    let seeded = rank(job, round, "selection", eligible);
    let untried_left = seeded.iter().any(|m| history.get(m).is_none_or(|r| r.utility.is_none()));
    let explored = exploration_count(params.exploration, count, untried_left, job, round);
    let rested = |m: &MemberId| history.consecutive_before(m, round) >= params.max_consecutive;
    let candidates: Vec<MemberId> = seeded
        .iter()
        .filter(|m| history.get(m).is_some_and(|r| r.utility.is_some()) && !rested(m))
        .copied()
        .collect();
    let scores = oort_scores(params, round, &candidates, history);
    let mut chosen = exploit(job, round, &scores, count - explored);
    let (untried, tried): (Vec<MemberId>, Vec<MemberId>) = seeded
        .into_iter()
        .filter(|m| !chosen.contains(m))
        .partition(|m| history.get(m).is_none_or(|r| r.utility.is_none()));
    let missing = count.saturating_sub(chosen.len());
    chosen.extend(untried.into_iter().chain(tried).take(missing));
    chosen
}

/// How many of `count` trainers are explored: `exploration` of them, rounded up while some
/// member was never tried (each is tried soon), else rounded by a seeded draw, so that a round
/// explores `exploration · count` members on average (rounded up, a round of 4 at 0.1 would
/// re-explore one in four: as often as a random pick would take a slow member).
fn exploration_count(
    exploration: f32,
    count: usize,
    untried_left: bool,
    job: &JobId,
    round: Round,
) -> usize {
    let share = (f64::from(exploration) * count as f64).max(0.0);
    let whole = share.floor();
    let round_up = if untried_left {
        share - whole > 1e-6
    } else {
        uniform(job, round, &ROUND_DRAW) < share - whole
    };
    (whole as usize + usize::from(round_up)).min(count)
}

/// The key the seeded draws for the round itself (not for one member) are made with.
const ROUND_DRAW: MemberId = MemberId([0; 32]);

/// Each candidate's Oort score: its statistical utility (clipped, scaled to [0, 1] over the
/// candidates) plus the staleness bonus, times (T/t)^α when its duration t exceeds the
/// preferred T.
fn oort_scores(
    params: &OortSelector,
    round: Round,
    candidates: &[MemberId],
    history: &History,
) -> Vec<(MemberId, f64)> {
    let records: Vec<_> = candidates.iter().filter_map(|m| Some((*m, *history.get(m)?))).collect();
    let utilities: Vec<f64> = records.iter().filter_map(|(_, r)| r.utility).collect();
    let clip = quantile(&utilities, UTILITY_CLIP_QUANTILE);
    let low = utilities.iter().copied().fold(f64::INFINITY, f64::min);
    let range = (clip - low).max(f64::EPSILON);
    let durations: Vec<f64> =
        records.iter().filter_map(|(_, r)| r.duration_ms).map(|d| d as f64).collect();
    let preferred = match params.preferred_duration_secs {
        Some(secs) => f64::from(secs) * 1000.0,
        None => quantile(&durations, 0.5),
    };
    let ln_round = (round.max(1) as f64).ln();
    records
        .into_iter()
        .map(|(member, record)| {
            let utility = (record.utility.unwrap_or(low).min(clip) - low) / range;
            let staleness = (STALENESS_WEIGHT * ln_round / record.last_round.max(1) as f64).sqrt();
            let duration = record.duration_ms.map_or(preferred, |d| d as f64);
            let speed = if duration > preferred {
                (preferred / duration).powf(f64::from(params.straggler_penalty))
            } else {
                1.0
            };
            (member, (utility + staleness) * speed)
        })
        .collect()
}

/// The value at quantile `q` of `values` (0 when there are none).
fn quantile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable_by(f64::total_cmp);
    let index = ((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1));
    sorted.get(index).copied().unwrap_or(0.0)
}

/// Oort's exploitation: `wanted` of the scored candidates, drawn with probability by score
/// among those at least [`CUT_OFF`] of the `wanted`-th best, without replacement (each gets the
/// seeded key u^(1/score), the largest keys win: Efraimidis and Spirakis' weighted sample).
fn exploit(job: &JobId, round: Round, scored: &[(MemberId, f64)], wanted: usize) -> Vec<MemberId> {
    if wanted == 0 || scored.is_empty() {
        return Vec::new();
    }
    let mut by_score = scored.to_vec();
    by_score.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
    let threshold = by_score[wanted.min(by_score.len()) - 1].1 * CUT_OFF;
    let mut keyed: Vec<(f64, MemberId)> = by_score
        .into_iter()
        .filter(|(_, s)| *s >= threshold)
        .map(|(member, s)| (uniform(job, round, &member).ln() / s.max(MIN_WEIGHT), member))
        .collect();
    keyed.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
    keyed.into_iter().take(wanted).map(|(_, member)| member).collect()
}

/// A seeded draw in (0, 1) for `member` in `round`.
fn uniform(job: &JobId, round: Round, member: &MemberId) -> f64 {
    (score(job, round, "oort", member) as f64 + 1.0) / (u64::MAX as f64 + 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedmesh_protocol::ids::ContentHash;
    use fedmesh_protocol::message::{AggregateReady, Contribution, EvalMetrics, Feedback};

    fn members(n: u8) -> Vec<MemberId> {
        (1..=n).map(|i| MemberId([i; 32])).collect()
    }

    fn job() -> JobId {
        JobId(ContentHash::of(b"guided"))
    }

    /// A result of `round` counting `counted`, each with loss 1 and `duration(member)`.
    fn result(
        round: Round,
        counted: &[MemberId],
        duration: impl Fn(&MemberId) -> u64,
    ) -> AggregateReady {
        AggregateReady {
            job: job(),
            round,
            base_model: ContentHash::of(b"base"),
            model: ContentHash::of(&round.to_le_bytes()),
            contributions: counted
                .iter()
                .map(|m| Contribution { member: *m, delta: ContentHash::of(&m.0), samples: 10 })
                .collect(),
            feedback: counted
                .iter()
                .map(|m| Some(Feedback { loss: 1.0, duration_ms: duration(m) }))
                .collect(),
            metrics: EvalMetrics::default(),
            members: Vec::new(),
            vetted: Vec::new(),
            sent_at_ms: 0,
            optimizer_state: None,
        }
    }

    #[test]
    fn fedbuff_prefers_members_not_counted_recently_and_covers_everyone_in_turn() {
        let all = members(9);
        let mut history = History::default();
        let mut seen = std::collections::BTreeSet::new();
        for round in 1..=3 {
            let chosen = fedbuff(&job(), round, &all, &history, 3);
            assert_eq!(chosen.len(), 3);
            assert!(chosen.iter().all(|m| seen.insert(*m)), "round {round} repeats a member");
            history.record(&result(round, &chosen, |_| 100));
        }
        assert_eq!(seen.len(), 9, "three rounds of three cover all nine");
    }

    /// How many of `rounds` rounds chose each of `all` (Oort with `params`, results recorded),
    /// members 1 and 2 five times slower than the others.
    fn oort_picks(
        params: &OortSelector,
        all: &[MemberId],
        count: usize,
        rounds: Round,
    ) -> Vec<u32> {
        let slow = |m: &MemberId| if m.0[0] <= 2 { 5_000 } else { 1_000 };
        let mut history = History::default();
        let mut picks = vec![0u32; all.len()];
        for round in 1..=rounds {
            let chosen = oort(params, &job(), round, all, &history, count);
            assert_eq!(chosen.len(), count, "round {round}");
            for member in &chosen {
                picks[usize::from(member.0[0]) - 1] += 1;
            }
            history.record(&result(round, &chosen, slow));
        }
        picks
    }

    #[test]
    fn oort_picks_slow_members_rarely_yet_explores_them() {
        let params = OortSelector::default();
        let picks = oort_picks(&params, &members(10), 5, 60);
        let slow = picks[0] + picks[1];
        // A random half picks the two of them 60 times in 60 rounds, expectedly.
        assert!(slow < 30, "half as often as random at most: {picks:?}");
        assert!(picks[0] > 0 && picks[1] > 0, "exploration still picks each: {picks:?}");
    }

    #[test]
    fn oort_re_explores_a_tenth_of_four_in_some_rounds_not_in_every_one() {
        // The testnet's Oort scenario: 4 of 8 a round, two of them slow. Exploring one in every
        // round (0.1 · 4 rounded up) would pick a slow one some 8 times in 20 rounds; a random
        // half 20 times.
        let picks = oort_picks(&OortSelector::default(), &members(8), 4, 20);
        let slow = picks[0] + picks[1];
        assert!(slow <= 6, "{picks:?}");
        assert!(picks[0] > 0 && picks[1] > 0, "each is tried: {picks:?}");
    }

    #[test]
    fn oort_rests_a_member_exploited_max_consecutive_rounds() {
        let params = OortSelector { exploration: 0.0, max_consecutive: 2, ..Default::default() };
        let all = members(6);
        let mut history = History::default();
        let mut streaks = [0u32; 6];
        for round in 1..=20 {
            let chosen = oort(&params, &job(), round, &all, &history, 3);
            for (index, member) in all.iter().enumerate() {
                streaks[index] = if chosen.contains(member) { streaks[index] + 1 } else { 0 };
                assert!(streaks[index] <= 2, "{member} chosen 3 rounds in a row by round {round}");
            }
            history.record(&result(round, &chosen, |_| 100));
        }
    }

    #[test]
    fn oort_explores_untried_members_first_and_is_the_same_for_the_same_inputs() {
        let all = members(10);
        let params = OortSelector { exploration: 0.4, ..Default::default() };
        let mut history = History::default();
        let first = oort(&params, &job(), 1, &all, &history, 5);
        history.record(&result(1, &first, |_| 100));
        let second = oort(&params, &job(), 2, &all, &history, 5);
        let untried = second.iter().filter(|m| !first.contains(m)).count();
        assert!(untried >= 2, "40% of 5 explored among the untried: {first:?} then {second:?}");
        assert_eq!(second, oort(&params, &job(), 2, &all, &history, 5));
    }
}
