//! Every strategy against hand-computed results, composition of group aggregates, optimizer state
//! that survives serialization, and robustness against poisoned updates.

use fedmesh_aggregation::{AggregationError, Aggregator, PartialAggregate, ServerOptimizer};
use fedmesh_protocol::TensorEncoding;
use fedmesh_protocol::strategy::{
    AdaptiveParams, AggregationRule, ServerOptimizerSpec, StrategySpec,
};
use fedmesh_protocol::tensor::Decoder;
use proptest::prelude::*;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

fn spec(rule: AggregationRule) -> StrategySpec {
    StrategySpec { rule, ..StrategySpec::default() }
}

fn aggregate(
    spec: &StrategySpec,
    updates: &[(&str, f64, Vec<f32>)],
) -> Result<Vec<f32>, AggregationError> {
    let mut aggregator = Aggregator::from_spec(spec, updates[0].2.len(), [1; 32])?;
    for (name, weight, update) in updates {
        aggregator.add(name, *weight, update)?;
    }
    Ok(aggregator.finish()?.delta)
}

fn assert_close(found: &[f32], expected: &[f32]) {
    assert_eq!(found.len(), expected.len());
    for (f, e) in found.iter().zip(expected) {
        assert!((f - e).abs() < 1e-5, "found {found:?}, expected {expected:?}");
    }
}

#[test]
fn fedavg_weights_by_sample_count() {
    // (1*[1,2] + 3*[5,-2]) / 4 = [4, -1]
    let delta = aggregate(
        &spec(AggregationRule::FedAvg),
        &[("a", 1.0, vec![1.0, 2.0]), ("b", 3.0, vec![5.0, -2.0])],
    )
    .unwrap();
    assert_close(&delta, &[4.0, -1.0]);
}

#[test]
fn median_and_trimmed_mean_by_hand() {
    let updates = [
        ("a", 1.0, vec![1.0, 10.0]),
        ("b", 1.0, vec![2.0, 20.0]),
        ("c", 9.0, vec![3.0, 30.0]),
        ("d", 1.0, vec![100.0, -50.0]),
    ];
    // Medians of {1,2,3,100} and {-50,10,20,30}: (2+3)/2 and (10+20)/2; weights do not count.
    assert_close(&aggregate(&spec(AggregationRule::Median), &updates).unwrap(), &[2.5, 15.0]);
    // beta 0.25 of 4 drops one at each end: the same middle two, averaged.
    assert_close(
        &aggregate(&spec(AggregationRule::TrimmedMean { beta: 0.25 }), &updates).unwrap(),
        &[2.5, 15.0],
    );
    let odd = &updates[..3];
    assert_close(&aggregate(&spec(AggregationRule::Median), odd).unwrap(), &[2.0, 20.0]);
    // beta 0 keeps everything: the plain mean.
    assert_close(
        &aggregate(&spec(AggregationRule::TrimmedMean { beta: 0.0 }), odd).unwrap(),
        &[2.0, 20.0],
    );
}

#[test]
fn krum_picks_the_update_closest_to_its_neighbours() {
    // Five updates, f = 1: each is scored by its n - f - 2 = 2 nearest neighbours.
    let updates = [
        ("a", 1.0, vec![0.0, 0.0]),
        ("b", 1.0, vec![1.0, 0.0]),
        ("c", 1.0, vec![0.0, 1.0]),
        ("d", 1.0, vec![1.0, 1.0]),
        ("evil", 1.0, vec![50.0, 50.0]),
    ];
    // Scores: a: 1+1 = 2, b: 1+1, c: 1+1, d: 1+1, evil: huge; the tie goes to the first, a.
    assert_close(&aggregate(&spec(AggregationRule::Krum { f: 1 }), &updates).unwrap(), &[0.0, 0.0]);
    // Multi-Krum with m = 4 averages a, b, c, d: [0.5, 0.5].
    assert_close(
        &aggregate(&spec(AggregationRule::MultiKrum { f: 1, m: 4 }), &updates).unwrap(),
        &[0.5, 0.5],
    );
}

