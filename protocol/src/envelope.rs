//! The signed envelope: a body, its signer, its kind's domain tag and an ed25519 signature over
//! the BLAKE3 hash of (domain tag ++ the body's canonical bincode bytes). A body is acted on only
//! once [`Signed::verify`] has turned it into a [`Verified`] one.

use crate::codec::{self, EncodeError};
use crate::identity::{self, Identity, SignatureError};
use crate::ids::{ContentHash, JobId, MemberId, Round};
use crate::tensor::{HashedBytes, PayloadError, PayloadRef};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The kind of a signed message; its tag is hashed with the body so that a signature made for one
/// kind never verifies as another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Domain {
    JobAnnouncement,
    Join,
    Leave,
    Heartbeat,
    RoundOpen,
    Assignment,
    AggregateReady,
    ModelDelta,
    PartialAggregate,
    EvalReport,
    RingChunk,
    JobStop,
    Ticket,
    FraudProof,
    SecureAggregation,
}

impl Domain {
    /// The tag hashed in front of the body.
    pub fn tag(self) -> &'static str {
        match self {
            Self::JobAnnouncement => "fedmesh/v1/job-announcement",
            Self::Join => "fedmesh/v1/join",
            Self::Leave => "fedmesh/v1/leave",
            Self::Heartbeat => "fedmesh/v1/heartbeat",
            Self::RoundOpen => "fedmesh/v1/round-open",
            Self::Assignment => "fedmesh/v1/assignment",
            Self::AggregateReady => "fedmesh/v1/aggregate-ready",
            Self::ModelDelta => "fedmesh/v1/model-delta",
            Self::PartialAggregate => "fedmesh/v1/partial-aggregate",
            Self::EvalReport => "fedmesh/v1/eval-report",
            Self::RingChunk => "fedmesh/v1/ring-chunk",
            Self::JobStop => "fedmesh/v1/job-stop",
            Self::Ticket => "fedmesh/v1/ticket",
            Self::FraudProof => "fedmesh/v1/fraud-proof",
            Self::SecureAggregation => "fedmesh/v1/secure-aggregation",
        }
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.tag())
    }
}

/// A message body that travels signed.
pub trait SignedBody: Serialize + DeserializeOwned {
    /// The domain of this kind of body.
    const DOMAIN: Domain;

    /// Checks the body on its own: value ranges, sizes, finite numbers. `verify` calls it.
    fn check(&self) -> Result<(), String>;

    /// The member the body says sent it, if it names one; `verify` requires it to be the signer.
    fn declared_sender(&self) -> Option<MemberId> {
        None
    }
}

/// A body that a large payload travels beside, signed through its hash.
pub trait CarriesPayload {
    /// What the payload must be.
    fn payload_ref(&self) -> &PayloadRef;
}

/// A body with its signer, domain and signature, as received: not trusted until verified.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signed<T> {
    signer: MemberId,
    domain: Domain,
    body: T,
    #[serde(with = "serde_bytes")]
    signature: [u8; 64],
}

impl<T: SignedBody> Signed<T> {
    /// Signs `body` as `identity`.
    pub fn sign(identity: &Identity, body: T) -> Result<Self, EncodeError> {
        let digest = signing_digest(T::DOMAIN, &body)?;
        let signature = identity.sign_digest(&digest);
        Ok(Self { signer: identity.member_id(), domain: T::DOMAIN, body, signature })
    }

    /// Who claims to have signed it (not yet checked).
    pub fn signer(&self) -> MemberId {
        self.signer
    }

    /// The domain it claims (not yet checked).
    pub fn domain(&self) -> Domain {
        self.domain
    }

    /// The body before verification: for routing and logging only, never to act on.
    pub fn unverified_body(&self) -> &T {
        &self.body
    }

    /// The hash of the envelope's canonical encoding (for an announcement, the job id).
    pub fn content_hash(&self) -> Result<ContentHash, EncodeError> {
        Ok(ContentHash::of(&codec::canonical_bytes(self)?))
    }

    /// Checks the domain, the signature, the body itself, that a sender the body names is the
    /// signer, and then the signer's right to send it (`may_send`, which sees only signed data).
    pub fn verify<F>(self, may_send: F) -> Result<Verified<T>, VerifyError>
    where
        F: FnOnce(&MemberId, &T) -> Result<(), Denied>,
    {
        if self.domain != T::DOMAIN {
            return Err(VerifyError::WrongDomain { expected: T::DOMAIN, found: self.domain });
        }
        let digest = signing_digest(T::DOMAIN, &self.body)?;
        identity::verify_digest(&self.signer, &digest, &self.signature)
            .map_err(|source| VerifyError::Signature { signer: self.signer, source })?;
        self.body.check().map_err(|reason| VerifyError::Invalid { domain: T::DOMAIN, reason })?;
        if let Some(declared) = self.body.declared_sender()
            && declared != self.signer
        {
            return Err(VerifyError::SenderMismatch { signer: self.signer, declared });
        }
        may_send(&self.signer, &self.body).map_err(|denied| VerifyError::Denied {
            domain: T::DOMAIN,
            signer: self.signer,
            reason: denied.0,
        })?;
        Ok(Verified { signed: self })
    }
}

