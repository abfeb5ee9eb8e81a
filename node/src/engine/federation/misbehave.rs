//! Deliberate misbehaviour for testing a federation's defenses (the `misbehave` setting): a node
//! so configured also sends deltas that an honest aggregator must refuse.

use super::Engine;
use fedmesh_protocol::identity::Identity;
use fedmesh_protocol::ids::{ContentHash, JobId, MemberId, Round};
use fedmesh_protocol::message::ModelDelta;

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
            self.send_delta_as(signer, id, aggregator, body, payload.to_vec()).await;
        }
    }
}
