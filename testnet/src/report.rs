//! A testnet run's report: `report.json` with every round's figures, and `report.png`, accuracy
//! and loss per round.

use crate::checks::Check;
use crate::cluster::NodeUsage;
use crate::events::FiredEvent;
use crate::scenario::Scenario;
use crate::scenario_file::Expect;
use anyhow::Context;
use fedmesh_admin_api::PrivacyView;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The font the plot's text is drawn with (DejaVu Sans, see assets/DejaVuSans-LICENSE.txt).
const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// One node's share of the data.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartitionSummary {
    pub node: usize,
    pub path: PathBuf,
    pub samples: usize,
    /// Samples per label.
    pub labels: Vec<usize>,
}

/// One round, as the job owner's node recorded it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoundFigures {
    pub round: u64,
    /// The node that aggregated it.
    #[serde(default)]
    pub aggregator: Option<String>,
    /// Updates included in the round's model.
    pub participants: usize,
    /// Members whose evaluation is in the figures.
    pub evaluations: usize,
    /// Test-size-weighted over the members' test splits.
    pub accuracy: Option<f64>,
    pub loss: Option<f64>,
    /// From the round's first opening to its model's announcement.
    pub seconds: Option<f64>,
    /// When it was opened and its model announced (Unix ms).
    #[serde(default)]
    pub opened_at_ms: Option<u64>,
    #[serde(default)]
    pub closed_at_ms: Option<u64>,
    /// Mean local training time of the nodes that trained.
    pub train_seconds: Option<f64>,
    /// The nodes that trained for it (an asynchronous job's: whose training began in it).
    #[serde(default)]
    pub trainers: Vec<String>,
}

impl RoundFigures {
    /// The progress line printed as the round finishes.
    pub fn line(&self, rounds_total: u64) -> String {
        let number = |value: Option<f64>, digits: usize| {
            value.map_or_else(|| "-".to_owned(), |v| format!("{v:.digits$}"))
        };
        format!(
            "round {:>3}/{rounds_total}  participants {}  accuracy {}  loss {}  {} s  (local training {} s)  aggregator {}",
            self.round,
            self.participants,
            number(self.accuracy, 4),
            number(self.loss, 4),
            number(self.seconds, 2),
            number(self.train_seconds, 2),
            self.aggregator.as_deref().unwrap_or("-"),
        )
    }
}

/// How a run went, as the report tells it.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// `completed`, or why not.
    pub status: String,
    pub rounds: Vec<RoundFigures>,
    pub events: Vec<FiredEvent>,
    pub checks: Vec<Check>,
    /// What each node used, read just before the nodes were stopped.
    pub usage: Vec<NodeUsage>,
    pub elapsed: Duration,
    /// What each hostile peer an `attack` event started printed.
    pub attacks: Vec<AttackLog>,
    /// The differential privacy the job spent, as the followed node reported it at the end.
    pub privacy: Option<PrivacyView>,
}

/// What one hostile peer printed: what it sent and how the nodes answered.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttackLog {
    pub name: String,
    pub lines: Vec<String>,
}

/// What `report.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// The scenario's name.
    pub name: String,
    /// Whether every check passed.
    pub passed: bool,
    /// `completed`, or why not.
    pub status: String,
    pub nodes: usize,
    pub dataset: String,
    pub model: String,
    pub partition: String,
    pub final_accuracy: Option<f64>,
    pub final_loss: Option<f64>,
    pub mean_round_seconds: Option<f64>,
    pub mean_train_seconds: Option<f64>,
    pub total_seconds: f64,
    pub target: Option<f64>,
    /// The job's time to the target accuracy: from the first round's opening to the
    /// announcement of the first model that met it, wall time (none: never met, or no target).
    #[serde(default)]
    pub time_to_target: Option<f64>,
    pub expect: Expect,
    pub checks: Vec<Check>,
    /// Each scenario event as it fired.
    pub events: Vec<FiredEvent>,
    pub rounds: Vec<RoundFigures>,
    pub partitions: Vec<PartitionSummary>,
    pub job_spec: serde_json::Value,
    /// What `rounds` counts: `round`, or `version` (an asynchronous job's model versions).
    #[serde(default = "round_unit")]
    pub unit: String,
    /// The largest and the mean peak resident memory of a node, in MB.
    #[serde(default)]
    pub peak_rss_mb_max: Option<f64>,
    #[serde(default)]
    pub peak_rss_mb_mean: Option<f64>,
    /// What each node used (peak memory, bytes sent).
    #[serde(default)]
    pub usage: Vec<NodeUsage>,
    /// What each hostile peer printed (scenarios with `attack` events).
    #[serde(default)]
    pub attacks: Vec<AttackLog>,
    /// The differential privacy the job spent (ε at δ), when its spec adds noise.
    #[serde(default)]
    pub privacy: Option<PrivacyView>,
}

fn round_unit() -> String {
    "round".to_owned()
}

/// What a job's rounds are called: an asynchronous job's are model versions.
pub fn unit_of(job_spec: &serde_json::Value) -> &'static str {
    if job_spec["mode"] == "async" { "version" } else { "round" }
}

