//! A bounded log of the node's events (started, killed, back-off, OOMKilled, bad spec …).

use std::collections::VecDeque;

use crate::api::EventRow;

#[derive(Debug)]
pub struct EventLog {
    cap: usize,
    rows: VecDeque<EventRow>,
}

impl EventLog {
    pub fn new(cap: usize) -> EventLog {
        EventLog { cap, rows: VecDeque::with_capacity(cap) }
    }

    pub fn normal(&mut self, object: &str, reason: &str, message: &str) {
        self.push("Normal", object, reason, message);
    }

    pub fn warning(&mut self, object: &str, reason: &str, message: &str) {
        self.push("Warning", object, reason, message);
    }

    fn push(&mut self, kind: &str, object: &str, reason: &str, message: &str) {
        if self.rows.len() == self.cap {
            self.rows.pop_front();
        }
        self.rows.push_back(EventRow {
            time_ms: super::now_ms(),
            kind: kind.to_owned(),
            object: object.to_owned(),
            reason: reason.to_owned(),
            message: message.to_owned(),
        });
    }

    pub fn all(&self) -> impl Iterator<Item = &EventRow> {
        self.rows.iter()
    }

    /// Events about one object, oldest first.
    pub fn for_object<'a>(&'a self, object: &'a str) -> impl Iterator<Item = &'a EventRow> + 'a {
        self.rows.iter().filter(move |r| r.object == object)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_the_newest() {
        let mut log = EventLog::new(2);
        log.normal("a", "Started", "1");
        log.warning("b", "BackOff", "2");
        log.normal("a", "Killing", "3");
        let reasons: Vec<_> = log.all().map(|r| r.reason.as_str()).collect();
        assert_eq!(reasons, ["BackOff", "Killing"]);
        assert_eq!(log.for_object("a").count(), 1);
    }
}
