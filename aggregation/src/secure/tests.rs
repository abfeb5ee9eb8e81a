//! End-to-end rounds: trainers and an aggregator driven through every phase, with dropouts,
//! hostile inputs and a property test over members, degree, threshold and dropouts.

use super::*;
use fedmesh_protocol::{ContentHash, Identity, JobId, MemberId};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use std::collections::BTreeSet;

const JOB: JobId = JobId(ContentHash([42; 32]));
const ROUND: u64 = 3;

/// A round in progress: the trainers (by sorted member order), the aggregator and the inputs.
struct Round {
    trainers: Vec<TrainerRound>,
    members: Vec<MemberId>,
    aggregator: AggregatorRound,
    inputs: Vec<Vec<u64>>,
}

fn identities(n: usize) -> Vec<Identity> {
    let mut ids: Vec<Identity> = (0..n).map(|i| Identity::from_seed([i as u8 + 1; 32])).collect();
    ids.sort_by_key(Identity::member_id);
    ids
}

fn config(n: usize, degree: usize, threshold: usize, length: usize) -> RoundConfig {
    let members: Vec<MemberId> = identities(n).iter().map(Identity::member_id).collect();
    let pairing = Pairing::new(b"round seed", &members, degree).unwrap();
    RoundConfig::new(JOB, ROUND, pairing, threshold, length).unwrap()
}

/// Runs keys and shares for all members, with random inputs; returns the round ready for inputs.
fn dealt(config: &RoundConfig, seed: u64) -> Round {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let ids = identities(config.pairing().members().len());
    let mut trainers: Vec<TrainerRound> =
        ids.iter().map(|id| TrainerRound::new(config.clone(), id, &mut rng).unwrap()).collect();
    let members: Vec<MemberId> = ids.iter().map(Identity::member_id).collect();
    let mut aggregator = AggregatorRound::new(config.clone());
    for trainer in &trainers {
        aggregator.add_keys(trainer.keys().clone()).unwrap();
    }
    aggregator.close_keys().unwrap();
    for (trainer, member) in trainers.iter_mut().zip(&members) {
        let shares = trainer.shares_for(&aggregator.keys_for(member).unwrap(), &mut rng).unwrap();
        aggregator.add_shares(*member, shares).unwrap();
    }
    aggregator.close_shares().unwrap();
    let inputs =
        (0..members.len()).map(|_| (0..config.length()).map(|_| rng.random()).collect()).collect();
    Round { trainers, members, aggregator, inputs }
}

impl Round {
    /// Members not in `dropped` send masked inputs; survivors reveal; returns the sum (or the
    /// first error) and the expected sum.
    fn finish(mut self, dropped: &BTreeSet<usize>) -> (Result<Vec<u64>, SecAggError>, Vec<u64>) {
        let mut expected = vec![0u64; self.inputs[0].len()];
        for i in (0..self.members.len()).filter(|i| !dropped.contains(i)) {
            let shares = self.aggregator.shares_for(&self.members[i]).unwrap();
            let masked = self.trainers[i].masked_input(&self.inputs[i], &shares).unwrap();
            self.aggregator.add_masked_input(self.members[i], &masked).unwrap();
            expected.iter_mut().zip(&self.inputs[i]).for_each(|(e, x)| *e = e.wrapping_add(*x));
        }
        let dropouts = match self.aggregator.close_inputs() {
            Ok(dropouts) => dropouts,
            Err(error) => return (Err(error), expected),
        };
        for i in (0..self.members.len()).filter(|i| !dropped.contains(i)) {
            let revealed =
                self.trainers[i].unmasking_shares(&dropouts.survivors, &dropouts.dropped).unwrap();
            self.aggregator.add_unmasking_shares(self.members[i], &revealed).unwrap();
        }
        (self.aggregator.sum(), expected)
    }
}

fn exact_sum(n: usize, degree: usize, threshold: usize, dropped: &[usize]) {
    let config = config(n, degree, threshold, 257);
    let (sum, expected) = dealt(&config, n as u64).finish(&dropped.iter().copied().collect());
    assert_eq!(sum.unwrap(), expected, "n={n} k={degree} t={threshold} dropped={dropped:?}");
}

