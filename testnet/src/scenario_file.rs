//! The scenario file (TOML): the job's settings, what the run expects of it, and its events by
//! round; loading it and refusing a bad one with every problem named.

use crate::cluster::Transport;
use crate::events::{Action, Event, Target};
use crate::scenario::Scenario;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What the run expects of the final accuracy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Expect {
    /// The final accuracy reaches `target`.
    #[default]
    ReachTarget,
    /// The final accuracy stays below `target` (a demonstration that an attack works against an
    /// undefended strategy).
    BelowTarget,
}

/// A scenario file; every field has a default (those of the `testnet` flags).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScenarioFile {
    /// Names the run in its report (default: the file's stem).
    pub name: Option<String>,
    /// Nodes running when the job is announced (`join` events add more).
    pub nodes: usize,
    pub rounds: u64,
    /// A built-in TAG's name or a Flame-style TAG schema file (.json).
    pub topology: String,
    /// Group labels handed to the nodes in turn (hierarchical and hybrid TAGs group by them).
    pub groups: Vec<String>,
    /// How trainers encode their deltas: `f32`, `f16` or `int8`.
    pub delta_encoding: String,
    /// An external trainer command every node runs (empty: fedmesh's built-in learner).
    pub trainer: Vec<String>,
    pub dataset: String,
    /// A CSV data set's label column, by name or 0-based index (default: the last).
    pub label_column: Option<String>,
    pub model: String,
    pub partition: String,
    pub local_epochs: u32,
    pub batch_size: u32,
    pub lr: f32,
    pub seed: u64,
    pub round_deadline_secs: u64,
    /// Members needed before a round opens (default: the fewest members the events leave).
    pub min_participants: Option<usize>,
    /// The job spec's `quorum`, e.g. `{ fraction = 0.7 }` (default: every selected trainer).
    pub quorum: Option<serde_json::Value>,
    /// The job spec's `strategy`, e.g. `{ rule = "trimmed_mean", beta = 0.3 }` (default FedAvg).
    pub strategy: Option<serde_json::Value>,
    /// The job spec's `privacy`, e.g. `{ noise = "distributed" }` (trainers draw the DP noise
    /// `strategy.noise_multiplier` asks for) (default: the spec's).
    pub privacy: Option<serde_json::Value>,
    /// The job spec's `verification`, e.g. `{ auditors = "all" }`: members audit each round's
    /// model against the contributions its result lists (default: none).
    pub verification: Option<serde_json::Value>,
    /// Laid over the job spec's `hyperparameters`, e.g. `{ momentum = 0.9, fedprox_mu = 0.01,
    /// lr_schedule = "step:5,0.5" }` (`lr`, `local_epochs`, `batch_size` and `rounds` are keys
    /// of their own).
    pub hyperparameters: Option<serde_json::Value>,
    /// Laid over the job spec's `participation`, e.g. `{ fraction = 0.5 }` or
    /// `{ max_participants = 4 }` (`min_participants` is a key of its own).
    pub participation: Option<serde_json::Value>,
    /// The job spec's `mode`: `"sync"` (default) or `"async"` (FedBuff: a model version from
    /// every `async.buffer` updates, whatever version they trained on).
    pub mode: Option<serde_json::Value>,
    /// The job spec's `async`, e.g. `{ buffer = 4, staleness = "polynomial:0.5",
    /// max_staleness = 8 }` (with `mode = "async"`).
    #[serde(rename = "async")]
    pub asynchronous: Option<serde_json::Value>,
    /// Nodes that train slower (testing only), e.g. `{ nodes = [0, 1], factor = 5.0 }`.
    pub slow: Option<SlowNodes>,
    /// The final accuracy the run checks against.
    pub target: Option<f64>,
    pub expect: Expect,
    pub events: Vec<Event>,
    /// Run the job orchestrated by a coordinator (also `testnet --orchestrated`).
    pub orchestrated: bool,
    /// Each node bootstraps from the node started before it only, and discovers the rest.
    pub chain_bootstrap: bool,
    /// What the nodes listen on and bootstrap over: `"tcp"` (default) or `"quic"` (also
    /// `testnet --transport`).
    pub transport: Transport,
    /// Refusal reasons (the `reason` label of the nodes' `messages_rejected` and
    /// `job_updates_refused` metrics) each counted on at least one node by the end, e.g.
    /// `["past_last_round", "replayed"]`: what the scenario's attacks must have met. An entry
    /// `a|b` is met by either reason.
    pub refused: Vec<String>,
    /// Whether every round must close before its deadline (`no_stall = true`): what leaving and
    /// joining again must not cost.
    pub no_stall: bool,
    /// Follows a long job for only this many rounds (`rounds` is its length, say 100000): the
    /// run then checks that the job is still running on every member (no forged result ended
    /// it) and stops the nodes.
    pub follow_rounds: Option<u64>,
    /// Whether every reason in `refused` must be counted by every node of the job, not by one:
    /// what a message gossiped to all (a forged result) must meet everywhere.
    pub refused_everywhere: bool,
}

