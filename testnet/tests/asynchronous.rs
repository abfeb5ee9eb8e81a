//! Asynchronous FL (FedBuff) on real `fedmesh` processes: with two of eight nodes five times
//! slower, the asynchronous job (`testnet/scenarios/async-slow-nodes.toml`) reaches the target
//! accuracy in at most 60% of the wall time the same job takes in synchronous rounds, measured
//! in the same run.

mod common;

use common::run_scenario_file;

/// The shipped scenario, its `mode` line replaced by `mode`.
fn job(mode: &str) -> common::Run {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/async-slow-nodes.toml");
    let text = std::fs::read_to_string(path)
        .unwrap()
        .replace("mode = \"async\"", &format!("mode = \"{mode}\""));
    let text = if mode == "sync" {
        text.lines().filter(|line| !line.starts_with("async =")).collect::<Vec<_>>().join("\n")
    } else {
        text
    };
    run_scenario_file(mode, &text)
}

#[test]
fn an_async_job_with_slow_nodes_reaches_the_target_in_well_under_the_sync_jobs_time() {
    let sync = job("sync");
    sync.assert_passed();
    let asynchronous = job("async");
    asynchronous.assert_passed();
    assert_eq!(asynchronous.report.job_spec["mode"], "async");
    assert_eq!(
        (sync.report.unit.as_str(), asynchronous.report.unit.as_str()),
        ("round", "version")
    );
    let (Some(sync_secs), Some(async_secs)) =
        (sync.report.time_to_target, asynchronous.report.time_to_target)
    else {
        panic!("both reach 0.88: {:#?}\n{:#?}", sync.lines, asynchronous.lines);
    };
    eprintln!(
        "time to 0.88: sync {sync_secs:.2} s, async {async_secs:.2} s ({:.2} of it); \
         mean round {:.3} s, mean version {:.3} s",
        async_secs / sync_secs,
        sync.report.mean_round_seconds.unwrap_or_default(),
        asynchronous.report.mean_round_seconds.unwrap_or_default(),
    );
    assert!(async_secs <= 0.6 * sync_secs, "{:#?}\n{:#?}", sync.lines, asynchronous.lines);
    // Every version is made from the buffer's 4 updates; the slow nodes still train.
    assert!(
        asynchronous.participants().iter().all(|p| *p >= 4),
        "{:?}",
        asynchronous.participants()
    );
    let slow_trained = asynchronous
        .report
        .rounds
        .iter()
        .filter(|r| r.trainers.iter().any(|t| t == "node0" || t == "node1"))
        .count();
    assert!(slow_trained > 0, "{:#?}", asynchronous.report.rounds);
}