impl<T: SignedBody + CarriesPayload> Signed<T> {
    /// [`verify`](Self::verify), and checks that `payload` is the one the body signs for (its
    /// length and BLAKE3 hash).
    pub fn verify_with_payload<P, F>(
        self,
        payload: &P,
        may_send: F,
    ) -> Result<Verified<T>, VerifyError>
    where
        P: HashedBytes + ?Sized,
        F: FnOnce(&MemberId, &T) -> Result<(), Denied>,
    {
        let verified = self.verify(may_send)?;
        verified.body().payload_ref().check(payload)?;
        Ok(verified)
    }
}

/// The hash that is signed: BLAKE3 of (tag length, tag, body bytes).
fn signing_digest<T: Serialize>(domain: Domain, body: &T) -> Result<ContentHash, EncodeError> {
    let body = codec::canonical_bytes(body)?;
    let tag = domain.tag().as_bytes();
    let mut hasher = blake3::Hasher::new();
    hasher.update(&[tag.len() as u8]);
    hasher.update(tag);
    hasher.update(&body);
    Ok(ContentHash(*hasher.finalize().as_bytes()))
}

/// A body whose signature, domain, contents and sender rights have been checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified<T> {
    signed: Signed<T>,
}

impl<T> Verified<T> {
    /// The member who signed it.
    pub fn signer(&self) -> MemberId {
        self.signed.signer
    }

    /// The verified body.
    pub fn body(&self) -> &T {
        &self.signed.body
    }

    /// The verified body, owned.
    pub fn into_body(self) -> T {
        self.signed.body
    }

    /// The envelope, to store or forward as received.
    pub fn signed(&self) -> &Signed<T> {
        &self.signed
    }

    /// The envelope, owned.
    pub fn into_signed(self) -> Signed<T> {
        self.signed
    }
}

/// A refusal from a sender-rights check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied(pub String);

impl Denied {
    /// A refusal with this reason.
    pub fn new(reason: impl Into<String>) -> Self {
        Self(reason.into())
    }

    /// Allows only `member`; `role` names it in the refusal ("the job's owner").
    pub fn unless_signer_is(signer: &MemberId, member: &MemberId, role: &str) -> Result<(), Self> {
        if signer == member {
            Ok(())
        } else {
            Err(Self(format!("only {role} ({member}) may send this")))
        }
    }
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A body that belongs to one job (and maybe one round and one base model).
pub trait Scoped {
    /// The job it belongs to.
    fn job(&self) -> JobId;
    /// The round it belongs to, if any.
    fn round(&self) -> Option<Round> {
        None
    }
    /// The model it builds on, if any.
    fn base_model(&self) -> Option<ContentHash> {
        None
    }
}

/// Where a message is expected to belong: refuses one replayed from another job, round or model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope {
    pub job: JobId,
    pub round: Option<Round>,
    pub base_model: Option<ContentHash>,
}

impl Scope {
    /// Any message of `job`.
    pub fn job(job: JobId) -> Self {
        Self { job, round: None, base_model: None }
    }

    /// Only messages of this round.
    pub fn round(self, round: Round) -> Self {
        Self { round: Some(round), ..self }
    }

    /// Only messages that build on this model.
    pub fn base_model(self, model: ContentHash) -> Self {
        Self { base_model: Some(model), ..self }
    }

    /// Whether `body` belongs here; a scope that names a round or model refuses bodies without.
    pub fn admits<T: Scoped>(&self, body: &T) -> Result<(), Denied> {
        if body.job() != self.job {
            return Err(Denied(format!(
                "message is for job {}, expected {}",
                body.job(),
                self.job
            )));
        }
        if let Some(round) = self.round
            && body.round() != Some(round)
        {
            return Err(Denied(format!(
                "message is for round {:?}, expected {round}",
                body.round()
            )));
        }
        if let Some(model) = self.base_model
            && body.base_model() != Some(model)
        {
            let found = body.base_model().map_or("no model".to_owned(), |m| m.to_hex());
            return Err(Denied(format!("message builds on {found}, expected {model}")));
        }
        Ok(())
    }
}

/// Why a signed message was refused.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("expected a {expected} message, got {found}")]
    WrongDomain { expected: Domain, found: Domain },
    #[error("bad signature from {signer}: {source}")]
    Signature { signer: MemberId, source: SignatureError },
    #[error("invalid {domain} message: {reason}")]
    Invalid { domain: Domain, reason: String },
    #[error("message signed by {signer} claims to come from {declared}")]
    SenderMismatch { signer: MemberId, declared: MemberId },
    #[error("{signer} may not send this {domain} message: {reason}")]
    Denied { domain: Domain, signer: MemberId, reason: String },
    #[error(transparent)]
    Payload(#[from] PayloadError),
    #[error("invalid job spec in announcement:\n{0}")]
    Spec(#[from] crate::spec::SpecErrors),
    #[error(transparent)]
    Encode(#[from] EncodeError),
}
