//! The node's Prometheus metrics: peers, messages in and out by kind, rejected messages by
//! reason, and bytes sent and received.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

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

/// Every metric the node exports; cheap to update from any task.
pub struct Metrics {
    registry: Registry,
    pub connected_peers: Gauge,
    pub messages_in: Family<KindLabel, Counter>,
    pub messages_out: Family<KindLabel, Counter>,
    pub messages_rejected: Family<RejectLabel, Counter>,
    pub bytes_received: Counter,
    pub bytes_sent: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
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
        registry.register("messages_in", "Messages received, by kind", messages_in.clone());
        registry.register("messages_out", "Messages sent, by kind", messages_out.clone());
        registry.register(
            "messages_rejected",
            "Messages refused, by kind and reason",
            messages_rejected.clone(),
        );
        registry.register("bytes_received", "Bytes received in messages", bytes_received.clone());
        registry.register("bytes_sent", "Bytes sent in messages", bytes_sent.clone());
        Self {
            registry,
            connected_peers,
            messages_in,
            messages_out,
            messages_rejected,
            bytes_received,
            bytes_sent,
        }
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

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
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
        let text = metrics.render();
        assert!(text.contains("fedmesh_messages_in_total{kind=\"announce\"} 1"), "{text}");
        assert!(text.contains("reason=\"bad_signature\""), "{text}");
        assert!(text.contains("fedmesh_bytes_received_total 100"), "{text}");
        assert!(text.contains("fedmesh_connected_peers 3"), "{text}");
    }
}
