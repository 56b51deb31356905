//! The connections a node holds, one per peer address, shared by dialing and accepting.
//!
//! A connection enters through [`Registry::insert`], which also hands it to the supervisor
//! task that serves the peer's streams on it. Two nodes that dial each other at once end up
//! with two connections; both are served. A dialed connection is kept only if none is open
//! for the address; an accepted one replaces what is held (the peer may have restarted).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use tokio::sync::mpsc;

type Entry = (quinn::Connection, String);

pub(super) struct Registry {
    conns: Mutex<BTreeMap<SocketAddr, Entry>>,
    serve: mpsc::UnboundedSender<Entry>,
}

impl Registry {
    pub(super) fn new(serve: mpsc::UnboundedSender<Entry>) -> Self {
        Self { conns: Mutex::default(), serve }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<SocketAddr, Entry>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The open connection to `addr` and the peer's node id.
    pub(super) fn get(&self, addr: SocketAddr) -> Option<Entry> {
        let mut conns = self.lock();
        match conns.get(&addr) {
            Some((conn, _)) if conn.close_reason().is_some() => {
                conns.remove(&addr);
                None
            }
            other => other.cloned(),
        }
    }

    /// Registers a new connection, has it served, and returns the one to use for `addr`.
    pub(super) fn insert(
        &self,
        addr: SocketAddr,
        conn: quinn::Connection,
        node: String,
    ) -> quinn::Connection {
        // The supervisor is gone only when the endpoint shuts down; then nothing is served.
        let _ = self.serve.send((conn.clone(), node.clone()));
        let mut conns = self.lock();
        match conns.get(&addr) {
            Some((current, _)) if current.close_reason().is_none() => current.clone(),
            _ => {
                conns.insert(addr, (conn.clone(), node));
                conn
            }
        }
    }

    /// Registers a connection the peer at `addr` just dialed, has it served, and makes it
    /// the one used for `addr`: a peer that dials anew may have restarted, and the
    /// connection held to its old process would only fail at its idle timeout.
    pub(super) fn insert_accepted(&self, addr: SocketAddr, conn: quinn::Connection, node: String) {
        let _ = self.serve.send((conn.clone(), node.clone()));
        self.lock().insert(addr, (conn, node));
    }

    /// Drops `conn` from the registry if it is the one held for `addr`.
    pub(super) fn forget(&self, addr: SocketAddr, conn: &quinn::Connection) {
        let mut conns = self.lock();
        if conns.get(&addr).is_some_and(|(c, _)| c.stable_id() == conn.stable_id()) {
            conns.remove(&addr);
        }
    }

    /// Closes and drops the connection to `addr`.
    pub(super) fn close(&self, addr: SocketAddr, reason: &[u8]) {
        if let Some((conn, _)) = self.lock().remove(&addr) {
            conn.close(quinn::VarInt::from_u32(2), reason);
        }
    }

    /// Closes and drops the connections to `node`.
    pub(super) fn close_node(&self, node: &str, reason: &[u8]) {
        self.lock().retain(|_, (conn, n)| {
            if n == node {
                conn.close(quinn::VarInt::from_u32(2), reason);
            }
            n != node
        });
    }
}
