//! What one simulated run is: the job (members, rounds, topology, model, strategy) and the world
//! it runs in (latency, bandwidth, loss, kills, partitions, adversaries), with the parsers of
//! the flag values that describe them.

use fedmesh_learning::{Embedded, Model};
use fedmesh_protocol::model::ModelSpec;
use fedmesh_protocol::spec::Auditors;
use fedmesh_protocol::strategy::{AggregationRule, StrategySpec};
use fedmesh_protocol::tag::BuiltinTopology;
use std::fmt;
use std::str::FromStr;

/// Why a flag's value or a combination of flags cannot describe a run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("`{0}` is not a latency range: use A..B in milliseconds, A <= B (for example 10..80)")]
    Latency(String),
    #[error("`{0}` is not a partition: use ROUND:FRACTION (for example 3:0.3)")]
    Partition(String),
    #[error(
        "`{0}` is not an adversary: use KIND:COUNT with KIND one of sign-flip, noise, \
         withhold-results, hijack-rounds, forged-deltas, forge-aggregate"
    )]
    Adversary(String),
    #[error("`{0}` is not a topology: use central, hierarchical, ring or hybrid")]
    Topology(String),
    #[error("`{0}` is not a strategy: use fedavg, median or trimmed-mean:BETA")]
    Strategy(String),
    #[error("`{0}` is not a model: use bench:P, softmax or mlp:H,...")]
    Model(String),
    #[error("`{0}` is not an embedded data set: use mnist5k, digits or breast-cancer")]
    Dataset(String),
    #[error("`{0}` is not a set of auditors: use all or a fraction in (0, 1] (for example 0.3)")]
    Auditors(String),
    #[error("{0}")]
    Invalid(String),
}

/// Per-link one-way latency bounds, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatencyRange {
    pub min_ms: u64,
    pub max_ms: u64,
}

impl FromStr for LatencyRange {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::Latency(text.to_owned());
        let (low, high) = text.split_once("..").ok_or_else(bad)?;
        let min_ms = low.trim().parse().map_err(|_| bad())?;
        let max_ms = high.trim().parse().map_err(|_| bad())?;
        if min_ms > max_ms {
            return Err(bad());
        }
        Ok(Self { min_ms, max_ms })
    }
}

/// A fraction in [0, 1].
fn fraction(text: &str) -> Option<f64> {
    text.trim().parse::<f64>().ok().filter(|f| (0.0..=1.0).contains(f))
}

/// A partition: when the first member opens `round`, `fraction` of the members is cut off from
/// the others for one round deadline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PartitionSpec {
    pub round: u64,
    pub fraction: f64,
}

impl FromStr for PartitionSpec {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::Partition(text.to_owned());
        let (round, share) = text.split_once(':').ok_or_else(bad)?;
        let round = round.trim().parse().ok().filter(|r| *r >= 1).ok_or_else(bad)?;
        Ok(Self { round, fraction: fraction(share).ok_or_else(bad)? })
    }
}

/// A way a member misbehaves on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum AdversaryKind {
    /// Its updates are its honest ones negated and scaled by 10.
    SignFlip,
    /// Its updates are Gaussian noise (standard deviation 1).
    Noise,
    /// It never publishes the results of rounds it closes (it still serves them when asked).
    WithholdResults,
    /// It answers every opening by another with its own and a made-up result.
    HijackRounds,
    /// Beside each honest update it sends one with a bad signature, one for the wrong round and
    /// one on the wrong base model.
    ForgedDeltas,
    /// As an elected aggregator, it announces a model that is not the recomputation of the
    /// contributions it lists: its honest result plus a backdoor delta.
    ForgeAggregate,
}

impl AdversaryKind {
    pub const ALL: [Self; 6] = [
        Self::SignFlip,
        Self::Noise,
        Self::WithholdResults,
        Self::HijackRounds,
        Self::ForgedDeltas,
        Self::ForgeAggregate,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::SignFlip => "sign-flip",
            Self::Noise => "noise",
            Self::WithholdResults => "withhold-results",
            Self::HijackRounds => "hijack-rounds",
            Self::ForgedDeltas => "forged-deltas",
            Self::ForgeAggregate => "forge-aggregate",
        }
    }
}

impl fmt::Display for AdversaryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `KIND:COUNT` members misbehave this way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdversarySpec {
    pub kind: AdversaryKind,
    pub count: usize,
}

impl FromStr for AdversarySpec {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::Adversary(text.to_owned());
        let (kind, count) = text.split_once(':').ok_or_else(bad)?;
        let kind = AdversaryKind::ALL.into_iter().find(|k| k.name() == kind).ok_or_else(bad)?;
        Ok(Self { kind, count: count.trim().parse().map_err(|_| bad())? })
    }
}

/// A built-in topology by its flag name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topology(pub BuiltinTopology);

