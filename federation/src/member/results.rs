//! A round's result: announcing a model this member made, taking a result (fetching its model
//! from the members that hold it first), adopting and evaluating each global model, and the
//! results a member missed (asked of members past the round, served to those that ask).

use super::phase::Phase;
use super::{Effect, Level, Member, Publish, RESULTS_KEPT, Served};
use crate::records::{RoundRecord, RunStatus};
use fedmesh_protocol::ids::{ContentHash, JobId, MemberId, Round};
use fedmesh_protocol::message::{AggregateReady, EvalMetrics, EvalReport};
use fedmesh_topologies::election::{rank, score};
use std::sync::Arc;

/// About how many members of a large job report their evaluation of each round's model.
pub(super) const EVAL_REPORTERS: usize = 32;
/// How many members a member that missed a result asks for it.
const MEMBERS_ASKED: usize = 3;
/// How long a member that is behind waits before it asks for a result again.
pub(super) const ASK_AGAIN_MS: u64 = 5_000;

impl Member {
    /// The model of a round this member closed is stored: it announces the result and takes it.
    /// A job with a server optimizer announces the optimizer's new state with it.
    pub(super) fn on_stored(
        &mut self,
        round: Round,
        model: ContentHash,
        optimizer_state: Option<ContentHash>,
        now: u64,
    ) {
        self.keep_made_state(round, optimizer_state);
        let closing = match &self.phase {
            Phase::Closing(closing) if closing.round == round => closing,
            _ => return,
        };
        let ready = AggregateReady {
            job: self.setup.job,
            round,
            base_model: closing.base,
            model,
            contributions: closing.contributions.clone(),
            feedback: closing.feedback.clone(),
            metrics: EvalMetrics::default(),
            members: closing.members.clone(),
            vetted: AggregateReady::vetted_bitmap(&closing.members, &self.vetted),
            sent_at_ms: now,
            optimizer_state,
        };
        self.announced = Some(ready.clone());
        self.announced_ms = now;
        self.log(Level::Info, round, format!("announcing model {model}"));
        self.effects.push(Effect::Publish(Publish::Result(ready.clone())));
        if self.verifiable() {
            // Its own update was kept when it was folded in (see `on_trained`).
            let me = self.me();
            let deltas = ready.contributions.iter().filter(|c| c.member != me).map(|c| c.delta);
            self.keep_contributions(round, deltas.collect(), None, now);
        }
        self.take_result(self.me(), Arc::new(ready), now);
    }

    /// Takes a round's result from the member that may announce it: records it, ends whatever
    /// this member still did for the round, and adopts its model (fetched first if needed).
    pub(super) fn take_result(&mut self, signer: MemberId, ready: Arc<AggregateReady>, now: u64) {
        if ready.round <= self.state.completed_round || !self.is_active() {
            return self.take_late_result(signer, ready, now);
        }
        let record = self.rounds.entry(ready.round).or_insert_with(|| {
            RoundRecord::new(ready.round, signer, ready.base_model, ready.sent_at_ms)
        });
        record.close(&ready);
        self.learn_from(&ready);
        self.keep_taken(signer, &ready);
        self.on_result_taken(signer, &ready, now);
        self.requeue_uncounted(&ready);
        if self.last_update.as_ref().is_some_and(|(update, _)| update.round <= ready.round) {
            self.last_update = None;
        }
        self.record_holder(signer, ready.round, ready.model);
        let made_here = match &self.phase {
            Phase::Closing(closing) if closing.round == ready.round => Some(closing.params.clone()),
            _ => None,
        };
        if let Some(params) = made_here {
            return self.adopt(ready.round, ready.model, params, now);
        }
        if self.phase.round().is_some_and(|round| round <= ready.round) {
            self.phase = Phase::Waiting;
        }
        if matches!(self.phase, Phase::Waiting) {
            self.phase = Phase::Fetching { round: ready.round, model: ready.model };
        }
        self.fetch(ready.round, ready.model, signer);
    }

