//! The node's event log (started, killed, back-off, OOMKilled, bad spec, node dead …):
//! bounded, aggregated like Kubernetes' (`log.rs`), persisted in `DATA/events.jsonl`, and
//! readable from stream tasks through an [`EventReader`].
//!
//! The file is append-only JSON lines, one `write` per event and no fsync: a line in the
//! page cache survives `kill -9` of the agent, and a power cut loses at most the newest
//! events. Loading replays the lines (an aggregated event's line replaces its earlier
//! one) and skips malformed ones. Once the file holds more than twice the log's capacity in
//! lines it is rewritten with the current rows (temp file, then rename).

mod log;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use protocol::events::{Event, EventType};

use self::log::Log;
use crate::api::EventRow;

/// The agent's event log. Only the agent loop writes (`&mut self`); readers elsewhere get
/// an [`EventReader`].
#[derive(Debug)]
pub struct EventLog {
    node: String,
    /// The agent's own copy, so `all` and `for_object` can lend rows without a lock.
    rows: Log,
    /// The copy readers see, kept equal to `rows` by mirroring every change.
    shared: Arc<Mutex<Log>>,
    file: Option<LogFile>,
}

/// A cloneable, read-only view of an [`EventLog`] for tasks outside the agent loop.
#[derive(Debug, Clone)]
pub struct EventReader {
    node: String,
    shared: Arc<Mutex<Log>>,
}

impl EventReader {
    /// The node whose log this is.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The newest `limit` events with `seq > after`, oldest first.
    pub fn after(&self, after: u64, limit: usize) -> Vec<Event> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner()).after(after, limit)
    }
}

#[derive(Debug)]
struct LogFile {
    path: PathBuf,
    /// Open for appending; `None` after a failure until the next compaction reopens it.
    file: Option<File>,
    /// Lines in the file (malformed ones included), to know when to compact.
    lines: usize,
    /// Whether the last write failed (warn once per failure streak).
    failing: bool,
}

impl EventLog {
    /// A log kept in memory only.
    pub fn in_memory(node: &str, cap: usize) -> EventLog {
        let rows = Log::new(cap);
        EventLog { node: node.to_owned(), shared: Arc::new(Mutex::new(rows.clone())), rows, file: None }
    }

