//! Forwarding to the node's own resolvers: which servers (resolv.conf), and one exchange.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use hickory_proto::op::{Message, MessageType, ResponseCode};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::Instant;

use super::Upstream;

/// How long a read of resolv.conf is trusted before it is read again.
const RELOAD: Duration = Duration::from_secs(5);
/// Receive buffer for UDP answers; upstreams are told our EDNS size is smaller.
const UDP_BUFFER: usize = 4096;

/// The upstream servers, with resolv.conf re-read lazily.
pub struct Upstreams {
    source: Upstream,
    /// Our own listen addresses, never forwarded to (a resolv.conf naming this server
    /// would make a loop).
    own: Vec<SocketAddr>,
    cached: Mutex<Option<(Instant, Arc<[SocketAddr]>)>>,
}

impl Upstreams {
    pub fn new(source: Upstream, own: &[SocketAddr]) -> Upstreams {
        Upstreams { source, own: own.to_vec(), cached: Mutex::new(None) }
    }

    /// The servers to try, in order; empty means there is no upstream.
    pub async fn servers(&self) -> Arc<[SocketAddr]> {
        let path = match &self.source {
            Upstream::None => return Arc::from([]),
            Upstream::Servers(servers) => return self.without_own(servers.iter().copied()),
            Upstream::FromResolvConf(path) => path,
        };
        if let Some((read_at, servers)) = &*self.lock() {
            if read_at.elapsed() < RELOAD {
                return servers.clone();
            }
        }
        let servers = match read_resolv_conf(path).await {
            Ok(servers) => self.without_own(servers.into_iter()),
            Err(error) => {
                tracing::warn!(error = format!("{error:#}"), "dns upstreams unknown");
                Arc::from([])
            }
        };
        *self.lock() = Some((Instant::now(), servers.clone()));
        servers
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Instant, Arc<[SocketAddr]>)>> {
        // The cache is replaced whole, so a poisoned lock still holds a valid value.
        self.cached.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn without_own(&self, servers: impl Iterator<Item = SocketAddr>) -> Arc<[SocketAddr]> {
        let is_own = |server: &SocketAddr| {
            self.own.iter().any(|own| {
                own.port() == server.port()
                    && (own.ip() == server.ip() || (own.ip().is_unspecified() && server.ip().is_loopback()))
            })
        };
        servers.filter(|server| !is_own(server)).collect()
    }
}

async fn read_resolv_conf(path: &PathBuf) -> anyhow::Result<Vec<SocketAddr>> {
    let text =
        (tokio::fs::read_to_string(path).await).with_context(|| format!("reading {}", path.display()))?;
    Ok(parse_resolv_conf(&text))
}

/// The `nameserver` addresses of a resolv.conf, on port 53. Scoped IPv6 addresses
/// (`fe80::1%eth0`) are skipped: the scope names an interface we cannot look up here.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    (text.lines())
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "nameserver").then_some(())?;
            let ip: IpAddr = words.next()?.parse().ok()?;
            Some(SocketAddr::new(ip, 53))
        })
        .collect()
}

/// Sends `query` to each server in turn until one answers with something other than
/// SERVFAIL or REFUSED; `None` if none does (the caller answers SERVFAIL).
pub async fn forward(servers: &[SocketAddr], query: &Message, timeout: Duration) -> Option<Message> {
    let bytes = match query.to_vec() {
        Ok(bytes) => bytes,
        Err(error) => {
            tracing::debug!(%error, "encoding a forwarded dns query");
            return None;
        }
    };
    for &server in servers {
        match tokio::time::timeout(timeout, exchange(server, query, &bytes)).await {
            Ok(Ok(answer)) => match answer.metadata.response_code {
                ResponseCode::ServFail | ResponseCode::Refused => {
                    tracing::debug!(%server, code = %answer.metadata.response_code, "dns upstream failed");
                }
                _ => return Some(answer),
            },
            Ok(Err(error)) => {
                tracing::debug!(%server, error = format!("{error:#}"), "dns upstream failed");
            }
            Err(_) => tracing::debug!(%server, "dns upstream timed out"),
        }
    }
    None
}

/// One question to one server over UDP, retried over TCP if the answer is truncated.
async fn exchange(server: SocketAddr, query: &Message, bytes: &[u8]) -> anyhow::Result<Message> {
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await.context("binding a udp socket")?;
    // Connected, so the kernel drops datagrams from anyone but the server.
    socket.connect(server).await.with_context(|| format!("connecting to {server}"))?;
    socket.send(bytes).await.with_context(|| format!("sending to {server}"))?;
    let mut buffer = vec![0; UDP_BUFFER];
    let answer = loop {
        let len = socket.recv(&mut buffer).await.with_context(|| format!("receiving from {server}"))?;
        // Anything that is not the answer to this question is dropped, not trusted.
        match Message::from_vec(&buffer[..len]) {
            Ok(answer) if answers(query, &answer) => break answer,
            _ => continue,
        }
    };
    if !answer.metadata.truncation {
        return Ok(answer);
    }
    let mut stream = TcpStream::connect(server).await.with_context(|| format!("connecting to {server}"))?;
    let len = u16::try_from(bytes.len()).context("query too long for tcp")?;
    let mut framed = Vec::with_capacity(bytes.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(bytes);
    stream.write_all(&framed).await.with_context(|| format!("sending to {server} over tcp"))?;
    let len = stream.read_u16().await.with_context(|| format!("receiving from {server} over tcp"))?;
    let mut buffer = vec![0; usize::from(len)];
    stream.read_exact(&mut buffer).await.with_context(|| format!("receiving from {server} over tcp"))?;
    let answer = Message::from_vec(&buffer).with_context(|| format!("decoding an answer from {server}"))?;
    anyhow::ensure!(answers(query, &answer), "{server} answered another question over tcp");
    Ok(answer)
}

/// Whether `answer` is the response to `query`: same id, a response, same question.
fn answers(query: &Message, answer: &Message) -> bool {
    answer.metadata.id == query.metadata.id
        && answer.metadata.message_type == MessageType::Response
        && answer.queries == query.queries
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_nameservers_in_order() {
        let text = "# generated\nsearch lan\nnameserver 127.0.0.53\n nameserver\t192.168.1.1 # router\n\
                    nameserver fe80::1%eth0\nnameserver 2001:db8::53\nnameserver bogus\noptions edns0\n";
        let servers: Vec<String> = parse_resolv_conf(text).iter().map(ToString::to_string).collect();
        assert_eq!(servers, ["127.0.0.53:53", "192.168.1.1:53", "[2001:db8::53]:53"]);
    }

    #[tokio::test]
    async fn our_own_addresses_are_never_upstreams() {
        let own: Vec<SocketAddr> =
            vec!["10.42.7.1:53".parse().expect("valid"), "0.0.0.0:5353".parse().expect("valid")];
        let given = ["10.42.7.1:53", "127.0.0.1:5353", "127.0.0.53:53", "10.42.7.1:5353"];
        let given = given.iter().map(|s| s.parse().expect("valid")).collect();
        let upstreams = Upstreams::new(Upstream::Servers(given), &own);
        let servers: Vec<String> = upstreams.servers().await.iter().map(ToString::to_string).collect();
        assert_eq!(servers, ["127.0.0.53:53", "10.42.7.1:5353"]);
    }
}