    /// Asks for a model by hash: its known holders first (`announcer` among them), then any
    /// live member. A model already being fetched is not asked for twice.
    pub(super) fn fetch(&mut self, round: Round, model: ContentHash, announcer: MemberId) {
        self.record_holder(announcer, round, model);
        if self.fetching.insert(model, round).is_some() {
            return;
        }
        let me = self.me();
        let mut from: Vec<MemberId> =
            self.state.members.holders_of(&model).filter(|m| *m != me).collect();
        let ranked = rank(&self.setup.job, round, &format!("fetch/{me}"), &from);
        from = ranked;
        self.effects.push(Effect::Fetch { round, model, from });
    }

    /// A model asked for arrived (or could not be had).
    pub(super) fn on_fetched(
        &mut self,
        model: ContentHash,
        outcome: Result<Arc<Vec<f32>>, String>,
        now: u64,
    ) {
        let Some(round) = self.fetching.remove(&model) else { return };
        if let Ok(params) = &outcome
            && self.on_restored(model, params)
        {
            return self.wake_at(now);
        }
        match outcome {
            Ok(params) if params.len() == self.params.len() => {
                self.adopt(round, model, params, now)
            }
            Ok(params) => self.log(
                Level::Warn,
                round,
                format!(
                    "model {model} has {} parameters, the job {}",
                    params.len(),
                    self.params.len()
                ),
            ),
            Err(error) if self.restoring == Some(model) => {
                self.log(Level::Warn, round, format!("cannot fetch model {model} yet: {error}"));
                let me = self.me();
                self.fetch(round, model, me);
            }
            Err(error) => {
                self.log(Level::Warn, round, format!("cannot fetch model {model}: {error}"));
                if matches!(self.phase, Phase::Fetching { model: m, .. } if m == model) {
                    self.phase = Phase::Waiting;
                }
            }
        }
    }

    /// Makes `model` (the result of `round`) the current global model, asks for its
    /// evaluation, and moves on: training if the next round is open on it, else waiting for it.
    fn adopt(&mut self, round: Round, model: ContentHash, params: Arc<Vec<f32>>, now: u64) {
        let (held_round, held_model) = (self.state.completed_round, self.state.model);
        if round < held_round || (round == held_round && model == held_model) || !self.is_active() {
            return;
        }
        self.params = params;
        self.restoring = None;
        self.state.model = model;
        self.state.completed_round = round;
        self.adopted_ms = now;
        let vetted_anew = self.vet_from_taken();
        let me = self.me();
        let record =
            self.rounds.entry(round).or_insert_with(|| RoundRecord::new(round, me, model, now));
        record.model = Some(model);
        self.take_early_evaluations(round);
        self.effects.push(Effect::Evaluate { round, model, params: self.params.clone() });
        match &self.phase {
            Phase::Open(open) if open.round > round => {}
            _ => self.phase = Phase::Waiting,
        }
        self.next_open_check_ms = now;
        self.persist();
        self.judge_unblocked(now); // round messages ahead of this model may continue from it
        if round >= self.last_round() {
            // Complete once its evaluation is recorded (`on_evaluated`): whoever reads the
            // completed job finds the final model's metrics.
            return;
        }
        if self.phase.open().is_some() {
            // The opening this member fetched the base of.
            if vetted_anew {
                self.replan_open(now);
            }
            self.take_early_updates(now);
            self.start_training();
        } else {
            self.wake_at(now);
        }
    }

    /// Keeps a result taken, to serve members that missed it (one per round).
    fn keep_taken(&mut self, signer: MemberId, ready: &Arc<AggregateReady>) {
        if !self.taken.iter().any(|(_, kept)| kept.round == ready.round) {
            if self.taken.len() >= RESULTS_KEPT {
                self.taken.pop_front();
            }
            self.taken.push_back((signer, ready.clone()));
        }
    }