impl FromStr for Topology {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, ConfigError> {
        let builtin = match text {
            "central" => BuiltinTopology::Central,
            "hierarchical" => BuiltinTopology::Hierarchical,
            "ring" => BuiltinTopology::Ring,
            "hybrid" => BuiltinTopology::Hybrid,
            _ => return Err(ConfigError::Topology(text.to_owned())),
        };
        Ok(Self(builtin))
    }
}

/// An aggregation rule by its flag name.
#[derive(Debug, Clone, PartialEq)]
pub struct Strategy(pub AggregationRule);

impl FromStr for Strategy {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::Strategy(text.to_owned());
        let rule = match text.split_once(':') {
            None if text == "fedavg" => AggregationRule::FedAvg,
            None if text == "median" => AggregationRule::Median,
            Some(("trimmed-mean", beta)) => {
                let beta = fraction(beta).filter(|b| *b < 0.5).ok_or_else(bad)?;
                AggregationRule::TrimmedMean { beta: beta as f32 }
            }
            _ => return Err(bad()),
        };
        Ok(Self(rule))
    }
}

/// Who audits a verifiable job's results, by its flag value (`all`, or a fraction).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AuditorsChoice(pub Auditors);

impl FromStr for AuditorsChoice {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, ConfigError> {
        if text == "all" {
            return Ok(Self(Auditors::All));
        }
        let fraction = fraction(text).filter(|f| *f > 0.0);
        fraction
            .map(|f| Self(Auditors::Fraction(f as f32)))
            .ok_or_else(|| ConfigError::Auditors(text.to_owned()))
    }
}

/// The model a job trains, by its flag name (`bench:P`, `softmax`, `mlp:H,...`).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelChoice(pub ModelSpec);

impl FromStr for ModelChoice {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, ConfigError> {
        Model::parse_spec(text).map(Self).map_err(|_| ConfigError::Model(text.to_owned()))
    }
}

/// An embedded data set by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatasetChoice(pub Embedded);

impl FromStr for DatasetChoice {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, ConfigError> {
        Embedded::from_name(text).map(Self).ok_or_else(|| ConfigError::Dataset(text.to_owned()))
    }
}

/// Everything one run is made of; the same config and seed give the same run.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub members: usize,
    pub rounds: u64,
    pub topology: BuiltinTopology,
    pub seed: u64,
    pub latency: LatencyRange,
    /// Bandwidth of every link, in megabits a second.
    pub bandwidth_mbps: f64,
    /// Probability that one message copy is lost.
    pub loss: f64,
    /// Fraction of the members killed (and, unless `restart_after_secs` is none, restarted).
    pub kill: f64,
    /// How long a killed member stays down; none: it never comes back.
    pub restart_after_secs: Option<f64>,
    /// Fraction of the members whose operators leave the job (a signed leave) at seeded times,
    /// none of them killed too; each joins it again, afresh, `rejoin_after_secs` later.
    pub leave: f64,
    /// How long a member that left stays out; none: it never joins again.
    pub rejoin_after_secs: Option<f64>,
    pub partition: Option<PartitionSpec>,
    pub adversaries: Vec<AdversarySpec>,
    pub model: ModelSpec,
    pub dataset: Embedded,
    pub strategy: StrategySpec,
    /// Local training: passes over a member's data per round, and the learning rate.
    pub local_epochs: u32,
    pub lr: f32,
    pub deadline_secs: u64,
    pub quorum: f64,
    pub min_participants: u32,
    /// Group labels handed out round-robin (hierarchical and hybrid topologies group by them).
    pub groups: usize,
    /// The run gives up (status "stalled") after this much simulated time.
    pub max_sim_secs: f64,
    /// Print the machines' log notices.
    /// Verifiable aggregation: who audits each result (none: results are not audited).
    pub verification: Option<Auditors>,
    /// Secure aggregation: trainers mask their updates (clipped to the strategy's `clip_norm`,
    /// which it requires) and each slot's aggregator learns only their sum.
    pub secure_aggregation: bool,
    pub verbose: bool,
    /// Print a line when each round's model is first adopted.
    pub progress: bool,
}

impl Config {
    /// A small honest run: `members` members, `rounds` rounds of a 1,000-parameter bench model
    /// over a central topology, 10..50 ms links.
    pub fn new(members: usize, rounds: u64, seed: u64) -> Self {
        Self {
            members,
            rounds,
            topology: BuiltinTopology::Central,
            seed,
            latency: LatencyRange { min_ms: 10, max_ms: 50 },
            bandwidth_mbps: 100.0,
            loss: 0.0,
            kill: 0.0,
            restart_after_secs: None,
            leave: 0.0,
            rejoin_after_secs: None,
            partition: None,
            adversaries: Vec::new(),
            model: ModelSpec::Bench { params: 1_000 },
            dataset: Embedded::Mnist5k,
            strategy: StrategySpec::default(),
            local_epochs: 1,
            lr: 0.05,
            deadline_secs: 30,
            quorum: 0.8,
            min_participants: 1,
            groups: 10,
            max_sim_secs: 3_600.0,
            verification: None,
            secure_aggregation: false,
            verbose: false,
            progress: false,
        }
    }

