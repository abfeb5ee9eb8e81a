//! The simulated network: each link's latency (fixed per link, drawn from the seed), bandwidth,
//! loss of single message copies, and partitions that cut a set of members off from the rest.

use crate::config::LatencyRange;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// A member's index in the simulation.
pub type Index = usize;

/// Links, loss and the current partition.
pub struct Network {
    seed: u64,
    latency: LatencyRange,
    bytes_per_ms: f64,
    loss: f64,
    /// The side of the cut each member is on, while a partition lasts.
    cut: Option<Vec<bool>>,
}

/// A cheap, well-mixed 64-bit hash (splitmix64's finalizer).
pub fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl Network {
    pub fn new(seed: u64, latency: LatencyRange, bandwidth_mbps: f64, loss: f64) -> Self {
        let bytes_per_ms = bandwidth_mbps * 1e6 / 8.0 / 1e3;
        Self { seed: mix(seed ^ 0x006E_6574_776F_726B), latency, bytes_per_ms, loss, cut: None }
    }

    /// The one-way latency of the link between `a` and `b` (the same both ways).
    pub fn latency_ms(&self, a: Index, b: Index) -> u64 {
        let (low, high) = (a.min(b) as u64, a.max(b) as u64);
        let spread = self.latency.max_ms - self.latency.min_ms + 1;
        self.latency.min_ms + mix(self.seed ^ mix(low << 32 | high)) % spread
    }

    /// How long `bytes` take from `a` to `b`: the link's latency plus the time on the wire.
    pub fn transfer_ms(&self, a: Index, b: Index, bytes: u64) -> u64 {
        self.latency_ms(a, b) + (bytes as f64 / self.bytes_per_ms).ceil() as u64
    }

    /// Whether one message copy is lost (draws from `rng` only when loss is possible).
    pub fn lost(&self, rng: &mut ChaCha8Rng) -> bool {
        self.loss > 0.0 && rng.random_bool(self.loss)
    }

    /// Whether `a` and `b` are on the same side of the current partition (if any).
    pub fn reachable(&self, a: Index, b: Index) -> bool {
        self.cut.as_ref().is_none_or(|side| side[a] == side[b])
    }

    /// Cuts `cut_off` off from the other members of `members`.
    pub fn partition(&mut self, members: usize, cut_off: &[Index]) {
        let mut side = vec![false; members];
        cut_off.iter().for_each(|&i| side[i] = true);
        self.cut = Some(side);
    }

    /// Ends the partition.
    pub fn heal(&mut self) {
        self.cut = None;
    }

    pub fn is_partitioned(&self) -> bool {
        self.cut.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn links_are_symmetric_within_bounds_and_seeded() {
        let range = LatencyRange { min_ms: 10, max_ms: 20 };
        let network = Network::new(7, range, 8.0, 0.0);
        let latencies: Vec<u64> = (0..50).map(|b| network.latency_ms(3, b)).collect();
        assert!(latencies.iter().all(|l| (10..=20).contains(l)));
        assert!(latencies.iter().any(|&l| l != latencies[0]), "links differ");
        assert_eq!(network.latency_ms(3, 9), network.latency_ms(9, 3));
        let other = Network::new(8, range, 8.0, 0.0);
        assert!((0..50).any(|b| other.latency_ms(3, b) != network.latency_ms(3, b)));
        // 8 Mbit/s is 1,000 bytes a millisecond.
        assert_eq!(network.transfer_ms(3, 9, 5_000), network.latency_ms(3, 9) + 5);
    }

    #[test]
    fn a_partition_cuts_links_across_until_healed() {
        let mut network = Network::new(1, LatencyRange { min_ms: 1, max_ms: 1 }, 1.0, 0.0);
        network.partition(4, &[1, 3]);
        assert!(network.reachable(1, 3) && network.reachable(0, 2));
        assert!(!network.reachable(0, 1) && !network.reachable(3, 2));
        network.heal();
        assert!(network.reachable(0, 1));
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        assert!(!network.lost(&mut rng), "no loss configured");
    }
}
