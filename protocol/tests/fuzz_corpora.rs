//! The fuzz targets on stable Rust: every file of `fuzz/corpus/<target>` and a few thousand inputs
//! generated from them (truncations, bit flips, insertions, deletions, splices, random bytes) go
//! through the target's checks in `fedmesh_protocol::fuzzing`; none may panic or break a property.
//!
//! Corpus files with descriptive names are seeds, written by `write_seed_corpora` (run it with
//! `cargo test -p fedmesh-protocol --test fuzz_corpora -- --ignored` after a wire format change):
//! each must still be accepted. `regression-*` files (inputs that once failed a check) and files
//! without an extension (what `cargo fuzz` adds, named by their hash; `.gitignore`d) only must not
//! panic or break a property.

use fedmesh_protocol::codec;
use fedmesh_protocol::envelope::Signed;
use fedmesh_protocol::fuzzing::{Check, Outcome, TARGETS, Violation};
use fedmesh_protocol::identity::Identity;
use fedmesh_protocol::ids::{ContentHash, JobId, MemberId};
use fedmesh_protocol::message::*;
use fedmesh_protocol::spec::JobSpec;
use fedmesh_protocol::tensor::{self, PayloadRef, TensorEncoding};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::collections::BTreeMap;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Inputs generated per target (`FEDMESH_FUZZ_INPUTS` sets another count, for a longer run).
fn generated() -> u64 {
    std::env::var("FEDMESH_FUZZ_INPUTS").ok().and_then(|n| n.parse().ok()).unwrap_or(10_000)
}

/// A corpus: its files' names and bytes.
type Corpus = Vec<(String, Vec<u8>)>;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target)
}

/// Every corpus file of `target`, sorted by name.
fn read_corpus(target: &str) -> Corpus {
    let dir = corpus_dir(target);
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut files: Corpus = entries
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    files.sort();
    files
}

/// A seed (must be accepted), not a fuzzer's find or a regression input (must not panic).
fn is_seed(name: &str) -> bool {
    name.contains('.') && !name.starts_with("regression-")
}

/// Runs a check, turning a panic into an error naming it.
fn run(check: Check, input: &[u8]) -> Result<Outcome, String> {
    match panic::catch_unwind(AssertUnwindSafe(|| check(input))) {
        Ok(result) => result.map_err(|violation| format!("property violated: {violation}")),
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "(no message)".into());
            Err(format!("panicked: {message}"))
        }
    }
}

