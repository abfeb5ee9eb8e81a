//! What a run is checked for once its job has ended: it completed, every round is recorded once,
//! every member ends with the same model, every event fired, the final accuracy is where the
//! scenario expects it, and every refusal the scenario lists was counted by some node (or by
//! every node). A long job followed for some of its rounds only must still run on every member.

use crate::cluster::{Cluster, ask_each};
use crate::firing::EventRunner;
use crate::follow::STILL_RUNNING;
use crate::report::RoundFigures;
use crate::scenario::Scenario;
use crate::scenario_file::Expect;
use fedmesh_admin_api::RunView;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// One check and its result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    /// What was found.
    pub detail: String,
}

impl Check {
    fn new(name: &str, result: Result<String, String>) -> Self {
        let passed = result.is_ok();
        let detail = result.unwrap_or_else(|problem| problem);
        Self { name: name.to_owned(), passed, detail }
    }

    /// The line printed for it.
    pub fn line(&self) -> String {
        let mark = if self.passed { "ok  " } else { "FAIL" };
        format!("check  {mark} {}: {}", self.name, self.detail)
    }
}

/// A member's run view (none if it has none or did not answer) by its name.
type MemberRun = (String, Option<RunView>);

/// Every check of a run whose follower ended with `status`, having reported `rounds`.
pub async fn check_run(
    scenario: &Scenario,
    cluster: &Cluster,
    job: &str,
    events: &EventRunner,
    status: &str,
    rounds: &[RoundFigures],
) -> Vec<Check> {
    let completed = status == "completed";
    let still_running = status == STILL_RUNNING;
    // A scenario that expects the job to miss its target (plain FedAvg under poisoned updates)
    // also sees that outcome when the model diverges and the members end the job for it.
    let diverged = scenario.expect == Expect::BelowTarget && status.contains("diverged");
    let outcome = match (completed || still_running, diverged) {
        (true, _) => Ok(format!("{} rounds", rounds.len())),
        (false, true) => Ok(format!("ended after {} rounds as expected: {status}", rounds.len())),
        (false, false) => Err(status.to_owned()),
    };
    let mut checks =
        vec![Check::new(if still_running { "followed" } else { "completed" }, outcome)];
    let members = events.members(cluster);
    if completed {
        let limit = Duration::from_secs(scenario.round_deadline_secs + 30);
        let runs = member_runs(cluster, &members, job, limit).await;
        checks.push(Check::new("every round once", rounds_once(scenario, &runs)));
        checks.push(Check::new("same final model", same_model(&runs)));
    }
    if still_running {
        let runs = member_runs(cluster, &members, job, Duration::ZERO).await;
        checks.push(Check::new("still running", running(&runs, rounds.len())));
    }
    checks.push(Check::new("events", fired(events)));
    if !scenario.refused.is_empty() {
        let found = refusals(&scenario.refused, scenario.refused_everywhere, cluster, events).await;
        checks.push(Check::new("refused", found));
    }
    if scenario.no_stall {
        let limit = scenario.round_deadline_secs as f64;
        checks.push(Check::new("no stall", no_stall(rounds, limit)));
    }
    if let Some(target) = scenario.target {
        let last = rounds.last().and_then(|r| r.accuracy);
        checks.push(Check::new("accuracy", accuracy(target, scenario.expect, last)));
    }
    checks
}

/// Every round closed before `deadline_secs`: the slowest, and the first that did not.
fn no_stall(rounds: &[RoundFigures], deadline_secs: f64) -> Result<String, String> {
    let timed = rounds.iter().filter_map(|r| r.seconds.map(|s| (r.round, s)));
    let slowest = timed.clone().fold((0, 0.0), |a, b| if b.1 > a.1 { b } else { a });
    match timed.clone().find(|(_, seconds)| *seconds >= deadline_secs) {
        Some((round, seconds)) => {
            Err(format!("round {round} took {seconds:.2} s, its deadline {deadline_secs} s"))
        }
        None => Ok(format!("slowest round {} took {:.2} s", slowest.0, slowest.1)),
    }
}

