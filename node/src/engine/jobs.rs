//! Jobs the node knows: verified announcements, kept in RocksDB and in memory; announcing,
//! re-announcing, and learning jobs from gossip and from peers' job lists.

use super::{Engine, EngineError, JOBS_TOPIC, JobView};
use crate::store::{Store, StoreError, Table};
use fedmesh_federation::member::Reason;
use fedmesh_protocol::codec::{decode_gossip, encode_gossip};
use fedmesh_protocol::envelope::Signed;
use fedmesh_protocol::ids::JobId;
use fedmesh_protocol::message::{GossipMessage, JobAnnouncement, VerifiedJob, unix_millis};
use fedmesh_protocol::spec::JobSpec;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A job as RocksDB keeps it: the signed announcement exactly as received, so it can be verified
/// again on load and passed on to peers unchanged.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct JobRecord {
    announcement: Signed<JobAnnouncement>,
    learned_at_ms: u64,
}

/// A known job in memory.
#[derive(Debug, Clone)]
pub struct KnownJob {
    pub job: VerifiedJob,
    pub learned_at_ms: u64,
}

impl KnownJob {
    fn view(&self) -> JobView {
        let spec = &self.job.spec;
        JobView {
            id: self.job.id.to_string(),
            name: spec.name.clone(),
            owner: spec.owner.to_peer_id_string(),
            dataset: spec.dataset.clone(),
            status: "announced".to_owned(),
            learned_at_ms: self.learned_at_ms,
            spec: spec.clone(),
            run: None,
            join_error: None,
        }
    }
}

/// Every job this node has verified and accepted.
#[derive(Default)]
pub struct JobBook {
    jobs: BTreeMap<JobId, KnownJob>,
}

impl JobBook {
    /// Loads and re-verifies every stored job; a record that no longer verifies is skipped with a
    /// warning rather than trusted.
    pub fn load(store: &Store) -> Result<Self, StoreError> {
        let mut jobs = BTreeMap::new();
        for (key, record) in store.scan::<JobRecord>(Table::Jobs, &[])? {
            match record.announcement.verify_announcement() {
                Ok(job) => {
                    jobs.insert(job.id, KnownJob { job, learned_at_ms: record.learned_at_ms });
                }
                Err(error) => {
                    let key: String = key.iter().map(|b| format!("{b:02x}")).collect();
                    tracing::warn!(job = %key, %error, "stored job no longer verifies; ignoring it");
                }
            }
        }
        Ok(Self { jobs })
    }

    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    pub fn contains(&self, id: &JobId) -> bool {
        self.jobs.contains_key(id)
    }

    pub fn views(&self) -> Vec<JobView> {
        self.jobs.values().map(KnownJob::view).collect()
    }

    /// The job whose id starts with `prefix` (hex), if exactly one does.
    pub fn view_by_prefix(&self, prefix: &str) -> Result<JobView, EngineError> {
        let id = self.id_by_prefix(prefix)?;
        self.jobs.get(&id).map(KnownJob::view).ok_or_else(|| EngineError::NotFound(id.to_string()))
    }

    /// The id of the job whose id starts with `prefix` (hex), if exactly one does.
    pub fn id_by_prefix(&self, prefix: &str) -> Result<JobId, EngineError> {
        let prefix = prefix.to_ascii_lowercase();
        let mut matches =
            self.jobs.values().filter(|job| job.job.id.to_string().starts_with(&prefix));
        match (matches.next(), matches.next()) {
            (Some(job), None) if !prefix.is_empty() => Ok(job.job.id),
            (Some(_), Some(_)) => {
                Err(EngineError::Invalid(format!("`{prefix}` matches several jobs")))
            }
            _ => Err(EngineError::NotFound(format!("no job with id `{prefix}`"))),
        }
    }

    /// The ids of at most `limit` known jobs.
    pub fn ids(&self, limit: usize) -> Vec<JobId> {
        self.jobs.keys().take(limit).copied().collect()
    }

    /// A known job's spec.
    pub fn spec(&self, id: &JobId) -> Option<JobSpec> {
        self.jobs.get(id).map(|job| job.job.spec.clone())
    }

    /// A known job's signed announcement.
    pub fn announcement(&self, id: &JobId) -> Option<&Signed<JobAnnouncement>> {
        self.jobs.get(id).map(|job| job.job.announcement.signed())
    }
}

/// Why a received announcement was not accepted; the label is the metrics' reason.
enum Refusal {
    /// Forged or malformed: gossipsub penalizes the sender.
    Invalid(Reason, String),
    /// Valid but not for us (an untrusted owner): dropped quietly.
    Ignored(Reason, String),
}

impl Engine {
    /// Signs and publishes a job spec given to the local node.
    pub(super) async fn announce_local(&mut self, spec_json: &[u8]) -> Result<JobId, EngineError> {
        let spec =
            JobSpec::from_json(spec_json).map_err(|e| EngineError::Invalid(e.to_string()))?;
        // Refused here, not at every member's join: a job no node can run would stall silently.
        super::federation::supported(&spec)?;
        let me = self.identity.member_id();
        if spec.owner != me {
            return Err(EngineError::Invalid(format!(
                "owner: the spec names {} but this node's key is {}; a job is announced by its owner's node",
                spec.owner.to_peer_id_string(),
                me.to_peer_id_string()
            )));
        }
        let announcement = JobAnnouncement::new(&spec, unix_millis())
            .map_err(|e| EngineError::Invalid(e.to_string()))?;
        let signed = Signed::sign(&self.identity, announcement)
            .map_err(|e| EngineError::Invalid(e.to_string()))?;
        let job = signed.verify_announcement().map_err(|e| EngineError::Invalid(e.to_string()))?;
        let id = job.id;
        self.remember_job(job)?;
        self.publish_announcement(id).await;
        tracing::info!(job = %id, name = %spec.name, "announced job");
        Ok(id)
    }