/// Bytes that often matter: bincode varint markers, enum tags, JSON syntax, key file words.
const TOKENS: &[&[u8]] = &[
    &[0x00],
    &[0x01],
    &[0x7f],
    &[0x80],
    &[0xfb],
    &[0xfc],
    &[0xfd],
    &[0xfe],
    &[0xff],
    &[0xfb, 0xff, 0xff],
    &[0xfc, 0xff, 0xff, 0xff, 0xff],
    &[0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
    &[0x00, 0x00, 0xc0, 0x7f],
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b",",
    b":",
    b"null",
    b"true",
    b"-1",
    b"0",
    b"1e309",
    b"18446744073709551616",
    b"0.5",
    b"\"\"",
    b"{}",
    b"[]",
    b"\\u0000",
    b"\n",
    b"\r\n",
    b" ",
    b"seed ",
    b"member ",
];

/// The `index`th generated input of target number `target` (deterministic: the same index always
/// gives the same input).
fn generate(target: usize, index: u64, corpus: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(((target as u64) << 32) | index);
    if corpus.is_empty() || rng.random_ratio(1, 20) {
        let len = rng.random_range(0..512);
        return (0..len).map(|_| rng.random()).collect();
    }
    let mut input = corpus[rng.random_range(0..corpus.len())].1.clone();
    for _ in 0..rng.random_range(1..=4) {
        mutate(&mut input, corpus, &mut rng);
    }
    input
}

fn mutate(input: &mut Vec<u8>, corpus: &[(String, Vec<u8>)], rng: &mut StdRng) {
    let at = |rng: &mut StdRng, len: usize| rng.random_range(0..=len);
    match rng.random_range(0..8) {
        0 => {
            let len = at(rng, input.len());
            input.truncate(len);
        }
        1 if !input.is_empty() => {
            for _ in 0..rng.random_range(1..=8) {
                let bit = rng.random_range(0..input.len() * 8);
                input[bit / 8] ^= 1 << (bit % 8);
            }
        }
        2 => {
            let position = at(rng, input.len());
            let count = rng.random_range(1..=16);
            let bytes: Vec<u8> = (0..count).map(|_| rng.random()).collect();
            input.splice(position..position, bytes);
        }
        3 => {
            let start = at(rng, input.len());
            let end = (start + rng.random_range(1..=32)).min(input.len());
            input.drain(start..end);
        }
        4 => {
            let other = &corpus[rng.random_range(0..corpus.len())].1;
            let cut = at(rng, input.len());
            let from = at(rng, other.len());
            input.truncate(cut);
            input.extend_from_slice(&other[from..]);
        }
        5 => {
            let token = TOKENS[rng.random_range(0..TOKENS.len())];
            let position = at(rng, input.len());
            if rng.random() {
                input.splice(position..position, token.iter().copied());
            } else {
                let end = (position + token.len()).min(input.len());
                input.splice(position..end, token.iter().copied());
            }
        }
        6 if !input.is_empty() => {
            let start = rng.random_range(0..input.len());
            let end = (start + rng.random_range(1..=64)).min(input.len());
            let copy = input[start..end].to_vec();
            let position = at(rng, input.len());
            input.splice(position..position, copy);
        }
        _ => {
            if let Some(byte) = input.last_mut() {
                *byte = rng.random();
            }
        }
    }
}

/// Saves an input that failed where it can be added to the corpus, and says where.
fn save_failure(target: &str, what: &str, input: &[u8]) -> String {
    let path = std::env::temp_dir().join(format!("fedmesh-fuzz-{target}-{what}"));
    match std::fs::write(&path, input) {
        Ok(()) => format!("saved to {}", path.display()),
        Err(e) => format!("not saved: {e}"),
    }
}

#[test]
fn corpora_and_generated_inputs_break_no_check() {
    let mut failures = Vec::new();
    let generated = generated();
    for (number, (target, check)) in TARGETS.iter().enumerate() {
        let started = Instant::now();
        let corpus = read_corpus(target);
        let seeds = corpus.iter().filter(|(name, _)| is_seed(name)).count();
        assert!(seeds > 0, "no seed corpus for {target}: run write_seed_corpora");
        for (name, input) in &corpus {
            match run(*check, input) {
                Ok(Outcome::Rejected) if is_seed(name) => failures.push(format!(
                    "{target}: corpus file {name} is a seed but is rejected (out of date? run \
                     write_seed_corpora)"
                )),
                Ok(_) => {}
                Err(error) => failures.push(format!("{target}: corpus file {name}: {error}")),
            }
        }
        let mut accepted = 0;
        for index in 0..generated {
            let input = generate(number, index, &corpus);
            match run(*check, &input) {
                Ok(Outcome::Accepted) => accepted += 1,
                Ok(Outcome::Rejected) => {}
                Err(error) => {
                    let saved = save_failure(target, &format!("generated-{index}"), &input);
                    failures.push(format!("{target}: generated input {index}: {error} ({saved})"));
                }
            }
        }
        println!(
            "{target}: {} corpus files ({seeds} seeds), {generated} generated inputs \
             ({accepted} accepted) in {:.2?}",
            corpus.len(),
            started.elapsed()
        );
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn a_panicking_check_is_caught_and_named() {
    let error = run(|_| panic!("boom"), b"").unwrap_err();
    assert_eq!(error, "panicked: boom");
    let error = run(|_| Err(Violation("not stable".into())), b"").unwrap_err();
    assert_eq!(error, "property violated: not stable");
}

/// Writes the seed corpora (deterministic: the same files every run).
#[test]
#[ignore = "writes protocol/fuzz/corpus; run after a wire format change"]
fn write_seed_corpora() {
    for (target, files) in seed_corpora() {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in files {
            assert!(is_seed(&name), "{name} would not count as a seed");
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
}

#[test]
fn the_seed_generator_covers_every_target() {
    let corpora = seed_corpora();
    let names: Vec<&str> = corpora.iter().map(|(target, _)| *target).collect();
    let targets: Vec<&str> = TARGETS.iter().map(|(target, _)| *target).collect();
    assert_eq!(names, targets);
    for (target, files) in corpora {
        let check = TARGETS.iter().find(|(name, _)| *name == target).unwrap().1;
        for (name, bytes) in files {
            assert_eq!(check(&bytes), Ok(Outcome::Accepted), "{target}/{name}");
        }
    }
}

// The seeds.

fn owner() -> Identity {
    Identity::from_seed([0x0f; 32])
}

fn member() -> Identity {
    Identity::from_seed([0x5e; 32])
}

fn hash(seed: u64) -> ContentHash {
    ContentHash::of(&seed.to_le_bytes())
}

fn job() -> JobId {
    JobId(hash(1))
}

fn sign<T: fedmesh_protocol::envelope::SignedBody>(identity: &Identity, body: T) -> Signed<T> {
    Signed::sign(identity, body).unwrap()
}

fn contributions() -> Vec<Contribution> {
    (1..=3u8)
        .map(|m| Contribution {
            member: Identity::from_seed([m; 32]).member_id(),
            delta: hash(u64::from(m) + 10),
            samples: 100 * u64::from(m),
        })
        .collect()
}

fn members() -> Vec<MemberId> {
    (1..=4u8).map(|m| Identity::from_seed([m; 32]).member_id()).collect()
}

/// Job spec JSON seeds: the README's example (with a real owner), the examples' external model,
/// and specs using every section.
fn job_specs() -> Corpus {
    let owner = owner().member_id().to_string();
    let readme = format!(
        r#"{{
  "name": "mnist-mlp",
  "owner": "{owner}",
  "tag": "central",
  "model": {{"mlp": [200, 200]}},
  "dataset": "mnist",
  "hyperparameters": {{"rounds": 20, "local_epochs": 1, "batch_size": 32, "lr": 0.05}},
  "strategy": {{"rule": "fedavg"}},
  "participation": {{"min_participants": 3, "fraction": 1.0}},
  "quorum": {{"fraction": 0.8}},
  "round_deadline_secs": 120
}}
"#
    );
    let module_doc = format!(
        r#"{{
  "name": "mnist-mlp",
  "owner": "{owner}",
  "tag": "central",
  "model": {{"mlp": [200]}},
  "dataset": "mnist",
  "hyperparameters": {{"rounds": 20, "lr": 0.05}},
  "strategy": {{"rule": "trimmed_mean", "beta": 0.1}},
  "participation": {{"min_participants": 3, "fraction": 0.5}},
  "quorum": {{"fraction": 0.8}},
  "round_deadline_secs": 120
}}
"#
    );
    let external = format!(
        r#"{{"name": "numpy-mlp", "owner": "{owner}", "dataset": "mnist5k",
"model": {{"external": {{"tensors": [
  {{"name": "fc1.weight", "shape": [200, 784]}}, {{"name": "fc1.bias", "shape": [200]}},
  {{"name": "fc2.weight", "shape": [200, 200]}}, {{"name": "fc2.bias", "shape": [200]}},
  {{"name": "fc3.weight", "shape": [10, 200]}}, {{"name": "fc3.bias", "shape": [10]}}
], "init": {{"seed": 1}}}}}}}}
"#
    );
    let coordinator = member().member_id().to_string();
    let full = json!({
        "name": "coordinated", "owner": owner, "dataset": "breast-cancer",
        "tag": "hierarchical", "model": {"mlp": [16]},
        "hyperparameters": {"rounds": 50, "local_epochs": 3, "batch_size": 8, "lr": 0.05,
                            "momentum": 0.5, "weight_decay": 1e-3, "fedprox_mu": 0.1},
        "strategy": {"rule": "krum", "f": 2, "clip_norm": 2.0,
                     "noise_multiplier": 0.2, "server": {"optimizer": "fedyogi", "eta": 0.01}},
        "participation": {"min_participants": 8, "max_participants": 12, "fraction": 0.75},
        "quorum": {"count": 8}, "round_deadline_secs": 90, "coordinator": coordinator,
        "coordinator_fallback_secs": 30,
        "seed": 42
    });
    let schema = json!({
        "name": "two-level", "owner": owner, "model": "softmax", "dataset": "iris",
        "tag": {"name": "two-level", "roles": [
            {"name": "trainer", "isDataConsumer": true, "groupAssociation": [{"param": "eu"}]},
            {"name": "aggregator", "groupAssociation": [{"param": "eu", "global": "default"}]}],
            "channels": [{"name": "param", "pair": ["trainer", "aggregator"],
                          "groupBy": {"type": "tag", "value": ["eu"]},
                          "funcTags": {"trainer": ["fetch", "upload"],
                                       "aggregator": ["distribute", "aggregate"]}}]},
        "strategy": {"rule": "fedavg", "server": {"optimizer": "fedavgm"}, "clip_norm": 1.5,
                     "noise_multiplier": 0.1},
        "classes": ["setosa", "versicolor", "virginica"]
    });
    let ring = json!({
        "name": "ring", "owner": owner, "model": {"bench": {"params": 1000}}, "dataset": "bench",
        "tag": "ring", "delta_encoding": {"top_k": 0.1},
        "participation": {"admission": "owner", "allow": [coordinator]}
    });
    let hybrid = json!({
        "name": "hybrid", "owner": owner, "model": "softmax", "dataset": "mnist",
        "tag": "hybrid", "strategy": {"rule": "median"}, "delta_encoding": "int8", "classes": 10,
        "participation": {"allow": [coordinator], "max_samples": 500}
    });
    let minimal = json!({"name": "mnist", "owner": owner, "model": "softmax", "dataset": "mnist"});
    let canonical = JobSpec::from_json(&serde_json::to_vec(&full).unwrap())
        .unwrap()
        .to_canonical_json()
        .unwrap();
    let pretty = |value: &serde_json::Value| serde_json::to_vec_pretty(value).unwrap();
    vec![
        ("readme-example.json".into(), readme.into_bytes()),
        ("spec-module-doc-example.json".into(), module_doc.into_bytes()),
        ("numpy-trainer-external-model.json".into(), external.into_bytes()),
        ("minimal.json".into(), serde_json::to_vec(&minimal).unwrap()),
        ("full-hierarchical-krum-fedyogi.json".into(), pretty(&full)),
        ("full-canonical.json".into(), canonical),
        ("tag-schema-classes-dp.json".into(), pretty(&schema)),
        ("ring-top-k-owner-admission.json".into(), pretty(&ring)),
        ("hybrid-median-int8-allow-list.json".into(), pretty(&hybrid)),
    ]
}

