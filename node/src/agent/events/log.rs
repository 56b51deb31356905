//! The pure core of the event log: a bounded list in `seq` order with Kubernetes-style
//! aggregation. No clock and no files: time comes in as `now_ms`.

use std::collections::VecDeque;

use protocol::events::{truncate_message, Event, EventType};

/// An event identical to one recorded this recently is counted on it instead of added.
pub const AGGREGATE_WINDOW_MS: u64 = 10 * 60 * 1000;

/// Events in increasing `seq` order, at most `cap` of them.
#[derive(Debug, Clone)]
pub struct Log {
    cap: usize,
    rows: VecDeque<Event>,
    next_seq: u64,
}

fn same(e: &Event, kind: EventType, object: &str, reason: &str, message: &str) -> bool {
    e.kind == kind && e.object == object && e.reason == reason && e.message == message
}

impl Log {
    pub fn new(cap: usize) -> Log {
        Log { cap: cap.max(1), rows: VecDeque::new(), next_seq: 1 }
    }

    /// Records an event at `now_ms`: counted on an identical one of the last
    /// [`AGGREGATE_WINDOW_MS`] (which then moves to the newest position with a new `seq`),
    /// else added. Returns the new or updated row, as it must be persisted.
    pub fn record(
        &mut self,
        node: &str,
        now_ms: u64,
        kind: EventType,
        object: &str,
        reason: &str,
        message: &str,
    ) -> Event {
        let message = truncate_message(message);
        let seq = self.next_seq;
        let recent = self.rows.iter().rposition(|e| {
            same(e, kind, object, reason, message) && now_ms.saturating_sub(e.last_ms) <= AGGREGATE_WINDOW_MS
        });
        let row = match recent.and_then(|i| self.rows.remove(i)) {
            Some(old) => {
                Event { seq, last_ms: now_ms.max(old.last_ms), count: old.count.saturating_add(1), ..old }
            }
            None => Event {
                node: node.to_owned(),
                seq,
                first_ms: now_ms,
                last_ms: now_ms,
                count: 1,
                kind,
                object: object.to_owned(),
                reason: reason.to_owned(),
                message: message.to_owned(),
            },
        };
        self.insert(row.clone());
        row
    }

    /// Takes a row recorded earlier (replayed from the file, or mirrored from another copy
    /// of the log): it replaces the entry it updates — the same event with the same first
    /// time — and becomes the newest. Rows must arrive in `seq` order; one that does not is
    /// dropped (and reported as `false`).
    pub fn insert(&mut self, row: Event) -> bool {
        if self.rows.back().is_some_and(|last| last.seq >= row.seq) {
            return false;
        }
        if let Some(i) = self.rows.iter().rposition(|e| {
            same(e, row.kind, &row.object, &row.reason, &row.message) && e.first_ms == row.first_ms
        }) {
            self.rows.remove(i);
        }
        self.next_seq = self.next_seq.max(row.seq.saturating_add(1));
        self.rows.push_back(row);
        while self.rows.len() > self.cap {
            self.rows.pop_front();
        }
        true
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    /// All rows, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Event> {
        self.rows.iter()
    }

