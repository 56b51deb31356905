//! Chitchat's `Transport`/`Socket` over the node's QUIC endpoint: one uni stream per gossip
//! message.
//!
//! Chitchat's envelope encoding is crate-private (NOTES.md), so chitchat's own public
//! `transport::UdpSocket` on 127.0.0.1 is the codec:
//! - send: an *encoder* `UdpSocket` sends the envelope to a private loopback *sink* socket,
//!   whose datagram is the encoded bytes; they go to the peer's bounded queue.
//! - receive: bytes from peer P are sent from a loopback *injector* socket that belongs to P
//!   alone into the *decoder* `UdpSocket`, so the decoder's `from_addr` names P without
//!   ambiguity, even when chitchat drops a datagram as invalid (it logs and skips those).
//!
//! Digests (Syn) go out only through the [`super::GossipGate`]; replies always do.
//!
//! `Socket::send` never blocks on the network: a naive inline connect to a dead peer stalled
//! chitchat's loop and caused false deaths (NOTES.md). Each peer has a task with a bounded
//! queue (`try_send`, drop when full), a connect timeout and a reconnect backoff.

use std::collections::{btree_map, BTreeMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport, UdpSocket};
use chitchat::{ChitchatEnvelope, ChitchatMessage};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{bump, TransportHandle};

/// Messages queued per peer before new ones are dropped.
const PEER_QUEUE: usize = 16;
/// How long sending one message (after connecting) may take.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);
/// Reconnect backoff after a failed send: doubles from the first to the last value.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(2));
const LOOPBACK: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

/// Chitchat's transport over a [`TransportHandle`]. Open it once per handle.
pub struct QuicTransport {
    handle: TransportHandle,
}

impl QuicTransport {
    pub(super) fn new(handle: TransportHandle) -> Self {
        Self { handle }
    }
}

#[async_trait::async_trait]
impl Transport for QuicTransport {
    /// `listen_addr` must be the endpoint's own address: QUIC already listens there.
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let local = self.handle.local_addr()?;
        anyhow::ensure!(
            listen_addr == local,
            "chitchat listen address {listen_addr} differs from the quic endpoint {local}"
        );
        let gossip_rx = self
            .handle
            .shared()
            .gossip_rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .context("the quic gossip socket is already open")?;
        let encoder = UdpSocket::open(LOOPBACK).await?;
        let sink = tokio::net::UdpSocket::bind(LOOPBACK).await.context("cannot bind gossip codec socket")?;
        let decoder = UdpSocket::open(LOOPBACK).await?;
        let origins = Arc::new(Mutex::new(BTreeMap::new()));
        let mut tasks = JoinSet::new();
        tasks.spawn(inject(gossip_rx, decoder.local_addr()?, origins.clone()));
        Ok(Box::new(QuicSocket {
            handle: self.handle.clone(),
            encoder_addr: encoder.local_addr()?,
            encoder,
            sink,
            sink_buf: vec![0u8; super::MAX_GOSSIP_BYTES],
            decoder,
            origins,
            peers: BTreeMap::new(),
            tasks,
        }))
    }
}

/// Loopback injector address → the peer whose bytes it injects.
type Origins = Arc<Mutex<BTreeMap<SocketAddr, SocketAddr>>>;

struct QuicSocket {
    handle: TransportHandle,
    encoder: UdpSocket,
    encoder_addr: SocketAddr,
    sink: tokio::net::UdpSocket,
    sink_buf: Vec<u8>,
    decoder: UdpSocket,
    origins: Origins,
    peers: BTreeMap<SocketAddr, mpsc::Sender<Vec<u8>>>,
    /// The injector and the per-peer senders; dropping the socket stops them.
    tasks: JoinSet<()>,
}

