//! The conversion's field-by-field rules: each ignored field warns by name, Flame's optimizers and
//! selectors map to fedmesh's, and keys Flame does not have are refused.

use super::*;
use crate::model::ModelSpec;
use crate::strategy::{AdaptiveParams, ServerOptimizerSpec};

macro_rules! example {
    ($name:literal) => {
        FlameDocuments {
            schema: include_str!(concat!(
                "../../../testnet/flame-examples/",
                $name,
                "/schema.json"
            )),
            job: include_str!(concat!("../../../testnet/flame-examples/", $name, "/job.json")),
            model_spec: include_str!(concat!(
                "../../../testnet/flame-examples/",
                $name,
                "/modelSpec.json"
            )),
            data_spec: include_str!(concat!(
                "../../../testnet/flame-examples/",
                $name,
                "/dataSpec.json"
            )),
        }
    };
}

fn options() -> FlameOptions {
    FlameOptions {
        owner: MemberId([1; 32]),
        model: ModelSpec::Softmax,
        dataset: "mnist".to_owned(),
        coordinator: None,
    }
}

fn fields(job: &FlameJob) -> Vec<String> {
    job.warnings.iter().map(|w| w.field.clone()).collect()
}

const SCHEMA: &str = r#"{"name": "s", "roles": [
    {"name": "trainer", "isDataConsumer": true, "groupAssociation": [{"c": "default"}]},
    {"name": "aggregator", "groupAssociation": [{"c": "default"}]}],
  "channels": [{"name": "c", "pair": ["trainer", "aggregator"],
    "groupBy": {"type": "tag", "value": ["default"]},
    "funcTags": {"trainer": ["fetch", "upload"], "aggregator": ["distribute", "aggregate"]}}]}"#;
const JOB: &str = r#"{"name": "j", "backend": "p2p", "maxRunTime": 600}"#;
const DATA: &str = r#"[{"role": "trainer", "datasetGroups": {"default": ["a", "b", "c"]}}]"#;

fn convert(schema: &str, job: &str, model_spec: &str) -> Result<FlameJob, FlameError> {
    let documents = FlameDocuments { schema, job, model_spec, data_spec: DATA };
    FlameJob::from_documents(&documents, &options())
}

#[test]
fn each_ignored_field_of_the_examples_warns_by_name() {
    let lb = FlameJob::from_documents(&example!("asyncfl_hier_mnist_lb"), &options()).unwrap();
    let lb = fields(&lb);
    assert!(lb.contains(&"schema.json: roles[middle-aggregator].replica".to_owned()), "{lb:?}");
    assert!(!lb.iter().any(|f| f.contains("roles[top-aggregator]")), "replica 1 is honoured");
    for field in ["job.json: backend", "job.json: priority", "job.json: designId"] {
        assert!(lb.contains(&field.to_owned()), "{field}: {lb:?}");
    }
    assert!(lb.contains(&"modelSpec.json: dependencies".to_owned()), "{lb:?}");
    let hybrid = fields(&FlameJob::from_documents(&example!("hybrid"), &options()).unwrap());
    assert!(hybrid.contains(&"schema.json: channels[global-channel].backend".to_owned()));
    assert!(!hybrid.contains(&"schema.json: channels[param-channel].backend".to_owned()), "p2p");
    assert!(hybrid.contains(&"modelSpec.json: registry".to_owned()), "{hybrid:?}");
    assert!(hybrid.contains(&"dataSpec.json".to_owned()), "read leniently: {hybrid:?}");
}

#[test]
fn flame_optimizers_and_selectors_map_to_fedmesh_ones() {
    let model = r#"{"hyperparameters": {"rounds": 3, "weightDecay": 0.001},
        "optimizer": {"sort": "fedyogi", "kwargs": {"eta": 0.1, "beta_1": 0.8}},
        "selector": {"sort": "random", "kwargs": {"k": 2}}}"#;
    let job = convert(SCHEMA, JOB, model).unwrap();
    let spec = &job.experiments[0].spec;
    let params = AdaptiveParams { eta: 0.1, beta1: 0.8, beta2: 0.99, tau: 1e-3 };
    assert_eq!(spec.strategy.server, Some(ServerOptimizerSpec::FedYogi(params)));
    assert_eq!(spec.hyperparameters.weight_decay, 0.001);
    assert_eq!(spec.hyperparameters.batch_size, 16, "Flame's default batch size");
    let p = &spec.participation;
    assert_eq!((p.min_participants, p.max_participants), (2, Some(2)));
    assert_eq!(job.experiments[0].nodes.len(), 3);
    assert!(job.warnings.is_empty(), "{:?}", job.warnings);
    let prox = r#"{"optimizer": {"sort": "fedprox", "kwargs": {"mu": 0.01}}}"#;
    let prox = convert(SCHEMA, JOB, prox).unwrap();
    assert_eq!(prox.experiments[0].spec.hyperparameters.fedprox_mu, 0.01);
    assert_eq!(
        prox.experiments[0].spec.round_deadline_secs, 600,
        "maxRunTime over Flame's one round"
    );
}

