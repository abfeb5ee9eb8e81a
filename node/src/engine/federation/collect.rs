//! The aggregator's side of a round: checking each signed delta against the round (member,
//! selection, round, base model, layout) and folding it into the job's strategy.

use crate::engine::federation::membership::Membership;
use fedmesh_aggregation::Aggregator;
use fedmesh_protocol::envelope::Signed;
use fedmesh_protocol::ids::{ContentHash, MemberId, Round};
use fedmesh_protocol::message::{Contribution, ModelDelta};
use fedmesh_protocol::tensor::decode_params;
use std::collections::BTreeSet;
use std::sync::Arc;

/// A round this node aggregates, while it collects updates.
pub struct Collecting {
    pub round: Round,
    pub base: ContentHash,
    pub base_params: Arc<Vec<f32>>,
    pub aggregator: Aggregator,
    /// The trainers the plan selected.
    pub expected: BTreeSet<MemberId>,
    /// Updates that close the round at its deadline.
    pub required: usize,
    pub contributions: Vec<Contribution>,
    pub opened_at_ms: u64,
    pub deadline_ms: u64,
    /// How many times the round was re-opened for lack of quorum.
    pub retries: u32,
}

/// Why a delta was refused: a metrics label and a sentence.
#[derive(Debug)]
pub struct Refused {
    pub reason: &'static str,
    pub detail: String,
}

fn refuse(reason: &'static str, detail: impl Into<String>) -> Refused {
    Refused { reason, detail: detail.into() }
}

impl Collecting {
    /// Every expected trainer has sent its update.
    pub fn complete(&self) -> bool {
        self.contributions.len() >= self.expected.len()
    }

    /// Verifies a delta and folds it in; the payload is the encoded update.
    pub fn accept(
        &mut self,
        delta: Signed<ModelDelta>,
        payload: &[u8],
        members: &Membership,
    ) -> Result<MemberId, Refused> {
        let verified = delta
            .verify_with_payload(payload, |_, _| Ok(()))
            .map_err(|e| refuse("bad_signature", e.to_string()))?;
        let (signer, body) = (verified.signer(), verified.body());
        if !members.contains(&signer) {
            return Err(refuse("not_a_member", format!("{signer} is not a member of the job")));
        }
        if body.round != self.round {
            return Err(refuse(
                "wrong_round",
                format!(
                    "delta from {signer} is for round {}, round {} is open",
                    body.round, self.round
                ),
            ));
        }
        if body.base_model != self.base {
            return Err(refuse(
                "wrong_base",
                format!(
                    "delta from {signer} builds on {}, the round's model is {}",
                    body.base_model, self.base
                ),
            ));
        }
        if !self.expected.contains(&signer) {
            return Err(refuse("not_selected", format!("{signer} was not selected this round")));
        }
        if let Some(counted) = self.contributions.iter().find(|c| c.member == signer) {
            if counted.delta == body.payload.hash {
                // The same update again (the round was re-opened): already counted, not an error.
                return Ok(signer);
            }
            return Err(refuse("duplicate", format!("{signer} already sent another update")));
        }
        let params = self.base_params.len();
        if body.payload.params != params as u64 {
            return Err(refuse(
                "wrong_layout",
                format!(
                    "delta from {signer} has {} parameters, the model {params}",
                    body.payload.params
                ),
            ));
        }
        let update = decode_params(payload, body.payload.encoding, params)
            .map_err(|e| refuse("malformed_payload", e.to_string()))?;
        self.aggregator
            .add(&signer.to_peer_id_string(), body.samples as f64, &update)
            .map_err(|e| refuse("rejected_update", e.to_string()))?;
        self.contributions.push(Contribution {
            member: signer,
            delta: body.payload.hash,
            samples: body.samples,
        });
        Ok(signer)
    }
}