#[test]
fn rules_without_a_guarantee_are_refused_with_the_numbers() {
    let four = [
        ("a", 1.0, vec![0.0]),
        ("b", 1.0, vec![1.0]),
        ("c", 1.0, vec![2.0]),
        ("d", 1.0, vec![3.0]),
    ];
    let error = aggregate(&spec(AggregationRule::Krum { f: 1 }), &four).unwrap_err();
    assert!(error.to_string().contains("needs n > 2f + 2 = 4"), "{error}");
    let error = aggregate(&spec(AggregationRule::TrimmedMean { beta: 0.49 }), &four[..2]).is_ok();
    assert!(error, "beta 0.49 of 2 trims nothing and is fine");
    assert!(aggregate(&spec(AggregationRule::TrimmedMean { beta: 0.5 }), &four).is_err());
    assert!(aggregate(&spec(AggregationRule::MultiKrum { f: 0, m: 0 }), &four).is_err());
}

#[test]
fn updates_that_do_not_match_the_model_are_refused() {
    let mut aggregator = Aggregator::from_spec(&StrategySpec::default(), 3, [1; 32]).unwrap();
    let error = aggregator.add("x", 1.0, &[1.0, 2.0]).unwrap_err();
    assert_eq!(error.to_string(), "update from x has 2 parameters, the model has 3");
    assert!(matches!(
        aggregator.add("x", 1.0, &[1.0, f32::NAN, 0.0]),
        Err(AggregationError::NotFinite { .. })
    ));
    assert!(matches!(
        aggregator.add("x", 0.0, &[1.0, 1.0, 0.0]),
        Err(AggregationError::BadWeight { .. })
    ));
    aggregator.add("x", 1.0, &[1.0, 1.0, 0.0]).unwrap();
    assert!(matches!(
        aggregator.add("x", 1.0, &[1.0, 1.0, 0.0]),
        Err(AggregationError::Duplicate { .. })
    ));
    assert!(matches!(
        Aggregator::from_spec(&StrategySpec::default(), 3, [1; 32]).unwrap().finish(),
        Err(AggregationError::Empty)
    ));
}

#[test]
fn clipping_and_noise_report_their_standard_deviation() {
    let strategy = StrategySpec {
        clip_norm: Some(1.0),
        noise_multiplier: Some(0.5),
        ..StrategySpec::default()
    };
    let mut aggregator = Aggregator::from_spec(&strategy, 10_000, [7; 32]).unwrap();
    aggregator.add("a", 1.0, &vec![3.0; 10_000]).unwrap();
    aggregator.add("b", 1.0, &vec![0.0; 10_000]).unwrap();
    let outcome = aggregator.finish().unwrap();
    // std = 0.5 * 1.0 * 1/2, each update weighing half.
    assert_eq!(outcome.noise_std, Some(0.25));
    // "a" was clipped to norm 1: each coordinate 0.01; the mean is 0.005 before noise.
    let mean: f64 = outcome.delta.iter().map(|&v| f64::from(v)).sum::<f64>() / 10_000.0;
    let std = (outcome.delta.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>()
        / 10_000.0)
        .sqrt();
    assert!((mean - 0.005).abs() < 0.01, "mean {mean}");
    assert!((std - 0.25).abs() < 0.01, "std {std}");
    let no_clip = StrategySpec { noise_multiplier: Some(1.0), ..StrategySpec::default() };
    assert!(Aggregator::from_spec(&no_clip, 1, [1; 32]).is_err());
}

#[test]
fn dp_noise_follows_the_largest_weight_share_and_the_aggregators_own_seed() {
    let strategy = StrategySpec {
        clip_norm: Some(1.0),
        noise_multiplier: Some(1.0),
        ..StrategySpec::default()
    };
    let noisy = |seed: [u8; 32]| {
        let mut aggregator = Aggregator::from_spec(&strategy, 1_000, seed).unwrap();
        aggregator.add("large", 300.0, &vec![0.0; 1_000]).unwrap();
        aggregator.add("small", 100.0, &vec![0.0; 1_000]).unwrap();
        aggregator.finish().unwrap()
    };
    let (one, again, other) = (noisy([1; 32]), noisy([1; 32]), noisy([2; 32]));
    // The larger member weighs 300 of 400: the sensitivity is 0.75 * clip_norm, not 1/2.
    assert_eq!(one.noise_std, Some(0.75));
    assert_eq!(one.delta, again.delta, "the same secret draws the same noise");
    assert_ne!(one.delta, other.delta, "another aggregator's secret draws other noise");
}