    /// Publishes every known job's announcement again, for peers that missed it.
    pub(super) async fn reannounce(&mut self) {
        let ids: Vec<JobId> = self.jobs.jobs.keys().copied().collect();
        for id in ids {
            self.publish_announcement(id).await;
        }
    }

    async fn publish_announcement(&self, id: JobId) {
        let Some(known) = self.jobs.jobs.get(&id) else { return };
        let message = GossipMessage::Announce(known.job.announcement.signed().clone());
        match encode_gossip(&message) {
            Ok(bytes) => {
                if let Err(error) = self.network.publish(JOBS_TOPIC, bytes).await {
                    tracing::debug!(job = %id, %error, "announcement not published now; it will be re-announced");
                }
            }
            Err(error) => tracing::error!(job = %id, %error, "cannot encode announcement"),
        }
    }

    /// Stores a verified job (one atomic write) and indexes it.
    fn remember_job(&mut self, job: VerifiedJob) -> Result<(), StoreError> {
        let record = JobRecord {
            announcement: job.announcement.signed().clone(),
            learned_at_ms: unix_millis(),
        };
        let mut batch = self.store.batch();
        batch.put(Table::Jobs, &job.id.0.0, &record)?;
        batch.commit()?;
        self.jobs.jobs.insert(job.id, KnownJob { job, learned_at_ms: record.learned_at_ms });
        Ok(())
    }

    /// Verifies an announcement from a peer and keeps it if its owner is trusted.
    fn accept_announcement(
        &mut self,
        announcement: Signed<JobAnnouncement>,
    ) -> Result<Option<JobId>, Refusal> {
        let job = announcement
            .verify_announcement()
            .map_err(|e| Refusal::Invalid(Reason::BadAnnouncement, e.to_string()))?;
        if self.jobs.contains(&job.id) {
            return Ok(None);
        }
        let owner = job.spec.owner;
        if owner != self.identity.member_id() && !self.trusted.contains(&owner) {
            return Err(Refusal::Ignored(
                Reason::UntrustedOwner,
                format!(
                    "job {} is owned by {}, whom this node does not trust",
                    job.id,
                    owner.to_peer_id_string()
                ),
            ));
        }
        let (id, name) = (job.id, job.spec.name.clone());
        self.remember_job(job).map_err(|e| Refusal::Ignored(Reason::StoreError, e.to_string()))?;
        tracing::info!(job = %id, %name, owner = %owner, "learned job");
        Ok(Some(id))
    }

    /// Handles one gossip frame; returns whether gossipsub should pass it on.
    pub(super) async fn on_gossip(&mut self, data: &[u8]) -> libp2p::gossipsub::MessageAcceptance {
        use libp2p::gossipsub::MessageAcceptance;
        let outcome = match decode_gossip(data) {
            Err(error) => Err(Refusal::Invalid(Reason::Malformed, error.to_string())),
            Ok(GossipMessage::Announce(announcement)) => {
                let learned = self.accept_announcement(announcement);
                if let Ok(Some(id)) = learned {
                    self.maybe_auto_join(id).await;
                }
                learned.map(|_| ())
            }
            Ok(message) => self.on_job_gossip(message).await.map_err(|refused| {
                if refused.reason.proves_misbehaviour() {
                    Refusal::Invalid(refused.reason, refused.detail)
                } else {
                    Refusal::Ignored(refused.reason, refused.detail)
                }
            }),
        };
        match outcome {
            Ok(_) => MessageAcceptance::Accept,
            Err(Refusal::Invalid(reason, detail)) => {
                tracing::warn!(reason = reason.label(), %detail, "rejected gossip message");
                self.metrics.rejected("gossip", reason.label());
                MessageAcceptance::Reject
            }
            Err(Refusal::Ignored(reason, detail)) => {
                // Honest timing (a copy come late, a round this node is not at): counted.
                tracing::debug!(reason = reason.label(), %detail, "ignored gossip message");
                self.metrics.rejected("gossip", reason.label());
                MessageAcceptance::Ignore
            }
        }
    }

    /// Learns a job from the announcement a peer sent when asked for job `requested`; says
    /// whether it is new.
    pub(super) fn learn_job(
        &mut self,
        requested: JobId,
        announcement: Signed<JobAnnouncement>,
    ) -> bool {
        let matches = announcement.content_hash().is_ok_and(|hash| hash == requested.0);
        let outcome = if matches {
            self.accept_announcement(announcement)
        } else {
            Err(Refusal::Invalid(
                Reason::WrongAnnouncement,
                format!("not the announcement of job {requested}"),
            ))
        };
        match outcome {
            Ok(learned) => return learned.is_some(),
            Err(Refusal::Invalid(reason, detail)) => {
                tracing::warn!(reason = reason.label(), %detail, "peer sent an invalid announcement");
                self.metrics.rejected("announcement", reason.label());
            }
            Err(Refusal::Ignored(reason, _)) => {
                self.metrics.rejected("announcement", reason.label())
            }
        }
        false
    }
}
