//! Prints how long secure aggregation's heavy steps take for one 100k-parameter update with
//! degree-7 neighbourhoods (20 members, threshold 5): a trainer masking its input, and the
//! aggregator unmasking the sum with and without dropouts.

use fedmesh_aggregation::secure::{AggregatorRound, Pairing, RoundConfig, TrainerRound};
use fedmesh_protocol::{ContentHash, Identity, JobId, MemberId};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use std::time::Instant;

const MEMBERS: usize = 20;
const DEGREE: usize = 7;
const THRESHOLD: usize = 5;
const PARAMS: usize = 100_000;

fn main() {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let ids: Vec<Identity> = (0..MEMBERS).map(|i| Identity::from_seed([i as u8 + 1; 32])).collect();
    let members: Vec<MemberId> = ids.iter().map(Identity::member_id).collect();
    let pairing = Pairing::new(b"bench", &members, DEGREE).expect("pairing");
    let job = JobId(ContentHash([1; 32]));
    let config = RoundConfig::new(job, 1, pairing, THRESHOLD, PARAMS).expect("config");
    for dropped in [0, 2] {
        let mut trainers: Vec<TrainerRound> = ids
            .iter()
            .map(|id| TrainerRound::new(config.clone(), id, &mut rng).expect("trainer"))
            .collect();
        let mut aggregator = AggregatorRound::new(config.clone());
        for trainer in &trainers {
            aggregator.add_keys(trainer.keys().clone()).expect("keys");
        }
        aggregator.close_keys().expect("close keys");
        let start = Instant::now();
        for (trainer, member) in trainers.iter_mut().zip(&members) {
            let shares = trainer
                .shares_for(&aggregator.keys_for(member).expect("keys"), &mut rng)
                .expect("deal");
            aggregator.add_shares(*member, shares).expect("shares");
        }
        let dealing = start.elapsed().as_secs_f64() / MEMBERS as f64;
        aggregator.close_shares().expect("close shares");
        let update: Vec<u64> = (0..PARAMS).map(|_| rng.random()).collect();
        let mut masking = f64::INFINITY;
        for (trainer, member) in trainers.iter_mut().zip(&members).skip(dropped) {
            let shares = aggregator.shares_for(member).expect("relay");
            let start = Instant::now();
            let masked = trainer.masked_input(&update, &shares).expect("mask");
            masking = masking.min(start.elapsed().as_secs_f64());
            aggregator.add_masked_input(*member, &masked).expect("input");
        }
        let dropouts = aggregator.close_inputs().expect("close inputs");
        for (trainer, member) in trainers.iter_mut().zip(&members).skip(dropped) {
            let revealed =
                trainer.unmasking_shares(&dropouts.survivors, &dropouts.dropped).expect("reveal");
            aggregator.add_unmasking_shares(*member, &revealed).expect("unmasking shares");
        }
        let start = Instant::now();
        std::hint::black_box(aggregator.sum().expect("sum"));
        let unmasking = start.elapsed().as_secs_f64();
        println!(
            "{MEMBERS} members, degree {DEGREE}, {PARAMS} params, {dropped} dropped: deal shares {:.2} ms, \
             mask one update {:.2} ms, unmask the sum {:.2} ms",
            dealing * 1e3,
            masking * 1e3,
            unmasking * 1e3
        );
    }
}
