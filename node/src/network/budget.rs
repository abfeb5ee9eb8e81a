//! The bulk budget: how many bytes of request-response frames a node holds at once, received or
//! about to be served. A large frame being received waits for its share before it is read (the
//! sender is held back by the stream's flow control meanwhile), and keeps it until the node is
//! done with it; a blob that would exceed it is not served now (the asker goes to another peer).
//! So a node that many trainers send 100 MB deltas to holds a bounded number of them, not all.

use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Frames below this size are not counted (control messages, small models).
pub const COUNTED_FROM_BYTES: usize = 1 << 20;
/// The budget's unit.
const UNIT: usize = 1 << 10;

/// A shared byte budget (see the module doc).
#[derive(Debug, Clone)]
pub struct BulkBudget {
    units: Arc<Semaphore>,
    total_units: u32,
}

/// A share of the budget, given back when its last clone is dropped (frames that send the same
/// bytes share one).
#[derive(Debug, Clone)]
pub struct Held {
    permit: Option<Arc<OwnedSemaphorePermit>>,
}

/// A handle on a share that does not keep it: the share again while a clone is still held.
#[derive(Debug, Clone)]
pub struct WeakHeld {
    permit: Option<std::sync::Weak<OwnedSemaphorePermit>>,
}

impl Held {
    fn of(permit: Option<OwnedSemaphorePermit>) -> Self {
        Self { permit: permit.map(Arc::new) }
    }

    pub fn downgrade(&self) -> WeakHeld {
        WeakHeld { permit: self.permit.as_ref().map(Arc::downgrade) }
    }
}

impl WeakHeld {
    /// The share, unless every clone of it was dropped (and the budget given back).
    pub fn upgrade(&self) -> Option<Held> {
        match &self.permit {
            None => Some(Held { permit: None }),
            Some(permit) => permit.upgrade().map(|permit| Held { permit: Some(permit) }),
        }
    }
}

impl BulkBudget {
    /// A budget of `bytes` (at least one unit).
    pub fn new(bytes: u64) -> Self {
        let total_units = u32::try_from(bytes / UNIT as u64).unwrap_or(u32::MAX).max(1);
        Self { units: Arc::new(Semaphore::new(total_units as usize)), total_units }
    }

    /// The units a frame of `bytes` takes: none below [`COUNTED_FROM_BYTES`], the whole budget
    /// at most (a frame larger than the budget waits until it has it all).
    fn units_for(&self, bytes: usize) -> u32 {
        if bytes < COUNTED_FROM_BYTES {
            return 0;
        }
        u32::try_from(bytes.div_ceil(UNIT)).unwrap_or(u32::MAX).min(self.total_units)
    }

    /// Waits until `bytes` fit.
    pub async fn reserve(&self, bytes: usize) -> Held {
        let units = self.units_for(bytes);
        if units == 0 {
            return Held::of(None);
        }
        // The semaphore is never closed, so acquiring fails only if it were.
        Held::of(self.units.clone().acquire_many_owned(units).await.ok())
    }

    /// `bytes` if they fit now.
    pub fn try_reserve(&self, bytes: usize) -> Option<Held> {
        let units = self.units_for(bytes);
        if units == 0 {
            return Some(Held::of(None));
        }
        self.units.clone().try_acquire_many_owned(units).ok().map(|p| Held::of(Some(p)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn large_frames_share_the_budget_and_small_ones_pass() {
        let budget = BulkBudget::new(3 << 20);
        let first = budget.reserve(2 << 20).await;
        assert!(budget.try_reserve(2 << 20).is_none());
        assert!(budget.try_reserve(1000).is_some());
        drop(first);
        let whole = budget.try_reserve(10 << 20);
        assert!(whole.is_some(), "a frame larger than the budget takes all of it");
        assert!(budget.try_reserve(1 << 20).is_none());
    }

    #[test]
    fn a_share_is_given_back_when_its_last_clone_is_dropped() {
        let budget = BulkBudget::new(3 << 20);
        let first = budget.try_reserve(2 << 20).unwrap();
        let weak = first.downgrade();
        let again = weak.upgrade().expect("the share is still held");
        drop(first);
        assert!(budget.try_reserve(2 << 20).is_none(), "a clone still holds the share");
        drop(again);
        assert!(weak.upgrade().is_none(), "the share was given back");
        assert!(budget.try_reserve(2 << 20).is_some());
    }
}
