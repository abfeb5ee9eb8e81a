//! `fedmesh job ...`: announce, list, show, join, admit, leave and watch jobs through the local node's
//! admin API (submit, status and stop are in `coordinated`).

use crate::cli::JobCommand;
use anyhow::Context;
use fedmesh_admin_api::{AdminClient, JobView, RunView};
use std::path::Path;

pub fn run(command: JobCommand) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        match command {
            JobCommand::Announce { spec, init, api } => {
                let mut bytes = std::fs::read(&spec)
                    .with_context(|| format!("cannot read job spec {}", spec.display()))?;
                let client = AdminClient::for_data_dir(&api.data_dir)?;
                bytes = with_owner(&client, &bytes).await?;
                if let Some(init) = init {
                    bytes = with_initial_weights(&client, &bytes, &init).await?;
                }
                let id = client.announce(bytes).await?.id;
                println!("{id}");
                eprintln!("announced job {id} from {}", spec.display());
                Ok(())
            }
            JobCommand::FromFlame { dir, model, dataset, coordinator } => {
                from_flame(&dir, &model, dataset, coordinator.as_deref())
            }
            JobCommand::List { api } => {
                let client = AdminClient::for_data_dir(&api.data_dir)?;
                let jobs = client.jobs().await?;
                print_job_table(&jobs);
                Ok(())
            }
            JobCommand::Show { id, api } => {
                let client = AdminClient::for_data_dir(&api.data_dir)?;
                let job = client.job(&id).await?;
                println!("{}", serde_json::to_string_pretty(&job)?);
                Ok(())
            }
            JobCommand::Submit { spec, coordinator } => {
                super::coordinated::submit(&spec, &coordinator.data_dir).await
            }
            JobCommand::Status { id, coordinator } => {
                super::coordinated::status(&id, &coordinator.data_dir).await
            }
            JobCommand::Stop { id, reason, api } => {
                super::coordinated::stop(&id, reason.as_deref(), &api.data_dir).await
            }
            JobCommand::Join { id, ticket, api } => {
                let joined = AdminClient::for_data_dir(&api.data_dir)?.join(&id, ticket).await?;
                println!("join {}: done", joined.id);
                Ok(())
            }
            JobCommand::Admit { id, peer, api } => admit(&api.data_dir, &id, &peer).await,
            JobCommand::Leave { id, api } => {
                let left = AdminClient::for_data_dir(&api.data_dir)?.leave(&id).await?;
                println!("leave {}: done", left.id);
                Ok(())
            }
            JobCommand::Watch { id, api } => watch(&api.data_dir, &id).await,
        }
    })
}

/// Prints the fedmesh job specs of the Flame job in `dir`, without an owner (orchestrated by
/// `coordinator` when its schema has a coordinator role); the fields it ignores go to stderr.
fn from_flame(
    dir: &Path,
    model: &str,
    dataset: String,
    coordinator: Option<&str>,
) -> anyhow::Result<()> {
    let model = fedmesh_learning::Model::parse_spec(model)?;
    let owner = fedmesh_protocol::identity::Identity::from_seed([0; 32]).member_id();
    let coordinator = coordinator
        .map(|peer| {
            peer.parse::<fedmesh_protocol::ids::MemberId>()
                .map_err(|e| anyhow::anyhow!("--coordinator {peer}: not a PeerId: {e}"))
        })
        .transpose()?;
    let options = fedmesh_protocol::flame::FlameOptions { owner, model, dataset, coordinator };
    let flame = fedmesh_protocol::flame::FlameJob::from_dir(dir, &options)
        .with_context(|| format!("cannot read the Flame job in {}", dir.display()))?;
    for warning in &flame.warnings {
        eprintln!("{}: {}", warning.field, warning.reason);
    }
    let mut specs = Vec::with_capacity(flame.experiments.len());
    for experiment in &flame.experiments {
        let mut spec = serde_json::to_value(&experiment.spec)?;
        if let Some(fields) = spec.as_object_mut() {
            fields.remove("owner");
        }
        let groups: Vec<&str> = experiment.nodes.iter().map(|n| n.group.as_str()).collect();
        eprintln!("{}: {} members, in groups {groups:?}", experiment.spec.name, groups.len());
        specs.push(spec);
    }
    let printed = match specs.as_slice() {
        [one] => serde_json::to_string_pretty(one)?,
        _ => serde_json::to_string_pretty(&specs)?,
    };
    println!("{printed}");
    Ok(())
}