#[test]
fn complete_graph_without_dropouts_gives_the_exact_sum() {
    exact_sum(5, 4, 3, &[]);
    exact_sum(2, 1, 2, &[]);
}

#[test]
fn sparse_graph_without_dropouts_gives_the_exact_sum() {
    exact_sum(30, 6, 4, &[]);
    exact_sum(25, 7, 5, &[]);
}

#[test]
fn dropouts_after_dealing_shares_still_give_the_survivors_exact_sum() {
    exact_sum(6, 5, 4, &[0, 4]);
    exact_sum(7, 6, 4, &[1, 2, 6]);
    exact_sum(20, 6, 4, &[3]);
}

#[test]
fn too_many_dropouts_are_a_clear_error() {
    let config = config(6, 5, 4, 8);
    let (sum, _) = dealt(&config, 1).finish(&[0, 1, 2].into());
    assert!(matches!(sum, Err(SecAggError::TooFewSurvivors { survivors: 3, need: 4 })), "{sum:?}");
    let (config, dropped) = config_sparse_with_isolated_survivor();
    let (sum, _) = dealt(&config, 2).finish(&dropped);
    assert!(matches!(sum, Err(SecAggError::TooManyDropouts { need: 2, .. })), "{sum:?}");
}

/// A ring of 8 with degree 2 and threshold 2, where a survivor's two neighbours both drop.
fn config_sparse_with_isolated_survivor() -> (RoundConfig, BTreeSet<usize>) {
    let config = config(8, 2, 2, 8);
    let members = config.pairing().members();
    let neighbours = config.pairing().neighbours(&members[0]).unwrap();
    let dropped = neighbours.iter().map(|m| members.iter().position(|x| x == m).unwrap()).collect();
    (config, dropped)
}

#[test]
fn quantized_updates_sum_back_to_the_float_sum() {
    let n = 6;
    let quantizer = Quantizer::new(1.0, 50.0, n).unwrap();
    let config = config(n, 5, 4, 100);
    let mut round = dealt(&config, 9);
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let updates: Vec<Vec<f32>> =
        (0..n).map(|_| (0..100).map(|_| rng.random_range(-50.0..50.0)).collect()).collect();
    round.inputs = updates.iter().map(|u| quantizer.quantize(u).unwrap()).collect();
    let (sum, _) = round.finish(&[2].into());
    let sum = quantizer.dequantize(&sum.unwrap());
    for (c, &got) in sum.iter().enumerate() {
        let expected: f32 =
            updates.iter().enumerate().filter(|(i, _)| *i != 2).map(|(_, u)| u[c]).sum();
        assert!((got - expected).abs() < 1e-3, "{got} vs {expected}");
    }
}

#[test]
fn a_masked_input_alone_looks_unrelated_to_the_update() {
    let config = config(5, 4, 3, 10_000);
    let mut round = dealt(&config, 4);
    let zeros = vec![0u64; 10_000];
    let shares = round.aggregator.shares_for(&round.members[0]).unwrap();
    let masked = round.trainers[0].masked_input(&zeros, &shares).unwrap();
    let unchanged = masked.iter().filter(|&&v| v == 0).count();
    assert!(unchanged < 5, "{unchanged} coordinates were left unmasked");
    let top_bits = masked.iter().filter(|&&v| v >> 63 == 1).count();
    assert!((4_700..5_300).contains(&top_bits), "top bit set in {top_bits} of 10000: not uniform");
}

#[test]
fn the_sum_of_masked_inputs_before_unmasking_differs_from_the_true_sum() {
    let config = config(4, 3, 3, 1000);
    let mut round = dealt(&config, 5);
    let mut masked_sum = vec![0u64; 1000];
    let mut true_sum = vec![0u64; 1000];
    for i in 0..4 {
        let shares = round.aggregator.shares_for(&round.members[i]).unwrap();
        let masked = round.trainers[i].masked_input(&round.inputs[i], &shares).unwrap();
        let differing = masked.iter().zip(&round.inputs[i]).filter(|(m, x)| m != x).count();
        assert!(differing > 990);
        masked_sum.iter_mut().zip(&masked).for_each(|(s, m)| *s = s.wrapping_add(*m));
        true_sum.iter_mut().zip(&round.inputs[i]).for_each(|(s, x)| *s = s.wrapping_add(*x));
    }
    let differing = masked_sum.iter().zip(&true_sum).filter(|(a, b)| a != b).count();
    assert!(differing > 990, "the self-masks hide even the sum until survivors reveal them");
}

