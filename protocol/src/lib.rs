//! The vocabulary every fedmesh node speaks: ids, job and TAG specs, wire messages, the signed
//! envelope, keys, the bounded bincode codec, and the transport it is spoken over. Nothing a
//! peer sends is trusted until this crate has checked it.
//!
//! Receiving, in order: [`codec::read_frame`] (length checked before allocation), then
//! [`codec::decode_gossip`] / [`codec::decode_request`] / [`codec::decode_response`] (version
//! byte, bounded bincode), then [`envelope::Signed::verify`] (or `verify_with_payload`,
//! `verify_announcement`) with the sender-rights check and an [`envelope::Scope`], and only then
//! act on the [`envelope::Verified`] body.

pub mod codec;
pub mod envelope;
pub mod flame;
pub mod fuzzing;
pub mod identity;
pub mod ids;
pub mod message;
pub mod model;
pub mod spec;
pub mod strategy;
pub mod tag;
pub mod tensor;
pub mod transport;

pub use codec::{DecodeError, EncodeError, FrameError, Payload};
pub use envelope::{Denied, Domain, Scope, Signed, Verified, VerifyError};
pub use identity::{Identity, KeyError};
pub use ids::{ContentHash, JobId, MemberId, Round};
pub use message::{GossipMessage, Request, Response, VerifiedJob};
pub use spec::{JobSpec, SpecErrors};
pub use tensor::{PayloadRef, TensorEncoding};
