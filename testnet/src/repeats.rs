//! The spread of a job run over several seeds (`testnet --repeat N`): the mean and standard
//! deviation of its final accuracy, round time and time to target.

use crate::report::Report;
use serde::Serialize;

/// A mean and a (sample) standard deviation over the runs that gave the figure.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MeanStd {
    pub mean: f64,
    pub std: f64,
    /// How many runs gave the figure.
    pub runs: usize,
}

impl MeanStd {
    /// Over the values present; none when no run gave one.
    pub fn of(values: impl Iterator<Item = Option<f64>>) -> Option<Self> {
        let present: Vec<f64> = values.flatten().collect();
        let n = present.len();
        if n == 0 {
            return None;
        }
        let mean = present.iter().sum::<f64>() / n as f64;
        let squares: f64 = present.iter().map(|v| (v - mean).powi(2)).sum();
        let std = if n > 1 { (squares / (n - 1) as f64).sqrt() } else { 0.0 };
        Some(Self { mean, std, runs: n })
    }

    fn text(figure: Option<Self>, digits: usize) -> String {
        figure.map_or_else(
            || "-".to_owned(),
            |f| format!("{:.digits$} ± {:.digits$} ({} runs)", f.mean, f.std, f.runs),
        )
    }
}

/// One job's figures over its seeds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Spread {
    /// The job's name without its seed.
    pub name: String,
    pub seeds: Vec<u64>,
    pub passed: usize,
    pub final_accuracy: Option<MeanStd>,
    pub mean_round_seconds: Option<MeanStd>,
    pub time_to_target: Option<MeanStd>,
}

impl Spread {
    /// `NAME over 3 seeds: final accuracy 0.8912 ± 0.0040, …`.
    pub fn line(&self) -> String {
        format!(
            "{} over {} seeds ({} passed): final accuracy {}, mean round {} s, time to target {} s",
            self.name,
            self.seeds.len(),
            self.passed,
            MeanStd::text(self.final_accuracy, 4),
            MeanStd::text(self.mean_round_seconds, 3),
            MeanStd::text(self.time_to_target, 2),
        )
    }
}

/// The spreads of `reports`, run `times` times each in a row (`--repeat`); none for one run.
pub fn spreads(reports: &[Report], times: usize) -> Vec<Spread> {
    if times < 2 {
        return Vec::new();
    }
    reports.chunks(times).map(spread).collect()
}

fn spread(runs: &[Report]) -> Spread {
    let name = runs.first().map_or("", |r| r.name.as_str());
    let name = name.rsplit_once("-seed").map_or(name, |(base, _)| base).to_owned();
    let seeds = runs.iter().filter_map(|r| r.job_spec["seed"].as_u64()).collect();
    Spread {
        name,
        seeds,
        passed: runs.iter().filter(|r| r.passed).count(),
        final_accuracy: MeanStd::of(runs.iter().map(|r| r.final_accuracy)),
        mean_round_seconds: MeanStd::of(runs.iter().map(|r| r.mean_round_seconds)),
        time_to_target: MeanStd::of(runs.iter().map(|r| r.time_to_target)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_sample_std_over_the_runs_that_gave_a_figure() {
        let figure = MeanStd::of([Some(0.8), None, Some(0.9), Some(1.0)].into_iter()).unwrap();
        assert!((figure.mean - 0.9).abs() < 1e-12);
        assert!((figure.std - 0.1).abs() < 1e-12);
        assert_eq!(figure.runs, 3);
        assert_eq!(MeanStd::of([None, None].into_iter()), None);
        let one = MeanStd::of([Some(2.0)].into_iter()).unwrap();
        assert_eq!((one.mean, one.std), (2.0, 0.0));
        assert_eq!(MeanStd::text(Some(one), 2), "2.00 ± 0.00 (1 runs)");
    }
}