fn gossip_messages() -> Vec<(String, GossipMessage)> {
    let (owner, member) = (owner(), member());
    let me = member.member_id();
    let spec_json = job_specs().swap_remove(0).1;
    let spec = JobSpec::from_json(&spec_json).unwrap();
    let announcement = JobAnnouncement::new(&spec, 1_700_000_000_000).unwrap();
    let join = |ticket| Join {
        job: job(),
        member: me,
        group: "eu".into(),
        roles: vec!["trainer".into(), "aggregator".into()],
        samples: 600,
        reachable: true,
        sent_at_ms: 1_700_000_000_100,
        ticket,
    };
    let ticket = Ticket { job: job(), member: me, issued_at_ms: 1_700_000_000_050 };
    let ticket = Some(Box::new(sign(&owner, ticket)));
    let metrics = EvalMetrics { loss: Some(0.31), accuracy: Some(0.91), samples: 1000 };
    let mut roles = BTreeMap::new();
    roles.insert(me, vec!["trainer".to_string()]);
    roles.insert(owner.member_id(), vec!["aggregator".to_string()]);
    let mut aggregators = BTreeMap::new();
    aggregators.insert("top".to_string(), owner.member_id());
    aggregators.insert("aggregator/eu".to_string(), me);
    vec![
        ("announce".into(), GossipMessage::Announce(sign(&owner, announcement))),
        ("join".into(), GossipMessage::Join(sign(&member, join(None)))),
        ("join-with-ticket".into(), GossipMessage::Join(sign(&member, join(ticket)))),
        (
            "leave".into(),
            GossipMessage::Leave(sign(
                &member,
                Leave { job: job(), member: me, reason: "shutting down".into(), sent_at_ms: 5 },
            )),
        ),
        ("heartbeat".into(), GossipMessage::Heartbeat(sign(&member, heartbeat()))),
        (
            "round-open".into(),
            GossipMessage::RoundOpen(sign(
                &owner,
                RoundOpen {
                    job: job(),
                    round: 4,
                    base_model: hash(3),
                    deadline_ms: 1_700_000_120_000,
                    opened_at_ms: 1_700_000_000_000,
                    members: members(),
                    trainers: Vec::new(),
                    kept: Vec::new(),
                },
            )),
        ),
        (
            "assignment".into(),
            GossipMessage::Assignment(sign(
                &owner,
                Assignment {
                    job: job(),
                    round: 4,
                    base_model: hash(3),
                    roles,
                    trainers: vec![me],
                    aggregators,
                    deadline_ms: 1_700_000_120_000,
                    issued_at_ms: 1_700_000_000_000,
                    sent_at_ms: 1_700_000_000_010,
                },
            )),
        ),
        ("aggregate-ready".into(), GossipMessage::AggregateReady(sign(&owner, aggregate_ready()))),
        ("result-with-model".into(), {
            let model: Vec<u8> = (0..24u8).collect();
            let ready = AggregateReady { model: ContentHash::of(&model), ..aggregate_ready() };
            GossipMessage::ResultWithModel(Box::new(ResultWithModel {
                result: sign(&owner, ready),
                model,
            }))
        }),
        (
            "eval-report".into(),
            GossipMessage::EvalReport(sign(
                &member,
                EvalReport {
                    job: job(),
                    round: 4,
                    model: hash(4),
                    member: me,
                    metrics,
                    sent_at_ms: 9,
                },
            )),
        ),
        (
            "stop".into(),
            GossipMessage::Stop(sign(
                &owner,
                JobStop { job: job(), reason: "target accuracy reached".into(), sent_at_ms: 10 },
            )),
        ),
    ]
}

