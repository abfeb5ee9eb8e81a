//! The job's gossip as a member judges it: joins (with the job's allow-list), leaves,
//! heartbeats (the coordinator's too), evaluation reports, a stop, and who may open a round or
//! announce its result, holding round messages (and the coordinator's assignments) its view of
//! the membership cannot judge yet.

use super::{Effect, Gossip, Held, Level, MAX_HELD, Member, Phase, Text, Waiting, names_exactly};
use super::{Reason, Refusal};
use crate::membership::{Beat, Refused, Replayed, SignOfLife};
use crate::records::RunStatus;
use fedmesh_protocol::ids::{ContentHash, MemberId, Round};
use fedmesh_protocol::message::{AggregateReady, EvalReport, Join, Leave, RoundOpen};
use fedmesh_topologies::MemberInfo;
use std::collections::BTreeSet;
use std::sync::Arc;

/// How many members' evaluations of a round a member keeps: four times the reporting sample.
const MAX_EVALUATIONS: usize = 4 * super::results::EVAL_REPORTERS;
/// How long after announcing a round's result it may go out again for a member that missed it.
const ANNOUNCE_AGAIN_MS: u64 = 5_000;
/// How many of the members a result names must be heard past its round for it to be taken
/// though it leaves out live members (see `Member::vouches_for`).
const WITNESSES: usize = 3;

/// How a join reached this member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Heard {
    /// On the job's topic: its member's own announcement, to every member.
    Topic,
    /// Sent to this member alone by a member that does not know it.
    Asked,
    /// Sent to this member alone as an answer.
    Answer,
}

impl Member {
    pub(super) fn on_gossip(&mut self, signer: MemberId, message: Gossip, now: u64) {
        if !self.is_active() {
            // A member that completed the job still sends its last result again to a member
            // whose heartbeat shows it missed it, answers the join of a member that joins (again)
            // after the end so that it hears those heartbeats (and takes in leaves, so a member
            // that leaves and joins again is answered as one that joins), and records the
            // others' evaluations of the last model (most arrive after it completed).
            let known = self.state.members.contains(&signer) || self.is_coordinator(&signer);
            match (&self.state.status, message) {
                (RunStatus::Completed, Gossip::Join(join)) if join.member == signer => {
                    self.on_join(join, Heard::Topic, now)
                }
                (RunStatus::Completed, Gossip::Leave(leave)) if leave.member == signer => {
                    self.on_leave(&leave, now)
                }
                (RunStatus::Completed, Gossip::Heartbeat(beat))
                    if beat.member == signer && known =>
                {
                    self.announce_again(beat.round, now);
                    self.answer_straggler(beat.round, now);
                }
                (RunStatus::Completed, Gossip::Eval(report)) if report.member == signer => {
                    self.on_eval(report, now)
                }
                (RunStatus::Completed, Gossip::FraudProof(accusation)) => {
                    // The last round's model may be the lie: it is run again (`roll_back`).
                    self.on_accusation(signer, accusation, now)
                }
                _ => {}
            }
            return;
        }
        match message {
            Gossip::Join(join) if join.member == signer => self.on_join(join, Heard::Topic, now),
            Gossip::Leave(leave) if leave.member == signer => self.on_leave(&leave, now),
            Gossip::Heartbeat(beat) if beat.member == signer && self.is_coordinator(&signer) => {
                // The coordinator is no member: its heartbeat says it is there, and the round it
                // names tells the last round's aggregator whether it missed the result.
                self.coordinator_seen_ms = now;
                self.announce_again(beat.round, now);
            }
            Gossip::Heartbeat(beat) if beat.member == signer => {
                // Only a member's word counts, and never for a round past the job's last one.
                if beat.round > self.last_round() + 1 {
                    let detail = format!("{signer}'s heartbeat names round {}", beat.round);
                    return self.reject(Reason::PastLastRound, detail);
                }
                let said = (beat.round, beat.model);
                match self.state.members.heartbeat(&beat.member, said, beat.sent_at_ms, now) {
                    Ok(known @ (Beat::First | Beat::Again)) => {
                        if known == Beat::First {
                            // A newcomer proven: rounds are planned with it from now on.
                            self.view_changed_ms = now;
                        }
                        self.heartbeats_heard = self.heartbeats_heard.saturating_add(1);
                        if !self.is_condemned(&beat.model) {
                            // (A member still on a condemned model is not ahead: it rolls back.)
                            self.furthest_heard = self.furthest_heard.max(beat.round);
                        }
                        self.announce_again(beat.round, now);
                        self.judge_vouched(beat.member, beat.model, now);
                    }
                    // A member whose join this member missed: it asks for it.
                    Ok(Beat::Unknown) => _ = self.ask_for_join(beat.member, now),
                    Err(replayed) => self.refuse_replay("heartbeat", signer, replayed),
                }
            }
            Gossip::Eval(report) if report.member == signer => self.on_eval(report, now),
            Gossip::Open(open) => self.judge(signer, Held::Open(open), now),
            Gossip::Result(ready) if !self.names_state_as_job_needs(&ready) => {
                let text = format!(
                    "{signer}'s result of round {}: an optimizer state only a job with a server \
                     optimizer names, and always",
                    ready.round
                );
                self.reject(Reason::BadMessage, text)
            }
            Gossip::Result(ready) => self.judge(signer, Held::Result(ready), now),
            Gossip::Assign(assignment) => self.on_assignment_gossip(signer, assignment, now),
            Gossip::FraudProof(accusation) => self.on_accusation(signer, accusation, now),
            Gossip::Stop(stop) => {
                let controller = self.setup.spec.coordinator.unwrap_or(self.setup.spec.owner);
                if signer != controller {
                    let role =
                        if self.setup.spec.coordinator.is_some() { "coordinator" } else { "owner" };
                    let text = format!("a stop signed by {signer}, not by the job's {role}");
                    return self.reject(Reason::NotTheCoordinator, text);
                }
                self.log(Level::Warn, 0, format!("the job was stopped: {}", stop.reason));
                self.end(RunStatus::Stopped(stop.reason));
            }
            _ => self.reject(
                Reason::WrongSigner,
                format!("{signer} signed a message for another member"),
            ),
        }
    }

