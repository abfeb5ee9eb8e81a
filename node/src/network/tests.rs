//! The network's limits between real swarms on loopback: gossipsub's scores of an honest and a
//! misbehaving peer, and the per-peer request rate limit.

use super::*;
use fedmesh_protocol::codec::{decode_response, encode_response_header};
use fedmesh_protocol::message::Response;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// A node on a free loopback port, its address (with its PeerId) and its events.
async fn node() -> (Network, Multiaddr, mpsc::Receiver<NetworkEvent>, Arc<Metrics>) {
    let heartbeat = Duration::from_millis(100);
    let settings =
        BehaviourSettings { gossip_heartbeat: heartbeat, ..BehaviourSettings::default() };
    let key = identity::Keypair::generate_ed25519();
    let peer = key.public().to_peer_id();
    let listen: Multiaddr = "/ip4/127.0.0.1/tcp/0".parse().unwrap();
    let metrics = Arc::new(Metrics::new());
    let (network, events) = start(key, &[listen], &settings, metrics.clone()).unwrap();
    let address = within(|| async {
        let status = network.status().await.unwrap();
        status.listen_addresses.first().cloned()
    })
    .await;
    (network, address.with(libp2p::multiaddr::Protocol::P2p(peer)), events, metrics)
}

/// Polls `probe` until it gives something (at most 20 s).
async fn within<T, F: std::future::Future<Output = Option<T>>>(mut probe: impl FnMut() -> F) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `events` report that each of `peers` subscribed to a topic.
async fn subscribed(events: &mut mpsc::Receiver<NetworkEvent>, peers: &[PeerId]) {
    let mut waiting: std::collections::HashSet<PeerId> = peers.iter().copied().collect();
    let wait = async {
        while let Some(event) = events.recv().await {
            if let NetworkEvent::Subscribed { peer, .. } = event {
                waiting.remove(&peer);
            }
            if waiting.is_empty() {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), wait).await.unwrap();
}

const TOPIC: &str = "fedmesh/job/test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_whose_gossip_is_rejected_is_graylisted_and_an_honest_one_is_not() {
    let (target, target_address, mut target_events, _) = node().await;
    let (honest, _, mut honest_events, _) = node().await;
    let (culprit, _, mut culprit_events, _) = node().await;
    let honest_id = honest.status().await.unwrap().peer_id;
    let culprit_id = culprit.status().await.unwrap().peer_id;
    let target_id = target.status().await.unwrap().peer_id;
    for network in [&target, &honest, &culprit] {
        network.subscribe(TOPIC).await.unwrap();
    }
    honest.dial(target_address.clone()).await.unwrap();
    culprit.dial(target_address).await.unwrap();
    subscribed(&mut honest_events, &[target_id]).await;
    subscribed(&mut culprit_events, &[target_id]).await;
    subscribed(&mut target_events, &[honest_id, culprit_id]).await;
    // The target judges as the engine does: what does not decode is rejected.
    for i in 0..3 {
        honest.publish(TOPIC, format!("valid {i}").into_bytes()).await.unwrap();
    }
    for i in 0..8 {
        // The culprit may already be below the publish threshold of the target for the last
        // ones; it publishes anyway (flood publishing ignores its own view).
        let _ = culprit.publish(TOPIC, format!("forged {i}").into_bytes()).await;
    }
    let judged = async {
        let (mut accepted, mut rejected) = (0, 0);
        while accepted < 3 || rejected < 5 {
            let Some(NetworkEvent::Gossip { source, message_id, data, .. }) =
                target_events.recv().await
            else {
                continue;
            };
            let acceptance = if data.starts_with(b"valid") {
                accepted += 1;
                MessageAcceptance::Accept
            } else {
                rejected += 1;
                MessageAcceptance::Reject
            };
            target.validate(message_id, source, acceptance).await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(20), judged).await.unwrap();
    let culprit_score = within(|| async {
        let score = target.peer_score(culprit_id).await.unwrap()?;
        (score < scoring::GRAYLIST_THRESHOLD).then_some(score)
    })
    .await;
    let honest_score = target.peer_score(honest_id).await.unwrap();
    println!("culprit's score {culprit_score}, honest peer's {honest_score:?}");
    assert!(honest_score.is_some_and(|score| score >= 0.0), "{honest_score:?}");
}

/// Answers every request `events` bring with an empty job list; counts them.
fn answer_all(network: Network, mut events: mpsc::Receiver<NetworkEvent>) -> Arc<AtomicUsize> {
    let answered = Arc::new(AtomicUsize::new(0));
    let count = answered.clone();
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            if let NetworkEvent::Request { channel, .. } = event {
                count.fetch_add(1, Ordering::SeqCst);
                let head = encode_response_header(&Response::Jobs { ids: Vec::new() }, 0).unwrap();
                network.respond(channel, head.into()).await.unwrap();
            }
        }
    });
    answered
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_a_peers_rate_are_refused_and_counted() {
    let (server, server_address, server_events, metrics) = node().await;
    let (client, _, _client_events, _) = node().await;
    let server_id = server.status().await.unwrap().peer_id;
    let answered = answer_all(server.clone(), server_events);
    client.dial(server_address).await.unwrap();
    let sent = 2 * rate_limit::BURST as usize;
    let request =
        fedmesh_protocol::codec::encode_request(&fedmesh_protocol::message::Request::Jobs, &[])
            .unwrap();
    let started = Instant::now();
    let mut refused = 0;
    for batch in 0..sent / 50 {
        let asks = (0..50).map(|_| client.request(server_id, request.clone().into()));
        for answer in futures::future::join_all(asks).await {
            let (frame, _) =
                answer.unwrap_or_else(|e| panic!("batch {batch}: {e}")).into_received();
            match decode_response(frame).unwrap().0 {
                Response::Refused { reason } if reason == RATE_LIMITED => refused += 1,
                Response::Jobs { .. } => {}
                other => panic!("unexpected answer {other:?}"),
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let served = answered.load(Ordering::SeqCst);
    println!("{sent} requests in {elapsed:.2} s: {served} served, {refused} refused");
    let allowed = rate_limit::BURST + rate_limit::SUSTAINED_PER_SEC * elapsed + 1.0;
    assert!(refused > 0 && served as f64 <= allowed, "{served} served, {refused} refused");
    assert_eq!(served + refused, sent);
    let rendered = metrics.render(&[]);
    let line = "fedmesh_messages_rejected_total{kind=\"request\",reason=\"rate_limited\"}";
    assert!(rendered.contains(&format!("{line} {refused}")), "{rendered}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_allowed_peer_may_send_a_large_request() {
    let (server, server_address, server_events, metrics) = node().await;
    let (member, _, _member_events, _) = node().await;
    let (outsider, _, _outsider_events, _) = node().await;
    let server_id = server.status().await.unwrap().peer_id;
    let member_id = member.status().await.unwrap().peer_id;
    server.set_large_frame_peers([member_id].into());
    let answered = answer_all(server.clone(), server_events);
    member.dial(server_address.clone()).await.unwrap();
    outsider.dial(server_address).await.unwrap();
    let large = || Frame::new(vec![0; 8], Arc::new(vec![1; LARGE_FRAME_BYTES * 2]));
    let small = || Frame::from(vec![0; 64]);
    let refused = outsider.request(server_id, large()).await;
    assert!(refused.is_err(), "the outsider's large request was read");
    outsider.request(server_id, small()).await.unwrap();
    member.request(server_id, large()).await.unwrap();
    assert_eq!(answered.load(Ordering::SeqCst), 2, "the small request and the member's");
    let line = "fedmesh_messages_rejected_total{kind=\"request\",reason=\"large_from_outsider\"} 1";
    let counted = within(|| async {
        let rendered = metrics.render(&[]);
        rendered.contains("large_from_outsider").then_some(rendered)
    })
    .await;
    assert!(counted.contains(line), "{counted}");
}

/// A crowded node closes the connections no request uses once they are idle, down to the
/// number it keeps by choice (three quarters of its limit): peers that dialled it and went
/// quiet no longer hold the slots others need to send it their updates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowded_node_closes_idle_connections_down_to_the_number_it_keeps() {
    let settings = BehaviourSettings {
        max_connections: 8,
        idle_after: Duration::from_millis(500),
        ..BehaviourSettings::default()
    };
    let key = identity::Keypair::generate_ed25519();
    let listen: Multiaddr = "/ip4/127.0.0.1/tcp/0".parse().unwrap();
    let (crowded, _events) = start(key, &[listen], &settings, Arc::new(Metrics::new())).unwrap();
    let address =
        within(|| async { crowded.status().await.unwrap().listen_addresses.first().cloned() })
            .await;
    let mut peers = Vec::new();
    for _ in 0..8 {
        let (peer, _, events, _) = node().await;
        peer.dial(address.clone()).await.unwrap();
        peers.push((peer, events));
    }
    let connected = || async { crowded.status().await.unwrap().connected_peers.len() };
    within(|| async { (connected().await == 8).then_some(()) }).await;
    within(|| async { (connected().await == 6).then_some(()) }).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(connected().await, 6, "it keeps six, the number it keeps by choice");
}
