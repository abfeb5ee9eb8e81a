//! Prints FedAvg throughput over 16 updates of 10 million f32 (GB/s of input consumed) next to a
//! memory-bandwidth baseline measured in the same run, and the median and trimmed-mean times.

use fedmesh_aggregation::PartialAggregate;
use fedmesh_aggregation::robust::{median, trimmed_mean};
use rayon::prelude::*;
use std::time::Instant;

const UPDATES: usize = 16;
const PARAMS: usize = 10_000_000;

fn best_of<T>(runs: usize, mut work: impl FnMut() -> T) -> f64 {
    (0..runs)
        .map(|_| {
            let start = Instant::now();
            std::hint::black_box(work());
            start.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let updates: Vec<Vec<f32>> = (0..UPDATES)
        .map(|u| (0..PARAMS).map(|i| ((i * 7 + u * 13) % 101) as f32 / 101.0).collect())
        .collect();
    let input_gb = (UPDATES * PARAMS * 4) as f64 / 1e9;
    let baseline = best_of(3, || {
        updates
            .par_iter()
            .map(|u| u.par_chunks(1 << 16).map(|c| c.iter().sum::<f32>()).sum::<f32>())
            .sum::<f32>()
    });
    println!(
        "baseline: summing the {UPDATES} x {PARAMS} f32 inputs with rayon: {:.2} GB/s",
        input_gb / baseline
    );
    let fedavg = best_of(3, || {
        let mut aggregate = PartialAggregate::new(PARAMS);
        for (i, update) in updates.iter().enumerate() {
            aggregate
                .add(&format!("m{i}"), 100.0 + i as f64, update)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        aggregate.mean().unwrap_or_else(|e| panic!("{e}"))
    });
    println!(
        "streaming FedAvg: {:.2} GB/s of input = {:.0}% of the baseline ({:.3} s)",
        input_gb / fedavg,
        100.0 * baseline / fedavg,
        fedavg
    );
    let views: Vec<&[f32]> = updates.iter().map(Vec::as_slice).collect();
    println!("coordinate-wise median: {:.3} s", best_of(1, || median(&views)));
    println!("trimmed mean (beta 0.1): {:.3} s", best_of(1, || trimmed_mean(&views, 0.1)));
}
