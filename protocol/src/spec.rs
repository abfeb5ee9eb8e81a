//! The job spec (JSON): what a job trains, on what, how, with whom; parsing that reports every
//! problem with its field path, and the canonical JSON a job announcement signs.
//!
//! ```json
//! {
//!   "name": "mnist-mlp",
//!   "owner": "12D3KooW...",
//!   "tag": "central",
//!   "model": {"mlp": [200]},
//!   "dataset": "mnist",
//!   "hyperparameters": {"rounds": 20, "lr": 0.05},
//!   "strategy": {"rule": "trimmed_mean", "beta": 0.1},
//!   "participation": {"min_participants": 3, "fraction": 0.5},
//!   "quorum": {"fraction": 0.8},
//!   "round_deadline_secs": 120
//! }
//! ```
//!
//! Only `name`, `owner`, `model` and `dataset` are required. Trainer-side TAG validation (roles,
//! channels, groups) is `fedmesh-topologies`'; here the TAG's shape and field names are checked.

use crate::ids::{ContentHash, MemberId};
use crate::message::MAX_MEMBERS;
use crate::model::{ExternalInit, ModelSpec, TensorLayout};
use crate::strategy::{AggregationRule, ServerOptimizerSpec, StrategySpec};
use crate::tag::{BuiltinTopology, FieldWarning, TagSchema, TagSpec, unknown_schema_keys};
use crate::tensor::{TensorEncoding, TensorError, encode_params, encode_top_k};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeSet;

mod asynchronous;
pub use asynchronous::{AsyncOptions, MAX_STALENESS, Mode, Staleness};
use std::fmt;

/// Largest job spec JSON, in bytes (it travels inside a gossip message).
pub const MAX_JOB_SPEC_BYTES: usize = 48 * 1024;
/// Most parameters a job's model may have.
pub const MAX_MODEL_PARAMS: u64 = 1 << 31;
/// Longest round deadline: a week.
pub const MAX_ROUND_DEADLINE_SECS: u64 = 7 * 24 * 3600;

/// A job, as its owner states it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub name: String,
    /// The member whose key signs the announcement (a PeerId string in JSON).
    pub owner: MemberId,
    /// The topology; `"central"` if absent.
    #[serde(default = "default_tag")]
    pub tag: TagSpec,
    pub model: ModelSpec,
    /// The data set name each node maps to its own local data.
    pub dataset: String,
    #[serde(default)]
    pub hyperparameters: Hyperparameters,
    #[serde(default)]
    pub strategy: StrategySpec,
    #[serde(default)]
    pub participation: Participation,
    #[serde(default)]
    pub quorum: Quorum,
    /// A round closes at its quorum or after this many seconds.
    #[serde(default = "default_deadline")]
    pub round_deadline_secs: u64,
    /// The coordinator of an orchestrated job; none for a self-organizing one.
    #[serde(default)]
    pub coordinator: Option<MemberId>,
    /// In an orchestrated job: members that hear nothing from the coordinator for this many
    /// seconds elect aggregators themselves until it is back (none: they wait for it).
    #[serde(default)]
    pub coordinator_fallback_secs: Option<u64>,
    /// Seed of model initialization, client selection and data shuffling.
    #[serde(default)]
    pub seed: u64,
    /// How trainers encode their deltas on the wire (default `f32`, exact).
    #[serde(default)]
    pub delta_encoding: DeltaEncoding,
    /// The classes every member's labels map to, so that every member builds the same model
    /// layout whatever classes its own data holds (none: each member counts its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<Classes>,
    /// Who draws the DP noise, and the δ the privacy spent is reported at (left out of the
    /// canonical JSON while it is the default, so older announcements keep their bytes).
    #[serde(default, skip_serializing_if = "Privacy::is_default")]
    pub privacy: Privacy,
    /// Verifiable aggregation: members audit each round's model against the contributions its
    /// result lists (none: results are taken as their aggregator signs them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<Verification>,
    /// Synchronous rounds (default) or asynchronous FL (left out of the canonical JSON while
    /// sync, so older announcements keep their bytes).
    #[serde(default, skip_serializing_if = "Mode::is_sync")]
    pub mode: Mode,
    /// FedBuff's settings, for an `async` job (defaults when it leaves them out).
    #[serde(rename = "async", default, skip_serializing_if = "Option::is_none")]
    pub asynchronous: Option<AsyncOptions>,
}

/// The job's privacy settings (`privacy`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Privacy {
    /// Who adds the DP noise `strategy.noise_multiplier` asks for (default `central`).
    pub noise: NoisePlacement,
    /// The δ at which a member reports the ε the job's rounds spent (default 1e-5).
    pub delta: f64,
    /// Secure aggregation (default off): trainers send only pairwise-masked, quantized updates
    /// and the round's aggregator learns only their sum (central topology, FedAvg, trainers
    /// clip to `strategy.clip_norm`). Left out of the canonical JSON when off, so the
    /// announcements of jobs made before it keep their bytes.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub secure_aggregation: bool,
}

/// Who draws a job's DP noise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoisePlacement {
    /// The aggregator, to the combined update (it sees every update before the noise).
    #[default]
    Central,
    /// Each trainer, a share of it to its own clipped update before sending, so that no party
    /// ever sees an update without noise (the aggregator neither clips nor adds any).
    Distributed,
}

impl Default for Privacy {
    fn default() -> Self {
        Self { noise: NoisePlacement::Central, delta: 1e-5, secure_aggregation: false }
    }
}

impl Privacy {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// Whether the trainers draw the noise.
    pub fn distributed(&self) -> bool {
        self.noise == NoisePlacement::Distributed
    }
}

/// Verifiable aggregation: auditors recompute each round's model from the contributions its
/// result lists (with `fedmesh_aggregation::verifiable`), and a signed fraud proof excludes an
/// aggregator whose model is not that recomputation.
///
/// JSON: `{"auditors": "all"}` or `{"auditors": {"fraction": 0.3}, "audit_window_secs": 600}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verification {
    /// Who audits each result.
    pub auditors: Auditors,
    /// How long trainers and the aggregator keep a round's contributions for auditors to fetch
    /// (default 600).
    #[serde(default = "default_audit_window")]
    pub audit_window_secs: u64,
}

/// Who audits a round's result.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Auditors {
    /// Every member.
    All,
    /// About this fraction of the members, drawn per result from its hash and each member's
    /// key (so the aggregator cannot know them before it announces).
    Fraction(f32),
}

fn default_audit_window() -> u64 {
    600
}

