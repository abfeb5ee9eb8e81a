//! Prints MLP training throughput (samples/s) and the GFLOP/s of a training epoch next to the
//! GFLOP/s of one large f32 matrix product measured in the same run on the same thread.

use fedmesh_learning::{DataSource, Init, Model, Scaler, Scaling, TrainConfig, Trainer};
use fedmesh_protocol::model::ModelSpec;
use ndarray::Array2;
use ndarray::linalg::general_mat_mul;
use std::time::Instant;

/// Best of `runs` timings of `work`, in seconds.
fn best_of(runs: usize, mut work: impl FnMut()) -> f64 {
    (0..runs)
        .map(|_| {
            let start = Instant::now();
            work();
            start.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn matmul_gflops(n: usize) -> f64 {
    let a = Array2::from_shape_fn((n, n), |(i, j)| ((i * 31 + j * 17) % 13) as f32 / 13.0);
    let b = a.t().to_owned();
    let mut c = Array2::<f32>::zeros((n, n));
    let seconds = best_of(5, || general_mat_mul(1.0, &a, &b, 0.0, &mut c));
    2.0 * (n * n * n) as f64 / seconds / 1e9
}

fn main() {
    let mut data = DataSource::parse("mnist5k", None)
        .and_then(|s| s.load(None))
        .unwrap_or_else(|e| panic!("{e}"));
    Scaler::fit(Scaling::MinMax, &data).apply(&mut data);
    let baseline = matmul_gflops(1024);
    println!("baseline: one 1024x1024 f32 matrix product: {baseline:.1} GFLOP/s");
    for (hidden, batch) in [(vec![200, 200], 32), (vec![200, 200], 128), (vec![512, 512], 128)] {
        let model = Model::from_spec(
            &ModelSpec::Mlp(hidden.clone()),
            data.num_features(),
            data.num_classes,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let config = TrainConfig {
            epochs: 1,
            batch_size: batch,
            lr: 0.05,
            momentum: 0.0,
            weight_decay: 0.0,
            prox_mu: 0.0,
            seed: 0,
            lr_schedule: None,
            rounds: 1,
        };
        let mut trainer = Trainer::new(&model, model.init(Init::Auto, 0), config)
            .unwrap_or_else(|e| panic!("{e}"));
        let seconds = best_of(3, || {
            trainer.epoch(&data).unwrap_or_else(|e| panic!("{e}"));
        });
        let samples_per_second = data.len() as f64 / seconds;
        let gflops = samples_per_second * model.train_flops_per_sample() / 1e9;
        println!(
            "mlp {hidden:?} batch {batch}: {samples_per_second:.0} samples/s, {gflops:.1} GFLOP/s = {:.0}% of the matrix product",
            100.0 * gflops / baseline
        );
    }
}