    /// How long a killed member stays down, in milliseconds (none: forever).
    pub fn restart_after_ms(&self) -> Option<u64> {
        self.restart_after_secs.map(|secs| (secs * 1_000.0).round() as u64)
    }

    /// How long a member that left stays out, in milliseconds (none: forever).
    pub fn rejoin_after_ms(&self) -> Option<u64> {
        self.rejoin_after_secs.map(|secs| (secs * 1_000.0).round() as u64)
    }

    /// How many members misbehave, of every kind together.
    pub fn adversary_count(&self) -> usize {
        self.adversaries.iter().map(|a| a.count).sum()
    }

    /// Checks the combination of values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |text: String| Err(ConfigError::Invalid(text));
        if self.members == 0 {
            return invalid("--members must be at least 1".into());
        }
        if self.rounds == 0 {
            return invalid("--rounds must be at least 1".into());
        }
        if self.adversary_count() >= self.members {
            return invalid(format!(
                "{} adversaries among {} members leave no honest member",
                self.adversary_count(),
                self.members
            ));
        }
        for (name, value) in [("--loss", self.loss), ("--kill", self.kill), ("--leave", self.leave)]
        {
            if !(0.0..=1.0).contains(&value) {
                return invalid(format!("{name} {value} is not in [0, 1]"));
            }
        }
        if self.loss >= 1.0 {
            return invalid("--loss 1 loses every message".into());
        }
        if !(self.quorum > 0.0 && self.quorum <= 1.0) {
            return invalid(format!("--quorum {} is not in (0, 1]", self.quorum));
        }
        if !(self.bandwidth_mbps > 0.0 && self.bandwidth_mbps.is_finite()) {
            return invalid("--bandwidth-mbps must be a positive number".into());
        }
        if self.local_epochs == 0 || !(self.lr > 0.0 && self.lr.is_finite()) {
            return invalid("--local-epochs must be at least 1 and --lr a positive number".into());
        }
        if self.deadline_secs == 0 || self.groups == 0 {
            return invalid("--deadline-secs and --groups must be at least 1".into());
        }
        if self.kill + self.leave > 1.0 {
            return invalid("--kill and --leave together exceed every member".into());
        }
        for (name, secs) in [
            ("--restart-after-secs", self.restart_after_secs),
            ("--rejoin-after-secs", self.rejoin_after_secs),
        ] {
            if secs.is_some_and(|s| !(s >= 0.0 && s.is_finite())) {
                return invalid(format!("{name} must be a non-negative number"));
            }
        }
        if !(self.max_sim_secs > 0.0 && self.max_sim_secs.is_finite()) {
            return invalid("--max-sim-secs must be a positive number".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_values_parse_and_bad_ones_say_why() {
        assert_eq!("10..80".parse(), Ok(LatencyRange { min_ms: 10, max_ms: 80 }));
        assert!("80..10".parse::<LatencyRange>().is_err());
        assert_eq!("3:0.25".parse(), Ok(PartitionSpec { round: 3, fraction: 0.25 }));
        assert!("0:0.5".parse::<PartitionSpec>().is_err());
        assert!("2:1.5".parse::<PartitionSpec>().is_err());
        assert_eq!(
            "hijack-rounds:2".parse(),
            Ok(AdversarySpec { kind: AdversaryKind::HijackRounds, count: 2 })
        );
        let error = "lying:2".parse::<AdversarySpec>().unwrap_err();
        assert!(error.to_string().contains("sign-flip"));
        assert_eq!(
            "trimmed-mean:0.2".parse::<Strategy>().map(|s| s.0),
            Ok(AggregationRule::TrimmedMean { beta: 0.2 })
        );
        assert!("trimmed-mean:0.7".parse::<Strategy>().is_err());
        assert_eq!("bench:10".parse(), Ok(ModelChoice(ModelSpec::Bench { params: 10 })));
        assert!("mlp:".parse::<ModelChoice>().is_err());
        assert!("mnist".parse::<DatasetChoice>().is_err());
    }

    #[test]
    fn impossible_combinations_are_refused() {
        let mut config = Config::new(3, 2, 1);
        assert_eq!(config.validate(), Ok(()));
        config.adversaries = vec![AdversarySpec { kind: AdversaryKind::Noise, count: 3 }];
        assert!(config.validate().is_err());
        let config = Config { loss: 1.0, ..Config::new(3, 2, 1) };
        assert!(config.validate().is_err());
    }
}