/// The spec with `owner` set to the local node's PeerId when it names none.
async fn with_owner(client: &AdminClient, spec: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut spec: serde_json::Value =
        serde_json::from_slice(spec).context("the job spec is not JSON")?;
    let Some(fields) = spec.as_object_mut() else {
        anyhow::bail!("the job spec is not a JSON object");
    };
    if fields.contains_key("owner") {
        return Ok(serde_json::to_vec(&spec)?);
    }
    let status = client.status().await?;
    eprintln!("owner: this node, {}", status.peer_id);
    fields.insert("owner".to_owned(), serde_json::Value::String(status.peer_id));
    Ok(serde_json::to_vec(&spec)?)
}

/// Uploads an external model's initial weights and names their hash in the spec.
async fn with_initial_weights(
    client: &AdminClient,
    spec: &[u8],
    init: &Path,
) -> anyhow::Result<Vec<u8>> {
    let weights = std::fs::read(init).with_context(|| format!("cannot read {}", init.display()))?;
    safetensors::SafeTensors::deserialize(&weights)
        .with_context(|| format!("{} is not a safetensors file", init.display()))?;
    let mut spec: serde_json::Value =
        serde_json::from_slice(spec).context("the job spec is not JSON")?;
    let Some(external) = spec.pointer_mut("/model/external").and_then(|e| e.as_object_mut()) else {
        anyhow::bail!("--init is for an external model: the spec has no `model.external`");
    };
    let hash = client.put_blob(weights).await?.hash;
    external.insert("init".to_owned(), serde_json::json!({ "safetensors": hash }));
    Ok(serde_json::to_vec(&spec)?)
}

/// Signs a ticket admitting `peer` to the job and prints it (alone on stdout, for scripts).
async fn admit(data_dir: &Path, id: &str, peer: &str) -> anyhow::Result<()> {
    let ticket = AdminClient::for_data_dir(data_dir)?.admit(id, peer).await?.ticket;
    println!("{ticket}");
    eprintln!(
        "admitted {peer}: give its operator this ticket for `fedmesh job join {id} --ticket`"
    );
    Ok(())
}

/// Polls the job until it ends, with a progress bar over its rounds (an asynchronous job's
/// model versions).
async fn watch(data_dir: &Path, id: &str) -> anyhow::Result<()> {
    let client = AdminClient::for_data_dir(data_dir)?;
    let mut job = client.job(id).await?;
    let template = format!("{{spinner}} {} {{pos}}/{{len}} [{{bar:30}}] {{msg}}", unit(&job));
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(&template)
            .context("progress bar template")?
            .progress_chars("=> "),
    );
    loop {
        let Some(run) = &job.run else {
            bar.abandon();
            anyhow::bail!("this node does not take part in job {} (join it first)", job.id);
        };
        bar.set_length(run.rounds_total);
        bar.set_position(run.completed_round);
        bar.set_message(latest_figures(run, unit(&job)));
        if !matches!(run.status.as_str(), "waiting" | "running") {
            bar.finish_with_message(format!(
                "{} ({})",
                latest_figures(run, unit(&job)),
                run.status
            ));
            return if run.status == "completed" {
                Ok(())
            } else {
                Err(anyhow::anyhow!("job {} ended as {}", job.id, run.status))
            };
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        job = client.job(id).await?;
    }
}

/// What a job's rounds are called: an asynchronous job's are model versions.
fn unit(job: &JobView) -> &'static str {
    if job.spec.async_options().is_some() { "version" } else { "round" }
}

fn latest_figures(run: &RunView, unit: &str) -> String {
    let latest = run.rounds.iter().rev().find(|r| r.accuracy.is_some());
    match latest {
        Some(round) => format!(
            "{} members, {unit} {} accuracy {:.4} loss {:.4}",
            run.members.len(),
            round.round,
            round.accuracy.unwrap_or_default(),
            round.loss.unwrap_or_default()
        ),
        None => format!("{} members, {}", run.members.len(), run.status),
    }
}

fn print_job_table(jobs: &[JobView]) {
    if jobs.is_empty() {
        println!("no jobs known yet");
        return;
    }
    println!("{:<16}  {:<24}  {:<12}  {:<14}  OWNER", "ID", "NAME", "STATUS", "DATASET");
    for job in jobs {
        println!(
            "{:<16}  {:<24}  {:<12}  {:<14}  {}",
            &job.id[..16.min(job.id.len())],
            job.name,
            job.status,
            job.dataset,
            job.owner
        );
    }
}
