//! Blobs being sent, and models this node just made. While a response still holds a blob's
//! bytes, another request for the same blob is answered from that copy under the same budget
//! share, so the members that fetch a new model at once are served side by side from one copy
//! instead of one after another. At most [`MAX_SHARED_SENDS`] responses send one copy at once: a
//! member asking again and again for the model in flight gets `Busy`, not a send of the whole
//! model per small request. A model this node made is served from its parameters in memory
//! while its job still holds them, not read back from the disk it was just written to.

use crate::network::{Held, WeakHeld};
use fedmesh_protocol::ids::ContentHash;
use fedmesh_protocol::tensor::{SharedBytes, SharedPayload};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

/// The most responses that send one blob's copy at once.
pub const MAX_SHARED_SENDS: usize = 8;

/// The blobs some response is sending now, by hash (cloned handles share them).
#[derive(Clone, Default)]
pub struct BlobsInFlight {
    sending: Arc<Mutex<HashMap<ContentHash, Sending>>>,
}

/// A blob some response is sending: its bytes and budget share, which only responses keep.
struct Sending {
    bytes: Weak<dyn SharedBytes>,
    held: WeakHeld,
}

impl BlobsInFlight {
    /// The bytes of `hash` and their budget share, if a response is still sending them and
    /// fewer than [`MAX_SHARED_SENDS`] do.
    pub fn get(&self, hash: &ContentHash) -> Option<(SharedPayload, Held)> {
        let mut sending = self.sending.lock().ok()?;
        sending.retain(|_, blob| blob.bytes.strong_count() > 0 && blob.held.upgrade().is_some());
        let blob = sending.get(hash)?;
        if blob.bytes.strong_count() >= MAX_SHARED_SENDS {
            return None;
        }
        Some((blob.bytes.upgrade()?, blob.held.upgrade()?))
    }

    /// Notes that `bytes` of `hash` are being sent under `held`.
    pub fn insert(&self, hash: ContentHash, bytes: &SharedPayload, held: &Held) {
        if let Ok(mut sending) = self.sending.lock() {
            sending.insert(hash, Sending { bytes: Arc::downgrade(bytes), held: held.downgrade() });
        }
    }
}

/// The models this node made, by hash, while their jobs still hold their parameters (no
/// handle keeps them alive).
#[derive(Clone, Default)]
pub struct ModelsInMemory {
    made: Arc<Mutex<HashMap<ContentHash, Weak<Vec<f32>>>>>,
}

impl ModelsInMemory {
    /// Notes that `params` are the model stored as `hash`; forgets the models no one holds.
    pub fn insert(&self, hash: ContentHash, params: &Arc<Vec<f32>>) {
        if let Ok(mut made) = self.made.lock() {
            made.retain(|_, params| params.strong_count() > 0);
            made.insert(hash, Arc::downgrade(params));
        }
    }

    /// The parameters of model `hash`, if this node made it and still holds them.
    pub fn get(&self, hash: &ContentHash) -> Option<Arc<Vec<f32>>> {
        self.made.lock().ok()?.get(hash)?.upgrade()
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
        let bytes: SharedPayload = Arc::new(vec![1u8; 2 << 20]);
        let held = budget.try_reserve(bytes.bytes().len()).unwrap();
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

    #[test]
    fn no_more_than_the_cap_of_responses_send_one_copy_at_once() {
        let budget = BulkBudget::new(4 << 20);
        let in_flight = BlobsInFlight::default();
        let hash = ContentHash::of(b"model");
        let bytes: SharedPayload = Arc::new(vec![1u8; 2 << 20]);
        let held = budget.try_reserve(bytes.bytes().len()).unwrap();
        in_flight.insert(hash, &bytes, &held);
        let sharing: Vec<_> = (1..MAX_SHARED_SENDS).map_while(|_| in_flight.get(&hash)).collect();
        assert_eq!(sharing.len() + 1, MAX_SHARED_SENDS);
        assert!(in_flight.get(&hash).is_none(), "one more would pass the cap");
        drop(sharing);
        assert!(in_flight.get(&hash).is_some(), "below the cap again");
    }

    #[test]
    fn a_made_model_is_served_from_memory_while_its_job_holds_it() {
        let made = ModelsInMemory::default();
        let params = Arc::new(vec![0.5f32; 1000]);
        let hash = fedmesh_protocol::tensor::hash_f32(&params);
        made.insert(hash, &params);
        let held = made.get(&hash).expect("held by its job");
        assert!(Arc::ptr_eq(&held, &params), "the job's own parameters, not a copy");
        assert!(made.get(&ContentHash::of(b"another")).is_none());
        drop((held, params));
        assert!(made.get(&hash).is_none(), "forgotten once the job let go of them");
    }
}
