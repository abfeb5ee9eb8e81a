//! The members' blob stores: every model (or kept delta, or secure round's evidence) by content
//! hash, once, with the members holding it (a member's store survives its kills, as its disk
//! would).

use crate::network::Index;
use fedmesh_protocol::ids::ContentHash;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// One blob and who holds it.
struct Blob<T> {
    params: T,
    holders: BTreeSet<Index>,
}

/// All members' stores of one kind of blob (models by default).
pub struct Blobs<T = Arc<Vec<f32>>> {
    blobs: BTreeMap<ContentHash, Blob<T>>,
}

impl<T> Default for Blobs<T> {
    fn default() -> Self {
        Self { blobs: BTreeMap::new() }
    }
}

impl<T> Blobs<T> {
    /// `member` stores `params` under `hash`.
    pub fn put(&mut self, hash: ContentHash, params: T, member: Index) {
        let blob =
            self.blobs.entry(hash).or_insert_with(|| Blob { params, holders: BTreeSet::new() });
        blob.holders.insert(member);
    }

    /// Whether `member` holds `hash`.
    pub fn holds(&self, member: Index, hash: &ContentHash) -> bool {
        self.blobs.get(hash).is_some_and(|blob| blob.holders.contains(&member))
    }

    /// The blob stored under `hash` (by anyone).
    pub fn get(&self, hash: &ContentHash) -> Option<&T> {
        self.blobs.get(hash).map(|blob| &blob.params)
    }

    /// The first holder of `hash`, in index order, that `usable` accepts.
    pub fn find_holder(&self, hash: &ContentHash, usable: impl Fn(Index) -> bool) -> Option<Index> {
        self.blobs.get(hash)?.holders.iter().copied().find(|&member| usable(member))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders_are_tracked_per_model() {
        let mut blobs = Blobs::default();
        let hash = ContentHash::of(b"m");
        blobs.put(hash, Arc::new(vec![1.0]), 4);
        blobs.put(hash, Arc::new(vec![1.0]), 2);
        assert!(blobs.holds(2, &hash) && !blobs.holds(3, &hash));
        assert_eq!(blobs.find_holder(&hash, |m| m != 2), Some(4));
        assert_eq!(blobs.get(&hash).map(|p| p.len()), Some(1));
        assert_eq!(blobs.find_holder(&ContentHash::of(b"other"), |_| true), None);
    }
}
