//! Helpers of the testnet's end-to-end tests: the `fedmesh` binary of this build, and running a
//! scenario written inline as a scenario file.
#![allow(dead_code)] // each test crate uses its own subset

use fedmesh_testnet::report::Report;
use fedmesh_testnet::scenario_file::ScenarioFile;
use std::path::PathBuf;

/// The `fedmesh` binary of this build (`cargo test --workspace` builds it before any test runs).
pub fn fedmesh_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/debug/deps/TEST-HASH -> target/debug/fedmesh
    let binary = exe.parent().and_then(|deps| deps.parent()).unwrap().join("fedmesh");
    assert!(
        binary.is_file(),
        "no fedmesh binary at {}: run `cargo build -p fedmesh-node` (or `cargo test --workspace`)",
        binary.display()
    );
    binary
}

/// The target accuracy of every small scenario: softmax on mnist5k over 3-5 IID shares measures
/// about 0.85 after one round and 0.87-0.88 after four; a run that lost its way ends far below.
pub const FLOOR: f64 = 0.8;

/// A finished scenario run: its report and the lines it printed.
pub struct Run {
    pub report: Report,
    pub lines: Vec<String>,
}

impl Run {
    /// Asserts that every check passed, showing the run if not.
    pub fn assert_passed(&self) {
        assert!(self.report.passed, "{:#?}\n{:#?}", self.report.checks, self.lines);
    }

    /// Updates per round.
    pub fn participants(&self) -> Vec<usize> {
        self.report.rounds.iter().map(|r| r.participants).collect()
    }

    pub fn final_accuracy(&self) -> f64 {
        self.report.final_accuracy.unwrap_or(0.0)
    }
}

/// Runs the scenario file `text` on real `fedmesh` processes, as a small job: softmax on
/// mnist5k, 3 s deadlines, the target accuracy [`FLOOR`].
pub fn run_scenario(name: &str, text: &str) -> Run {
    let small = format!("model = \"softmax\"\nround_deadline_secs = 3\ntarget = {FLOOR}\n{text}");
    run_scenario_file(name, &small)
}

/// Runs the scenario file `text` on real `fedmesh` processes, with its settings as written.
pub fn run_scenario_file(name: &str, text: &str) -> Run {
    let file = ScenarioFile::parse(text, name).unwrap();
    let out = tempfile::tempdir().unwrap();
    let scenario = file.into_scenario(fedmesh_binary(), out.path().to_owned());
    let partitions = scenario.write_partitions().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut lines = Vec::new();
    let rounds = scenario.rounds;
    let report = runtime
        .block_on(scenario.run(partitions, |progress| lines.push(progress.line(rounds))))
        .unwrap();
    if !report.passed {
        eprintln!("{name}: the node folders and logs are kept in {}", out.keep().display());
    }
    Run { report, lines }
}