    /// A member's signed leave: no round waits for it from now on.
    fn on_leave(&mut self, leave: &Leave, now: u64) {
        match self.state.members.leave(&leave.member, leave.sent_at_ms) {
            Ok(true) => {
                self.view_changed_ms = now;
                self.log(Level::Info, 0, format!("{} left: {}", leave.member, leave.reason));
                self.persist_lazily();
                self.round_without(&leave.member, now);
            }
            Ok(false) => {}
            Err(replayed) => self.refuse_replay("leave", leave.member, replayed),
        }
    }

    /// A join sent to this member alone (an answer, or a question: answered with its own, also
    /// by a member that completed the job, so one joining after the end learns of it).
    pub(super) fn on_join_sent(&mut self, signer: MemberId, join: Join, asks: bool, now: u64) {
        let answers = self.is_active() || (asks && self.state.status == RunStatus::Completed);
        if join.member != signer || join.job != self.setup.job || !answers {
            return;
        }
        self.on_join(join, if asks { Heard::Asked } else { Heard::Answer }, now);
    }

    /// A member's join, heard on the topic or sent to this member alone.
    ///
    /// A newcomer must hear of every member that joined before it. Those that hear its join
    /// answer it with their own, sent to it alone: the topic would carry each answer to every
    /// member, when only the newcomer lacks it. A join sent before this member's own last join
    /// went out needs no answer: its member was running then and heard that one (or, if that
    /// copy was lost, asks for it when it hears from this member; `ask_for_join`).
    fn on_join(&mut self, join: Join, heard: Heard, now: u64) {
        if let Some(why) = crate::admission::refusal(&self.setup.spec, &self.setup.job, &join) {
            return self.reject(Reason::NotAdmitted, why);
        }
        let member = join.member;
        let new = match self.state.members.join(&join, now) {
            Ok(new) => new,
            Err(Refused::Replayed(replayed)) => {
                return self.refuse_replay("join", member, replayed);
            }
            Err(Refused::Crowded { room }) => {
                let detail = format!("{member}'s join: {room} newcomers wait to be proven already");
                return self.reject(Reason::Crowded, detail);
            }
        };
        let asked = self.asked.remove(&member).is_some();
        let answer = match heard {
            Heard::Asked => true,
            Heard::Topic => new && join.sent_at_ms >= self.last_join_ms,
            Heard::Answer => false,
        };
        if answer {
            self.send_join(member, false, now);
        }
        if !new {
            return;
        }
        let text = Text::Joined { member, group: join.group.clone() };
        self.log(Level::Info, 0, text);
        self.persist_lazily();
        self.strike_off(&member, asked, now);
    }

