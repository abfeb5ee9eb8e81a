//! Secure aggregation end to end on real `fedmesh` processes: with `privacy.secure_aggregation`
//! the trainers send only masked, quantized updates, the aggregator unmasks only their sum, and
//! the job learns as the same job does without it.

mod common;

use common::{FLOOR, Run, run_scenario};

/// The same small job (softmax on mnist5k, 4 nodes, 4 rounds, trainers clipping at 20), with
/// or without secure aggregation.
fn job(secure: bool) -> Run {
    let name = if secure { "secure-aggregation" } else { "plain-aggregation" };
    run_scenario(
        name,
        &format!(
            r#"
            nodes = 4
            rounds = 4
            lr = 0.05
            seed = 0
            strategy = {{ rule = "fedavg", clip_norm = 20.0 }}
            privacy = {{ secure_aggregation = {secure} }}
            "#
        ),
    )
}

#[test]
fn a_secure_job_learns_as_the_same_job_without_it() {
    let secure = job(true);
    secure.assert_passed();
    let plain = job(false);
    plain.assert_passed();
    let (with, without) = (secure.final_accuracy(), plain.final_accuracy());
    eprintln!(
        "secure: {with:.4} in {:?} s a round; plain: {without:.4} in {:?} s a round",
        secure.report.mean_round_seconds, plain.report.mean_round_seconds
    );
    assert!(with >= FLOOR, "{:#?}", secure.lines);
    assert!((with - without).abs() <= 0.005, "secure {with}, plain {without}");
    assert!(secure.participants().iter().all(|p| *p == 4), "{:#?}", secure.lines);
}