/// Longest audit window: a day.
pub const MAX_AUDIT_WINDOW_SECS: u64 = 24 * 3600;

/// A job's classes: `3` (labels are the numbers 0, 1, 2) or `["setosa", "versicolor"]` (labels
/// are these names, class i being the i-th).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Classes {
    Count(u32),
    Names(Vec<String>),
}

impl Classes {
    /// How many classes.
    pub fn count(&self) -> usize {
        match self {
            Self::Count(count) => *count as usize,
            Self::Names(names) => names.len(),
        }
    }
}

/// Most classes a job may name.
pub const MAX_CLASSES: usize = 10_000;

/// How trainers encode their deltas: exact, or compacted at some cost in precision.
///
/// JSON: `"f32"`, `"f16"`, `"int8"`, or `{"top_k": 0.01}` (the fraction of parameters kept).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeltaEncoding {
    /// 4 bytes per parameter, exact.
    #[default]
    F32,
    /// 2 bytes per parameter (half precision).
    F16,
    /// 1 byte per parameter and one scale per tensor.
    Int8,
    /// Top-k sparsification: only this fraction of the parameters, those of largest magnitude,
    /// as (index, value) pairs (8 bytes each); a trainer carries what it did not send over to
    /// its next round's delta (error feedback).
    TopK(f32),
}

impl DeltaEncoding {
    /// The payload encoding it stands for.
    pub fn tensor_encoding(self) -> TensorEncoding {
        match self {
            Self::F32 => TensorEncoding::F32Le,
            Self::F16 => TensorEncoding::F16Le,
            Self::Int8 => TensorEncoding::Int8,
            Self::TopK(_) => TensorEncoding::Sparse,
        }
    }

    /// Encodes a delta; for int8 the layout gives a scale per tensor.
    pub fn encode(self, delta: &[f32], layout: &TensorLayout) -> Result<Vec<u8>, TensorError> {
        match self {
            Self::TopK(fraction) => encode_top_k(delta, top_k_count(fraction, delta.len())),
            other => encode_params(delta, other.tensor_encoding(), Some(layout)),
        }
    }

    /// Whether what a delta's encoding drops is carried over to the next delta.
    pub fn carries_residual(self) -> bool {
        matches!(self, Self::TopK(_))
    }
}

/// How many of `params` parameters a top-k `fraction` keeps: at least one.
fn top_k_count(fraction: f32, params: usize) -> usize {
    ((f64::from(fraction) * params as f64).ceil() as usize).clamp(1, params.max(1))
}

fn default_tag() -> TagSpec {
    TagSpec::Builtin(BuiltinTopology::Central)
}

/// A round's deadline when the spec sets none.
pub const DEFAULT_ROUND_DEADLINE_SECS: u64 = 300;

fn default_deadline() -> u64 {
    DEFAULT_ROUND_DEADLINE_SECS
}

/// Local training settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Hyperparameters {
    /// Number of rounds (default 10).
    pub rounds: u64,
    /// Passes over the local data per round (default 1).
    pub local_epochs: u32,
    /// Default 32.
    pub batch_size: u32,
    /// Learning rate (default 0.05).
    pub lr: f32,
    /// SGD momentum in [0, 1) (default 0).
    pub momentum: f32,
    /// L2 weight decay (default 0).
    pub weight_decay: f32,
    /// FedProx proximal term; 0 is plain FedAvg (default 0).
    pub fedprox_mu: f32,
    /// How the local learning rate changes over the rounds: `"step:EVERY,GAMMA"` or `"cosine"`
    /// (default: constant). Left out of the canonical JSON when constant, so older
    /// announcements keep their bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lr_schedule: Option<LrSchedule>,
}

impl Hyperparameters {
    /// The local learning rate of `round` (1-based), after the schedule.
    pub fn lr_at(&self, round: u64) -> f32 {
        self.lr_schedule.map_or(self.lr, |schedule| schedule.lr(self.lr, round, self.rounds))
    }
}

/// A learning-rate schedule over a job's rounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LrSchedule {
    /// `step:EVERY,GAMMA`: the rate is multiplied by GAMMA every EVERY rounds.
    Step { every: u64, gamma: f32 },
    /// `cosine`: half a cosine from the rate in round 1 towards 0 after the last round.
    Cosine,
}

impl LrSchedule {
    /// The rate of `round` (1-based) of `rounds`, from `lr` in round 1.
    pub fn lr(self, lr: f32, round: u64, rounds: u64) -> f32 {
        let done = round.saturating_sub(1);
        match self {
            Self::Step { every, gamma } => {
                let steps = (done / every.max(1)).min(i32::MAX as u64) as i32;
                lr * gamma.powi(steps)
            }
            Self::Cosine => {
                let progress = done as f64 / rounds.max(1) as f64;
                (f64::from(lr) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())) as f32
            }
        }
    }
}

impl std::fmt::Display for LrSchedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Step { every, gamma } => write!(f, "step:{every},{gamma}"),
            Self::Cosine => f.write_str("cosine"),
        }
    }
}

impl std::str::FromStr for LrSchedule {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let wrong = || {
            format!(
                "`{text}` is not \"step:EVERY,GAMMA\" (EVERY >= 1, GAMMA in (0, 1]) or \"cosine\""
            )
        };
        if text == "cosine" {
            return Ok(Self::Cosine);
        }
        let (every, gamma) =
            text.strip_prefix("step:").and_then(|r| r.split_once(',')).ok_or_else(wrong)?;
        let every: u64 = every.trim().parse().map_err(|_| wrong())?;
        let gamma: f32 = gamma.trim().parse().map_err(|_| wrong())?;
        if every == 0 || !(gamma > 0.0 && gamma <= 1.0) {
            return Err(wrong());
        }
        Ok(Self::Step { every, gamma })
    }
}

