//! The node's Prometheus metrics in the OpenMetrics text format: peers, messages in and out by
//! kind, rejected messages by reason, bytes sent and received; per job, updates accepted and
//! refused and update bytes received (counted as they happen), and rounds completed, round
//! seconds, accuracy, loss and members (read from the job views at each scrape).

use fedmesh_admin_api::JobView;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// A message kind, as a label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

/// Why a message was refused, as a label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabel {
    pub kind: String,
    pub reason: String,
}

/// A job, as a label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabel {
    pub job: String,
}

/// A job and a kind of update (delta, partial, ring chunk), as labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobKindLabel {
    pub job: String,
    pub kind: String,
}

/// A job and why an update for it was refused, as labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobRefusalLabel {
    pub job: String,
    pub reason: String,
}

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every metric the node exports; cheap to update from any task.
pub struct Metrics {
    registry: Registry,
    pub connected_peers: Gauge,
    /// Open connections by kind (`direct`, `relayed`, `hole_punched`), and the most open at once.
    connections: Family<KindLabel, Gauge>,
    connections_peak: Gauge,
    pub messages_in: Family<KindLabel, Counter>,
    pub messages_out: Family<KindLabel, Counter>,
    pub messages_rejected: Family<RejectLabel, Counter>,
    pub bytes_received: Counter,
    pub bytes_sent: Counter,
    pub updates_accepted: Family<JobKindLabel, Counter>,
    pub updates_refused: Family<JobRefusalLabel, Counter>,
    pub job_bytes_received: Family<JobLabel, Counter>,
    pub masked_update_round: Family<JobLabel, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// How a connection reaches its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionKind {
    Direct,
    /// Through a circuit relay.
    Relayed,
    /// Direct, made by hole punching (DCUtR) from a relayed one.
    HolePunched,
}

impl ConnectionKind {
    const ALL: [Self; 3] = [Self::Direct, Self::Relayed, Self::HolePunched];

    fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Relayed => "relayed",
            Self::HolePunched => "hole_punched",
        }
    }
}

