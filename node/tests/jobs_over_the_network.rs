//! Five real `fedmesh node` processes on 127.0.0.1 (a bootstrap chain, no mDNS): announcements
//! spread, a late node learns jobs from its peers, forged or untrusted announcements are stored by
//! nobody, and a restarted node still knows its jobs.

use fedmesh_admin_api::metric_value;
use fedmesh_node::network::{self, BehaviourSettings, NetworkEvent};
use fedmesh_protocol::codec::encode_gossip;
use fedmesh_protocol::envelope::Signed;
use fedmesh_protocol::identity::Identity;
use fedmesh_protocol::message::{GossipMessage, JobAnnouncement};
use fedmesh_protocol::spec::JobSpec;
use fedmesh_testnet::cluster::{Cluster, NodeSpec};
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_fedmesh");

fn job_spec(name: &str, owner: &str) -> Vec<u8> {
    let spec = json!({ "name": name, "owner": owner, "model": "softmax", "dataset": "mnist5k" });
    serde_json::to_vec(&spec).unwrap()
}

async fn job_ids(cluster: &Cluster, index: usize) -> Vec<String> {
    let jobs = cluster.nodes[index].api.jobs().await.unwrap_or_default();
    jobs.into_iter().map(|job| job.id).collect()
}

/// Polls until every listed node knows `job`, or fails after `limit`.
async fn wait_for_job(cluster: &Cluster, nodes: &[usize], job: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let mut missing = Vec::new();
        for &index in nodes {
            if !job_ids(cluster, index).await.iter().any(|id| id == job) {
                missing.push(index);
            }
        }
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "nodes {missing:?} did not learn job {job} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Publishes a tampered announcement from an in-process peer connected to `address`.
async fn publish_forged_announcement(owner_seed_dir: &Path, address: &str) {
    let owner = Identity::load(&owner_seed_dir.join("node.key")).unwrap();
    let spec =
        JobSpec::from_json(&job_spec("forged", &owner.member_id().to_peer_id_string())).unwrap();
    let announcement = JobAnnouncement::new(&spec, 1).unwrap();
    let signed = Signed::sign(&owner, announcement).unwrap();
    let mut frame = encode_gossip(&GossipMessage::Announce(signed)).unwrap();
    // The signature is the frame's last 64 bytes: break it.
    let last = frame.len() - 1;
    frame[last] ^= 0x55;

    let forger = Identity::generate();
    let key = fedmesh_node::identity::libp2p_keypair(&forger).unwrap();
    let settings = BehaviourSettings {
        max_message_bytes: 1 << 20,
        request_timeout: Duration::from_secs(10),
        gossip_heartbeat: Duration::from_millis(200),
        bulk_buffer_bytes: 1 << 20,
        ..BehaviourSettings::default()
    };
    let metrics = Arc::new(fedmesh_node::metrics::Metrics::new());
    let (net, mut events) =
        network::start(key, &["/ip4/127.0.0.1/tcp/0".parse().unwrap()], &settings, metrics)
            .unwrap();
    net.subscribe(fedmesh_node::engine::JOBS_TOPIC).await.unwrap();
    net.dial(address.parse().unwrap()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let event =
            tokio::time::timeout(Duration::from_secs(20), events.recv()).await.unwrap().unwrap();
        if matches!(&event, NetworkEvent::Subscribed { topic, .. } if topic == fedmesh_node::engine::JOBS_TOPIC)
        {
            break;
        }
        assert!(Instant::now() < deadline, "the node never subscribed to job announcements");
    }
    net.publish(fedmesh_node::engine::JOBS_TOPIC, frame).await.unwrap();
    // Give gossipsub time to deliver before the forger goes away.
    tokio::time::sleep(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announcements_spread_and_survive_restarts_while_forgeries_do_not() {
    let root = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::new(Path::new(BINARY), root.path());
    let owner_dir = root.path().join("owner");
    std::fs::create_dir_all(&owner_dir).unwrap();
    // Node 0 is the trusted owner; every node trusts it (and only it).
    let owner_peer = cluster.keygen(&owner_dir.join("node.key")).unwrap();
    let spec = NodeSpec { trust: vec![owner_peer.clone()], ..NodeSpec::default() };
    cluster.start_node_with_key(&spec, &owner_dir.join("node.key")).await.unwrap();
    for _ in 1..4 {
        cluster.start_node(&spec).await.unwrap();
    }

    // An announcement from the owner reaches the other three.
    let announced = cluster.nodes[0].api.announce(job_spec("mnist", &owner_peer)).await;
    let job = announced.unwrap().id;
    wait_for_job(&cluster, &[0, 1, 2, 3], &job, Duration::from_secs(15)).await;

    // A fifth node started after the announcement learns the job from its peers.
    cluster.start_node(&spec).await.unwrap();
    wait_for_job(&cluster, &[4], &job, Duration::from_secs(15)).await;

    // A job from an owner nobody trusts is stored by nobody but its owner.
    let stranger = cluster.nodes[3].peer_id.clone();
    let untrusted = cluster.nodes[3].api.announce(job_spec("untrusted", &stranger)).await;
    let untrusted = untrusted.unwrap().id;

    // A forged announcement (broken signature) is rejected and counted.
    publish_forged_announcement(&owner_dir, &cluster.nodes[4].address).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric_value(
        &cluster.nodes[4].api.metrics().await.unwrap(),
        "fedmesh_messages_rejected_total{kind=\"gossip\",reason=\"bad_announcement\"}",
    ) < 1.0
    {
        assert!(Instant::now() < deadline, "node 4 did not count the forged announcement");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for index in 0..5 {
        let ids = job_ids(&cluster, index).await;
        assert!(ids.contains(&job), "node {index} lost the job");
        assert_eq!(
            ids.len(),
            if index == 3 { 2 } else { 1 },
            "node {index} stored a job it should not have: {ids:?}"
        );
        assert!(index == 3 || !ids.contains(&untrusted));
    }

    // A node restarted from its data directory still lists the job.
    cluster.nodes[2].stop();
    cluster.restart(2).await.unwrap();
    assert!(job_ids(&cluster, 2).await.contains(&job), "node 2 forgot the job after a restart");
    cluster.stop_all();
}

#[test]
fn keygen_prints_the_peer_id_the_node_runs_under() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::new(Path::new(BINARY), dir.path());
    let printed = cluster.keygen(&dir.path().join("k.key")).unwrap();
    let identity = Identity::load(&dir.path().join("k.key")).unwrap();
    let peer_id = fedmesh_node::identity::libp2p_keypair(&identity).unwrap().public().to_peer_id();
    assert_eq!(printed, peer_id.to_string());
}

#[test]
fn keygen_refuses_to_overwrite_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::new(Path::new(BINARY), dir.path());
    cluster.keygen(&dir.path().join("k.key")).unwrap();
    let error = cluster.keygen(&dir.path().join("k.key")).unwrap_err();
    assert!(error.to_string().contains("already exists"), "{error}");
}