impl Serialize for LrSchedule {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for LrSchedule {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Default for Hyperparameters {
    fn default() -> Self {
        Self {
            rounds: 10,
            local_epochs: 1,
            batch_size: 32,
            lr: 0.05,
            momentum: 0.0,
            weight_decay: 0.0,
            fedprox_mu: 0.0,
            lr_schedule: None,
        }
    }
}

/// Who may take part, and how many trainers each round selects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Participation {
    /// A round starts only with at least this many members (default 1).
    pub min_participants: u32,
    /// At most this many trainers per round (default: no limit).
    pub max_participants: Option<u32>,
    /// The fraction of members selected as trainers each round, in (0, 1] (default 1).
    pub fraction: f32,
    /// Who may join: `open`, `allow` (the keys in `allow`) or `owner` (keys the owner signed a
    /// ticket for, and those in `allow`); default `allow` when `allow` lists keys, else `open`.
    pub admission: Option<Admission>,
    /// The keys allowed to join.
    pub allow: Vec<MemberId>,
    /// The most samples one member's update may weigh in a round (default: no cap beyond the
    /// count each member declared when it joined).
    pub max_samples: Option<u64>,
    /// How a round's trainers are chosen (default `random`; left out of the canonical JSON
    /// while it is, so the announcements of jobs made before it keep their bytes).
    #[serde(skip_serializing_if = "Selector::is_random")]
    pub selector: Selector,
}

/// How a round's trainers are chosen among the live members (`participation.selector`).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Selector {
    /// A seeded random `fraction` of them (at most `max_participants`), another each round.
    #[default]
    Random,
    /// FedBuff's: `concurrency` trainers a round (at most `max_participants`), those whose
    /// updates counted least recently first.
    Fedbuff(FedBuffSelector),
    /// Oort's guided selection (Lai et al., OSDI 2021): as many as `random` would pick, the
    /// members whose updates promise the most (reported loss, speed) mostly, a few explored.
    Oort(OortSelector),
}

impl Selector {
    pub fn is_random(&self) -> bool {
        *self == Self::Random
    }
}

/// The `fedbuff` selector's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FedBuffSelector {
    /// How many trainers a round has in flight (at least 1).
    pub concurrency: u32,
}

/// The `oort` selector's parameters (the paper's names in brackets).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OortSelector {
    /// The share of each round's trainers picked to explore, in [0, 1] (ε, default 0.1): members
    /// never tried while there are any (rounded up), then seeded-random ones among those not
    /// exploited (ε · trainers a round on average).
    pub exploration: f32,
    /// How hard a member slower than the preferred duration is penalized, >= 0 (α, default 2):
    /// its utility is multiplied by (T/t)^α when its round duration t exceeds T.
    pub straggler_penalty: f32,
    /// The preferred round duration T in seconds, > 0 (default: the median of the durations
    /// known).
    pub preferred_duration_secs: Option<f32>,
    /// A member exploited this many rounds in a row is left to exploration the next round, so
    /// its own reports cannot keep it selected (default 4, at least 1).
    pub max_consecutive: u32,
}

impl Default for OortSelector {
    fn default() -> Self {
        Self {
            exploration: 0.1,
            straggler_penalty: 2.0,
            preferred_duration_secs: None,
            max_consecutive: 4,
        }
    }
}

impl Default for Participation {
    fn default() -> Self {
        Self {
            min_participants: 1,
            max_participants: None,
            fraction: 1.0,
            admission: None,
            allow: Vec::new(),
            max_samples: None,
            selector: Selector::Random,
        }
    }
}

/// Who may join a job (`participation.admission`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Admission {
    /// Anyone may join.
    Open,
    /// Only the keys on the job's allow-list.
    Allow,
    /// The keys the owner's node signed a ticket for (`fedmesh job admit`), and the allow-list.
    Owner,
}

impl Participation {
    /// Who may join: as set, else `allow` for a job with an allow-list and `open` otherwise.
    pub fn admission(&self) -> Admission {
        match self.admission {
            Some(admission) => admission,
            None if self.allow.is_empty() => Admission::Open,
            None => Admission::Allow,
        }
    }
}

/// How many of the selected trainers' updates close a round: `{"count": 3}` or
/// `{"fraction": 0.8}` (default: all of them).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Quorum {
    Count(u32),
    Fraction(f32),
}

impl Default for Quorum {
    fn default() -> Self {
        Self::Fraction(1.0)
    }
}

impl Quorum {
    /// How many updates close a round of `selected` trainers (at least 1).
    pub fn required(&self, selected: usize) -> usize {
        match *self {
            Self::Count(count) => (count as usize).min(selected).max(1),
            Self::Fraction(fraction) => {
                // Less a tolerance, so that 0.8 (0.80000001 as f32) of 5 is 4, not 5.
                ((f64::from(fraction) * selected as f64 - 1e-6).ceil() as usize).max(1)
            }
        }
    }
}

/// One problem in a job spec, at a field path such as `strategy.beta`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in a job spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SpecErrors(pub Vec<SpecError>);

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.0.iter().map(SpecError::to_string).collect();
        f.write_str(&lines.join("\n"))
    }
}

/// Problems collected while parsing and validating.
#[derive(Default)]
struct Problems(Vec<SpecError>);

impl Problems {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(SpecError { path: path.into(), message: message.into() });
    }

    /// Records `message` at `path` unless `ok`.
    fn require(&mut self, ok: bool, path: &str, message: &str) {
        if !ok {
            self.push(path, message);
        }
    }

    fn finish(self) -> Result<(), SpecErrors> {
        if self.0.is_empty() { Ok(()) } else { Err(SpecErrors(self.0)) }
    }

    /// Takes and parses field `key`; a missing one is `default()` if it has one, else a problem.
    fn field<T: DeserializeOwned>(
        &mut self,
        map: &mut Map<String, Value>,
        key: &str,
        default: Option<fn() -> T>,
    ) -> Option<T> {
        let Some(value) = map.remove(key) else {
            if default.is_none() {
                self.push(key, "missing (required)");
            }
            return default.map(|make| make());
        };
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(parsed) => Some(parsed),
            Err(error) => {
                let inner = error.path().to_string();
                let path = if inner == "." { key.to_owned() } else { format!("{key}.{inner}") };
                self.push(path, error.into_inner().to_string());
                None
            }
        }
    }

    /// [`field`](Self::field) for a section whose every field has a default: each field is tried
    /// on its own first, so that every bad field is reported, not only the first.
    fn defaulted_section<T: DeserializeOwned + Default>(
        &mut self,
        map: &mut Map<String, Value>,
        key: &str,
    ) -> Option<T> {
        if let Some(Value::Object(section)) = map.get(key) {
            let before = self.0.len();
            for (name, value) in section.clone() {
                let mut single = Map::new();
                single.insert(key.to_owned(), Value::Object(Map::from_iter([(name, value)])));
                self.field::<T>(&mut single, key, Some(T::default));
            }
            if self.0.len() > before {
                map.remove(key);
                return None;
            }
        }
        self.field(map, key, Some(T::default))
    }

    /// Records every key of `value` (an object) that is not in `allowed`.
    fn known_keys(&mut self, value: Option<&Value>, path: &str, allowed: &[&str]) {
        let Some(Value::Object(map)) = value else { return };
        for key in map.keys().filter(|key| !allowed.contains(&key.as_str())) {
            let at = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
            self.push(at, format!("unknown field, expected one of: {}", allowed.join(", ")));
        }
    }
}

