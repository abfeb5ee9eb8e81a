//! Asynchronous FL (FedBuff, Nguyen et al. 2022) in a job spec: `"mode": "async"` and the
//! `"async"` section (the buffer that makes a model version, how many train at once, and how a
//! stale update is discounted).

use serde::{Deserialize, Serialize};
use std::fmt;

/// Whether a job's rounds wait for their trainers (`sync`) or each model version is made from
/// the first `async.buffer` updates to arrive, whatever model they trained on (`async`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Sync,
    Async,
}

impl Mode {
    pub fn is_sync(&self) -> bool {
        *self == Self::Sync
    }
}

/// The most versions an update may be behind (`async.max_staleness`): each one a version's
/// base model an aggregator must recognise.
pub const MAX_STALENESS: u32 = 64;

/// FedBuff's settings (`async`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AsyncOptions {
    /// How many updates make a new model version (K, default 3).
    pub buffer: u32,
    /// How many trainers a version's opening selects (C, default: every live member).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// How an update trained on an older version is discounted (default `polynomial:0.5`).
    pub staleness: Staleness,
    /// Updates more than this many versions behind are refused (default 8, at most 64).
    pub max_staleness: u32,
}

impl Default for AsyncOptions {
    fn default() -> Self {
        Self {
            buffer: 3,
            concurrency: None,
            staleness: Staleness::Polynomial(0.5),
            max_staleness: 8,
        }
    }
}

/// How much of an update `τ` versions stale counts: its delta is multiplied by `weight(τ)`
/// before it is averaged in (a fresh update, τ = 0, counts whole under every function).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Staleness {
    /// `constant`: every update counts whole.
    Constant,
    /// `polynomial:A`: 1 / (1 + τ)^A (FedBuff's default, A = 0.5).
    Polynomial(f32),
    /// `hinge:A,B`: whole up to B versions behind, then 1 / (1 + A(τ − B)).
    Hinge { a: f32, b: u32 },
}

impl Staleness {
    /// The factor of an update `staleness` versions behind, in (0, 1].
    pub fn weight(self, staleness: u32) -> f32 {
        let tau = staleness as f32;
        match self {
            Self::Constant => 1.0,
            Self::Polynomial(a) => (1.0 + tau).powf(-a),
            Self::Hinge { a, b } if staleness > b => 1.0 / (1.0 + a * (staleness - b) as f32),
            Self::Hinge { .. } => 1.0,
        }
    }
}

impl fmt::Display for Staleness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Constant => f.write_str("constant"),
            Self::Polynomial(a) => write!(f, "polynomial:{a}"),
            Self::Hinge { a, b } => write!(f, "hinge:{a},{b}"),
        }
    }
}

impl std::str::FromStr for Staleness {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let wrong = || {
            format!(
                "`{text}` is not \"constant\", \"polynomial:A\" (A >= 0) or \"hinge:A,B\" \
                 (A >= 0, B a whole number of versions)"
            )
        };
        let exponent = |value: &str| {
            value.trim().parse::<f32>().ok().filter(|a| a.is_finite() && *a >= 0.0 && *a <= 16.0)
        };
        if text == "constant" {
            return Ok(Self::Constant);
        }
        if let Some(a) = text.strip_prefix("polynomial:") {
            return exponent(a).map(Self::Polynomial).ok_or_else(wrong);
        }
        let (a, b) =
            text.strip_prefix("hinge:").and_then(|r| r.split_once(',')).ok_or_else(wrong)?;
        let (a, b) = (exponent(a).ok_or_else(wrong)?, b.trim().parse().map_err(|_| wrong())?);
        Ok(Self::Hinge { a, b })
    }
}

impl Serialize for Staleness {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Staleness {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staleness_functions_discount_as_fedbuff_defines_them() {
        let polynomial: Staleness = "polynomial:0.5".parse().unwrap();
        assert_eq!(polynomial.weight(0), 1.0);
        assert!((polynomial.weight(3) - 0.5).abs() < 1e-6);
        let hinge: Staleness = "hinge:10,4".parse().unwrap();
        assert_eq!(hinge.weight(4), 1.0);
        assert!((hinge.weight(5) - 1.0 / 11.0).abs() < 1e-6);
        assert_eq!("constant".parse::<Staleness>().unwrap().weight(9), 1.0);
        for text in ["polynomial:0.5", "hinge:10,4", "constant"] {
            assert_eq!(text.parse::<Staleness>().unwrap().to_string(), text);
        }
        for wrong in ["linear", "polynomial:-1", "hinge:1", "hinge:1,x", "polynomial:nan"] {
            let error = wrong.parse::<Staleness>().unwrap_err();
            assert!(error.contains(wrong), "{error}");
        }
    }
}
