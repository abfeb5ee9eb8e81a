//! Reading one sample out of the OpenMetrics text `GET /metrics` answers.

/// The value of one sample, by its full name with labels, e.g.
/// `fedmesh_messages_rejected_total{kind="announce",reason="bad_signature"}`; 0 when absent.
pub fn metric_value(text: &str, sample: &str) -> f64 {
    text.lines()
        .filter_map(|line| line.strip_prefix(sample))
        .filter_map(|rest| rest.trim().parse::<f64>().ok())
        .sum()
}
