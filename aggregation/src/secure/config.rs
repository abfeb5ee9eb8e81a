//! A round's public parameters, which the members and the aggregator must agree on.

use super::error::SecAggError;
use super::field::Fp;
use super::pairing::Pairing;
use fedmesh_protocol::{JobId, MemberId, Round};

/// Everything public about one secure-aggregation round: the job and round (bound into every
/// key, signature and ciphertext), the neighbour graph, the Shamir threshold and the length of
/// the vectors summed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoundConfig {
    job: JobId,
    round: Round,
    pairing: Pairing,
    threshold: usize,
    length: usize,
}

impl RoundConfig {
    /// A round whose members' secrets are shared among themselves and their neighbours (the
    /// share holders, `degree + 1` of them), with `threshold` shares needed to reconstruct. The
    /// threshold must be more than half of every member's holders (so an aggregator that tells
    /// two halves of them different stories cannot get both a member's self-mask and its mask
    /// key) and at most its fewest holders; a member's secret then survives
    /// `degree + 1 − threshold` dropouts among its holders (`n − t` in the complete graph).
    pub fn new(
        job: JobId,
        round: Round,
        pairing: Pairing,
        threshold: usize,
        length: usize,
    ) -> Result<Self, SecAggError> {
        let (min_degree, max_degree) = pairing.degree_range();
        if threshold > min_degree + 1 || 2 * threshold <= max_degree + 1 {
            return Err(SecAggError::InvalidThreshold { threshold, min_degree, max_degree });
        }
        Ok(Self { job, round, pairing, threshold, length })
    }

    /// The job.
    pub fn job(&self) -> &JobId {
        &self.job
    }

    /// The round.
    pub fn round(&self) -> Round {
        self.round
    }

    /// The neighbour graph.
    pub fn pairing(&self) -> &Pairing {
        &self.pairing
    }

    /// Shares needed to reconstruct a secret.
    pub fn threshold(&self) -> usize {
        self.threshold
    }

    /// Coordinates of every masked vector.
    pub fn length(&self) -> usize {
        self.length
    }

    /// The member, or [`SecAggError::UnknownMember`].
    pub(crate) fn check_member(&self, member: &MemberId) -> Result<(), SecAggError> {
        match self.pairing.index_of(member) {
            Some(_) => Ok(()),
            None => Err(SecAggError::UnknownMember(*member)),
        }
    }

    /// The member's Shamir evaluation point: its index among the members, plus one.
    pub(crate) fn point_of(&self, member: &MemberId) -> Result<Fp, SecAggError> {
        let index = self.pairing.index_of(member).ok_or(SecAggError::UnknownMember(*member))?;
        Ok(Fp::reduced(index as u64 + 1))
    }

    /// The length check for a vector.
    pub(crate) fn check_length(&self, found: usize) -> Result<(), SecAggError> {
        if found == self.length {
            Ok(())
        } else {
            Err(SecAggError::WrongLength { expected: self.length, found })
        }
    }
}
