//! Deliberate misbehaviour for testing a federation's defenses (the `misbehave` setting): a node
//! so configured also sends deltas that an honest aggregator must refuse.

use super::{Engine, request_with_payload};
use fedmesh_protocol::envelope::Signed;
use fedmesh_protocol::identity::Identity;
use fedmesh_protocol::ids::{ContentHash, JobId, MemberId, Round};
use fedmesh_protocol::message::{ModelDelta, Request};

/// `forged-deltas`: before each honest delta, the same update signed by a key that is not a
/// member, one for the wrong round and one on the wrong base model.
pub const FORGED_DELTAS: &str = "forged-deltas";

/// Every kind of misbehaviour the setting accepts.
pub const KINDS: &[&str] = &[FORGED_DELTAS];

impl Engine {
    /// Sends the forged copies of `honest` if this node is configured to.
    pub(super) async fn misbehave_before_delta(
        &mut self,
        id: JobId,
        aggregator: MemberId,
        honest: &ModelDelta,
        payload: &[u8],
    ) {
        if !self.config.misbehave.iter().any(|kind| kind == FORGED_DELTAS) {
            return;
        }
        let outsider = Identity::generate();
        let forgeries: [(Option<&Identity>, Round, ContentHash); 3] = [
            (Some(&outsider), honest.round, honest.base_model),
            (None, honest.round + 1, honest.base_model),
            (None, honest.round, ContentHash::of(b"not the round's model")),
        ];
        for (signer, round, base_model) in forgeries {
            let member = signer.map_or(honest.member, Identity::member_id);
            let body = ModelDelta { round, base_model, member, ..honest.clone() };
            tracing::warn!(job = %id, round, "misbehaving on purpose: sending a forged delta");
            let signed = match Signed::sign(signer.unwrap_or(&self.identity), body) {
                Ok(signed) => signed,
                Err(error) => return tracing::error!(%error, "cannot sign a forged delta"),
            };
            // Each forgery is answered before the honest update goes, so that it reaches the
            // aggregator while the round is still open.
            if aggregator == self.identity.member_id() {
                Box::pin(self.on_delta_request(signed, payload)).await;
            } else {
                let request = Request::Delta(signed);
                let answer =
                    request_with_payload(&self.network, aggregator, &request, payload).await.ok();
                tracing::info!(?answer, "forged delta answered");
            }
        }
    }
}