const TOP_FIELDS: &[&str] = &[
    "name",
    "owner",
    "tag",
    "model",
    "dataset",
    "hyperparameters",
    "strategy",
    "participation",
    "quorum",
    "round_deadline_secs",
    "coordinator",
    "coordinator_fallback_secs",
    "seed",
    "delta_encoding",
    "classes",
    "privacy",
    "verification",
    "mode",
    "async",
];

impl JobSpec {
    /// Parses and validates a job spec, reporting every problem with its field path.
    pub fn from_json(bytes: &[u8]) -> Result<Self, SpecErrors> {
        let mut problems = Problems::default();
        if bytes.len() > MAX_JOB_SPEC_BYTES {
            problems.push("(spec)", format!("{} bytes, at most {MAX_JOB_SPEC_BYTES}", bytes.len()));
            return Err(SpecErrors(problems.0));
        }
        let mut map = match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(map)) => map,
            Ok(_) => return Err(single("(spec)", "must be a JSON object")),
            Err(error) => return Err(single("(spec)", format!("not valid JSON: {error}"))),
        };
        problems.known_keys(Some(&Value::Object(map.clone())), "", TOP_FIELDS);
        check_shapes(&map, &mut problems);
        let fields = Fields::parse(&mut map, &mut problems);
        fields.check(&mut problems);
        match fields.into_spec() {
            Some(spec) => {
                spec.check_consistency(&mut problems);
                problems.finish().map(|()| spec)
            }
            None => Err(SpecErrors(problems.0)),
        }
    }

    /// [`from_json`](Self::from_json), and requires the bytes to be the spec's canonical JSON (as
    /// a signed announcement carries it).
    pub fn from_canonical_json(bytes: &[u8]) -> Result<Self, SpecErrors> {
        let spec = Self::from_json(bytes)?;
        if spec.to_canonical_json()? != bytes {
            return Err(single("(spec)", "not in canonical form (serialize the parsed spec)"));
        }
        Ok(spec)
    }

    /// The canonical JSON: every field, defaults included, in declaration order, no whitespace.
    pub fn to_canonical_json(&self) -> Result<Vec<u8>, SpecErrors> {
        serde_json::to_vec(self).map_err(|error| single("(spec)", error.to_string()))
    }

    /// A warning for each field of the spec that fedmesh reads but ignores (Flame's schema fields
    /// it cannot honour), under `tag`.
    pub fn warnings(&self) -> Vec<FieldWarning> {
        match &self.tag {
            TagSpec::Schema(schema) => {
                schema.warnings().into_iter().map(|warning| warning.under("tag")).collect()
            }
            TagSpec::Builtin(_) => Vec::new(),
        }
    }

    /// Checks every value range and cross-field rule.
    pub fn validate(&self) -> Result<(), SpecErrors> {
        let mut problems = Problems::default();
        Fields::from(self.clone()).check(&mut problems);
        self.check_consistency(&mut problems);
        problems.finish()
    }

    /// Rules that involve more than one section.
    fn check_consistency(&self, problems: &mut Problems) {
        let min = self.participation.min_participants as usize;
        if let AggregationRule::Krum { f } | AggregationRule::MultiKrum { f, .. } =
            self.strategy.rule
        {
            let needed = f.saturating_mul(2).saturating_add(3);
            if min < needed {
                problems.push(
                    "strategy.f",
                    format!(
                        "krum tolerating {f} faulty updates needs at least {needed} participants, \
                         participation.min_participants is {min}"
                    ),
                );
            }
            if let Quorum::Count(count) = self.quorum
                && (count as usize) < needed
            {
                problems.push(
                    "quorum.count",
                    format!("krum with f = {f} needs at least {needed} updates per round"),
                );
            }
        }
        if let AggregationRule::MultiKrum { f, m } = self.strategy.rule
            && m > min.saturating_sub(f)
        {
            problems.push(
                "strategy.m",
                format!("must be at most min_participants - f = {}", min.saturating_sub(f)),
            );
        }
        if let (Quorum::Count(count), Some(max)) =
            (self.quorum, self.participation.max_participants)
            && count > max
        {
            problems
                .push("quorum.count", format!("exceeds participation.max_participants ({max})"));
        }
        if self.verification.is_some() {
            self.check_verifiable(problems);
        }
        if self.privacy.distributed() {
            self.check_distributed_noise(problems);
        }
        if self.privacy.secure_aggregation {
            self.check_secure_aggregation(problems);
        }
        if !self.participation.selector.is_random() {
            self.check_guided_selector(problems);
        }
        self.check_async(problems);
        let ring = self.tag == TagSpec::Builtin(BuiltinTopology::Ring);
        if ring && self.strategy.noise_multiplier.is_some() && !self.privacy.distributed() {
            problems.push(
                "strategy.noise_multiplier",
                "a ring has no aggregator to add central noise: set privacy.noise to distributed",
            );
        }
        if self.tag.has_rings() && self.strategy.server.is_some() {
            problems.push(
                "strategy.server",
                "a ring's members each add its mean to the model, and a server optimizer's state \
                 is its round's aggregator's: use the central or the hierarchical topology",
            );
        }
        if self.tag == TagSpec::Builtin(BuiltinTopology::Ring)
            && self.strategy.rule != AggregationRule::FedAvg
        {
            problems
                .push("strategy.rule", "a ring all-reduce computes a weighted mean: use fedavg");
        }
    }
}

impl JobSpec {
    /// FedBuff's settings, when the job is asynchronous.
    pub fn async_options(&self) -> Option<AsyncOptions> {
        (self.mode == Mode::Async).then(|| self.asynchronous.unwrap_or_default())
    }

