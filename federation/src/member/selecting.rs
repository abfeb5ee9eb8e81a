//! Selectors that learn from past rounds (`participation.selector`: `fedbuff`, `oort`) in a
//! member: the history it learns from the results it takes, the choice its opening names when it
//! leads a round, the check of another opener's choice, and the feedback its results carry.
//!
//! Why the opener chooses: what a selector learns must be the same on every member for their
//! plans to agree, and a member that joined late, restarted or missed a result has learned less.
//! So only the round's opener (the member the plan over the live members elects, as for any
//! round) selects, from its own history, and its opening names the trainers
//! ([`RoundOpen::trainers`]); the others plan over those, and so agree whatever they learned. A
//! `random` job's opening names none: every member samples the same trainers itself.
//!
//! What the history holds comes from results every member can check the signer of: each
//! result lists the updates it counted (FedBuff prefers the members counted least recently), and
//! an `oort` job's aggregator adds what it saw of each update it received directly
//! ([`AggregateReady::feedback`]: the loss its trainer reported and when it arrived after the
//! opening). What a hostile member can bend: a trainer can report any loss, but a loss counts at
//! most `MAX_REPORTED_LOSS`, each utility is clipped at the 95th percentile of the others', and a
//! member exploited `max_consecutive` rounds in a row is left to exploration the next, so its own
//! reports cannot keep it selected; its arrival time is the aggregator's clock, not its word.
//! An opener can choose whom it likes among the live members, but no more of them than the
//! selector picks and none outside its opening's list (an opening naming others is not
//! followed); it could already drop any of their updates as their aggregator.

use super::{Level, Member};
use fedmesh_protocol::ids::MemberId;
use fedmesh_protocol::message::{AggregateReady, Contribution, Feedback, RoundOpen};
use fedmesh_protocol::spec::Selector;
use fedmesh_topologies::{MemberInfo, RoundPlan, Selection};
use std::collections::BTreeMap;
use std::sync::Arc;

impl Member {
    /// How this job's rounds select their trainers, from this member's history.
    pub(super) fn selection(&self) -> Selection {
        let participation = &self.setup.spec.participation;
        let Some(concurrency) = self.async_options().and_then(|o| o.concurrency) else {
            return Selection::from_participation(participation, &self.history);
        };
        // An asynchronous job selects its concurrency's worth of trainers a version.
        let mut capped = participation.clone();
        capped.max_participants =
            Some(participation.max_participants.map_or(concurrency, |max| max.min(concurrency)));
        Selection::from_participation(&capped, &self.history)
    }

    /// Whether the job's selector learns from past rounds (so openings name the trainers).
    fn learns(&self) -> bool {
        !self.setup.spec.participation.selector.is_random()
    }

    /// Whether the job's selector learns from what aggregators saw of each update (`oort`).
    pub(super) fn learns_from_feedback(&self) -> bool {
        matches!(self.setup.spec.participation.selector, Selector::Oort(_))
    }

    /// Learns from a result taken; the plans kept were made with what it knew before.
    pub(super) fn learn_from(&mut self, ready: &AggregateReady) {
        if self.learns() {
            Arc::make_mut(&mut self.history).record(ready);
            self.plans.clear();
        }
    }

    /// The trainers an opening of `plan` names: its own when the selector learns, else none.
    pub(super) fn trainers_named(&self, plan: &RoundPlan) -> Vec<MemberId> {
        if self.learns() { plan.trainers.clone() } else { Vec::new() }
    }

    /// The plan of an opening over the members it names: with the trainers it names when the
    /// selector learns, provided they are as many as the selector picks and all eligible.
    pub(super) fn plan_of_opening(
        &mut self,
        opener: MemberId,
        open: &RoundOpen,
        named: Arc<[MemberInfo]>,
    ) -> Option<Arc<RoundPlan>> {
        let own = self.plan_over(open.round, named.clone())?;
        if !self.learns() {
            return Some(own);
        }
        let selection = Selection::Explicit(open.trainers.clone());
        let (tag, job) = (&self.setup.tag, &self.setup.job);
        let members = self.without_excluded(&named);
        let plan = crate::shared::plan(
            tag,
            (job, &self.setup.spec.owner),
            open.round,
            &members,
            &selection,
            &self.vetted,
        )
        .ok()?;
        if plan.trainers.len() != own.trainers.len() || plan.trainers.len() != open.trainers.len() {
            let text = format!(
                "an opening by {opener} naming {} trainers, {} of them eligible; the selector \
                 picks {}",
                open.trainers.len(),
                plan.trainers.len(),
                own.trainers.len()
            );
            self.log(Level::Warn, open.round, text);
            return None;
        }
        Some(plan)
    }

    /// What a result says the aggregator saw of each of its `contributions` (an `oort` job's).
    pub(super) fn feedback_on(
        &self,
        seen: &BTreeMap<MemberId, Feedback>,
        contributions: &[Contribution],
    ) -> Vec<Option<Feedback>> {
        if !self.learns_from_feedback() {
            return Vec::new();
        }
        contributions.iter().map(|c| seen.get(&c.member).copied()).collect()
    }
}
