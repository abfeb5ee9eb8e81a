//! The node's recent warnings and errors, kept in memory for `fedmesh status` and the web page: a
//! tracing layer records each as it is logged.

use fedmesh_admin_api::LogLine;
use std::collections::VecDeque;
use std::fmt::Write;
use std::sync::Mutex;
use tracing::field::{Field, Visit};

/// How many are kept.
const KEPT: usize = 50;

static RECENT: Mutex<VecDeque<LogLine>> = Mutex::new(VecDeque::new());

/// The kept warnings and errors, oldest first.
pub fn lines() -> Vec<LogLine> {
    RECENT.lock().map(|recent| recent.iter().cloned().collect()).unwrap_or_default()
}

/// Records warnings and errors into the list [`lines`] reads.
pub struct RecentLayer;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for RecentLayer {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _context: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let level = *event.metadata().level();
        if level > tracing::Level::WARN {
            return;
        }
        let mut text = Text::default();
        event.record(&mut text);
        let at_ms = fedmesh_protocol::message::unix_millis();
        let line = LogLine { at_ms, level: level.to_string(), message: text.0 };
        if let Ok(mut recent) = RECENT.lock() {
            if recent.len() == KEPT {
                recent.pop_front();
            }
            recent.push_back(line);
        }
    }
}

/// An event's message followed by its other fields.
#[derive(Default)]
struct Text(String);

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0.insert_str(0, &format!("{value:?}"));
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.insert_str(0, value);
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn warnings_and_errors_are_kept_with_their_fields_and_info_is_not() {
        let subscriber = tracing_subscriber::registry().with(RecentLayer);
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("not kept");
            tracing::warn!(job = "abc", "a trainer failed");
            for i in 0..KEPT {
                tracing::error!(i, "again");
            }
        });
        let kept = lines();
        assert_eq!(kept.len(), KEPT);
        assert!(kept.iter().all(|line| line.message != "not kept"));
        assert_eq!(kept[KEPT - 1].message, format!("again i={}", KEPT - 1));
        assert_eq!(kept[KEPT - 1].level, "ERROR");
    }
}
