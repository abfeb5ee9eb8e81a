//! Job spec parsing: defaults, every problem reported with its path, unknown fields, canonical JSON.

use fedmesh_protocol::identity::Identity;
use fedmesh_protocol::model::ModelSpec;
use fedmesh_protocol::spec::{
    Admission, AsyncOptions, FedBuffSelector, JobSpec, Mode, OortSelector, Quorum, Selector,
    Staleness,
};
use fedmesh_protocol::strategy::{AggregationRule, ServerOptimizerSpec};
use fedmesh_protocol::tag::{BuiltinTopology, TagSpec};
use serde_json::{Value, json};

fn owner() -> String {
    Identity::from_seed([1; 32]).member_id().to_string()
}

fn minimal() -> Value {
    json!({"name": "mnist", "owner": owner(), "model": "softmax", "dataset": "mnist"})
}

fn with(mut base: Value, key: &str, value: Value) -> Value {
    base[key] = value;
    base
}

fn parse(value: &Value) -> Result<JobSpec, Vec<String>> {
    JobSpec::from_json(&serde_json::to_vec(value).unwrap())
        .map_err(|errors| errors.0.iter().map(ToString::to_string).collect())
}

fn problems(value: &Value) -> Vec<String> {
    parse(value).expect_err("the spec should be refused")
}

#[test]
fn a_minimal_spec_gets_sensible_defaults() {
    let spec = parse(&minimal()).unwrap();
    assert_eq!(spec.owner, Identity::from_seed([1; 32]).member_id());
    assert_eq!(spec.tag, TagSpec::Builtin(BuiltinTopology::Central));
    assert_eq!(spec.model, ModelSpec::Softmax);
    assert_eq!(spec.hyperparameters.rounds, 10);
    assert_eq!(spec.hyperparameters.batch_size, 32);
    assert_eq!(spec.strategy.rule, AggregationRule::FedAvg);
    assert_eq!(spec.participation.min_participants, 1);
    assert_eq!(spec.quorum, Quorum::Fraction(1.0));
    assert_eq!(spec.round_deadline_secs, 300);
    assert_eq!(spec.coordinator, None);
}

#[test]
fn a_full_spec_parses() {
    let spec = json!({
        "name": "robust", "owner": owner(), "dataset": "mnist",
        "tag": "hierarchical",
        "model": {"mlp": [64, 32]},
        "hyperparameters": {"rounds": 5, "local_epochs": 2, "batch_size": 16, "lr": 0.1,
                            "momentum": 0.9, "weight_decay": 1e-4, "fedprox_mu": 0.01},
        "strategy": {"rule": "multi_krum", "f": 1, "m": 3, "clip_norm": 5.0,
                     "noise_multiplier": 0.5, "server": {"optimizer": "fedadam", "eta": 0.02}},
        "participation": {"min_participants": 5, "max_participants": 10, "fraction": 0.5},
        "quorum": {"count": 5},
        "round_deadline_secs": 60,
        "coordinator": Identity::from_seed([2; 32]).member_id().to_string(),
        "seed": 42
    });
    let spec = parse(&spec).unwrap();
    assert_eq!(spec.strategy.rule, AggregationRule::MultiKrum { f: 1, m: 3 });
    assert!(
        matches!(spec.strategy.server, Some(ServerOptimizerSpec::FedAdam(ref p)) if p.eta == 0.02 && p.beta2 == 0.99)
    );
    assert_eq!(spec.quorum.required(8), 5);
    assert_eq!(spec.coordinator, Some(Identity::from_seed([2; 32]).member_id()));
}