/// The test member's heartbeat in round 3.
fn heartbeat() -> Heartbeat {
    Heartbeat {
        job: job(),
        member: member().member_id(),
        round: 3,
        model: hash(3),
        sequence: 17,
        sent_at_ms: 6,
    }
}

fn aggregate_ready() -> AggregateReady {
    AggregateReady {
        job: job(),
        round: 4,
        base_model: hash(3),
        model: hash(4),
        contributions: contributions(),
        metrics: EvalMetrics { loss: Some(0.4), accuracy: None, samples: 0 },
        members: members(),
        feedback: Vec::new(),
        vetted: Vec::new(),
        sent_at_ms: 8,
        optimizer_state: Some(ContentHash::of(b"optimizer state")),
    }
}

/// Payloads in each encoding, with their references.
fn payload(encoding: TensorEncoding) -> (Vec<u8>, PayloadRef) {
    let values: Vec<f32> = (0..24).map(|i| (i as f32 - 12.0) / 8.0).collect();
    let bytes = match encoding {
        TensorEncoding::Sparse => tensor::encode_top_k(&values, 5),
        _ => tensor::encode_params(&values, encoding, None),
    };
    let bytes = bytes.unwrap();
    let reference = PayloadRef::describe(&bytes, encoding, values.len());
    (bytes, reference)
}