    /// Refuses a message sent no later than the newest of its kind heard from its member.
    fn refuse_replay(&mut self, kind: &str, signer: MemberId, replayed: Replayed) {
        self.reject(Reason::Replayed, replay_detail(kind, &signer, replayed));
    }

    /// The refusal `member`'s join, heartbeat or leave sent at `sent_at_ms` meets as a replay,
    /// if it is one, recording nothing: asked before its signature is verified, which costs far
    /// more (see [`crate::membership::Membership::replay_of`]).
    pub fn replay_of(
        &self,
        kind: SignOfLife,
        member: &MemberId,
        sent_at_ms: u64,
    ) -> Option<Refusal> {
        let replayed = self.state.members.replay_of(kind, member, sent_at_ms)?;
        Some(Refusal::new(Reason::Replayed, replay_detail(kind.name(), member, replayed)))
    }

    /// Judges the held round messages again.
    pub(super) fn judge_held(&mut self, now: u64) {
        for Waiting { signer, held, .. } in std::mem::take(&mut self.held) {
            self.judge(signer, held, now);
        }
    }

    /// Strikes a member newly heard off what each held message waits for. A message that waited
    /// for it and now waits for no one is judged at once; one that waited for no one (its
    /// signer did not aggregate in this member's view) is judged again with the changed view,
    /// unless this join answered a question and more answers are awaited.
    fn strike_off(&mut self, member: &MemberId, asked: bool, now: u64) {
        let mut completed = false;
        for waiting in &mut self.held {
            completed |= waiting.missing.remove(member) && waiting.missing.is_empty();
        }
        let view_bound = self.held.iter().any(|w| w.missing.is_empty());
        if completed || (view_bound && (!asked || !self.awaits_answers(now))) {
            self.judge_unblocked(now);
        }
    }

    /// `holder` was heard to hold `model`: a held result announcing it, signed by another
    /// member, may be vouched for now (`vouched_ahead`), and is judged again at once. (It waited
    /// for the next join, and a member that joined again far behind waited `ASK_AGAIN_MS` to
    /// ask for the newest result again while a round planned with it waited for it.)
    fn judge_vouched(&mut self, holder: MemberId, model: ContentHash, now: u64) {
        let mut vouched = false;
        for waiting in self.held.iter_mut() {
            let Held::Result(ready) = &waiting.held else { continue };
            // A result waiting only for its signer's join is judged again too: the members
            // holding its model may speak for a signer that left unheard (`missed_members`).
            let for_signer_only = waiting.missing.iter().all(|m| *m == waiting.signer);
            if ready.model == model && waiting.signer != holder && for_signer_only {
                waiting.missing.clear();
                vouched = true;
            }
        }
        if vouched {
            self.judge_unblocked(now);
        }
    }

    /// Judges again the held round messages that wait for no member's join.
    pub(super) fn judge_unblocked(&mut self, now: u64) {
        let (ready, waiting) = std::mem::take(&mut self.held)
            .into_iter()
            .partition::<Vec<_>, _>(|w| w.missing.is_empty());
        self.held = waiting.into();
        for Waiting { signer, held, .. } in ready {
            self.judge(signer, held, now);
        }
    }

    /// A member's evaluation of a round's model. It weighs in the round's metrics with at most
    /// the samples its member declared at join (a report claiming more would make the job's
    /// accuracy its own).
    fn on_eval(&mut self, mut report: EvalReport, now: u64) {
        if !self.state.members.contains(&report.member) {
            return;
        }
        report.metrics.samples = report.metrics.samples.min(self.weight_bound(&report.member));
        self.record_holder(report.member, report.round, report.model);
        self.judge_vouched(report.member, report.model, now);
        if report.model == self.state.model && matches!(self.phase, Phase::Waiting) {
            self.wake_at(now); // a leader waiting for its model to spread opens now
        }
        let taken = self.rounds.get(&report.round).and_then(|record| record.model);
        if taken.is_none() && report.round > self.state.completed_round {
            // Heard before this member took the round's result (it is still fetching the
            // model, or missed the announcement): kept until it does (`adopt`).
            if self.early_evals.len() >= MAX_EVALUATIONS {
                self.early_evals.pop_front();
            }
            return self.early_evals.push_back(report);
        }
        self.record_evaluation(report);
    }