#[test]
fn server_optimizers_by_hand() {
    let mut plain = ServerOptimizer::from_spec(None).unwrap();
    let mut x = vec![1.0f32];
    plain.apply(&mut x, &[0.5]).unwrap();
    assert_close(&x, &[1.5]);

    // FedAvgM eta 1, beta 0.5: v = 1, x = 1; then v = 0.5 + 1 = 1.5, x = 2.5.
    let mut momentum =
        ServerOptimizer::from_spec(Some(&ServerOptimizerSpec::FedAvgM { eta: 1.0, beta1: 0.5 }))
            .unwrap();
    let mut x = vec![0.0f32];
    momentum.apply(&mut x, &[1.0]).unwrap();
    momentum.apply(&mut x, &[1.0]).unwrap();
    assert_close(&x, &[2.5]);

    // FedAdam eta 0.1, b1 0.9, b2 0.99, tau 0.001, delta 1: m = 0.1, v = 0.01, step 0.1*0.1/(0.1+0.001).
    let params = AdaptiveParams { eta: 0.1, beta1: 0.9, beta2: 0.99, tau: 0.001 };
    let mut adam =
        ServerOptimizer::from_spec(Some(&ServerOptimizerSpec::FedAdam(params.clone()))).unwrap();
    let mut x = vec![0.0f32];
    adam.apply(&mut x, &[1.0]).unwrap();
    assert_close(&x, &[0.01 / 0.101]);
    // FedYogi from v = 0: v = 0 - 0.01 * 1 * sign(0 - 1) = 0.01, the same first step.
    let mut yogi =
        ServerOptimizer::from_spec(Some(&ServerOptimizerSpec::FedYogi(params.clone()))).unwrap();
    let mut x = vec![0.0f32];
    yogi.apply(&mut x, &[1.0]).unwrap();
    assert_close(&x, &[0.01 / 0.101]);
    // FedAdagrad: v = 1, step 0.1 * 0.1 / (1 + 0.001).
    let mut adagrad =
        ServerOptimizer::from_spec(Some(&ServerOptimizerSpec::FedAdagrad(params))).unwrap();
    let mut x = vec![0.0f32];
    adagrad.apply(&mut x, &[1.0]).unwrap();
    assert_close(&x, &[0.01 / 1.001]);
    assert!(
        ServerOptimizer::from_spec(Some(&ServerOptimizerSpec::FedAvgM { eta: 1.0, beta1: 1.5 }))
            .is_err()
    );
}

#[test]
fn optimizer_state_survives_serialization_and_continues_identically() {
    let spec = ServerOptimizerSpec::FedAdam(AdaptiveParams {
        eta: 0.05,
        beta1: 0.9,
        beta2: 0.99,
        tau: 1e-3,
    });
    let mut original = ServerOptimizer::from_spec(Some(&spec)).unwrap();
    let mut x = vec![0.3f32, -0.2, 0.7];
    original.apply(&mut x, &[0.1, -0.4, 0.2]).unwrap();
    let mut restored: ServerOptimizer =
        serde_json::from_str(&serde_json::to_string(&original).unwrap()).unwrap();
    assert_eq!(restored, original);
    let mut y = x.clone();
    original.apply(&mut x, &[0.3, 0.1, -0.2]).unwrap();
    restored.apply(&mut y, &[0.3, 0.1, -0.2]).unwrap();
    assert_eq!(x, y);
}

