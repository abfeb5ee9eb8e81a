//! The virtual clock and the single event queue: events run in order of (time, sequence number),
//! so two events due at the same millisecond run in the order they were scheduled.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// One scheduled item's place in the order; the item itself waits in the queue's slab, so the
/// heap moves small entries.
#[derive(PartialEq, Eq)]
struct Entry {
    at_ms: u64,
    sequence: u64,
    slot: usize,
}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    /// Reversed: the heap's greatest entry is the earliest.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at_ms, other.sequence).cmp(&(self.at_ms, self.sequence))
    }
}

/// A virtual clock and the events scheduled on it.
pub struct Queue<T> {
    now_ms: u64,
    next_sequence: u64,
    heap: BinaryHeap<Entry>,
    /// The scheduled items, and the free places among them.
    items: Vec<Option<T>>,
    free: Vec<usize>,
}

impl<T> Queue<T> {
    /// A queue whose clock starts at `start_ms`.
    pub fn new(start_ms: u64) -> Self {
        Self {
            now_ms: start_ms,
            next_sequence: 0,
            heap: BinaryHeap::new(),
            items: Vec::new(),
            free: Vec::new(),
        }
    }

    /// The current virtual time.
    pub fn now(&self) -> u64 {
        self.now_ms
    }

    /// Schedules `item` at `at_ms` (never before now).
    pub fn at(&mut self, at_ms: u64, item: T) {
        let slot = match self.free.pop() {
            Some(slot) => {
                self.items[slot] = Some(item);
                slot
            }
            None => {
                self.items.push(Some(item));
                self.items.len() - 1
            }
        };
        self.heap.push(Entry { at_ms: at_ms.max(self.now_ms), sequence: self.next_sequence, slot });
        self.next_sequence += 1;
    }

    /// Schedules `item` `delay_ms` from now.
    pub fn after(&mut self, delay_ms: u64, item: T) {
        self.at(self.now_ms.saturating_add(delay_ms), item);
    }

    /// The next event, advancing the clock to its time; none when nothing is left or the next
    /// event is past `until_ms` (the clock then moves to `until_ms`).
    pub fn pop_until(&mut self, until_ms: u64) -> Option<T> {
        match self.heap.peek() {
            Some(next) if next.at_ms <= until_ms => {
                let entry = self.heap.pop()?;
                self.now_ms = entry.at_ms;
                self.free.push(entry.slot);
                self.items[entry.slot].take()
            }
            Some(_) => {
                self.now_ms = self.now_ms.max(until_ms);
                None
            }
            None => None,
        }
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
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
