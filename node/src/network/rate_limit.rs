//! A per-peer rate limit on incoming requests: a token bucket per PeerId, refilled at a sustained
//! rate up to a burst. A request that finds its peer's bucket empty is answered with a refusal
//! and never reaches the node. The map of buckets is bounded: at its limit the bucket holding the
//! most tokens (the most idle peer, which a fresh bucket would treat the same) makes room.

use libp2p::PeerId;
use std::collections::HashMap;
use std::time::Instant;

/// Requests per second a peer may keep up. A member sends a handful of requests a round (its
/// update, a join or member-list exchange, a model pull, a result it missed); even the tests'
/// sub-second rounds with a dozen jobs stay well below this.
pub const SUSTAINED_PER_SEC: f64 = 50.0;
/// Requests a peer may send at once: a newly connected peer asks for every job this node knows
/// that it lacks, one request each, and a catching-up member pulls several models.
pub const BURST: f64 = 200.0;
/// Peers whose buckets are kept; more than the node's connection limit, so a connected peer's
/// bucket is evicted only while a crowd of others comes and goes.
const MAX_TRACKED_PEERS: usize = 4096;

/// One peer's tokens, as of `at`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The buckets of every peer recently heard from (see the module doc).
#[derive(Debug)]
pub struct RateLimiter {
    buckets: HashMap<PeerId, Bucket>,
    per_sec: f64,
    burst: f64,
    max_peers: usize,
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::new(SUSTAINED_PER_SEC, BURST, MAX_TRACKED_PEERS)
    }
}

impl RateLimiter {
    pub fn new(per_sec: f64, burst: f64, max_peers: usize) -> Self {
        Self { buckets: HashMap::new(), per_sec, burst, max_peers: max_peers.max(1) }
    }

    /// Takes a token from `peer`'s bucket at `now`; false if it has none left.
    pub fn allow(&mut self, peer: PeerId, now: Instant) -> bool {
        if !self.buckets.contains_key(&peer) && self.buckets.len() >= self.max_peers {
            self.evict_most_idle(now);
        }
        let fresh = Bucket { tokens: self.burst, at: now };
        let bucket = self.buckets.entry(peer).or_insert(fresh);
        let tokens = refilled(bucket, now, self.per_sec, self.burst);
        *bucket = Bucket { tokens, at: now };
        if tokens < 1.0 {
            return false;
        }
        bucket.tokens -= 1.0;
        true
    }

    /// How many peers have a bucket.
    #[cfg(test)]
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }

    fn evict_most_idle(&mut self, now: Instant) {
        let (per_sec, burst) = (self.per_sec, self.burst);
        let fullest = self
            .buckets
            .iter()
            .max_by(|a, b| {
                let (a, b) =
                    (refilled(a.1, now, per_sec, burst), refilled(b.1, now, per_sec, burst));
                a.total_cmp(&b)
            })
            .map(|(peer, _)| *peer);
        if let Some(peer) = fullest {
            self.buckets.remove(&peer);
        }
    }
}

/// The tokens `bucket` holds at `now`.
fn refilled(bucket: &Bucket, now: Instant, per_sec: f64, burst: f64) -> f64 {
    let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
    (bucket.tokens + elapsed * per_sec).min(burst)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_passes_then_the_sustained_rate() {
        let mut limiter = RateLimiter::new(10.0, 5.0, 16);
        let (peer, start) = (PeerId::random(), Instant::now());
        let passed = (0..8).filter(|_| limiter.allow(peer, start)).count();
        assert_eq!(passed, 5, "the burst");
        let later = start + Duration::from_millis(300);
        let passed = (0..8).filter(|_| limiter.allow(peer, later)).count();
        assert_eq!(passed, 3, "0.3 s at 10 per second");
        assert!(limiter.allow(PeerId::random(), later), "another peer has its own bucket");
    }

    #[test]
    fn the_map_stays_bounded_and_keeps_the_busy_peer() {
        let mut limiter = RateLimiter::new(1.0, 3.0, 4);
        let (busy, now) = (PeerId::random(), Instant::now());
        (0..3).for_each(|_| {
            limiter.allow(busy, now);
        });
        for _ in 0..100 {
            limiter.allow(PeerId::random(), now);
        }
        assert_eq!(limiter.tracked(), 4);
        assert!(!limiter.allow(busy, now), "its empty bucket was not evicted");
    }
}