    /// Records a member's evaluation of a round's model, if it is the model this member took.
    /// At most a bounded number are kept per round: members outside the reporting sample (or
    /// many at once) cannot grow every member's records without bound.
    pub(super) fn record_evaluation(&mut self, report: EvalReport) {
        let Some(record) = self.rounds.get_mut(&report.round) else { return };
        let room = record.evaluations.len() < MAX_EVALUATIONS
            || record.evaluations.contains_key(&report.member);
        if record.model == Some(report.model) && room {
            record.evaluations.insert(report.member, report.metrics);
            self.persist_lazily();
        }
    }

    /// Keeps a round message to judge again once the members it waits for joined, or after
    /// the next join if it waits for none (the oldest goes beyond `MAX_HELD`).
    fn hold(&mut self, waiting: Waiting) {
        if self.held.len() >= MAX_HELD {
            self.held.pop_front();
        }
        self.held.push_back(waiting);
    }

    /// Acts on a round's opening or result if its signer may send it: only the round's
    /// aggregator may, as this member's live plan elects it, or as the opening it follows names
    /// it; a result may also come from the aggregator of the plan over the members it names,
    /// when that leaves out no member live here (a member that missed the round takes it so).
    /// In an orchestrated job the coordinator's assignment names the aggregator instead, and
    /// members' own openings are refused while the coordinator is there.
    pub(super) fn judge(&mut self, signer: MemberId, held: Held, now: u64) {
        if let Held::Open(_) = &held
            && self.orchestrated(now)
        {
            let text = format!("{signer}'s opening: the job's coordinator assigns its rounds");
            return self.reject(Reason::Orchestrated, text);
        }
        if let Some((reason, detail)) = self.convicted(&signer, &held) {
            return self.reject(reason, detail);
        }
        let missing = self.missed_members(&signer, &held, now);
        if !missing.is_empty() {
            // Every member it names that this member missed is asked for its join.
            for id in &missing {
                self.ask_for_join(*id, now);
            }
            return self.hold(Waiting { signer, held, missing });
        }
        let round = match &held {
            Held::Open(open) => open.round,
            Held::Result(ready) => ready.round,
            Held::Assign(assignment) => assignment.round,
        };
        if round <= self.state.completed_round {
            // A round this member completed: nothing of it is followed or taken now, but the
            // result of the round it holds the model of, if it came after that model.
            if let Held::Result(ready) = held {
                self.take_late_result(signer, ready, now);
            }
            return;
        }
        if round > self.last_round() {
            let last = self.last_round();
            let detail =
                format!("{signer}'s message for round {round}, past the job's last ({last})");
            return self.reject(Reason::PastLastRound, detail);
        }
        let followed = self.phase.open().is_some_and(|o| o.round == round && o.opener == signer);
        let allowed = match &held {
            Held::Open(_) => self.elected_leader(round, now) == Some(signer),
            Held::Result(_) if self.setup.spec.coordinator.is_some() => {
                followed
                    || self.assigned_leader(round) == Some(signer)
                    || self.elected_leader(round, now) == Some(signer)
            }
            Held::Result(ready) => {
                followed
                    || self.elected_leader(round, now) == Some(signer)
                    || self.vouches_for(ready, &signer, now)
            }
            Held::Assign(_) => true, // signed by the coordinator (`on_assignment_gossip`)
        };
        if !allowed {
            // A join this member has not heard yet may make the signer the aggregator.
            let detail = format!("{signer} does not aggregate round {round} here");
            self.reject(Reason::NotTheAggregator, detail);
            return self.hold(Waiting { signer, held, missing: BTreeSet::new() });
        }
        if let Held::Open(open) = &held
            && let Some(newest_ms) = self.newer_opening_followed(open)
        {
            let replayed = Replayed { sent_at_ms: open.opened_at_ms, newest_ms };
            return self.refuse_replay("opening", signer, replayed);
        }
        if !self.continues(&held) && !self.vouched_ahead(&held, &signer, now) {
            let head = self.head().0;
            let detail = format!("{signer}'s round {round} does not build on round {head} here");
            self.reject(Reason::AheadOfRound, detail);
            self.catch_up(now);
            return self.hold(Waiting { signer, held, missing: BTreeSet::new() });
        }
        match held {
            Held::Open(open) => self.on_open(signer, open, now),
            Held::Result(ready) => self.take_result(signer, ready, now),
            Held::Assign(assignment) => self.on_assignment(assignment, now),
        }
    }