#[test]
fn every_value_problem_is_reported_with_its_path() {
    let spec = json!({
        "name": "", "owner": owner(), "model": {"mlp": [0]}, "dataset": "mnist",
        "hyperparameters": {"lr": 0.0, "momentum": 1.0, "rounds": 0},
        "strategy": {"rule": "trimmed_mean", "beta": 0.5, "noise_multiplier": 1.0},
        "participation": {"min_participants": 3, "max_participants": 2, "fraction": 1.5},
        "quorum": {"fraction": 0.0},
        "round_deadline_secs": 0
    });
    let found = problems(&spec);
    for expected in [
        "name: must not be empty",
        "model.mlp[0]: must be between 1 and 1048576",
        "hyperparameters.lr: must be > 0",
        "hyperparameters.momentum: must be in [0, 1)",
        "hyperparameters.rounds: must be between 1 and 100000",
        "strategy.beta: must be in [0, 0.5)",
        "strategy.noise_multiplier: needs strategy.clip_norm (noise scale)",
        "participation.max_participants: must be between min_participants (3) and 10000",
        "participation.fraction: must be in (0, 1]",
        "quorum.fraction: must be in (0, 1]",
        "round_deadline_secs: must be between 1 and 604800 (a week)",
    ] {
        assert!(found.iter().any(|p| p == expected), "missing `{expected}` in {found:#?}");
    }
    assert_eq!(found.len(), 11, "{found:#?}");
}

#[test]
fn structural_problems_in_several_sections_are_all_reported() {
    let spec = json!({
        "name": 5, "owner": "not-a-peer-id", "model": "transformer", "dataset": "mnist",
        "hyperparameters": {"lr": "fast", "batch_size": -1},
        "participation": {"allow": ["12D3KooWbad"]},
        "strategy": {"rule": "fedavg", "beta": 0.1},
        "colour": "blue"
    });
    let found = problems(&spec).join("\n");
    for expected in [
        "colour: unknown field",
        "name: invalid type",
        "owner: `not-a-peer-id` is not a member id",
        "model: unknown variant `transformer`",
        "hyperparameters.lr: invalid type",
        "hyperparameters.batch_size: invalid value",
        "participation.allow[0]: `12D3KooWbad` is not a member id",
        "strategy.beta: unknown field",
    ] {
        assert!(found.contains(expected), "missing `{expected}` in\n{found}");
    }
}

#[test]
fn missing_required_fields_and_unknown_nested_fields_are_errors() {
    let found = problems(&json!({"hyperparameters": {"learning_rate": 0.1}})).join("\n");
    for field in ["name", "owner", "model", "dataset"] {
        assert!(found.contains(&format!("{field}: missing (required)")), "{found}");
    }
    assert!(
        found.contains("hyperparameters.learning_rate: unknown field")
            || found.contains("unknown field `learning_rate`"),
        "{found}"
    );
    let found = problems(&with(
        minimal(),
        "strategy",
        json!({"rule": "fedavg", "server": {"optimizer": "fedavgm", "tau": 1.0}}),
    ))
    .join("\n");
    assert!(found.contains("strategy.server.tau: unknown field"), "{found}");
    let found = problems(&with(
        minimal(),
        "tag",
        json!({"roles": [{"name": "t", "replicas": 2}], "channels": []}),
    ))
    .join("\n");
    assert!(found.contains("tag.roles[0].replicas: unknown field"), "{found}");
    let found = problems(&with(minimal(), "tag", json!("star"))).join("\n");
    assert!(found.contains("tag: unknown variant `star`"), "{found}");
}

#[test]
fn strategy_and_participation_must_be_consistent() {
    let spec = with(minimal(), "strategy", json!({"rule": "krum", "f": 2}));
    let spec = with(spec, "participation", json!({"min_participants": 4}));
    let spec = with(spec, "quorum", json!({"count": 3}));
    let found = problems(&spec).join("\n");
    assert!(found.contains("strategy.f: krum tolerating 2 faulty updates needs at least 7 participants, participation.min_participants is 4"), "{found}");
    assert!(
        found.contains("quorum.count: krum with f = 2 needs at least 7 updates per round"),
        "{found}"
    );

    let spec = with(minimal(), "strategy", json!({"rule": "multi_krum", "f": 0, "m": 0}));
    assert!(problems(&spec).iter().any(|p| p == "strategy.m: must be >= 1"));

    let me = owner();
    let spec = with(minimal(), "participation", json!({"min_participants": 2, "allow": [me, me]}));
    let found = problems(&spec).join("\n");
    assert!(found.contains("participation.allow[1]: is listed twice"), "{found}");
    assert!(
        found.contains("participation.allow: lists 1 members, fewer than min_participants (2)"),
        "{found}"
    );

    let spec = with(minimal(), "tag", json!("ring"));
    let spec = with(spec, "strategy", json!({"rule": "median"}));
    assert!(problems(&spec).iter().any(|p| p.starts_with("strategy.rule: a ring all-reduce")));
}