proptest! {
    /// Group sums merged at the top equal the flat FedAvg over every member (relative 1e-5).
    #[test]
    fn composing_group_aggregates_equals_flat_fedavg(
        updates in prop::collection::vec((1u32..1000, prop::collection::vec(-10.0f32..10.0, 8)), 1..20),
        groups in 1usize..5,
    ) {
        let mut flat = PartialAggregate::new(8);
        let mut parts: Vec<PartialAggregate> = (0..groups).map(|_| PartialAggregate::new(8)).collect();
        for (i, (weight, update)) in updates.iter().enumerate() {
            let name = format!("m{i}");
            flat.add(&name, f64::from(*weight), update).unwrap();
            parts[i % groups].add(&name, f64::from(*weight), update).unwrap();
        }
        let mut top = PartialAggregate::new(8);
        for part in parts.iter().filter(|p| !p.contributors.is_empty()) {
            top.merge(part).unwrap();
        }
        let (a, b) = (flat.mean().unwrap(), top.mean().unwrap());
        for (x, y) in a.iter().zip(&b) {
            prop_assert!((x - y).abs() <= 1e-5 * x.abs().max(1.0), "{x} vs {y}");
        }
        prop_assert_eq!(top.contributors.len(), updates.len());
    }
}

/// 10 honest updates around a true vector, 3 attackers: robust rules stay near the honest mean.
#[test]
fn robust_rules_resist_sign_flip_and_noise_attackers_and_fedavg_does_not() {
    let dim = 1000;
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let truth: Vec<f32> = (0..dim).map(|i| ((i % 7) as f32 - 3.0) / 3.0).collect();
    let jitter = Normal::new(0.0f32, 0.1).unwrap();
    let mut updates: Vec<(String, f64, Vec<f32>)> = (0..10)
        .map(|i| {
            (
                format!("honest{i}"),
                100.0,
                truth.iter().map(|t| t + jitter.sample(&mut rng)).collect(),
            )
        })
        .collect();
    let honest_mean: Vec<f32> =
        (0..dim).map(|j| updates.iter().map(|u| u.2[j]).sum::<f32>() / 10.0).collect();
    let flip: Vec<f32> = truth.iter().map(|t| -10.0 * t).collect();
    let noise = Normal::new(0.0f32, 20.0).unwrap();
    updates.push(("flip1".into(), 100.0, flip.clone()));
    updates.push(("flip2".into(), 100.0, flip));
    updates.push(("noise".into(), 100.0, (0..dim).map(|_| noise.sample(&mut rng)).collect()));
    let borrowed: Vec<(&str, f64, Vec<f32>)> =
        updates.iter().map(|(n, w, u)| (n.as_str(), *w, u.clone())).collect();
    let distance = |v: &[f32]| {
        v.iter().zip(&honest_mean).map(|(a, b)| f64::from(a - b).powi(2)).sum::<f64>().sqrt()
    };
    // The honest mean's norm is about 25; honest updates lie about 3.2 from it (0.1 * sqrt(1000)).
    let fedavg = distance(&aggregate(&spec(AggregationRule::FedAvg), &borrowed).unwrap());
    assert!(fedavg > 50.0, "plain FedAvg should be dragged far from the honest mean, was {fedavg}");
    for (rule, bound) in [
        (AggregationRule::Median, 5.0),
        (AggregationRule::TrimmedMean { beta: 0.25 }, 5.0),
        (AggregationRule::Krum { f: 3 }, 5.0),
        (AggregationRule::MultiKrum { f: 3, m: 5 }, 5.0),
    ] {
        let d = distance(&aggregate(&spec(rule.clone()), &borrowed).unwrap());
        assert!(
            d < bound,
            "{rule:?} landed {d} from the honest mean (bound {bound}; FedAvg: {fedavg})"
        );
    }
}

#[test]
fn a_non_finite_update_leaves_the_streaming_sum_as_it_was() {
    let len = 300_000; // several parallel chunks, so the refused update reaches some of them
    let first: Vec<f32> = (0..len).map(|i| (i % 17) as f32 * 0.25).collect();
    let mut poisoned: Vec<f32> = (0..len).map(|i| (i % 5) as f32 - 2.0).collect();
    poisoned[len - 1] = f32::INFINITY;
    let mut aggregate = fedmesh_aggregation::PartialAggregate::new(len);
    aggregate.add("a", 3.0, &first).unwrap();
    let before = aggregate.weighted_sum.clone();
    assert!(matches!(aggregate.add("b", 2.0, &poisoned), Err(AggregationError::NotFinite { .. })));
    assert_eq!(aggregate.contributors.len(), 1);
    let worst =
        before.iter().zip(&aggregate.weighted_sum).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    assert!(worst < 1e-12, "the sum moved by {worst} after a refused update");
    assert_eq!(aggregate.mean().unwrap(), first);
}