    /// The result of a round this member holds a model of already (fetched as an opening's base
    /// before the result arrived): it completes the round's record and, when it made the model
    /// held and comes from the round's aggregator, vets the members it counted.
    pub(super) fn take_late_result(
        &mut self,
        signer: MemberId,
        ready: Arc<AggregateReady>,
        now: u64,
    ) {
        let Some(record) = self.rounds.get_mut(&ready.round) else { return };
        record.complete_late(&ready);
        let held = ready.round == self.state.completed_round && ready.model == self.state.model;
        let from_aggregator = record.aggregator == signer;
        if held && from_aggregator && self.is_active() {
            self.keep_taken(signer, &ready);
            if self.vet_from_taken() {
                self.persist();
                self.replan_open(now);
                self.judge_unblocked(now); // an opening held for its leader may be led so now
            }
        }
    }

    /// Vets the members the held model's result counted, if this member took that result:
    /// the next round's aggregators are elected among them first. (A member that fetched its
    /// model as an opening's base before the result arrived vets them when the result does.)
    /// Says whether who is vetted changed.
    pub(super) fn vet_from_taken(&mut self) -> bool {
        let (round, model) = (self.state.completed_round, self.state.model);
        let Some((_, ready)) =
            self.taken.iter().find(|(_, r)| r.round == round && r.model == model)
        else {
            return false;
        };
        let mut vetted: Vec<MemberId> = ready.contributions.iter().map(|c| c.member).collect();
        vetted.sort_unstable();
        vetted.dedup();
        if vetted == self.state.vetted {
            return false;
        }
        self.vetted = super::vetted_with_owner(&vetted, &self.setup.spec.owner);
        self.state.vetted = vetted;
        self.plans.clear();
        true
    }

    /// Records the evaluations of `round`'s model heard before this member took it; those of
    /// earlier rounds are dropped.
    fn take_early_evaluations(&mut self, round: Round) {
        let (now_due, later): (Vec<EvalReport>, Vec<EvalReport>) =
            self.early_evals.drain(..).filter(|r| r.round >= round).partition(|r| r.round == round);
        self.early_evals = later.into();
        now_due.into_iter().for_each(|report| self.record_evaluation(report));
    }

    /// A model's evaluation on the local test split: recorded and reported.
    pub(super) fn on_evaluated(
        &mut self,
        round: Round,
        model: ContentHash,
        metrics: EvalMetrics,
        now: u64,
    ) {
        let me = self.me();
        let Some(record) = self.rounds.get_mut(&round).filter(|r| r.model == Some(model)) else {
            return;
        };
        record.evaluations.insert(me, metrics);
        self.persist_lazily();
        if round >= self.last_round() && round == self.state.completed_round && self.is_active() {
            self.log(Level::Info, round, format!("job complete with model {model}"));
            self.end(RunStatus::Completed);
        }
        if round == 0 || matches!(self.state.status, RunStatus::Left) || !self.reports(round) {
            return;
        }
        let report =
            EvalReport { job: self.setup.job, round, model, member: me, metrics, sent_at_ms: now };
        self.effects.push(Effect::Publish(Publish::Eval(report)));
    }

    /// Whether this member reports its evaluation of `round`'s model to the job: every member
    /// of a small job does; in a larger one a seeded sample of about `EVAL_REPORTERS` members
    /// (each in by its own rendezvous score, so choosing costs nothing and nobody can pick who),
    /// since every member hears every report and a thousand members' reports each round were
    /// most of a large job's gossip while a sample gives the same weighted metrics.
    fn reports(&self, round: Round) -> bool {
        reports_evaluation(&self.setup.job, round, &self.me(), self.state.members.proven())
    }

    /// Past the deadline of a round it follows and does not lead, a member asks a few members
    /// for the round's result once per opening (those heard to be past the round first): the
    /// announcement may have reached only some members before its aggregator died.
    pub(super) fn ask_for_missed_result(&mut self, now: u64) {
        let Some(open) = self.phase.open() else { return };
        if now <= open.deadline_ms || open.leading.is_some() || open.result_asked {
            return;
        }
        let round = open.round;
        if let Some(open) = self.phase.open_mut() {
            open.result_asked = true;
        }
        self.ask_for_result(round, now);
    }