#[test]
fn dp_noise_takes_no_seed_from_the_spec_and_a_sample_cap_is_checked() {
    let strategy =
        json!({"rule": "fedavg", "clip_norm": 1.0, "noise_multiplier": 1.0, "noise_seed": 7});
    let found = problems(&with(minimal(), "strategy", strategy)).join("\n");
    assert!(found.contains("strategy.noise_seed: unknown field"), "{found}");
    let capped = with(minimal(), "participation", json!({"max_samples": 0}));
    let found = problems(&capped).join("\n");
    assert!(found.contains("participation.max_samples: must be >= 1"), "{found}");
    let capped = with(minimal(), "participation", json!({"max_samples": 500}));
    let spec = parse(&capped).expect("a valid spec");
    assert_eq!(spec.participation.max_samples, Some(500));
}

#[test]
fn distributed_noise_needs_noise_a_clip_and_fedavg_and_the_aggregator_then_adds_neither() {
    let noised = json!({"rule": "fedavg", "clip_norm": 1.0, "noise_multiplier": 0.8});
    let distributed = json!({"noise": "distributed", "delta": 1e-6});
    let spec = parse(&with(with(minimal(), "strategy", noised), "privacy", distributed.clone()))
        .expect("a valid spec");
    assert!(spec.privacy.distributed());
    assert_eq!(spec.privacy.delta, 1e-6);
    let aggregator = spec.aggregator_strategy();
    assert_eq!((aggregator.clip_norm, aggregator.noise_multiplier), (None, None));
    let found = problems(&with(minimal(), "privacy", distributed.clone())).join("\n");
    assert!(found.contains("privacy.noise: distributed noise needs"), "{found}");
    let median = json!({"rule": "median", "clip_norm": 1.0, "noise_multiplier": 0.8});
    let found =
        problems(&with(with(minimal(), "strategy", median), "privacy", distributed)).join("\n");
    assert!(found.contains("adds up only in a weighted mean"), "{found}");
    let found = problems(&with(minimal(), "privacy", json!({"delta": 1.5}))).join("\n");
    assert!(found.contains("privacy.delta: must be in (0, 1)"), "{found}");
    let found = problems(&with(minimal(), "privacy", json!({"noise": "loud"}))).join("\n");
    assert!(found.contains("privacy"), "{found}");
    // The default stays out of the canonical JSON: announcements made before keep their bytes.
    let plain = parse(&minimal()).expect("a valid spec");
    let canonical = String::from_utf8(plain.to_canonical_json().unwrap()).unwrap();
    assert!(!canonical.contains("privacy"), "{canonical}");
    assert_eq!(plain.aggregator_strategy(), plain.strategy);
    let canonical = String::from_utf8(spec.to_canonical_json().unwrap()).unwrap();
    assert!(!canonical.contains("secure_aggregation"), "{canonical}");
}

#[test]
fn admission_is_open_allow_or_owner_and_agrees_with_the_allow_list() {
    let me = owner();
    let admission = |part: Value| parse(&with(minimal(), "participation", part));
    let admitted = |part: Value| admission(part).expect("a valid spec").participation.admission();
    assert_eq!(admitted(json!({})), Admission::Open, "the default");
    assert_eq!(admitted(json!({"allow": [me]})), Admission::Allow, "an allow-list alone");
    assert_eq!(admitted(json!({"admission": "owner"})), Admission::Owner);
    assert_eq!(admitted(json!({"admission": "owner", "allow": [me]})), Admission::Owner);
    let found = admission(json!({"admission": "allow"})).expect_err("no keys").join("\n");
    assert!(found.contains("participation.allow: admission \"allow\" needs the keys"), "{found}");
    let found = admission(json!({"admission": "open", "allow": [me]})).expect_err("").join("\n");
    assert!(found.contains("participation.admission: an open job has no allow-list"), "{found}");
    let found = admission(json!({"admission": "vip"})).expect_err("unknown").join("\n");
    assert!(found.contains("participation"), "{found}");
}