#[async_trait::async_trait]
impl Socket for QuicSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.handle.local_addr()?)
    }

    async fn send(&mut self, to: SocketAddr, envelope: ChitchatEnvelope) -> anyhow::Result<SendOutcome> {
        let is_digest = matches!(envelope.message, ChitchatMessage::Syn { .. });
        if is_digest && !self.handle.shared().gate.allow(std::time::Instant::now()) {
            bump(&self.handle.shared().counters.gossip_held);
            return Ok(SendOutcome { num_bytes_sent: 0 });
        }
        self.encoder.send(self.sink.local_addr()?, envelope).await?;
        let bytes = self.encoded().await?;
        let num_bytes_sent = bytes.len();
        if self.peers.get(&to).is_none_or(mpsc::Sender::is_closed) {
            let (tx, rx) = mpsc::channel(PEER_QUEUE);
            self.tasks.spawn(send_loop(self.handle.clone(), to, rx));
            self.peers.insert(to, tx);
        }
        let queued = self.peers.get(&to).is_some_and(|queue| queue.try_send(bytes).is_ok());
        if !queued {
            bump(&self.handle.shared().counters.gossip_dropped);
        }
        Ok(SendOutcome { num_bytes_sent })
    }

    /// Cancel-safe: the decoder's receive is, and the lookup after it does not await.
    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            let mut outcome = self.decoder.recv().await?;
            let origin =
                self.origins.lock().unwrap_or_else(|e| e.into_inner()).get(&outcome.from_addr).copied();
            // A datagram from any other loopback socket is not from a peer: skip it.
            if let Some(peer) = origin {
                outcome.from_addr = peer;
                return Ok(outcome);
            }
        }
    }
}

impl QuicSocket {
    /// The datagram the encoder just sent to the sink: the envelope's bytes.
    async fn encoded(&mut self) -> anyhow::Result<Vec<u8>> {
        let deadline = Instant::now() + Duration::from_millis(200);
        loop {
            let (len, from) = tokio::time::timeout_at(deadline, self.sink.recv_from(&mut self.sink_buf))
                .await
                .context("gossip codec socket lost a datagram")??;
            // Anything not from our encoder is some other local process: ignore it.
            if from == self.encoder_addr {
                return Ok(self.sink_buf[..len].to_vec());
            }
        }
    }
}

/// Sends one peer's queued messages, each on its own uni stream.
async fn send_loop(handle: TransportHandle, to: SocketAddr, mut rx: mpsc::Receiver<Vec<u8>>) {
    let counters = &handle.shared().counters;
    let mut backoff = BACKOFF.0;
    let mut retry_at = Instant::now();
    while let Some(bytes) = rx.recv().await {
        if Instant::now() < retry_at || handle.shared().is_blocked(&to) {
            bump(&counters.gossip_dropped);
            continue;
        }
        match send_one(&handle, to, &bytes).await {
            Ok(()) => {
                bump(&counters.gossip_sent);
                backoff = BACKOFF.0;
            }
            Err(_) => {
                bump(&counters.gossip_dropped);
                retry_at = Instant::now() + backoff;
                backoff = (backoff * 2).min(BACKOFF.1);
            }
        }
    }
}

async fn send_one(handle: &TransportHandle, to: SocketAddr, bytes: &[u8]) -> anyhow::Result<()> {
    let conn = handle.connection(to, None).await?;
    let write = async {
        let mut stream = conn.open_uni().await?;
        stream.write_all(bytes).await?;
        stream.finish()?;
        anyhow::Ok(())
    };
    match tokio::time::timeout(SEND_TIMEOUT, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            handle.shared().registry.forget(to, &conn);
            Err(e)
        }
        Err(_) => anyhow::bail!("sending gossip to {to} timed out"),
    }
}

/// Re-sends each peer's gossip bytes into the decoder from that peer's own loopback socket.
async fn inject(mut rx: mpsc::Receiver<(SocketAddr, Vec<u8>)>, decoder: SocketAddr, origins: Origins) {
    let mut injectors: BTreeMap<SocketAddr, tokio::net::UdpSocket> = BTreeMap::new();
    while let Some((peer, bytes)) = rx.recv().await {
        if let btree_map::Entry::Vacant(slot) = injectors.entry(peer) {
            let Ok(socket) = tokio::net::UdpSocket::bind(LOOPBACK).await else { continue };
            let Ok(addr) = socket.local_addr() else { continue };
            origins.lock().unwrap_or_else(|e| e.into_inner()).insert(addr, peer);
            slot.insert(socket);
        }
        if let Some(socket) = injectors.get(&peer) {
            // Loopback UDP can drop under pressure; gossip tolerates loss.
            let _ = socket.send_to(&bytes, decoder).await;
        }
    }
}
