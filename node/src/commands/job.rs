//! `fedmesh job ...`: announce, list and show jobs through the local node's admin API.

use crate::admin::AdminClient;
use crate::cli::JobCommand;
use crate::engine::JobView;
use anyhow::Context;

pub fn run(command: JobCommand) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        match command {
            JobCommand::Announce { spec, api } => {
                let bytes = std::fs::read(&spec)
                    .with_context(|| format!("cannot read job spec {}", spec.display()))?;
                let client = AdminClient::for_data_dir(&api.data_dir)?;
                let answer: serde_json::Value = client.post("/v1/jobs", bytes).await?;
                let id = answer.get("id").and_then(|id| id.as_str()).unwrap_or_default();
                println!("{id}");
                eprintln!("announced job {id} from {}", spec.display());
                Ok(())
            }
            JobCommand::List { api } => {
                let client = AdminClient::for_data_dir(&api.data_dir)?;
                let jobs: Vec<JobView> = client.get("/v1/jobs").await?;
                print_job_table(&jobs);
                Ok(())
            }
            JobCommand::Show { id, api } => {
                let client = AdminClient::for_data_dir(&api.data_dir)?;
                let job: serde_json::Value = client.get(&format!("/v1/jobs/{id}")).await?;
                println!("{}", serde_json::to_string_pretty(&job)?);
                Ok(())
            }
        }
    })
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