fn mean(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let present: Vec<f64> = values.flatten().collect();
    (!present.is_empty()).then(|| present.iter().sum::<f64>() / present.len() as f64)
}

/// The wall time from the first round's opening to the close of the first round whose accuracy
/// reached `target` (from a node that shows no times: the round times added up).
fn time_to(rounds: &[RoundFigures], target: f64) -> Option<f64> {
    let reached = rounds.iter().position(|r| r.accuracy.is_some_and(|a| a >= target))?;
    let (first, last) = (rounds.first()?, &rounds[reached]);
    match (first.opened_at_ms, last.closed_at_ms) {
        (Some(opened), Some(closed)) => Some(closed.saturating_sub(opened) as f64 / 1e3),
        _ => Some(rounds[..=reached].iter().filter_map(|r| r.seconds).sum()),
    }
}

impl Report {
    pub fn new(
        scenario: &Scenario,
        job_spec: serde_json::Value,
        partitions: Vec<PartitionSummary>,
        outcome: RunOutcome,
    ) -> Self {
        let RunOutcome { status, rounds, events, checks, usage, elapsed, attacks, privacy } =
            outcome;
        let peaks = || usage.iter().filter_map(|u| u.peak_rss_mb);
        let last = rounds.last();
        Self {
            name: scenario.name.clone(),
            passed: checks.iter().all(|c| c.passed),
            status,
            nodes: scenario.total_nodes,
            dataset: scenario.dataset.clone(),
            model: scenario.model.clone(),
            partition: scenario.partition.clone(),
            final_accuracy: last.and_then(|r| r.accuracy),
            final_loss: last.and_then(|r| r.loss),
            mean_round_seconds: mean(rounds.iter().map(|r| r.seconds)),
            mean_train_seconds: mean(rounds.iter().map(|r| r.train_seconds)),
            total_seconds: elapsed.as_secs_f64(),
            target: scenario.target,
            time_to_target: scenario.target.and_then(|target| time_to(&rounds, target)),
            expect: scenario.expect,
            checks,
            events,
            rounds,
            partitions,
            unit: unit_of(&job_spec).to_owned(),
            job_spec,
            attacks,
            privacy,
            peak_rss_mb_max: peaks().reduce(f64::max),
            peak_rss_mb_mean: mean(peaks().map(Some)),
            usage,
        }
    }

    pub fn completed(&self) -> bool {
        self.status == "completed"
    }

    /// The checks that failed, one line each.
    pub fn failures(&self) -> Vec<String> {
        self.checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| format!("{}: {}", c.name, c.detail))
            .collect()
    }

    /// Writes `report.json` into `dir`.
    pub fn write_json(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        let path = dir.join("report.json");
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(&path, text + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path)
    }

    /// Draws accuracy (left) and loss (right) per round into `report.png` in `dir`.
    pub fn write_plot(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        let path = dir.join("report.png");
        self.draw(&path)?;
        Ok(path)
    }

    fn draw(&self, path: &Path) -> anyhow::Result<()> {
        // Registering twice (a second report in one process) is harmless.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
        let root = BitMapBackend::new(path, (1200, 500)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let title = format!(
            "fedmesh testnet {}: {} nodes, {} ({} partition), {}",
            self.name, self.nodes, self.dataset, self.partition, self.model
        );
        let titled = root.titled(&title, ("sans-serif", 22)).map_err(plot_error)?;
        let (left, right) = titled.split_horizontally(600);
        let accuracy: Vec<(f64, f64)> =
            self.rounds.iter().filter_map(|r| Some((r.round as f64, r.accuracy?))).collect();
        let loss: Vec<(f64, f64)> =
            self.rounds.iter().filter_map(|r| Some((r.round as f64, r.loss?))).collect();
        let top = loss.iter().map(|(_, l)| *l).fold(0.0, f64::max) * 1.1;
        let unit = self.unit.as_str();
        draw_series(&left, unit, "test accuracy", &accuracy, 0.0..1.0, &BLUE)?;
        draw_series(&right, unit, "test loss", &loss, 0.0..top.max(0.1), &RED)?;
        root.present().map_err(plot_error)
    }
}

fn plot_error(error: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("cannot draw the plot: {error}")
}

/// One panel: `points` (round, value) as a line with markers.
fn draw_series(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    unit: &str,
    what: &str,
    points: &[(f64, f64)],
    y_range: std::ops::Range<f64>,
    color: &RGBColor,
) -> anyhow::Result<()> {
    let rounds = points.last().map_or(1.0, |(round, _)| *round).max(1.0);
    let mut chart = ChartBuilder::on(area)
        .caption(what, ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..rounds + 0.5, y_range)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc(unit)
        .y_desc(what)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(plot_error)?;
    chart.draw_series(LineSeries::new(points.iter().copied(), color)).map_err(plot_error)?;
    chart
        .draw_series(points.iter().map(|&(x, y)| Circle::new((x, y), 3, color.filled())))
        .map_err(plot_error)?;
    Ok(())
}
