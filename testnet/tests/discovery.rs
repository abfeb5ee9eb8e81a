//! Discovery beyond the bootstrap list on real `fedmesh` processes: ten nodes, each bootstrapping
//! from only the node started before it, find the others (Kademlia) and run one job together.

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
