//! Deliberate misbehaviour for testing a federation's defenses (the `misbehave` setting, acted
//! on only in a build with the `misbehave` cargo feature; `well_behaved.rs` stands in for this
//! module otherwise): a node so configured sends deltas that an honest aggregator must refuse
//! (forged), validly signed but poisoned ones that only a robust strategy withstands, or tries
//! to take rounds over; or it suffers a fault (a slow disk).

use crate::engine::Engine;
use crate::misbehaviour::Misbehaviour;
use fedmesh_protocol::envelope::Signed;
use fedmesh_protocol::identity::Identity;
use fedmesh_protocol::ids::{ContentHash, JobId, MemberId, Round};
use fedmesh_protocol::message::{
    AggregateReady, Assignment, EvalMetrics, GossipMessage, ModelDelta, Request, RoundOpen,
    unix_millis,
};

/// What a node misbehaving on purpose does to the updates it sends (a copy of its settings,
/// for the blocking task that makes them).
#[derive(Debug, Clone, Copy, Default)]
pub struct Poisoning {
    sign_flip: bool,
    noise: bool,
    forged_deltas: bool,
}

impl Poisoning {
    /// The update this node sends for its honest `delta`: poisoned if it is configured to.
    pub fn poison(self, mut delta: Vec<f32>, round: Round) -> Vec<f32> {
        if self.sign_flip {
            tracing::warn!(round, "misbehaving on purpose: sending a sign-flipped update");
            delta.iter_mut().for_each(|d| *d *= -10.0);
        } else if self.noise {
            tracing::warn!(round, "misbehaving on purpose: sending noise as the update");
            delta.fill(0.0);
            fedmesh_aggregation::privacy::add_gaussian_noise(&mut delta, 1.0, &mut rand::rng());
        }
        delta
    }

    pub fn forges_deltas(self) -> bool {
        self.forged_deltas
    }
}

/// The forged copies of `honest` a `forged-deltas` node sends before it: signed by a key that
/// is not a member, for the wrong round, and on the wrong base model.
pub fn forged_deltas(identity: &Identity, honest: &ModelDelta) -> Vec<Request> {
    let outsider = Identity::generate();
    let forgeries: [(Option<&Identity>, Round, ContentHash); 3] = [
        (Some(&outsider), honest.round, honest.base_model),
        (None, honest.round + 1, honest.base_model),
        (None, honest.round, ContentHash::of(b"not the round's model")),
    ];
    forgeries
        .into_iter()
        .filter_map(|(signer, round, base_model)| {
            let member = signer.map_or(honest.member, Identity::member_id);
            let body = ModelDelta { round, base_model, member, ..honest.clone() };
            Signed::sign(signer.unwrap_or(identity), body).ok().map(Request::Delta)
        })
        .collect()
}

impl Engine {
    pub(super) fn misbehaves(&self, kind: Misbehaviour) -> bool {
        self.settings.misbehave.contains(&kind)
    }

    /// How many times as long this node's local training takes (`slow_training`).
    pub(super) fn slowdown(&self) -> f32 {
        self.settings.slow_training
    }

    /// What this node does to the updates it sends.
    pub(super) fn poisoning(&self) -> Poisoning {
        Poisoning {
            sign_flip: self.misbehaves(Misbehaviour::SignFlip),
            noise: self.misbehaves(Misbehaviour::Noise),
            forged_deltas: self.misbehaves(Misbehaviour::ForgedDeltas),
        }
    }

    /// Answers another member's opening of a round with a competing opening and a made-up
    /// model, if this node is configured to.
    pub(super) async fn maybe_hijack(&mut self, id: JobId, opener: MemberId, open: &RoundOpen) {
        if !self.misbehaves(Misbehaviour::HijackRounds) || opener == self.identity.member_id() {
            return;
        }
        tracing::warn!(job = %id, round = open.round, "misbehaving on purpose: hijacking the round");
        let now = unix_millis();
        let competing = RoundOpen { opened_at_ms: now, ..open.clone() };
        self.publish_signed(id, competing, GossipMessage::RoundOpen).await;
        let made_up = AggregateReady {
            job: id,
            round: open.round,
            base_model: open.base_model,
            model: ContentHash::of(b"a model no honest aggregator made"),
            contributions: Vec::new(),
            metrics: EvalMetrics::default(),
            members: open.members.clone(),
            vetted: Vec::new(),
            sent_at_ms: now,
            optimizer_state: None,
            feedback: Vec::new(),
        };
        self.publish_signed(id, made_up, GossipMessage::AggregateReady).await;
    }

    /// Publishes an assignment of its own for the coordinator's `honest` one, if this node is
    /// configured to.
    pub(super) async fn maybe_forge_assignment(&mut self, id: JobId, honest: &Assignment) {
        if !self.misbehaves(Misbehaviour::ForgeAssignments) {
            return;
        }
        tracing::warn!(job = %id, round = honest.round, "misbehaving on purpose: forging an assignment");
        let me = self.identity.member_id();
        let mut forged = honest.clone();
        forged.aggregators.values_mut().for_each(|aggregator| *aggregator = me);
        forged.issued_at_ms = unix_millis();
        forged.sent_at_ms = forged.issued_at_ms;
        self.publish_signed(id, forged, GossipMessage::Assignment).await;
    }
}
