//! Node-to-node transport: one QUIC endpoint per node, mutual TLS against the cluster CA,
//! carrying chitchat gossip ([`QuicTransport`]), failure-detector probes (QUIC datagrams,
//! [`TransportHandle::send_probe`]), request/response streams for the node
//! ([`TransportHandle::open_bi`], [`Incoming`]) and the join handshake ([`join`]).
//!
//! The endpoint both dials and accepts on one UDP socket, so a peer's `remote_address()` is
//! its listen address, which is also its chitchat gossip address. Connections are cached per
//! address; whichever side dialed, both sides use the one connection they hold.
//!
//! Bytes from a peer are data, not trust: every read has a size limit and a deadline, and what
//! is malformed is counted in [`TransportStats`] and dropped. This module (with `membership`)
//! is the I/O edge of the `protocol` crate; the rest of the crate stays pure.

mod conn;
mod frame;
mod gossip;
mod join;
mod registry;
#[cfg(test)]
#[allow(clippy::unwrap_used)] // In tests a panic is the failure report.
pub(crate) mod tests;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use tokio::sync::mpsc;

pub use frame::{read_frame, read_message, write_frame, write_message, StreamError};
pub use gossip::QuicTransport;
pub use join::{join, CaJoinHandler, JoinError, JoinHandler, JoinRequest, JoinResponse};

use crate::tls::{self, NodeIdentity, RevocationList, TlsError};
use registry::Registry;

/// How long dialing a peer may take before it counts as unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// The largest gossip message accepted: chitchat's UDP payload cap plus room for framing.
pub const MAX_GOSSIP_BYTES: usize = 65_507 + 64;
/// How long a peer may take to send the first byte (the kind) of a stream it opened.
const STREAM_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of the transport. None changes the transport's state, except where a variant says
/// a connection was closed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The TLS configuration could not be built; nothing was started.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The UDP socket could not be bound; nothing was started.
    #[error("cannot bind quic endpoint on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    /// The peer did not answer within [`CONNECT_TIMEOUT`].
    #[error("connecting to {0} timed out")]
    ConnectTimeout(SocketAddr),
    /// The connection attempt or an established connection failed; a cached connection to
    /// the peer was dropped.
    #[error("connection to {addr} failed: {detail}")]
    Connection { addr: SocketAddr, detail: String },
    /// The peer at the address is another node than the one expected; the connection stays.
    #[error("peer at {addr} is node {found}, expected {expected}")]
    WrongNode { addr: SocketAddr, found: String, expected: String },
    /// Traffic to the peer is blocked by [`TransportHandle::set_blocked`].
    #[error("traffic to {0} is blocked")]
    Blocked(SocketAddr),
    /// Writing on a stream failed.
    #[error(transparent)]
    Stream(#[from] StreamError),
}

/// Counters of what the transport did and dropped; a snapshot of [`TransportHandle::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransportStats {
    pub gossip_sent: u64,
    pub gossip_received: u64,
    /// Outgoing gossip dropped: queue full, peer unreachable or blocked.
    pub gossip_dropped: u64,
    /// Incoming streams or gossip messages that broke a limit or arrived too slowly.
    pub bad_frames: u64,
    /// Connections refused or closed: no or bad certificate, blocked, wrong ALPN.
    pub refused_connections: u64,
    /// Incoming streams dropped because the node did not take them fast enough.
    pub streams_dropped: u64,
    /// Chitchat digests (Syn) not sent because nothing changed (see [`GossipGate`]).
    pub gossip_held: u64,
}

