//! The run's trace digest: a BLAKE3 hash over every event fed to a machine, in order (its time,
//! member, kind, round and the hashes it names), so two runs are equal exactly when their
//! digests are.

use crate::network::Index;
use fedmesh_federation::member::{Event, Gossip, Update};
use fedmesh_protocol::ids::{ContentHash, Round};

/// The running digest of a run's events.
pub struct Trace {
    hasher: blake3::Hasher,
    events: u64,
}

/// What an event contributes to the trace: its kind, its round and the hashes it names.
struct Fingerprint {
    kind: u8,
    round: Round,
    hashes: [Option<[u8; 32]>; 2],
}

impl Fingerprint {
    fn new(kind: u8, round: Round, first: Option<ContentHash>, second: Option<[u8; 32]>) -> Self {
        Self { kind, round, hashes: [first.map(|h| h.0), second] }
    }
}

impl Default for Trace {
    fn default() -> Self {
        Self { hasher: blake3::Hasher::new(), events: 0 }
    }
}

impl Trace {
    /// Adds `event`, fed to `member` at `now_ms`.
    pub fn record(&mut self, now_ms: u64, member: Index, event: &Event) {
        let print = fingerprint(event);
        self.events += 1;
        // The same bytes as before, laid out first and hashed in one call (one call per field
        // was a measurable share of a run of millions of events).
        let mut bytes = [0u8; 8 + 8 + 1 + 8 + 2 * 32];
        bytes[..8].copy_from_slice(&now_ms.to_le_bytes());
        bytes[8..16].copy_from_slice(&(member as u64).to_le_bytes());
        bytes[16] = print.kind;
        bytes[17..25].copy_from_slice(&print.round.to_le_bytes());
        let mut end = 25;
        for hash in print.hashes.iter().flatten() {
            bytes[end..end + 32].copy_from_slice(hash);
            end += 32;
        }
        self.hasher.update(&bytes[..end]);
    }

    /// How many events were recorded.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// The digest so far, in hex.
    pub fn digest(&self) -> String {
        self.hasher.finalize().to_hex().to_string()
    }
}

fn fingerprint(event: &Event) -> Fingerprint {
    match event {
        Event::Tick => Fingerprint::new(0, 0, None, None),
        Event::Gossip { signer, message } => gossip_fingerprint(message, signer.0),
        Event::Update { signer, update: Update::Delta(delta), .. } => {
            Fingerprint::new(10, delta.round, Some(delta.payload.hash), Some(signer.0))
        }
        Event::Update { signer, update: Update::Partial(partial), .. } => {
            Fingerprint::new(11, partial.round, Some(partial.mean.hash), Some(signer.0))
        }
        Event::Update { signer, update: Update::Chunk(chunk), .. } => {
            Fingerprint::new(20, chunk.round, Some(chunk.values.hash), Some(signer.0))
        }
        Event::ResultAsked { from, round, .. } => Fingerprint::new(12, *round, None, Some(from.0)),
        Event::Trained { round, base, outcome } => {
            Fingerprint::new(13 + u8::from(outcome.is_err()), *round, Some(*base), None)
        }
        Event::Fetched { model, outcome } => {
            Fingerprint::new(15 + u8::from(outcome.is_err()), 0, Some(*model), None)
        }
        Event::Stored { round, model, .. } => Fingerprint::new(17, *round, Some(*model), None),
        Event::OptimizerStateFetched { state, outcome } => {
            Fingerprint::new(40 + u8::from(outcome.is_err()), 0, Some(*state), None)
        }
        Event::Evaluated { round, model, .. } => Fingerprint::new(18, *round, Some(*model), None),
        Event::LeaveRequested { .. } => Fingerprint::new(19, 0, None, None),
        Event::ReachabilityChanged { reachable } => {
            Fingerprint::new(50, u64::from(*reachable), None, None)
        }
        Event::JoinSent { signer, asks, .. } => {
            Fingerprint::new(21 + u8::from(*asks), 0, None, Some(signer.0))
        }
        Event::PeerSubscribed { .. } => Fingerprint::new(25, 0, None, None),
        Event::MembersAsked { from, .. } => Fingerprint::new(23, 0, None, Some(from.0)),
        Event::MembersSent { from, members } => {
            Fingerprint::new(24, members.len() as u64, None, Some(from.0))
        }
        Event::Audited { model, outcome } => {
            Fingerprint::new(26 + u8::from(outcome.is_err()), 0, Some(*model), None)
        }
        Event::ContributionAsked { from, hash, .. } => {
            Fingerprint::new(28, 0, Some(*hash), Some(from.0))
        }
        Event::Secure { signer, message, .. } => {
            Fingerprint::new(29, message.round, None, Some(signer.0))
        }
    }
}

fn gossip_fingerprint(message: &Gossip, signer: [u8; 32]) -> Fingerprint {
    let signer = Some(signer);
    match message {
        Gossip::Join(_) => Fingerprint::new(1, 0, None, signer),
        Gossip::Leave(_) => Fingerprint::new(2, 0, None, signer),
        Gossip::Heartbeat(beat) => Fingerprint::new(3, beat.round, Some(beat.model), signer),
        Gossip::Open(open) => Fingerprint::new(4, open.round, Some(open.base_model), signer),
        Gossip::Result(ready) => Fingerprint::new(5, ready.round, Some(ready.model), signer),
        Gossip::Eval(report) => Fingerprint::new(6, report.round, Some(report.model), signer),
        Gossip::Stop(_) => Fingerprint::new(7, 0, None, signer),
        Gossip::Assign(assignment) => {
            Fingerprint::new(8, assignment.round, Some(assignment.base_model), signer)
        }
        Gossip::FraudProof(accusation) => {
            let result = &accusation.result;
            Fingerprint::new(9, result.round, Some(result.model), signer)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_follows_every_event_and_its_order() {
        let stored =
            |round| Event::Stored { round, model: ContentHash::of(b"m"), optimizer_state: None };
        let digest = |events: &[(u64, Index, Event)]| {
            let mut trace = Trace::default();
            events.iter().for_each(|(at, member, event)| trace.record(*at, *member, event));
            trace.digest()
        };
        let a = digest(&[(1, 0, Event::Tick), (2, 1, stored(1))]);
        assert_eq!(a, digest(&[(1, 0, Event::Tick), (2, 1, stored(1))]));
        assert_ne!(a, digest(&[(2, 1, stored(1)), (1, 0, Event::Tick)]));
        assert_ne!(a, digest(&[(1, 0, Event::Tick), (2, 1, stored(2))]));
        assert_ne!(a, digest(&[(1, 0, Event::Tick), (3, 1, stored(1))]));
    }
}
