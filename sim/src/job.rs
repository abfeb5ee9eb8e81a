//! The simulated job: its spec (built from the config), its id, and each member's identity,
//! group label and setup.

use crate::config::Config;
use crate::network::Index;
use fedmesh_federation::member::Setup;
use fedmesh_protocol::identity::Identity;
use fedmesh_protocol::ids::{ContentHash, JobId, MemberId};
use fedmesh_protocol::spec::{
    Hyperparameters, JobSpec, Participation, Privacy, Quorum, Verification,
};
use fedmesh_protocol::tag::TagSpec;
use fedmesh_topologies::Tag;
use std::sync::Arc;

/// How long members keep a verifiable job's contributions for auditors.
const AUDIT_WINDOW_SECS: u64 = 600;

/// Why the job cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("the simulated job spec is invalid: {0}")]
    Spec(#[from] fedmesh_protocol::spec::SpecErrors),
    #[error("the topology is invalid: {0}")]
    Tag(#[from] fedmesh_topologies::TagErrors),
}

/// Member `index`'s signing key in a run of `seed` (secure rounds sign their keys and masked
/// updates with it; the driver, not the machine, checks the envelopes' signatures).
pub fn identity(seed: u64, index: Index) -> Identity {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"fedmesh-sim member");
    hasher.update(&seed.to_le_bytes());
    hasher.update(&(index as u64).to_le_bytes());
    Identity::from_seed(*hasher.finalize().as_bytes())
}

/// Member `index`'s key in a run of `seed`.
pub fn member_id(seed: u64, index: Index) -> MemberId {
    identity(seed, index).member_id()
}

/// Member `index`'s secret its DP noise is drawn from, in a run of `seed` (a node draws its own
/// from the operating system; a run draws it from its seed, to replay bit for bit).
fn noise_key(seed: u64, index: Index) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"fedmesh-sim noise");
    hasher.update(&seed.to_le_bytes());
    hasher.update(&(index as u64).to_le_bytes());
    *hasher.finalize().as_bytes()
}

/// The group label of member `index`: `g0`, `g1`, ... round-robin over `groups` labels.
pub fn group_of(index: Index, groups: usize) -> String {
    format!("g{}", index % groups)
}

/// The job every member runs: owned by member 0, as the flags describe it.
pub fn spec(config: &Config) -> Result<JobSpec, JobError> {
    let spec = JobSpec {
        name: format!("sim-{}", config.seed),
        owner: member_id(config.seed, 0),
        tag: TagSpec::Builtin(config.topology),
        model: config.model.clone(),
        dataset: config.dataset.name().to_owned(),
        hyperparameters: Hyperparameters {
            rounds: config.rounds,
            local_epochs: config.local_epochs,
            lr: config.lr,
            ..Hyperparameters::default()
        },
        strategy: config.strategy.clone(),
        participation: Participation {
            min_participants: config.min_participants,
            ..Participation::default()
        },
        quorum: Quorum::Fraction(config.quorum as f32),
        round_deadline_secs: config.deadline_secs,
        coordinator: None,
        coordinator_fallback_secs: None,
        seed: config.seed,
        delta_encoding: Default::default(),
        classes: None,
        privacy: Privacy { secure_aggregation: config.secure_aggregation, ..Privacy::default() },
        verification: config
            .verification
            .map(|auditors| Verification { auditors, audit_window_secs: AUDIT_WINDOW_SECS }),
        mode: Default::default(),
        asynchronous: None,
    };
    spec.validate()?;
    Ok(spec)
}

/// The job's id: a hash of its canonical spec.
pub fn job_id(spec: &JobSpec) -> Result<JobId, JobError> {
    let mut bytes = b"fedmesh-sim job ".to_vec();
    bytes.extend(spec.to_canonical_json()?);
    Ok(JobId(ContentHash::of(&bytes)))
}

/// Every member's setup, in index order.
pub fn setups(
    config: &Config,
    spec: &JobSpec,
    samples: impl Fn(Index) -> u64,
) -> Result<Vec<Setup>, JobError> {
    let tag = Tag::from_spec(&spec.tag)?;
    let job = job_id(spec)?;
    Ok((0..config.members)
        .map(|index| Setup {
            me: member_id(config.seed, index),
            job,
            spec: spec.clone(),
            tag: tag.clone(),
            group: group_of(index, config.groups),
            roles: Vec::new(),
            samples: samples(index),
            reachable: true,
            ticket: None,
            identity: Some(Arc::new(identity(config.seed, index))),
            noise_key: noise_key(config.seed, index),
        })
        .collect())
}