#[test]
fn forged_round_keys_are_refused_by_aggregator_and_trainer() {
    let config = config(4, 3, 3, 4);
    let mut rng = ChaCha20Rng::seed_from_u64(6);
    let ids = identities(4);
    let mallory = Identity::from_seed([99; 32]);
    let mut forged = TrainerRound::new(config.clone(), &ids[0], &mut rng).unwrap().keys().clone();
    forged.encryption_key =
        TrainerRound::new(config.clone(), &ids[0], &mut rng).unwrap().keys().encryption_key;
    let mut aggregator = AggregatorRound::new(config.clone());
    assert_eq!(
        aggregator.add_keys(forged.clone()),
        Err(SecAggError::BadSignature(ids[0].member_id()))
    );
    let mut trainer = TrainerRound::new(config.clone(), &ids[1], &mut rng).unwrap();
    assert_eq!(
        trainer.shares_for(&[forged], &mut rng),
        Err(SecAggError::BadSignature(ids[0].member_id()))
    );
    let outsider = match TrainerRound::new(config.clone(), &mallory, &mut rng) {
        Err(error) => error,
        Ok(_) => panic!("an outsider got a trainer round"),
    };
    assert_eq!(outsider, SecAggError::UnknownMember(mallory.member_id()));
}

#[test]
fn hostile_inputs_to_the_aggregator_are_typed_errors() {
    let config = config(4, 3, 3, 4);
    let mut round = dealt(&config, 7);
    let (a, b) = (round.members[0], round.members[1]);
    let stranger = MemberId([7; 32]);
    let aggregator = &mut round.aggregator;
    assert_eq!(
        aggregator.add_masked_input(stranger, &[0; 4]),
        Err(SecAggError::UnknownMember(stranger))
    );
    assert_eq!(
        aggregator.add_masked_input(a, &[0; 3]),
        Err(SecAggError::WrongLength { expected: 4, found: 3 })
    );
    aggregator.add_masked_input(a, &[0; 4]).unwrap();
    assert_eq!(
        aggregator.add_masked_input(a, &[0; 4]),
        Err(SecAggError::Duplicate { what: "masked input", member: a })
    );
    assert!(matches!(
        aggregator.add_keys(round.trainers[0].keys().clone()),
        Err(SecAggError::WrongPhase { .. })
    ));
    for i in 1..4 {
        aggregator.add_masked_input(round.members[i], &[0; 4]).unwrap();
    }
    aggregator.close_inputs().unwrap();
    let short = UnmaskingShares {
        self_mask: vec![RevealedShare { owner: b, share: vec![0; 3] }],
        mask_key: vec![],
    };
    assert_eq!(aggregator.add_unmasking_shares(a, &short), Err(SecAggError::MalformedShare(a)));
    let wrong_kind = UnmaskingShares {
        self_mask: vec![],
        mask_key: vec![RevealedShare { owner: b, share: vec![0; SHARE_LEN] }],
    };
    assert!(matches!(
        aggregator.add_unmasking_shares(a, &wrong_kind),
        Err(SecAggError::UnexpectedShare { .. })
    ));
    assert!(matches!(
        aggregator.sum(),
        Err(SecAggError::Reconstruction { source: ShamirError::NotEnoughShares { .. }, .. })
    ));
}

#[test]
fn a_late_masked_input_is_refused_after_dropouts_are_announced() {
    let config = config(5, 4, 3, 4);
    let mut round = dealt(&config, 8);
    for i in 0..4 {
        let shares = round.aggregator.shares_for(&round.members[i]).unwrap();
        let masked = round.trainers[i].masked_input(&round.inputs[i], &shares).unwrap();
        round.aggregator.add_masked_input(round.members[i], &masked).unwrap();
    }
    round.aggregator.close_inputs().unwrap();
    assert!(matches!(
        round.aggregator.add_masked_input(round.members[4], &[0; 4]),
        Err(SecAggError::WrongPhase { .. })
    ));
}

