//! The virtual clock and the single event queue: events run in order of (time, sequence number),
//! so two events due at the same millisecond run in the order they were scheduled.

use std::collections::{BTreeMap, VecDeque};

/// A virtual clock and the events scheduled on it, by due millisecond: each millisecond's events
/// wait in scheduling order, which is the sequence order (a broadcast to a thousand members
/// schedules a thousand copies over a few distinct milliseconds, so a per-event heap of millions
/// spent most of a large run's time in cache misses).
pub struct Queue<T> {
    now_ms: u64,
    due: BTreeMap<u64, VecDeque<T>>,
    len: usize,
}

impl<T> Queue<T> {
    /// A queue whose clock starts at `start_ms`.
    pub fn new(start_ms: u64) -> Self {
        Self { now_ms: start_ms, due: BTreeMap::new(), len: 0 }
    }

    /// The current virtual time.
    pub fn now(&self) -> u64 {
        self.now_ms
    }

    /// Schedules `item` at `at_ms` (never before now).
    pub fn at(&mut self, at_ms: u64, item: T) {
        self.due.entry(at_ms.max(self.now_ms)).or_default().push_back(item);
        self.len += 1;
    }

    /// Schedules `item` `delay_ms` from now.
    pub fn after(&mut self, delay_ms: u64, item: T) {
        self.at(self.now_ms.saturating_add(delay_ms), item);
    }

    /// The next event, advancing the clock to its time; none when nothing is left or the next
    /// event is past `until_ms` (the clock then moves to `until_ms`).
    pub fn pop_until(&mut self, until_ms: u64) -> Option<T> {
        let mut first = self.due.first_entry()?;
        if *first.key() > until_ms {
            self.now_ms = self.now_ms.max(until_ms);
            return None;
        }
        self.now_ms = *first.key();
        let item = first.get_mut().pop_front();
        if first.get().is_empty() {
            first.remove();
        }
        self.len -= 1;
        item
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_run_by_time_then_by_scheduling_order() {
        let mut queue = Queue::new(100);
        queue.after(5, "c");
        queue.at(50, "past: runs now");
        queue.after(5, "d");
        queue.after(1, "b");
        let mut order = Vec::new();
        while let Some(item) = queue.pop_until(u64::MAX) {
            order.push((queue.now(), item));
        }
        assert_eq!(order, [(100, "past: runs now"), (101, "b"), (105, "c"), (105, "d")]);
        assert!(queue.is_empty());
    }

    #[test]
    fn nothing_past_the_limit_runs() {
        let mut queue = Queue::new(0);
        queue.at(10, 1);
        assert_eq!(queue.pop_until(9), None);
        assert_eq!(queue.len(), 1);
        assert_eq!(queue.pop_until(10), Some(1));
    }
}