#[test]
fn a_non_finite_encoded_update_is_refused_and_leaves_the_streaming_sum_as_it_was() {
    let len = 300_000; // several fold chunks, so the refused update reaches some of them
    let first: Vec<f32> = (0..len).map(|i| (i % 17) as f32 * 0.25).collect();
    let mut poisoned: Vec<f32> = (0..len).map(|i| (i % 5) as f32 - 2.0).collect();
    poisoned[len / 3] = f32::NAN;
    poisoned[len - 1] = f32::NEG_INFINITY;
    let encode = |values: &[f32]| values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
    let (first_bytes, poisoned_bytes) = (encode(&first), encode(&poisoned));
    let decoder = |bytes| Decoder::new(bytes, TensorEncoding::F32Le, len).unwrap();
    let mut aggregate = PartialAggregate::new(len);
    aggregate.add_decoded("a", 3.0, &decoder(&first_bytes)).unwrap();
    let before = aggregate.weighted_sum.clone();
    let refused = aggregate.add_decoded("b", 2.0, &decoder(&poisoned_bytes));
    assert!(
        matches!(refused, Err(AggregationError::NotFinite { contributor }) if contributor == "b")
    );
    assert_eq!(aggregate.contributors, vec![("a".to_owned(), 3.0)]);
    let worst =
        before.iter().zip(&aggregate.weighted_sum).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    assert!(worst < 1e-12, "the sum moved by {worst} after a refused update");
    assert_eq!(aggregate.mean().unwrap(), first);
}

fn view((name, weight, values): &(String, f64, Vec<f32>)) -> (&str, f64, &[f32]) {
    (name.as_str(), *weight, values.as_slice())
}

#[test]
fn a_batch_folds_like_one_update_at_a_time_and_refuses_only_its_bad_updates() {
    let len = 50_000; // several fold chunks, the last one partial
    let update = |seed: usize| -> Vec<f32> {
        (0..len).map(|i| ((i * 31 + seed * 17) % 97) as f32 / 13.0 - 3.0).collect()
    };
    let good: Vec<(String, f64, Vec<f32>)> =
        (0..7).map(|i| (format!("m{i}"), 1.5 + i as f64, update(i))).collect();
    let mut poisoned = update(9);
    poisoned[10] = f32::INFINITY;
    poisoned[len / 2] = f32::NAN;
    poisoned[len - 1] = f32::NEG_INFINITY;
    let mut one_by_one = PartialAggregate::new(len);
    for (name, weight, values) in &good {
        one_by_one.add(name, *weight, values).unwrap();
    }
    // The poisoned update shares a group of four with good ones; a duplicate of m0 and a second
    // batch with a contributor of the first are refused too.
    let mut first: Vec<(&str, f64, &[f32])> = good[..5].iter().map(view).collect();
    first.insert(2, ("bad", 1.0, &poisoned));
    first.insert(4, ("m0", 3.0, &poisoned));
    let mut batched = PartialAggregate::new(len);
    let results = batched.add_many(&first);
    let refused: Vec<usize> = (0..results.len()).filter(|&i| results[i].is_err()).collect();
    assert_eq!(refused, [2, 4], "{results:?}");
    assert!(matches!(results[2], Err(AggregationError::NotFinite { .. })));
    assert!(matches!(results[4], Err(AggregationError::Duplicate { .. })));
    let mut second: Vec<(&str, f64, &[f32])> = good[5..].iter().map(view).collect();
    second.push(view(&good[1]));
    let results = batched.add_many(&second);
    assert!(results[..2].iter().all(Result::is_ok), "{results:?}");
    assert!(matches!(results[2], Err(AggregationError::Duplicate { .. })));
    assert_eq!(batched.total_weight, one_by_one.total_weight);
    assert_eq!(batched.contributors, one_by_one.contributors);
    let worst = batched
        .weighted_sum
        .iter()
        .zip(&one_by_one.weighted_sum)
        .map(|(x, y)| (x - y).abs() / y.abs().max(1.0))
        .fold(0.0, f64::max);
    assert!(worst < 1e-12, "relative difference {worst}");
}

