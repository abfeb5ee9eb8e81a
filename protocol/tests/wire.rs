//! Wire messages end to end: every message round-trips through the codec, tampering with any byte
//! of a signed message makes it fail, and a message signed for one job, round, model or kind fails
//! in another.

use fedmesh_protocol::codec::{self, DecodeError, EncodeError, MAX_GOSSIP_BYTES};
use fedmesh_protocol::envelope::{Denied, Domain, Scope, Signed, SignedBody, VerifyError};
use fedmesh_protocol::identity::Identity;
use fedmesh_protocol::ids::{ContentHash, JobId, MemberId};
use fedmesh_protocol::message::*;
use fedmesh_protocol::spec::JobSpec;
use fedmesh_protocol::tensor::{self, PayloadRef, TensorEncoding};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

fn identity(seed: u8) -> Identity {
    Identity::from_seed([seed; 32])
}

fn hash(seed: u64) -> ContentHash {
    ContentHash::of(&seed.to_le_bytes())
}

fn job(seed: u64) -> JobId {
    JobId(hash(seed))
}

fn allow_all<T>(_: &MemberId, _: &T) -> Result<(), Denied> {
    Ok(())
}

fn delta(member: MemberId, round: u64, payload: &[u8]) -> ModelDelta {
    ModelDelta {
        job: job(1),
        round,
        base_model: hash(100),
        member,
        samples: 60,
        metrics: TrainMetrics { loss: 0.5, accuracy: Some(0.9) },
        payload: PayloadRef::describe(payload, TensorEncoding::F32Le, payload.len() / 4),
    }
}

fn spec_for(owner: MemberId) -> JobSpec {
    let json = serde_json::json!({"name": "job", "owner": owner.to_string(), "model": "softmax",
                                  "dataset": "mnist"});
    JobSpec::from_json(&serde_json::to_vec(&json).unwrap()).unwrap()
}

fn label() -> impl Strategy<Value = String> {
    "[a-z0-9-]{0,16}"
}

fn contributions() -> impl Strategy<Value = Vec<Contribution>> {
    prop::collection::btree_map(any::<u8>(), (any::<u64>(), any::<u64>()), 0..8).prop_map(|map| {
        map.into_iter()
            .map(|(m, (d, samples))| Contribution {
                member: identity(m).member_id(),
                delta: hash(d),
                samples,
            })
            .collect()
    })
}

fn metric() -> impl Strategy<Value = Option<f32>> {
    prop::option::of(0f32..1.0)
}

