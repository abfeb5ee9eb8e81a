//! Server optimizers over rotating aggregators (`strategy.server`): the optimizer state that goes
//! with the held model (named by the result that made it), fetched by the leader of the next
//! round before it closes it, applied to the round's combined delta, and stored and announced
//! with the new model, so that each round's aggregator resumes from its predecessor's state.

use super::phase::Phase;
use super::{Effect, Level, Member};
use crate::collect::Collecting;
use fedmesh_aggregation::{AggregationError, ServerOptimizer};
use fedmesh_protocol::ids::{ContentHash, MemberId, Round};
use fedmesh_protocol::message::{AggregateReady, Contribution};
use std::sync::Arc;

/// How long a leader that does not know the result of the model it holds (it took the model as
/// an opening's base, or restarted) waits before it asks for that result again.
const ASK_RESULT_AGAIN_MS: u64 = 5_000;

/// This member's side of the job's server optimizer.
#[derive(Default)]
pub(super) struct ServerState {
    /// The decoded state this member holds (the one it made or fetched last), by its blob's hash.
    held: Option<(ContentHash, Arc<ServerOptimizer>)>,
    /// The state blob being fetched.
    fetching: Option<ContentHash>,
    /// When this member last asked for the result of the model it holds, to learn its state.
    result_asked_ms: Option<u64>,
}

/// A round's new model, with the contributions it counts and the optimizer state it leaves.
pub(super) type Made = (Vec<f32>, Vec<Contribution>, Option<Arc<ServerOptimizer>>);

impl Member {
    fn has_server_optimizer(&self) -> bool {
        self.setup.spec.strategy.server.is_some()
    }

    /// The state blob the held model's result names (`Some(None)` for the initial model), or
    /// `None` if this member does not know that result.
    fn state_of_held_model(&self) -> Option<Option<ContentHash>> {
        let (round, model) = (self.state.completed_round, self.state.model);
        if round == 0 {
            return Some(None);
        }
        let names = |ready: &AggregateReady| ready.round == round && ready.model == model;
        let taken = self.taken.iter().map(|(_, ready)| &**ready).find(|ready| names(ready));
        let own = self.announced.as_ref().filter(|ready| names(ready));
        taken.or(own).map(|ready| ready.optimizer_state)
    }

    /// Whether this member holds the optimizer state the round after its model is closed with
    /// (always, in a job without a server optimizer). If not, it asks for it: the state blob
    /// from the member that announced it, or, when it does not know the result naming it, the
    /// result (`ASK_RESULT_AGAIN_MS` apart).
    pub(super) fn optimizer_ready(&mut self, now: u64) -> bool {
        if !self.has_server_optimizer() {
            return true;
        }
        let round = self.state.completed_round;
        match self.state_of_held_model() {
            Some(None) => true,
            Some(Some(state)) if self.holds_state(&state) => true,
            Some(Some(state)) => {
                self.fetch_state(round + 1, state);
                false
            }
            None => {
                let asked = self.server.result_asked_ms;
                if asked.is_none_or(|at| now >= at + ASK_RESULT_AGAIN_MS) {
                    self.server.result_asked_ms = Some(now);
                    self.log(Level::Info, round + 1, "asking for the result of the model held");
                    self.ask_for_result(round, now);
                }
                false
            }
        }
    }

    fn holds_state(&self, state: &ContentHash) -> bool {
        self.server.held.as_ref().is_some_and(|(held, _)| held == state)
    }

    /// Asks for the state blob `state`, from the member that announced it first.
    fn fetch_state(&mut self, round: Round, state: ContentHash) {
        if self.server.fetching == Some(state) {
            return;
        }
        self.server.fetching = Some(state);
        let me = self.me();
        let (completed, model) = (self.state.completed_round, self.state.model);
        let announcer = self.taken.iter().find(|(_, r)| r.round == completed && r.model == model);
        let from: Vec<MemberId> =
            announcer.map(|(signer, _)| *signer).filter(|s| *s != me).into_iter().collect();
        self.log(Level::Info, round, format!("fetching the server optimizer's state {state}"));
        self.effects.push(Effect::FetchOptimizerState { round, state, from });
    }

    /// A state blob asked for arrived (or could not be had: it is asked for again at the next
    /// tick it is needed). A round whose top slot is complete is closed with it.
    pub(super) fn on_optimizer_state_fetched(
        &mut self,
        state: ContentHash,
        outcome: Result<Arc<ServerOptimizer>, String>,
        now: u64,
    ) {
        if self.server.fetching != Some(state) {
            return;
        }
        self.server.fetching = None;
        let round = self.state.completed_round + 1;
        match outcome {
            Ok(optimizer) => {
                self.server.held = Some((state, optimizer));
                self.finish_complete_slots(now);
            }
            Err(error) => {
                let text = format!("cannot fetch the server optimizer's state {state}: {error}");
                self.log(Level::Warn, round, text);
            }
        }
    }

    /// The leader of an open round gets the optimizer state it will close it with early, so
    /// that it is here when the round's updates are.
    pub(super) fn prepare_optimizer(&mut self, now: u64) {
        if self.phase.open().is_some_and(|open| open.leading.is_some()) {
            self.optimizer_ready(now);
        }
    }

    /// The round's model from its top slot: the combined delta added to the held model, through
    /// the job's server optimizer if it has one (resumed from the held model's state; call
    /// once [`optimizer_ready`](Self::optimizer_ready)), with the optimizer's new state.
    pub(super) fn make_model(&self, top: Collecting) -> Result<Made, AggregationError> {
        let Some(state) = self.state_of_held_model().filter(|_| self.has_server_optimizer()) else {
            let (params, contributions) = top.finish_model(&self.params)?;
            return Ok((params, contributions, None));
        };
        let mut optimizer = match (state, &self.server.held) {
            (None, _) => ServerOptimizer::from_spec(self.setup.spec.strategy.server.as_ref())?,
            (Some(state), Some((held, optimizer))) if *held == state => (**optimizer).clone(),
            (Some(state), _) => {
                let missing = format!("the server optimizer's state {state} is not here");
                return Err(AggregationError::Invalid(missing));
            }
        };
        let (delta, contributions) = top.finish_delta()?;
        let mut params = self.params.to_vec();
        optimizer.apply(&mut params, &delta)?;
        Ok((params, contributions, Some(Arc::new(optimizer))))
    }

    /// The model of the round this member closed is stored, with the optimizer's new state
    /// (`state`, the blob's hash): it holds that state for the round after.
    pub(super) fn keep_made_state(&mut self, round: Round, state: Option<ContentHash>) {
        let Phase::Closing(closing) = &self.phase else { return };
        if closing.round != round {
            return;
        }
        if let (Some(state), Some(optimizer)) = (state, &closing.optimizer) {
            self.server.held = Some((state, optimizer.clone()));
        }
    }

    /// Whether a result names an optimizer state exactly when the job has a server optimizer.
    pub(super) fn names_state_as_job_needs(&self, ready: &AggregateReady) -> bool {
        ready.optimizer_state.is_some() == self.has_server_optimizer()
    }
}
