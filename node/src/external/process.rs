//! Runs one trainer or evaluator process: the configured command with its environment, stdout and
//! stderr into files, in a process group of its own that is killed whole at the timeout (a shell
//! wrapper's children and a data loader's workers too); the tail of its stderr for the log and
//! the API.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How much of a failed trainer's stderr is kept.
const TAIL_LINES: usize = 20;
const TAIL_BYTES: usize = 4096;
/// How often a running trainer is checked on.
const POLL: Duration = Duration::from_millis(10);

/// Why a trainer run gave nothing usable.
#[derive(Debug, thiserror::Error)]
pub enum TrainerError {
    #[error(
        "no `trainer` command is configured on this node (node.toml: trainer = [\"python3\", \"train.py\"])"
    )]
    NotConfigured,
    #[error("cannot prepare the trainer's files in {path}: {source}")]
    Files { path: PathBuf, source: std::io::Error },
    #[error("cannot start the trainer `{command}`: {source}")]
    Spawn { command: String, source: std::io::Error },
    #[error("the trainer `{command}` {status}; its stderr ends with:\n{stderr}")]
    Exit { command: String, status: String, stderr: String },
    #[error(
        "the trainer `{command}` did not finish within {seconds} s and was killed; its stderr ends with:\n{stderr}"
    )]
    Timeout { command: String, seconds: u64, stderr: String },
    #[error(
        "the trainer `{command}` wrote unusable output: {problem}; its stderr ends with:\n{stderr}"
    )]
    Output { command: String, problem: String, stderr: String },
}

/// One run of a command: where its output goes and what it is told.
pub struct Run<'a> {
    pub command: &'a [String],
    pub env: Vec<(&'static str, String)>,
    /// Holds `stdout.log` and `stderr.log`.
    pub dir: &'a Path,
    pub timeout: Duration,
}

/// A finished run: the command as text and the tail of its stderr, for errors about its output.
pub struct Finished {
    pub command: String,
    pub stderr: String,
}

impl Finished {
    /// An error about what the finished command wrote.
    pub fn bad_output(&self, problem: impl std::fmt::Display) -> TrainerError {
        TrainerError::Output {
            command: self.command.clone(),
            problem: problem.to_string(),
            stderr: self.stderr.clone(),
        }
    }
}

impl Run<'_> {
    /// Runs the command to its end (or kills it at the timeout); only a zero exit succeeds.
    pub fn execute(self) -> Result<Finished, TrainerError> {
        let (program, args) = self.command.split_first().ok_or(TrainerError::NotConfigured)?;
        let command = self.command.join(" ");
        let stdout = self.log_file("stdout.log")?;
        let stderr_path = self.dir.join("stderr.log");
        let stderr = self.log_file("stderr.log")?;
        let mut child = Command::new(program)
            .args(args)
            .envs(self.env.iter().map(|(key, value)| (*key, value)))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .map_err(|source| TrainerError::Spawn { command: command.clone(), source })?;
        let status = wait_with_timeout(&mut child, self.timeout);
        let stderr = tail(&stderr_path);
        match status {
            Some(Ok(status)) if status.success() => Ok(Finished { command, stderr }),
            Some(Ok(status)) => {
                Err(TrainerError::Exit { command, status: describe(status), stderr })
            }
            Some(Err(error)) => Err(TrainerError::Exit {
                command,
                status: format!("could not be waited for ({error})"),
                stderr,
            }),
            None => Err(TrainerError::Timeout { command, seconds: self.timeout.as_secs(), stderr }),
        }
    }

    fn log_file(&self, name: &str) -> Result<std::fs::File, TrainerError> {
        let path = self.dir.join(name);
        crate::owner_only::create_file(&path).map_err(|source| TrainerError::Files { path, source })
    }
}

