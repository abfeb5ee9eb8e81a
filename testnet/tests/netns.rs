//! `testnet --netns [--nat]` as a user runs it: 8 nodes, each in a network namespace of its own
//! on a virtual LAN; with `--nat`, seven of them behind NAT routers (endpoint-independent and
//! symmetric in turn). The job completes either way; behind NAT, peers reach each other through
//! node0's relay, the endpoint-independent ones punch holes to each other, and node0, the one
//! member peers can dial, aggregates every round. Needs root, iproute2 and iptables (`.ci/run`
//! installs iptables).

use fedmesh_testnet::report::Report;
use std::os::unix::fs::MetadataExt;
use std::process::Command;

/// Runs `testnet --netns` with `extra` flags on 8 nodes, 10 rounds of softmax; returns its
/// report, after checking that it passed and removed its namespaces.
fn run_on_namespaces(extra: &[&str]) -> Option<Report> {
    // /proc/self belongs to the process's effective user.
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    if !root {
        eprintln!("skipped: --netns needs root");
        return None;
    }
    let out = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_testnet"))
        .args(["--netns", "--nodes", "8", "--rounds", "10", "--model", "softmax", "--out"])
        .arg(out.path())
        .args(extra)
        .stdout(std::fs::File::create(out.path().join("testnet.log")).unwrap())
        .stderr(std::fs::File::create(out.path().join("testnet.err")).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id();
    let status = child.wait().unwrap();
    let log = |name: &str| std::fs::read_to_string(out.path().join(name)).unwrap_or_default();
    assert!(status.success(), "{}\n{}", log("testnet.log"), log("testnet.err"));
    assert_no_namespaces_left(pid);
    let report = std::fs::read_to_string(out.path().join("report.json")).unwrap();
    Some(serde_json::from_str(&report).unwrap())
}

/// Asserts that the testnet run `pid` left no namespace behind.
fn assert_no_namespaces_left(pid: u32) {
    let listing = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    let prefix = format!("fmtn{pid}-");
    assert!(!listing.lines().any(|line| line.starts_with(&prefix)), "left behind:\n{listing}");
}

/// Each node's connections at the end, by kind: (node, direct, relayed, hole-punched).
fn connections(report: &Report) -> Vec<(String, u64, u64, u64)> {
    let usage = report.usage.iter();
    usage
        .map(|u| {
            let c = &u.connections;
            (u.node.clone(), c.direct, c.relayed, c.hole_punched)
        })
        .collect()
}

#[test]
fn nodes_on_a_virtual_lan_connect_directly_only() {
    let Some(report) = run_on_namespaces(&[]) else { return };
    let connections = connections(&report);
    eprintln!("connections (node, direct, relayed, hole-punched): {connections:?}");
    assert_eq!(report.rounds.len(), 10);
    assert_eq!(connections.len(), 8);
    for (node, direct, relayed, punched) in &connections {
        assert!(*direct > 0 && *relayed == 0 && *punched == 0, "{node}: {connections:?}");
    }
}

#[test]
fn nodes_behind_nat_reach_each_other_through_the_relay_and_punch_holes() {
    let Some(report) = run_on_namespaces(&["--nat"]) else { return };
    let connections = connections(&report);
    eprintln!("connections (node, direct, relayed, hole-punched): {connections:?}");
    assert_eq!(report.rounds.len(), 10);
    let of = |name: &str| connections.iter().find(|c| c.0 == name).cloned().unwrap();
    let (_, _, relayed, punched) = of("node0");
    assert_eq!((relayed, punched), (0, 0), "node0 is public: {connections:?}");
    // Behind symmetric NATs (node2, node4, node6), paths to other NATed nodes stay relayed.
    for node in ["node2", "node4", "node6"] {
        assert!(of(node).2 > 0, "{node} relays: {connections:?}");
    }
    // Behind endpoint-independent NATs (node1, node3, node5, node7), holes get punched.
    let punched: u64 = ["node1", "node3", "node5", "node7"].iter().map(|n| of(n).3).sum();
    assert!(punched > 0, "holes punched: {connections:?}");
    // Elections prefer the members peers can dial: node0 alone is public, and aggregates.
    let aggregators: Vec<Option<&str>> =
        report.rounds.iter().map(|r| r.aggregator.as_deref()).collect();
    assert!(aggregators.iter().all(|a| *a == Some("node0")), "aggregators: {aggregators:?}");
}