#[test]
fn tensor_names_cannot_leave_an_export_folder() {
    for name in ["../x", "a/b", ".hidden", "c:\\d", ""] {
        let tensors = json!([{"name": name, "shape": [2]}]);
        let model = json!({"external": {"tensors": tensors, "init": {"seed": 1}}});
        let found = problems(&with(minimal(), "model", model)).join("\n");
        assert!(found.contains("model.external.tensors[0].name"), "{name}: {found}");
    }
    assert!(fedmesh_protocol::spec::is_plain_tensor_name("fc1.weight"));
}

#[test]
fn server_optimizer_ranges_are_checked() {
    let spec = with(
        minimal(),
        "strategy",
        json!({"rule": "fedavg", "clip_norm": -1.0,
        "server": {"optimizer": "fedyogi", "eta": 0.0, "beta1": 1.0, "beta2": -0.1, "tau": 0.0}}),
    );
    let found = problems(&spec);
    for expected in [
        "strategy.clip_norm: must be > 0",
        "strategy.server.eta: must be > 0",
        "strategy.server.beta1: must be in [0, 1)",
        "strategy.server.beta2: must be in [0, 1)",
        "strategy.server.tau: must be > 0",
    ] {
        assert!(found.iter().any(|p| p == expected), "missing `{expected}` in {found:#?}");
    }
}

#[test]
fn external_models_are_checked() {
    let spec = with(
        minimal(),
        "model",
        json!({"external": {
        "tensors": [{"name": "w", "shape": [3, 0]}, {"name": "w", "shape": [2], "dtype": "f32"}],
        "init": {"safetensors": "abc"}}}),
    );
    let found = problems(&spec).join("\n");
    for expected in [
        "model.external.tensors[0].shape: dimensions must be >= 1",
        "model.external.tensors[1].name: is used twice",
        "model.external.tensors[1].dtype: unknown field",
        "model.external.init.safetensors: must be a 64-hex-digit hash",
    ] {
        assert!(found.contains(expected), "missing `{expected}` in\n{found}");
    }
}

#[test]
fn oversized_and_non_object_specs_are_refused() {
    let big = vec![b' '; fedmesh_protocol::spec::MAX_JOB_SPEC_BYTES + 1];
    assert!(JobSpec::from_json(&big).unwrap_err().to_string().contains("at most"));
    assert!(
        JobSpec::from_json(b"[1, 2]").unwrap_err().to_string().contains("must be a JSON object")
    );
    assert!(JobSpec::from_json(b"{\"name\":").unwrap_err().to_string().contains("not valid JSON"));
}

#[test]
fn canonical_json_round_trips_and_is_required_by_from_canonical_json() {
    let schema = json!({"name": "two-level", "roles": [
        {"name": "trainer", "isDataConsumer": true, "groupAssociation": [{"param": "eu"}]},
        {"name": "aggregator", "groupAssociation": [{"param": "eu", "global": "default"}]}],
        "channels": [{"name": "param", "pair": ["trainer", "aggregator"],
                      "groupBy": {"type": "tag", "value": ["eu"]},
                      "funcTags": {"trainer": ["fetch", "upload"], "aggregator": ["distribute", "aggregate"]}}]});
    let value = with(
        with(minimal(), "tag", schema),
        "strategy",
        json!({"rule": "fedavg", "server": {"optimizer": "fedavgm"}, "clip_norm": 1.5, "noise_multiplier": 0.1}),
    );
    let spec = parse(&value).unwrap();
    let canonical = spec.to_canonical_json().unwrap();
    assert_eq!(JobSpec::from_canonical_json(&canonical).unwrap(), spec);
    let pretty = serde_json::to_vec_pretty(&spec).unwrap();
    assert_eq!(JobSpec::from_json(&pretty).unwrap(), spec);
    let error = JobSpec::from_canonical_json(&pretty).unwrap_err().to_string();
    assert!(error.contains("not in canonical form"), "{error}");
}