/// Nodes whose local training takes `factor` times as long (testing only: the nodes'
/// `slow_training` setting).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlowNodes {
    pub nodes: Vec<usize>,
    pub factor: f32,
}

impl SlowNodes {
    /// Each slow node's factor.
    pub fn by_node(&self) -> BTreeMap<usize, f32> {
        self.nodes.iter().map(|node| (*node, self.factor)).collect()
    }
}

impl Expect {
    /// As a scenario file spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::ReachTarget => "reach-target",
            Self::BelowTarget => "below-target",
        }
    }
}

impl Default for ScenarioFile {
    fn default() -> Self {
        Self {
            name: None,
            nodes: 4,
            rounds: 10,
            topology: "central".into(),
            groups: vec!["eu".into(), "na".into()],
            delta_encoding: "f32".into(),
            trainer: Vec::new(),
            dataset: "mnist5k".into(),
            label_column: None,
            model: "mlp:200,200".into(),
            partition: "iid".into(),
            local_epochs: 1,
            batch_size: 32,
            lr: 0.3,
            seed: 1,
            round_deadline_secs: 30,
            min_participants: None,
            quorum: None,
            strategy: None,
            privacy: None,
            verification: None,
            hyperparameters: None,
            participation: None,
            mode: None,
            asynchronous: None,
            slow: None,
            target: None,
            expect: Expect::ReachTarget,
            events: Vec::new(),
            orchestrated: false,
            chain_bootstrap: false,
            transport: Transport::Tcp,
            refused: Vec::new(),
            no_stall: false,
            follow_rounds: None,
            refused_everywhere: false,
        }
    }
}

