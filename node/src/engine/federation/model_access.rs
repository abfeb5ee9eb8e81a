//! Who may pull a model this node holds: the models of an allow-listed job go to its members, its
//! owner and its coordinator alone (as its results and member list do, by the same rule in the
//! job's machine); an open job's to anyone. A blob no job of this node is known to use (an
//! initial model whose round has passed, say) goes only to the peers of its jobs while any of
//! them is allow-listed.

use super::JobRun;
use crate::engine::Engine;
use fedmesh_protocol::ids::{ContentHash, MemberId};

impl JobRun {
    /// Whether `hash` is one of this run's models: its current one or a round's.
    fn uses_model(&self, hash: &ContentHash) -> bool {
        self.machine.model() == *hash
            || self.machine.rounds().values().any(|round| round.model == Some(*hash))
    }

    fn is_open(&self) -> bool {
        self.machine.spec().participation.allow.is_empty()
    }
}

impl Engine {
    /// Whether `peer` may pull the blob `hash` from this node (see the module doc).
    pub(in crate::engine) fn may_pull_model(&self, peer: &MemberId, hash: &ContentHash) -> bool {
        let mut users = self.runs.values().filter(|run| run.uses_model(hash)).peekable();
        if users.peek().is_some() {
            return users.any(|run| run.machine.may_learn_of_job(peer));
        }
        self.runs.values().all(JobRun::is_open)
            || self.runs.values().any(|run| run.machine.may_learn_of_job(peer))
    }
}