#[test]
fn top_k_delta_encoding_and_bench_models_are_checked() {
    use fedmesh_protocol::spec::DeltaEncoding;
    let spec = parse(&with(minimal(), "delta_encoding", json!({"top_k": 0.1}))).unwrap();
    assert_eq!(spec.delta_encoding, DeltaEncoding::TopK(0.1));
    for bad in [json!({"top_k": 0.0}), json!({"top_k": 1.5})] {
        let found = problems(&with(minimal(), "delta_encoding", bad));
        assert!(found.iter().any(|p| p.starts_with("delta_encoding.top_k")), "{found:?}");
    }
    let spec = parse(&with(minimal(), "model", json!({"bench": {"params": 1000}}))).unwrap();
    assert_eq!(spec.model, ModelSpec::Bench { params: 1000 });
    let found = problems(&with(minimal(), "model", json!({"bench": {"params": 0}})));
    assert!(found.iter().any(|p| p.starts_with("model.bench.params")), "{found:?}");
}

#[test]
fn classes_are_a_count_or_distinct_names() {
    use fedmesh_protocol::spec::Classes;
    let spec = parse(&minimal()).unwrap();
    assert_eq!(spec.classes, None);
    let canonical = String::from_utf8(spec.to_canonical_json().unwrap()).unwrap();
    assert!(!canonical.contains("classes"), "{canonical}");
    let spec = parse(&with(minimal(), "classes", json!(3))).unwrap();
    assert_eq!(spec.classes, Some(Classes::Count(3)));
    let names = json!(["setosa", "versicolor", "virginica"]);
    let spec = parse(&with(minimal(), "classes", names)).unwrap();
    assert_eq!(spec.classes.as_ref().map(Classes::count), Some(3));
    let canonical = spec.to_canonical_json().unwrap();
    assert_eq!(JobSpec::from_canonical_json(&canonical).unwrap(), spec);
    for (bad, expected) in [
        (json!(1), "at least 2 classes"),
        (json!(["a", "a"]), "names a class twice"),
        (json!(["a", ""]), "classes[1]: must not be empty"),
    ] {
        let found = problems(&with(minimal(), "classes", bad.clone()));
        assert!(found.iter().any(|p| p.contains(expected)), "{bad}: {found:?}");
    }
}

#[test]
fn verification_is_off_by_default_and_leaves_canonical_json_alone() {
    let spec = parse(&minimal()).unwrap();
    assert_eq!(spec.verification, None);
    let json = String::from_utf8(spec.to_canonical_json().unwrap()).unwrap();
    assert!(!json.contains("verification"), "{json}");
}

#[test]
fn verification_parses_and_round_trips() {
    use fedmesh_protocol::spec::{Auditors, Verification};
    let spec = parse(&with(minimal(), "verification", json!({"auditors": "all"}))).unwrap();
    let expected = Verification { auditors: Auditors::All, audit_window_secs: 600 };
    assert_eq!(spec.verification, Some(expected));
    let sampled = json!({"auditors": {"fraction": 0.3}, "audit_window_secs": 60});
    let spec = parse(&with(minimal(), "verification", sampled)).unwrap();
    let canonical = spec.to_canonical_json().unwrap();
    assert_eq!(JobSpec::from_canonical_json(&canonical).unwrap(), spec);
}

#[test]
fn verification_refuses_what_cannot_be_recomputed_with_the_reason() {
    let bad = json!({"auditors": {"fraction": 1.5}, "audit_window_secs": 0, "extra": 1});
    let found = problems(&with(minimal(), "verification", bad)).join("\n");
    assert!(found.contains("verification"), "{found}");
    let fine = json!({"auditors": {"fraction": 1.5}, "audit_window_secs": 0});
    let found = problems(&with(minimal(), "verification", fine)).join("\n");
    assert!(found.contains("verification.auditors.fraction: must be in (0, 1]"), "{found}");
    assert!(found.contains("verification.audit_window_secs: must be between 1"), "{found}");

    let verified = with(minimal(), "verification", json!({"auditors": "all"}));
    let strategy = json!({"rule": "fedavg", "server": {"optimizer": "fedadam"},
                          "clip_norm": 1.0, "noise_multiplier": 0.5});
    let spec = with(with(verified.clone(), "strategy", strategy), "tag", json!("hierarchical"));
    let found = problems(&spec).join("\n");
    assert!(found.contains("strategy.server: verification"), "{found}");
    assert!(found.contains("strategy.noise_multiplier: verification"), "{found}");
    assert!(found.contains("aggregator's secret"), "{found}");
    assert!(found.contains("tag: verification supports the central topology only"), "{found}");
    let krum = with(verified.clone(), "strategy", json!({"rule": "krum", "f": 0}));
    assert!(problems(&krum).iter().any(|p| p.starts_with("strategy.rule: verification")));
    let clipped = json!({"rule": "fedavg", "clip_norm": 1.0, "noise_multiplier": 0.0});
    assert!(parse(&with(verified, "strategy", clipped)).is_ok());
}

