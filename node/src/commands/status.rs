//! `fedmesh status`: the local node at a glance (peers, jobs, rounds in progress, recent warnings
//! and errors) through its admin API.

use crate::cli::ApiArgs;
use anyhow::Context;
use fedmesh_admin_api::{AdminClient, JobView, StatusView};

/// How many of the node's latest warnings and errors are shown.
const SHOWN_ERRORS: usize = 10;

pub fn run(api: &ApiArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let client = AdminClient::for_data_dir(&api.data_dir)?;
        let status = client.status().await?;
        let jobs = client.jobs().await?;
        print!("{}", render(&status, &jobs));
        Ok(())
    })
}

/// The status as text.
fn render(status: &StatusView, jobs: &[JobView]) -> String {
    let mut lines = vec![format!("node {} (fedmesh {})", status.peer_id, status.version)];
    lines.push(format!("listening on {}", status.listen_addresses.join(", ")));
    if let Some(metrics) = &status.metrics_address {
        lines.push(format!("metrics at http://{metrics}/metrics"));
    }
    lines.push(format!("peers: {}", status.connected_peers.len()));
    lines.extend(status.connected_peers.iter().map(|peer| format!("  {peer}")));
    lines.push(format!("jobs: {}", jobs.len()));
    lines.extend(jobs.iter().map(job_line));
    let errors = &status.recent_errors;
    lines.push(format!("recent warnings and errors: {}", errors.len()));
    lines.extend(
        errors
            .iter()
            .skip(errors.len().saturating_sub(SHOWN_ERRORS))
            .map(|line| format!("  {} {} {}", format_age(line.at_ms), line.level, line.message)),
    );
    lines.join("\n") + "\n"
}

/// A job's line: its status and, for a job this node takes part in, the round in progress.
fn job_line(job: &JobView) -> String {
    let short = &job.id[..16.min(job.id.len())];
    let Some(run) = &job.run else {
        let why = job.join_error.as_deref().map_or_else(String::new, |e| format!(" ({e})"));
        return format!("  {short}  {}  {}, not taking part{why}", job.name, job.status);
    };
    let latest = run.rounds.iter().rev().find(|round| round.accuracy.is_some());
    let figures = latest.map_or_else(String::new, |round| {
        format!(
            ", round {} accuracy {:.4} loss {:.4}",
            round.round,
            round.accuracy.unwrap_or_default(),
            round.loss.unwrap_or_default()
        )
    });
    let in_progress = if run.status == "running" {
        format!(", round {} of {} in progress", run.completed_round + 1, run.rounds_total)
    } else {
        String::new()
    };
    format!(
        "  {short}  {}  {}, {} members{in_progress}{figures}",
        job.name,
        run.status,
        run.members.len()
    )
}

/// How long ago a time (ms since the epoch) was: `12 s ago`.
fn format_age(at_ms: u64) -> String {
    let now = fedmesh_protocol::message::unix_millis();
    format!("{} s ago", now.saturating_sub(at_ms) / 1000)
}
