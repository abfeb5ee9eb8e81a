//! Results a member missed: a round's aggregator may die right after it announces the round's
//! result, which then reaches only some members. One that follows the round past its deadline
//! asks a few members for the result (those whose heartbeats are past the round first) before it
//! gives up on the aggregator, and takes it as it would from gossip; every member serves the
//! result it took. Otherwise those that missed it would run the round again with another
//! aggregator, and the job's members would for a while hold two results of one round.

use crate::engine::requests::ask;
use crate::engine::{Engine, Internal};
use crate::identity::peer_of_member;
use fedmesh_protocol::envelope::Signed;
use fedmesh_protocol::ids::{JobId, MemberId, Round};
use fedmesh_protocol::message::{AggregateReady, GossipMessage, Request, Response};
use rand::seq::SliceRandom;

/// How many members a member that missed a result asks for it.
const MEMBERS_ASKED: usize = 3;

impl Engine {
    /// Keeps the newest result taken from gossip, to pass on.
    pub(super) fn keep_taken_result(&mut self, id: JobId, signed: Signed<AggregateReady>) {
        let Some(run) = self.runs.get_mut(&id) else { return };
        let round = signed.unverified_body().round;
        let taken = run.rounds.get(&round).and_then(|record| record.model);
        let newer =
            run.taken_result.as_ref().is_none_or(|kept| kept.unverified_body().round < round);
        if newer && taken == Some(signed.unverified_body().model) {
            run.taken_result = Some(signed);
        }
    }

    /// The signed result of `round` of job `id`, if this node has it: its own announcement (signed
    /// again) if it aggregated the round, else the one it took.
    pub(in crate::engine) fn round_result(&self, id: JobId, round: Round) -> Response {
        let missing =
            || Response::Refused { reason: format!("no result of round {round} of job {id} here") };
        let Some(run) = self.runs.get(&id) else { return missing() };
        if let Some(ready) = run.announced.as_ref().filter(|ready| ready.round == round) {
            return match Signed::sign(&self.identity, ready.clone()) {
                Ok(signed) => Response::RoundResult(signed),
                Err(error) => {
                    tracing::error!(job = %id, %error, "cannot sign a round's result");
                    missing()
                }
            };
        }
        match run.taken_result.as_ref().filter(|signed| signed.unverified_body().round == round) {
            Some(signed) => Response::RoundResult(signed.clone()),
            None => missing(),
        }
    }

    /// Past the deadline of a round it follows and does not lead, a member asks for the round's
    /// result once per opening (see the module doc).
    pub(super) fn ask_for_missed_result(&mut self, id: JobId, now: u64) {
        let me = self.identity.member_id();
        let Some(run) = self.runs.get_mut(&id) else { return };
        let Some(open) = run.open.as_ref() else { return };
        let opening = (open.round, open.opened_at_ms);
        if now <= open.deadline_ms || run.leading.is_some() || run.result_asked == Some(opening) {
            return;
        }
        run.result_asked = Some(opening);
        let live = run.state.members.live_at(now);
        let mut others: Vec<MemberId> = live.iter().map(|m| m.id).filter(|m| *m != me).collect();
        others.shuffle(&mut rand::rng());
        // Those heard to be past the round hold its result: they go first.
        others.sort_by_key(|m| run.rounds_heard.get(m).is_none_or(|heard| *heard <= open.round));
        others.truncate(MEMBERS_ASKED);
        let (network, internal, round) = (self.network.clone(), self.internal.clone(), open.round);
        tokio::spawn(async move {
            for member in others {
                let Ok(peer) = peer_of_member(&member) else { continue };
                if let Ok(Response::RoundResult(signed)) =
                    ask(&network, peer, &Request::RoundResult { job: id, round }).await
                {
                    let _ = internal.send(Internal::MissedResult(signed)).await;
                    return;
                }
            }
        });
    }

    /// A missed result another member passed on: judged like the gossip message.
    pub(in crate::engine) async fn on_missed_result(&mut self, signed: Signed<AggregateReady>) {
        let round = signed.unverified_body().round;
        tracing::info!(round, "took a round's result from a member after missing its announcement");
        if let Err(refused) = self.on_job_gossip(GossipMessage::AggregateReady(signed)).await {
            tracing::warn!(round, reason = refused.reason, detail = %refused.detail, "refused a passed-on result");
        }
    }
}
