//! What a job's machine holds for later, paid for: the updates it keeps for a round whose opening
//! has not arrived take their bytes from the bulk budget, as frames being received do, so a
//! flood of early updates cannot grow the node's memory past it (the machine drops them when
//! they do not fit); and a job that ended (completed, stopped or left) keeps no waiting input.

use super::JobRun;
use crate::engine::Engine;
use crate::network::Held;
use fedmesh_federation::member::Reason;
use fedmesh_federation::member::Refusal;
use fedmesh_protocol::ids::JobId;

/// The budget share a run's early updates hold, and how many bytes it is for.
pub type EarlyShare = Option<(usize, Held)>;

/// Makes `share` cover `bytes`, reserving with `reserve` when it changes; false if they do not
/// fit (the share is then empty).
pub fn charge(
    share: &mut EarlyShare,
    bytes: usize,
    reserve: impl FnOnce(usize) -> Option<Held>,
) -> bool {
    if share.as_ref().map_or(0, |(held_for, _)| *held_for) == bytes {
        return true;
    }
    // The old share goes back first, so a grown one is not counted twice.
    *share = None;
    if bytes == 0 {
        return true;
    }
    *share = reserve(bytes).map(|held| (bytes, held));
    share.is_some()
}

impl Engine {
    /// Charges the bytes of the updates `id`'s machine keeps early to the bulk budget, and
    /// has the machine drop them when they do not fit; answers an ended job's waiting requests.
    pub(super) async fn settle_held_inputs(&mut self, id: JobId) {
        let Some(run) = self.runs.get_mut(&id) else { return };
        let bytes = run.machine.early_bytes();
        let network = &self.network;
        if !charge(&mut run.early_share, bytes, |bytes| network.try_reserve(bytes)) {
            tracing::warn!(job = %id, bytes, "early updates dropped: the bulk budget is full");
            self.metrics.rejected("update", "early_over_budget");
            run.machine.drop_early();
        }
        if !run.is_active() {
            self.answer_waiting(id).await;
        }
    }

    /// Refuses the requests an ended run still holds.
    async fn answer_waiting(&mut self, id: JobId) {
        let waiting: Vec<u64> =
            self.runs.get(&id).map(JobRun::waiting_requests).unwrap_or_default();
        for request in waiting {
            let ended = Refusal::new(Reason::Ended, format!("job {id} has ended on this node"));
            self.answer(id, request, Err(ended)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::BulkBudget;

    #[test]
    fn early_bytes_hold_a_share_of_the_budget_until_they_are_gone() {
        let budget = BulkBudget::new(4 << 20);
        let reserve = |bytes| budget.try_reserve(bytes);
        let mut share = EarlyShare::None;
        assert!(charge(&mut share, 3 << 20, reserve));
        assert!(budget.try_reserve(2 << 20).is_none(), "3 MiB of 4 are held");
        assert!(charge(&mut share, 2 << 20, reserve), "shrunk");
        let frame = budget.try_reserve(2 << 20);
        assert!(frame.is_some(), "a frame takes the rest");
        assert!(!charge(&mut share, 3 << 20, reserve), "3 MiB do not fit beside the frame");
        assert!(share.is_none());
        drop(frame);
        assert!(charge(&mut share, 0, reserve));
        assert!(budget.try_reserve(4 << 20).is_some(), "all of it is back");
    }
}
