//! Each attack's course: the peer starts, learns the job from the nodes (its last round, its
//! model's size, the round in progress), joins it when it poses as a member, sends what the
//! attack sends for as long as the plan says, notes how the nodes answered, and leaves.

use super::forge::{self, DeltaClaim};
use super::frames::{self, Lie};
use super::peer::{Peer, peer_of};
use super::{Attack, HostileError, Outcome, Plan, Posing};
use fedmesh_protocol::identity::Identity;
use fedmesh_protocol::ids::{ContentHash, JobId, MemberId, Round};
use fedmesh_protocol::message::{GossipMessage, Request, Response};
use futures::StreamExt;
use libp2p::{Multiaddr, PeerId};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The samples a hostile member declares when it joins.
pub const DECLARED_SAMPLES: u64 = 100;
/// How long the peer waits to hear the job (a node subscribed, a heartbeat).
const HEAR_LIMIT: Duration = Duration::from_secs(30);
/// How long a joined peer waits, at most, for a round planned with it (its join reached the
/// members) before its attack starts.
const JOIN_SPREAD: Duration = Duration::from_secs(3);
/// Requests in flight at once in a flood.
const IN_FLIGHT: usize = 32;
/// A large frame length that looks valid: under every node's default limit (512 MiB).
const TRICKLED_LENGTH: u64 = 64 << 20;

/// A slow frame's length: a node's whole default bulk budget (128 MiB), under its frame limit.
const SLOW_LENGTH: u64 = 128 << 20;
/// A slow frame's bytes per second: above the 256 KiB per 5 s a node's step timeout allows.
const SLOW_STEP: usize = 64 << 10;

/// What the peer learned of the job from a node.
#[derive(Debug, Clone, Copy)]
pub struct JobInfo {
    pub id: JobId,
    pub last_round: Round,
    /// Parameters of the job's model (its f32 blob's length / 4).
    pub params: usize,
}

/// Carries `plan` out.
pub async fn run(plan: &Plan) -> Result<Outcome, HostileError> {
    let job = forge::job_id(&plan.job)?;
    let peers = addresses(&plan.peers)?;
    let mut outcome = Outcome::default();
    match plan.attack {
        Attack::OversizedFrames => {
            for claimed in [u64::MAX, 1 << 40] {
                let lie = Lie::oversized(claimed);
                frames::send(&peers, lie, plan.count, plan.duration, &mut outcome).await?;
            }
        }
        Attack::TrickledFrames => {
            let pause = Duration::from_millis(250);
            let lie = Lie::trickled(TRICKLED_LENGTH, 4, pause, plan.duration);
            frames::send(&peers, lie, plan.count, plan.duration, &mut outcome).await?;
        }
        Attack::SlowFrames => {
            let (step, pause) = (SLOW_STEP, Duration::from_secs(1));
            let lie = Lie::trickled(SLOW_LENGTH, step, pause, plan.duration);
            frames::send(&peers, lie, plan.count, plan.duration, &mut outcome).await?;
        }
        _ => on_gossip(plan, job, &peers, &mut outcome).await?,
    }
    Ok(outcome)
}

/// The addresses of a plan, each with its PeerId.
fn addresses(texts: &[String]) -> Result<Vec<(PeerId, Multiaddr)>, HostileError> {
    texts
        .iter()
        .map(|text| {
            let address: Multiaddr =
                text.parse().map_err(|_| HostileError::Address(text.clone()))?;
            Ok((peer_of(&address)?, address))
        })
        .collect()
}

/// The attacks carried out by a peer on the job's topic and its requests.
async fn on_gossip(
    plan: &Plan,
    job: JobId,
    peers: &[(PeerId, Multiaddr)],
    outcome: &mut Outcome,
) -> Result<(), HostileError> {
    let victim = victim(plan)?;
    let addresses: Vec<Multiaddr> = peers.iter().map(|(_, a)| a.clone()).collect();
    let peer = Peer::start(Identity::generate(), job, &addresses, victim).await?;
    peer.wait_for("a node subscribed to the job's topic", HEAR_LIMIT, |w| {
        (!w.subscribers.is_empty()).then_some(())
    })
    .await?;
    let (round, model) = peer.wait_for("a member's heartbeat", HEAR_LIMIT, |w| w.head()).await?;
    let info = job_info(&peer, job, model).await?;
    outcome.note(format!(
        "job {job}: round {round} in progress of {}, {} parameters; posing as {} {}",
        info.last_round,
        info.params,
        plan.posing.name(),
        peer.identity.member_id()
    ));
    let heartbeats = match plan.posing {
        Posing::Member => Some(join(&peer, outcome).await?),
        Posing::Outsider => None,
    };
    let result = attack(plan, &peer, info, outcome).await;
    if let Some(heartbeats) = heartbeats {
        heartbeats.abort();
        peer.publish(forge::leave(&peer.identity, job)?).await?;
        outcome.note("left the job (a signed leave)");
    }
    result
}