    /// An async job's versions are made from whichever updates arrive first, by one aggregator
    /// (or its groups' below it): what needs every selected trainer's update, or a ring, does
    /// not fit.
    fn check_async(&self, p: &mut Problems) {
        let Some(options) = self.async_options() else {
            if self.asynchronous.is_some() {
                p.push("async", "only an asynchronous job reads it: set \"mode\": \"async\"");
            }
            return;
        };
        let members = 1..=MAX_MEMBERS as u32;
        let message = format!("must be between 1 and {MAX_MEMBERS}");
        p.require(members.contains(&options.buffer), "async.buffer", &message);
        if let Some(concurrency) = options.concurrency {
            p.require(members.contains(&concurrency), "async.concurrency", &message);
            let enough = concurrency >= options.buffer;
            p.require(enough, "async.concurrency", "must be at least async.buffer");
        }
        let staleness = options.max_staleness <= MAX_STALENESS;
        let message = format!("must be at most {MAX_STALENESS} versions");
        p.require(staleness, "async.max_staleness", &message);
        let refuse = |p: &mut Problems, path: &str, why: &str| {
            p.push(path, format!("an asynchronous job cannot have it: {why}"));
        };
        if self.tag.has_rings() {
            refuse(p, "tag", "a ring's all-reduce needs every member's update of the same model");
        }
        if self.privacy.secure_aggregation {
            refuse(
                p,
                "privacy.secure_aggregation",
                "masks cancel only over a fixed set of trainers",
            );
        }
        if self.privacy.distributed() {
            refuse(p, "privacy.noise", "noise shares are sized for a round's fixed quorum");
        }
        if self.verification.is_some() {
            refuse(p, "verification", "auditors recompute rounds whose updates share one base");
        }
        if self.coordinator.is_some() {
            refuse(p, "coordinator", "the coordinator assigns synchronous rounds");
        }
        if !self.participation.selector.is_random() {
            refuse(p, "participation.selector", "a version's trainers are async.concurrency");
        }
        if self.quorum != Quorum::default() {
            refuse(p, "quorum", "a version closes at async.buffer updates");
        }
    }

    /// A selector that learns from past rounds needs the round's opener to pick the trainers
    /// (not a coordinator), and Oort each trainer's reported loss where the result is made.
    fn check_guided_selector(&self, p: &mut Problems) {
        if self.coordinator.is_some() {
            let reason = "an orchestrated job's coordinator selects the trainers: use \"random\"";
            p.push("participation.selector", reason);
        }
        if !matches!(self.participation.selector, Selector::Oort(_)) {
            return;
        }
        if self.tag != TagSpec::Builtin(BuiltinTopology::Central) {
            let reason = "oort needs each trainer's update at the aggregator that announces the \
                          result (its loss and arrival): use the central topology";
            p.push("participation.selector.oort", reason);
        }
        if self.privacy.secure_aggregation {
            let reason = "oort needs each trainer's own update at the aggregator: \
                          privacy.secure_aggregation hides it";
            p.push("participation.selector.oort", reason);
        }
    }

    /// Distributed noise needs noise to share out, a clip to scale it by, and a weighted mean
    /// to add the shares up in.
    fn check_distributed_noise(&self, problems: &mut Problems) {
        let noised = self.strategy.noise_multiplier.is_some_and(|m| m > 0.0);
        problems.require(
            noised && self.strategy.clip_norm.is_some(),
            "privacy.noise",
            "distributed noise needs strategy.noise_multiplier (> 0) and strategy.clip_norm",
        );
        problems.require(
            self.strategy.rule == AggregationRule::FedAvg,
            "privacy.noise",
            "distributed noise adds up only in a weighted mean: use strategy.rule fedavg",
        );
    }

    /// The strategy as the aggregator applies it: under distributed noise the trainers clip
    /// and noise their own updates, so the aggregator does neither (clipping a noised update
    /// would scale its noise down).
    pub fn aggregator_strategy(&self) -> StrategySpec {
        let mut strategy = self.strategy.clone();
        if self.privacy.distributed() {
            strategy.clip_norm = None;
            strategy.noise_multiplier = None;
        }
        if self.privacy.secure_aggregation {
            // The trainers clipped before masking; a masked sum cannot be clipped.
            strategy.clip_norm = None;
        }
        strategy
    }

    /// Secure aggregation sums masked, quantized updates: an aggregator sees no update on its
    /// own, so nothing may need one (a robust rule, its clip, its noise, an audit), the
    /// quantizer needs the trainers' clip, and each trainer sends to a slot's aggregator (no
    /// ring passes partial sums between trainers).
    fn check_secure_aggregation(&self, p: &mut Problems) {
        let reason = "privacy.secure_aggregation: the aggregator sees only the masked sum";
        if self.tag.has_rings() {
            let message = format!(
                "{reason}, and a ring's members pass each other partial sums: use the central \
                 or the hierarchical topology (each group's aggregator sums its group securely)"
            );
            p.push("tag", message);
        }
        if self.strategy.rule != AggregationRule::FedAvg {
            let message = format!("{reason}: use fedavg (robust rules need each update)");
            p.push("strategy.rule", message);
        }
        if self.strategy.clip_norm.is_none() {
            let message = format!(
                "{reason}: the trainers clip to strategy.clip_norm before quantizing, so it is \
                 required"
            );
            p.push("strategy.clip_norm", message);
        }
        let central_noise = !self.privacy.distributed();
        if central_noise && self.strategy.noise_multiplier.is_some_and(|noise| noise > 0.0) {
            let message = format!(
                "{reason}, which it cannot clip to add central noise: set privacy.noise to \
                 distributed (trainers add their share before masking)"
            );
            p.push("strategy.noise_multiplier", message);
        }
        if self.coordinator.is_some() {
            let message = format!(
                "{reason}: secure aggregation needs a self-organizing job for now (its \
                 rounds are the members' elected leaders')"
            );
            p.push("coordinator", message);
        }
    }
    /// A verifiable job's rounds must be recomputable by any member, bit for bit: no state or
    /// secret of the aggregator's in its result, and one aggregator per round for now.
    fn check_verifiable(&self, p: &mut Problems) {
        let reason = "verification: an auditor must recompute the aggregate";
        if self.strategy.server.is_some() {
            let message = format!(
                "{reason}, and audits do not recompute a server optimizer's step (from the state \
                 the round before named) yet"
            );
            p.push("strategy.server", message);
        }
        let central_noise = !self.privacy.distributed();
        if central_noise && self.strategy.noise_multiplier.is_some_and(|noise| noise > 0.0) {
            let message = format!(
                "{reason}, and central DP noise is drawn from the aggregator's secret (set \
                 privacy.noise to distributed: the trainers' noise is in their updates)"
            );
            p.push("strategy.noise_multiplier", message);
        }
        if let AggregationRule::Krum { .. } | AggregationRule::MultiKrum { .. } = self.strategy.rule
        {
            let message = format!("{reason}, and krum sums its distances in no fixed order");
            p.push("strategy.rule", message);
        }
        if self.tag != TagSpec::Builtin(BuiltinTopology::Central) {
            p.push(
                "tag",
                "verification supports the central topology only for now (hierarchical, ring, \
                 hybrid and TAG schemas combine partial aggregates no auditor holds)",
            );
        }
        if self.coordinator.is_some() {
            p.push(
                "coordinator",
                "verification needs a self-organizing job for now: an orchestrated job's \
                 aggregators are the coordinator's choice, which a fraud proof cannot exclude",
            );
        }
    }
}

