//! Every Flame example of `testnet/flame-examples` converts into job specs that validate, whose
//! TAGs load and plan a round over the nodes `dataSpec.json` lays out; parallel experiments run
//! apart, one aggregator each; coordinator channels stay out of the plan.

mod common;

use common::{job, member_id};
use fedmesh_protocol::flame::{FlameExperiment, FlameJob, FlameNode, FlameOptions, Synchrony};
use fedmesh_protocol::model::ModelSpec;
use fedmesh_protocol::tag::TagSpec;
use fedmesh_topologies::{MemberInfo, RoundPlan, Selection, Tag};
use std::path::PathBuf;

const EXAMPLES: [&str; 9] = [
    "asyncfl_hier_mnist",
    "asyncfl_hier_mnist_lb",
    "distributed_training",
    "hier_mnist",
    "hybrid",
    "medmnist",
    "mnist",
    "parallel_experiment",
    "syncfl_hier_coord_mnist",
];

fn options() -> FlameOptions {
    FlameOptions {
        owner: member_id(0),
        model: ModelSpec::Mlp(vec![32]),
        dataset: "mnist".to_owned(),
        coordinator: Some(member_id(1000)),
    }
}

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testnet/flame-examples")
}

fn load(name: &str) -> FlameJob {
    FlameJob::from_dir(&examples().join(name), &options())
        .unwrap_or_else(|error| panic!("{name}: {error}"))
}

/// The members of an experiment, one per node, in the node's group.
fn members(experiment: &FlameExperiment) -> Vec<MemberInfo> {
    let id = |index: usize| member_id(index as u32 + 1);
    let info = |(index, node): (usize, &FlameNode)| MemberInfo {
        id: id(index),
        group: node.group.clone(),
        roles: Vec::new(),
        reachable: true,
    };
    experiment.nodes.iter().enumerate().map(info).collect()
}

fn plan(experiment: &FlameExperiment) -> (Tag, RoundPlan) {
    let spec = &experiment.spec;
    spec.validate().unwrap_or_else(|e| panic!("{}: {e}", spec.name));
    let tag = Tag::from_spec(&spec.tag).unwrap_or_else(|e| panic!("{}: {e}", spec.name));
    let history = std::sync::Arc::new(fedmesh_topologies::History::default());
    let selection = Selection::from_participation(&spec.participation, &history);
    let plan = RoundPlan::compute(&tag, &job(&spec.name), 1, &members(experiment), &selection)
        .unwrap_or_else(|e| panic!("{}: {e}", spec.name));
    (tag, plan)
}

#[test]
fn every_example_converts_validates_and_plans_a_round_over_its_nodes() {
    for name in EXAMPLES {
        let flame = load(name);
        assert!(!flame.experiments.is_empty(), "{name}");
        for experiment in &flame.experiments {
            let (_, plan) = plan(experiment);
            let nodes = experiment.nodes.len();
            let wanted =
                experiment.spec.participation.max_participants.map_or(nodes, |m| m as usize);
            assert_eq!(
                plan.trainers.len(),
                wanted.min(nodes),
                "{name}: every selected node trains"
            );
            assert!(plan.leader().is_some(), "{name}: someone leads the round");
        }
    }
}

#[test]
fn the_hyperparameters_optimizer_and_selector_come_from_the_model_spec() {
    let medmnist = &load("medmnist").experiments[0].spec;
    let h = &medmnist.hyperparameters;
    assert_eq!((h.rounds, h.local_epochs, h.batch_size, h.lr), (100, 4, 32, 0.01));
    assert_eq!(medmnist.strategy.server, None, "fedavg has no server optimizer");
    assert_eq!(medmnist.round_deadline_secs, 864, "maxRunTime 86400 s over 100 rounds");
    assert_eq!(medmnist.participation.min_participants, 10, "a node per data set");
    let mnist = &load("mnist").experiments[0].spec;
    assert_eq!(mnist.hyperparameters.local_epochs, 1, "Flame's default epochs");
    assert_eq!(mnist.participation.max_participants, Some(1), "random selector, k = 1");
}

