//! The fault schedule, drawn from the seed before the run: which members are killed and when
//! (at seeded delays after the first openings of rounds in the first half of the run), and the
//! partition (cut at the first opening of its round, healed one round deadline later).

use crate::config::Config;
use crate::network::Index;
use fedmesh_protocol::ids::Round;
use rand::Rng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet};

/// Something that happens to the world.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    Kill(Index),
    Restart(Index),
    /// The member's operator leaves the job (a signed leave).
    Leave(Index),
    /// A member that left joins the job again, afresh.
    Rejoin(Index),
    /// These members are cut off from the others.
    Partition(Vec<Index>),
    Heal,
}

/// Faults waiting for the first opening of their round.
pub struct Faults {
    /// By round: the faults and their delays after the round's first opening.
    due: BTreeMap<Round, Vec<(u64, Fault)>>,
}

impl Faults {
    /// Draws the schedule; `spared` members (the adversaries) are never killed.
    pub fn plan(config: &Config, spared: impl Fn(Index) -> bool, rng: &mut ChaCha8Rng) -> Self {
        let mut due: BTreeMap<Round, Vec<(u64, Fault)>> = BTreeMap::new();
        let deadline_ms = config.deadline_secs * 1_000;
        let mut candidates: Vec<Index> = (0..config.members).filter(|&i| !spared(i)).collect();
        candidates.shuffle(rng);
        let kills = (config.kill * config.members as f64).round() as usize;
        let leaves = (config.leave * config.members as f64).round() as usize;
        let last_round = (config.rounds / 2).max(1);
        let leavers = candidates.iter().skip(kills).take(leaves).map(|&m| Fault::Leave(m));
        let faults: Vec<Fault> =
            candidates.iter().take(kills).map(|&m| Fault::Kill(m)).chain(leavers).collect();
        for fault in faults {
            let round = rng.random_range(1..=last_round);
            let delay = rng.random_range(0..=deadline_ms / 2);
            due.entry(round).or_default().push((delay, fault));
        }
        if let Some(partition) = config.partition {
            let mut order: Vec<Index> = (0..config.members).collect();
            order.shuffle(rng);
            let cut = (partition.fraction * config.members as f64).round() as usize;
            order.truncate(cut);
            order.sort_unstable();
            let faults = due.entry(partition.round).or_default();
            faults.push((0, Fault::Partition(order)));
            faults.push((deadline_ms, Fault::Heal));
        }
        Self { due }
    }

    /// Every member the schedule kills.
    pub fn victims(&self) -> BTreeSet<Index> {
        let faults = self.due.values().flatten();
        faults
            .filter_map(|(_, fault)| match fault {
                Fault::Kill(member) => Some(*member),
                _ => None,
            })
            .collect()
    }

    /// The faults due when `round` is opened for the first time, with their delays (each
    /// round's only once).
    pub fn on_first_opening(&mut self, round: Round) -> Vec<(u64, Fault)> {
        self.due.remove(&round).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PartitionSpec;
    use rand::SeedableRng;

    #[test]
    fn kills_fall_in_the_first_half_and_spare_the_adversaries() {
        let config = Config {
            kill: 0.3,
            partition: Some(PartitionSpec { round: 2, fraction: 0.5 }),
            ..Config::new(20, 6, 1)
        };
        let mut faults = Faults::plan(&config, |i| i < 5, &mut ChaCha8Rng::seed_from_u64(1));
        let victims = faults.victims();
        let mut kills = Vec::new();
        for round in 1..=6 {
            for (delay, fault) in faults.on_first_opening(round) {
                assert!(delay <= 30_000);
                match fault {
                    Fault::Kill(member) => {
                        assert!(round <= 3 && member >= 5);
                        kills.push(member);
                    }
                    Fault::Partition(cut) => assert_eq!((round, cut.len()), (2, 10)),
                    Fault::Heal => assert_eq!((round, delay), (2, 30_000)),
                    Fault::Restart(_) | Fault::Rejoin(_) => {
                        unreachable!("they follow kills and leaves")
                    }
                    Fault::Leave(_) => unreachable!("no member leaves in this run"),
                }
            }
        }
        assert_eq!(kills.len(), 6);
        kills.sort_unstable();
        assert_eq!(kills, victims.into_iter().collect::<Vec<_>>());
        assert!(faults.on_first_opening(2).is_empty(), "once per round");
    }
}