#[derive(Debug, Default)]
struct Counters {
    gossip_sent: AtomicU64,
    gossip_received: AtomicU64,
    gossip_dropped: AtomicU64,
    bad_frames: AtomicU64,
    refused_connections: AtomicU64,
    streams_dropped: AtomicU64,
    gossip_held: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// A stream a peer opened on an authenticated connection.
#[derive(Debug)]
pub struct IncomingStream {
    /// The peer's node id, from its certificate.
    pub node_id: String,
    /// The peer's address (its listen and gossip address).
    pub addr: SocketAddr,
    /// What the stream is for; the first byte the peer wrote. Meaning is the node's.
    pub kind: u8,
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
}

/// Receives the streams peers open; see [`TransportHandle::bind`].
pub type Incoming = mpsc::Receiver<IncomingStream>;

/// What a node needs to start its transport.
pub struct TransportConfig {
    /// Where to listen; port 0 picks one ([`TransportHandle::local_addr`] tells which).
    pub listen: SocketAddr,
    pub identity: NodeIdentity,
    /// Shared with the TLS verifiers: node ids refused from now on.
    pub revoked: RevocationList,
    /// Admits joiners on [`tls::ALPN_JOIN`]; `None` refuses every join.
    pub join_handler: Option<Arc<dyn JoinHandler>>,
    /// How many incoming streams may wait for the node before new ones are dropped.
    pub incoming_capacity: usize,
}

impl TransportConfig {
    pub fn new(listen: SocketAddr, identity: NodeIdentity) -> Self {
        Self {
            listen,
            identity,
            revoked: RevocationList::default(),
            join_handler: None,
            incoming_capacity: 64,
        }
    }
}

/// State shared by the handle and the connection tasks. It holds no endpoint, so the tasks
/// never keep the endpoint alive.
/// Gossip payloads from peers, with the peer's address.
type GossipRx = mpsc::Receiver<(SocketAddr, Vec<u8>)>;
/// A probe datagram from a peer: its address, its node id (from its certificate), the bytes.
pub type ProbeRx = mpsc::Receiver<(SocketAddr, String, Vec<u8>)>;

/// Decides which chitchat digests (Syn messages) go out. Chitchat sends a digest of every
/// node to 3 peers every round; with nothing new that is O(N) bytes per message for no news.
/// The gate lets a round's digests out while it is *open* (membership opens it for a few
/// rounds when any node's state changed, see [`crate::membership`]) and otherwise one
/// digest per anti-entropy interval, which repairs whatever the news rounds missed. Replies
/// (SynAck, Ack) always go out.
#[derive(Debug)]
pub struct GossipGate {
    state: Mutex<GateState>,
}

#[derive(Debug)]
struct GateState {
    open_until: Instant,
    next_anti_entropy: Instant,
    anti_entropy: Duration,
}

impl GossipGate {
    fn new() -> Self {
        let now = Instant::now();
        Self {
            state: Mutex::new(GateState {
                open_until: now,
                next_anti_entropy: now,
                anti_entropy: Duration::from_secs(1),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lets every digest out until `until`.
    pub fn open_until(&self, until: Instant) {
        let mut s = self.lock();
        s.open_until = s.open_until.max(until);
    }

    /// How often one digest goes out with nothing new; takes effect after the next one.
    pub fn set_anti_entropy(&self, every: Duration) {
        self.lock().anti_entropy = every;
    }

    /// Whether a digest may go out now.
    fn allow(&self, now: Instant) -> bool {
        let mut s = self.lock();
        if now < s.open_until {
            return true;
        }
        if now >= s.next_anti_entropy {
            s.next_anti_entropy = now + s.anti_entropy;
            return true;
        }
        false
    }
}

struct Shared {
    node_id: String,
    revoked: RevocationList,
    registry: Registry,
    blocked: RwLock<BTreeSet<SocketAddr>>,
    counters: Counters,
    incoming: mpsc::Sender<IncomingStream>,
    /// Gossip payloads received, for the chitchat socket; taken by [`QuicTransport`].
    gossip_tx: mpsc::Sender<(SocketAddr, Vec<u8>)>,
    gossip_rx: Mutex<Option<GossipRx>>,
    gate: GossipGate,
    /// Probe datagrams received, for the failure detector; taken by [`TransportHandle::probes`].
    probe_tx: mpsc::Sender<(SocketAddr, String, Vec<u8>)>,
    probe_rx: Mutex<Option<ProbeRx>>,
    join_handler: Option<Arc<dyn JoinHandler>>,
}

impl Shared {
    fn is_blocked(&self, addr: &SocketAddr) -> bool {
        self.blocked.read().unwrap_or_else(|e| e.into_inner()).contains(addr)
    }
}

struct Inner {
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    shared: Arc<Shared>,
    supervisor: tokio::task::JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.endpoint.close(quinn::VarInt::from_u32(0), b"shutdown");
        self.supervisor.abort();
    }
}

/// A node's QUIC endpoint. Cloning shares it; dropping the last clone closes it.
#[derive(Clone)]
pub struct TransportHandle {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TransportHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransportHandle").field("node_id", &self.inner.shared.node_id).finish()
    }
}

/// Connections to members stay open while both ends run: a new connection costs a TLS
/// handshake with two certificates (≈ 5 KB), more than a minute of a node's idle traffic, so
/// an idle connection only sends a keep-alive every 2 minutes (NAT bindings) and is closed
/// after 5 idle minutes. A vanished peer is found by the failure detector, which then
/// closes the connection ([`TransportHandle::close_peer`]): a process restarted at that
/// address cannot answer on it (its stateless resets are not recognised).
fn quic_transport_config() -> Arc<quinn::TransportConfig> {
    let mut config = quinn::TransportConfig::default();
    config.keep_alive_interval(Some(Duration::from_secs(120)));
    config.max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(300_000))));
    Arc::new(config)
}