impl ScenarioFile {
    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the scenario file {}", path.display()))?;
        let stem = path.file_stem().map(|stem| stem.to_string_lossy().into_owned());
        Self::parse(&text, stem.as_deref().unwrap_or("scenario"))
            .with_context(|| format!("{} is not a valid scenario file", path.display()))
    }

    /// Parses and checks the text of a scenario file; `name` unless it names itself.
    pub fn parse(text: &str, name: &str) -> anyhow::Result<Self> {
        let mut file: Self = toml::from_str(text)?;
        file.name.get_or_insert_with(|| name.to_owned());
        let problems = file.problems();
        anyhow::ensure!(problems.is_empty(), "{}", problems.join("\n"));
        Ok(file)
    }

    /// Every problem with the settings and the events, one line each.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut require = |ok: bool, problem: String| {
            if !ok {
                problems.push(problem);
            }
        };
        require(self.nodes >= 1, "nodes: must be at least 1".into());
        require(self.rounds >= 1, "rounds: must be at least 1".into());
        require(self.round_deadline_secs >= 1, "round_deadline_secs: must be at least 1".into());
        require(
            self.groups.iter().all(|g| !g.trim().is_empty()),
            "groups: every group label must be non-empty (for example [\"eu\", \"na\"])".into(),
        );
        require(
            crate::scenario::delta_encoding_json(&self.delta_encoding).is_some(),
            format!(
                "delta_encoding: `{}` is not f32, f16, int8 or top_k:FRACTION (in (0, 1])",
                self.delta_encoding
            ),
        );
        require(
            self.target.is_none_or(|t| (0.0..=1.0).contains(&t)),
            "target: an accuracy, in [0, 1]".into(),
        );
        require(
            self.expect == Expect::ReachTarget || self.target.is_some(),
            "expect = \"below-target\" needs a target".into(),
        );
        require(
            self.min_participants.is_none_or(|m| m >= 1),
            "min_participants: must be at least 1".into(),
        );
        require(
            self.refused.iter().all(|reason| is_reason(reason)),
            format!(
                "refused: {:?}: each is a refusal reason such as \"past_last_round\" (lowercase \
                 letters, digits and _)",
                self.refused
            ),
        );
        require(
            self.follow_rounds.is_none_or(|n| (1..=self.rounds).contains(&n)),
            format!("follow_rounds: must be between 1 and rounds ({})", self.rounds),
        );
        require(
            !self.refused_everywhere || !self.refused.is_empty(),
            "refused_everywhere: needs the reasons in `refused`".into(),
        );
        if let Some(slow) = &self.slow {
            require(
                slow.factor.is_finite() && slow.factor >= 1.0,
                format!("slow.factor: a factor of at least 1, not {}", slow.factor),
            );
            let total = self.total_nodes();
            require(
                slow.nodes.iter().all(|node| *node < total),
                format!(
                    "slow.nodes: {:?} names a node past the last (node{})",
                    slow.nodes,
                    total - 1
                ),
            );
        }
        problems.extend(self.event_problems());
        problems
    }

    /// Events in the order they fire (by round, then as written).
    fn ordered_events(&self) -> Vec<(usize, &Event)> {
        let mut events: Vec<(usize, &Event)> = self.events.iter().enumerate().collect();
        events.sort_by_key(|(_, event)| event.round);
        events
    }

    /// Checks each event on its own, then plays the events with named nodes through, so that
    /// for example a node is only restarted once it was killed.
    fn event_problems(&self) -> Vec<String> {
        let mut lives = Lives::new(self.nodes);
        let mut problems = Vec::new();
        for (index, event) in self.ordered_events() {
            let at = format!("events[{index}] ({})", event.describe());
            let found = self.event_shape(event).or_else(|| lives.apply(event).err());
            problems.extend(found.map(|problem| format!("{at}: {problem}")));
        }
        problems
    }

    /// What is wrong with one event taken on its own, if anything.
    fn event_shape(&self, event: &Event) -> Option<String> {
        if !(1..=self.rounds).contains(&event.round) {
            return Some(format!("round must be between 1 and rounds ({})", self.rounds));
        }
        if event.action == Action::Attack {
            return attack_shape(event);
        }
        if event.attack.is_some() || event.posing.is_some() || event.duration_secs.is_some() {
            return Some("only attack takes attack, as and duration_secs".into());
        }
        let join = event.action == Action::Join;
        if join == event.target.is_some() {
            return Some(
                if join { "join takes no target (use count)" } else { "needs a target" }.into(),
            );
        }
        if !join && event.count.is_some() {
            return Some("only join and attack take a count".into());
        }
        if join && event.count == Some(0) {
            return Some("count must be at least 1".into());
        }
        if event.action != Action::Byzantine && event.misbehave.is_some() {
            return Some("only byzantine takes misbehave".into());
        }
        if event.action != Action::Kill && event.after.is_some() {
            return Some("only kill takes after".into());
        }
        if event.action == Action::Restart && event.target == Some(Target::Aggregator) {
            return Some("restart needs node indices (the aggregator is never stopped)".into());
        }
        None
    }

    /// Nodes that ever exist: the first ones and every joiner.
    pub fn total_nodes(&self) -> usize {
        self.nodes + self.joiners()
    }

    fn joiners(&self) -> usize {
        let joins = self.events.iter().filter(|e| e.action == Action::Join);
        joins.map(|e| e.count.unwrap_or(1)).sum()
    }

    /// The fewest members taking part at any time, as the events go (each event on the
    /// aggregator takes one away).
    fn fewest_members(&self) -> usize {
        let (mut live, mut fewest) = (self.nodes as i64, self.nodes as i64);
        for (_, event) in self.ordered_events() {
            let size = match &event.target {
                Some(Target::Nodes(nodes)) => nodes.len() as i64,
                _ => 1,
            };
            live += match event.action {
                Action::Kill | Action::Leave => -size,
                Action::Restart | Action::Rejoin => size,
                Action::Join => event.count.unwrap_or(1) as i64,
                Action::Byzantine | Action::Attack => 0,
            };
            fewest = fewest.min(live);
        }
        fewest.max(1) as usize
    }

    /// The run this file describes, with the `fedmesh` binary and the output folder.
    pub fn into_scenario(self, binary: PathBuf, out: PathBuf) -> Scenario {
        let min_participants = self
            .min_participants
            .unwrap_or_else(|| crate::scenario::default_min_participants(self.fewest_members()));
        let total_nodes = self.total_nodes();
        let events = self.ordered_events().into_iter().map(|(_, e)| e.clone()).collect();
        Scenario {
            name: self.name.unwrap_or_else(|| "testnet".into()),
            nodes: self.nodes,
            total_nodes,
            rounds: self.rounds,
            topology: self.topology,
            groups: self.groups,
            delta_encoding: self.delta_encoding,
            trainer: self.trainer,
            model_retention_rounds: None,
            orchestrated: self.orchestrated,
            chain_bootstrap: self.chain_bootstrap,
            placement: crate::netns::Placement::Loopback,
            transport: self.transport,
            dataset: self.dataset,
            label_column: self.label_column,
            model: self.model,
            partition: self.partition,
            local_epochs: self.local_epochs,
            batch_size: self.batch_size,
            lr: self.lr,
            seed: self.seed,
            round_deadline_secs: self.round_deadline_secs,
            min_participants,
            quorum: self.quorum,
            strategy: self.strategy,
            privacy: self.privacy,
            verification: self.verification,
            hyperparameters: self.hyperparameters,
            participation: self.participation,
            mode: self.mode,
            asynchronous: self.asynchronous,
            slow: self.slow.map(|slow| slow.by_node()).unwrap_or_default(),
            base_spec: None,
            target: self.target,
            expect: self.expect,
            events,
            refused: self.refused,
            no_stall: self.no_stall,
            follow_rounds: self.follow_rounds,
            refused_everywhere: self.refused_everywhere,
            hostile: binary.with_file_name(crate::scenario::HOSTILE_BINARY),
            binary,
            out,
        }
    }
}

