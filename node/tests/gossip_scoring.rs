//! gossipsub's peer scoring on a real node: a peer whose job announcements the node rejects as
//! malformed is graylisted after five, and what it gossips next is dropped before the node looks
//! at it.

mod common;

use common::{federation, plain, refusals};
use fedmesh_node::engine::JOBS_TOPIC;
use fedmesh_node::metrics::Metrics;
use fedmesh_node::network::{self, BehaviourSettings, NetworkEvent};
use libp2p::{Multiaddr, identity};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Malformed messages that graylist their sender (see the network's scoring).
const TO_GRAYLIST: f64 = 5.0;

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_sending_malformed_gossip_is_graylisted_after_five() {
    let root = tempfile::tempdir().unwrap();
    let cluster = federation(root.path(), 1, plain).await;
    let key = identity::Keypair::generate_ed25519();
    let listen: Multiaddr = "/ip4/127.0.0.1/tcp/0".parse().unwrap();
    let heartbeat = Duration::from_millis(100);
    let settings =
        BehaviourSettings { gossip_heartbeat: heartbeat, ..BehaviourSettings::default() };
    let (culprit, mut events) =
        network::start(key, &[listen], &settings, Arc::new(Metrics::new())).unwrap();
    culprit.subscribe(JOBS_TOPIC).await.unwrap();
    culprit.dial(cluster.nodes[0].address.parse().unwrap()).await.unwrap();
    let subscribed = async {
        while let Some(event) = events.recv().await {
            if matches!(event, NetworkEvent::Subscribed { .. }) {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), subscribed).await.unwrap();
    let malformed = || refusals(&cluster, &[0], "gossip", "malformed");
    for i in 0..(TO_GRAYLIST as usize) {
        culprit.publish(JOBS_TOPIC, format!("not a message {i}").into_bytes()).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while malformed().await < (i + 1) as f64 {
            assert!(Instant::now() < deadline, "message {i} was not judged");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for i in 0..5 {
        let _ = culprit.publish(JOBS_TOPIC, format!("more of it {i}").into_bytes()).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(malformed().await, TO_GRAYLIST, "messages judged after the graylisting");
}