    /// Loads the log persisted at `path` (absent: empty) and appends to it from now on.
    /// Malformed lines are skipped with a warning.
    pub fn open(path: &Path, node: &str, cap: usize) -> anyhow::Result<EventLog> {
        let mut rows = Log::new(cap);
        let (mut lines, mut skipped, mut torn) = (0, 0, false);
        match std::fs::read_to_string(path) {
            Ok(text) => {
                torn = !text.is_empty() && !text.ends_with('\n');
                for line in text.lines() {
                    lines += 1;
                    let kept = serde_json::from_str::<Event>(line).is_ok_and(|row| rows.insert(row));
                    if !kept {
                        skipped += 1;
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading event log {}", path.display())),
        }
        if skipped > 0 {
            tracing::warn!(path = %path.display(), skipped, "skipped malformed or out-of-order lines of the event log");
        }
        let mut log = EventLog {
            node: node.to_owned(),
            shared: Arc::new(Mutex::new(rows.clone())),
            rows,
            file: Some(LogFile { path: path.to_owned(), file: None, lines, failing: false }),
        };
        // A torn last line would swallow the next append, and a long file wastes the next
        // start's time: rewrite it now.
        if torn || lines > 2 * log.rows.cap() {
            log.compact();
        } else if let Some(f) = &mut log.file {
            let file = open_append(path).with_context(|| format!("opening event log {}", path.display()))?;
            f.file = Some(file);
        }
        Ok(log)
    }

    pub fn reader(&self) -> EventReader {
        EventReader { node: self.node.clone(), shared: self.shared.clone() }
    }

    pub fn normal(&mut self, object: &str, reason: &str, message: &str) {
        self.push(EventType::Normal, object, reason, message);
    }

    pub fn warning(&mut self, object: &str, reason: &str, message: &str) {
        self.push(EventType::Warning, object, reason, message);
    }

    fn push(&mut self, kind: EventType, object: &str, reason: &str, message: &str) {
        self.record_at(super::now_ms(), kind, object, reason, message);
    }

    fn record_at(&mut self, now_ms: u64, kind: EventType, object: &str, reason: &str, message: &str) {
        let row = self.rows.record(&self.node, now_ms, kind, object, reason, message);
        self.shared.lock().unwrap_or_else(|e| e.into_inner()).insert(row.clone());
        self.append(&row);
    }

    /// All events, oldest first (in `seq` order).
    pub fn all(&self) -> impl Iterator<Item = &EventRow> {
        self.rows.iter()
    }

    /// Events about one object, oldest first.
    pub fn for_object<'a>(&'a self, object: &'a str) -> impl Iterator<Item = &'a EventRow> + 'a {
        self.rows.iter().filter(move |r| r.object == object)
    }

    fn append(&mut self, row: &Event) {
        let cap = self.rows.cap();
        let Some(f) = &mut self.file else { return };
        let result = serde_json::to_string(row).map_err(std::io::Error::from).and_then(|mut line| {
            line.push('\n');
            let file = f.file.as_mut().ok_or_else(|| std::io::Error::other("not open"))?;
            // One write of the whole line, so a killed agent leaves whole lines only.
            file.write_all(line.as_bytes())
        });
        match result {
            Ok(()) => {
                f.lines = f.lines.saturating_add(1);
                f.failing = false;
            }
            Err(e) => {
                if !f.failing {
                    tracing::warn!(path = %f.path.display(), "appending to the event log: {e}");
                }
                f.failing = true;
                // The next compaction rewrites what the file missed.
                f.lines = usize::MAX;
            }
        }
        if f.lines > 2 * cap {
            self.compact();
        }
    }

    /// Rewrites the file with the current rows (temp file, then rename) and reopens it.
    fn compact(&mut self) {
        let Some(f) = &mut self.file else { return };
        let tmp = f.path.with_extension("jsonl.tmp");
        let mut text = String::new();
        for row in self.rows.iter() {
            match serde_json::to_string(row) {
                Ok(line) => {
                    text.push_str(&line);
                    text.push('\n');
                }
                Err(e) => tracing::warn!("encoding event {}: {e}", row.seq),
            }
        }
        let result = std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &f.path))
            .and_then(|()| open_append(&f.path));
        match result {
            Ok(file) => {
                f.file = Some(file);
                f.lines = self.rows.len();
                f.failing = false;
            }
            Err(e) => {
                if !f.failing {
                    tracing::warn!(path = %f.path.display(), "rewriting the event log: {e}");
                }
                f.failing = true;
                f.file = None;
                f.lines = usize::MAX;
            }
        }
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new().create(true).append(true).open(path)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // In tests a panic is the failure report.
mod tests {
    use super::*;

    fn temp_file(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("peer-events-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("events.jsonl")
    }

    fn line_count(path: &Path) -> usize {
        std::fs::read_to_string(path).unwrap().lines().count()
    }

    fn summary(log: &EventLog) -> Vec<(u64, String, u32)> {
        log.all().map(|e| (e.seq, e.reason.clone(), e.count)).collect()
    }

    #[test]
    fn the_log_survives_a_reload_and_its_seq_continues() {
        let path = temp_file("reload");
        let mut log = EventLog::open(&path, "n1", 10).unwrap();
        log.normal("pod/a", "Started", "started container main");
        log.warning("pod/a", "Unhealthy", "probe failed");
        log.warning("pod/a", "Unhealthy", "probe failed");
        log.normal("node/n2", "NodeJoined", "node n2 joined the cluster");
        let before = summary(&log);
        assert_eq!(before.len(), 3);
        drop(log);

        let mut log = EventLog::open(&path, "n1", 10).unwrap();
        assert_eq!(summary(&log), before);
        assert!(log.all().all(|e| e.node == "n1"));
        log.normal("pod/b", "Started", "x");
        assert_eq!(log.all().last().unwrap().seq, 5);
        // Aggregation also continues across the reload.
        log.warning("pod/a", "Unhealthy", "probe failed");
        let last = log.all().last().unwrap();
        assert_eq!((last.seq, last.count), (6, 3));
        // Readers see what the agent sees.
        let seqs: Vec<u64> = log.reader().after(4, 100).iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [5, 6]);
        assert_eq!(log.for_object("pod/a").count(), 2);
    }

    #[test]
    fn malformed_and_torn_lines_are_skipped() {
        let path = temp_file("malformed");
        let mut log = EventLog::open(&path, "n1", 10).unwrap();
        log.normal("pod/a", "Started", "one");
        drop(log);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("not json\n{\"seq\": 5}\n");
        text.push_str("{\"node\":\"n1\",\"seq\":9,\"first_ms\""); // torn by a power cut
        std::fs::write(&path, text).unwrap();

        let mut log = EventLog::open(&path, "n1", 10).unwrap();
        assert_eq!(summary(&log), [(1, "Started".to_string(), 1)]);
        // The torn line was rewritten away, so the next append is a line of its own.
        log.normal("pod/a", "Killing", "two");
        drop(log);
        let log = EventLog::open(&path, "n1", 10).unwrap();
        assert_eq!(summary(&log), [(1, "Started".to_string(), 1), (2, "Killing".to_string(), 1)]);
        assert_eq!(line_count(&path), 2);
    }

    #[test]
    fn the_file_is_compacted_past_twice_the_cap() {
        let path = temp_file("compact");
        let mut log = EventLog::open(&path, "n1", 5).unwrap();
        for i in 0..10 {
            log.normal("pod/a", &format!("R{i}"), "m");
        }
        assert_eq!(line_count(&path), 10);
        log.normal("pod/a", "R10", "m");
        // Eleven lines exceed 2 × 5: rewritten with the five newest.
        assert_eq!(line_count(&path), 5);
        assert!(!path.with_extension("jsonl.tmp").exists());
        log.normal("pod/a", "R11", "m");
        assert_eq!(line_count(&path), 6);
        drop(log);
        let log = EventLog::open(&path, "n1", 5).unwrap();
        let reasons: Vec<String> = log.all().map(|e| e.reason.clone()).collect();
        assert_eq!(reasons, ["R7", "R8", "R9", "R10", "R11"]);
        assert_eq!(log.all().last().unwrap().seq, 12);
    }

    #[test]
    fn an_in_memory_log_is_bounded() {
        let mut log = EventLog::in_memory("n1", 2);
        log.normal("a", "Started", "1");
        log.warning("b", "BackOff", "2");
        log.normal("a", "Killing", "3");
        let reasons: Vec<_> = log.all().map(|r| r.reason.as_str()).collect();
        assert_eq!(reasons, ["BackOff", "Killing"]);
        assert_eq!(log.for_object("a").count(), 1);
        assert_eq!(log.reader().after(0, 10).len(), 2);
    }
}
