//! Flame-style TAG schemas load and plan as expected; each kind of invalid TAG gets its message.

mod common;

use common::{job, member};
use fedmesh_protocol::tag::{BuiltinTopology, TagSchema, TagSpec};
use fedmesh_topologies::{Destination, Input, MemberInfo, RoundPlan, Selection, Tag};

fn fixture(name: &str) -> Tag {
    let path = format!(
        "{}/tests/fixtures/{name}.json",
        std::env::var("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap();
    let spec: TagSpec = serde_json::from_str(&text).unwrap();
    assert!(matches!(spec, TagSpec::Schema(_)), "{name} parses as a schema");
    Tag::from_spec(&spec).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn plan(tag: &Tag, members: &[MemberInfo]) -> RoundPlan {
    RoundPlan::compute(tag, &job("flame"), 1, members, &Selection::ALL).unwrap()
}

#[test]
fn two_tier_has_one_aggregator_for_every_trainer() {
    let tag = fixture("two_tier");
    assert_eq!(tag.roles().collect::<Vec<_>>(), ["trainer", "aggregator"]);
    let members: Vec<MemberInfo> = (0..5).map(|i| member(i, "default")).collect();
    let plan = plan(&tag, &members);
    assert_eq!(plan.trainers.len(), 5);
    assert_eq!(plan.slots.len(), 1);
    assert_eq!(plan.trainers_under(0), 5);
    assert!(plan.trainers.iter().all(|t| plan.destination(t) == Some(Destination::Slot(0))));
    assert_eq!(plan.fetch_from(), Some(plan.slots[0].aggregator()));
}

#[test]
fn hier_mnist_has_a_middle_aggregator_per_group_and_one_top() {
    let tag = fixture("hier_mnist");
    assert_eq!(tag.tiers.len(), 3);
    let members: Vec<MemberInfo> =
        (0..10).map(|i| member(i, if i % 2 == 0 { "eu" } else { "na" })).collect();
    let plan = plan(&tag, &members);
    let slots: Vec<String> = plan.slots.iter().map(|s| s.id.to_string()).collect();
    assert_eq!(slots, ["middle-aggregator/eu", "middle-aggregator/na", "top-aggregator/default"]);
    for (index, group) in [(0, "eu"), (1, "na")] {
        let slot = &plan.slots[index];
        assert_eq!(slot.parent, Some(2));
        assert_eq!(plan.trainers_under(index), 5);
        let aggregator = members.iter().find(|m| m.id == slot.aggregator()).unwrap();
        assert_eq!(aggregator.group, group, "a group's aggregator comes from the group");
    }
    assert_eq!(plan.slots[2].inputs, [Input::Slot(0), Input::Slot(1)]);
    assert_eq!(plan.trainers_under(2), 10);
    assert_eq!(plan.depth(), 2);
    assert_eq!(plan.leader(), Some(plan.slots[2].aggregator()), "the top aggregator leads");
    assert_eq!(plan.sender_of(Input::Slot(1)), (plan.slots[1].aggregator(), "na".to_owned()));
    // A trainer outside eu and na is not served by this TAG and does not train.
    let mut with_stranger = members.clone();
    with_stranger.push(member(99, "apac"));
    assert_eq!(self::plan(&tag, &with_stranger).trainers.len(), 10);
}

#[test]
fn four_tiers_nest_cities_in_regions_under_one_top() {
    let tag = fixture("four_tier");
    assert_eq!(tag.tiers.len(), 4);
    let cities = ["paris", "lyon", "berlin"];
    let members: Vec<MemberInfo> = (0..9).map(|i| member(i, cities[i as usize % 3])).collect();
    let plan = plan(&tag, &members);
    let slots: Vec<String> = plan.slots.iter().map(|s| s.id.to_string()).collect();
    assert_eq!(
        slots,
        [
            "city-aggregator/berlin",
            "city-aggregator/lyon",
            "city-aggregator/paris",
            "region-aggregator/de",
            "region-aggregator/fr",
            "top-aggregator/default"
        ]
    );
    assert_eq!(plan.depth(), 3);
    assert_eq!(plan.slots[4].inputs, [Input::Slot(1), Input::Slot(2)], "fr has lyon and paris");
    assert_eq!(plan.trainers_under(4), 6);
    assert_eq!(plan.trainers_under(5), 9);
    assert_eq!(plan.leader(), Some(plan.slots[5].aggregator()));
}

#[test]
fn distributed_ring_puts_every_trainer_in_one_ring_and_has_no_aggregator() {
    let tag = fixture("distributed_ring");
    let members: Vec<MemberInfo> = (0..6).map(|i| member(i, "default")).collect();
    let plan = plan(&tag, &members);
    assert!(plan.slots.is_empty() && plan.fetch_from().is_none());
    assert_eq!(plan.rings.len(), 1);
    assert_eq!(plan.rings[0].order.len(), 6);
    let steps = plan.rings[0].schedule_of(&members[0].id).unwrap();
    assert_eq!(steps.len(), 10, "2(n - 1) steps");
    assert_eq!(plan.leader(), Some(plan.rings[0].uploader()), "the ring's first member leads");
    assert_eq!(plan.depth(), 0);
    assert_eq!(plan.trainers_in(Input::Ring(0)), plan.rings[0].order);
}

#[test]
fn hybrid_rings_per_group_feed_one_aggregator() {
    let tag = fixture("hybrid");
    let members: Vec<MemberInfo> =
        (0..9).map(|i| member(i, if i < 4 { "eu" } else { "us" })).collect();
    let plan = plan(&tag, &members);
    let rings: Vec<(&str, usize)> =
        plan.rings.iter().map(|r| (r.label.as_str(), r.order.len())).collect();
    assert_eq!(rings, [("eu", 4), ("us", 5)]);
    assert_eq!(plan.slots.len(), 1);
    assert_eq!(plan.slots[0].inputs, [Input::Ring(0), Input::Ring(1)]);
    assert!(plan.rings.iter().all(|r| r.parent == Some(0)));
    assert_eq!(plan.trainers_under(0), 9);
}

#[test]
fn builtins_match_their_flame_equivalents() {
    let members: Vec<MemberInfo> =
        (0..12).map(|i| member(i, ["eu", "na", "apac"][i as usize % 3])).collect();
    let shape = |builtin| {
        let tag = Tag::from_spec(&TagSpec::Builtin(builtin)).unwrap();
        let plan = plan(&tag, &members);
        (plan.slots.len(), plan.rings.len(), plan.trainers.len())
    };
    assert_eq!(shape(BuiltinTopology::Central), (1, 0, 12));
    assert_eq!(shape(BuiltinTopology::Hierarchical), (4, 0, 12), "3 groups and a top");
    assert_eq!(shape(BuiltinTopology::Ring), (0, 1, 12));
    assert_eq!(shape(BuiltinTopology::Hybrid), (1, 3, 12), "a ring per group");
}

fn errors_of(json: serde_json::Value) -> String {
    let schema: TagSchema = serde_json::from_value(json).unwrap();
    Tag::from_schema(&schema).unwrap_err().to_string()
}

fn role(name: &str, data: bool, assoc: serde_json::Value) -> serde_json::Value {
    serde_json::json!({"name": name, "isDataConsumer": data, "groupAssociation": assoc})
}

fn link(name: &str, a: &str, b: &str, labels: &[&str]) -> serde_json::Value {
    serde_json::json!({"name": name, "pair": [a, b], "groupBy": {"type": "tag", "value": labels},
        "funcTags": {a: ["fetch", "upload"], b: ["distribute", "aggregate"]}})
}

#[test]
fn each_kind_of_invalid_tag_gets_its_message() {
    let trainer = role("trainer", true, serde_json::json!([{"c": "default"}]));
    let aggregator = role("aggregator", false, serde_json::json!([{"c": "default"}]));

    let unknown = errors_of(serde_json::json!({"roles": [trainer, aggregator],
        "channels": [link("c", "trainer", "aggregator", &["default"]), link("d", "aggregator", "ghost", &["default"])]}));
    assert!(
        unknown.contains("channel `d` names role `ghost`, which the TAG does not define"),
        "{unknown}"
    );

    let no_data = errors_of(
        serde_json::json!({"roles": [role("a", false, serde_json::json!([])), aggregator],
        "channels": [link("c", "a", "aggregator", &["default"])]}),
    );
    assert!(no_data.contains("no role consumes data"), "{no_data}");

    let island = role("island", false, serde_json::json!([]));
    let disconnected = errors_of(serde_json::json!({"roles": [trainer, aggregator, island],
        "channels": [link("c", "trainer", "aggregator", &["default"])]}));
    assert!(
        disconnected.contains("the graph is disconnected: `island` cannot be reached"),
        "{disconnected}"
    );

    let other = role("other-trainer", true, serde_json::json!([]));
    let wired = errors_of(serde_json::json!({"roles": [trainer, other],
        "channels": [link("c", "trainer", "other-trainer", &["default"])]}));
    assert!(
        wired.contains("channel `c` wires data-consuming roles `trainer` and `other-trainer`"),
        "{wired}"
    );

    let unserved = errors_of(serde_json::json!({"roles": [trainer, aggregator],
        "channels": [link("c", "trainer", "aggregator", &["default", "eu"])]}));
    assert!(
        unserved.contains("group `eu` of channel `c` has no aggregator to serve it"),
        "{unserved}"
    );
}

#[test]
fn several_problems_are_reported_together_one_per_line() {
    let text = errors_of(serde_json::json!({
        "roles": [role("a", false, serde_json::json!([])), role("b", false, serde_json::json!([]))],
        "channels": [link("c", "a", "ghost", &["default"])]}));
    assert_eq!(text.lines().count(), 3, "{text}");
}

#[test]
fn a_coordinator_assigns_each_slot_an_eligible_aggregator() {
    let tag = fixture("hier_mnist");
    let members: Vec<MemberInfo> =
        (0..6).map(|i| member(i, if i % 2 == 0 { "eu" } else { "na" })).collect();
    let elected = plan(&tag, &members);
    let mut assigned = elected.aggregators();
    assert_eq!(
        assigned.keys().collect::<Vec<_>>(),
        ["middle-aggregator/eu", "middle-aggregator/na", "top"]
    );
    // Another eu member aggregates the eu slot; the rest of the election stays behind it.
    let eu = &elected.slots[0];
    assigned.insert("middle-aggregator/eu".into(), eu.ranking[1]);
    let mut planned = elected.clone();
    planned.assign_aggregators(&assigned).unwrap();
    assert_eq!(planned.slots[0].aggregator(), eu.ranking[1]);
    assert_eq!(planned.slots[0].ranking[1], eu.ranking[0]);
    assert_eq!(planned.slots[2].aggregator(), elected.slots[2].aggregator());
    // A na member may not aggregate the eu slot, and every slot must be assigned.
    assigned.insert("middle-aggregator/eu".into(), elected.slots[1].aggregator());
    let error = elected.clone().assign_aggregators(&assigned).unwrap_err();
    assert!(error.to_string().contains("may not aggregate"), "{error}");
    assigned.insert("middle-aggregator/eu".into(), eu.ranking[0]);
    assigned.remove("top");
    let error = elected.clone().assign_aggregators(&assigned).unwrap_err();
    assert!(error.to_string().contains("no aggregator for slot `top`"), "{error}");
}