    /// A member behind the others (their heartbeats, or a round message ahead of its own,
    /// say so: it was down, cut off, or joined late) asks for the next result it lacks, one
    /// round at a time, each building on the last (`RESULTS_KEPT` are kept to serve). If that
    /// is gone from every window (it was asked for `ASK_AGAIN_MS` ago in vain, or it is more
    /// than `RESULTS_KEPT` rounds behind the newest), it asks for the newest one members were
    /// heard to be past, taken only as `vouched_ahead` says.
    pub(super) fn catch_up(&mut self, now: u64) {
        let next = self.head().0 + 1;
        let (asked_round, asked_ms) = self.caught_up_asked;
        if asked_round == next && now.saturating_sub(asked_ms) < ASK_AGAIN_MS {
            return;
        }
        self.caught_up_asked = (next, now);
        let newest = self.furthest_heard.saturating_sub(1);
        let gone = asked_round == next || newest >= next + RESULTS_KEPT as Round;
        let round = if gone && newest > next { newest } else { next };
        self.ask_for_result(round, now);
    }

    /// The newest round whose result this member took, with its model (adopted, or still
    /// being fetched): a round message continues the job here only if it builds on it.
    pub(super) fn head(&self) -> (Round, ContentHash) {
        let completed = self.state.completed_round;
        let mut taken = self.rounds.range(completed + 1..).rev();
        taken
            .find_map(|(round, record)| record.model.map(|model| (*round, model)))
            .unwrap_or((completed, self.state.model))
    }

    /// Asks a few members for the signed result of `round`: those heard to be past it first,
    /// else live ones, else any (members that completed the job fall silent).
    pub(super) fn ask_for_result(&mut self, round: Round, now: u64) {
        let me = self.me();
        let mut others: Vec<MemberId> =
            self.live(now).iter().map(|m| m.id).filter(|m| *m != me).collect();
        if others.is_empty() {
            others = self.state.members.ids().filter(|m| *m != me).collect();
        }
        let mut from = rank(&self.setup.job, round, &format!("ask/{me}"), &others);
        let members = &self.state.members;
        from.sort_by_key(|m| members.round_heard(m).is_none_or(|heard| heard <= round));
        from.truncate(MEMBERS_ASKED);
        if !from.is_empty() {
            self.effects.push(Effect::AskResult { round, from });
        }
    }

    /// Serves the result of `round` to a member that missed it, if this member has one: its
    /// own (signed anew), or one it took (as its aggregator signed it).
    pub(super) fn serve_result(&mut self, to: MemberId, round: Round, request: u64) {
        if !self.may_learn_of_job(&to) {
            return; // an allow-listed job's results go to its members alone
        }
        let me = self.me();
        let kept = self.taken.iter().find(|(_, ready)| ready.round == round);
        let served = match kept {
            Some((signer, ready)) if *signer == me => {
                Some(Served::Own(AggregateReady::clone(ready)))
            }
            Some((signer, ready)) => {
                Some(Served::Taken { signer: *signer, ready: AggregateReady::clone(ready) })
            }
            None => self.announced.clone().filter(|ready| ready.round == round).map(Served::Own),
        };
        if let Some(result) = served {
            self.effects.push(Effect::ServeResult { request, to, result });
        }
    }
}

/// Whether `member`, in a job of `members` members, is in the sample that reports its
/// evaluation of `round`: its rendezvous score falls in the lowest `EVAL_REPORTERS / members`
/// of the range (all of it in a job of at most `EVAL_REPORTERS` members).
pub(super) fn reports_evaluation(
    job: &JobId,
    round: Round,
    member: &MemberId,
    members: usize,
) -> bool {
    let score = u128::from(score(job, round, "evaluation-report", member));
    let range = u128::from(u64::MAX) + 1;
    score * (members as u128) < range * (EVAL_REPORTERS as u128)
}
