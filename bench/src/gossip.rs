//! Idle gossip traffic with the real protocol code: N nodes, each a `TransportHandle` (QUIC,
//! mutual TLS) plus `Membership` (chitchat) on 127.0.0.1 in one tokio process, publishing
//! the keys a `peer up` node publishes (`digest`, `node`, `settings`).
//!
//! Bytes are counted on the wire by nftables counters that `scripts/bench-cluster` sets up
//! in a network namespace of its own (`--nft-table`): counter `quic` counts UDP packets from
//! the nodes' ports (every QUIC byte: gossip streams, handshakes, ACKs, keep-alives), counter
//! `codec` the loopback datagrams of the transport's in-process chitchat codec sockets
//! (encoder → sink and injector → decoder: each gossip payload once sent, once received),
//! which are not network traffic and are reported only to show the gossip payload share.
//! The lengths are IP packet lengths (20 bytes IPv4 + 8 bytes UDP header included).

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use protocol::membership::{Membership, MembershipConfig};
use protocol::tls::{issue_node_cert, ClusterCa, NodeIdentity};
use protocol::transport::{Incoming, TransportConfig, TransportHandle};

#[derive(Debug, Args)]
pub struct GossipArgs {
    /// Cluster sizes to measure, one after the other.
    #[arg(long, value_delimiter = ',', default_value = "5,20,50")]
    pub nodes: Vec<usize>,
    /// Node k listens on 127.0.0.1:(base_port + k).
    #[arg(long, default_value_t = 40_000)]
    pub base_port: u16,
    /// Seconds of idle traffic counted per size.
    #[arg(long, default_value_t = 30)]
    pub measure_secs: u64,
    /// Seconds to wait after all nodes are live everywhere, before counting: by 60 s every
    /// node of 50 has opened its connections to the others (one a second), as in a
    /// cluster that has run for a while.
    #[arg(long, default_value_t = 60)]
    pub settle_secs: u64,
    /// nftables table (`FAMILY NAME`) holding the named counters `quic` and `codec`.
    #[arg(long)]
    pub nft_table: Option<String>,
}

/// Packets and bytes of one nftables counter.
#[derive(Debug, Clone, Copy, Default)]
struct Count {
    packets: u64,
    bytes: u64,
}

