//! Cluster-wide event reads: the messages of an events stream, on which a node asks a peer
//! for the events of the peer's log past a sequence number. Pure types and chunking; the
//! stream I/O is the node's.
//!
//! One exchange per stream: the asker sends one [`EventsRequest`] and finishes its side;
//! the peer answers with [`EventsChunk`]s of at most [`CHUNK_BYTES`] encoded bytes each,
//! the final one marked `last`. Every message is decoded through [`codec`] with a limit: a
//! request with [`MAX_REQUEST_BYTES`], a chunk with [`codec::MAX_MESSAGE`]. An answer
//! carries at most the request's `limit` (capped at [`MAX_EVENTS`]) events; the asker
//! drops a peer that sends more.

use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError};

/// The most events one answer carries: a node's whole log.
pub const MAX_EVENTS: u32 = 1000;
/// Chunks are filled up to this many encoded bytes, far below [`codec::MAX_MESSAGE`].
pub const CHUNK_BYTES: usize = 256 * 1024;
/// The largest request a node reads: two varints and a tag.
pub const MAX_REQUEST_BYTES: usize = 64;
/// Messages longer than this are cut (at a character boundary) when an event is recorded,
/// so any single event fits in a chunk.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024;

/// Normal or Warning, as in Kubernetes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum EventType {
    Normal,
    Warning,
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        })
    }
}

/// One entry of a node's event log. Identical events (same object, type, reason and
/// message) within a short window are one entry whose `count` grows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The node that recorded it. From a peer, the asker overwrites it with the node id of
    /// the peer's certificate.
    pub node: String,
    /// Per node, increasing; a repeated event gets a new one, so readers see it again.
    pub seq: u64,
    /// Wall-clock milliseconds of the first and the latest occurrence (display only).
    pub first_ms: u64,
    pub last_ms: u64,
    pub count: u32,
    pub kind: EventType,
    /// `pod/NAME`, `node/NAME`, `specs`, `cluster`.
    pub object: String,
    pub reason: String,
    pub message: String,
}

/// Asks for the events with `seq > after`: the newest `limit` of them, oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsRequest {
    pub after: u64,
    pub limit: u32,
}

impl EventsRequest {
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        codec::decode(bytes, MAX_REQUEST_BYTES)
    }
}

/// Part of an answer; `last` marks the final chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsChunk {
    pub events: Vec<Event>,
    pub last: bool,
}

/// Splits an answer into chunks of at most [`CHUNK_BYTES`] encoded bytes (at least one
/// event each, and at least one chunk, the last marked `last`).
pub fn chunks(events: Vec<Event>) -> Result<Vec<EventsChunk>, CodecError> {
    let mut out = vec![EventsChunk { events: Vec::new(), last: false }];
    let mut used = 0;
    for event in events {
        let len = codec::encoded_len(&event)?;
        let current = out.last_mut().expect("out starts non-empty and only grows");
        if !current.events.is_empty() && used + len > CHUNK_BYTES {
            out.push(EventsChunk { events: Vec::new(), last: false });
            used = 0;
        }
        used += len;
        out.last_mut().expect("out starts non-empty and only grows").events.push(event);
    }
    out.last_mut().expect("out starts non-empty and only grows").last = true;
    Ok(out)
}

/// Cuts `message` to at most [`MAX_MESSAGE_BYTES`] at a character boundary.
pub fn truncate_message(message: &str) -> &str {
    if message.len() <= MAX_MESSAGE_BYTES {
        return message;
    }
    let mut end = MAX_MESSAGE_BYTES;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message[..end]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // In tests a panic is the failure report.
mod tests {
    use expect_test::expect;

    use super::*;
    use crate::codec::MAX_MESSAGE;

    fn event(seq: u64, message: &str) -> Event {
        Event {
            node: "n1".into(),
            seq,
            first_ms: 1_000,
            last_ms: 2_000,
            count: 2,
            kind: EventType::Warning,
            object: "pod/web-0".into(),
            reason: "BackOff".into(),
            message: message.into(),
        }
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn wire_snapshot_and_round_trip() {
        let req = EventsRequest { after: 300, limit: MAX_EVENTS };
        let bytes = codec::encode(&req).unwrap();
        expect!["fb2c01fbe803"].assert_eq(&hex(&bytes));
        assert_eq!(EventsRequest::decode(&bytes).unwrap(), req);

        let chunk = EventsChunk { events: vec![event(7, "x")], last: true };
        let bytes = codec::encode(&chunk).unwrap();
        expect!["01026e3107fbe803fbd007020109706f642f7765622d30074261636b4f6666017801"]
            .assert_eq(&hex(&bytes));
        assert_eq!(codec::decode::<EventsChunk>(&bytes, MAX_MESSAGE).unwrap(), chunk);
    }

    #[test]
    fn a_request_over_its_limit_is_refused() {
        let big = vec![0xFF; MAX_REQUEST_BYTES + 1];
        assert!(matches!(EventsRequest::decode(&big), Err(CodecError::FrameTooLarge { .. })));
        // A truncated chunk is an error, not a panic.
        let bytes = codec::encode(&EventsChunk { events: vec![event(1, "m")], last: true }).unwrap();
        assert!(codec::decode::<EventsChunk>(&bytes[..bytes.len() - 3], MAX_MESSAGE).is_err());
    }

    #[test]
    fn chunks_stay_under_the_cap_and_keep_order() {
        let long = "x".repeat(MAX_MESSAGE_BYTES);
        let events: Vec<Event> = (1..=200).map(|i| event(i, &long)).collect();
        let chunks = chunks(events).unwrap();
        assert!(chunks.len() > 1);
        let seqs: Vec<u64> = chunks.iter().flat_map(|c| c.events.iter().map(|e| e.seq)).collect();
        assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
        for (i, c) in chunks.iter().enumerate() {
            assert!(codec::encoded_len(c).unwrap() <= CHUNK_BYTES + 64, "chunk {i} too large");
            assert_eq!(c.last, i + 1 == chunks.len());
        }
        let empty = super::chunks(Vec::new()).unwrap();
        assert_eq!(empty, vec![EventsChunk { events: vec![], last: true }]);
    }

    #[test]
    fn long_messages_are_cut_at_a_character_boundary() {
        let text = "é".repeat(MAX_MESSAGE_BYTES);
        let cut = truncate_message(&text);
        assert!(cut.len() <= MAX_MESSAGE_BYTES && cut.len() >= MAX_MESSAGE_BYTES - 1);
        assert_eq!(truncate_message("short"), "short");
    }
}