/// The members' run views, once all of them report the job completed or `limit` passed.
async fn member_runs(
    cluster: &Cluster,
    members: &[usize],
    job: &str,
    limit: Duration,
) -> Vec<MemberRun> {
    let deadline = Instant::now() + limit;
    loop {
        let nodes = members.iter().map(|&i| &cluster.nodes[i]);
        let runs: Vec<MemberRun> = ask_each(nodes, |node| async move {
            (node.name.clone(), node.api.job(job).await.ok().and_then(|view| view.run))
        })
        .await;
        if runs.iter().all(|(_, run)| status(run) == Some("completed")) || Instant::now() > deadline
        {
            return runs;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Each member records rounds in order without a repeat, each with a model and no more updates
/// than there are nodes; at least one (a member since the start) records every round.
fn rounds_once(scenario: &Scenario, runs: &[MemberRun]) -> Result<String, String> {
    let all: Vec<u64> = (1..=scenario.rounds).collect();
    let mut complete = Vec::new();
    let mut notes = Vec::new();
    for (name, run) in runs {
        let rounds = run.as_ref().map_or(&[][..], |run| &run.rounds);
        let numbers: Vec<u64> = rounds.iter().map(|r| r.round).collect();
        if numbers.windows(2).any(|pair| pair[0] >= pair[1]) {
            return Err(format!("{name} records rounds {numbers:?}"));
        }
        // A member that joined or resumed mid-round may keep that round open in its records
        // although it went on (a node bookkeeping gap, reported but not a lost round).
        if let Some(r) = rounds.iter().find(|r| r.model.is_none()) {
            notes.push(format!("{name} still shows round {} open without its model", r.round));
        }
        let most = rounds.iter().map(|r| r.participants).max().unwrap_or(0);
        // A hostile member (an `attack` event's) may have an update counted too.
        let senders = scenario.total_nodes + scenario.hostile_members();
        if most > senders {
            return Err(format!(
                "{name} counts {most} updates in a round of {} nodes and {} hostile members",
                scenario.total_nodes,
                scenario.hostile_members()
            ));
        }
        if numbers == all {
            complete.push(name.as_str());
        }
    }
    if complete.is_empty() {
        return Err(format!("no member records every round 1..={}", scenario.rounds));
    }
    let mut found = format!(
        "rounds 1..={} on {}; no round repeated on any member",
        scenario.rounds,
        complete.join(", ")
    );
    if !notes.is_empty() {
        found += &format!(" (note: {})", notes.join("; "));
    }
    Ok(found)
}

/// Every member completed the job with the same global model.
fn same_model(runs: &[MemberRun]) -> Result<String, String> {
    let unfinished: Vec<String> = runs
        .iter()
        .filter(|(_, run)| status(run) != Some("completed"))
        .map(|(name, run)| format!("{name} is {}", status(run).unwrap_or("not in the job")))
        .collect();
    if !unfinished.is_empty() {
        return Err(unfinished.join(", "));
    }
    let model = |run: &Option<RunView>| run.as_ref().map(|run| run.model.clone());
    let first = runs.first().map(|(_, run)| model(run));
    match runs.iter().find(|(_, run)| Some(model(run)) != first) {
        Some((name, _)) => Err(format!("{name} ends with another model than {}", runs[0].0)),
        None => Ok(format!("{} members completed with one model", runs.len())),
    }
}

/// Every member still runs the job it was followed in for `followed` rounds: none completed,
/// failed or left it.
fn running(runs: &[MemberRun], followed: usize) -> Result<String, String> {
    let ended: Vec<String> = runs
        .iter()
        .filter(|(_, run)| !matches!(status(run), Some("running" | "waiting")))
        .map(|(name, run)| format!("{name} is {}", status(run).unwrap_or("not in the job")))
        .collect();
    if !ended.is_empty() {
        return Err(ended.join(", "));
    }
    let names: Vec<&str> = runs.iter().map(|(name, _)| name.as_str()).collect();
    Ok(format!("{} still run the job after {followed} rounds", names.join(", ")))
}

/// A member's run status, if it has a run.
fn status(run: &Option<RunView>) -> Option<&str> {
    run.as_ref().map(|run| run.status.as_str())
}

fn fired(events: &EventRunner) -> Result<String, String> {
    let problems = events.problems();
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    Ok(format!("{} fired", events.fired.len()))
}

fn accuracy(target: f64, expect: Expect, last: Option<f64>) -> Result<String, String> {
    let Some(last) = last else {
        return Err("no final accuracy".into());
    };
    match expect {
        Expect::ReachTarget if last >= target => {
            Ok(format!("{last:.4} reaches the target {target}"))
        }
        Expect::ReachTarget => Err(format!("{last:.4} is below the target {target}")),
        Expect::BelowTarget if last < target => {
            Ok(format!("{last:.4} stays below {target}, as this scenario expects"))
        }
        Expect::BelowTarget => {
            Err(format!("{last:.4} reaches {target}, which this scenario expects it not to"))
        }
    }
}

/// The metrics whose `reason` label names a refusal.
const REFUSAL_METRICS: [&str; 2] =
    ["fedmesh_messages_rejected_total{", "fedmesh_job_updates_refused_total{"];

/// How many refusals for `reason` a node's Prometheus text counts.
pub fn refusals_counted(metrics: &str, reason: &str) -> f64 {
    let label = format!("reason=\"{reason}\"");
    metrics
        .lines()
        .filter(|line| REFUSAL_METRICS.iter().any(|name| line.starts_with(name)))
        .filter(|line| line.contains(&label))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Every reason in `reasons` was counted by at least one running node (by every one, when
/// `everywhere`).
async fn refusals(
    reasons: &[String],
    everywhere: bool,
    cluster: &Cluster,
    events: &EventRunner,
) -> Result<String, String> {
    let texts = cluster
        .ask_running(|node| async move {
            (node.name.as_str(), node.api.metrics().await.unwrap_or_default())
        })
        .await;
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for wanted in reasons {
        // `a|b`: either reason will do (which rule refuses it may depend on an election).
        let alternatives: Vec<&str> = wanted.split('|').collect();
        let count_on = |text: &str| -> f64 {
            alternatives.iter().map(|reason| refusals_counted(text, reason)).sum()
        };
        let counted: Vec<(&str, f64)> = texts
            .iter()
            .map(|(name, text)| (*name, count_on(text)))
            .filter(|(_, count)| *count > 0.0)
            .collect();
        let total: f64 = counted.iter().map(|(_, count)| count).sum();
        let met = if everywhere { counted.len() == texts.len() } else { !counted.is_empty() };
        if met {
            found.push(format!("{wanted} {total} times on {} nodes", counted.len()));
        } else {
            let on: Vec<&str> = counted.iter().map(|(name, _)| *name).collect();
            missing.push(format!("{wanted} (counted on [{}])", on.join(", ")));
        }
    }
    if missing.is_empty() {
        return Ok(found.join(", "));
    }
    let hostile = events.attacks.as_ref().map(|a| a.summaries()).unwrap_or_default();
    let which = if everywhere { "every node" } else { "some node" };
    Err(format!(
        "not counted by {which}: {} (counted: {}; hostile runs: {})",
        missing.join(", "),
        if found.is_empty() { "none".into() } else { found.join(", ") },
        hostile.join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_summed_over_both_metrics_and_every_kind() {
        let text = "\
# TYPE fedmesh_messages_rejected_total counter
fedmesh_messages_rejected_total{kind=\"gossip\",reason=\"replayed\"} 3
fedmesh_messages_rejected_total{kind=\"join\",reason=\"replayed\"} 1
fedmesh_messages_rejected_total{kind=\"gossip\",reason=\"replayed_twice\"} 50
fedmesh_job_updates_refused_total{job=\"ab\",reason=\"replayed\"} 2
fedmesh_messages_in_total{kind=\"replayed\"} 9
";
        assert_eq!(refusals_counted(text, "replayed"), 6.0);
        assert_eq!(refusals_counted(text, "past_last_round"), 0.0);
    }
}
