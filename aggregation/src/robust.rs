//! Robust rules over a round's buffered updates: coordinate-wise median, trimmed mean, Krum and
//! Multi-Krum. Each refuses parameter combinations that give no guarantee.

use crate::AggregationError;
use rayon::prelude::*;

const CHUNK: usize = 1 << 14;

fn check_lengths(updates: &[&[f32]]) -> Result<usize, AggregationError> {
    let first = updates.first().ok_or(AggregationError::Empty)?;
    Ok(first.len())
}

/// Applies `per_coordinate` to each coordinate's values across updates, in parallel chunks.
fn coordinate_wise(
    updates: &[&[f32]],
    per_coordinate: impl Fn(&mut [f32]) -> f32 + Sync,
) -> Result<Vec<f32>, AggregationError> {
    let len = check_lengths(updates)?;
    let mut out = vec![0.0f32; len];
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(chunk_index, out)| {
        let mut column = vec![0.0f32; updates.len()];
        for (offset, value) in out.iter_mut().enumerate() {
            let i = chunk_index * CHUNK + offset;
            for (slot, update) in column.iter_mut().zip(updates) {
                *slot = update[i];
            }
            *value = per_coordinate(&mut column);
        }
    });
    Ok(out)
}

/// The coordinate-wise median (the mean of the two middle values for an even count).
pub fn median(updates: &[&[f32]]) -> Result<Vec<f32>, AggregationError> {
    coordinate_wise(updates, |column| {
        column.sort_unstable_by(f32::total_cmp);
        let n = column.len();
        if n % 2 == 1 { column[n / 2] } else { (column[n / 2 - 1] + column[n / 2]) / 2.0 }
    })
}

/// How many values trimmed mean drops at each end for `n` updates and fraction `beta`.
pub fn trimmed_count(n: usize, beta: f32) -> Result<usize, AggregationError> {
    if !(0.0..0.5).contains(&beta) {
        return Err(AggregationError::Invalid(format!(
            "trimmed mean beta {beta} is not in [0, 0.5)"
        )));
    }
    let k = (beta * n as f32).floor() as usize;
    if n == 0 || 2 * k >= n {
        return Err(AggregationError::NoGuarantee {
            rule: "trimmed mean",
            n,
            requirement: format!("dropping {k} at each end leaves nothing"),
        });
    }
    Ok(k)
}

/// The coordinate-wise mean after dropping the `floor(beta * n)` smallest and largest values.
pub fn trimmed_mean(updates: &[&[f32]], beta: f32) -> Result<Vec<f32>, AggregationError> {
    let k = trimmed_count(updates.len(), beta)?;
    coordinate_wise(updates, |column| {
        column.sort_unstable_by(f32::total_cmp);
        let kept = &column[k..column.len() - k];
        kept.iter().map(|&v| f64::from(v)).sum::<f64>() as f32 / kept.len() as f32
    })
}

fn squared_distance(a: &[f32], b: &[f32]) -> f64 {
    a.par_chunks(CHUNK)
        .zip(b.par_chunks(CHUNK))
        .map(|(a, b)| a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum::<f64>())
        .sum()
}

/// Krum scores: for each update, the sum of squared distances to its `n - f - 2` nearest others.
fn krum_scores(updates: &[&[f32]], f: usize) -> Result<Vec<f64>, AggregationError> {
    let n = updates.len();
    if n < 2 * f + 3 {
        return Err(AggregationError::NoGuarantee {
            rule: "Krum",
            n,
            requirement: format!("needs n > 2f + 2 = {}", 2 * f + 2),
        });
    }
    let mut distances = vec![vec![0.0f64; n]; n];
    for i in 0..n {
        for j in (i + 1)..n {
            let d = squared_distance(updates[i], updates[j]);
            distances[i][j] = d;
            distances[j][i] = d;
        }
    }
    Ok(distances
        .into_iter()
        .enumerate()
        .map(|(i, mut row)| {
            row.remove(i);
            row.sort_unstable_by(f64::total_cmp);
            row[..n - f - 2].iter().sum()
        })
        .collect())
}

/// The indices of the `m` updates Multi-Krum selects (the best scores first).
pub fn multi_krum_selection(
    updates: &[&[f32]],
    f: usize,
    m: usize,
) -> Result<Vec<usize>, AggregationError> {
    let n = updates.len();
    if m == 0 || m > n - f.min(n) {
        return Err(AggregationError::NoGuarantee {
            rule: "Multi-Krum",
            n,
            requirement: format!("m must be in 1..={}", n.saturating_sub(f)),
        });
    }
    let scores = krum_scores(updates, f)?;
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
    order.truncate(m);
    Ok(order)
}
