//! Tickets for owner-admitted jobs (`participation.admission = "owner"`): the owner's node signs
//! one for each key it admits (`fedmesh job admit`), and a member's node keeps the one it was
//! given (`fedmesh job join --ticket`) to present in every join of that job.

use super::{Engine, EngineError};
use crate::store::Table;
use fedmesh_protocol::codec;
use fedmesh_protocol::envelope::Signed;
use fedmesh_protocol::ids::{JobId, MemberId};
use fedmesh_protocol::message::{Ticket, unix_millis};
use fedmesh_protocol::spec::{Admission, JobSpec};

/// The store key of the ticket kept for `job`.
fn ticket_key(job: &JobId) -> Vec<u8> {
    [b"ticket/".as_slice(), &job.0.0].concat()
}

impl Engine {
    /// Signs a ticket admitting `member` (a peer id) to the job `prefix` names, which this node
    /// owns and admits members by ticket; returns it as the text to hand to that member.
    pub(super) fn admit(&self, prefix: &str, member: &str) -> Result<String, EngineError> {
        let job = self.jobs.id_by_prefix(prefix)?;
        let spec =
            self.jobs.spec(&job).ok_or_else(|| EngineError::NotFound(format!("job {job}")))?;
        let member: MemberId = member
            .parse()
            .map_err(|e| EngineError::Invalid(format!("`{member}` is not a peer id: {e}")))?;
        if spec.owner != self.identity.member_id() {
            let owner = spec.owner;
            return Err(EngineError::Invalid(format!(
                "job {job} is owned by {owner}, not this node"
            )));
        }
        if spec.participation.admission() != Admission::Owner {
            let detail = "its spec does not set participation.admission = \"owner\"";
            return Err(EngineError::Invalid(format!("job {job} takes no tickets: {detail}")));
        }
        let ticket = Ticket { job, member, issued_at_ms: unix_millis() };
        let signed = Signed::sign(&self.identity, ticket)
            .map_err(|e| EngineError::Invalid(format!("cannot sign the ticket: {e}")))?;
        tracing::info!(%job, %member, "admitted a member: signed its ticket");
        codec::encode_ticket(&signed).map_err(|e| EngineError::Invalid(e.to_string()))
    }

    /// Keeps the ticket `text` for `job` once it checks: signed by the job's owner, for this
    /// node's key and this job.
    pub(super) fn keep_ticket(&self, job: JobId, text: &str) -> Result<(), EngineError> {
        let spec =
            self.jobs.spec(&job).ok_or_else(|| EngineError::NotFound(format!("job {job}")))?;
        let ticket = codec::decode_ticket(text)
            .map_err(|e| EngineError::Invalid(format!("the ticket does not read: {e}")))?;
        let me = self.identity.member_id();
        Ticket::admits(Some(&ticket), &spec.owner, &job, &me).map_err(|e| {
            EngineError::Invalid(format!("the ticket does not admit this node: {e}"))
        })?;
        let mut batch = self.store.batch();
        batch.put(Table::Meta, &ticket_key(&job), &ticket)?;
        batch.commit()?;
        Ok(())
    }

    /// Joins the job `prefix` names, keeping `ticket` for it first if one is given.
    pub(super) async fn join_with(
        &mut self,
        prefix: &str,
        ticket: Option<&str>,
    ) -> Result<JobId, EngineError> {
        let job = self.jobs.id_by_prefix(prefix)?;
        if let Some(text) = ticket {
            self.keep_ticket(job, text)?;
        }
        self.join_job(job).await.map(|()| job)
    }

    /// The ticket kept for `job`, if any.
    pub(super) fn ticket(&self, job: &JobId) -> Result<Option<Signed<Ticket>>, EngineError> {
        Ok(self.store.get(Table::Meta, &ticket_key(job))?)
    }

    /// Whether this node may join `job`: always unless it admits members by ticket, and then
    /// with a ticket kept for it (or as the job's owner, or a key on its allow-list).
    pub(super) fn check_admitted(&self, job: &JobId, spec: &JobSpec) -> Result<(), EngineError> {
        let me = self.identity.member_id();
        let part = &spec.participation;
        let needs_ticket =
            part.admission() == Admission::Owner && me != spec.owner && !part.allow.contains(&me);
        if needs_ticket && self.ticket(job)?.is_none() {
            return Err(EngineError::Invalid(format!(
                "job {job} admits members by its owner's ticket: ask its owner to run \
                 `fedmesh job admit {job} {me}` and join with `--ticket`"
            )));
        }
        Ok(())
    }
}