/// What is wrong with an `attack` event, if anything: it names its attack, a victim exactly
/// when the attack replays one's messages (one node, by index), and a count of at least one.
fn attack_shape(event: &Event) -> Option<String> {
    let Some(attack) = event.attack else {
        return Some(
            "attack needs `attack` (forge-result, forge-open, forge-assignment, \
             replay-heartbeats, join-flood, oversized-frames, trickled-frames, slow-frames, \
             inflate-samples, bad-values, early-inputs or swap-model)"
                .into(),
        );
    };
    if event.misbehave.is_some() {
        return Some("only byzantine takes misbehave".into());
    }
    if event.count == Some(0) || event.duration_secs == Some(0) {
        return Some("count and duration_secs must be at least 1".into());
    }
    let one_node = matches!(&event.target, Some(Target::Nodes(nodes)) if nodes.len() == 1);
    match (attack.needs_victim(), &event.target) {
        (true, _) if !one_node => {
            Some(format!("{} needs one target node: its victim", attack.name()))
        }
        (false, Some(_)) => Some(format!("{} takes no target", attack.name())),
        _ => None,
    }
}

/// Whether `text` looks like a refusal reason (`past_last_round`), or alternatives of them
/// (`not_the_aggregator|ahead_of_round`: either will do).
fn is_reason(text: &str) -> bool {
    let word = |w: &str| {
        !w.is_empty() && w.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    text.split('|').all(word)
}

/// Where each named node stands as the events are played through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Life {
    Running,
    Killed,
    Left,
}