/// Waits for `child`; `None` when the timeout passed first (its process group is then killed and
/// the child reaped).
fn wait_with_timeout(
    child: &mut std::process::Child,
    timeout: Duration,
) -> Option<std::io::Result<ExitStatus>> {
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(Ok(status)),
            Ok(None) if started.elapsed() >= timeout => {
                kill_group(child);
                let _ = child.wait();
                return None;
            }
            Ok(None) => std::thread::sleep(POLL),
            Err(error) => return Some(Err(error)),
        }
    }
}

/// Kills the process group `child` leads (the child itself if the group cannot be signalled).
fn kill_group(child: &mut std::process::Child) {
    use nix::sys::signal::{Signal, killpg};
    let group = i32::try_from(child.id()).map(nix::unistd::Pid::from_raw);
    let signalled = group.is_ok_and(|group| killpg(group, Signal::SIGKILL).is_ok());
    if !signalled {
        let _ = child.kill();
    }
}

/// "exited with code 3" or "was killed by signal 9".
fn describe(status: ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return format!("was killed by signal {signal}");
        }
    }
    match status.code() {
        Some(code) => format!("exited with code {code}"),
        None => format!("ended with {status}"),
    }
}

/// The last lines of a log file (at most `TAIL_LINES` lines and about `TAIL_BYTES` bytes).
fn tail(path: &Path) -> String {
    let Ok(bytes) = std::fs::read(path) else { return String::new() };
    let start = bytes.len().saturating_sub(TAIL_BYTES);
    let text = String::from_utf8_lossy(&bytes[start..]);
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(script: &str, timeout: Duration) -> Result<Finished, TrainerError> {
        let dir = tempfile::tempdir().unwrap();
        let command = ["sh".to_owned(), "-c".to_owned(), script.to_owned()];
        Run { command: &command, env: vec![("FEDMESH_X", "42".into())], dir: dir.path(), timeout }
            .execute()
    }

    #[test]
    fn a_zero_exit_succeeds_and_sees_its_environment() {
        let finished = run("echo got $FEDMESH_X >&2", Duration::from_secs(10)).unwrap();
        assert_eq!(finished.stderr, "got 42");
    }

    #[test]
    fn a_failure_keeps_the_stderr_tail() {
        let script = "for i in $(seq 1 50); do echo line $i >&2; done; exit 3";
        let error = run(script, Duration::from_secs(10)).err().unwrap().to_string();
        assert!(error.contains("exited with code 3"), "{error}");
        assert!(error.contains("line 50") && !error.contains("line 30\n"), "{error}");
    }

    #[test]
    fn a_slow_trainer_is_killed_at_the_timeout() {
        let started = Instant::now();
        let error = run("echo started >&2; sleep 30", Duration::from_millis(300)).err().unwrap();
        assert!(matches!(error, TrainerError::Timeout { .. }), "{error}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(error.to_string().contains("started"), "{error}");
    }

    /// Whether process `pid` is gone (or a zombie about to be reaped).
    fn gone(pid: &str) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => {
                stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z'))
            }
        }
    }

    #[test]
    fn a_timeout_kills_the_wrappers_children_too() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("child.pid");
        let script = format!("sleep 60 & echo $! > {}; wait", pid_file.display());
        let error = run(&script, Duration::from_millis(500)).err().unwrap();
        assert!(matches!(error, TrainerError::Timeout { .. }), "{error}");
        let pid = std::fs::read_to_string(&pid_file).unwrap().trim().to_owned();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !gone(&pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(gone(&pid), "the wrapper's child {pid} outlived the timeout");
    }

    #[test]
    fn a_missing_program_is_a_spawn_error() {
        let dir = tempfile::tempdir().unwrap();
        let command = ["/nonexistent/trainer".to_owned()];
        let run = Run {
            command: &command,
            env: vec![],
            dir: dir.path(),
            timeout: Duration::from_secs(1),
        };
        assert!(matches!(run.execute(), Err(TrainerError::Spawn { .. })));
    }
}
