//! The DNS server inside every agent: cluster service names, and forwarding for the rest.
//!
//! Containers use it through their `/etc/resolv.conf` (nameserver = the node's bridge
//! address, search `NS.svc.ZONE svc.ZONE ZONE`, `options ndots:5`), so short names reach
//! it already expanded and it only answers fully qualified names.
//!
//! - Names in the cluster domain are answered from the latest [`Records`] snapshot of a
//!   `watch` channel, authoritatively, following the Kubernetes DNS specification
//!   ([`zone`]); a name that does not exist is NXDOMAIN. They are never forwarded.
//! - Everything else goes to the node's own resolvers ([`Upstream`]): an upstream failure
//!   is SERVFAIL, no upstream at all is REFUSED.
//!
//! [`hickory_server::Server`] owns the sockets and one task per listener (their request
//! tasks live in the listeners' `JoinSet`s); [`DnsServer::shutdown`] cancels and joins them
//! all, and dropping the server aborts them. UDP answers larger than the client's buffer
//! (512 bytes, or its EDNS size up to [`MAX_UDP_PAYLOAD`]) are truncated with the TC bit
//! set, so the client retries over TCP.

mod handler;
mod upstream;
pub mod zone;

#[cfg(test)]
mod tests;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hickory_server::Server;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;

use handler::Handler;

/// The largest UDP answer sent, whatever the client's EDNS buffer says: the DNS flag day
/// 2020 value, which avoids IP fragmentation.
pub const MAX_UDP_PAYLOAD: u16 = 1232;

/// What the server answers for the cluster domain; replaced whole on every change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Records {
    /// The cluster domain, e.g. `cluster.local`; an invalid one falls back to
    /// [`zone::DEFAULT_DOMAIN`].
    pub domain: String,
    pub services: Vec<ServiceRecord>,
}

/// One service of the cluster, as DNS sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRecord {
    pub namespace: String,
    pub name: String,
    /// `None` for a headless service, whose name resolves to its ready endpoints.
    pub cluster_ip: Option<Ipv4Addr>,
    /// Ready endpoints: the A records of a headless service and its SRV targets.
    pub endpoints: Vec<Ipv4Addr>,
    /// Named ports, each answered as `_NAME._PROTO.SVC.NS.svc.ZONE` SRV; unnamed ports
    /// have no SRV record and are left out.
    pub ports: Vec<ServicePort>,
}

/// A named service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub name: String,
    pub proto: Proto,
    pub port: u16,
}

/// A port's transport protocol, the `_tcp`/`_udp` label of its SRV name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

/// Where names outside the cluster domain are resolved.
#[derive(Clone, Debug)]
pub enum Upstream {
    /// The `nameserver` lines of this file (the node's `/etc/resolv.conf`), on port 53,
    /// re-read at most every 5 s so a DHCP change is picked up. Loopback stubs such as
    /// systemd-resolved's 127.0.0.53 are fine: the server runs in the node's namespace.
    FromResolvConf(PathBuf),
    Servers(Vec<SocketAddr>),
    /// Answer only the cluster domain; everything else is REFUSED.
    None,
}

/// Limits; [`Tuning::default`] suits an agent.
#[derive(Clone, Debug)]
pub struct Tuning {
    /// How long one upstream server gets to answer before the next one is tried.
    pub upstream_timeout: Duration,
    /// Forwarded questions in flight at once; past it, questions get SERVFAIL at once.
    pub max_forwarding: usize,
    /// A TCP connection that sends no question for this long is closed.
    pub tcp_idle_timeout: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            upstream_timeout: Duration::from_secs(2),
            max_forwarding: 256,
            tcp_idle_timeout: Duration::from_secs(10),
        }
    }
}

/// A running DNS server; see the module documentation.
pub struct DnsServer {
    server: Server<Handler>,
    local: Vec<SocketAddr>,
}

impl DnsServer {
    /// Binds UDP and TCP on each address (e.g. `10.42.7.1:53`, or `127.0.0.1:0` in tests,
    /// where UDP and TCP get the same ephemeral port) and serves until shut down or dropped.
    ///
    /// Fails if an address cannot be bound, e.g. the bridge does not have it yet.
    pub async fn start(
        listen: &[SocketAddr],
        upstream: Upstream,
        records: watch::Receiver<Arc<Records>>,
    ) -> anyhow::Result<DnsServer> {
        Self::start_with(listen, upstream, records, Tuning::default()).await
    }

    /// [`DnsServer::start`] with explicit limits.
    pub async fn start_with(
        listen: &[SocketAddr],
        upstream: Upstream,
        records: watch::Receiver<Arc<Records>>,
        tuning: Tuning,
    ) -> anyhow::Result<DnsServer> {
        let mut sockets = Vec::with_capacity(listen.len());
        for &addr in listen {
            sockets.push(bind(addr).await?);
        }
        let local: Vec<SocketAddr> = sockets.iter().map(|(_, _, addr)| *addr).collect();
        let handler = Handler::new(records, upstream, &local, &tuning);
        let mut server = Server::new(handler);
        for (udp, tcp, _) in sockets {
            server.register_socket(udp);
            // The response buffer counts messages queued per connection, not bytes.
            server.register_listener(tcp, tuning.tcp_idle_timeout, 16);
        }
        tracing::info!(addresses = ?local, "dns server listening");
        Ok(DnsServer { server, local })
    }

    /// The bound addresses, in the order given to [`DnsServer::start`], with the actual
    /// port where port 0 was asked for.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local
    }

    /// Stops accepting, cancels the listener tasks and waits for them to end.
    pub async fn shutdown(mut self) {
        if let Err(error) = self.server.shutdown_gracefully().await {
            tracing::warn!(%error, "dns server ended with an error");
        }
    }
}

/// Binds UDP and TCP on `addr`; for port 0, TCP takes the port UDP got, retrying a few
/// times in case another process holds that TCP port.
async fn bind(addr: SocketAddr) -> anyhow::Result<(UdpSocket, TcpListener, SocketAddr)> {
    const ATTEMPTS: usize = 8;
    for _ in 0..ATTEMPTS {
        let udp =
            (UdpSocket::bind(addr).await).with_context(|| format!("binding dns udp socket on {addr}"))?;
        let bound = udp.local_addr().with_context(|| format!("reading address of {addr}"))?;
        match TcpListener::bind(bound).await {
            Ok(tcp) => return Ok((udp, tcp, bound)),
            Err(error) if addr.port() == 0 && error.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(error) => return Err(error).with_context(|| format!("binding dns tcp listener on {bound}")),
        }
    }
    anyhow::bail!("no port free for both udp and tcp on {addr} after {ATTEMPTS} attempts")
}
