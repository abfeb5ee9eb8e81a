//! Who holds which model, as their heartbeats and evaluation reports say: a node fetching a
//! model asks the members known to hold it before the others, so a new global model spreads
//! from every member that has it rather than after a blind search of the whole job.

use fedmesh_protocol::ids::{ContentHash, MemberId};
use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// How many models' holders are remembered (the newest; a job moves on by one per round).
const MODELS_REMEMBERED: usize = 8;

/// The newest models, oldest first, each with the members known to hold it.
type ModelHolders = VecDeque<(ContentHash, BTreeSet<MemberId>)>;

/// The holders of the newest models, shared between the engine (which learns them) and its
/// fetch tasks (which read them on every pass over the members).
#[derive(Debug, Clone, Default)]
pub struct Holders(Arc<Mutex<ModelHolders>>);

impl Holders {
    /// Records that `member` holds `model`.
    pub fn add(&self, model: ContentHash, member: MemberId) {
        let mut models = self.lock();
        if let Some((_, holders)) = models.iter_mut().find(|(hash, _)| *hash == model) {
            holders.insert(member);
            return;
        }
        if models.len() >= MODELS_REMEMBERED {
            models.pop_front();
        }
        models.push_back((model, BTreeSet::from([member])));
    }

    /// The members known to hold `model`.
    pub fn of(&self, model: &ContentHash) -> BTreeSet<MemberId> {
        let models = self.lock();
        let found = models.iter().find(|(hash, _)| hash == model);
        found.map(|(_, holders)| holders.clone()).unwrap_or_default()
    }

    /// The lock; the sets stay consistent if a holder of the lock panicked, so a poisoned lock is
    /// used as it is.
    fn lock(&self) -> MutexGuard<'_, ModelHolders> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(byte: u8) -> MemberId {
        MemberId([byte; 32])
    }

    #[test]
    fn holders_of_a_model_are_remembered_for_the_newest_models_only() {
        let holders = Holders::default();
        let first = ContentHash::of(b"model 0");
        holders.add(first, member(1));
        holders.add(first, member(2));
        assert_eq!(holders.of(&first), BTreeSet::from([member(1), member(2)]));
        for round in 1..MODELS_REMEMBERED {
            holders.add(ContentHash::of(format!("model {round}").as_bytes()), member(3));
        }
        assert_eq!(holders.of(&first).len(), 2, "{MODELS_REMEMBERED} models fit");
        holders.add(ContentHash::of(b"one more"), member(3));
        assert!(holders.of(&first).is_empty(), "the oldest model is forgotten");
        assert_eq!(holders.of(&ContentHash::of(b"one more")), BTreeSet::from([member(3)]));
    }
}