fn victim(plan: &Plan) -> Result<Option<MemberId>, HostileError> {
    match (&plan.victim, plan.attack.needs_victim()) {
        (Some(text), _) => MemberId::from_peer_id_string(text)
            .map(Some)
            .map_err(|_| HostileError::Victim(text.clone())),
        (None, true) => Err(HostileError::NoVictim { attack: plan.attack.name() }),
        (None, false) => Ok(None),
    }
}

/// The job's last round and model size, from the first node that tells.
async fn job_info(peer: &Peer, job: JobId, model: ContentHash) -> Result<JobInfo, HostileError> {
    let mut problems = Vec::new();
    for node in peer.connected().await? {
        match ask_job_info(peer, node, job, model).await {
            Ok(info) => return Ok(info),
            Err(problem) => problems.push(format!("{node}: {problem}")),
        }
    }
    Err(HostileError::Job(format!("no node told the job and its model: {}", problems.join("; "))))
}

async fn ask_job_info(
    peer: &Peer,
    node: PeerId,
    job: JobId,
    model: ContentHash,
) -> Result<JobInfo, HostileError> {
    let (answer, _) = peer.ask_plain(node, &Request::Announcement { job }).await?;
    let Response::Announcement(signed) = answer else {
        return Err(HostileError::Job(format!("asked for the announcement: {answer:?}")));
    };
    let verified = signed.verify_announcement().map_err(|e| HostileError::Job(e.to_string()))?;
    let (answer, blob) = peer.ask_plain(node, &Request::Blob { hash: model }).await?;
    if !matches!(answer, Response::Blob { .. }) {
        return Err(HostileError::Job(format!("asked for model {model}: {answer:?}")));
    }
    let last_round = verified.spec.hyperparameters.rounds;
    Ok(JobInfo { id: job, last_round, params: blob.len() / 4 })
}

/// Joins the job and keeps heartbeating (in the round in progress, on the newest model); returns
/// once a round was planned with it (or after [`JOIN_SPREAD`]), with the task that heartbeats
/// until aborted.
async fn join(
    peer: &Peer,
    outcome: &mut Outcome,
) -> Result<tokio::task::JoinHandle<()>, HostileError> {
    peer.publish(forge::join(&peer.identity, peer.job, DECLARED_SAMPLES)?).await?;
    outcome.note(format!("joined, declaring {DECLARED_SAMPLES} samples"));
    let (identity, network, topic, job) =
        (peer.identity.clone(), peer.network.clone(), peer.topic.clone(), peer.job);
    let watch = peer.watch_handle();
    let task = tokio::spawn(async move {
        for sequence in 1.. {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let Some(head) = super::peer::lock(&watch).head() else { continue };
            if let Ok(frame) = forge::heartbeat(&identity, job, head, sequence) {
                let _ = network.publish(&topic, frame).await;
            }
        }
    });
    let me = peer.identity.member_id();
    let planned =
        peer.wait_for("a round planned with it", JOIN_SPREAD, |w| w.plans(me).then_some(()));
    if planned.await.is_err() {
        outcome.note(format!("no round planned with it within {JOIN_SPREAD:?}; attacking anyway"));
    }
    Ok(task)
}

/// The attack itself, once the peer knows the job (and joined it, as a member).
async fn attack(
    plan: &Plan,
    peer: &Peer,
    info: JobInfo,
    outcome: &mut Outcome,
) -> Result<(), HostileError> {
    match plan.attack {
        Attack::ForgeResult | Attack::ForgeOpen | Attack::ForgeAssignment => {
            forge_round_messages(plan, peer, info, outcome).await
        }
        Attack::ReplayHeartbeats => replay_heartbeats(plan, peer, outcome).await,
        Attack::JoinFlood => join_flood(plan, peer, outcome).await,
        Attack::InflateSamples | Attack::BadValues | Attack::EarlyInputs => {
            send_deltas(plan, peer, info, outcome).await
        }
        Attack::OversizedFrames | Attack::TrickledFrames | Attack::SlowFrames => Ok(()), // `run`
        Attack::SwapModel => swap_models(plan, peer, outcome).await,
    }
}