fn requests() -> Vec<(String, Request, Vec<u8>)> {
    let (owner, member) = (owner(), member());
    let me = member.member_id();
    let delta = |encoding| {
        let (bytes, payload) = payload(encoding);
        let body = ModelDelta {
            job: job(),
            round: 4,
            base_model: hash(3),
            member: me,
            samples: 600,
            metrics: TrainMetrics { loss: 0.5, accuracy: Some(0.8) },
            payload,
        };
        (Request::Delta(sign(&member, body)), bytes)
    };
    let (mean_bytes, mean) = payload(TensorEncoding::F16Le);
    let partial = PartialAggregate {
        job: job(),
        round: 4,
        base_model: hash(3),
        opened_at_ms: 1_700_000_000_000,
        group: "eu".into(),
        aggregator: me,
        mean,
        total_weight: 600.0,
        contributions: contributions(),
    };
    let (values_bytes, values) = payload(TensorEncoding::Int8);
    let chunk = RingChunk {
        job: job(),
        round: 4,
        base_model: hash(3),
        opened_at_ms: 1_700_000_000_000,
        member: me,
        step: 2,
        chunk: 1,
        contributions: contributions(),
        values,
    };
    let join = Join {
        job: job(),
        member: me,
        group: String::new(),
        roles: vec![],
        samples: 50,
        reachable: true,
        sent_at_ms: 1,
        ticket: Some(Box::new(sign(&owner, Ticket { job: job(), member: me, issued_at_ms: 0 }))),
    };
    let mut list = Vec::new();
    for (name, encoding) in [
        ("delta-f32", TensorEncoding::F32Le),
        ("delta-f16", TensorEncoding::F16Le),
        ("delta-int8", TensorEncoding::Int8),
        ("delta-sparse", TensorEncoding::Sparse),
    ] {
        let (request, bytes) = delta(encoding);
        list.push((name.to_string(), request, bytes));
    }
    list.extend([
        ("partial-f16".into(), Request::Partial(sign(&member, partial)), mean_bytes),
        ("ring-chunk-int8".into(), Request::RingChunk(sign(&member, chunk)), values_bytes),
        ("blob".into(), Request::Blob { hash: hash(4) }, vec![]),
        ("jobs".into(), Request::Jobs, vec![]),
        ("announcement".into(), Request::Announcement { job: job() }, vec![]),
        ("round-result".into(), Request::RoundResult { job: job(), round: 4 }, vec![]),
        (
            "join-asks".into(),
            Request::Join { join: sign(&member, join.clone()), asks: true, heartbeat: None },
            vec![],
        ),
        (
            "join-answer-with-heartbeat".into(),
            Request::Join {
                join: sign(&member, join),
                asks: false,
                heartbeat: Some(sign(&member, heartbeat())),
            },
            vec![],
        ),
        ("members".into(), Request::Members { job: job(), digest: vec![0, 7, u64::MAX] }, vec![]),
        ("member-list".into(), Request::MemberList { job: job(), members: members() }, vec![]),
    ]);
    list
}