impl Metrics {
    /// Registers every metric under the `fedmesh` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("fedmesh");
        let connected_peers = Gauge::default();
        let messages_in = Family::default();
        let messages_out = Family::default();
        let messages_rejected = Family::default();
        let bytes_received = Counter::default();
        let bytes_sent = Counter::default();
        registry.register(
            "connected_peers",
            "Peers with an open connection",
            connected_peers.clone(),
        );
        let connections = Family::default();
        let connections_peak = Gauge::default();
        registry.register(
            "connections",
            "Open connections, by kind: direct, relayed (through a circuit relay) or hole_punched \
             (direct, made by DCUtR from a relayed one)",
            connections.clone(),
        );
        registry.register(
            "connections_peak",
            "The most connections this node held open at once",
            connections_peak.clone(),
        );
        registry.register("messages_in", "Messages received, by kind", messages_in.clone());
        registry.register("messages_out", "Messages sent, by kind", messages_out.clone());
        registry.register(
            "messages_rejected",
            "Messages refused, by kind and reason",
            messages_rejected.clone(),
        );
        registry.register("bytes_received", "Bytes received in messages", bytes_received.clone());
        registry.register("bytes_sent", "Bytes sent in messages", bytes_sent.clone());
        let updates_accepted = Family::default();
        let updates_refused = Family::default();
        let job_bytes_received = Family::default();
        registry.register(
            "job_updates_accepted",
            "Updates (deltas, partial aggregates, ring chunks) this node accepted, by job and kind",
            updates_accepted.clone(),
        );
        registry.register(
            "job_updates_refused",
            "Updates this node refused, by job and reason",
            updates_refused.clone(),
        );
        registry.register(
            "job_bytes_received",
            "Update payload bytes received, by job",
            job_bytes_received.clone(),
        );
        let masked_update_round = Family::default();
        registry.register(
            "job_masked_update_round",
            "The last round whose masked update (secure aggregation) this node delivered, by job",
            masked_update_round.clone(),
        );
        Self {
            registry,
            connected_peers,
            connections,
            connections_peak,
            messages_in,
            messages_out,
            messages_rejected,
            bytes_received,
            bytes_sent,
            updates_accepted,
            updates_refused,
            job_bytes_received,
            masked_update_round,
        }
    }

    /// Counts a connection of `kind` opened (`opened`) or closed, and the peak.
    pub fn connection(&self, kind: ConnectionKind, opened: bool) {
        let gauge = self.connections_of(kind);
        if opened {
            gauge.inc();
        } else {
            gauge.dec();
        }
        let open: i64 =
            ConnectionKind::ALL.iter().map(|kind| self.connections_of(*kind).get()).sum();
        self.connections_peak.set(self.connections_peak.get().max(open));
    }

    /// Counts an open direct connection as made by hole punching from now on.
    pub fn hole_punched(&self) {
        self.connections_of(ConnectionKind::Direct).dec();
        self.connections_of(ConnectionKind::HolePunched).inc();
    }

    /// The gauge of open connections of `kind` (a clone: the family's guard must go before the
    /// next lookup, which may insert).
    fn connections_of(&self, kind: ConnectionKind) -> Gauge {
        self.connections.get_or_create(&KindLabel { kind: kind.as_str().to_owned() }).clone()
    }

    /// Records that this node's masked update of `round` reached its aggregator.
    pub fn masked_update_delivered(&self, job: &str, round: u64) {
        let gauge = self.masked_update_round.get_or_create(&JobLabel { job: job.to_owned() });
        gauge.set(gauge.get().max(round as i64));
    }

    /// Counts an update of `kind` for `job` accepted, or refused for `reason`.
    pub fn update(&self, job: &str, kind: &str, refused: Option<&str>) {
        let job = job.to_owned();
        match refused {
            None => {
                let label = JobKindLabel { job, kind: kind.to_owned() };
                self.updates_accepted.get_or_create(&label).inc()
            }
            Some(reason) => {
                let label = JobRefusalLabel { job, reason: reason.to_owned() };
                self.updates_refused.get_or_create(&label).inc()
            }
        };
    }

    /// Counts an update payload received for `job`.
    pub fn job_received(&self, job: &str, bytes: usize) {
        self.job_bytes_received
            .get_or_create(&JobLabel { job: job.to_owned() })
            .inc_by(bytes as u64);
    }

    /// Counts a message received.
    pub fn received(&self, kind: &str, bytes: usize) {
        self.messages_in.get_or_create(&KindLabel { kind: kind.to_owned() }).inc();
        self.bytes_received.inc_by(bytes as u64);
    }

    /// Counts a message sent.
    pub fn sent(&self, kind: &str, bytes: usize) {
        self.messages_out.get_or_create(&KindLabel { kind: kind.to_owned() }).inc();
        self.bytes_sent.inc_by(bytes as u64);
    }

    /// Counts a message refused.
    pub fn rejected(&self, kind: &str, reason: &str) {
        let label = RejectLabel { kind: kind.to_owned(), reason: reason.to_owned() };
        self.messages_rejected.get_or_create(&label).inc();
    }

    /// The OpenMetrics text of every metric, with the round metrics of `jobs` (the jobs this
    /// node knows; those it takes part in have rounds).
    pub fn render(&self, jobs: &[JobView]) -> String {
        use prometheus_client::encoding::text::{encode_eof, encode_registry};
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode_registry(&mut text, &self.registry);
        let _ = encode_registry(&mut text, &RoundMetrics::from_jobs(jobs).registry);
        let _ = encode_eof(&mut text);
        text
    }
}

/// The round buckets of the round-seconds histogram: 0.1 s to about 30 minutes.
fn round_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.1, 2.0, 15))
}