/// Every gossip message kind, signed by a random key.
fn gossip_message() -> impl Strategy<Value = GossipMessage> {
    let signer = any::<u8>().prop_map(identity);
    prop_oneof![
        (signer.clone(), any::<u64>()).prop_map(|(id, at)| {
            let body = JobAnnouncement::new(&spec_for(id.member_id()), at).unwrap();
            GossipMessage::Announce(Signed::sign(&id, body).unwrap())
        }),
        (
            signer.clone(),
            any::<u64>(),
            label(),
            prop::collection::vec(label(), 0..4),
            any::<u64>(),
            any::<bool>(),
            any::<u64>()
        )
            .prop_map(|(id, j, group, roles, samples, reachable, at)| {
                let body = Join {
                    job: job(j),
                    member: id.member_id(),
                    group,
                    roles,
                    samples,
                    reachable,
                    sent_at_ms: at,
                    ticket: None,
                };
                GossipMessage::Join(Signed::sign(&id, body).unwrap())
            }),
        (signer.clone(), any::<u64>(), label(), any::<u64>()).prop_map(|(id, j, reason, at)| {
            let body = Leave { job: job(j), member: id.member_id(), reason, sent_at_ms: at };
            GossipMessage::Leave(Signed::sign(&id, body).unwrap())
        }),
        (signer.clone(), any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
            |(id, j, round, sequence, at)| {
                let body = Heartbeat {
                    job: job(j),
                    member: id.member_id(),
                    round,
                    model: hash(j),
                    sequence,
                    sent_at_ms: at,
                };
                GossipMessage::Heartbeat(Signed::sign(&id, body).unwrap())
            }
        ),
        (signer.clone(), any::<u64>(), 1..u64::MAX, any::<u64>(), any::<u64>(), 0..5u8).prop_map(
            |(id, j, round, deadline, at, members)| {
                let body = RoundOpen {
                    job: job(j),
                    round,
                    base_model: hash(j ^ 1),
                    deadline_ms: deadline,
                    opened_at_ms: at,
                    members: (0..members).map(|m| MemberId([m; 32])).collect(),
                    trainers: Vec::new(),
                    kept: Vec::new(),
                };
                GossipMessage::RoundOpen(Signed::sign(&id, body).unwrap())
            }
        ),
        (
            signer.clone(),
            any::<u64>(),
            any::<u64>(),
            prop::collection::btree_map(any::<u8>(), prop::collection::vec(label(), 0..3), 0..6),
            prop::collection::btree_map(label(), any::<u8>(), 0..4)
        )
            .prop_map(|(id, j, round, roles, slots)| {
                let body = Assignment {
                    job: job(j),
                    round,
                    base_model: hash(j),
                    trainers: roles.keys().map(|m| identity(*m).member_id()).collect(),
                    roles: roles.into_iter().map(|(m, r)| (identity(m).member_id(), r)).collect(),
                    aggregators: slots
                        .into_iter()
                        .map(|(s, m)| (s, identity(m).member_id()))
                        .collect::<BTreeMap<_, _>>(),
                    deadline_ms: 9,
                    issued_at_ms: 7,
                    sent_at_ms: 8,
                };
                GossipMessage::Assignment(Signed::sign(&id, body).unwrap())
            }),
        (signer.clone(), any::<u64>(), any::<u64>(), metric(), metric(), any::<u64>()).prop_map(
            |(id, j, round, loss, accuracy, samples)| {
                let body = EvalReport {
                    job: job(j),
                    round,
                    model: hash(j),
                    member: id.member_id(),
                    metrics: EvalMetrics { loss, accuracy, samples },
                    sent_at_ms: 5,
                };
                GossipMessage::EvalReport(Signed::sign(&id, body).unwrap())
            }
        ),
        (
            signer.clone(),
            any::<u64>(),
            any::<u64>(),
            contributions(),
            metric(),
            metric(),
            any::<u64>()
        )
            .prop_map(|(id, j, round, contributions, loss, accuracy, samples)| {
                let body = AggregateReady {
                    job: job(j),
                    round,
                    base_model: hash(j),
                    model: hash(j + 1),
                    contributions,
                    feedback: Vec::new(),
                    metrics: EvalMetrics { loss, accuracy, samples },
                    members: vec![MemberId([j as u8; 32])],
                    vetted: Vec::new(),
                    sent_at_ms: 3,
                    optimizer_state: None,
                };
                GossipMessage::AggregateReady(Signed::sign(&id, body).unwrap())
            }),
        (signer.clone(), any::<u64>(), proptest::collection::vec(any::<u8>(), 1..64)).prop_map(
            |(id, j, model)| {
                let body = AggregateReady {
                    job: job(j),
                    round: 2,
                    base_model: hash(j),
                    model: ContentHash::of(&model),
                    contributions: Vec::new(),
                    feedback: Vec::new(),
                    metrics: EvalMetrics::default(),
                    members: vec![id.member_id()],
                    vetted: Vec::new(),
                    sent_at_ms: 4,
                    optimizer_state: None,
                };
                let result = Signed::sign(&id, body).unwrap();
                GossipMessage::ResultWithModel(Box::new(ResultWithModel { result, model }))
            }
        ),
        (signer, any::<u64>(), "[a-z ]{0,40}").prop_map(|(id, j, reason)| {
            let body = JobStop { job: job(j), reason, sent_at_ms: 11 };
            GossipMessage::Stop(Signed::sign(&id, body).unwrap())
        }),
    ]
}

