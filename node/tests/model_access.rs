//! An allow-listed job's models go to its members, owner and coordinator alone: a peer outside
//! the allow-list that asks a member for the job's model by hash is refused, one on it gets it.

mod common;

use common::{Job, federation, plain, wait_completed};
use fedmesh_node::metrics::Metrics;
use fedmesh_node::network::{self, BehaviourSettings, Network, NetworkEvent};
use fedmesh_protocol::codec::{decode_response, encode_request};
use fedmesh_protocol::ids::ContentHash;
use fedmesh_protocol::message::{Request, Response};
use libp2p::{Multiaddr, PeerId, identity};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// A bare peer in this process (no engine): it can dial and ask, nothing more.
fn peer() -> (Network, PeerId, mpsc::Receiver<NetworkEvent>) {
    let heartbeat = Duration::from_millis(100);
    let settings =
        BehaviourSettings { gossip_heartbeat: heartbeat, ..BehaviourSettings::default() };
    let key = identity::Keypair::generate_ed25519();
    let id = key.public().to_peer_id();
    let listen: Multiaddr = "/ip4/127.0.0.1/tcp/0".parse().unwrap();
    let (network, events) =
        network::start(key, &[listen], &settings, Arc::new(Metrics::new())).unwrap();
    (network, id, events)
}

/// What `asker` is answered when it asks `node` for the blob `hash`.
async fn pull(asker: &Network, node: &str, hash: ContentHash) -> Response {
    let address: Multiaddr = node.parse().unwrap();
    let peer = network::peer_of(&address).unwrap();
    asker.dial(address).await.unwrap();
    let request = encode_request(&Request::Blob { hash }, &[]).unwrap();
    for _ in 0..50 {
        if let Ok(answer) = asker.request(peer, request.clone().into()).await {
            let (frame, _) = answer.into_received();
            return decode_response(frame).unwrap().0;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{node} never answered");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_allow_listed_jobs_model_goes_to_a_peer_on_its_list_and_not_to_an_outsider() {
    let root = tempfile::tempdir().unwrap();
    let cluster = federation(root.path(), 2, plain).await;
    let (insider, insider_id, _insider_events) = peer();
    let (outsider, _, _outsider_events) = peer();
    let mut allow: Vec<String> = cluster.nodes.iter().map(|n| n.peer_id.clone()).collect();
    allow.push(insider_id.to_string());
    let job = Job { allow, ..Job::new(2, 2) }.announce(&cluster).await;
    let runs = wait_completed(&cluster, &job, Duration::from_secs(60)).await;
    let model: ContentHash = runs[1].model.parse().unwrap();
    let member = &cluster.nodes[1].address;

    let refused = pull(&outsider, member, model).await;
    assert!(matches!(refused, Response::Refused { .. }), "the outsider got {refused:?}");
    let served = pull(&insider, member, model).await;
    assert_eq!(served, Response::Blob { hash: model }, "the peer on the allow-list");
    let refusals = common::refusals(&cluster, &[1], "blob", "not_a_member").await;
    assert_eq!(refusals, 1.0);
}