fn check_verification(p: &mut Problems, verification: &Verification) {
    if let Auditors::Fraction(fraction) = verification.auditors {
        let ok = in_range(fraction, 0.0, 1.0, true) && fraction > 0.0;
        p.require(ok, "verification.auditors.fraction", "must be in (0, 1]");
    }
    let ok = (1..=MAX_AUDIT_WINDOW_SECS).contains(&verification.audit_window_secs);
    p.require(ok, "verification.audit_window_secs", "must be between 1 and 86400 (a day)");
}

fn single(path: &str, message: impl Into<String>) -> SpecErrors {
    SpecErrors(vec![SpecError { path: path.to_owned(), message: message.into() }])
}

/// The top-level fields, each parsed on its own so that one bad section does not hide problems in
/// the others.
struct Fields {
    name: Option<String>,
    owner: Option<MemberId>,
    tag: Option<TagSpec>,
    model: Option<ModelSpec>,
    dataset: Option<String>,
    hyperparameters: Option<Hyperparameters>,
    strategy: Option<StrategySpec>,
    participation: Option<Participation>,
    quorum: Option<Quorum>,
    round_deadline_secs: Option<u64>,
    coordinator: Option<Option<MemberId>>,
    coordinator_fallback_secs: Option<Option<u64>>,
    seed: Option<u64>,
    delta_encoding: Option<DeltaEncoding>,
    classes: Option<Option<Classes>>,
    privacy: Option<Privacy>,
    verification: Option<Option<Verification>>,
    mode: Option<Mode>,
    asynchronous: Option<Option<AsyncOptions>>,
}

impl Fields {
    fn parse(map: &mut Map<String, Value>, p: &mut Problems) -> Self {
        Self {
            name: p.field(map, "name", None),
            owner: p.field(map, "owner", None),
            tag: parse_tag(map, p),
            model: p.field(map, "model", None),
            dataset: p.field(map, "dataset", None),
            hyperparameters: p.defaulted_section(map, "hyperparameters"),
            strategy: p.field(map, "strategy", Some(StrategySpec::default)),
            participation: p.defaulted_section(map, "participation"),
            quorum: p.field(map, "quorum", Some(Quorum::default)),
            round_deadline_secs: p.field(map, "round_deadline_secs", Some(default_deadline)),
            coordinator: p.field(map, "coordinator", Some(|| None)),
            coordinator_fallback_secs: p.field(map, "coordinator_fallback_secs", Some(|| None)),
            seed: p.field(map, "seed", Some(|| 0)),
            delta_encoding: p.field(map, "delta_encoding", Some(DeltaEncoding::default)),
            classes: p.field(map, "classes", Some(|| None)),
            privacy: p.defaulted_section(map, "privacy"),
            verification: p.field(map, "verification", Some(|| None)),
            mode: p.field(map, "mode", Some(Mode::default)),
            asynchronous: p.field(map, "async", Some(|| None)),
        }
    }

    /// Checks the value ranges of every section that parsed.
    fn check(&self, p: &mut Problems) {
        if let Some(name) = &self.name {
            check_text(p, "name", name, 128);
        }
        if let Some(dataset) = &self.dataset {
            check_text(p, "dataset", dataset, 256);
        }
        if let Some(model) = &self.model {
            check_model(p, model);
        }
        if let Some(hyperparameters) = &self.hyperparameters {
            check_hyperparameters(p, hyperparameters);
        }
        if let Some(strategy) = &self.strategy {
            check_strategy(p, strategy);
        }
        if let Some(participation) = &self.participation {
            check_participation(p, participation);
        }
        if let Some(quorum) = &self.quorum {
            check_quorum(p, quorum);
        }
        if let Some(DeltaEncoding::TopK(fraction)) = self.delta_encoding {
            let ok = fraction > 0.0 && fraction <= 1.0;
            p.require(ok, "delta_encoding.top_k", "must be in (0, 1]");
        }
        if let Some(Some(classes)) = &self.classes {
            check_classes(p, classes);
        }
        if let Some(Some(verification)) = &self.verification {
            check_verification(p, verification);
        }
        if let (Some(None), Some(Some(_))) = (&self.coordinator, self.coordinator_fallback_secs) {
            p.push(
                "coordinator_fallback_secs",
                "only an orchestrated job (with a `coordinator`) falls back",
            );
        }
        if let Some(Some(secs)) = self.coordinator_fallback_secs {
            let ok = (1..=MAX_ROUND_DEADLINE_SECS).contains(&secs);
            p.require(ok, "coordinator_fallback_secs", "must be between 1 and 604800 (a week)");
        }
        if let Some(privacy) = &self.privacy {
            let ok = privacy.delta > 0.0 && privacy.delta < 1.0;
            p.require(ok, "privacy.delta", "must be in (0, 1), well below one over the members");
        }
        if let Some(deadline) = self.round_deadline_secs {
            let ok = (1..=MAX_ROUND_DEADLINE_SECS).contains(&deadline);
            p.require(ok, "round_deadline_secs", "must be between 1 and 604800 (a week)");
        }
    }

    fn into_spec(self) -> Option<JobSpec> {
        Some(JobSpec {
            name: self.name?,
            owner: self.owner?,
            tag: self.tag?,
            model: self.model?,
            dataset: self.dataset?,
            hyperparameters: self.hyperparameters?,
            strategy: self.strategy?,
            participation: self.participation?,
            quorum: self.quorum?,
            round_deadline_secs: self.round_deadline_secs?,
            coordinator: self.coordinator?,
            coordinator_fallback_secs: self.coordinator_fallback_secs?,
            seed: self.seed?,
            delta_encoding: self.delta_encoding?,
            classes: self.classes?,
            privacy: self.privacy?,
            verification: self.verification?,
            mode: self.mode?,
            asynchronous: self.asynchronous?,
        })
    }
}

impl From<JobSpec> for Fields {
    fn from(spec: JobSpec) -> Self {
        Self {
            name: Some(spec.name),
            owner: Some(spec.owner),
            tag: Some(spec.tag),
            model: Some(spec.model),
            dataset: Some(spec.dataset),
            hyperparameters: Some(spec.hyperparameters),
            strategy: Some(spec.strategy),
            participation: Some(spec.participation),
            quorum: Some(spec.quorum),
            round_deadline_secs: Some(spec.round_deadline_secs),
            coordinator: Some(spec.coordinator),
            coordinator_fallback_secs: Some(spec.coordinator_fallback_secs),
            seed: Some(spec.seed),
            delta_encoding: Some(spec.delta_encoding),
            classes: Some(spec.classes),
            privacy: Some(spec.privacy),
            verification: Some(spec.verification),
            mode: Some(spec.mode),
            asynchronous: Some(spec.asynchronous),
        }
    }
}