fn client_quic_config(rustls_config: rustls::ClientConfig) -> Result<quinn::ClientConfig, TlsError> {
    let crypto = QuicClientConfig::try_from(rustls_config).map_err(|e| TlsError::Config(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(quic_transport_config());
    Ok(client)
}

impl TransportHandle {
    /// Binds the endpoint and starts accepting. Returns the handle and the receiver of
    /// streams peers open. Must run inside a tokio runtime.
    pub fn bind(config: TransportConfig) -> Result<(Self, Incoming), TransportError> {
        let server_tls = tls::server_config(&config.identity, &config.revoked)?;
        let crypto = QuicServerConfig::try_from(server_tls).map_err(|e| TlsError::Config(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server.transport_config(quic_transport_config());
        let client = client_quic_config(tls::client_config(&config.identity, &config.revoked)?)?;
        let endpoint = quinn::Endpoint::server(server, config.listen)
            .map_err(|source| TransportError::Bind { addr: config.listen, source })?;
        let (incoming_tx, incoming_rx) = mpsc::channel(config.incoming_capacity.max(1));
        let (gossip_tx, gossip_rx) = mpsc::channel(256);
        let (probe_tx, probe_rx) = mpsc::channel(256);
        let (conn_tx, conn_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            node_id: config.identity.node_id.clone(),
            revoked: config.revoked,
            registry: Registry::new(conn_tx),
            blocked: RwLock::default(),
            counters: Counters::default(),
            incoming: incoming_tx,
            gossip_tx,
            gossip_rx: Mutex::new(Some(gossip_rx)),
            gate: GossipGate::new(),
            probe_tx,
            probe_rx: Mutex::new(Some(probe_rx)),
            join_handler: config.join_handler,
        });
        let supervisor = tokio::spawn(conn::supervise(endpoint.clone(), shared.clone(), conn_rx));
        Ok((Self { inner: Arc::new(Inner { endpoint, client, shared, supervisor }) }, incoming_rx))
    }

    /// The address the endpoint listens on (and dials from).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.endpoint.local_addr()
    }

    /// This node's id, from its certificate.
    pub fn node_id(&self) -> &str {
        &self.inner.shared.node_id
    }

    /// The chitchat transport over this endpoint; chitchat may open it once.
    pub fn chitchat_transport(&self) -> QuicTransport {
        QuicTransport::new(self.clone())
    }

    /// Which chitchat digests go out; membership opens it when there is news.
    pub fn gossip_gate(&self) -> &GossipGate {
        &self.inner.shared.gate
    }

    /// The probe datagrams peers send; the failure detector may take them once.
    pub fn probes(&self) -> Option<ProbeRx> {
        self.inner.shared.probe_rx.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Sends one probe datagram to `addr`, dialing if needed and `dial` allows it:
    /// unreliable, like the UDP probes of SWIM, so a lost one is a failed probe.
    pub async fn send_probe(
        &self,
        addr: SocketAddr,
        bytes: Vec<u8>,
        dial: bool,
    ) -> Result<(), TransportError> {
        let shared = &self.inner.shared;
        let conn = match shared.registry.get(addr) {
            Some((conn, _)) if !shared.is_blocked(&addr) => conn,
            _ if dial => self.connection(addr, None).await?,
            _ => return Err(TransportError::Connection { addr, detail: "not connected".into() }),
        };
        conn.send_datagram(bytes.into()).map_err(|e| {
            if matches!(e, quinn::SendDatagramError::ConnectionLost(_)) {
                self.inner.shared.registry.forget(addr, &conn);
            }
            TransportError::Connection { addr, detail: e.to_string() }
        })
    }

    /// Whether a connection to `addr` is open.
    pub fn is_connected(&self, addr: SocketAddr) -> bool {
        self.inner.shared.registry.get(addr).is_some()
    }

    /// Dials `addr` unless a connection is open (within [`CONNECT_TIMEOUT`]).
    pub async fn connect(&self, addr: SocketAddr) -> Result<(), TransportError> {
        self.connection(addr, None).await.map(drop)
    }

    /// Closes the connection to `addr` (the peer died; a new process there gets a new one).
    pub fn close_peer(&self, addr: SocketAddr) {
        self.inner.shared.registry.close(addr, b"peer died");
    }

    /// Opens a bi-stream of `kind` to the peer at `addr` (dialing if needed). When
    /// `expected_node` is given, the peer must be that node.
    pub async fn open_bi(
        &self,
        addr: SocketAddr,
        expected_node: Option<&str>,
        kind: u8,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), TransportError> {
        let conn = self.connection(addr, expected_node).await?;
        let lost = |e: &dyn std::fmt::Display| {
            self.inner.shared.registry.forget(addr, &conn);
            TransportError::Connection { addr, detail: e.to_string() }
        };
        let (mut send, recv) = conn.open_bi().await.map_err(|e| lost(&e))?;
        send.write_all(&[kind]).await.map_err(|e| lost(&e))?;
        Ok((send, recv))
    }

    /// The cached connection to `addr`, or a new one dialed within [`CONNECT_TIMEOUT`].
    pub(crate) async fn connection(
        &self,
        addr: SocketAddr,
        expected_node: Option<&str>,
    ) -> Result<quinn::Connection, TransportError> {
        let shared = &self.inner.shared;
        if shared.is_blocked(&addr) {
            return Err(TransportError::Blocked(addr));
        }
        if let Some((conn, node)) = shared.registry.get(addr) {
            return match expected_node {
                Some(expected) if expected != node => {
                    Err(TransportError::WrongNode { addr, found: node, expected: expected.to_owned() })
                }
                _ => Ok(conn),
            };
        }
        let name = tls::server_name_for(expected_node);
        let failed = |detail: String| TransportError::Connection { addr, detail };
        let connecting = self
            .inner
            .endpoint
            .connect_with(self.inner.client.clone(), addr, &name)
            .map_err(|e| failed(e.to_string()))?;
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| TransportError::ConnectTimeout(addr))?
            .map_err(|e| failed(e.to_string()))?;
        let node =
            conn::peer_node_id(&conn).ok_or_else(|| failed("peer presented no node certificate".into()))?;
        Ok(shared.registry.insert(addr, conn, node))
    }

    /// Drops all traffic to and from these addresses from now on (a test hook for
    /// partitions); an empty set unblocks everything.
    pub fn set_blocked(&self, blocked: BTreeSet<SocketAddr>) {
        let shared = &self.inner.shared;
        for addr in &blocked {
            shared.registry.close(*addr, b"blocked");
        }
        *shared.blocked.write().unwrap_or_else(|e| e.into_inner()) = blocked;
    }

    /// Refuses `node_id` from now on and closes the connections to it.
    pub fn revoke(&self, node_id: &str) {
        self.inner.shared.revoked.insert(node_id);
        self.inner.shared.registry.close_node(node_id, b"revoked");
    }

    pub fn stats(&self) -> TransportStats {
        let c = &self.inner.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TransportStats {
            gossip_sent: get(&c.gossip_sent),
            gossip_received: get(&c.gossip_received),
            gossip_dropped: get(&c.gossip_dropped),
            bad_frames: get(&c.bad_frames),
            refused_connections: get(&c.refused_connections),
            streams_dropped: get(&c.streams_dropped),
            gossip_held: get(&c.gossip_held),
        }
    }

    /// Closes the endpoint and every connection now; later calls fail.
    pub fn close(&self) {
        self.inner.endpoint.close(quinn::VarInt::from_u32(0), b"shutdown");
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }
}
