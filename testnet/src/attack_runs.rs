//! The `fedmesh-hostile` processes a scenario's `attack` events start: each one's command line
//! (the job, the running nodes' addresses, the victim), its log, and stopping whatever still
//! runs once the job ended.

use crate::events::Event;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The default longest an attack goes on, in seconds.
const DEFAULT_DURATION_SECS: u64 = 20;

/// One hostile process and its log.
pub struct HostileRun {
    pub name: String,
    pub log: PathBuf,
    child: Child,
}

/// The hostile binary, where its logs go, and the processes started so far.
pub struct Attacks {
    binary: PathBuf,
    dir: PathBuf,
    pub runs: Vec<HostileRun>,
}

impl Attacks {
    pub fn new(binary: PathBuf, dir: PathBuf) -> Self {
        Self { binary, dir, runs: Vec::new() }
    }

    /// Starts the hostile peer for `event` against the nodes at `peers` (addresses ending in
    /// `/p2p/PEERID`) in `job`, with `victim`'s PeerId if the event names one; what started.
    pub fn launch(
        &mut self,
        event: &Event,
        job: &str,
        peers: &[String],
        victim: Option<&str>,
    ) -> Result<String, String> {
        let attack = event.attack.ok_or("names no attack")?;
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| format!("cannot create {}: {e}", self.dir.display()))?;
        let name = format!("hostile{}-{}", self.runs.len(), attack.name());
        let log = self.dir.join(format!("{name}.log"));
        let mut command = Command::new(&self.binary);
        command
            .args(["--attack", attack.name(), "--as", event.posing.unwrap_or_default().name()])
            .args(["--job", job])
            .arg("--duration-secs")
            .arg(event.duration_secs.unwrap_or(DEFAULT_DURATION_SECS).to_string());
        for peer in peers {
            command.args(["--peer", peer]);
        }
        if let Some(count) = event.count {
            command.arg("--count").arg(count.to_string());
        }
        if let Some(victim) = victim {
            command.args(["--victim", victim]);
        }
        let child = spawn_logged(command, &log)?;
        let started = format!(
            "started {} against {} nodes (pid {}); its log is {}",
            self.binary.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
            peers.len(),
            child.id(),
            log.display()
        );
        self.runs.push(HostileRun { name, log, child });
        Ok(started)
    }

    /// Stops every hostile process still running (SIGKILL: the job it attacked has ended).
    pub fn stop_all(&mut self) {
        for run in &mut self.runs {
            if let Ok(None) = run.child.try_wait() {
                let _ = run.child.kill();
            }
            let _ = run.child.wait();
        }
    }

    /// What each hostile run printed (its log, the lines of its own).
    pub fn logs(&self) -> Vec<crate::report::AttackLog> {
        let own = |line: &&str| !line.trim().is_empty() && !line.contains(" WARN ");
        self.runs
            .iter()
            .map(|run| {
                let text = std::fs::read_to_string(&run.log).unwrap_or_default();
                let lines = text.lines().filter(own).map(str::to_owned).collect();
                crate::report::AttackLog { name: run.name.clone(), lines }
            })
            .collect()
    }

    /// Each hostile run's name with the last line it logged, for a failed check.
    pub fn summaries(&self) -> Vec<String> {
        self.runs
            .iter()
            .map(|run| format!("{} ({}): {}", run.name, run.log.display(), last_line(&run.log)))
            .collect()
    }
}

impl Drop for Attacks {
    fn drop(&mut self) {
        self.stop_all();
    }
}

fn spawn_logged(mut command: Command, log: &Path) -> Result<Child, String> {
    let file =
        std::fs::File::create(log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
    let errors = file.try_clone().map_err(|e| format!("cannot log to {}: {e}", log.display()))?;
    command
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(errors)
        .spawn()
        .map_err(|e| format!("cannot run {:?}: {e}", command.get_program()))
}

/// The last non-empty line of a log (or why there is none).
fn last_line(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines().rev().find(|line| !line.trim().is_empty()).unwrap_or("(empty log)").to_owned()
}
