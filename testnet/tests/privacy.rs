//! Differential privacy end to end on real `fedmesh` processes: the trainers draw the noise
//! (`privacy.noise = "distributed"`), the job still learns, and every report states the ε its
//! rounds spent at the job's δ, as the accountant computes it from the spec.

mod common;

use common::{FLOOR, run_scenario};

#[test]
fn trainers_draw_the_noise_the_job_learns_and_the_epsilon_spent_is_reported() {
    let run = run_scenario(
        "distributed-dp",
        r#"
        nodes = 4
        rounds = 4
        strategy = { rule = "fedavg", clip_norm = 2.0, noise_multiplier = 0.02 }
        privacy = { noise = "distributed", delta = 1e-6 }
        "#,
    );
    run.assert_passed();
    let spent = run.report.privacy.clone().expect("a noised job reports its privacy");
    assert_eq!(spent.noise, "distributed");
    assert_eq!((spent.delta, spent.noise_multiplier as f32, spent.sampling), (1e-6, 0.02, 1.0));
    let expected = fedmesh_aggregation::privacy::epsilon(1.0, f64::from(0.02f32), 4, 1e-6);
    assert!((spent.epsilon - expected).abs() < 1e-9 * expected, "{spent:?} vs {expected}");
    assert!(run.final_accuracy() >= FLOOR, "{:#?}", run.lines);
}
