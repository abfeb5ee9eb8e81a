//! Asynchronous FL's rules: versions made from the first `buffer` updates, stale updates taken
//! and discounted, too stale ones dropped, groups and failover as in synchronous rounds.

use super::*;
use fedmesh_protocol::spec::{AsyncOptions, Mode, Staleness};

/// Members 1 and 2 train five times slower than the other six.
const SLOW_MS: u64 = 2_000;
const FAST_MS: u64 = 400;

/// A job of eight members (in `groups`, one group per name) with `options`, or synchronous.
fn eight(topology: &str, rounds: u64, options: Option<AsyncOptions>, groups: &[&str]) -> Net {
    let mut spec = spec(topology, rounds, 10);
    if let Some(options) = options {
        spec.mode = Mode::Async;
        spec.asynchronous = Some(options);
    }
    spec.validate().expect("a valid spec");
    let members: Vec<(u8, &str)> =
        (1..=8u8).map(|byte| (byte, groups[usize::from(byte) % groups.len()])).collect();
    let mut net = Net::new(spec, &members);
    for byte in 1..=8u8 {
        net.train_ms.insert(member_id(byte), if byte <= 2 { SLOW_MS } else { FAST_MS });
    }
    net
}

fn buffer(buffer: u32, max_staleness: u32) -> AsyncOptions {
    AsyncOptions { buffer, max_staleness, ..AsyncOptions::default() }
}

/// Every result published, one per round.
fn results(net: &Net) -> BTreeMap<Round, Arc<AggregateReady>> {
    net.published
        .iter()
        .filter_map(|(_, message)| match message {
            Gossip::Result(ready) => Some((ready.round, ready.clone())),
            _ => None,
        })
        .collect()
}

/// How many versions behind round `round`'s base the update `delta` trained on.
fn staleness(net: &Net, round: Round, delta: &ContentHash) -> u32 {
    let trained_on = net.trained_bases[delta];
    let base_of =
        |r: Round| net.live_members().next().and_then(|m| m.rounds().get(&r)).map(|r| r.base_model);
    (0..round).find(|back| base_of(round - back) == Some(trained_on)).expect("a known base") as u32
}

/// The rounds each of members 1 and 2 (the slow ones) counted in, and each version's model
/// checked against FedBuff's rule: the base plus the sample-weighted mean of the updates, each
/// discounted for its staleness.
fn check_versions(net: &Net, staleness_fn: Staleness) -> (Vec<Round>, u32) {
    let mut slow_counted = Vec::new();
    let mut stalest = 0;
    for (round, ready) in results(net) {
        let base = &net.blobs[&ready.base_model];
        let total: f64 = ready.contributions.iter().map(|c| c.samples as f64).sum();
        let mut expected: Vec<f64> = base.iter().map(|v| f64::from(*v)).collect();
        for contribution in &ready.contributions {
            let tau = staleness(net, round, &contribution.delta);
            stalest = stalest.max(tau);
            let weight = contribution.samples as f64 * f64::from(staleness_fn.weight(tau)) / total;
            for (value, delta) in expected.iter_mut().zip(net.trained[&contribution.delta].iter()) {
                *value += weight * f64::from(*delta);
            }
            if contribution.member.0[0] <= 2 {
                slow_counted.push(round);
            }
        }
        let model = &net.blobs[&ready.model];
        for (made, expected) in model.iter().zip(&expected) {
            assert!(
                (f64::from(*made) - expected).abs() < 1e-5,
                "round {round}: {made} vs {expected}"
            );
        }
    }
    (slow_counted, stalest)
}

#[test]
fn an_async_version_takes_the_first_buffer_updates_and_discounts_stale_ones() {
    let options = buffer(4, 8);
    let mut net = eight("central", 12, Some(options), &["a"]);
    net.run(600_000);
    net.assert_agree();
    for (round, ready) in results(&net) {
        assert!(ready.contributions.len() >= 4, "round {round}: {:?}", ready.contributions);
    }
    let (slow_counted, stalest) = check_versions(&net, options.staleness);
    eprintln!("slow members counted in versions {slow_counted:?}, the stalest {stalest} behind");
    assert!(!slow_counted.is_empty(), "the slow members' updates count, late");
    assert!(stalest >= 1, "some update was stale when it counted");
    // A slow member trains once per its training time, not once per version.
    let slow_trainings: usize =
        net.trainings.iter().filter(|((m, _), _)| m.0[0] <= 2).map(|(_, n)| n).sum();
    assert!(slow_trainings < 2 * 12, "{slow_trainings} trainings of the two slow members");
}

#[test]
fn async_versions_finish_the_job_in_a_fraction_of_the_synchronous_rounds_time() {
    let started = 1_000;
    let mut sync = eight("central", 12, None, &["a"]);
    sync.run(600_000);
    sync.assert_agree();
    let mut asynchronous = eight("central", 12, Some(buffer(4, 8)), &["a"]);
    asynchronous.run(600_000);
    asynchronous.assert_agree();
    let (sync_ms, async_ms) = (sync.now - started, asynchronous.now - started);
    eprintln!("12 rounds, 2 of 8 members 5x slower: sync {sync_ms} ms, async {async_ms} ms");
    assert!(async_ms * 10 < sync_ms * 6, "async {async_ms} ms, sync {sync_ms} ms");
}

#[test]
fn an_update_staler_than_the_job_takes_is_dropped_and_the_job_goes_on() {
    let mut net = eight("central", 8, Some(buffer(4, 0)), &["a"]);
    net.run(600_000);
    net.assert_agree();
    let (slow_counted, stalest) = check_versions(&net, Staleness::Polynomial(0.5));
    assert_eq!(stalest, 0, "max_staleness 0 takes fresh updates only");
    assert!(slow_counted.len() <= 1, "the slow members rarely finish in time: {slow_counted:?}");
}

#[test]
fn an_async_hierarchical_job_fills_each_groups_share_of_the_buffer() {
    let options = buffer(4, 8);
    let mut net = eight("hierarchical", 10, Some(options), &["a", "b"]);
    net.run(600_000);
    net.assert_agree();
    for (round, ready) in results(&net) {
        let in_group = |group: &str| {
            let group = group.to_owned();
            ready.contributions.iter().filter(|c| net.groups[&c.member] == group).count()
        };
        assert!(
            in_group("a") >= 2 && in_group("b") >= 2,
            "round {round}: {:?}",
            ready.contributions
        );
    }
    let (slow_counted, _) = check_versions(&net, options.staleness);
    assert!(!slow_counted.is_empty(), "the slow members' updates count, late");
}

#[test]
fn an_async_versions_aggregator_lost_after_opening_is_replaced() {
    let mut net = eight("central", 6, Some(buffer(4, 8)), &["a"]);
    net.run_until(60_000, |net| net.openings_of(3) == 1);
    let leader = net.opened.iter().find(|((r, _), _)| *r == 3).map(|(_, m)| *m).expect("opener");
    net.down.insert(leader);
    net.run(600_000);
    net.assert_agree();
    let record = &net.live_members().next().expect("live").rounds()[&3];
    assert_ne!(record.aggregator, leader, "another member aggregated version 3");
}
