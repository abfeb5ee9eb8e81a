//! Prints FedAvg throughput over 16 updates of 10 million f32 (GB/s of input consumed), one update
//! or a batch per pass, with new or kept buffers, next to two baselines measured in the same run
//! (rayon sums of the same inputs, serial and vectorized), and the median and trimmed-mean times.

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
    // The serial sum above waits on each addition; this one keeps 16 independent lanes, so it
    // reads as fast as memory delivers.
    let read = best_of(3, || {
        updates.par_iter().map(|u| u.par_chunks(1 << 16).map(lane_sum).sum::<f32>()).sum::<f32>()
    });
    println!("reading the same inputs, 16 lanes: {:.2} GB/s", input_gb / read);
    let names: Vec<String> = (0..UPDATES).map(|i| format!("m{i}")).collect();
    let batch: Vec<(&str, f64, &[f32])> = updates
        .iter()
        .enumerate()
        .map(|(i, update)| (names[i].as_str(), 100.0 + i as f64, update.as_slice()))
        .collect();
    let fold = |aggregate: &mut PartialAggregate, per_pass: usize, out: &mut Vec<f32>| {
        for group in batch.chunks(per_pass) {
            for result in aggregate.add_many(group) {
                result.unwrap_or_else(|e| panic!("{e}"));
            }
        }
        aggregate.mean_into(out).unwrap_or_else(|e| panic!("{e}"));
    };
    let report = |what: &str, seconds: f64| {
        println!(
            "{what}: {:.2} GB/s of input = {:.0}% of the baseline, {:.0}% of the 16-lane read \
             ({seconds:.3} s)",
            input_gb / seconds,
            100.0 * baseline / seconds,
            100.0 * read / seconds
        );
    };
    for (per_pass, label) in
        [(1, "one update at a time"), (8, "8 updates per pass"), (16, "16 updates per pass")]
    {
        let fresh = best_of(3, || {
            let mut out = Vec::new();
            fold(&mut PartialAggregate::new(PARAMS), per_pass, &mut out);
            out
        });
        report(&format!("streaming FedAvg, {label}, new buffers"), fresh);
        let mut aggregate = PartialAggregate::new(PARAMS);
        let mut out = Vec::new();
        fold(&mut aggregate, per_pass, &mut out);
        let reused = best_of(3, || {
            aggregate.reset();
            fold(&mut aggregate, per_pass, &mut out);
        });
        report(&format!("streaming FedAvg, {label}, buffers kept across rounds"), reused);
    }
    let views: Vec<&[f32]> = updates.iter().map(Vec::as_slice).collect();
    println!("coordinate-wise median: {:.3} s", best_of(1, || median(&views)));
    println!("trimmed mean (beta 0.1): {:.3} s", best_of(1, || trimmed_mean(&views, 0.1)));
}

/// A sum in 16 independent lanes, which the compiler vectorizes.
fn lane_sum(values: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 16];
    let blocks = values.chunks_exact(16);
    let rest: f32 = blocks.remainder().iter().sum();
    for block in blocks {
        lanes.iter_mut().zip(block).for_each(|(lane, v)| *lane += v);
    }
    lanes.iter().sum::<f32>() + rest
}
