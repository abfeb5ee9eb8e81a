//! `testnet --bench`: the communication benchmark. Each case runs a real job on real nodes (real
//! libp2p over loopback, signed deltas of P f32 parameters, FedAvg) whose model is `bench:P`, so
//! "training" is a cheap deterministic delta and a round costs what moving, checking and folding
//! the parameters costs. Beside it, in the same run, the same number of bytes goes over one raw
//! loopback TCP connection, several times, and the report gives the ratio of the round's
//! throughput to the fastest of those.

use crate::report::Report;
use crate::scenario::Scenario;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bytes written to the raw TCP connection at a time.
const RAW_CHUNK: usize = 1 << 20;
/// How many times raw TCP is timed for a case. Loopback TCP on a small machine runs at one of two
/// paces from one connection to the next (seen here: 0.25 s or 0.6 s for the same 1.2 GB), so one
/// timing can flatter the round by more than twofold; the fastest of several is the machine's pace.
const RAW_TCP_RUNS: usize = 5;

/// One benchmark case: a model of `params` parameters on `nodes` nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BenchCase {
    pub params: u64,
    pub nodes: usize,
}

/// One case's figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchRow {
    pub params: u64,
    pub nodes: usize,
    pub rounds: usize,
    pub status: String,
    /// Mean time from a round's opening to its model's announcement.
    pub seconds_per_round: Option<f64>,
    /// Bytes every node sent, in all, per round (deltas, models, gossip).
    pub bytes_per_round: f64,
    /// The time one loopback TCP connection takes to carry `bytes_per_round`: the fastest of
    /// `RAW_TCP_RUNS` connections.
    pub raw_tcp_seconds: f64,
    /// The round's throughput over raw TCP's: `raw_tcp_seconds / seconds_per_round`.
    pub ratio_to_raw_tcp: Option<f64>,
    /// The largest peak resident memory of a node (every node aggregates some round), in MB.
    pub peak_rss_mb_max: Option<f64>,
    /// The model's size in MB.
    pub model_mb: f64,
}

impl BenchRow {
    /// A table line.
    pub fn line(&self) -> String {
        let figure = |v: Option<f64>, digits: usize| {
            v.map_or_else(|| "-".to_owned(), |v| format!("{v:.digits$}"))
        };
        format!(
            "{:>10} {:>5} {:>7} {:>10} {:>10} {:>8} {:>9} {:>9}  {}",
            self.params,
            self.nodes,
            self.rounds,
            figure(self.seconds_per_round, 2),
            format!("{:.1}", self.bytes_per_round / 1e6),
            format!("{:.3}", self.raw_tcp_seconds),
            figure(self.ratio_to_raw_tcp, 3),
            figure(self.peak_rss_mb_max, 0),
            self.status,
        )
    }

    /// The table's header.
    pub fn header() -> String {
        format!(
            "{:>10} {:>5} {:>7} {:>10} {:>10} {:>8} {:>9} {:>9}  status",
            "params", "nodes", "rounds", "s/round", "MB/round", "raw s", "ratio", "peak MB"
        )
    }
}

/// The scenario of one case: `base` (binary, rounds, output folder) with the bench model on a
/// small embedded data set (only its sample counts matter), every node in every round, and
/// only the last two rounds' weights kept on disk.
pub fn case_scenario(base: &Scenario, case: BenchCase) -> Scenario {
    let name = format!("bench-p{}-n{}", case.params, case.nodes);
    Scenario {
        name: name.clone(),
        nodes: case.nodes,
        total_nodes: case.nodes,
        model: format!("bench:{}", case.params),
        dataset: "digits".to_owned(),
        partition: "iid".to_owned(),
        min_participants: case.nodes,
        target: None,
        events: Vec::new(),
        trainer: Vec::new(),
        model_retention_rounds: Some(2),
        round_deadline_secs: base.round_deadline_secs.max(deadline_secs(case)),
        out: base.out.join(name),
        ..base.clone()
    }
}

/// A round deadline the case's traffic fits in on a loaded machine (a model and a delta per
/// node at 4 MB/s, and 30 s): a round reopened at its deadline makes every trainer send its
/// delta again, which a slow round can least afford.
fn deadline_secs(case: BenchCase) -> u64 {
    30 + case.params * 4 * 2 * case.nodes as u64 / 4_000_000
}

/// A case's row from its report, timing raw TCP for the same bytes now.
pub async fn row(case: BenchCase, report: &Report) -> std::io::Result<BenchRow> {
    let rounds = report.rounds.len();
    let sent: u64 = report.usage.iter().map(|u| u.bytes_sent).sum();
    let bytes_per_round = sent as f64 / rounds.max(1) as f64;
    let raw_tcp_seconds = fastest_raw_tcp_seconds(bytes_per_round as u64).await?;
    let seconds_per_round = report.mean_round_seconds;
    Ok(BenchRow {
        params: case.params,
        nodes: case.nodes,
        rounds,
        status: report.status.clone(),
        seconds_per_round,
        bytes_per_round,
        raw_tcp_seconds,
        ratio_to_raw_tcp: seconds_per_round.filter(|s| *s > 0.0).map(|s| raw_tcp_seconds / s),
        peak_rss_mb_max: report.peak_rss_mb_max,
        model_mb: case.params as f64 * 4.0 / 1e6,
    })
}

/// The fastest of `RAW_TCP_RUNS` timings of [`raw_tcp_seconds`].
async fn fastest_raw_tcp_seconds(bytes: u64) -> std::io::Result<f64> {
    let mut fastest = f64::INFINITY;
    for _ in 0..RAW_TCP_RUNS {
        fastest = fastest.min(raw_tcp_seconds(bytes).await?);
    }
    Ok(fastest)
}

/// The time to send `bytes` over one loopback TCP connection and have them all read.
pub async fn raw_tcp_seconds(bytes: u64) -> std::io::Result<f64> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let reader = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await?;
        let mut buffer = vec![0u8; RAW_CHUNK];
        let mut total = 0u64;
        loop {
            match stream.read(&mut buffer).await? {
                0 => return Ok::<u64, std::io::Error>(total),
                n => total += n as u64,
            }
        }
    });
    let chunk = vec![7u8; RAW_CHUNK];
    let started = Instant::now();
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    stream.set_nodelay(true)?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(RAW_CHUNK as u64) as usize;
        stream.write_all(&chunk[..n]).await?;
        left -= n as u64;
    }
    stream.shutdown().await?;
    let received = reader.await.map_err(std::io::Error::other)??;
    let seconds = started.elapsed().as_secs_f64();
    if received != bytes {
        return Err(std::io::Error::other(format!("raw TCP carried {received} of {bytes} bytes")));
    }
    Ok(seconds)
}

/// Deletes a finished case's node databases (a large model's rounds fill the disk), keeping
/// its logs and report.
pub fn remove_node_data(out: &Path) -> std::io::Result<()> {
    let Ok(nodes) = std::fs::read_dir(out.join("nodes")) else { return Ok(()) };
    for node in nodes {
        let data = node?.path().join("data");
        if data.exists() {
            std::fs::remove_dir_all(data)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn raw_tcp_carries_every_byte() {
        let seconds = raw_tcp_seconds(3 * RAW_CHUNK as u64 + 5).await.unwrap();
        assert!(seconds > 0.0);
    }
}
