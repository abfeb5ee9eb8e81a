//! Updates an aggregator receives as the network brings them: each signed delta or partial
//! aggregate is verified (a signature over the payload's hash, checked off the engine's task),
//! its signer must be a member, and its payload must fit the model's layout before the slot's
//! rules (`fedmesh_federation::collect`) judge it and fold it in.

pub use fedmesh_federation::collect::{Collecting, Opening};
pub use fedmesh_federation::member::Refusal as Refused;
use fedmesh_federation::membership::Membership;
use fedmesh_protocol::envelope::{CarriesPayload, Signed, SignedBody, Verified};
use fedmesh_protocol::ids::{JobId, MemberId};
use fedmesh_protocol::message::{ModelDelta, PartialAggregate};
use fedmesh_protocol::tensor::{Decoder, PayloadRef, decode_params};

pub fn refuse(reason: &'static str, detail: impl Into<String>) -> Refused {
    Refused::new(reason, detail)
}

/// An update as it arrived, its signature not checked yet.
pub enum Unverified {
    Delta(Signed<ModelDelta>),
    Partial(Signed<PartialAggregate>),
}

/// An update whose signature and payload hash were checked.
pub enum Checked {
    Delta(Verified<ModelDelta>),
    Partial(Verified<PartialAggregate>),
}

impl Unverified {
    /// The job it claims to be for.
    pub fn job(&self) -> JobId {
        match self {
            Self::Delta(delta) => delta.unverified_body().job,
            Self::Partial(partial) => partial.unverified_body().job,
        }
    }

    /// What kind of update it is, as the refusal metrics count it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Delta(_) => "delta",
            Self::Partial(_) => "partial",
        }
    }

    /// Checks its signature and that `payload` is the one it signs for (a hash over all of it:
    /// the heavy part, run off the engine's task).
    pub fn verify(self, payload: &[u8]) -> Result<Checked, Refused> {
        Ok(match self {
            Self::Delta(delta) => Checked::Delta(verify_payload(delta, payload)?),
            Self::Partial(partial) => Checked::Partial(verify_payload(partial, payload)?),
        })
    }
}

/// Folds a trainer's verified delta into `slot`, a chunk at a time.
pub fn accept_delta(
    slot: &mut Collecting,
    verified: Verified<ModelDelta>,
    payload: &[u8],
    members: &Membership,
) -> Result<MemberId, Refused> {
    let (signer, body) = (verified.signer(), verified.body());
    check_member(&signer, members)?;
    check_layout("delta", &signer, &body.payload, slot.num_params)?;
    let update = Decoder::new(payload, body.payload.encoding, slot.num_params)
        .map_err(|e| refuse("malformed_payload", e.to_string()))?;
    slot.accept_encoded_delta(signer, body, &update)?;
    Ok(signer)
}

/// Folds a lower slot's or ring's verified partial aggregate into `slot`.
pub fn accept_partial(
    slot: &mut Collecting,
    verified: Verified<PartialAggregate>,
    payload: &[u8],
    members: &Membership,
) -> Result<MemberId, Refused> {
    let (signer, body) = (verified.signer(), verified.body());
    check_member(&signer, members)?;
    check_layout("partial aggregate", &signer, &body.mean, slot.num_params)?;
    let mean = decode_params(payload, body.mean.encoding, slot.num_params)
        .map_err(|e| refuse("malformed_payload", e.to_string()))?;
    slot.accept_partial(signer, body, &mean)?;
    Ok(signer)
}

/// A payload must decode to the model's parameter count.
fn check_layout(
    what: &str,
    signer: &MemberId,
    reference: &PayloadRef,
    params: usize,
) -> Result<(), Refused> {
    if reference.params != params as u64 {
        return Err(refuse(
            "wrong_layout",
            format!("{what} from {signer} has {} parameters, the model {params}", reference.params),
        ));
    }
    Ok(())
}

/// Verifies a signed body and the payload beside it, and that its signer is a member of the job.
pub fn verify_member<T: SignedBody + CarriesPayload>(
    signed: Signed<T>,
    payload: &[u8],
    members: &Membership,
) -> Result<Verified<T>, Refused> {
    let verified = verify_payload(signed, payload)?;
    check_member(&verified.signer(), members)?;
    Ok(verified)
}

/// Verifies a signed body and that `payload` is the one it signs for.
pub fn verify_payload<T: SignedBody + CarriesPayload>(
    signed: Signed<T>,
    payload: &[u8],
) -> Result<Verified<T>, Refused> {
    signed
        .verify_with_payload(payload, |_, _| Ok(()))
        .map_err(|e| refuse("bad_signature", e.to_string()))
}

/// An update's signer must be a member of the job.
fn check_member(signer: &MemberId, members: &Membership) -> Result<(), Refused> {
    if !members.contains(signer) {
        return Err(refuse("not_a_member", format!("{signer} is not a member of the job")));
    }
    Ok(())
}