#[test]
fn a_contributor_named_twice_in_a_batch_is_refused_the_second_time_even_if_the_first_fails() {
    let mut aggregate = PartialAggregate::new(2);
    let results = aggregate.add_many(&[("x", 1.0, &[f32::NAN, 0.0]), ("x", 1.0, &[1.0, 2.0])]);
    assert!(matches!(results[0], Err(AggregationError::NotFinite { .. })));
    assert!(matches!(results[1], Err(AggregationError::Duplicate { .. })));
    assert!(aggregate.contributors.is_empty());
    assert_eq!(aggregate.weighted_sum, [0.0, 0.0]);
}

#[test]
fn an_aggregator_takes_a_batch_like_one_update_at_a_time() {
    let updates = [
        ("a", 1.0, vec![1.0, 2.0]),
        ("b", 3.0, vec![5.0, -2.0]),
        ("a", 1.0, vec![0.0, 0.0]),
        ("c", 2.0, vec![f32::NAN, 0.0]),
        ("d", 0.0, vec![1.0, 1.0]),
        ("e", 2.0, vec![3.0]),
        ("f", 2.0, vec![3.0, 1.0]),
    ];
    let batch: Vec<(&str, f64, &[f32])> =
        updates.iter().map(|(name, weight, values)| (*name, *weight, values.as_slice())).collect();
    let clipped = StrategySpec { clip_norm: Some(1.0), ..StrategySpec::default() };
    for strategy in [spec(AggregationRule::FedAvg), spec(AggregationRule::Median), clipped] {
        let mut batched = Aggregator::from_spec(&strategy, 2, [1; 32]).unwrap();
        let mut single = Aggregator::from_spec(&strategy, 2, [1; 32]).unwrap();
        let expected: Vec<Result<(), AggregationError>> =
            batch.iter().map(|(name, weight, values)| single.add(name, *weight, values)).collect();
        assert_eq!(batched.add_many(&batch), expected, "{:?}", strategy.rule);
        assert_eq!(batched.count(), 3);
        assert_eq!(batched.finish().unwrap(), single.finish().unwrap());
    }
}

#[test]
fn a_slot_hands_up_fedavg_exactly_and_a_robust_rule_as_its_result_weighted_by_its_members() {
    let updates = [("a", 1.0, vec![1.0, 2.0]), ("b", 3.0, vec![5.0, -2.0])];
    let mut fedavg = Aggregator::from_spec(&spec(AggregationRule::FedAvg), 2, [1; 32]).unwrap();
    let mut median = Aggregator::from_spec(&spec(AggregationRule::Median), 2, [1; 32]).unwrap();
    for (name, weight, update) in &updates {
        fedavg.add(name, *weight, update).unwrap();
        median.add(name, *weight, update).unwrap();
    }
    // FedAvg: the exact weighted sum 1*[1,2] + 3*[5,-2] = [16, -4] over weight 4.
    let exact = fedavg.finish_partial().unwrap();
    assert_eq!(exact.weighted_sum, [16.0, -4.0]);
    assert_eq!(exact.total_weight, 4.0);
    // Median of two is their mean [3, 0]; handed up with the members' weight, 4.
    let robust = median.finish_partial().unwrap();
    assert_eq!(robust.weighted_sum, [12.0, 0.0]);
    assert_eq!(robust.total_weight, 4.0);
    assert_eq!(robust.contributors.len(), 2);
    // Two groups composed at the top: (16 + 12, -4 + 0) / 8.
    let mut top = exact;
    top.merge(&PartialAggregate::from_mean(&[3.0, 0.0], vec![("c".into(), 4.0)]).unwrap()).unwrap();
    assert_close(&top.mean().unwrap(), &[3.5, -0.5]);
    let empty = Aggregator::from_spec(&spec(AggregationRule::FedAvg), 2, [1; 32]).unwrap();
    assert!(matches!(empty.finish_partial(), Err(AggregationError::Empty)));
}