#[test]
fn a_trainer_never_reveals_both_shares_of_one_member() {
    let config = config(5, 4, 3, 4);
    let mut round = dealt(&config, 10);
    let m = round.members.clone();
    let shares = round.aggregator.shares_for(&m[0]).unwrap();
    let trainer = &mut round.trainers[0];
    trainer.masked_input(&[0; 4], &shares).unwrap();
    assert_eq!(
        trainer.unmasking_shares(&[m[0], m[1], m[2]], &[m[1]]),
        Err(SecAggError::ConflictingReveal(m[1]))
    );
    let first = trainer.unmasking_shares(&[m[0], m[1], m[2], m[3]], &[m[4]]).unwrap();
    assert_eq!(first.self_mask.len(), 4, "its own and three neighbours'");
    assert_eq!(first.mask_key.len(), 1);
    assert_eq!(
        trainer.unmasking_shares(&[m[0], m[1], m[2], m[3]], &[m[4]]),
        Ok(first),
        "a retry gets the same"
    );
    assert_eq!(
        trainer.unmasking_shares(&[m[0], m[1], m[2], m[4]], &[m[3]]),
        Err(SecAggError::ConflictingReveal(m[4]))
    );
    assert_eq!(trainer.unmasking_shares(&[m[1], m[2], m[3]], &[]), Err(SecAggError::NotASurvivor));
    assert_eq!(
        trainer.unmasking_shares(&[m[0], m[1]], &[]),
        Err(SecAggError::TooFewSurvivors { survivors: 2, need: 3 })
    );
}

#[test]
fn hostile_shares_to_a_trainer_are_typed_errors() {
    let config = config(4, 3, 3, 4);
    let mut round = dealt(&config, 11);
    let (a, b) = (round.members[0], round.members[1]);
    let mut shares = round.aggregator.shares_for(&a).unwrap();
    let trainer = &mut round.trainers[0];
    let mut tampered = shares.clone();
    tampered[0].ciphertext[5] ^= 1;
    assert_eq!(
        trainer.masked_input(&[0; 4], &tampered),
        Err(SecAggError::DecryptionFailed(tampered[0].sender))
    );
    let mut misaddressed = shares.clone();
    misaddressed[0].recipient = b;
    assert!(matches!(
        trainer.masked_input(&[0; 4], &misaddressed),
        Err(SecAggError::WrongRecipient { .. })
    ));
    shares.push(shares[0].clone());
    assert!(matches!(
        trainer.masked_input(&[0; 4], &shares),
        Err(SecAggError::Duplicate { what: "shares", .. })
    ));
    assert_eq!(
        trainer.masked_input(&[0; 4], &shares[..1]),
        Err(SecAggError::TooFewNeighbours { member: a, have: 2, need: 3 })
    );
    assert_eq!(
        trainer.masked_input(&[0; 5], &shares),
        Err(SecAggError::WrongLength { expected: 4, found: 5 })
    );
}

