//! gossipsub peer scoring: what a peer's messages earn or cost it. A peer whose messages the node
//! reports as `Reject` (forged, malformed, or sent by someone with no right to) collects invalid
//! deliveries on the topic; a few put it below the gossip and publish thresholds, a few more
//! graylist it (everything it sends is dropped unread) until the count decays. The rest of
//! gossipsub's score (mesh delivery rates, IP colocation) is off: job topics carry a few messages
//! a round, so a quiet honest peer would look like a slacking one, and organizations behind one
//! NAT (or a testnet on loopback) share an address.

use libp2p::gossipsub::{
    self, PeerScoreParams, PeerScoreThresholds, TopicScoreParams, score_parameter_decay,
};
use std::time::Duration;

/// What one invalid message costs, before it is squared: the penalty is the square of the count
/// times this, so 2 put a peer below [`GOSSIP_THRESHOLD`] (-16), 4 below [`PUBLISH_THRESHOLD`]
/// (-64) and 5 below [`GRAYLIST_THRESHOLD`] (-100, -90 with the most good score), however much good score it collected first
/// (at most [`TOPIC_SCORE_CAP`]).
const INVALID_MESSAGE_WEIGHT: f64 = -4.0;
/// How long an invalid message counts: about an hour until the count is near zero, so a graylisted
/// peer stays so for the rest of a typical job rather than for seconds.
const INVALID_MESSAGE_MEMORY: Duration = Duration::from_secs(60 * 60);
/// Below this, the node gossips no message ids to a peer.
const GOSSIP_THRESHOLD: f64 = -10.0;
/// Below this, the node publishes nothing to a peer.
const PUBLISH_THRESHOLD: f64 = -50.0;
/// Below this, the node ignores everything a peer sends over gossipsub.
pub const GRAYLIST_THRESHOLD: f64 = -80.0;
/// The most good score a peer can hold across topics: it cannot bank enough to offset more than
/// a few invalid messages.
const TOPIC_SCORE_CAP: f64 = 10.0;
/// Good score for a peer's first deliveries of valid messages: one point each, at most
/// [`FIRST_DELIVERIES_CAP`], forgotten over ten minutes.
const FIRST_DELIVERIES_CAP: f64 = 10.0;
const FIRST_DELIVERIES_MEMORY: Duration = Duration::from_secs(10 * 60);
/// Protocol misbehaviour (a graft during backoff, a broken IWANT promise) above this many counts
/// is penalized: a few happen to honest peers on a loaded machine.
const BEHAVIOUR_PENALTY_THRESHOLD: f64 = 6.0;

/// The node-wide score parameters and thresholds.
pub fn peer_score() -> (PeerScoreParams, PeerScoreThresholds) {
    let params = PeerScoreParams {
        topic_score_cap: TOPIC_SCORE_CAP,
        app_specific_weight: 0.0,
        ip_colocation_factor_weight: 0.0,
        behaviour_penalty_threshold: BEHAVIOUR_PENALTY_THRESHOLD,
        slow_peer_weight: 0.0,
        ..PeerScoreParams::default()
    };
    let thresholds = PeerScoreThresholds {
        gossip_threshold: GOSSIP_THRESHOLD,
        publish_threshold: PUBLISH_THRESHOLD,
        graylist_threshold: GRAYLIST_THRESHOLD,
        ..PeerScoreThresholds::default()
    };
    (params, thresholds)
}

/// The score parameters of a topic the node subscribes to (the job announcements' and each job's):
/// invalid messages cost, first deliveries earn a little, nothing else counts.
pub fn topic_params() -> TopicScoreParams {
    TopicScoreParams {
        topic_weight: 1.0,
        time_in_mesh_weight: 0.0,
        first_message_deliveries_weight: 1.0,
        first_message_deliveries_decay: score_parameter_decay(FIRST_DELIVERIES_MEMORY),
        first_message_deliveries_cap: FIRST_DELIVERIES_CAP,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: INVALID_MESSAGE_WEIGHT,
        invalid_message_deliveries_decay: score_parameter_decay(INVALID_MESSAGE_MEMORY),
        ..TopicScoreParams::default()
    }
}

/// Turns scoring on for `gossipsub`.
pub fn enable(gossipsub: &mut gossipsub::Behaviour) -> Result<(), String> {
    let (params, thresholds) = peer_score();
    gossipsub.with_peer_score(params, thresholds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parameters_are_valid_and_five_invalid_messages_graylist() {
        let (params, thresholds) = peer_score();
        assert_eq!(params.validate(), Ok(()));
        assert_eq!(thresholds.validate(), Ok(()));
        assert_eq!(topic_params().validate(), Ok(()));
        let penalty = |count: f64| count * count * INVALID_MESSAGE_WEIGHT + TOPIC_SCORE_CAP;
        assert!(penalty(4.0) > GRAYLIST_THRESHOLD);
        assert!(penalty(5.0) < GRAYLIST_THRESHOLD);
    }
}