#[test]
fn what_fedmesh_lacks_is_ignored_with_a_named_warning() {
    let model = r#"{"baseModel": {"name": "resnet", "version": 2},
        "hyperparameters": {"rounds": 2, "aggGoal": 3, "dropout": 0.5, "concurrency": 4},
        "optimizer": {"sort": "scaffold", "kwargs": {"lr_global": 1}},
        "selector": {"sort": "oort", "kwargs": {}}}"#;
    let job = convert(SCHEMA, JOB, model).unwrap();
    assert_eq!(job.synchrony, Synchrony::Synchronous);
    assert_eq!(job.experiments[0].spec.strategy.server, None, "FedAvg stands in for scaffold");
    let expected = [
        "modelSpec.json: optimizer.sort",
        "modelSpec.json: optimizer.kwargs.lr_global",
        "modelSpec.json: selector.sort",
        "modelSpec.json: hyperparameters.aggGoal",
        "modelSpec.json: hyperparameters.concurrency",
        "modelSpec.json: hyperparameters.dropout",
        "modelSpec.json: baseModel",
    ];
    assert_eq!(fields(&job), expected);
    assert!(job.warnings.iter().all(|w| w.reason.starts_with("ignored: ")), "{:?}", job.warnings);
    let schema = SCHEMA.replace(
        r#""pair": ["trainer", "aggregator"],"#,
        r#""pair": ["trainer", "aggregator"], "brokerHost": "b", "isUnidirectional": true,"#,
    );
    let job = convert(&schema, JOB, "{}").unwrap();
    assert_eq!(
        fields(&job),
        ["schema.json: channels[c].brokerHost", "schema.json: channels[c].isUnidirectional"]
    );
}

#[test]
fn keys_flame_does_not_have_are_refused() {
    let schema =
        SCHEMA.replace(r#""isDataConsumer": true"#, r#""isDataConsumer": true, "replicas": 2"#);
    let error = convert(&schema, JOB, "{}").unwrap_err().to_string();
    assert!(error.contains("schema.json: roles[0].replicas: unknown field"), "{error}");
    let error = convert(SCHEMA, r#"{"name": "j", "rounds": 3}"#, "{}").unwrap_err().to_string();
    assert!(error.contains("job.json") && error.contains("unknown field `rounds`"), "{error}");
    let error = convert(SCHEMA, JOB, r#"{"optimiser": {}}"#).unwrap_err().to_string();
    assert!(error.contains("modelSpec.json") && error.contains("optimiser"), "{error}");
    let error =
        convert(SCHEMA, JOB, r#"{"optimizer": {"sort": "adamw"}}"#).unwrap_err().to_string();
    assert!(error.contains("unknown optimizer \"adamw\""), "{error}");
}

#[test]
fn a_data_set_group_the_schema_does_not_serve_is_refused() {
    let documents = FlameDocuments {
        schema: SCHEMA,
        job: JOB,
        model_spec: "{}",
        data_spec: r#"[{"role": "trainer", "datasetGroups": {"eu": ["a"]}}]"#,
    };
    let error = FlameJob::from_documents(&documents, &options()).unwrap_err().to_string();
    assert!(error.contains("datasetGroups.eu: no groupAssociation of role `trainer`"), "{error}");
}

#[test]
fn a_spec_path_outside_the_job_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(JOB_FILE), r#"{"name": "j", "dataSpecPath": "../d.json"}"#)
        .unwrap();
    let error = FlameJob::from_dir(dir.path(), &options()).unwrap_err().to_string();
    assert!(error.contains("must be a path inside the job's directory"), "{error}");
}