/// Publishes each new result heard with its model's bytes again, its signature intact and its
/// model's first bytes changed, every second for the plan's duration.
async fn swap_models(plan: &Plan, peer: &Peer, outcome: &mut Outcome) -> Result<(), HostileError> {
    let until = Instant::now() + plan.duration;
    let mut swapped = BTreeSet::new();
    while Instant::now() < until {
        let newest = peer.watch().with_model.clone();
        if let Some(mut with_model) = newest {
            let round = with_model.result.unverified_body().round;
            if swapped.insert(round) {
                with_model.model.iter_mut().take(64).for_each(|byte| *byte ^= 0x5a);
                let frame = forge::gossip(&GossipMessage::ResultWithModel(Box::new(with_model)))?;
                let published = peer.publish(frame).await.is_ok();
                outcome.note(format!(
                    "round {round}'s result with a swapped model: {}",
                    if published { "published" } else { "could not be published" }
                ));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if swapped.is_empty() {
        outcome.note("heard no result with its model's bytes");
    }
    Ok(())
}

/// The rounds a forged round message names while `round` is in progress and `completed`
/// rounds are done: ahead of the job, its last round, past it, and below the current one.
fn forged_rounds(attack: Attack, round: Round, completed: Round, last: Round) -> Vec<Round> {
    let mut rounds = match attack {
        Attack::ForgeResult => vec![last, last + 1, u64::MAX],
        Attack::ForgeOpen => vec![round + 1, last, last + 1],
        _ => vec![round, round + 1, last, last + 1],
    };
    if completed >= 2 {
        rounds.push(completed - 1);
    }
    rounds
}

/// Publishes forged results, openings or assignments every second for the plan's duration,
/// each time for the rounds [`forged_rounds`] names, on the newest model the peer heard.
async fn forge_round_messages(
    plan: &Plan,
    peer: &Peer,
    info: JobInfo,
    outcome: &mut Outcome,
) -> Result<(), HostileError> {
    let until = Instant::now() + plan.duration;
    while Instant::now() < until {
        let (head, completed, mut members) = {
            let watch = peer.watch();
            (watch.head(), watch.completed, watch.planned_members())
        };
        let Some((round, model)) = head else { break };
        if !members.contains(&peer.identity.member_id()) && plan.posing == Posing::Member {
            members.push(peer.identity.member_id());
        }
        let (mut sent, mut failed) = (Vec::new(), 0);
        for forged in forged_rounds(plan.attack, round, completed, info.last_round) {
            let at = (forged, model);
            let frame = match plan.attack {
                Attack::ForgeResult => forge::result(&peer.identity, info.id, at, &members)?,
                Attack::ForgeOpen => forge::opening(&peer.identity, info.id, at, &members)?,
                _ => forge::assignment(&peer.identity, info.id, at)?,
            };
            match peer.publish(frame).await {
                Ok(()) => sent.push(forged.to_string()),
                Err(_) => failed += 1,
            }
        }
        outcome.note(format!(
            "round {round} in progress: published {} for rounds {} ({failed} could not be)",
            plan.attack.name(),
            sent.join(", ")
        ));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(())
}

/// How long the victim must have been silent before its heartbeats are replayed.
const VICTIM_SILENT: Duration = Duration::from_secs(2);
/// The pause between two replayed frames.
const REPLAY_PAUSE: Duration = Duration::from_millis(200);

/// Captures the victim's heartbeats until it falls silent (it was killed), then publishes every
/// re-spelling of each captured frame once.
async fn replay_heartbeats(
    plan: &Plan,
    peer: &Peer,
    outcome: &mut Outcome,
) -> Result<(), HostileError> {
    let silent = |w: &super::peer::Watch| {
        let quiet = w.victim_heard.is_some_and(|heard| heard.elapsed() > VICTIM_SILENT);
        quiet.then(|| w.captured.clone())
    };
    let captured =
        peer.wait_for("the victim's silence after its heartbeats", plan.duration, silent).await?;
    outcome.note(format!(
        "captured {} heartbeats of the victim; it has been silent for {VICTIM_SILENT:?}: replaying",
        captured.len()
    ));
    let (mut sent, mut failed) = (0, 0);
    let until = Instant::now() + plan.duration;
    'replay: for copy in captured.iter().flat_map(|c| forge::respellings(&c.frame)) {
        if Instant::now() > until || sent >= plan.count {
            break 'replay;
        }
        match peer.publish(copy).await {
            Ok(()) => sent += 1,
            Err(_) => failed += 1,
        }
        tokio::time::sleep(REPLAY_PAUSE).await;
    }
    outcome.note(format!("replayed {sent} heartbeat frames; {failed} could not be published"));
    Ok(())
}

/// Joins published at once before a pause.
const JOIN_BATCH: usize = 100;

/// Publishes the plan's count of joins, each signed by a fresh key.
async fn join_flood(plan: &Plan, peer: &Peer, outcome: &mut Outcome) -> Result<(), HostileError> {
    let (mut sent, mut failed) = (0, 0);
    let started = Instant::now();
    for index in 0..plan.count {
        let frame = forge::join(&Identity::generate(), peer.job, DECLARED_SAMPLES)?;
        match peer.publish(frame).await {
            Ok(()) => sent += 1,
            Err(_) => failed += 1,
        }
        if index % JOIN_BATCH == JOIN_BATCH - 1 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    outcome.note(format!(
        "published {sent} joins from fresh keys in {:.1} s; {failed} could not be published",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// One delta to send: what it claims and its values.
struct Forged {
    claim: DeltaClaim,
    values: Arc<Vec<f32>>,
}

/// The deltas an attack sends while `head` is the round in progress and its model.
fn deltas(attack: Attack, (round, model): (Round, ContentHash), params: usize) -> Vec<Forged> {
    let zeros = Arc::new(vec![0.0f32; params]);
    let at = |round, samples, values: &Arc<Vec<f32>>| Forged {
        claim: DeltaClaim { round, base_model: model, samples },
        values: values.clone(),
    };
    match attack {
        Attack::InflateSamples => {
            let other_base = DeltaClaim {
                round,
                base_model: ContentHash::of(b"not the round's model"),
                samples: u64::MAX,
            };
            vec![
                at(round, u64::MAX, &zeros),
                at(round, DECLARED_SAMPLES * 1_000_000, &zeros),
                Forged { claim: other_base, values: zeros.clone() },
            ]
        }
        Attack::BadValues => {
            let nan = Arc::new(vec![f32::NAN; params]);
            let huge = Arc::new(vec![1e30f32; params]);
            let mut mixed = vec![0.5f32; params];
            mixed.iter_mut().step_by(7).for_each(|v| *v = f32::INFINITY);
            let mixed = Arc::new(mixed);
            vec![
                at(round, DECLARED_SAMPLES, &nan),
                at(round, DECLARED_SAMPLES, &mixed),
                at(round, DECLARED_SAMPLES, &huge),
            ]
        }
        _ => [round + 1, round + 2, round + 10, u64::MAX / 2]
            .into_iter()
            .map(|ahead| at(ahead, DECLARED_SAMPLES, &zeros))
            .collect(),
    }
}

/// Sends the attack's deltas to every node, again for each new round in progress, until the
/// plan's count is sent or its duration passed; notes how the nodes answered.
async fn send_deltas(
    plan: &Plan,
    peer: &Peer,
    info: JobInfo,
    outcome: &mut Outcome,
) -> Result<(), HostileError> {
    let nodes = peer.connected().await?;
    let until = Instant::now() + plan.duration;
    let mut sent = 0;
    while Instant::now() < until && sent < plan.count {
        let Some(head) = peer.watch().head() else { break };
        let mut frames = Vec::new();
        for forged in deltas(plan.attack, head, info.params) {
            frames.push(forge::delta(&peer.identity, info.id, forged.claim, &forged.values)?);
        }
        let requests = nodes.iter().flat_map(|node| frames.iter().map(move |f| (*node, f.clone())));
        let requests: Vec<(PeerId, Vec<u8>)> = requests.take(plan.count - sent).collect();
        sent += requests.len();
        let mut answers: BTreeMap<String, usize> = BTreeMap::new();
        let mut answered = futures::stream::iter(requests)
            .map(|(node, frame)| async move { peer.ask(node, frame, 0).await })
            .buffer_unordered(IN_FLIGHT);
        while let Some(answer) = answered.next().await {
            *answers.entry(describe(answer)).or_default() += 1;
        }
        let answers: Vec<String> = answers.iter().map(|(a, n)| format!("{n} {a}")).collect();
        outcome.note(format!(
            "round {} in progress: {} deltas ({sent} so far) to {} nodes: {}",
            head.0,
            plan.attack.name(),
            nodes.len(),
            answers.join("; ")
        ));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

/// A node's answer to a delta, shortened for the outcome (the first words of a refusal).
fn describe(answer: Result<(Response, Vec<u8>), HostileError>) -> String {
    match answer {
        Ok((Response::Accepted, _)) => "ACCEPTED".into(),
        Ok((Response::Refused { reason }, _)) => {
            let words: Vec<&str> = reason.split_whitespace().take(8).collect();
            format!("refused: {}", words.join(" "))
        }
        Ok((other, _)) => format!("{other:?}"),
        Err(error) => format!("failed: {error}"),
    }
}
