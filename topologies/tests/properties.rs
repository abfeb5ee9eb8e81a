//! Properties of round plans over random memberships (up to 1000 members, random groups, churn).

mod common;

use common::{job, member};
use fedmesh_protocol::ids::MemberId;
use fedmesh_protocol::tag::{BuiltinTopology, TagSpec};
use fedmesh_topologies::election::ROTATION_EPOCH;
use fedmesh_topologies::{Destination, Input, MemberInfo, RoundPlan, Selection, Tag, Vetting};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

const GROUPS: [&str; 5] = ["eu", "na", "apac", "latam", "africa"];

fn tag(builtin: BuiltinTopology) -> Tag {
    Tag::from_spec(&TagSpec::Builtin(builtin)).unwrap()
}

fn membership(size: usize, groups: usize, seed: u32) -> Vec<MemberInfo> {
    (0..size as u32)
        .map(|i| member(seed.wrapping_mul(7919).wrapping_add(i), GROUPS[i as usize % groups]))
        .collect()
}

fn any_builtin() -> impl Strategy<Value = BuiltinTopology> {
    prop_oneof![
        Just(BuiltinTopology::Central),
        Just(BuiltinTopology::Hierarchical),
        Just(BuiltinTopology::Ring),
        Just(BuiltinTopology::Hybrid),
    ]
}

/// How many times each trainer's update is counted at the top, following the plan's edges.
fn arrivals_at_top(plan: &RoundPlan) -> BTreeMap<MemberId, usize> {
    let mut counts = BTreeMap::new();
    let Some(top) = plan.slots.iter().position(|s| s.parent.is_none()) else {
        // A pure ring: every member of the ring ends with every update.
        for ring in &plan.rings {
            for member in &ring.order {
                *counts.entry(*member).or_default() += 1;
            }
        }
        return counts;
    };
    let mut stack = vec![Input::Slot(top)];
    while let Some(input) = stack.pop() {
        match input {
            Input::Trainer(member) => *counts.entry(member).or_default() += 1,
            Input::Slot(slot) => stack.extend(plan.slots[slot].inputs.iter().copied()),
            Input::Ring(ring) => {
                for member in &plan.rings[ring].order {
                    *counts.entry(*member).or_default() += 1;
                }
            }
        }
    }
    counts
}

