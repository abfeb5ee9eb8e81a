//! Discovery and transports on real `fedmesh` processes: ten nodes, each bootstrapping from only
//! the node started before it, find the others (Kademlia) and run one job together; nodes that
//! listen on QUIC alone run one too.

mod common;

use common::run_scenario;

#[test]
fn nodes_bootstrapping_in_a_chain_find_each_other_and_form_one_job() {
    let run = run_scenario("chain", "nodes = 10\nrounds = 3\nchain_bootstrap = true");
    run.assert_passed();
    assert_eq!(run.participants(), vec![10; 3], "{:#?}", run.lines);
    let peaks: Vec<u64> = run.report.usage.iter().map(|u| u.peak_connections).collect();
    eprintln!("peak connections per node: {peaks:?}");
    assert_eq!(peaks.len(), 10, "{:?}", run.report.usage);
    // Each was told of one other node (the one before it), and is told of by the one after it:
    // every connection past those two it found (Kademlia).
    assert!(peaks.iter().all(|peak| *peak >= 3), "{peaks:?}");
    assert!(run.report.usage.iter().all(|u| u.connections.relayed == 0), "{:?}", run.report.usage);
}

#[test]
fn nodes_that_listen_on_quic_alone_run_a_job_over_it() {
    let run = run_scenario("quic", "nodes = 4\nrounds = 3\ntransport = \"quic\"");
    run.assert_passed();
    assert_eq!(run.participants(), vec![4; 3], "{:#?}", run.lines);
    // No node listens on TCP: every connection the job used is a QUIC one.
    assert!(run.report.usage.iter().all(|u| u.connections.direct >= 1), "{:?}", run.report.usage);
}