/// The round metrics of the jobs, read from their views (a fresh registry at each scrape).
struct RoundMetrics {
    registry: Registry,
}

impl RoundMetrics {
    fn from_jobs(jobs: &[JobView]) -> Self {
        let mut registry = Registry::with_prefix("fedmesh_job");
        let completed = Family::<JobLabel, Counter>::default();
        let total = Family::<JobLabel, Gauge>::default();
        let members = Family::<JobLabel, Gauge>::default();
        let accuracy = Family::<JobLabel, Gauge<f64, AtomicU64>>::default();
        let loss = Family::<JobLabel, Gauge<f64, AtomicU64>>::default();
        let seconds =
            Family::<JobLabel, Histogram>::new_with_constructor(round_buckets as fn() -> _);
        for (job, run) in jobs.iter().filter_map(|job| Some((&job.id, job.run.as_ref()?))) {
            let label = JobLabel { job: job.clone() };
            completed.get_or_create(&label).inc_by(run.completed_round);
            total.get_or_create(&label).set(run.rounds_total as i64);
            members.get_or_create(&label).set(run.members.len() as i64);
            let histogram = seconds.get_or_create(&label);
            run.rounds.iter().filter_map(|round| round.seconds).for_each(|s| histogram.observe(s));
            let evaluated = run.rounds.iter().rev().find(|round| round.accuracy.is_some());
            if let Some(round) = evaluated {
                accuracy.get_or_create(&label).set(round.accuracy.unwrap_or_default());
                loss.get_or_create(&label).set(round.loss.unwrap_or_default());
            }
        }
        registry.register("rounds_completed", "Rounds whose model this node holds", completed);
        registry.register("rounds", "Rounds the job runs", total);
        registry.register("members", "Members this node knows in the job", members);
        registry.register("accuracy", "Test accuracy of the latest evaluated round", accuracy);
        registry.register("loss", "Test loss of the latest evaluated round", loss);
        registry.register(
            "round_seconds",
            "Seconds from a round's first opening to its model",
            seconds,
        );
        Self { registry }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_names_kinds_and_reasons() {
        let metrics = Metrics::new();
        metrics.received("announce", 100);
        metrics.rejected("announce", "bad_signature");
        metrics.connected_peers.set(3);
        metrics.update("job1", "delta", None);
        metrics.update("job1", "delta", Some("stale"));
        metrics.job_received("job1", 4096);
        let text = metrics.render(&[]);
        assert!(
            text.contains("fedmesh_job_updates_accepted_total{job=\"job1\",kind=\"delta\"} 1"),
            "{text}"
        );
        assert!(text.contains("reason=\"stale\""), "{text}");
        assert!(text.contains("fedmesh_job_bytes_received_total{job=\"job1\"} 4096"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(text.contains("fedmesh_messages_in_total{kind=\"announce\"} 1"), "{text}");
        assert!(text.contains("reason=\"bad_signature\""), "{text}");
        assert!(text.contains("fedmesh_bytes_received_total 100"), "{text}");
        assert!(text.contains("fedmesh_connected_peers 3"), "{text}");
    }

    #[test]
    fn connections_are_counted_by_kind_with_their_peak() {
        use ConnectionKind::{Direct, Relayed};
        let metrics = Metrics::new();
        for kind in [Direct, Direct, Relayed, Direct] {
            metrics.connection(kind, true);
        }
        metrics.hole_punched();
        metrics.connection(Direct, false);
        metrics.connection(Direct, true);
        let text = metrics.render(&[]);
        assert!(text.contains("fedmesh_connections{kind=\"direct\"} 2"), "{text}");
        assert!(text.contains("fedmesh_connections{kind=\"relayed\"} 1"), "{text}");
        assert!(text.contains("fedmesh_connections{kind=\"hole_punched\"} 1"), "{text}");
        assert!(text.contains("fedmesh_connections_peak 4"), "{text}");
    }
}