struct Lives(Vec<Life>);

impl Lives {
    fn new(nodes: usize) -> Self {
        Self(vec![Life::Running; nodes])
    }

    /// Plays one event; an error says why it cannot happen to a node it names.
    fn apply(&mut self, event: &Event) -> Result<(), String> {
        if event.action == Action::Join {
            let count = event.count.unwrap_or(1);
            self.0.extend(std::iter::repeat_n(Life::Running, count));
            return Ok(());
        }
        let Some(Target::Nodes(nodes)) = &event.target else {
            return Ok(());
        };
        let (needs, becomes) = match event.action {
            Action::Restart => (Life::Killed, Life::Running),
            Action::Kill => (Life::Running, Life::Killed),
            Action::Leave => (Life::Running, Life::Left),
            Action::Rejoin => (Life::Left, Life::Running),
            Action::Byzantine | Action::Join | Action::Attack => (Life::Running, Life::Running),
        };
        for &node in nodes {
            match self.0.get(node) {
                None => {
                    return Err(format!("there is no node{node} by then ({} nodes)", self.0.len()));
                }
                Some(&life) if life != needs => {
                    return Err(
                        format!("node{node} is {life:?} by then, not {needs:?}").to_lowercase()
                    );
                }
                Some(_) => self.0[node] = becomes,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedmesh_protocol::strategy::{AggregationRule, StrategySpec};

    fn parse(text: &str) -> Result<ScenarioFile, String> {
        ScenarioFile::parse(text, "test").map_err(|e| format!("{e:#}"))
    }

    #[test]
    fn a_full_file_parses_with_its_events_in_round_order() {
        let file = parse(
            r#"
            nodes = 8
            rounds = 10
            strategy = { rule = "trimmed_mean", beta = 0.3 }
            target = 0.9
            [[events]]
            round = 5
            action = "join"
            [[events]]
            round = 3
            action = "kill"
            target = "aggregator"
            [[events]]
            round = 4
            action = "byzantine"
            target = [1, 2]
            misbehave = "noise"
            "#,
        )
        .unwrap();
        assert_eq!(file.total_nodes(), 9);
        let strategy: StrategySpec =
            serde_json::from_value(file.strategy.clone().unwrap()).unwrap();
        assert_eq!(strategy.rule, AggregationRule::TrimmedMean { beta: 0.3 });
        let scenario = file.into_scenario(PathBuf::new(), PathBuf::new());
        let rounds: Vec<u64> = scenario.events.iter().map(|e| e.round).collect();
        assert_eq!(rounds, [3, 4, 5]);
        assert_eq!(scenario.min_participants, 7, "the killed aggregator is one fewer");
        assert_eq!(scenario.events[1].target, Some(Target::Nodes(vec![1, 2])));
    }

    #[test]
    fn bad_files_are_refused_with_the_problem_named() {
        let cases = [
            ("bogus = 1", "unknown field `bogus`"),
            (
                "[[events]]\nround = 1\naction = \"explode\"\ntarget = 1",
                "unknown variant `explode`",
            ),
            ("[[events]]\nround = 1\naction = \"kill\"\ntarget = \"leader\"", "only name is"),
            ("[[events]]\nround = 1\naction = \"kill\"\ntarget = -1", "never negative"),
            ("[[events]]\nround = 11\naction = \"kill\"\ntarget = 1", "between 1 and rounds"),
            ("[[events]]\nround = 2\naction = \"kill\"", "needs a target"),
            ("[[events]]\nround = 2\naction = \"join\"\ntarget = 1", "join takes no target"),
            ("[[events]]\nround = 2\naction = \"kill\"\ntarget = 9", "no node9"),
            ("[[events]]\nround = 2\naction = \"restart\"\ntarget = 1", "node1 is running"),
            ("[[events]]\nround = 2\naction = \"restart\"\ntarget = \"aggregator\"", "indices"),
            (
                "[[events]]\nround = 2\naction = \"leave\"\ntarget = 1\nmisbehave = \"noise\"",
                "only byzantine",
            ),
            ("expect = \"below-target\"", "needs a target"),
            ("follow_rounds = 11", "follow_rounds: must be between 1 and rounds"),
            ("refused_everywhere = true", "refused_everywhere: needs the reasons"),
            ("[[events]]\nround = 2\naction = \"attack\"", "attack needs `attack`"),
            (
                "[[events]]\nround = 2\naction = \"attack\"\nattack = \"replay-heartbeats\"",
                "needs one target node: its victim",
            ),
            (
                "[[events]]\nround = 2\naction = \"attack\"\nattack = \"forge-open\"\ntarget = 1",
                "forge-open takes no target",
            ),
            (
                "[[events]]\nround = 2\naction = \"kill\"\ntarget = 1\nattack = \"forge-open\"",
                "only attack takes attack",
            ),
            ("[[events]]\nround = 2\naction = \"attack\"\nattack = \"nuke\"", "unknown variant"),
            ("refused = [\"Not A Reason\"]", "refused:"),
            ("target = 1.5", "in [0, 1]"),
        ];
        for (text, problem) in cases {
            let error = parse(text).unwrap_err();
            assert!(error.contains(problem), "{text:?}: {error}");
        }
    }

    #[test]
    fn an_attack_event_names_its_attack_posing_and_victim() {
        let text = r#"
            nodes = 3
            refused = ["replayed", "not_the_aggregator|ahead_of_round"]
            [[events]]
            round = 1
            action = "attack"
            attack = "replay-heartbeats"
            as = "outsider"
            target = 2
            [[events]]
            round = 2
            action = "attack"
            attack = "join-flood"
            count = 3000
            "#;
        let file = parse(text).unwrap();
        assert_eq!(file.fewest_members(), 3, "an attack takes no node away");
        let lines: Vec<String> = file.events.iter().map(Event::describe).collect();
        assert_eq!(
            lines,
            [
                "round 1: attack replay-heartbeats as outsider (victim node2)",
                "round 2: attack join-flood as member, count 3000"
            ]
        );
        let scenario = file.into_scenario(PathBuf::from("/bin/fedmesh"), PathBuf::new());
        assert_eq!(scenario.hostile, PathBuf::from("/bin/fedmesh-hostile"));
        assert_eq!(scenario.hostile_members(), 1);
    }

    #[test]
    fn a_killed_node_can_be_restarted_and_a_joiner_named() {
        let text = r#"
            nodes = 3
            [[events]]
            round = 2
            action = "kill"
            target = 1
            [[events]]
            round = 4
            action = "restart"
            target = 1
            [[events]]
            round = 3
            action = "join"
            [[events]]
            round = 5
            action = "leave"
            target = 3
            "#;
        let file = parse(text).unwrap();
        assert_eq!(file.fewest_members(), 2);
    }

    #[test]
    fn every_shipped_scenario_file_loads() {
        let dir = Path::new(
            &std::env::var("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR"),
        )
        .join("scenarios");
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let file = ScenarioFile::load(&entry.unwrap().path()).unwrap();
            // mnist5k, and breast-cancer for the operators' three-node case of fast rounds.
            assert!(
                ["mnist5k", "breast-cancer"].contains(&file.dataset.as_str()),
                "{:?}",
                file.name
            );
            assert!(file.target.is_some());
            // The smaller files each exercise events or compare a job with slow nodes (run
            // against its variant by a test); the 50-node ones show scale.
            match file.nodes {
                50 => {}
                _ => assert!(!file.events.is_empty() || file.slow.is_some(), "{:?}", file.name),
            }
            names.push(file.name.unwrap());
        }
        names.sort();
        let attacks = names.iter().filter(|name| name.starts_with("attack-")).count();
        assert_eq!((names.len(), attacks), (27, 13), "{names:?}");
    }
}