    /// Why a round message is refused for what a fraud proof showed: its signer was convicted,
    /// or it builds on (or announces) a condemned model.
    fn convicted(&self, signer: &MemberId, held: &Held) -> Option<(Reason, String)> {
        let (round, base, model) = match held {
            Held::Open(open) => (open.round, open.base_model, None),
            Held::Result(ready) => (ready.round, ready.base_model, Some(ready.model)),
            Held::Assign(_) => return None,
        };
        if self.is_excluded(signer) {
            let detail = format!("{signer}, convicted of a false result, sent round {round}");
            return Some((Reason::Excluded, detail));
        }
        let condemned = [Some(base), model].into_iter().flatten().find(|m| self.is_condemned(m));
        condemned.map(|model| {
            (Reason::CondemnedModel, format!("{signer}'s round {round} names condemned {model}"))
        })
    }

    /// The members a round message names whose joins this member has not heard, its signer
    /// among them (an assignment's is the coordinator, which is no member). An opening that
    /// names exactly the live members, as one made while every member agrees does, is
    /// recognised by one comparison with the kept live view: no lookup per member named.
    ///
    /// A result's signer unheard of is not waited for if the live members hold its model
    /// (`witnessed_holding`): it left before this member joined, so no one answers for its
    /// join, and a member joining again as a round's aggregator left waited for it until the
    /// round after, which was planned with this member and waited for it in turn.
    fn missed_members(&mut self, signer: &MemberId, held: &Held, now: u64) -> BTreeSet<MemberId> {
        let named: Vec<&MemberId> = match held {
            Held::Open(open) if names_exactly(&open.members, &self.live(now)) => vec![signer],
            Held::Open(open) => open.members.iter().chain([signer]).collect(),
            Held::Result(_) => vec![signer],
            Held::Assign(assignment) => assignment.roles.keys().collect(),
        };
        let members = &self.state.members;
        let missing: BTreeSet<MemberId> = named
            .into_iter()
            .filter(|id| !members.contains(id) && !members.has_left(id))
            .copied()
            .collect();
        match held {
            Held::Result(ready) if !missing.is_empty() => {
                if self.witnessed_holding(ready, signer, now) { BTreeSet::new() } else { missing }
            }
            _ => missing,
        }
    }

    /// Whether a result comes from the aggregator of the plan over the members it names, and
    /// leaves out no member this member sees live but itself, unless `WITNESSES` of the members
    /// it names (its signer aside) are heard past its round: then the round is over and the
    /// members left out missed it as this one did (cut off together by a partition, they
    /// would otherwise refuse each other's absence for ever).
    ///
    /// A result past the round after this member's (it missed the round before, so does not
    /// know whom that round vetted) is planned with the vetted members the result names: no
    /// weaker than the plan without vetting, and such a result is taken only if it builds on
    /// this member's newest or others hold its model (`judge`).
    ///
    /// A result naming a member this one never heard of (it left before this member joined,
    /// so its join is answered by no one) cannot be planned here: it is taken if the live
    /// members hold its model (`witnessed_holding`).
    fn vouches_for(&mut self, ready: &AggregateReady, signer: &MemberId, now: u64) -> bool {
        let Ok(named) = self.named(&ready.members, now) else {
            return self.witnessed_holding(ready, signer, now);
        };
        let me = self.me();
        let live = self.live(now);
        let leaves_out_a_live_member = !Arc::ptr_eq(&named, &live) && {
            let mut listed = ready.members.clone();
            listed.sort_unstable();
            live.iter().any(|m| m.id != me && listed.binary_search(&m.id).is_err())
        };
        if leaves_out_a_live_member && !self.witnessed_past(&named, signer, ready.round) {
            return false;
        }
        let ahead = ready.round > self.state.completed_round + 1;
        let plan = if ahead {
            let vetted = super::vetted_with_owner(&ready.vetted_members(), &self.setup.spec.owner);
            self.plan_vetted(ready.round, &named, &vetted)
        } else {
            self.plan_over(ready.round, named)
        };
        plan.is_some_and(|plan| plan.leader() == Some(*signer))
    }

    /// Whether `WITNESSES` of `named` but `signer` (all of them if fewer) were heard to hold a
    /// model of `round` or later: the round is over. Their heartbeats are their own, so no one
    /// member can say it for the others, and while a round runs its members hold the model
    /// before it.
    fn witnessed_past(&self, named: &[MemberInfo], signer: &MemberId, round: Round) -> bool {
        let others = named.iter().filter(|m| m.id != *signer);
        let (count, past) = others.fold((0, 0), |(count, past), m| {
            (count + 1, past + usize::from(self.state.members.holds_past(&m.id, round)))
        });
        past > 0 && past >= WITNESSES.min(count)
    }

