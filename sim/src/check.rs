//! The invariants checked while the run goes: a member adopts each round's model once (a
//! restarted member may adopt it again, but never another), and every honest member adopts the
//! same model for a round.

use crate::network::Index;
use fedmesh_protocol::ids::{ContentHash, Round};
use std::collections::BTreeMap;

/// Most violations kept in the report.
const MAX_VIOLATIONS: usize = 20;

/// What has been adopted so far.
pub struct Checker {
    /// Per member: the last round it completed, and the model it adopted for each round.
    adopted: Vec<(Round, BTreeMap<Round, ContentHash>)>,
    /// The model honest members adopted for each round.
    agreed: BTreeMap<Round, ContentHash>,
    violations: Vec<String>,
}

impl Checker {
    pub fn new(members: usize) -> Self {
        Self {
            adopted: vec![(0, BTreeMap::new()); members],
            agreed: BTreeMap::new(),
            violations: Vec::new(),
        }
    }

    /// Looks at `member`'s completed round and model after an event.
    pub fn observe(&mut self, member: Index, honest: bool, round: Round, model: ContentHash) {
        let (last, adopted) = &mut self.adopted[member];
        if *last == round {
            return;
        }
        if round < *last {
            // A fraud proof sent it back: the rounds after are run again.
            adopted.retain(|r, _| *r <= round);
            if honest {
                self.agreed.retain(|r, _| *r <= round);
            }
        }
        *last = round;
        if round == 0 {
            return;
        }
        if let Some(before) = adopted.insert(round, model).filter(|before| *before != model) {
            self.violate(format!(
                "member {member} adopted round {round} again with another model ({before:?}, then {model:?})"
            ));
        }
        if !honest {
            return;
        }
        match self.agreed.get(&round) {
            Some(agreed) if *agreed != model => self.violate(format!(
                "member {member} adopted {model:?} for round {round}, others {agreed:?}"
            )),
            Some(_) => {}
            None => {
                self.agreed.insert(round, model);
            }
        }
    }

    /// Checks a member's final round records against what it adopted.
    pub fn check_records(
        &mut self,
        member: Index,
        records: impl Iterator<Item = (Round, Option<ContentHash>)>,
    ) {
        let mut problems = Vec::new();
        for (round, model) in records {
            let adopted = self.adopted[member].1.get(&round);
            if let (Some(model), Some(adopted)) = (model, adopted)
                && model != *adopted
            {
                problems.push(format!(
                    "member {member} records {model:?} for round {round} but adopted {adopted:?}"
                ));
            }
        }
        problems.into_iter().for_each(|problem| self.violate(problem));
    }

    fn violate(&mut self, text: String) {
        if self.violations.len() < MAX_VIOLATIONS {
            self.violations.push(text);
        }
    }

    /// The model honest members adopted for each round.
    pub fn agreed(&self) -> &BTreeMap<Round, ContentHash> {
        &self.agreed
    }

    pub fn violations(&self) -> &[String] {
        &self.violations
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_adopted_with_two_models_is_a_violation() {
        let (a, b) = (ContentHash::of(b"a"), ContentHash::of(b"b"));
        let mut checker = Checker::new(3);
        checker.observe(0, true, 1, a);
        checker.observe(1, true, 1, a);
        checker.observe(2, false, 1, b);
        assert!(checker.violations().is_empty(), "adversaries may disagree");
        checker.observe(1, true, 0, a);
        checker.observe(1, true, 1, a);
        assert!(checker.violations().is_empty(), "a restarted member adopts the same again");
        checker.observe(0, true, 2, b);
        checker.observe(1, true, 2, a);
        assert_eq!(checker.violations().len(), 1);
        checker.check_records(0, [(2, Some(a))].into_iter());
        assert_eq!(checker.violations().len(), 2);
        assert_eq!(checker.agreed().get(&1), Some(&a));
    }
}
