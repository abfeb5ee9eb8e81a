//! Blobs being sent: while a response still holds a blob's bytes, another request for the same
//! blob is answered from that copy under the same budget share, so the members that fetch a new
//! model at once are served side by side from one copy instead of one after another.

use crate::network::{Held, WeakHeld};
use fedmesh_protocol::ids::ContentHash;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

/// The blobs some response is sending now, by hash (cloned handles share them).
#[derive(Clone, Default)]
pub struct BlobsInFlight {
    sending: Arc<Mutex<HashMap<ContentHash, Sending>>>,
}

/// A blob some response is sending: its bytes and budget share, which only responses keep.
struct Sending {
    bytes: Weak<Vec<u8>>,
    held: WeakHeld,
}

impl BlobsInFlight {
    /// The bytes of `hash` and their budget share, if a response is still sending them.
    pub fn get(&self, hash: &ContentHash) -> Option<(Arc<Vec<u8>>, Held)> {
        let mut sending = self.sending.lock().ok()?;
        sending.retain(|_, blob| blob.bytes.strong_count() > 0 && blob.held.upgrade().is_some());
        let blob = sending.get(hash)?;
        Some((blob.bytes.upgrade()?, blob.held.upgrade()?))
    }

    /// Notes that `bytes` of `hash` are being sent under `held`.
    pub fn insert(&self, hash: ContentHash, bytes: &Arc<Vec<u8>>, held: &Held) {
        if let Ok(mut sending) = self.sending.lock() {
            sending.insert(hash, Sending { bytes: Arc::downgrade(bytes), held: held.downgrade() });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::BulkBudget;

    #[test]
    fn a_blob_is_shared_while_a_response_holds_it_and_forgotten_after() {
        let budget = BulkBudget::new(4 << 20);
        let in_flight = BlobsInFlight::default();
        let hash = ContentHash::of(b"model");
        let bytes = Arc::new(vec![1u8; 2 << 20]);
        let held = budget.try_reserve(bytes.len()).unwrap();
        in_flight.insert(hash, &bytes, &held);
        let (shared, shared_held) = in_flight.get(&hash).expect("being sent");
        assert!(Arc::ptr_eq(&shared, &bytes), "the same copy");
        assert!(budget.try_reserve(2 << 20).is_some(), "one share for both responses");
        drop((bytes, held));
        assert!(in_flight.get(&hash).is_some(), "the second response still sends it");
        drop((shared, shared_held));
        assert!(in_flight.get(&hash).is_none());
        assert!(budget.try_reserve(4 << 20).is_some(), "the share is back");
    }
}
