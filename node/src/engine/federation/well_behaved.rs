//! A default build's misbehaviour: none. It stands in for `misbehave.rs` (the `misbehave`
//! cargo feature) with the same hooks, each doing nothing; the config refuses the setting.

use crate::engine::Engine;
use crate::misbehaviour::Misbehaviour;
use fedmesh_protocol::identity::Identity;
use fedmesh_protocol::ids::{JobId, MemberId, Round};
use fedmesh_protocol::message::{Assignment, ModelDelta, Request, RoundOpen};

/// What this node does to the updates it sends: nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Poisoning;

impl Poisoning {
    pub fn poison(self, delta: Vec<f32>, _round: Round) -> Vec<f32> {
        delta
    }

    pub fn forges_deltas(self) -> bool {
        false
    }
}

/// No forged copies.
pub fn forged_deltas(_identity: &Identity, _honest: &ModelDelta) -> Vec<Request> {
    Vec::new()
}

impl Engine {
    pub(super) fn misbehaves(&self, _kind: Misbehaviour) -> bool {
        false
    }

    pub(super) fn slowdown(&self) -> f32 {
        1.0
    }

    pub(super) fn poisoning(&self) -> Poisoning {
        Poisoning
    }

    pub(super) async fn maybe_hijack(&mut self, _id: JobId, _opener: MemberId, _open: &RoundOpen) {}

    pub(super) async fn maybe_forge_assignment(&mut self, _id: JobId, _honest: &Assignment) {}
}
