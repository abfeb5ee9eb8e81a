//! Partitioners for experiments: IID, Dirichlet(alpha) over labels, and shards of k labels per
//! client. Each is seeded, and every sample lands in exactly one partition.

use crate::error::{LearningError, Result};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand_distr::{Distribution, Gamma};

/// How samples are dealt to clients.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Partitioner {
    /// Shuffled and dealt evenly.
    Iid,
    /// Per class, client shares drawn from Dirichlet(alpha): small alpha, skewed labels.
    Dirichlet { alpha: f64 },
    /// The data sorted by label, cut into `k` shards per client, shards dealt at random.
    Shards { k: usize },
}

impl std::str::FromStr for Partitioner {
    type Err = LearningError;

    /// `iid`, `dirichlet:0.5` or `shards:2`.
    fn from_str(text: &str) -> Result<Self> {
        let bad = || {
            LearningError::Invalid(format!(
                "`{text}` is not a partition: use iid, dirichlet:ALPHA or shards:K"
            ))
        };
        match text.split_once(':') {
            None if text == "iid" => Ok(Self::Iid),
            Some(("dirichlet", alpha)) => match alpha.parse::<f64>() {
                Ok(alpha) if alpha > 0.0 && alpha.is_finite() => Ok(Self::Dirichlet { alpha }),
                _ => Err(bad()),
            },
            Some(("shards", k)) => match k.parse::<usize>() {
                Ok(k) if k > 0 => Ok(Self::Shards { k }),
                _ => Err(bad()),
            },
            _ => Err(bad()),
        }
    }
}

impl Partitioner {
    /// Sample indices per client. Every index in `0..labels.len()` appears exactly once; no client
    /// is left empty when there are at least as many samples as clients.
    pub fn partition(
        &self,
        labels: &[usize],
        clients: usize,
        seed: u64,
    ) -> Result<Vec<Vec<usize>>> {
        if clients == 0 {
            return Err(LearningError::Invalid("cannot partition among 0 clients".to_owned()));
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let mut parts = match *self {
            Self::Iid => iid(labels.len(), clients, &mut rng),
            Self::Dirichlet { alpha } => dirichlet(labels, clients, alpha, &mut rng)?,
            Self::Shards { k } => shards(labels, clients, k, &mut rng),
        };
        fill_empty(&mut parts);
        Ok(parts)
    }
}

fn iid(len: usize, clients: usize, rng: &mut StdRng) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..len).collect();
    order.shuffle(rng);
    let mut parts = vec![Vec::new(); clients];
    for (position, index) in order.into_iter().enumerate() {
        parts[position % clients].push(index);
    }
    parts
}

fn by_class(labels: &[usize]) -> Vec<Vec<usize>> {
    let classes = labels.iter().max().map_or(0, |m| m + 1);
    let mut groups = vec![Vec::new(); classes];
    for (index, &label) in labels.iter().enumerate() {
        groups[label].push(index);
    }
    groups
}

fn dirichlet(
    labels: &[usize],
    clients: usize,
    alpha: f64,
    rng: &mut StdRng,
) -> Result<Vec<Vec<usize>>> {
    let gamma = Gamma::new(alpha, 1.0)
        .map_err(|e| LearningError::Invalid(format!("dirichlet alpha {alpha}: {e}")))?;
    let mut parts = vec![Vec::new(); clients];
    for mut members in by_class(labels) {
        members.shuffle(rng);
        let draws: Vec<f64> =
            (0..clients).map(|_| gamma.sample(rng).max(f64::MIN_POSITIVE)).collect();
        let total: f64 = draws.iter().sum();
        let mut cumulative = 0.0;
        let mut start = 0;
        for (client, draw) in draws.iter().enumerate() {
            cumulative += draw / total;
            let end = if client + 1 == clients {
                members.len()
            } else {
                ((cumulative * members.len() as f64).round() as usize).min(members.len())
            };
            parts[client].extend_from_slice(&members[start..end.max(start)]);
            start = end.max(start);
        }
    }
    Ok(parts)
}

fn shards(labels: &[usize], clients: usize, k: usize, rng: &mut StdRng) -> Vec<Vec<usize>> {
    let sorted: Vec<usize> = by_class(labels).into_iter().flatten().collect();
    let count = clients * k;
    let mut shard_ids: Vec<usize> = (0..count).collect();
    shard_ids.shuffle(rng);
    let mut parts = vec![Vec::new(); clients];
    for (position, shard) in shard_ids.into_iter().enumerate() {
        let start = shard * sorted.len() / count;
        let end = (shard + 1) * sorted.len() / count;
        parts[position % clients].extend_from_slice(&sorted[start..end]);
    }
    parts
}

/// Moves one sample from the largest partition into each empty one.
fn fill_empty(parts: &mut [Vec<usize>]) {
    while let Some(empty) = parts.iter().position(Vec::is_empty) {
        let Some(largest) = (0..parts.len()).max_by_key(|&i| parts[i].len()) else { return };
        if parts[largest].len() < 2 {
            return;
        }
        let moved = parts[largest].pop();
        parts[empty].extend(moved);
    }
}

/// The label histogram of each partition.
pub fn histograms(labels: &[usize], parts: &[Vec<usize>], num_classes: usize) -> Vec<Vec<usize>> {
    parts
        .iter()
        .map(|part| {
            crate::data::histogram(
                &part.iter().map(|&i| labels[i]).collect::<Vec<_>>(),
                num_classes,
            )
        })
        .collect()
}