/// Checks that every edge of the plan points where the destinations say.
fn destinations_agree(plan: &RoundPlan) -> bool {
    plan.trainers.iter().all(|t| match plan.destination(t) {
        Some(Destination::Slot(s)) => plan.slots[s].inputs.contains(&Input::Trainer(*t)),
        Some(Destination::Ring(r)) => plan.rings[r].order.contains(t),
        None => false,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn every_member_computes_the_same_plan_from_the_same_view(
        builtin in any_builtin(), size in 1usize..1000, groups in 1usize..5, seed: u32, round in 1u64..1000,
    ) {
        let tag = tag(builtin);
        let members = membership(size, groups, seed);
        let mut shuffled = members.clone();
        shuffled.reverse();
        shuffled.rotate_left(size / 3);
        let a = RoundPlan::compute(&tag, &job("p"), round, &members, &Selection::ALL).unwrap();
        let b = RoundPlan::compute(&tag, &job("p"), round, &shuffled, &Selection::ALL).unwrap();
        prop_assert_eq!(a, b);
    }

    #[test]
    fn every_selected_update_reaches_the_top_exactly_once(
        builtin in any_builtin(), size in 1usize..1000, groups in 1usize..5, seed: u32,
        fraction in 0.05f32..=1.0,
    ) {
        let members = membership(size, groups, seed);
        let selection = Selection::Sample { fraction, max: None };
        let plan = RoundPlan::compute(&tag(builtin), &job("p"), 7, &members, &selection).unwrap();
        let arrivals = arrivals_at_top(&plan);
        prop_assert_eq!(arrivals.keys().copied().collect::<Vec<_>>(), plan.trainers.clone());
        prop_assert!(arrivals.values().all(|&count| count == 1));
        prop_assert!(destinations_agree(&plan));
    }

    #[test]
    fn failover_order_is_a_permutation_of_the_eligible_members(
        size in 1usize..1000, groups in 1usize..5, seed: u32,
    ) {
        let members = membership(size, groups, seed);
        let plan = RoundPlan::compute(&tag(BuiltinTopology::Hierarchical), &job("p"), 3, &members, &Selection::ALL).unwrap();
        for slot in &plan.slots {
            let eligible: BTreeSet<MemberId> = if slot.parent.is_none() {
                members.iter().map(|m| m.id).collect()
            } else {
                members.iter().filter(|m| m.group == slot.id.label).map(|m| m.id).collect()
            };
            let ranked: BTreeSet<MemberId> = slot.ranking.iter().copied().collect();
            prop_assert_eq!(ranked.len(), slot.ranking.len(), "no member twice");
            prop_assert_eq!(ranked, eligible);
        }
    }

    #[test]
    fn only_vetted_members_aggregate_while_a_slot_has_one(
        builtin in any_builtin(), size in 2usize..600, groups in 1usize..5, seed: u32, round in 1u64..1000, vetted_share in 0u32..4,
    ) {
        // A join flood of fresh keys: most members never had an update accepted.
        let members = membership(size, groups, seed);
        let mut vetted: Vec<MemberId> = members.iter().map(|m| m.id).filter(|id| u32::from(id.0[0]) % 8 < vetted_share).collect();
        vetted.sort_unstable();
        let vetting = Vetting { vetted: &vetted, owner: None };
        let plan = RoundPlan::compute_vetted(&tag(builtin), &job("v"), round, &members, &Selection::ALL, &vetting).unwrap();
        for slot in &plan.slots {
            let is_vetted = |id: &MemberId| vetted.binary_search(id).is_ok();
            let vetted_in_slot = slot.ranking.iter().filter(|id| is_vetted(id)).count();
            if vetted_in_slot > 0 {
                prop_assert!(is_vetted(&slot.aggregator()), "slot {} elected an unvetted member", slot.id);
                prop_assert!(slot.ranking[..vetted_in_slot].iter().all(is_vetted), "unvetted failover ahead of a vetted one");
            }
        }
        for ring in &plan.rings {
            if ring.order.iter().any(|id| vetted.binary_search(id).is_ok()) {
                prop_assert!(vetted.binary_search(&ring.uploader()).is_ok(), "ring {} led by an unvetted member", ring.label);
            }
        }
        let everyone = RoundPlan::compute(&tag(builtin), &job("v"), round, &members, &Selection::ALL).unwrap();
        prop_assert_eq!(&everyone.trainers, &plan.trainers, "vetting changes who aggregates, not who trains");
    }

    #[test]
    fn members_behind_nat_aggregate_only_when_a_slot_has_no_reachable_one(
        builtin in any_builtin(), size in 2usize..400, groups in 1usize..5, seed: u32, round in 1u64..1000, nat_share in 0u32..9, vetted_share in 0u32..4,
    ) {
        let mut members = membership(size, groups, seed);
        for member in &mut members {
            member.reachable = u32::from(member.id.0[1]) % 8 >= nat_share;
        }
        let mut vetted: Vec<MemberId> = members.iter().map(|m| m.id).filter(|id| u32::from(id.0[0]) % 8 < vetted_share).collect();
        vetted.sort_unstable();
        let vetting = Vetting { vetted: &vetted, owner: None };
        let plan = RoundPlan::compute_vetted(&tag(builtin), &job("nat"), round, &members, &Selection::ALL, &vetting).unwrap();
        let reachable = |id: &MemberId| members.iter().any(|m| m.id == *id && m.reachable);
        let is_vetted = |id: &MemberId| vetted.binary_search(id).is_ok();
        for slot in &plan.slots {
            let aggregator = slot.aggregator();
            // Vetting comes first; among the members alike on it, the reachable ones.
            let alike: Vec<&MemberId> = slot.ranking.iter().filter(|id| is_vetted(id) == is_vetted(&aggregator) || vetted.is_empty()).collect();
            if alike.iter().any(|id| reachable(id)) {
                prop_assert!(reachable(&aggregator), "slot {} elected a member behind NAT over a reachable one", slot.id);
            }
        }
        let everyone = RoundPlan::compute(&tag(builtin), &job("nat"), round, &members, &Selection::ALL).unwrap();
        prop_assert_eq!(&everyone.trainers, &plan.trainers, "reachability changes who aggregates, not who trains");
    }

    #[test]
    fn a_join_or_a_leave_moves_few_slot_assignments(
        size in 20usize..300, seed: u32, leaver in 0usize..20,
    ) {
        // Hierarchical over one label per member (many slots): count the slots whose aggregator
        // changes when one member joins or one leaves.
        let members: Vec<MemberInfo> = (0..size as u32).map(|i| member(seed.wrapping_add(i), GROUPS[i as usize % 5])).collect();
        let tag = tag(BuiltinTopology::Central);
        let aggregators = |members: &[MemberInfo]| -> Vec<MemberId> {
            (1..=200u64).map(|round| RoundPlan::compute(&tag, &job("churn"), round, members, &Selection::ALL).unwrap().slots[0].aggregator()).collect()
        };
        let before = aggregators(&members);
        let mut joined = members.clone();
        joined.push(member(seed.wrapping_sub(1), "eu"));
        let mut left = members.clone();
        left.remove(leaver);
        for (after, what) in [(aggregators(&joined), "join"), (aggregators(&left), "leave")] {
            let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
            // Expected share 1/n of 200 rounds; allow 4/n + 4 for sampling noise.
            let bound = 4 * 200 / size + 4;
            prop_assert!(moved <= bound, "{} moved {} of 200 assignments (n = {}, bound {})", what, moved, size, bound);
        }
    }
}

#[test]
fn aggregation_duty_rotates_fairly() {
    // 20 eligible members over 4000 rounds: each should aggregate 200 times. Binomial(4000, 1/20)
    // has a standard deviation of 13.8; the bound is 200 +- 60 (over 4 standard deviations).
    let members = membership(20, 1, 1);
    let tag = tag(BuiltinTopology::Central);
    let mut times: BTreeMap<MemberId, u32> = BTreeMap::new();
    for round in 1..=4000 {
        let plan =
            RoundPlan::compute(&tag, &job("fair"), round, &members, &Selection::ALL).unwrap();
        *times.entry(plan.slots[0].aggregator()).or_default() += 1;
    }
    assert_eq!(times.len(), 20, "everyone serves");
    assert!(times.values().all(|&t| (140..=260).contains(&t)), "{times:?}");
}

#[test]
fn members_refusing_a_role_are_never_elected_to_it() {
    let mut members = membership(30, 1, 2);
    for m in members.iter_mut().skip(3) {
        m.roles = vec!["trainer".to_owned()];
    }
    let allowed: BTreeSet<MemberId> = members.iter().take(3).map(|m| m.id).collect();
    let tag = tag(BuiltinTopology::Central);
    for round in 1..200 {
        let plan =
            RoundPlan::compute(&tag, &job("roles"), round, &members, &Selection::ALL).unwrap();
        assert!(allowed.contains(&plan.slots[0].aggregator()));
        assert_eq!(plan.slots[0].ranking.len(), 3);
    }
}

#[test]
fn the_aggregator_changes_every_round_when_another_can_take_it() {
    // A server optimizer's state passes from aggregator to aggregator: within an epoch of the
    // rotation, the election never gives the top slot the previous round's aggregator over the
    // same members, whoever is vetted (a lower slot's rotation yields to spreading duties).
    for (builtin, size) in [
        (BuiltinTopology::Central, 2),
        (BuiltinTopology::Central, 8),
        (BuiltinTopology::Hierarchical, 12),
    ] {
        let members = membership(size, 2, 3);
        let everyone: Vec<MemberId> = members.iter().map(|m| m.id).collect();
        let mut vetted = everyone.clone();
        vetted.sort();
        // As in a job: round 1 vets its owner alone; later rounds, everyone its result counted.
        let owner = everyone[size / 2];
        let tag = tag(builtin);
        let aggregators: Vec<Vec<MemberId>> = (1..=300u64)
            .map(|round| {
                let first = [owner];
                let vetted = if round == 1 { &first[..] } else { &vetted[..] };
                let vetting = Vetting { vetted, owner: Some(&owner) };
                let plan = RoundPlan::compute_vetted(
                    &tag,
                    &job("rotate"),
                    round,
                    &members,
                    &Selection::ALL,
                    &vetting,
                )
                .unwrap();
                // The top slot's: the round's aggregator, who applies the server optimizer.
                plan.slots
                    .iter()
                    .filter(|slot| slot.parent.is_none())
                    .map(|slot| slot.aggregator())
                    .collect()
            })
            .collect();
        for (index, pair) in aggregators.windows(2).enumerate() {
            let round = index as u64 + 2;
            if (round - 1).is_multiple_of(ROTATION_EPOCH) {
                continue; // an epoch's first round is ranked afresh
            }
            for (slot, (before, after)) in pair[0].iter().zip(&pair[1]).enumerate() {
                let kept =
                    format!("{builtin:?}: slot {slot} kept its aggregator into round {round}");
                assert_ne!(before, after, "{kept}");
            }
        }
    }
}
