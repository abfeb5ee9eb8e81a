//! The kinds of deliberate misbehaviour (and faults) a node can be set to, to test a
//! federation's defenses: the `misbehave` setting. Only a build with the `misbehave` cargo
//! feature (the tests' and the testnet's) acts on them; a default build refuses the setting.

use serde::{Deserialize, Serialize};

/// Whether this build acts on the `misbehave` setting (the cargo feature `misbehave`).
pub const COMPILED_IN: bool = cfg!(feature = "misbehave");

/// One kind of misbehaviour, as the `misbehave` setting names it.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Misbehaviour {
    /// Before each honest delta, the same update signed by a key that is not a member, one for
    /// the wrong round and one on the wrong base model.
    ForgedDeltas,
    /// Sends its update negated and scaled by 10 instead of the honest one.
    SignFlip,
    /// Sends Gaussian noise (standard deviation 1 per parameter) instead of its update.
    Noise,
    /// Whenever another member opens a round, opens it too and announces a made-up model for
    /// it, as a member trying to take the federation's model over would.
    HijackRounds,
    /// In an orchestrated job, answers each of the coordinator's assignments with one of its
    /// own (itself the aggregator of every slot), signed by its own key.
    ForgeAssignments,
    /// Announces the result of a round it aggregates to nobody, as an aggregator killed right
    /// after closing a round would (it still answers a member that asks for it).
    WithholdResults,
    /// As a round's aggregator, announces a model with a backdoor delta added (0.5 on each of
    /// its first 16 parameters) while listing the honest contributions: the auditors of a
    /// verifiable job recompute the model, prove the lie and exclude it.
    ForgeAggregate,
    /// A fault rather than an attack: every large round model this node makes takes 4 s longer
    /// to store, as on a slow disk. It shows that nothing else waits behind a job's heavy work.
    SlowDisk,
}

impl Misbehaviour {
    /// Every kind, in the order the documentation lists them.
    pub const ALL: [Self; 8] = [
        Self::ForgedDeltas,
        Self::SignFlip,
        Self::Noise,
        Self::HijackRounds,
        Self::ForgeAssignments,
        Self::WithholdResults,
        Self::ForgeAggregate,
        Self::SlowDisk,
    ];

    /// The name the `misbehave` setting uses.
    pub fn name(self) -> &'static str {
        match self {
            Self::ForgedDeltas => "forged-deltas",
            Self::SignFlip => "sign-flip",
            Self::Noise => "noise",
            Self::HijackRounds => "hijack-rounds",
            Self::ForgeAssignments => "forge-assignments",
            Self::WithholdResults => "withhold-results",
            Self::ForgeAggregate => "forge-aggregate",
            Self::SlowDisk => "slow-disk",
        }
    }
}

impl std::fmt::Display for Misbehaviour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_reads_back_from_its_name() {
        for kind in Misbehaviour::ALL {
            let quoted = serde_json::to_string(&kind).unwrap();
            assert_eq!(quoted, format!("\"{kind}\""));
            assert_eq!(serde_json::from_str::<Misbehaviour>(&quoted).unwrap(), kind);
        }
    }
}