#[test]
fn secure_aggregation_is_off_by_default_and_the_trainers_clip() {
    let plain = parse(&minimal()).expect("a valid spec");
    assert!(!plain.privacy.secure_aggregation);
    let secure = json!({"secure_aggregation": true});
    let clipped = json!({"rule": "fedavg", "clip_norm": 2.0});
    let spec = parse(&with(with(minimal(), "strategy", clipped), "privacy", secure))
        .expect("a valid secure spec");
    assert!(spec.privacy.secure_aggregation);
    assert_eq!(spec.strategy.clip_norm, Some(2.0));
    assert_eq!(spec.aggregator_strategy().clip_norm, None, "the trainers clip, not the aggregator");
    let canonical = String::from_utf8(spec.to_canonical_json().unwrap()).unwrap();
    assert!(canonical.contains("secure_aggregation"), "{canonical}");
    let again = parse(&serde_json::from_str(&canonical).unwrap()).unwrap();
    assert_eq!(again, spec);
}

fn secure_clipped() -> Value {
    let secure = with(minimal(), "privacy", json!({"secure_aggregation": true}));
    with(secure, "strategy", json!({"rule": "fedavg", "clip_norm": 1.0}))
}

#[test]
fn secure_aggregation_refuses_what_needs_an_update_on_its_own_with_the_reason() {
    let secure = with(minimal(), "privacy", json!({"secure_aggregation": true}));
    let found = problems(&secure).join("\n");
    assert!(found.contains("strategy.clip_norm: privacy.secure_aggregation"), "{found}");
    let median = json!({"rule": "median", "clip_norm": 1.0, "noise_multiplier": 0.5});
    let spec = with(with(secure.clone(), "strategy", median), "tag", json!("ring"));
    let found = problems(&spec).join("\n");
    assert!(found.contains("tag: privacy.secure_aggregation: the aggregator sees"), "{found}");
    assert!(found.contains("use the central or the hierarchical topology"), "{found}");
    assert!(found.contains("strategy.rule: privacy.secure_aggregation"), "{found}");
    assert!(found.contains("strategy.noise_multiplier: privacy.secure_aggregation"), "{found}");
    // Auditors recompute the sum from the leader's evidence.
    let audited = with(secure_clipped(), "verification", json!({"auditors": "all"}));
    assert!(parse(&audited).is_ok());
    let coordinator = fedmesh_protocol::identity::Identity::from_seed([9; 32]).member_id();
    let orchestrated = with(secure, "coordinator", json!(coordinator.to_string()));
    let found = problems(&orchestrated).join("\n");
    assert!(found.contains("coordinator: privacy.secure_aggregation"), "{found}");
    // Each group's aggregator sums its group securely.
    let grouped = with(secure_clipped(), "tag", json!("hierarchical"));
    assert!(parse(&grouped).is_ok());
    // Distributed noise combines: each trainer adds its share before masking.
    let noised = json!({"rule": "fedavg", "clip_norm": 1.0, "noise_multiplier": 0.8});
    let both = json!({"secure_aggregation": true, "noise": "distributed"});
    assert!(parse(&with(with(minimal(), "strategy", noised), "privacy", both)).is_ok());
}