#[test]
fn invalid_thresholds_are_refused() {
    let members: Vec<MemberId> = identities(6).iter().map(Identity::member_id).collect();
    let pairing = Pairing::new(b"s", &members, 5).unwrap();
    for threshold in [0, 3, 7] {
        assert!(matches!(
            RoundConfig::new(JOB, ROUND, pairing.clone(), threshold, 1),
            Err(SecAggError::InvalidThreshold { .. })
        ));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn any_dropout_pattern_gives_the_exact_sum_or_a_dropout_error(
        n in 3usize..12,
        degree in 2usize..12,
        threshold_offset in 0usize..6,
        dropped_mask in any::<u16>(),
        seed in any::<u64>(),
    ) {
        let members: Vec<MemberId> = identities(n).iter().map(Identity::member_id).collect();
        let pairing = Pairing::new(&seed.to_le_bytes(), &members, degree).unwrap();
        let (min_degree, max_degree) = pairing.degree_range();
        // The smallest threshold above half of the largest holder count (degree + 1).
        let lowest = max_degree.div_ceil(2) + 1;
        prop_assume!(lowest <= min_degree + 1);
        let threshold = lowest + threshold_offset % (min_degree + 2 - lowest);
        let config = RoundConfig::new(JOB, ROUND, pairing.clone(), threshold, 16).unwrap();
        let dropped: BTreeSet<usize> = (0..n).filter(|i| dropped_mask >> i & 1 == 1).collect();
        let survivors: BTreeSet<MemberId> = (0..n).filter(|i| !dropped.contains(i)).map(|i| members[i]).collect();
        let holders = |m: &MemberId| pairing.neighbours(m).unwrap().iter().filter(|x| survivors.contains(x)).count();
        let feasible = survivors.len() >= threshold
            && members.iter().all(|m| {
                let h = holders(m) + usize::from(survivors.contains(m));
                h >= threshold || (!survivors.contains(m) && h == 0)
            });
        let (sum, expected) = dealt(&config, seed).finish(&dropped);
        if feasible {
            prop_assert_eq!(sum.unwrap(), expected);
        } else {
            prop_assert!(matches!(sum, Err(SecAggError::TooFewSurvivors { .. } | SecAggError::TooManyDropouts { .. })), "{:?}", sum);
        }
    }
}

/// An auditor given each survivor's masked input and the secrets the round revealed about it
/// gets the aggregator's exact sum, dropouts included; a forged secret or masked input is
/// refused, and the statement a trainer signs binds its masked values.
#[test]
fn auditors_strip_each_survivors_masks_to_the_aggregators_exact_sum() {
    let config = config(7, 6, 4, 64);
    let mut round = dealt(&config, 11);
    let dropped: BTreeSet<usize> = [2, 5].into();
    let mut masked_inputs = Vec::new();
    for i in (0..round.members.len()).filter(|i| !dropped.contains(i)) {
        let shares = round.aggregator.shares_for(&round.members[i]).unwrap();
        let masked = round.trainers[i].masked_input(&round.inputs[i], &shares).unwrap();
        round.aggregator.add_masked_input(round.members[i], &masked).unwrap();
        masked_inputs.push((round.members[i], masked));
    }
    let dropouts = round.aggregator.close_inputs().unwrap();
    for (i, trainer) in round.trainers.iter_mut().enumerate().filter(|(i, _)| !dropped.contains(i))
    {
        let revealed = trainer.unmasking_shares(&dropouts.survivors, &dropouts.dropped).unwrap();
        round.aggregator.add_unmasking_shares(round.members[i], &revealed).unwrap();
    }
    let sum = round.aggregator.sum().unwrap();
    let mut audited = vec![0u64; 64];
    for (member, masked) in &masked_inputs {
        let unmasking = round.aggregator.unmasking_of(member).unwrap();
        assert_eq!(unmasking.dropped.len(), 2, "both dropouts neighbour every survivor");
        add_to_sum(&mut audited, &unmasking.strip(&JOB, ROUND, masked).unwrap()).unwrap();
    }
    assert_eq!(audited, sum);
    let (member, masked) = &masked_inputs[0];
    let mut forged = round.aggregator.unmasking_of(member).unwrap();
    forged.self_mask_seed[0] ^= 1;
    assert!(
        matches!(forged.strip(&JOB, ROUND, masked), Err(SecAggError::ReconstructionMismatch(m)) if m == *member)
    );
    let mut forged = round.aggregator.unmasking_of(member).unwrap();
    forged.dropped[0].1[1] ^= 1; // byte 0's low bits are clamped away by X25519
    assert!(matches!(
        forged.strip(&JOB, ROUND, masked),
        Err(SecAggError::ReconstructionMismatch(_))
    ));
    let identity = identities(7).into_iter().find(|id| id.member_id() == *member).unwrap();
    let statement = MaskedStatement {
        job: JOB,
        round: ROUND,
        opened_at_ms: 5,
        member: *member,
        samples: 10,
        max_weight: 20,
        summands: 7,
        masked,
    };
    let signature = statement.sign(&identity);
    statement.verify(&signature).unwrap();
    let mut altered = masked.clone();
    altered[3] = altered[3].wrapping_add(1);
    let tampered = MaskedStatement { masked: &altered, ..statement };
    assert!(
        matches!(tampered.verify(&signature), Err(SecAggError::BadSignature(m)) if m == *member)
    );
    let heavier = MaskedStatement { samples: 11, ..statement };
    assert!(heavier.verify(&signature).is_err());
}
