//! What the results of past rounds showed of each member, as selectors that learn from them
//! (`fedbuff`, `oort`) read it: the last round its update counted in, how many in a row, and
//! Oort's utility and duration from the aggregator's feedback, each bounded against lies.

use fedmesh_protocol::ids::{MemberId, Round};
use fedmesh_protocol::message::{AggregateReady, Contribution, Feedback};
use std::collections::BTreeMap;

/// The largest training loss a member's report counts with: a member cannot make its update
/// look arbitrarily useful by reporting a huge loss (and selection also clips every utility at
/// the 95th percentile of the others').
pub const MAX_REPORTED_LOSS: f32 = 100.0;
/// The shortest duration recorded: an update that arrived with its opening still took time.
const MIN_DURATION_MS: u64 = 1;

/// What the results taken so far showed of each member whose update one of them counted.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct History {
    members: BTreeMap<MemberId, Record>,
}

/// One member's line of the [`History`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Record {
    /// The newest round whose result counted its update.
    pub last_round: Round,
    /// How many rounds in a row, up to `last_round`, counted it.
    pub streak: u32,
    /// Oort's statistical utility of its last update with feedback: its samples times its
    /// reported loss (bounded by [`MAX_REPORTED_LOSS`]), standing for |B|·sqrt(mean loss²).
    pub utility: Option<f64>,
    /// How long after the opening its last update with feedback reached the aggregator.
    pub duration_ms: Option<u64>,
}

impl History {
    /// Records a round's result: each member it counts, with the feedback on its update.
    pub fn record(&mut self, ready: &AggregateReady) {
        let feedback = ready.feedback.iter().copied().map(Some).chain(std::iter::repeat(None));
        for (contribution, seen) in ready.contributions.iter().zip(feedback) {
            self.record_one(ready.round, contribution, seen.flatten());
        }
    }

    fn record_one(&mut self, round: Round, contribution: &Contribution, seen: Option<Feedback>) {
        let record = self.members.entry(contribution.member).or_insert(Record {
            last_round: 0,
            streak: 0,
            utility: None,
            duration_ms: None,
        });
        if record.last_round >= round {
            return; // this round's result, or a newer one, was recorded already
        }
        record.streak = if record.last_round + 1 == round { record.streak + 1 } else { 1 };
        record.last_round = round;
        if let Some(feedback) = seen {
            record.utility = Some(contribution.samples as f64 * f64::from(bounded(feedback.loss)));
            record.duration_ms = Some(feedback.duration_ms.max(MIN_DURATION_MS));
        }
    }

    /// What is known of `member`; none if no result counted its update.
    pub fn get(&self, member: &MemberId) -> Option<&Record> {
        self.members.get(member)
    }

    /// The newest round whose result counted `member`'s update (0: none did).
    pub fn last_round(&self, member: &MemberId) -> Round {
        self.get(member).map_or(0, |record| record.last_round)
    }

    /// How many rounds in a row, ending with the one before `round`, counted `member`.
    pub fn consecutive_before(&self, member: &MemberId, round: Round) -> u32 {
        match self.get(member) {
            Some(record) if record.last_round + 1 == round => record.streak,
            _ => 0,
        }
    }
}

/// A reported loss as a utility counts it: non-negative, at most [`MAX_REPORTED_LOSS`]; one that
/// is not a number counts as none.
fn bounded(loss: f32) -> f32 {
    if loss.is_nan() { 0.0 } else { loss.clamp(0.0, MAX_REPORTED_LOSS) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedmesh_protocol::ids::{ContentHash, JobId};
    use fedmesh_protocol::message::EvalMetrics;

    fn result(round: Round, counted: &[(u8, f32, u64)]) -> AggregateReady {
        let contribution = |byte: u8| Contribution {
            member: MemberId([byte; 32]),
            delta: ContentHash::of(&[byte]),
            samples: 10,
        };
        AggregateReady {
            job: JobId(ContentHash::of(b"j")),
            round,
            base_model: ContentHash::of(b"base"),
            model: ContentHash::of(&round.to_le_bytes()),
            contributions: counted.iter().map(|(byte, ..)| contribution(*byte)).collect(),
            feedback: counted
                .iter()
                .map(|(_, loss, duration_ms)| {
                    Some(Feedback { loss: *loss, duration_ms: *duration_ms })
                })
                .collect(),
            metrics: EvalMetrics::default(),
            members: Vec::new(),
            vetted: Vec::new(),
            sent_at_ms: 0,
            optimizer_state: None,
        }
    }

    #[test]
    fn results_record_the_last_round_the_streak_and_bounded_utilities() {
        let mut history = History::default();
        history.record(&result(1, &[(1, 2.0, 300), (2, 1e9, 0)]));
        history.record(&result(2, &[(1, f32::NAN, 500)]));
        history.record(&result(2, &[(1, 7.0, 500)])); // the same round again: ignored
        let one = history.get(&MemberId([1; 32])).expect("recorded");
        assert_eq!((one.last_round, one.streak), (2, 2));
        assert_eq!((one.utility, one.duration_ms), (Some(0.0), Some(500)));
        let two = history.get(&MemberId([2; 32])).expect("recorded");
        assert_eq!(two.utility, Some(10.0 * f64::from(MAX_REPORTED_LOSS)));
        assert_eq!(two.duration_ms, Some(MIN_DURATION_MS));
        assert_eq!(history.consecutive_before(&MemberId([1; 32]), 3), 2);
        assert_eq!(history.consecutive_before(&MemberId([2; 32]), 3), 0, "round 2 left it out");
        history.record(&result(4, &[(1, 1.0, 100)]));
        assert_eq!(history.get(&MemberId([1; 32])).map(|r| r.streak), Some(1), "round 3 missed");
        assert_eq!(history.last_round(&MemberId([9; 32])), 0);
    }
}