#[test]
fn an_lr_schedule_steps_or_follows_a_cosine_and_a_bad_one_is_refused() {
    let stepped = with(
        minimal(),
        "hyperparameters",
        json!({"rounds": 10, "lr": 0.4, "lr_schedule": "step:3,0.5"}),
    );
    let spec = parse(&stepped).unwrap();
    let rates: Vec<f32> = (1..=7).map(|r| spec.hyperparameters.lr_at(r)).collect();
    assert_eq!(rates, vec![0.4, 0.4, 0.4, 0.2, 0.2, 0.2, 0.1]);
    let canonical = String::from_utf8(spec.to_canonical_json().unwrap()).unwrap();
    assert!(canonical.contains(r#""lr_schedule":"step:3,0.5""#), "{canonical}");
    let cosine = with(
        minimal(),
        "hyperparameters",
        json!({"rounds": 4, "lr": 1.0, "lr_schedule": "cosine"}),
    );
    let spec = parse(&cosine).unwrap();
    let rates: Vec<f32> = (1..=4).map(|r| spec.hyperparameters.lr_at(r)).collect();
    assert_eq!(rates[0], 1.0);
    assert!((rates[2] - 0.5).abs() < 1e-6 && rates[3] > 0.0 && rates[3] < rates[2], "{rates:?}");
    let constant = parse(&minimal()).unwrap();
    assert_eq!(constant.hyperparameters.lr_at(9), constant.hyperparameters.lr);
    let canonical = String::from_utf8(constant.to_canonical_json().unwrap()).unwrap();
    assert!(!canonical.contains("lr_schedule"), "{canonical}");
    for bad in ["step:0,0.5", "step:2,1.5", "linear", "step:2"] {
        let spec = with(minimal(), "hyperparameters", json!({"lr_schedule": bad}));
        let found = problems(&spec).join("\n");
        assert!(found.contains("step:EVERY,GAMMA"), "{bad}: {found}");
    }
}

#[test]
fn flame_schema_fields_are_accepted_kept_and_warned_about_when_fedmesh_ignores_them() {
    let schema = json!({"name": "flame", "roles": [
        {"name": "trainer", "isDataConsumer": true, "groupAssociation": [{"param": "eu"}]},
        {"name": "aggregator", "replica": 2, "groupAssociation": [{"param": "eu"}]}],
        "channels": [{"name": "param", "pair": ["trainer", "aggregator"], "backend": "mqtt",
                      "groupBy": {"type": "tag", "value": ["eu"]},
                      "funcTags": {"trainer": ["fetch", "upload", "uploadBias"],
                                   "aggregator": ["distribute", "aggregate"]}}]});
    let spec = parse(&with(minimal(), "tag", schema)).unwrap();
    let warnings: Vec<String> = spec.warnings().iter().map(|w| w.field.clone()).collect();
    assert_eq!(
        warnings,
        [
            "tag: roles[aggregator].replica",
            "tag: channels[param].backend",
            "tag: channels[param].funcTags[trainer].uploadBias"
        ]
    );
    let canonical = spec.to_canonical_json().unwrap();
    assert_eq!(JobSpec::from_canonical_json(&canonical).unwrap(), spec, "the fields are kept");
    assert!(parse(&minimal()).unwrap().warnings().is_empty());
}

#[test]
fn the_random_selector_is_the_default_and_leaves_canonical_json_alone() {
    let spec = parse(&minimal()).unwrap();
    assert_eq!(spec.participation.selector, Selector::Random);
    let json = String::from_utf8(spec.to_canonical_json().unwrap()).unwrap();
    assert!(!json.contains("selector"), "{json}");
    let explicit = with(minimal(), "participation", json!({"selector": "random"}));
    assert_eq!(parse(&explicit).unwrap().to_canonical_json().unwrap().as_slice(), json.as_bytes());
}

#[test]
fn fedbuff_and_oort_selectors_parse_and_round_trip() {
    let fedbuff = json!({"selector": {"fedbuff": {"concurrency": 3}}});
    let spec = parse(&with(minimal(), "participation", fedbuff)).unwrap();
    assert_eq!(spec.participation.selector, Selector::Fedbuff(FedBuffSelector { concurrency: 3 }));
    let oort = json!({"fraction": 0.3, "selector": {"oort": {"exploration": 0.25}}});
    let spec = parse(&with(minimal(), "participation", oort)).unwrap();
    let expected = OortSelector { exploration: 0.25, ..OortSelector::default() };
    assert_eq!(spec.participation.selector, Selector::Oort(expected));
    let canonical = spec.to_canonical_json().unwrap();
    assert_eq!(JobSpec::from_canonical_json(&canonical).unwrap(), spec);
}

#[test]
fn selector_parameters_and_their_fit_with_the_job_are_checked_with_the_reason() {
    let bad = json!({"selector": {"oort": {"exploration": 1.5, "straggler_penalty": -1.0,
        "preferred_duration_secs": 0.0, "max_consecutive": 0}}});
    let found = problems(&with(minimal(), "participation", bad)).join("\n");
    for expected in [
        "participation.selector.oort.exploration: must be in [0, 1]",
        "participation.selector.oort.straggler_penalty: must be >= 0",
        "participation.selector.oort.preferred_duration_secs: must be > 0",
        "participation.selector.oort.max_consecutive: must be >= 1",
    ] {
        assert!(found.contains(expected), "{found}");
    }
    let idle = json!({"selector": {"fedbuff": {"concurrency": 0}}});
    let found = problems(&with(minimal(), "participation", idle)).join("\n");
    assert!(
        found.contains("participation.selector.fedbuff.concurrency: must be between 1"),
        "{found}"
    );
    let oort = json!({"selector": {"oort": {}}});
    let ring = with(with(minimal(), "participation", oort.clone()), "tag", json!("ring"));
    let found = problems(&ring).join("\n");
    assert!(
        found.contains("participation.selector.oort: oort needs each trainer's update"),
        "{found}"
    );
    let orchestrated = with(with(minimal(), "participation", oort), "coordinator", json!(owner()));
    let found = problems(&orchestrated).join("\n");
    assert!(found.contains("participation.selector: an orchestrated job's coordinator"), "{found}");
}

#[test]
fn an_async_job_parses_with_fedbuffs_defaults_and_a_sync_one_keeps_its_canonical_bytes() {
    let sync = parse(&minimal()).unwrap();
    assert_eq!((sync.mode, sync.async_options()), (Mode::Sync, None));
    let canonical = String::from_utf8(sync.to_canonical_json().unwrap()).unwrap();
    assert!(!canonical.contains("\"mode\"") && !canonical.contains("\"async\""), "{canonical}");
    let defaults = parse(&with(minimal(), "mode", json!("async"))).unwrap();
    assert_eq!(defaults.async_options(), Some(AsyncOptions::default()));
    let spec =
        json!({"buffer": 4, "concurrency": 6, "staleness": "hinge:10,2", "max_staleness": 5});
    let parsed = parse(&with(with(minimal(), "mode", json!("async")), "async", spec)).unwrap();
    let options = parsed.async_options().unwrap();
    assert_eq!((options.buffer, options.concurrency, options.max_staleness), (4, Some(6), 5));
    assert_eq!(options.staleness, Staleness::Hinge { a: 10.0, b: 2 });
    let bytes = parsed.to_canonical_json().unwrap();
    assert_eq!(JobSpec::from_canonical_json(&bytes).unwrap(), parsed);
}

#[test]
fn async_settings_are_checked_and_what_async_cannot_run_is_refused_with_the_reason() {
    let asynchronous =
        |options: Value| with(with(minimal(), "mode", json!("async")), "async", options);
    let found = problems(&asynchronous(json!({"buffer": 0, "max_staleness": 65})));
    assert!(found.iter().any(|p| p.starts_with("async.buffer: must be between 1")), "{found:?}");
    assert!(found.iter().any(|p| p.starts_with("async.max_staleness")), "{found:?}");
    let found = problems(&asynchronous(json!({"buffer": 4, "concurrency": 3})));
    assert!(
        found.iter().any(|p| p == "async.concurrency: must be at least async.buffer"),
        "{found:?}"
    );
    let found = problems(&asynchronous(json!({"staleness": "linear"})));
    assert!(found.iter().any(|p| p.contains("`linear` is not")), "{found:?}");
    let found = problems(&with(minimal(), "async", json!({"buffer": 2})));
    assert!(found.iter().any(|p| p.starts_with("async: only an asynchronous job")), "{found:?}");
    let refused = [
        ("tag", json!("ring")),
        ("privacy", json!({"secure_aggregation": true})),
        ("verification", json!({"auditors": "all"})),
        ("quorum", json!({"count": 2})),
        ("participation", json!({"selector": {"fedbuff": {"concurrency": 2}}})),
    ];
    for (key, value) in refused {
        let found = problems(&with(asynchronous(json!({})), key, value));
        assert!(
            found.iter().any(|p| p.starts_with(key) && p.contains("an asynchronous job cannot")),
            "{key}: {found:?}"
        );
    }
}
