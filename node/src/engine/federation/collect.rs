//! Updates an aggregator receives as the network brings them: each signed delta or partial
//! aggregate is verified (a member's signature over the payload's hash) and its payload checked
//! against the model's layout before the slot's rules (`fedmesh_federation::collect`) judge it
//! and fold it in.

pub use fedmesh_federation::collect::{Collecting, Opening};
pub use fedmesh_federation::member::Refusal as Refused;
use fedmesh_federation::membership::Membership;
use fedmesh_protocol::envelope::{CarriesPayload, Signed, SignedBody, Verified};
use fedmesh_protocol::ids::MemberId;
use fedmesh_protocol::message::{ModelDelta, PartialAggregate};
use fedmesh_protocol::tensor::{Decoder, PayloadRef, decode_params};

pub fn refuse(reason: &'static str, detail: impl Into<String>) -> Refused {
    Refused::new(reason, detail)
}

/// Verifies a trainer's delta and folds it into `slot`, a chunk at a time.
pub fn accept_delta(
    slot: &mut Collecting,
    delta: Signed<ModelDelta>,
    payload: &[u8],
    members: &Membership,
) -> Result<MemberId, Refused> {
    let verified = verify_member(delta, payload, members)?;
    let (signer, body) = (verified.signer(), verified.body());
    check_layout("delta", &signer, &body.payload, slot.num_params)?;
    let update = Decoder::new(payload, body.payload.encoding, slot.num_params)
        .map_err(|e| refuse("malformed_payload", e.to_string()))?;
    slot.accept_encoded_delta(signer, body, &update)?;
    Ok(signer)
}

/// Verifies a lower slot's or ring's partial aggregate and folds it into `slot`.
pub fn accept_partial(
    slot: &mut Collecting,
    partial: Signed<PartialAggregate>,
    payload: &[u8],
    members: &Membership,
) -> Result<MemberId, Refused> {
    let verified = verify_member(partial, payload, members)?;
    let (signer, body) = (verified.signer(), verified.body());
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
    let verified = signed
        .verify_with_payload(payload, |_, _| Ok(()))
        .map_err(|e| refuse("bad_signature", e.to_string()))?;
    let signer = verified.signer();
    if !members.contains(&signer) {
        return Err(refuse("not_a_member", format!("{signer} is not a member of the job")));
    }
    Ok(verified)
}
