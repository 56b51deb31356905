//! Cluster-wide event reads over QUIC (`protocol::events`): serving this node's log to
//! peers, and gathering every live node's events for `peer get events`. Both run in tasks
//! that read the log through an [`EventReader`], never through the agent loop.
//!
//! Also the rule for node events (`NodeDead`, `NodeLeft`, `NodeJoined`): one node records
//! each, so the cluster view shows one copy.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use protocol::codec::MAX_MESSAGE;
use protocol::desired::NodeId;
use protocol::events::{self, Event, EventsChunk, EventsRequest, MAX_EVENTS, MAX_REQUEST_BYTES};
use protocol::transport::{read_message, write_message, TransportHandle};
use quinn::{RecvStream, SendStream};
use tokio::task::JoinSet;

use super::STREAM_EVENTS;
use crate::agent::EventReader;
use crate::api::EventsAnswer;

/// A peer that has not answered an events read in this time counts as unreachable.
pub const READ_TIMEOUT: Duration = Duration::from_secs(1);
/// How long serving one read may take (a slow reader is cut off).
const SERVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Reads served at once; more are refused (the stream is dropped).
pub const MAX_SERVING: usize = 8;

/// Answers one events read on a stream a peer opened.
pub async fn serve(reader: EventReader, peer: String, mut send: SendStream, mut recv: RecvStream) {
    let result = tokio::time::timeout(SERVE_TIMEOUT, async {
        let req = read_message::<EventsRequest>(&mut recv, MAX_REQUEST_BYTES)
            .await
            .map_err(|e| format!("reading the request: {e}"))?
            .ok_or("the stream ended before the request")?;
        let limit = req.limit.min(MAX_EVENTS) as usize;
        let chunks = events::chunks(reader.after(req.after, limit)).map_err(|e| e.to_string())?;
        for chunk in &chunks {
            write_message(&mut send, chunk).await.map_err(|e| format!("writing events: {e}"))?;
        }
        send.finish().map_err(|e| e.to_string())?;
        Ok::<(), String>(())
    })
    .await;
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(%peer, "events read failed: {e}"),
        Err(_) => tracing::debug!(%peer, "events read timed out"),
    }
}

/// Reads `peer`'s events with `seq > after` (its newest [`MAX_EVENTS`]) within
/// [`READ_TIMEOUT`]. Every event is marked as the peer's, whose identity comes from its
/// certificate, whatever the bytes say.
pub async fn fetch(
    transport: &TransportHandle,
    addr: SocketAddr,
    peer: &NodeId,
    after: u64,
) -> Result<Vec<Event>, String> {
    let read = async {
        let (mut send, mut recv) =
            transport.open_bi(addr, Some(&peer.0), STREAM_EVENTS).await.map_err(|e| e.to_string())?;
        write_message(&mut send, &EventsRequest { after, limit: MAX_EVENTS })
            .await
            .map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        loop {
            let chunk = read_message::<EventsChunk>(&mut recv, MAX_MESSAGE)
                .await
                .map_err(|e| e.to_string())?
                .ok_or("the answer ended before its last chunk")?;
            out.extend(chunk.events);
            if out.len() > MAX_EVENTS as usize {
                return Err(format!("sent more than {MAX_EVENTS} events"));
            }
            if chunk.last {
                break;
            }
        }
        for e in &mut out {
            e.node.clone_from(&peer.0);
        }
        Ok(out)
    };
    tokio::time::timeout(READ_TIMEOUT, read).await.map_err(|_| "no answer in time".to_owned())?
}

/// Every live node's events past its cursor: this node's from its log, the peers' read
/// concurrently. Peers that fail or time out are listed as unreachable.
pub async fn gather(
    local: EventReader,
    transport: TransportHandle,
    peers: Vec<(NodeId, SocketAddr)>,
    after: BTreeMap<String, u64>,
) -> EventsAnswer {
    let cursor = |node: &str| after.get(node).copied().unwrap_or(0);
    let mut reads = JoinSet::new();
    for (peer, addr) in peers {
        let (transport, after) = (transport.clone(), cursor(&peer.0));
        reads.spawn(async move {
            let result = fetch(&transport, addr, &peer, after).await;
            (peer, after, result)
        });
    }
    let mut answer = EventsAnswer::default();
    let add = |node: &str, asked: u64, events: Vec<Event>, answer: &mut EventsAnswer| {
        let newest = events.iter().map(|e| e.seq).max().unwrap_or(asked).max(asked);
        answer.cursors.insert(node.to_owned(), newest);
        answer.events.extend(events);
    };
    let me = local.node().to_owned();
    add(&me, cursor(&me), local.after(cursor(&me), MAX_EVENTS as usize), &mut answer);
    while let Some(done) = reads.join_next().await {
        let Ok((peer, asked, result)) = done else { continue };
        match result {
            Ok(events) => add(&peer.0, asked, events, &mut answer),
            Err(e) => {
                tracing::debug!(%peer, "reading events: {e}");
                answer.unreachable.push(peer.0);
            }
        }
    }
    answer.unreachable.sort();
    answer.events.sort_by(|a, b| (a.last_ms, &a.node, a.seq).cmp(&(b.last_ms, &b.node, b.seq)));
    answer
}

/// A change in a peer's liveness, from one membership snapshot to the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    /// The peer became live; `returned` when this node had seen it dead or gone before.
    Live { node: NodeId, returned: bool },
    /// The peer is no longer live (dead, left or removed).
    Gone { node: NodeId },
}

impl Liveness {
    pub fn node(&self) -> &NodeId {
        match self {
            Liveness::Live { node, .. } | Liveness::Gone { node } => node,
        }
    }
}

/// Whether `me` records the event about `subject`: the node with the lowest id among the
/// live ones (itself included) other than the subject does, so the cluster shows one copy
/// while views agree.
pub fn records<'a>(me: &'a NodeId, live: impl IntoIterator<Item = &'a NodeId>, subject: &NodeId) -> bool {
    live.into_iter().chain([me]).filter(|n| *n != subject).min() == Some(me)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(names: &[&str]) -> Vec<NodeId> {
        names.iter().map(|n| NodeId((*n).to_owned())).collect()
    }

    #[test]
    fn only_the_lowest_other_live_node_records() {
        let [a, b, c] = ids(&["a", "b", "c"]).try_into().expect("three ids");
        // c died: a and b survive, a records.
        assert!(records(&a, &ids(&["b"]), &c));
        assert!(!records(&b, &ids(&["a"]), &c));
        // a died: b records.
        assert!(records(&b, &ids(&["c"]), &a));
        assert!(!records(&c, &ids(&["b"]), &a));
        // a (re)joins: the lowest other than a records it, never a itself.
        assert!(records(&b, &ids(&["a", "c"]), &a));
        assert!(!records(&a, &ids(&["b", "c"]), &a));
        // Alone, a node records what it sees.
        assert!(records(&a, &ids(&[]), &b));
    }
}