/// The TAG is untagged (a name or a schema): report what is wrong with the one it looks like.
fn parse_tag(map: &mut Map<String, Value>, p: &mut Problems) -> Option<TagSpec> {
    match map.get("tag") {
        None => Some(default_tag()),
        Some(Value::String(_)) => {
            let builtin = p.field::<BuiltinTopology>(map, "tag", None);
            builtin.map(TagSpec::Builtin)
        }
        Some(Value::Object(_)) => p.field::<TagSchema>(map, "tag", None).map(TagSpec::Schema),
        Some(_) => {
            p.push("tag", "must be a built-in topology name or a TAG schema object");
            None
        }
    }
}

/// Unknown-field checks where serde cannot do them (flattened and untagged sections).
fn check_shapes(map: &Map<String, Value>, p: &mut Problems) {
    check_strategy_keys(map.get("strategy"), p);
    if let Some(tag @ Value::Object(_)) = map.get("tag") {
        for unknown in unknown_schema_keys(tag) {
            p.push(format!("tag.{}", unknown.path), unknown.message());
        }
    }
    if let Some(Value::Object(model)) = map.get("model")
        && let Some(external) = model.get("external")
    {
        p.known_keys(Some(external), "model.external", &["tensors", "init"]);
        each(external.get("tensors"), "model.external.tensors", |tensor, path| {
            p.known_keys(Some(tensor), &path, &["name", "shape"]);
        });
    }
}

/// Calls `f` on every element of an array value, with its path.
fn each(value: Option<&Value>, path: &str, mut f: impl FnMut(&Value, String)) {
    if let Some(Value::Array(items)) = value {
        for (index, item) in items.iter().enumerate() {
            f(item, format!("{path}[{index}]"));
        }
    }
}

fn check_strategy_keys(strategy: Option<&Value>, p: &mut Problems) {
    let rule_keys: &[&str] = match strategy.and_then(|s| s.get("rule")).and_then(Value::as_str) {
        Some("trimmed_mean") => &["beta"],
        Some("krum") => &["f"],
        Some("multi_krum") => &["f", "m"],
        _ => &[],
    };
    let mut allowed = vec!["rule", "server", "clip_norm", "noise_multiplier"];
    allowed.extend_from_slice(rule_keys);
    p.known_keys(strategy, "strategy", &allowed);
    let server = strategy.and_then(|s| s.get("server"));
    let server_keys: &[&str] = match server.and_then(|s| s.get("optimizer")).and_then(Value::as_str)
    {
        Some("fedavgm") => &["optimizer", "eta", "beta1"],
        _ => &["optimizer", "eta", "beta1", "beta2", "tau"],
    };
    p.known_keys(server, "strategy.server", server_keys);
}

fn check_text(p: &mut Problems, path: &str, text: &str, max: usize) {
    p.require(!text.trim().is_empty(), path, "must not be empty");
    p.require(text.len() <= max, path, &format!("must be at most {max} bytes"));
    p.require(!text.chars().any(char::is_control), path, "must not contain control characters");
}

/// Whether `value` is finite and in `[low, high)` (or `[low, high]` when `inclusive`).
fn in_range(value: f32, low: f32, high: f32, inclusive: bool) -> bool {
    value.is_finite() && value >= low && (value < high || (inclusive && value == high))
}

fn positive(value: f32) -> bool {
    value.is_finite() && value > 0.0
}

fn check_model(p: &mut Problems, model: &ModelSpec) {
    match model {
        ModelSpec::Softmax => {}
        ModelSpec::Bench { params } => {
            let ok = (1..=MAX_MODEL_PARAMS).contains(params);
            p.require(ok, "model.bench.params", "must be between 1 and 2^31");
        }
        ModelSpec::Mlp(hidden) => {
            p.require(hidden.len() <= 64, "model.mlp", "at most 64 hidden layers");
            for (index, width) in hidden.iter().enumerate() {
                let ok = (1..=1 << 20).contains(width);
                p.require(ok, &format!("model.mlp[{index}]"), "must be between 1 and 1048576");
            }
        }
        ModelSpec::External(external) => {
            p.require(!external.tensors.is_empty(), "model.external.tensors", "must not be empty");
            let mut names = BTreeSet::new();
            for (index, tensor) in external.tensors.iter().enumerate() {
                let path = format!("model.external.tensors[{index}]");
                p.require(!tensor.name.is_empty(), &format!("{path}.name"), "must not be empty");
                let plain = is_plain_tensor_name(&tensor.name);
                p.require(
                    plain,
                    &format!("{path}.name"),
                    "must be letters, digits, `.`, `_` or `-`, at most 128, not starting with `.`",
                );
                p.require(names.insert(&tensor.name), &format!("{path}.name"), "is used twice");
                let ok = !tensor.shape.is_empty() && tensor.shape.iter().all(|d| *d >= 1);
                p.require(ok, &format!("{path}.shape"), "dimensions must be >= 1");
            }
            let total = external.tensors.iter().try_fold(1u64, |total, tensor| {
                let size = tensor.shape.iter().try_fold(1u64, |n, d| n.checked_mul(*d as u64))?;
                total.checked_add(size)
            });
            let ok = total.is_some_and(|total| total <= MAX_MODEL_PARAMS);
            p.require(ok, "model.external.tensors", "at most 2^31 parameters in all");
            if let ExternalInit::Safetensors(hash) = &external.init {
                let ok = ContentHash::from_hex(hash).is_ok();
                p.require(ok, "model.external.init.safetensors", "must be a 64-hex-digit hash");
            }
        }
    }
}

/// Whether a tensor name is safe as a file name (an export writes `NAME.npy`): letters, digits,
/// `.`, `_` and `-`, at most 128 of them, not starting with `.` (so never `..` or a path).
pub fn is_plain_tensor_name(name: &str) -> bool {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    !name.is_empty() && name.len() <= 128 && !name.starts_with('.') && name.chars().all(allowed)
}

