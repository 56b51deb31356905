//! The endpoint's tasks: one supervisor loop that accepts connections and owns a task per
//! connection; each connection task routes the peer's uni streams (gossip), datagrams
//! (probes) and bi-streams (the node's streams, or the join exchange).
//!
//! A [`tls::ALPN_PEER`] connection without a client certificate is closed at once: the TLS
//! layer lets it through because the join ALPN shares the server config.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::debug;

use super::{bump, join, IncomingStream, Shared, MAX_GOSSIP_BYTES, STREAM_HEADER_TIMEOUT};
use crate::tls;

/// How long a peer may take to finish the handshake or to send one gossip message.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Close codes sent to peers.
const CLOSE_REFUSED: u32 = 1;

enum Event {
    Accepted(Option<Box<quinn::Incoming>>),
    Serve(Option<(quinn::Connection, String)>),
    TaskDone,
}

/// Accepts connections and serves registered ones until the endpoint closes.
pub(super) async fn supervise(
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    mut serve_rx: mpsc::UnboundedReceiver<(quinn::Connection, String)>,
) {
    let mut tasks = JoinSet::new();
    loop {
        let event = tokio::select! {
            incoming = endpoint.accept() => Event::Accepted(incoming.map(Box::new)),
            conn = serve_rx.recv() => Event::Serve(conn),
            Some(_) = tasks.join_next(), if !tasks.is_empty() => Event::TaskDone,
        };
        match event {
            Event::Accepted(Some(incoming)) => {
                tasks.spawn(accept(shared.clone(), *incoming));
            }
            Event::Serve(Some((conn, node))) => {
                tasks.spawn(serve_peer(shared.clone(), conn, node));
            }
            Event::Accepted(None) | Event::Serve(None) => break,
            Event::TaskDone => {}
        }
    }
}

/// The node id in the peer's certificate, if it presented one.
pub(super) fn peer_node_id(conn: &quinn::Connection) -> Option<String> {
    let certs = conn.peer_identity()?.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    tls::node_id_of(certs.first()?).ok()
}

fn alpn(conn: &quinn::Connection) -> Option<Vec<u8>> {
    conn.handshake_data()?.downcast::<quinn::crypto::rustls::HandshakeData>().ok()?.protocol
}

fn refuse(shared: &Shared, conn: &quinn::Connection, reason: &[u8]) {
    bump(&shared.counters.refused_connections);
    conn.close(quinn::VarInt::from_u32(CLOSE_REFUSED), reason);
}

async fn accept(shared: Arc<Shared>, incoming: quinn::Incoming) {
    let addr = incoming.remote_address();
    if shared.is_blocked(&addr) {
        bump(&shared.counters.refused_connections);
        incoming.refuse();
        return;
    }
    let conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            // Bad certificates (another CA, revoked) end here, refused by the verifier.
            debug!(%addr, error = %e, "handshake failed");
            bump(&shared.counters.refused_connections);
            return;
        }
        Err(_) => {
            bump(&shared.counters.refused_connections);
            return;
        }
    };
    match alpn(&conn).as_deref() {
        Some(tls::ALPN_PEER) => match peer_node_id(&conn) {
            Some(node) => shared.registry.insert_accepted(addr, conn, node),
            None => refuse(&shared, &conn, b"client certificate required"),
        },
        Some(tls::ALPN_JOIN) => join::serve(&shared, conn).await,
        _ => refuse(&shared, &conn, b"unknown alpn"),
    }
}

async fn serve_peer(shared: Arc<Shared>, conn: quinn::Connection, node: String) {
    let addr = conn.remote_address();
    let mut streams = JoinSet::new();
    loop {
        tokio::select! {
            uni = conn.accept_uni() => match uni {
                // A node revoked while connected (e.g. over a second, unregistered connection
                // from a simultaneous dial) is cut off at its next stream.
                Ok(_) if shared.revoked.contains(&node) => {
                    refuse(&shared, &conn, b"revoked");
                    break;
                }
                Ok(recv) => { streams.spawn(read_gossip(shared.clone(), conn.clone(), recv)); }
                Err(_) => break,
            },
            bi = conn.accept_bi() => match bi {
                Ok(_) if shared.revoked.contains(&node) => {
                    refuse(&shared, &conn, b"revoked");
                    break;
                }
                Ok((send, recv)) => {
                    streams.spawn(route_stream(shared.clone(), addr, node.clone(), send, recv));
                }
                Err(_) => break,
            },
            datagram = conn.read_datagram() => match datagram {
                Ok(_) if shared.revoked.contains(&node) => {
                    refuse(&shared, &conn, b"revoked");
                    break;
                }
                Ok(bytes) => probe(&shared, addr, &node, &bytes),
                Err(_) => break,
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
        }
    }
    shared.registry.forget(addr, &conn);
}

/// Reads one gossip message (a whole uni stream) and hands it to the chitchat socket.
async fn read_gossip(shared: Arc<Shared>, conn: quinn::Connection, mut recv: quinn::RecvStream) {
    let addr = conn.remote_address();
    let bytes = match tokio::time::timeout(HANDSHAKE_TIMEOUT, recv.read_to_end(MAX_GOSSIP_BYTES)).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(quinn::ReadToEndError::TooLong)) => {
            // Chitchat never sends more than a UDP payload: this peer is broken or hostile.
            bump(&shared.counters.bad_frames);
            refuse(&shared, &conn, b"gossip message too long");
            return;
        }
        Ok(Err(_)) | Err(_) => {
            bump(&shared.counters.bad_frames);
            return;
        }
    };
    if shared.is_blocked(&addr) {
        return;
    }
    bump(&shared.counters.gossip_received);
    if shared.gossip_tx.try_send((addr, bytes)).is_err() {
        // Chitchat is not running or is behind; gossip tolerates loss.
        bump(&shared.counters.gossip_dropped);
    }
}

/// Hands a probe datagram to the failure detector (dropped when it is behind: probes
/// tolerate loss, a lost one is a failed probe).
fn probe(shared: &Shared, addr: SocketAddr, node: &str, bytes: &[u8]) {
    if shared.is_blocked(&addr) {
        return;
    }
    if bytes.len() > crate::detector::MAX_PROBE_BYTES {
        bump(&shared.counters.bad_frames);
        return;
    }
    let _ = shared.probe_tx.try_send((addr, node.to_owned(), bytes.to_vec()));
}

/// Reads the stream's kind byte and hands the stream to the node.
async fn route_stream(
    shared: Arc<Shared>,
    addr: SocketAddr,
    node_id: String,
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    if shared.is_blocked(&addr) {
        return;
    }
    let mut kind = [0u8; 1];
    match tokio::time::timeout(STREAM_HEADER_TIMEOUT, recv.read_exact(&mut kind)).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) | Err(_) => {
            bump(&shared.counters.bad_frames);
            return;
        }
    }
    let stream = IncomingStream { node_id, addr, kind: kind[0], send, recv };
    if shared.incoming.try_send(stream).is_err() {
        bump(&shared.counters.streams_dropped);
    }
}
