//! `fedmesh train-local`: the centralized baseline a federated job is compared with.

use crate::cli::TrainLocalArgs;
use fedmesh_learning::baseline::{BaselineConfig, run_baseline};
use fedmesh_learning::{DataSource, Model, TrainConfig};

pub fn run(args: &TrainLocalArgs) -> anyhow::Result<()> {
    let config = BaselineConfig {
        source: DataSource::parse(&args.dataset, args.label_column.as_deref())?,
        model: Model::parse_spec(&args.model)?,
        scaling: None,
        test_fraction: args.test_fraction,
        train: TrainConfig {
            epochs: args.epochs,
            batch_size: args.batch,
            lr: args.lr,
            momentum: args.momentum,
            weight_decay: args.weight_decay,
            prox_mu: 0.0,
            seed: args.seed,
            lr_schedule: None,
            rounds: 1,
        },
    };
    let quiet = args.json;
    let report = run_baseline(&config, |epoch| {
        if !quiet {
            println!(
                "epoch {:>3}/{}  train loss {:.4}  test loss {:.4}  test accuracy {:.4}  {:.2} s",
                epoch.epoch,
                args.epochs,
                epoch.train_loss,
                epoch.test_loss,
                epoch.test_accuracy,
                epoch.seconds
            );
        }
    })?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        if !report.classes.is_empty() {
            let mapping: Vec<String> = report
                .classes
                .iter()
                .enumerate()
                .map(|(i, name)| format!("{i} = {name}"))
                .collect();
            println!("classes: {}", mapping.join(", "));
        }
        println!(
            "final test accuracy {:.4} ({} train / {} test samples, {} parameters, {:.1} s)",
            report.test_accuracy,
            report.train_samples,
            report.test_samples,
            report.parameters,
            report.seconds
        );
    }
    Ok(())
}
