//! The bodies the admin API's `POST` routes take (each optional where the route says so) and the
//! small answers they give.

use serde::{Deserialize, Serialize};

/// What `POST /v1/jobs/{id}/join` takes (optional): the owner's ticket, for a job that admits
/// members by ticket.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JoinRequest {
    #[serde(default)]
    pub ticket: Option<String>,
}

/// What `POST /v1/jobs/{id}/admit` takes: the peer id to admit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdmitRequest {
    pub member: String,
}

/// Why a job is stopped, as `POST /v1/jobs/{id}/stop` takes it (optional).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StopRequest {
    #[serde(default)]
    pub reason: Option<String>,
}

/// What `POST /v1/jobs` (announce) and `POST /v1/coordinator/jobs` (submit) answer: the job's id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Announced {
    pub id: String,
}

/// What `POST /v1/jobs/{id}/join` answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Joined {
    pub id: String,
    pub joined: bool,
}

/// What `POST /v1/jobs/{id}/admit` answers: the signed ticket for the admitted member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Admitted {
    pub member: String,
    pub ticket: String,
}

/// What `POST /v1/jobs/{id}/leave` answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Left {
    pub id: String,
    pub left: bool,
}

/// What `POST /v1/jobs/{id}/stop` answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stopped {
    pub id: String,
    pub stopped: bool,
}

/// What `POST /v1/blobs` answers: the stored blob's content hash (hex).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredBlob {
    pub hash: String,
}

/// What every route answers on failure (with a non-2xx status).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorAnswer {
    pub error: String,
}
