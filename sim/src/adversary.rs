//! Members that misbehave on purpose: who they are (seeded), and what they send instead of, or
//! beside, what an honest member sends. The honest machines must withstand all of it.

use crate::config::{AdversaryKind, AdversarySpec};
use crate::network::Index;
use fedmesh_protocol::ids::ContentHash;
use fedmesh_protocol::message::{AggregateReady, EvalMetrics, ModelDelta, RoundOpen};
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;

/// Picks the misbehaving members among `members`, seeded: any but the job's owner (member 0),
/// whom the threat model trusts to announce the job (and who leads its first round).
pub fn assign(
    specs: &[AdversarySpec],
    members: usize,
    rng: &mut ChaCha8Rng,
) -> BTreeMap<Index, AdversaryKind> {
    let mut order: Vec<Index> = (1..members).collect();
    order.shuffle(rng);
    let kinds = specs.iter().flat_map(|spec| std::iter::repeat_n(spec.kind, spec.count));
    order.into_iter().zip(kinds).collect()
}

/// The update a poisoning adversary sends for its honest `delta`.
pub fn poison(kind: AdversaryKind, delta: &mut [f32], seed: u64) {
    match kind {
        AdversaryKind::SignFlip => delta.iter_mut().for_each(|d| *d *= -10.0),
        AdversaryKind::Noise => {
            delta.fill(0.0);
            let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
            fedmesh_aggregation::privacy::add_gaussian_noise(delta, 1.0, &mut rng);
        }
        AdversaryKind::WithholdResults
        | AdversaryKind::HijackRounds
        | AdversaryKind::ForgedDeltas
        | AdversaryKind::ForgeAggregate => {}
    }
}

/// The backdoor a forging aggregator adds to the model it announces.
pub fn backdoor(params: &[f32]) -> Vec<f32> {
    params.iter().enumerate().map(|(i, p)| if i % 7 == 0 { p + 0.5 } else { *p }).collect()
}

/// A hijacker's answer to another member's opening: its own opening of the round, and a made-up
/// result for it.
pub fn hijack(open: &RoundOpen, now_ms: u64) -> (RoundOpen, AggregateReady) {
    let competing = RoundOpen { opened_at_ms: now_ms, ..open.clone() };
    let made_up = AggregateReady {
        job: open.job,
        round: open.round,
        base_model: open.base_model,
        model: ContentHash::of(b"a model no honest aggregator made"),
        contributions: Vec::new(),
        feedback: Vec::new(),
        metrics: EvalMetrics::default(),
        members: open.members.clone(),
        vetted: Vec::new(),
        sent_at_ms: now_ms,
        optimizer_state: None,
    };
    (competing, made_up)
}

/// A forged copy of an honest delta.
pub struct Forgery {
    /// Its signature does not verify: the driver drops it.
    pub bad_signature: bool,
    pub delta: ModelDelta,
}

/// The forged copies a forger sends beside `honest`: one with a bad signature, one for the
/// next round and one on a base model that is not the round's.
pub fn forgeries(honest: &ModelDelta) -> [Forgery; 3] {
    [
        Forgery { bad_signature: true, delta: honest.clone() },
        Forgery {
            bad_signature: false,
            delta: ModelDelta { round: honest.round + 1, ..honest.clone() },
        },
        Forgery {
            bad_signature: false,
            delta: ModelDelta {
                base_model: ContentHash::of(b"not the round's model"),
                ..honest.clone()
            },
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn adversaries_are_distinct_seeded_members() {
        let specs = [
            AdversarySpec { kind: AdversaryKind::Noise, count: 2 },
            AdversarySpec { kind: AdversaryKind::HijackRounds, count: 1 },
        ];
        let picked = assign(&specs, 10, &mut ChaCha8Rng::seed_from_u64(3));
        assert_eq!(picked.len(), 3);
        assert!(!picked.contains_key(&0), "the owner is trusted");
        assert_eq!(picked.values().filter(|k| **k == AdversaryKind::Noise).count(), 2);
        assert_eq!(picked, assign(&specs, 10, &mut ChaCha8Rng::seed_from_u64(3)));
    }

    #[test]
    fn poisoned_updates_are_flipped_or_noise() {
        let mut delta = vec![1.0, -2.0];
        poison(AdversaryKind::SignFlip, &mut delta, 0);
        assert_eq!(delta, [-10.0, 20.0]);
        poison(AdversaryKind::Noise, &mut delta, 0);
        assert!(delta.iter().all(|v| v.abs() < 10.0));
    }
}