#[test]
fn the_asynchronous_examples_are_flagged_and_the_others_not() {
    for name in EXAMPLES {
        let flame = load(name);
        let expected = if name.starts_with("asyncfl") {
            Synchrony::Asynchronous { aggregation_goal: Some(1), concurrency: Some(2) }
        } else {
            Synchrony::Synchronous
        };
        assert_eq!(flame.synchrony, expected, "{name}");
    }
}

#[test]
fn hier_mnist_plans_a_middle_aggregator_per_group_under_one_top() {
    let flame = load("hier_mnist");
    let groups: Vec<&str> = flame.experiments[0].nodes.iter().map(|n| n.group.as_str()).collect();
    assert_eq!(groups, ["eu", "eu", "na", "na"]);
    let (_, plan) = plan(&flame.experiments[0]);
    let slots: Vec<String> = plan.slots.iter().map(|s| s.id.to_string()).collect();
    assert_eq!(slots, ["middle-aggregator/eu", "middle-aggregator/na", "top-aggregator/default"]);
}

#[test]
fn hybrid_rings_each_group_under_one_aggregator() {
    let flame = load("hybrid");
    let (_, plan) = plan(&flame.experiments[0]);
    let rings: Vec<(&str, usize)> =
        plan.rings.iter().map(|r| (r.label.as_str(), r.order.len())).collect();
    assert_eq!(rings, [("eu", 2), ("us", 2)]);
    assert_eq!(plan.slots.len(), 1);
    let lenient =
        flame.warnings.iter().any(|w| w.to_string().starts_with("dataSpec.json: not valid JSON"));
    assert!(lenient, "Flame's own hybrid dataSpec.json needs lenient reading, with a warning");
}

#[test]
fn a_parallel_experiment_runs_each_group_apart_with_its_own_aggregator() {
    let flame = load("parallel_experiment");
    let labels: Vec<&str> = flame.experiments.iter().map(|e| e.label.as_str()).collect();
    assert_eq!(labels, ["us", "eu", "asia"]);
    let mut names = Vec::new();
    for experiment in &flame.experiments {
        assert_eq!(experiment.nodes.len(), 1);
        assert_eq!(experiment.nodes[0].group, experiment.label);
        let (tag, plan) = plan(experiment);
        assert_eq!(tag.tiers.len(), 2);
        assert_eq!(plan.slots.len(), 1, "{}: one aggregator", experiment.label);
        assert_eq!(plan.slots[0].id.label, experiment.label);
        names.push(experiment.spec.name.clone());
    }
    assert_eq!(names[0], "parallel experiment example (us)", "each experiment is a job of its own");
    // Each data set's node joins one experiment: its own group's.
    let nodes: Vec<&str> =
        flame.experiments.iter().flat_map(|e| &e.nodes).map(|n| n.dataset_id.as_str()).collect();
    assert_eq!(
        nodes,
        ["6261a0651bf79323fd13a4eb", "6261a05d1bf79323fd13a4ea", "6261a0541bf79323fd13a4e9"]
    );
}

#[test]
fn the_whole_parallel_schema_is_refused_as_one_tag_with_a_pointer_to_the_split() {
    let text = std::fs::read_to_string(examples().join("parallel_experiment/schema.json")).unwrap();
    let whole = TagSpec::Schema(serde_json::from_str(&text).unwrap());
    let error = Tag::from_spec(&whole).unwrap_err().to_string();
    assert!(error.contains("parallel experiments"), "{error}");
}

#[test]
fn a_coordinator_role_orchestrates_and_its_channels_stay_out_of_the_plan() {
    let flame = load("syncfl_hier_coord_mnist");
    assert_eq!(flame.coordinator_role.as_deref(), Some("coordinator"));
    let experiment = &flame.experiments[0];
    assert_eq!(experiment.spec.coordinator, Some(member_id(1000)));
    let (tag, plan) = plan(experiment);
    assert_eq!(tag.roles().collect::<Vec<_>>(), ["trainer", "middle-aggregator", "top-aggregator"]);
    assert_eq!(plan.depth(), 2);
    // Without a coordinator member the job self-organizes, and the conversion says so.
    let alone = FlameJob::from_dir(
        &examples().join("syncfl_hier_coord_mnist"),
        &FlameOptions { coordinator: None, ..options() },
    )
    .unwrap();
    assert_eq!(alone.experiments[0].spec.coordinator, None);
    assert!(alone.warnings.iter().any(|w| w.to_string().contains("self-organizes")));
}