fn responses() -> Vec<(String, Response, Vec<u8>)> {
    let owner = owner();
    let GossipMessage::Announce(announcement) = gossip_messages().swap_remove(0).1 else {
        unreachable!("the first gossip seed is the announcement")
    };
    let (blob, _) = payload(TensorEncoding::F32Le);
    vec![
        ("accepted".into(), Response::Accepted, vec![]),
        ("refused".into(), Response::Refused { reason: "round 3 is closed".into() }, vec![]),
        ("blob-f32".into(), Response::Blob { hash: ContentHash::of(&blob) }, blob),
        ("not-found".into(), Response::NotFound { hash: hash(9) }, vec![]),
        ("jobs".into(), Response::Jobs { ids: vec![job(), JobId(hash(2))] }, vec![]),
        ("announcement".into(), Response::Announcement(announcement), vec![]),
        ("busy".into(), Response::Busy { hash: hash(4) }, vec![]),
        (
            "round-result".into(),
            Response::RoundResult(Box::new(sign(&owner, aggregate_ready()))),
            vec![],
        ),
    ]
}

/// Every target's seed files.
fn seed_corpora() -> Vec<(&'static str, Corpus)> {
    let gossip = gossip_messages()
        .into_iter()
        .map(|(name, message)| (format!("{name}.bin"), codec::encode_gossip(&message).unwrap()))
        .collect();
    let requests = requests()
        .into_iter()
        .map(|(name, request, payload)| {
            (format!("{name}.bin"), codec::encode_request(&request, &payload).unwrap())
        })
        .collect();
    let responses = responses()
        .into_iter()
        .map(|(name, response, payload)| {
            (format!("{name}.bin"), codec::encode_response(&response, &payload).unwrap())
        })
        .collect();
    let key = member().to_key_file();
    let spaced = format!("  {}", key.replace('\n', "\r\n\r\n  ").replace("seed ", "seed   "));
    let keys = vec![
        ("key-file.txt".into(), key.into_bytes()),
        ("key-file-crlf-blank-lines-spaces.txt".into(), spaced.into_bytes()),
        ("key-file-libp2p-test-vector.txt".into(), libp2p_vector_key_file()),
    ];
    vec![
        ("gossip_decode", gossip),
        ("request_decode", requests),
        ("response_decode", responses),
        ("job_spec_json", job_specs()),
        ("key_file", keys),
    ]
}

/// The key of libp2p's ed25519 test vector (see `identity.rs`).
fn libp2p_vector_key_file() -> Vec<u8> {
    let seed =
        ContentHash::from_hex("7e0830617c4a7de83925dfb2694556b12936c477a0e1feb2e148ec9da60fee7d")
            .unwrap();
    Identity::from_seed(seed.0).to_key_file().into_bytes()
}