/// Verifies whichever kind `message` is.
fn verify_any(message: GossipMessage) -> Result<(), VerifyError> {
    match message {
        GossipMessage::Announce(m) => m.verify_announcement().map(drop),
        GossipMessage::Join(m) => m.verify(allow_all).map(drop),
        GossipMessage::Leave(m) => m.verify(allow_all).map(drop),
        GossipMessage::Heartbeat(m) => m.verify(allow_all).map(drop),
        GossipMessage::RoundOpen(m) => m.verify(allow_all).map(drop),
        GossipMessage::Assignment(m) => m.verify(allow_all).map(drop),
        GossipMessage::AggregateReady(m) => m.verify(allow_all).map(drop),
        GossipMessage::EvalReport(m) => m.verify(allow_all).map(drop),
        GossipMessage::Stop(m) => m.verify(allow_all).map(drop),
        GossipMessage::FraudProof(m) => (*m).verify(allow_all)?.body().verify_result().map(drop),
        GossipMessage::ResultWithModel(m) => {
            tensor::CheckedBlob::check(&m.result.unverified_body().model, m.model)?;
            m.result.verify(allow_all).map(drop)
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn every_gossip_message_round_trips_and_verifies(message in gossip_message()) {
        let frame = codec::encode_gossip(&message).unwrap();
        let decoded = codec::decode_gossip(&frame).unwrap();
        prop_assert_eq!(&decoded, &message);
        prop_assert!(verify_any(decoded).is_ok());
    }

    #[test]
    fn flipping_any_byte_of_a_gossip_frame_makes_it_fail(
        message in gossip_message(),
        position in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let mut frame = codec::encode_gossip(&message).unwrap();
        let index = position.index(frame.len());
        frame[index] ^= flip;
        if let Ok(decoded) = codec::decode_gossip(&frame) {
            prop_assert!(verify_any(decoded).is_err(), "byte {} flipped by {:#x} still verifies", index, flip);
        }
    }

    #[test]
    fn bulk_messages_round_trip_with_their_payloads(
        values in prop::collection::vec(-1e3f32..1e3, 0..512),
        signer in any::<u8>(),
        round in 1..1000u64,
    ) {
        let id = identity(signer);
        let payload = tensor::encode_params(&values, TensorEncoding::F32Le, None).unwrap();
        let request = Request::Delta(Signed::sign(&id, delta(id.member_id(), round, &payload)).unwrap());
        let (decoded, received) = codec::decode_request(codec::encode_request(&request, &payload).unwrap()).unwrap();
        prop_assert_eq!(&decoded, &request);
        let Request::Delta(signed) = decoded else { unreachable!() };
        let verified = signed.verify_with_payload(&received, allow_all).unwrap();
        let back = tensor::decode_params(&received, verified.body().payload.encoding, values.len()).unwrap();
        prop_assert_eq!(back, values);

        let partial = PartialAggregate {
            job: job(1), round, base_model: hash(2), opened_at_ms: 7, group: "eu".into(),
            aggregator: id.member_id(),
            mean: PayloadRef::describe(&payload, TensorEncoding::F32Le, payload.len() / 4),
            total_weight: 12.5, contributions: vec![],
        };
        let request = Request::Partial(Signed::sign(&id, partial).unwrap());
        let (decoded, received) = codec::decode_request(codec::encode_request(&request, &payload).unwrap()).unwrap();
        prop_assert_eq!(&decoded, &request);
        prop_assert_eq!(&*received, &payload[..]);

        let contribution = Contribution { member: id.member_id(), delta: hash(3), samples: 5 };
        let chunk = RingChunk {
            job: job(1), round, base_model: hash(2), opened_at_ms: 7, member: id.member_id(),
            step: 1, chunk: 2, contributions: vec![contribution],
            values: PayloadRef::describe(&payload, TensorEncoding::F32Le, payload.len() / 4),
        };
        let request = Request::RingChunk(Signed::sign(&id, chunk).unwrap());
        let (decoded, received) = codec::decode_request(codec::encode_request(&request, &payload).unwrap()).unwrap();
        prop_assert_eq!(&decoded, &request);
        let Request::RingChunk(signed) = decoded else { unreachable!() };
        prop_assert!(signed.verify_with_payload(&received, allow_all).is_ok());

        for request in [Request::Blob { hash: hash(round) }, Request::Jobs, Request::Announcement { job: job(round) }] {
            let (decoded, received) = codec::decode_request(codec::encode_request(&request, &[]).unwrap()).unwrap();
            prop_assert_eq!(decoded, request);
            prop_assert!(received.is_empty());
        }

        let announcement = Signed::sign(&id, JobAnnouncement::new(&spec_for(id.member_id()), round).unwrap()).unwrap();
        for response in [Response::Accepted, Response::Refused { reason: format!("round {round} is closed") },
                         Response::NotFound { hash: hash(round) }, Response::Jobs { ids: vec![job(round); 3] },
                         Response::Announcement(announcement)] {
            let (decoded, _) = codec::decode_response(codec::encode_response(&response, &[]).unwrap()).unwrap();
            prop_assert_eq!(decoded, response);
        }
        let response = Response::Blob { hash: ContentHash::of(&payload) };
        let (decoded, blob) = codec::decode_response(codec::encode_response(&response, &payload).unwrap()).unwrap();
        prop_assert_eq!(&decoded, &response);
        prop_assert!(tensor::CheckedBlob::check(&ContentHash::of(&payload), blob.into_vec()).is_ok());
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoders(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let mut versioned = bytes.clone();
        versioned.insert(0, codec::WIRE_VERSION);
        let _ = codec::decode_gossip(&bytes);
        let _ = codec::decode_gossip(&versioned);
        let _ = codec::decode_request(versioned.clone());
        let _ = codec::decode_response(versioned);
    }
}

#[test]
fn a_message_for_one_job_round_or_model_fails_in_another() {
    let id = identity(1);
    let payload = vec![0u8; 16];
    let verified = Signed::sign(&id, delta(id.member_id(), 3, &payload)).unwrap();
    let here = Scope::job(job(1)).round(3).base_model(hash(100));
    assert!(verified.clone().verify(|_, body| here.admits(body)).is_ok());
    for elsewhere in [
        Scope::job(job(2)).round(3).base_model(hash(100)),
        Scope::job(job(1)).round(4).base_model(hash(100)),
        Scope::job(job(1)).round(3).base_model(hash(101)),
    ] {
        let error = verified.clone().verify(|_, body| elsewhere.admits(body)).unwrap_err();
        assert!(matches!(error, VerifyError::Denied { .. }), "{error}");
    }
    // A leave has no round: a scope that requires one refuses it.
    let leave = Leave { job: job(1), member: id.member_id(), reason: String::new(), sent_at_ms: 0 };
    let error = Signed::sign(&id, leave).unwrap().verify(|_, body| here.admits(body)).unwrap_err();
    assert!(error.to_string().contains("expected 3"), "{error}");
}

/// A body with exactly a `Leave`'s fields, claiming to be a join.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct LeaveShapedJoin {
    job: JobId,
    member: MemberId,
    reason: String,
    sent_at_ms: u64,
}

impl SignedBody for LeaveShapedJoin {
    const DOMAIN: Domain = Domain::Join;
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

#[test]
fn a_signature_for_one_kind_never_verifies_as_another() {
    let id = identity(2);
    let leave = Leave { job: job(1), member: id.member_id(), reason: "bye".into(), sent_at_ms: 5 };
    let signed = Signed::sign(&id, leave).unwrap();
    let bytes = bincode::serde::encode_to_vec(&signed, bincode::config::standard()).unwrap();

    // The same bytes read as another kind: refused for its domain.
    let (as_join, _): (Signed<LeaveShapedJoin>, usize) =
        bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).unwrap();
    let error = as_join.verify(allow_all).unwrap_err();
    assert!(matches!(
        error,
        VerifyError::WrongDomain { expected: Domain::Join, found: Domain::Leave }
    ));

    // The domain rewritten too: the signature covers the domain tag, so it fails.
    let mut rewritten = bytes.clone();
    assert_eq!(rewritten[32], 2, "Domain::Leave's index follows the signer key");
    rewritten[32] = 1;
    let (as_join, _): (Signed<LeaveShapedJoin>, usize) =
        bincode::serde::decode_from_slice(&rewritten, bincode::config::standard()).unwrap();
    let error = as_join.verify(allow_all).unwrap_err();
    assert!(matches!(error, VerifyError::Signature { .. }), "{error}");
}

#[test]
fn sender_rights_are_enforced() {
    let (alice, mallory) = (identity(1), identity(2));
    // Mallory cannot join in Alice's name.
    let join = Join {
        job: job(1),
        member: alice.member_id(),
        group: "eu".into(),
        roles: vec![],
        samples: 1,
        reachable: true,
        sent_at_ms: 0,
        ticket: None,
    };
    let error = Signed::sign(&mallory, join).unwrap().verify(allow_all).unwrap_err();
    assert!(matches!(error, VerifyError::SenderMismatch { .. }), "{error}");

    // Only the coordinator may assign.
    let assignment = Assignment {
        job: job(1),
        round: 1,
        base_model: hash(1),
        roles: BTreeMap::new(),
        trainers: vec![],
        aggregators: BTreeMap::new(),
        deadline_ms: 0,
        issued_at_ms: 0,
        sent_at_ms: 0,
    };
    let coordinator = alice.member_id();
    let only_coordinator = |signer: &MemberId, _: &Assignment| {
        Denied::unless_signer_is(signer, &coordinator, "the job's coordinator")
    };
    assert!(Signed::sign(&alice, assignment.clone()).unwrap().verify(only_coordinator).is_ok());
    let error = Signed::sign(&mallory, assignment).unwrap().verify(only_coordinator).unwrap_err();
    assert!(error.to_string().contains("only the job's coordinator"), "{error}");

    // Only the owner may announce a job.
    let body = JobAnnouncement::new(&spec_for(alice.member_id()), 1).unwrap();
    let error = Signed::sign(&mallory, body).unwrap().verify_announcement().unwrap_err();
    assert!(error.to_string().contains("only the job's owner"), "{error}");
}

#[test]
fn a_job_id_is_the_hash_of_the_signed_announcement() {
    let owner = identity(3);
    let body = JobAnnouncement::new(&spec_for(owner.member_id()), 42).unwrap();
    let signed = Signed::sign(&owner, body).unwrap();
    let frame = codec::encode_gossip(&GossipMessage::Announce(signed.clone())).unwrap();
    let GossipMessage::Announce(received) = codec::decode_gossip(&frame).unwrap() else {
        unreachable!()
    };
    let job = received.verify_announcement().unwrap();
    assert_eq!(job.id, JobId(signed.content_hash().unwrap()));
    assert_eq!(job.spec, spec_for(owner.member_id()));
    assert_eq!(job.announcement.signer(), owner.member_id());
    // Announcing the same spec again later is another job.
    let again =
        Signed::sign(&owner, JobAnnouncement::new(&spec_for(owner.member_id()), 43).unwrap())
            .unwrap();
    assert_ne!(again.verify_announcement().unwrap().id, job.id);
}

#[test]
fn an_announcement_must_carry_canonical_valid_json() {
    let owner = identity(4);
    let pretty = serde_json::to_vec_pretty(&spec_for(owner.member_id())).unwrap();
    let body = JobAnnouncement { spec_json: pretty, announced_at_ms: 0 };
    let error = Signed::sign(&owner, body).unwrap().verify_announcement().unwrap_err();
    assert!(matches!(error, VerifyError::Spec(_)), "{error}");
    let body = JobAnnouncement { spec_json: vec![b' '; 60_000], announced_at_ms: 0 };
    let error = Signed::sign(&owner, body).unwrap().verify_announcement().unwrap_err();
    assert!(matches!(error, VerifyError::Invalid { .. }), "{error}");
}

#[test]
fn a_payload_must_be_the_one_signed_for() {
    let id = identity(5);
    let payload = tensor::encode_params(&[1.0, 2.0, 3.0], TensorEncoding::F32Le, None).unwrap();
    let signed = Signed::sign(&id, delta(id.member_id(), 1, &payload)).unwrap();
    let mut tampered = payload.clone();
    tampered[0] ^= 1;
    let error = signed.clone().verify_with_payload(&tampered, allow_all).unwrap_err();
    assert!(matches!(error, VerifyError::Payload(_)), "{error}");
    assert!(signed.verify_with_payload(&payload, allow_all).is_ok());
}

#[test]
fn nonsense_bodies_are_refused_even_when_signed() {
    let id = identity(6);
    let payload = vec![0u8; 8];
    let mut body = delta(id.member_id(), 1, &payload);
    body.payload.params = 3;
    let error = Signed::sign(&id, body).unwrap().verify(allow_all).unwrap_err();
    assert!(error.to_string().contains("cannot be 8 bytes"), "{error}");
    let mut body = delta(id.member_id(), 1, &payload);
    body.metrics.loss = f32::NAN;
    assert!(Signed::sign(&id, body).unwrap().verify(allow_all).is_err());
    let join = Join {
        job: job(1),
        member: id.member_id(),
        group: "x".repeat(300),
        roles: vec![],
        samples: 1,
        reachable: true,
        sent_at_ms: 0,
        ticket: None,
    };
    assert!(Signed::sign(&id, join).unwrap().verify(allow_all).is_err());
}

#[test]
fn identical_heartbeats_differ_by_sequence() {
    let id = identity(7);
    let beat = |sequence| {
        let body = Heartbeat {
            job: job(1),
            member: id.member_id(),
            round: 2,
            model: hash(2),
            sequence,
            sent_at_ms: 9,
        };
        codec::encode_gossip(&GossipMessage::Heartbeat(Signed::sign(&id, body).unwrap())).unwrap()
    };
    assert_ne!(beat(1), beat(2));
}

#[test]
fn gossip_size_limits_hold_both_ways() {
    let id = identity(8);
    let body = AggregateReady {
        job: job(1),
        round: 1,
        base_model: hash(1),
        model: hash(2),
        contributions: (0..1000)
            .map(|i| Contribution { member: MemberId([i as u8; 32]), delta: hash(i), samples: i })
            .collect(),
        metrics: EvalMetrics::default(),
        members: Vec::new(),
        feedback: Vec::new(),
        vetted: Vec::new(),
        sent_at_ms: 0,
        optimizer_state: None,
    };
    let message = GossipMessage::AggregateReady(Signed::sign(&id, body).unwrap());
    let error = codec::encode_gossip(&message).unwrap_err();
    assert!(matches!(error, EncodeError::TooLarge { max: MAX_GOSSIP_BYTES, .. }), "{error}");

    let beat = Heartbeat {
        job: job(1),
        member: id.member_id(),
        round: 1,
        model: hash(1),
        sequence: 1,
        sent_at_ms: 0,
    };
    let mut frame =
        codec::encode_gossip(&GossipMessage::Heartbeat(Signed::sign(&id, beat).unwrap())).unwrap();
    frame.push(0);
    assert_eq!(
        codec::decode_gossip(&frame).unwrap_err(),
        DecodeError::TrailingBytes { kind: codec::FrameKind::Gossip, count: 1 }
    );
}

#[test]
fn a_ticket_travels_as_text_and_admits_only_its_key_to_its_job_from_its_owner() {
    let (owner, member, stranger) = (identity(1), identity(2), identity(3));
    let body = Ticket { job: job(1), member: member.member_id(), issued_at_ms: 5 };
    let ticket = Signed::sign(&owner, body.clone()).unwrap();
    let text = codec::encode_ticket(&ticket).unwrap();
    let read = codec::decode_ticket(&format!("  {text}\n")).expect("the text reads back");
    assert_eq!(read, ticket);
    let admits = |ticket: Option<&Signed<Ticket>>, job_seed, key: &Identity| {
        Ticket::admits(ticket, &owner.member_id(), &job(job_seed), &key.member_id())
    };
    assert_eq!(admits(Some(&read), 1, &member), Ok(()));
    assert_eq!(admits(None, 1, &member), Err(TicketError::Missing));
    assert_eq!(admits(Some(&read), 2, &member), Err(TicketError::OtherJob));
    let other = Err(TicketError::OtherMember(member.member_id()));
    assert_eq!(admits(Some(&read), 1, &stranger), other, "a ticket is not transferable");
    let self_signed = Signed::sign(&stranger, body).unwrap();
    let not_owner = Err(TicketError::NotTheOwner(stranger.member_id()));
    assert_eq!(admits(Some(&self_signed), 1, &member), not_owner);
    // The owner's signature over another body does not carry over.
    let mut bytes = hex::decode(&text).unwrap();
    let last = bytes.len() - 70; // inside the body, before the signature
    bytes[last] ^= 1;
    if let Ok(tampered) = codec::decode_ticket(&hex::encode(bytes)) {
        assert!(admits(Some(&tampered), 1, &member).is_err(), "a tampered ticket");
    }
    for bad in ["", "zz", &"ab".repeat(5_000), &format!("{text}00")] {
        assert!(codec::decode_ticket(bad).is_err(), "{bad:.20} is no ticket");
    }
}

fn accused_result(round: u64) -> AggregateReady {
    AggregateReady {
        job: job(1),
        round,
        base_model: hash(100),
        model: hash(7),
        contributions: Vec::new(),
        feedback: Vec::new(),
        metrics: EvalMetrics::default(),
        members: Vec::new(),
        vetted: Vec::new(),
        sent_at_ms: 5,
        optimizer_state: None,
    }
}

#[test]
fn a_fraud_proof_carries_the_liars_own_signature() {
    let (liar, accuser) = (identity(3), identity(4));
    let result = Signed::sign(&liar, accused_result(2)).unwrap();
    let proof = FraudProof {
        job: job(1),
        round: 2,
        accuser: accuser.member_id(),
        result,
        recomputed: hash(8),
        sent_at_ms: 9,
    };
    let signed = Signed::sign(&accuser, proof.clone()).unwrap();
    let frame = codec::encode_gossip(&GossipMessage::FraudProof(Box::new(signed))).unwrap();
    let GossipMessage::FraudProof(decoded) = codec::decode_gossip(&frame).unwrap() else {
        panic!("not a fraud proof");
    };
    let verified = (*decoded).verify(allow_all).unwrap();
    assert_eq!(verified.body().verify_result().unwrap().signer(), liar.member_id());

    // The accused result must be the liar's own signature, of the proof's job and round, and
    // must announce another model than the recomputed one.
    let forged = Signed::sign(&accuser, accused_result(2)).unwrap();
    let framed = FraudProof { result: forged, ..proof.clone() };
    assert_eq!(framed.verify_result().unwrap().signer(), accuser.member_id());
    let other_round = FraudProof { round: 3, ..proof.clone() };
    assert!(Signed::sign(&accuser, other_round).unwrap().verify(allow_all).is_err());
    let no_fraud = FraudProof { recomputed: hash(7), ..proof.clone() };
    assert!(Signed::sign(&accuser, no_fraud).unwrap().verify(allow_all).is_err());
    let other_model = AggregateReady { model: hash(6), ..proof.result.unverified_body().clone() };
    let tampered: Signed<AggregateReady> = serde_json::from_value({
        let mut value = serde_json::to_value(&proof.result).unwrap();
        value["body"] = serde_json::to_value(other_model).unwrap();
        value
    })
    .unwrap();
    let tampered = FraudProof { result: tampered, ..proof };
    assert!(tampered.verify_result().is_err(), "a result changed after signing");
}
