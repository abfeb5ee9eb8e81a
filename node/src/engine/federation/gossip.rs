//! A job's gossip: verifying each message on the job's topic and acting on it (joins, leaves,
//! heartbeats, round openings, aggregates, evaluations), holding round messages that this node's
//! view of the membership cannot accept yet.

use super::{Pending, Refused, store};
use crate::engine::Engine;
use fedmesh_protocol::envelope::{Denied, Scope, Scoped, Signed, SignedBody, Verified};
use fedmesh_protocol::ids::{JobId, MemberId};
use fedmesh_protocol::message::{EvalReport, GossipMessage, Join, unix_millis};

impl Engine {
    /// Handles a gossip message on a job's topic: verifies it, then acts on it.
    pub(in crate::engine) async fn on_job_gossip(
        &mut self,
        message: GossipMessage,
    ) -> Result<(), Refused> {
        let Some(id) = message.claimed_job() else {
            return Err(Refused { reason: "unexpected_kind", detail: "not a job message".into() });
        };
        if self.coordinated.contains_key(&id) {
            return self.on_coordinated_gossip(id, message).await;
        }
        if !self.runs.contains_key(&id) {
            return Err(Refused { reason: "not_joined", detail: format!("not in job {id}") });
        }
        let scope = Scope::job(id);
        let now = unix_millis();
        match message {
            GossipMessage::Join(m) => {
                let join = verify(m, |_, body| scope.admits(body))?.into_body();
                self.on_join(id, join, now).await;
            }
            GossipMessage::Leave(m) => {
                let leave = verify(m, |_, body| scope.admits(body))?.into_body();
                if let Some(run) = self.runs.get_mut(&id) {
                    run.state.members.leave(&leave.member);
                    tracing::info!(job = %id, member = %leave.member, reason = %leave.reason, "member left");
                }
            }
            GossipMessage::Heartbeat(m) => {
                let heartbeat = verify(m, |_, body| scope.admits(body))?.into_body();
                self.holders.add(heartbeat.model, heartbeat.member);
                if let Some(run) = self.runs.get_mut(&id) {
                    run.state.members.seen(&heartbeat.member, now);
                    run.rounds_heard.insert(heartbeat.member, heartbeat.round);
                    if run.spec.coordinator == Some(heartbeat.member) {
                        run.coordinator_seen_ms = now;
                    }
                }
                self.announce_again(id, heartbeat.round, now).await;
            }
            GossipMessage::RoundOpen(m) => {
                let open = verify(m, |_, body| scope.admits(body))?;
                if self.runs.get(&id).is_some_and(|run| run.orchestrated(now)) {
                    return Err(Refused {
                        reason: "orchestrated",
                        detail: "the job's coordinator opens its rounds with assignments".into(),
                    });
                }
                self.on_member_round_message(id, open.signer(), Pending::Open(open.into_body()))
                    .await?;
            }
            GossipMessage::AggregateReady(m) => {
                let signed = m.clone();
                let ready = verify(m, |_, body| scope.admits(body))?;
                self.on_member_round_message(id, ready.signer(), Pending::Ready(ready.into_body()))
                    .await?;
                self.keep_taken_result(id, signed);
            }
            GossipMessage::EvalReport(m) => {
                let report = verify(m, |_, body| scope.admits(body))?.into_body();
                self.on_eval_report(id, report);
            }
            GossipMessage::Assignment(m) => {
                let coordinator = self.runs.get(&id).and_then(|run| run.spec.coordinator);
                let assignment = verify_from(m, coordinator, &scope)?;
                let signer = assignment.signer();
                self.on_member_round_message(id, signer, Pending::Assign(assignment.into_body()))
                    .await?;
            }
            GossipMessage::Stop(m) => {
                let Some(run) = self.runs.get(&id) else { return Ok(()) };
                let controller = run.spec.coordinator.unwrap_or(run.spec.owner);
                let stop = verify_from(m, Some(controller), &scope)?;
                self.on_stop(id, stop.into_body());
            }
            GossipMessage::Announce(_) => {
                return Err(Refused {
                    reason: "unexpected_kind",
                    detail: "not expected on a job topic".into(),
                });
            }
        }
        Ok(())
    }