    /// The newest `limit` rows with `seq > after`, oldest first.
    pub fn after(&self, after: u64, limit: usize) -> Vec<Event> {
        let start = self.rows.partition_point(|e| e.seq <= after);
        let start = start.max(self.rows.len().saturating_sub(limit));
        self.rows.range(start..).cloned().collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // In tests a panic is the failure report.
mod tests {
    use super::*;

    const MIN: u64 = 60_000;

    fn rows(log: &Log) -> Vec<(u64, &str, u32)> {
        log.iter().map(|e| (e.seq, e.reason.as_str(), e.count)).collect()
    }

    #[test]
    fn keeps_only_the_newest_cap_events() {
        let mut log = Log::new(2);
        log.record("n", 1, EventType::Normal, "pod/a", "Started", "1");
        log.record("n", 2, EventType::Warning, "pod/b", "BackOff", "2");
        log.record("n", 3, EventType::Normal, "pod/a", "Killing", "3");
        assert_eq!(rows(&log), [(2, "BackOff", 1), (3, "Killing", 1)]);
    }

    #[test]
    fn identical_events_within_the_window_aggregate_and_move_to_the_end() {
        let mut log = Log::new(10);
        log.record("n", 0, EventType::Warning, "pod/a", "Unhealthy", "probe failed");
        log.record("n", MIN, EventType::Normal, "pod/b", "Started", "started");
        let row = log.record("n", 2 * MIN, EventType::Warning, "pod/a", "Unhealthy", "probe failed");
        assert_eq!((row.seq, row.count, row.first_ms, row.last_ms), (3, 2, 0, 2 * MIN));
        assert_eq!(rows(&log), [(2, "Started", 1), (3, "Unhealthy", 2)]);
        // Another type, object or message is another event.
        log.record("n", 3 * MIN, EventType::Normal, "pod/a", "Unhealthy", "probe failed");
        log.record("n", 3 * MIN, EventType::Warning, "pod/a", "Unhealthy", "probe timed out");
        assert_eq!(log.len(), 4);
        // Past the window (counted from the latest occurrence) it starts a new entry.
        let late = 2 * MIN + AGGREGATE_WINDOW_MS + 1;
        let row = log.record("n", late, EventType::Warning, "pod/a", "Unhealthy", "probe failed");
        assert_eq!((row.count, row.first_ms), (1, late));
        assert_eq!(log.len(), 5);
    }

    #[test]
    fn a_repeating_event_does_not_push_others_out() {
        let mut log = Log::new(3);
        log.record("n", 0, EventType::Normal, "pod/a", "Started", "started");
        for i in 0..100 {
            log.record("n", i * 10_000, EventType::Warning, "pod/b", "Unhealthy", "probe failed");
        }
        assert_eq!(rows(&log), [(1, "Started", 1), (101, "Unhealthy", 100)]);
    }

    #[test]
    fn replaying_rows_rebuilds_the_same_log() {
        let mut log = Log::new(3);
        let mut written = Vec::new();
        for (t, reason) in [(0, "A"), (1, "B"), (2, "A"), (3, "C"), (4, "D"), (5, "A")] {
            written.push(log.record("n", t, EventType::Normal, "pod/x", reason, "m"));
        }
        let mut replayed = Log::new(3);
        for row in written {
            assert!(replayed.insert(row));
        }
        assert_eq!(rows(&replayed), rows(&log));
        assert_eq!(rows(&log), [(4, "C", 1), (5, "D", 1), (6, "A", 3)]);
        // The sequence continues after the newest row.
        assert_eq!(replayed.record("n", 9, EventType::Normal, "pod/x", "E", "m").seq, 7);
        // A row out of order is dropped.
        let stale = log.iter().next().cloned().unwrap();
        assert!(!replayed.insert(stale));
    }

    #[test]
    fn after_returns_the_newest_past_a_cursor() {
        let mut log = Log::new(10);
        for i in 0..6 {
            log.record("n", i, EventType::Normal, "pod/x", &format!("R{i}"), "m");
        }
        let seqs = |v: Vec<Event>| v.into_iter().map(|e| e.seq).collect::<Vec<_>>();
        assert_eq!(seqs(log.after(0, 100)), [1, 2, 3, 4, 5, 6]);
        assert_eq!(seqs(log.after(4, 100)), [5, 6]);
        assert_eq!(seqs(log.after(0, 2)), [5, 6]);
        assert_eq!(seqs(log.after(6, 100)), Vec::<u64>::new());
    }

    #[test]
    fn long_messages_are_cut() {
        let mut log = Log::new(1);
        let row = log.record("n", 0, EventType::Normal, "specs", "InvalidSpec", &"x".repeat(10_000));
        assert_eq!(row.message.len(), protocol::events::MAX_MESSAGE_BYTES);
    }
}
