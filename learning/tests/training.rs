//! Training: bit-identical results from the same seed, gradients that match finite differences,
//! scaling that uses the training split's statistics, and FedProx pulling towards the anchor.

use fedmesh_learning::{
    DataSource, Dataset, Model, Scaler, Scaling, TrainConfig, Trainer, evaluate, train,
};
use fedmesh_protocol::model::ModelSpec;
use ndarray::Array2;

fn config(seed: u64) -> TrainConfig {
    TrainConfig {
        epochs: 2,
        batch_size: 16,
        lr: 0.05,
        momentum: 0.9,
        weight_decay: 1e-4,
        prox_mu: 0.0,
        seed,
        lr_schedule: None,
        rounds: 1,
    }
}

fn digits() -> Dataset {
    let mut data = DataSource::parse("digits", None).unwrap().load(None).unwrap();
    let scaler = Scaler::fit(Scaling::MinMax, &data);
    scaler.apply(&mut data);
    data
}

#[test]
fn the_same_seed_gives_bit_identical_parameters() {
    let data = digits();
    let model = Model::from_spec(&ModelSpec::Mlp(vec![32, 16]), 64, 10).unwrap();
    let start = model.init(fedmesh_learning::Init::Auto, 3);
    let a = train(&model, &start, &data, &config(9)).unwrap();
    let b = train(&model, &start, &data, &config(9)).unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&a.params), bits(&b.params));
    assert_ne!(bits(&a.params), bits(&train(&model, &start, &data, &config(10)).unwrap().params));
    assert_eq!(a.samples, data.len());
    let recomputed: Vec<f32> = a.params.iter().zip(&start).map(|(p, s)| p - s).collect();
    assert_eq!(bits(&a.delta), bits(&recomputed));
}

/// The mean loss of `params` on `data`.
fn loss(model: &Model, params: &[f32], data: &Dataset) -> f64 {
    f64::from(evaluate(model, params, data).unwrap().loss)
}

#[test]
fn analytic_gradients_match_central_finite_differences() {
    // A tiny data set and model; one full-batch SGD step with lr 1 makes the step equal the gradient.
    let features = Array2::from_shape_fn((6, 4), |(i, j)| ((i * 7 + j * 3) % 5) as f32 / 5.0 - 0.4);
    let data =
        Dataset::new(features, vec![0, 1, 2, 1, 0, 2], std::path::Path::new("tiny")).unwrap();
    for spec in [ModelSpec::Softmax, ModelSpec::Mlp(vec![5, 3])] {
        let model = Model::from_spec(&spec, 4, 3).unwrap();
        let params = model.init(fedmesh_learning::Init::Glorot, 1);
        let step = TrainConfig {
            epochs: 1,
            batch_size: 6,
            lr: 1.0,
            momentum: 0.0,
            weight_decay: 0.0,
            prox_mu: 0.0,
            seed: 0,
            lr_schedule: None,
            rounds: 1,
        };
        let mut trainer = Trainer::new(&model, params.clone(), step).unwrap();
        trainer.epoch(&data).unwrap();
        let gradient: Vec<f64> = params
            .iter()
            .zip(trainer.params())
            .map(|(before, after)| f64::from(before - after))
            .collect();
        let h = 1e-2f32;
        for i in 0..params.len() {
            let (mut plus, mut minus) = (params.clone(), params.clone());
            plus[i] += h;
            minus[i] -= h;
            let numeric =
                (loss(&model, &plus, &data) - loss(&model, &minus, &data)) / (2.0 * f64::from(h));
            let error = (numeric - gradient[i]).abs();
            // f32 forward passes: an absolute error of 2e-3 on gradients of order 0.1 to 1.
            assert!(
                error < 2e-3 + 0.02 * numeric.abs(),
                "{spec:?} parameter {i}: analytic {} numeric {numeric}",
                gradient[i]
            );
        }
    }
}

#[test]
fn scaling_uses_the_training_statistics_and_survives_constant_columns() {
    let train_x = Array2::from_shape_vec((3, 2), vec![0.0, 5.0, 10.0, 5.0, 20.0, 5.0]).unwrap();
    let mut train_set = Dataset::new(train_x, vec![0, 1, 0], std::path::Path::new("t")).unwrap();
    let test_x = Array2::from_shape_vec((1, 2), vec![30.0, 7.0]).unwrap();
    let mut test_set = Dataset::new(test_x, vec![1], std::path::Path::new("t")).unwrap();
    for scaling in [Scaling::MinMax, Scaling::Standardize] {
        let (mut a, mut b) = (train_set.clone(), test_set.clone());
        let scaler = Scaler::fit(scaling, &a);
        scaler.apply(&mut a);
        scaler.apply(&mut b);
        assert!(a.features.iter().chain(b.features.iter()).all(|v| v.is_finite()));
    }
    let scaler = Scaler::fit(Scaling::MinMax, &train_set);
    scaler.apply(&mut train_set);
    scaler.apply(&mut test_set);
    assert_eq!(test_set.features[[0, 0]], 1.5, "the test split is scaled by the training range");
    assert_eq!(train_set.features[[2, 0]], 1.0);
}

#[test]
fn fedprox_keeps_parameters_closer_to_the_anchor() {
    let data = digits();
    let model = Model::from_spec(&ModelSpec::Softmax, 64, 10).unwrap();
    let start = model.init(fedmesh_learning::Init::Auto, 0);
    let distance = |mu: f32| {
        let outcome =
            train(&model, &start, &data, &TrainConfig { prox_mu: mu, momentum: 0.0, ..config(4) })
                .unwrap();
        outcome.delta.iter().map(|d| f64::from(d * d)).sum::<f64>().sqrt()
    };
    assert!(distance(1.0) < 0.8 * distance(0.0));
}

#[test]
fn mismatched_data_and_settings_are_refused() {
    let data = digits();
    let model = Model::from_spec(&ModelSpec::Softmax, 30, 10).unwrap();
    let params = model.init(fedmesh_learning::Init::Auto, 0);
    assert!(
        train(&model, &params, &data, &config(0)).unwrap_err().to_string().contains("64 features")
    );
    let model = Model::from_spec(&ModelSpec::Softmax, 64, 10).unwrap();
    assert!(
        train(&model, &params, &data, &config(0)).unwrap_err().to_string().contains("parameters")
    );
    let params = model.init(fedmesh_learning::Init::Auto, 0);
    assert!(train(&model, &params, &data, &TrainConfig { batch_size: 0, ..config(0) }).is_err());
    assert!(Model::parse_spec("mlp:10,0").is_err());
    assert!(Model::parse_spec("cnn").is_err());
    assert_eq!(model.layout().num_params(), model.num_params());
    assert_eq!(model.layout().tensors[0].name, "fc1.weight");
    assert_eq!(model.layout().tensors[0].shape, vec![10, 64]);
}