    /// Acts on a round message from `signer` if it is a member. Otherwise the message waits for
    /// the signer's join (gossip may bring a round's opening before its aggregator's join).
    async fn on_member_round_message(
        &mut self,
        id: JobId,
        signer: MemberId,
        message: Pending,
    ) -> Result<(), Refused> {
        let me = self.identity.member_id();
        let Some(run) = self.runs.get_mut(&id) else { return Ok(()) };
        // An assignment is signed by the coordinator, which is no member.
        let from_coordinator = matches!(message, Pending::Assign(_));
        if !from_coordinator && !run.state.members.contains(&signer) {
            run.hold(signer, message);
            return Err(Refused {
                reason: "not_a_member_yet",
                detail: format!("{signer} is not a member (yet); kept until its join arrives"),
            });
        }
        let unknown = match &message {
            Pending::Open(open) => run.named_members(open).err(),
            Pending::Assign(assignment) => run.names_unknown_member(assignment),
            Pending::Ready(_) => None,
        };
        if let Some(unknown) = unknown {
            run.hold(signer, message);
            return Err(Refused {
                reason: "unknown_member",
                detail: format!("the opening names {unknown}, whose join has not arrived; kept"),
            });
        }
        let round = match &message {
            Pending::Open(open) => open.round,
            Pending::Ready(ready) => ready.round,
            Pending::Assign(assignment) => assignment.round,
        };
        // Only the round's aggregator may open it or announce its model: the member this node's
        // own plan elects, or the one whose opening it follows. A member whose view differs for
        // a moment is refused and heard again when it re-opens the round at its deadline.
        let followed = run.open.as_ref().is_some_and(|o| o.round == round && o.opener == signer);
        let elected = run.is_elected(round, &signer, unix_millis());
        let allowed = match &message {
            Pending::Open(_) => elected,
            Pending::Ready(_) if run.spec.coordinator.is_some() => {
                followed || run.assigned_leader(round) == Some(signer) || elected
            }
            Pending::Ready(ready) => elected || followed || run.vouches_for(ready, &signer, &me),
            Pending::Assign(_) => true, // verified as the coordinator's
        };
        if !allowed && round > run.state.completed_round {
            // Kept: a join this node has not heard yet may make the signer the aggregator.
            run.hold(signer, message);
            return Err(Refused {
                reason: "not_the_aggregator",
                detail: format!("{signer} is not the aggregator of round {round} in this view"),
            });
        }
        match message {
            Pending::Open(open) => {
                self.maybe_hijack(id, signer, &open).await;
                self.on_round_open(id, signer, open).await
            }
            Pending::Ready(ready) => self.on_aggregate_ready(id, signer, ready).await,
            Pending::Assign(assignment) => self.on_assignment(id, assignment).await,
        }
        Ok(())
    }

    fn on_eval_report(&mut self, id: JobId, report: EvalReport) {
        let Some(run) = self.runs.get_mut(&id) else { return };
        if !run.state.members.contains(&report.member) {
            return;
        }
        self.holders.add(report.model, report.member);
        let record = run.rounds.get_mut(&report.round);
        if let Some(record) = record.filter(|r| r.model == Some(report.model)) {
            record.evaluations.insert(report.member, report.metrics);
            let _ = store::save_round(&self.store, run, report.round);
        }
    }

    async fn on_join(&mut self, id: JobId, join: Join, now: u64) {
        let Some(run) = self.runs.get_mut(&id) else { return };
        if !run.spec.participation.allow.is_empty()
            && !run.spec.participation.allow.contains(&join.member)
        {
            return tracing::info!(job = %id, member = %join.member, "join refused: not on the job's allow-list");
        }
        if run.state.members.join(&join, now) {
            tracing::info!(job = %id, member = %join.member, group = %join.group, "member joined");
            let _ = store::save_state(&self.store, run);
            // Held round messages are judged again with the new membership.
            let waiting = std::mem::take(&mut run.pending);
            // Tell the newcomer about us now rather than at the next periodic join.
            if now.saturating_sub(run.last_join_ms) > 500 {
                self.publish_join(id).await;
            }
            for (signer, message) in waiting {
                let _ = Box::pin(self.on_member_round_message(id, signer, message)).await;
            }
        }
    }
}

/// Verifies a signed message with `may_send`, as a refusal on failure.
pub(in crate::engine) fn verify<T: SignedBody>(
    message: Signed<T>,
    may_send: impl FnOnce(&MemberId, &T) -> Result<(), Denied>,
) -> Result<Verified<T>, Refused> {
    message.verify(may_send).map_err(|e| Refused { reason: "bad_message", detail: e.to_string() })
}

/// Verifies a signed message that only `allowed` (the job's coordinator, or its owner) may
/// send: from anyone else it is refused as `not_the_coordinator`, and counted.
fn verify_from<T: SignedBody + Scoped>(
    message: Signed<T>,
    allowed: Option<MemberId>,
    scope: &Scope,
) -> Result<Verified<T>, Refused> {
    let Some(allowed) = allowed else {
        return Err(Refused {
            reason: "not_orchestrated",
            detail: "the job has no coordinator".into(),
        });
    };
    let verified = verify(message, |_, body| scope.admits(body))?;
    if verified.signer() != allowed {
        return Err(Refused {
            reason: "not_the_coordinator",
            detail: format!(
                "signed by {}, not by the job's coordinator {allowed}",
                verified.signer()
            ),
        });
    }
    Ok(verified)
}
