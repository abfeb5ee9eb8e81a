//! Deliberate misbehaviour for testing a federation's defenses (the `misbehave` setting): a node
//! so configured sends deltas that an honest aggregator must refuse (forged), validly signed but
//! poisoned ones that only a robust strategy withstands, or tries to take rounds over; or it
//! suffers a fault (a slow disk).

use crate::engine::Engine;
use fedmesh_protocol::envelope::Signed;
use fedmesh_protocol::identity::Identity;
use fedmesh_protocol::ids::{ContentHash, JobId, MemberId, Round};
use fedmesh_protocol::message::{
    AggregateReady, Assignment, EvalMetrics, GossipMessage, ModelDelta, Request, RoundOpen,
    unix_millis,
};

/// `forged-deltas`: before each honest delta, the same update signed by a key that is not a
/// member, one for the wrong round and one on the wrong base model.
pub const FORGED_DELTAS: &str = "forged-deltas";

/// `sign-flip`: sends its update negated and scaled by 10 instead of the honest one.
pub const SIGN_FLIP: &str = "sign-flip";

/// `noise`: sends Gaussian noise (standard deviation 1 per parameter) instead of its update.
pub const NOISE: &str = "noise";

/// `hijack-rounds`: whenever another member opens a round, opens it too and announces a made-up
/// model for it, as a member trying to take the federation's model over would.
pub const HIJACK_ROUNDS: &str = "hijack-rounds";

/// `forge-assignments`: in an orchestrated job, answers each of the coordinator's assignments
/// with one of its own (itself the aggregator of every slot), signed by its own key.
pub const FORGE_ASSIGNMENTS: &str = "forge-assignments";

/// `withhold-results`: announces the result of a round it aggregates to nobody, at the close or
/// later, as an aggregator killed right after closing a round would (it still answers a member
/// that asks for it).
pub const WITHHOLD_RESULTS: &str = "withhold-results";

/// `slow-disk`: a fault rather than an attack: every large round model (a large frame's size or
/// more) this node makes and stores takes `SLOW_DISK_DELAY` longer to write, as on a slow or
/// overloaded disk. It shows that nothing else waits behind a job's heavy work.
pub const SLOW_DISK: &str = "slow-disk";

/// How much longer `slow-disk` makes a large model's write.
pub const SLOW_DISK_DELAY: std::time::Duration = std::time::Duration::from_secs(4);

/// Every kind of misbehaviour the setting accepts.
pub const KINDS: &[&str] = &[
    FORGED_DELTAS,
    SIGN_FLIP,
    NOISE,
    HIJACK_ROUNDS,
    FORGE_ASSIGNMENTS,
    WITHHOLD_RESULTS,
    SLOW_DISK,
];

/// What a node misbehaving on purpose does to the updates it sends (a copy of its settings,
/// for the blocking task that makes them).
#[derive(Debug, Clone, Copy, Default)]
pub struct Misbehaviour {
    sign_flip: bool,
    noise: bool,
    forged_deltas: bool,
}

impl Misbehaviour {
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
    pub(super) fn misbehaves(&self, kind: &str) -> bool {
        self.config.misbehave.iter().any(|configured| configured == kind)
    }

    /// What this node does to the updates it sends.
    pub(super) fn misbehaviour(&self) -> Misbehaviour {
        Misbehaviour {
            sign_flip: self.misbehaves(SIGN_FLIP),
            noise: self.misbehaves(NOISE),
            forged_deltas: self.misbehaves(FORGED_DELTAS),
        }
    }

    /// Answers another member's opening of a round with a competing opening and a made-up
    /// model, if this node is configured to.
    pub(super) async fn maybe_hijack(&mut self, id: JobId, opener: MemberId, open: &RoundOpen) {
        if !self.misbehaves(HIJACK_ROUNDS) || opener == self.identity.member_id() {
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
        };
        self.publish_signed(id, made_up, GossipMessage::AggregateReady).await;
    }

    /// Publishes an assignment of its own for the coordinator's `honest` one, if this node is
    /// configured to.
    pub(super) async fn maybe_forge_assignment(&mut self, id: JobId, honest: &Assignment) {
        if !self.misbehaves(FORGE_ASSIGNMENTS) {
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