fn check_hyperparameters(p: &mut Problems, h: &Hyperparameters) {
    let at = |field: &str| format!("hyperparameters.{field}");
    p.require((1..=100_000).contains(&h.rounds), &at("rounds"), "must be between 1 and 100000");
    let epochs = (1..=1000).contains(&h.local_epochs);
    p.require(epochs, &at("local_epochs"), "must be between 1 and 1000");
    let batch = (1..=1_000_000).contains(&h.batch_size);
    p.require(batch, &at("batch_size"), "must be between 1 and 1000000");
    p.require(positive(h.lr), &at("lr"), "must be > 0");
    p.require(in_range(h.momentum, 0.0, 1.0, false), &at("momentum"), "must be in [0, 1)");
    let decay = in_range(h.weight_decay, 0.0, f32::MAX, true);
    p.require(decay, &at("weight_decay"), "must be >= 0");
    let mu = in_range(h.fedprox_mu, 0.0, f32::MAX, true);
    p.require(mu, &at("fedprox_mu"), "must be >= 0");
}

fn check_strategy(p: &mut Problems, s: &StrategySpec) {
    match s.rule {
        AggregationRule::TrimmedMean { beta } => {
            p.require(in_range(beta, 0.0, 0.5, false), "strategy.beta", "must be in [0, 0.5)");
        }
        AggregationRule::MultiKrum { m, .. } => p.require(m >= 1, "strategy.m", "must be >= 1"),
        AggregationRule::FedAvg | AggregationRule::Median | AggregationRule::Krum { .. } => {}
    }
    if let Some(clip) = s.clip_norm {
        p.require(positive(clip), "strategy.clip_norm", "must be > 0");
    }
    if let Some(noise) = s.noise_multiplier {
        let ok = in_range(noise, 0.0, f32::MAX, true);
        p.require(ok, "strategy.noise_multiplier", "must be >= 0");
        let clipped = s.clip_norm.is_some();
        p.require(clipped, "strategy.noise_multiplier", "needs strategy.clip_norm (noise scale)");
    }
    let (eta, beta1, adaptive) = match &s.server {
        None => return,
        Some(ServerOptimizerSpec::FedAvgM { eta, beta1 }) => (*eta, *beta1, None),
        Some(
            ServerOptimizerSpec::FedAdam(params)
            | ServerOptimizerSpec::FedYogi(params)
            | ServerOptimizerSpec::FedAdagrad(params),
        ) => (params.eta, params.beta1, Some((params.beta2, params.tau))),
    };
    p.require(positive(eta), "strategy.server.eta", "must be > 0");
    p.require(in_range(beta1, 0.0, 1.0, false), "strategy.server.beta1", "must be in [0, 1)");
    if let Some((beta2, tau)) = adaptive {
        p.require(in_range(beta2, 0.0, 1.0, false), "strategy.server.beta2", "must be in [0, 1)");
        p.require(positive(tau), "strategy.server.tau", "must be > 0");
    }
}

fn check_participation(p: &mut Problems, part: &Participation) {
    let min = part.min_participants;
    p.require(min >= 1, "participation.min_participants", "must be >= 1");
    if let Some(max) = part.max_participants {
        let ok = max >= min.max(1) && max as usize <= MAX_MEMBERS;
        let message = format!("must be between min_participants ({min}) and {MAX_MEMBERS}");
        p.require(ok, "participation.max_participants", &message);
    }
    let fraction = in_range(part.fraction, 0.0, 1.0, true) && part.fraction > 0.0;
    p.require(fraction, "participation.fraction", "must be in (0, 1]");
    if let Some(cap) = part.max_samples {
        p.require(cap >= 1, "participation.max_samples", "must be >= 1");
    }
    p.require(part.allow.len() <= MAX_MEMBERS, "participation.allow", "too many members");
    let mut seen = BTreeSet::new();
    for (index, member) in part.allow.iter().enumerate() {
        let fresh = seen.insert(member);
        p.require(fresh, &format!("participation.allow[{index}]"), "is listed twice");
    }
    match part.admission {
        Some(Admission::Allow) if part.allow.is_empty() => {
            p.push("participation.allow", "admission \"allow\" needs the keys it allows")
        }
        Some(Admission::Open) if !part.allow.is_empty() => p.push(
            "participation.admission",
            "an open job has no allow-list: use \"allow\" or \"owner\"",
        ),
        _ => {}
    }
    if part.admission() == Admission::Allow && seen.len() < min as usize {
        let message = format!("lists {} members, fewer than min_participants ({min})", seen.len());
        p.push("participation.allow", message);
    }
    check_selector(p, &part.selector);
}

fn check_selector(p: &mut Problems, selector: &Selector) {
    match selector {
        Selector::Random => {}
        Selector::Fedbuff(fedbuff) => {
            let ok = fedbuff.concurrency >= 1 && fedbuff.concurrency as usize <= MAX_MEMBERS;
            let message = format!("must be between 1 and {MAX_MEMBERS}");
            p.require(ok, "participation.selector.fedbuff.concurrency", &message);
        }
        Selector::Oort(oort) => {
            let at = |field: &str| format!("participation.selector.oort.{field}");
            let exploration = in_range(oort.exploration, 0.0, 1.0, true);
            p.require(exploration, &at("exploration"), "must be in [0, 1]");
            let penalty = in_range(oort.straggler_penalty, 0.0, f32::MAX, true);
            p.require(penalty, &at("straggler_penalty"), "must be >= 0");
            if let Some(secs) = oort.preferred_duration_secs {
                p.require(positive(secs), &at("preferred_duration_secs"), "must be > 0");
            }
            p.require(oort.max_consecutive >= 1, &at("max_consecutive"), "must be >= 1");
        }
    }
}

fn check_classes(p: &mut Problems, classes: &Classes) {
    let count = classes.count();
    p.require(count >= 2, "classes", "a job needs at least 2 classes");
    p.require(count <= MAX_CLASSES, "classes", &format!("at most {MAX_CLASSES} classes"));
    if let Classes::Names(names) = classes {
        for (index, name) in names.iter().enumerate() {
            check_text(p, &format!("classes[{index}]"), name, 128);
        }
        let distinct: BTreeSet<&String> = names.iter().collect();
        p.require(distinct.len() == names.len(), "classes", "names a class twice");
    }
}

fn check_quorum(p: &mut Problems, quorum: &Quorum) {
    match *quorum {
        Quorum::Count(count) => p.require(count >= 1, "quorum.count", "must be >= 1"),
        Quorum::Fraction(fraction) => {
            let ok = in_range(fraction, 0.0, 1.0, true) && fraction > 0.0;
            p.require(ok, "quorum.fraction", "must be in (0, 1]");
        }
    }
}
