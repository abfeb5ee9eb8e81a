//! Only the peers of a node's jobs may send it large requests: members' multi-MB updates reach
//! their aggregators every round (the engine keeps the network's set of allowed peers up to date
//! as members join), while a peer in none of the node's jobs is refused from the length of its
//! first large request, before the node buffers any of it.

mod common;

use common::{Job, federation, participants, plain, refusals, wait_completed};
use fedmesh_node::metrics::Metrics;
use fedmesh_node::network::{
    self, BehaviourSettings, Frame, LARGE_FRAME_BYTES, LARGE_FROM_OUTSIDER,
};
use libp2p::{Multiaddr, identity};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// Parameters of the jobs' model: a 2 MB f32 update, twice the size from which frames count as
/// large.
const PARAMS: usize = LARGE_FRAME_BYTES / 2;

#[tokio::test(flavor = "multi_thread")]
async fn members_large_updates_are_taken_and_an_outsiders_large_request_is_refused_unread() {
    let root = tempfile::tempdir().unwrap();
    let cluster = federation(root.path(), 3, plain).await;
    let job = Job { model: json!({"bench": {"params": PARAMS}}), ..Job::new(3, 3) };
    let job = job.announce(&cluster).await;
    let runs = wait_completed(&cluster, &job, Duration::from_secs(90)).await;
    assert_eq!(participants(&runs[0]), [3, 3, 3], "every member's update, every round");

    let key = identity::Keypair::generate_ed25519();
    let listen: Multiaddr = "/ip4/127.0.0.1/tcp/0".parse().unwrap();
    let settings = BehaviourSettings::default();
    let (outsider, _events) =
        network::start(key, &[listen], &settings, Arc::new(Metrics::new())).unwrap();
    let member: Multiaddr = cluster.nodes[1].address.parse().unwrap();
    let peer = network::peer_of(&member).unwrap();
    outsider.dial(member).await.unwrap();
    let large = Frame::new(vec![0; 8], Arc::new(vec![1; 2 * LARGE_FRAME_BYTES]));
    assert!(outsider.request(peer, large).await.is_err(), "the outsider's request was read");
    assert_eq!(refusals(&cluster, &[1], "request", LARGE_FROM_OUTSIDER).await, 1.0);
    assert_eq!(refusals(&cluster, &[0, 1, 2], "request", LARGE_FROM_OUTSIDER).await, 1.0);
}
