//! Pod networking on one node: a bridge with the node's pod range, veth pairs into pod
//! network namespaces, routes to other nodes' ranges, and kernel NAT rules for services,
//! NodePorts and hostPorts.
//!
//! A pod's link, addresses and routes are programmed over route netlink (`rtnl`: one
//! socket per namespace, no process per step, since a pod start is on the hot path); the
//! node's own bridge and routes with iproute2's `ip`, NAT and filter rules with `nft -f -`
//! (one atomic transaction per change). `ip` and `nft` are on every Linux node peer
//! targets, their behaviour is stable, and an error carries the command and its stderr.
//! Everything peer programs is recognisable as its own: the bridge, `vp…` veth names,
//! routes with peer's `rtm_protocol` numbers, and the nftables tables `ip peer` and
//! `ip peer_svc`; other tables, routes and links are never read for decisions or changed.
//!
//! Architecture invariant: plain data in, plain data out; nothing here knows what a
//! Service or a cluster is.

mod cmd;
mod forward;
mod node;
mod pod;
mod routes;
mod rtnl;

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};

use crate::error::Error;

pub use forward::{Forwarding, HostPortRule, NodePortRule, VirtualService, L4};
pub use node::bridge_mac;
pub use pod::host_veth_name;

/// `rtm_protocol` of the routes `setup_node_network` adds (the service range to the bridge).
pub const NODE_ROUTE_PROTOCOL: u8 = 193;
/// `rtm_protocol` of the routes `set_peer_routes` manages (other nodes' pod ranges).
pub const PEER_ROUTE_PROTOCOL: u8 = 194;
/// Packet mark bit that asks peer's postrouting chain to masquerade a connection
/// (set on NodePort connections, whose backend may be on another node).
pub const MASQUERADE_MARK: u32 = 0x0004_0000;

/// The node's pod network: its bridge and address ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeNet {
    /// Name of the bridge, e.g. `peer0` (at most 15 bytes).
    pub bridge: String,
    /// The bridge's address and the pods' default gateway, e.g. `10.42.7.1`.
    pub gateway: Ipv4Addr,
    /// Prefix length of this node's pod range, e.g. 24.
    pub prefix_len: u8,
    /// The pod ranges of the whole cluster, e.g. `10.42.0.0/16`: traffic from it to
    /// anywhere else is masqueraded behind the node's address.
    pub cluster_cidr: (Ipv4Addr, u8),
    /// The virtual service range, e.g. `10.43.0.0/16`: routed to the bridge so the node
    /// itself can reach services; unmatched connections to it are rejected.
    pub service_cidr: (Ipv4Addr, u8),
}

impl NodeNet {
    /// The default bridge name.
    pub const DEFAULT_BRIDGE: &'static str = "peer0";
}

/// A handle on the network namespace in which the node's network lives.
///
/// `Net::host()` is the namespace of the calling process (the agent's: the host's).
/// `Net::in_netns(path)` works inside the namespace bind-mounted at `path` instead,
/// which is how tests build throw-away "hosts". Every call runs on a short-lived
/// thread of its own that joins the namespace first (`setns` moves only the calling
/// thread), so no tokio thread ever changes namespace. Calls are idempotent and may run
/// concurrently for different pods.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Net {
    netns: Option<PathBuf>,
}

impl Net {
    /// The caller's own network namespace.
    pub fn host() -> Net {
        Net { netns: None }
    }

    /// The network namespace bind-mounted (or `/proc/PID/ns/net`) at `path`.
    pub fn in_netns(path: impl Into<PathBuf>) -> Net {
        Net { netns: Some(path.into()) }
    }

    /// Runs `work` on a new thread inside this handle's namespace and waits for it
    /// without blocking the async runtime.
    async fn run<T, F>(&self, object: String, work: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, Error> + Send + 'static,
    {
        let netns = self.netns.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let thread_object = object.clone();
        std::thread::Builder::new()
            .name("peer-net".into())
            .spawn(move || {
                let result = match &netns {
                    Some(path) => enter(path).map_err(|e| Error::Net {
                        object: thread_object,
                        command: format!("setns {}", path.display()),
                        message: e.to_string(),
                    }),
                    None => Ok(()),
                };
                let _ = tx.send(result.and_then(|()| work()));
            })
            .map_err(|e| Error::Net {
                object: object.clone(),
                command: "spawn thread".into(),
                message: e.to_string(),
            })?;
        rx.await.map_err(|_| Error::Net {
            object,
            command: "net thread".into(),
            message: "ended without an answer".into(),
        })?
    }
}

/// Moves the calling thread into the network namespace at `path`.
pub(crate) fn enter(path: &Path) -> std::io::Result<()> {
    let ns = File::open(path)?;
    setns(&ns, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
}

/// `a.b.c.d/len` of the network that contains `addr`.
pub(crate) fn network_of(addr: Ipv4Addr, len: u8) -> Ipv4Addr {
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len.min(32))) };
    Ipv4Addr::from(u32::from(addr) & mask)
}

/// Checks a prefix length.
pub(crate) fn check_prefix(object: &str, len: u8) -> Result<(), Error> {
    if len > 32 {
        return Err(Error::InvalidNet {
            object: object.to_owned(),
            reason: format!("prefix length {len} is over 32"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks() {
        assert_eq!(network_of(Ipv4Addr::new(10, 42, 7, 9), 24), Ipv4Addr::new(10, 42, 7, 0));
        assert_eq!(network_of(Ipv4Addr::new(10, 42, 7, 9), 0), Ipv4Addr::UNSPECIFIED);
        assert_eq!(network_of(Ipv4Addr::new(10, 42, 7, 9), 32), Ipv4Addr::new(10, 42, 7, 9));
    }
}