    /// Whether `WITNESSES` of the live members but this one and `signer` (all of them if
    /// fewer, and at least one) were heard to hold the result's model. Each says it for itself
    /// (its heartbeat, its evaluation), so the signer alone cannot make it so.
    fn witnessed_holding(&mut self, ready: &AggregateReady, signer: &MemberId, now: u64) -> bool {
        let me = self.me();
        let live = self.live(now);
        let others = live.iter().filter(|m| m.id != me && m.id != *signer);
        let (count, holding) = others.fold((0, 0), |(count, holding), m| {
            let holds = self.state.members.is_holding(&m.id, &ready.model);
            (count + 1, holding + usize::from(holds))
        });
        holding > 0 && holding >= WITNESSES.min(count)
    }

    /// A member that completed the job, if it is in the seeded sample that reports evaluations
    /// of the straggler's round, answers the heartbeat of a member still in one of its rounds
    /// with its own (at most once every `ANNOUNCE_AGAIN_MS`): it went silent when it completed,
    /// and the member behind learns from it that the job is past its round, and by what model.
    /// (Every member answering cost a thousand-member job a million deliveries a straggler.)
    fn answer_straggler(&mut self, their_round: Round, now: u64) {
        let behind = their_round <= self.last_round();
        let (job, me, members) = (&self.setup.job, self.me(), self.state.members.proven());
        let sampled = super::results::reports_evaluation(job, their_round, &me, members);
        if behind && sampled && now.saturating_sub(self.last_heartbeat_ms) >= ANNOUNCE_AGAIN_MS {
            self.publish_heartbeat(now);
        }
    }

    /// When the opening of the same round this member follows was made, if after `open`: an
    /// older opening of the round (replayed, or overtaken by a reopening) is not followed.
    fn newer_opening_followed(&self, open: &RoundOpen) -> Option<u64> {
        let followed = self.phase.open().filter(|o| o.round == open.round)?;
        (followed.opened_at_ms > open.opened_at_ms).then_some(followed.opened_at_ms)
    }

    /// Whether a round message continues the job from this member's head: the round after the
    /// newest it took, over that round's model (a result it took already passes again). The
    /// coordinator's assignments are trusted to (it fetches their base).
    fn continues(&self, held: &Held) -> bool {
        let (head_round, head_model) = self.head();
        match held {
            Held::Open(open) => open.round == head_round + 1 && open.base_model == head_model,
            Held::Result(ready) => {
                let taken = self.rounds.get(&ready.round).and_then(|record| record.model);
                taken == Some(ready.model)
                    || (ready.round == head_round + 1 && ready.base_model == head_model)
            }
            Held::Assign(_) => true,
        }
    }

    /// Whether a result that does not continue from this member's head (it is ahead, or builds
    /// on another model) is taken all the same: a member other than its signer was heard to
    /// hold its model, or no other member is live to say so. One member alone cannot move
    /// another to a model of its own making, at a round of its choosing.
    fn vouched_ahead(&mut self, held: &Held, signer: &MemberId, now: u64) -> bool {
        let Held::Result(ready) = held else { return false };
        let me = self.me();
        let others = |m: &MemberId| *m != me && m != signer;
        let anyone_else_live = self.live(now).iter().any(|m| others(&m.id));
        !anyone_else_live || self.state.members.holders_of(&ready.model).any(|m| others(&m))
    }

    /// A member whose heartbeat says it is still in a round this member closed missed the
    /// round's result: it goes out again, at most once every `ANNOUNCE_AGAIN_MS`.
    fn announce_again(&mut self, their_round: Round, now: u64) {
        let Some(ready) = self.announced.as_mut() else { return };
        if their_round > ready.round || now.saturating_sub(self.announced_ms) < ANNOUNCE_AGAIN_MS {
            return;
        }
        self.announced_ms = now;
        ready.sent_at_ms = now;
        let ready = ready.clone();
        self.effects.push(Effect::Publish(super::Publish::Result(ready)));
    }
}

/// Why a replayed join, heartbeat or leave is refused.
fn replay_detail(kind: &str, member: &MemberId, replayed: Replayed) -> String {
    let Replayed { sent_at_ms, newest_ms } = replayed;
    format!("{member}'s {kind} sent at {sent_at_ms}, not after {newest_ms}")
}
