//! `fedmesh job submit`, `status` and `stop`: orchestrated jobs through a coordinator's admin
//! API (submitting, and a readable status of the job, its members and its rounds), and stopping
//! a job through the node that controls it.

use anyhow::Context;
use fedmesh_admin_api::{AdminClient, CoordinationView};
use std::path::Path;

/// Submits a spec to the coordinator whose data directory is `coordinator`; prints the job id.
pub async fn submit(spec: &Path, coordinator: &Path) -> anyhow::Result<()> {
    let bytes =
        std::fs::read(spec).with_context(|| format!("cannot read job spec {}", spec.display()))?;
    let id = AdminClient::for_data_dir(coordinator)?.submit(bytes).await?.id;
    println!("{id}");
    eprintln!(
        "submitted job {id} from {}; it runs orchestrated by this coordinator",
        spec.display()
    );
    Ok(())
}

/// Prints an orchestrated job's status as its coordinator sees it.
pub async fn status(id: &str, coordinator: &Path) -> anyhow::Result<()> {
    let view = AdminClient::for_data_dir(coordinator)?.coordinated_job(id).await?;
    print!("{}", report(&view));
    Ok(())
}

/// Stops a job through the node at `data_dir` (its coordinator, or its owner).
pub async fn stop(id: &str, reason: Option<&str>, data_dir: &Path) -> anyhow::Result<()> {
    let client = AdminClient::for_data_dir(data_dir)?;
    let stopped = client.stop(id, reason.map(str::to_owned)).await?;
    println!("stopped {}", stopped.id);
    Ok(())
}

/// The status as a person reads it: the job, then a line per member and per round.
fn report(view: &CoordinationView) -> String {
    let mut text = format!(
        "job {} ({}): {}, round {}/{}\n",
        view.id, view.name, view.state, view.completed_round, view.rounds_total
    );
    text += &format!("members ({}):\n", view.members.len());
    for member in &view.members {
        text += &format!(
            "  {}  group {:<10} {:<12} contributed {}/{} rounds selected\n",
            member.peer_id, member.group, member.state, member.contributed, member.selected
        );
    }
    text += "rounds:\n";
    for round in &view.rounds {
        let accuracy = round.accuracy.map_or("-".to_owned(), |a| format!("{a:.4}"));
        let seconds = round.seconds.map_or("open".to_owned(), |s| format!("{s:.2} s"));
        let leader = round.leaders.last().map_or("-", String::as_str);
        text += &format!(
            "  round {:>3}  {}/{} updates  accuracy {accuracy}  {seconds}  leader {leader}\n",
            round.round, round.contributions, round.trainers
        );
        for why in &round.reassigned {
            text += &format!("             assigned again: {why}\n");
        }
    }
    text
}