fn nft_counter(table: &str, name: &str) -> anyhow::Result<Count> {
    let mut args: Vec<&str> = vec!["list", "counter"];
    args.extend(table.split_whitespace());
    args.push(name);
    let out = Command::new("nft").args(&args).output().context("running nft")?;
    if !out.status.success() {
        bail!("nft {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let words: Vec<&str> = text.split_whitespace().collect();
    let after = |key: &str| -> anyhow::Result<u64> {
        let i = words.iter().position(|w| *w == key).with_context(|| format!("no {key} in {text}"))?;
        words.get(i + 1).context("truncated nft output")?.parse().context("nft counter value")
    };
    Ok(Count { packets: after("packets")?, bytes: after("bytes")? })
}

struct Node {
    handle: TransportHandle,
    _incoming: Incoming,
    membership: Membership,
}

/// A `node` key of about 200 bytes, shaped like `peer up`'s NodeInfo.
fn node_value(name: &str) -> String {
    format!(
        "{{\"capacity\":{{\"cpu_millis\":2000,\"memory_mib\":3936,\"pods\":110}},\"labels\":{{\"kubernetes.io/hostname\":\"{name}\",\
         \"zone\":\"edge-a\"}},\"taints\":[],\"pods\":0,\"started_at_ms\":1764072000000,\"version\":\"0.1.0\"}}"
    )
}

/// A `settings` key of about 150 bytes: token, revocations.
fn settings_value() -> String {
    "{\"token\":\"peer1.3f9c2a7b5d1e4f60.9a8b7c6d5e4f30211f2e3d4c5b6a7988\",\"token_stamp\":[1,\"n0\",\
     7263541],\"revoked\":[],\"revoked_stamp\":[0,\"\",0]}"
        .to_owned()
}

async fn start_nodes(n: usize, base_port: u16) -> anyhow::Result<Vec<Node>> {
    let ca = ClusterCa::generate("bench")?;
    let first = SocketAddr::from(([127, 0, 0, 1], base_port));
    let mut nodes = Vec::with_capacity(n);
    for k in 0..n {
        let name = format!("n{k}");
        let identity = NodeIdentity::from_pem(&ca.cert_pem, &issue_node_cert(&ca, &name)?)?;
        let port = base_port.checked_add(u16::try_from(k)?).context("port out of range")?;
        let listen = SocketAddr::from(([127, 0, 0, 1], port));
        let (handle, incoming) = TransportHandle::bind(TransportConfig::new(listen, identity))
            .with_context(|| format!("binding {listen}"))?;
        let mut config = MembershipConfig::new("bench", &name, 1);
        if k > 0 {
            // Like `peer join` through the first node.
            config.seeds = vec![first];
        }
        let initial = vec![("node".to_owned(), node_value(&name)), ("settings".to_owned(), settings_value())];
        let membership = Membership::spawn(config, &handle, initial).await?;
        membership.set_self_key("digest", "5f0c3a9e12b47d86").await?;
        nodes.push(Node { handle, _incoming: incoming, membership });
    }
    Ok(nodes)
}

/// One cluster size: bytes per node per second while idle.
#[derive(Debug, Clone, Copy)]
struct Sample {
    nodes: usize,
    converge: Duration,
    secs: f64,
    quic: Count,
    codec: Option<Count>,
    gossip_messages: u64,
    dropped: u64,
    live_at_end: bool,
}

async fn measure(n: usize, args: &GossipArgs) -> anyhow::Result<Sample> {
    let start = Instant::now();
    let nodes = start_nodes(n, args.base_port).await?;
    let deadline = start + Duration::from_secs(120);
    while !nodes.iter().all(|node| node.membership.live_watcher().borrow().len() == n) {
        if Instant::now() > deadline {
            for node in &nodes {
                let m = node.membership.members().await;
                let dead: Vec<String> = m.dead.iter().map(|m| m.node_id.clone()).collect();
                eprintln!(
                    "{} sees {} live, not live: {:?}; {:?}",
                    node.membership.self_member().node_id,
                    m.live.len(),
                    dead,
                    node.handle.stats()
                );
            }
            bail!("{n} nodes: not all live everywhere within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let converge = start.elapsed();
    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    let read = |name: &str| match &args.nft_table {
        Some(t) => nft_counter(t, name).map(Some),
        None => Ok(None),
    };
    let sent = |nodes: &[Node]| {
        nodes
            .iter()
            .map(|x| x.handle.stats())
            .fold((0, 0), |a, s| (a.0 + s.gossip_sent, a.1 + s.gossip_dropped))
    };
    let (quic0, codec0, stats0) = (read("quic")?, read("codec")?, sent(&nodes));
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.measure_secs)).await;
    let (quic1, codec1, stats1) = (read("quic")?, read("codec")?, sent(&nodes));
    let secs = t0.elapsed().as_secs_f64();
    let live_at_end = nodes.iter().all(|node| node.membership.live_watcher().borrow().len() == n);
    if !live_at_end {
        for node in &nodes {
            let m = node.membership.members().await;
            if !m.dead.is_empty() {
                let dead: Vec<String> = m.dead.iter().map(|m| m.node_id.clone()).collect();
                eprintln!(
                    "at the end {} sees as not live: {:?}",
                    node.membership.self_member().node_id,
                    dead
                );
            }
        }
    }
    for node in &nodes {
        node.handle.close();
    }
    drop(nodes);
    let diff = |a: Option<Count>, b: Option<Count>| match (a, b) {
        (Some(a), Some(b)) => Some(Count { packets: b.packets - a.packets, bytes: b.bytes - a.bytes }),
        _ => None,
    };
    Ok(Sample {
        nodes: n,
        converge,
        secs,
        quic: diff(quic0, quic1).unwrap_or_default(),
        codec: diff(codec0, codec1),
        gossip_messages: stats1.0 - stats0.0,
        dropped: stats1.1 - stats0.1,
        live_at_end,
    })
}

pub fn main(args: &GossipArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let mut samples = Vec::new();
    for &n in &args.nodes {
        let s = rt.block_on(measure(n, args))?;
        eprintln!("{n} nodes: {s:?}");
        samples.push(s);
        // Let the closed endpoints' ports go before the next size reuses them.
        std::thread::sleep(Duration::from_secs(2));
    }
    print!("{}", markdown(&samples, args));
    Ok(())
}

fn markdown(samples: &[Sample], args: &GossipArgs) -> String {
    let mut out = format!(
        "Idle gossip, in-process nodes with the real transport + membership (chitchat rounds of 200 ms \
         behind the gossip gate, probes of the failure detector), {} s counted after all nodes were live everywhere + {} s; bytes = IP packet lengths on loopback; \
         per node = total sent ÷ nodes ÷ seconds (each node receives as much as it sends):\n\n",
        args.measure_secs, args.settle_secs
    );
    out.push_str(
        "| nodes | all live everywhere after | QUIC bytes sent per node per s | QUIC packets per node per s | \
         gossip messages per node per s | chitchat payload bytes per node per s | target |\n",
    );
    out.push_str("|---:|---:|---:|---:|---:|---:|---|\n");
    for s in samples {
        let per = |x: u64| x as f64 / s.nodes as f64 / s.secs;
        // Codec datagrams: each payload once into the sink (sent) and once into the decoder
        // (received), 28 bytes of headers each.
        let payload = s.codec.map_or("–".to_owned(), |c| {
            format!("{:.0}", (c.bytes.saturating_sub(28 * c.packets)) as f64 / 2.0 / s.nodes as f64 / s.secs)
        });
        out.push_str(&format!(
            "| {} | {:.1} s | {:.0} | {:.1} | {:.1} | {} | ≤ 2048 at 50 |\n",
            s.nodes,
            s.converge.as_secs_f64(),
            per(s.quic.bytes),
            per(s.quic.packets),
            per(s.gossip_messages),
            payload,
        ));
        if s.dropped > 0 || !s.live_at_end {
            out.push_str(&format!(
                "| | {} gossip messages dropped while counting; all live everywhere at the end: {} | | | | | |\n",
                s.dropped, s.live_at_end
            ));
        }
    }
    out
}
