//! This node's part of the pod network: which range it holds (from the live peers'
//! claims, `network::Plan::choose_slot`), the address each new pod gets, and the kernel
//! state that follows from them (bridge, routes to the peers' ranges) through the runtime.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use runtime::net::{Net, NodeNet};

use super::{now_ms, Agent};
use crate::network::SlotClaim;

impl Agent {
    /// The range this node holds, if pod networking is on and it took one.
    pub(super) fn pod_slot(&self) -> Option<u32> {
        self.cfg.pod_network.then(|| self.node.pod_range()).flatten().map(|c| c.slot)
    }

    /// Takes or keeps this node's pod range given the live peers' claims. When the node
    /// must move (a peer held the range first), its pods are stopped so they come back
    /// with addresses of the new range. Returns whether the range changed.
    pub(super) fn claim_pod_range(&mut self) -> bool {
        if !self.cfg.pod_network {
            return false;
        }
        let me = self.cluster.me().0.clone();
        let peers: Vec<(String, SlotClaim)> = self
            .cluster
            .live_peers()
            .filter_map(|p| Some((p.member.node_id.clone(), p.info.as_ref()?.pod_range?)))
            .collect();
        let peers: Vec<(&str, SlotClaim)> = peers.iter().map(|(id, c)| (id.as_str(), *c)).collect();
        let before = self.node.pod_range();
        let claim = match self.cfg.net.choose_slot(&me, before, &peers, now_ms()) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("pod network: {e}");
                self.events.warning(&format!("node/{me}"), "NetworkUnavailable", &e);
                return false;
            }
        };
        if before == Some(claim) {
            return false;
        }
        if let Err(e) = self.node.set_pod_range(claim) {
            tracing::error!("saving the pod range: {e:#}");
        }
        let range = self.cfg.net.node_range(claim.slot);
        match before {
            None => tracing::info!(%range, "took the pod range"),
            Some(old) => {
                let old = self.cfg.net.node_range(old.slot);
                tracing::warn!(%old, new = %range, "another node held this pod range first; moving, pods restart with new addresses");
                self.events.warning(
                    &format!("node/{me}"),
                    "PodRangeMoved",
                    &format!("pod range {old} was held by another node first; moved to {range}"),
                );
                let keys: Vec<String> = self
                    .pods
                    .iter()
                    .filter(|(_, p)| p.ip.is_some() && !p.deleting)
                    .map(|(k, _)| k.clone())
                    .collect();
                for key in keys {
                    let grace =
                        self.pods.get(&key).map_or(1, |p| p.template.termination_grace_period_seconds);
                    self.execute(crate::reconcile::Action::DeletePod {
                        pod: key,
                        grace: std::time::Duration::from_secs(grace),
                    });
                }
            }
        }
        true
    }

    /// After a membership change: keeps the pod range (publishing a move at once) and the
    /// routes to the peers' ranges in step with the live peers.
    pub(super) async fn sync_network(&mut self) {
        if self.claim_pod_range() {
            let info = self.node.info(self.started_at_ms, self.pods.len() as u32);
            self.cluster.publish(&self.store, Some(&info)).await;
            self.setup_network().await;
        }
        if !self.network_up {
            return;
        }
        let routes = self.peer_routes();
        if routes != self.routes {
            tracing::info!(?routes, "routes to the peers' pod ranges");
            self.routes = routes.clone();
            self.jobs.spawn(async move {
                if let Err(e) = Net::host().set_peer_routes(&routes).await {
                    tracing::error!("programming the routes to the peers' pod ranges: {e}");
                }
            });
        }
    }

    /// Sets up the node's bridge and NAT for its pod range (idempotent). On failure pods
    /// still run, with only their loopback, and the node says why.
    pub(super) async fn setup_network(&mut self) {
        let Some(slot) = self.pod_slot() else {
            self.network_up = false;
            return;
        };
        let plan = self.cfg.net;
        let node_net = NodeNet {
            bridge: NodeNet::DEFAULT_BRIDGE.to_owned(),
            gateway: plan.gateway(slot),
            prefix_len: plan.node_prefix,
            cluster_cidr: (plan.cluster.addr, plan.cluster.len),
            service_cidr: (plan.services.addr, plan.services.len),
        };
        match Net::host().setup_node_network(&node_net).await {
            Ok(()) => {
                tracing::info!(range = %plan.node_range(slot), bridge = %node_net.bridge, "pod network up");
                self.network_up = true;
                self.start_dns(node_net.gateway).await;
            }
            Err(e) => {
                let msg = format!("pod network setup failed, pods get only their loopback: {e}");
                tracing::error!("{msg}");
                let me = self.cluster.me().0.clone();
                self.events.warning(&format!("node/{me}"), "NetworkUnavailable", &msg);
                self.network_up = false;
            }
        }
    }

    /// Serves the cluster's names on the bridge address, port 53, where the pods' resolv.conf
    /// points; the records come from the service table (`self.dns_records`).
    async fn start_dns(&mut self, gateway: Ipv4Addr) {
        let listen = std::net::SocketAddr::from((gateway, 53));
        if self.dns.as_ref().is_some_and(|d| d.local_addrs().contains(&listen)) {
            return;
        }
        if let Some(old) = self.dns.take() {
            old.shutdown().await;
        }
        let upstream = crate::dns::Upstream::FromResolvConf("/etc/resolv.conf".into());
        match crate::dns::DnsServer::start(&[listen], upstream, self.dns_records.subscribe()).await {
            Ok(server) => {
                tracing::info!(%listen, "cluster DNS up");
                self.dns = Some(server);
            }
            Err(e) => {
                let msg = format!("cluster DNS could not start on {listen}: {e:#}");
                tracing::error!("{msg}");
                let me = self.cluster.me().0.clone();
                self.events.warning(&format!("node/{me}"), "DnsUnavailable", &msg);
            }
        }
    }

    /// The lowest free address of this node's range for a new pod.
    pub(super) fn allocate_pod_ip(&self) -> Option<Ipv4Addr> {
        let slot = self.pod_slot()?;
        let used: BTreeSet<Ipv4Addr> = self.pods.values().filter_map(|p| p.ip).collect();
        self.cfg.net.allocate(slot, &used)
    }

    /// Routes to every live peer's pod range through the peer's address (host-gw).
    pub(super) fn peer_routes(&self) -> Vec<(Ipv4Addr, u8, Ipv4Addr)> {
        let mut routes: Vec<(Ipv4Addr, u8, Ipv4Addr)> = self
            .cluster
            .live_peers()
            .filter_map(|p| {
                let slot = p.info.as_ref()?.pod_range?.slot;
                let IpAddr::V4(via) = p.member.gossip_addr.ip() else { return None };
                let range = self.cfg.net.node_range(slot);
                Some((range.addr, range.len, via))
            })
            .filter(|(net, _, _)| Some(*net) != self.pod_slot().map(|s| self.cfg.net.node_range(s).addr))
            .collect();
        routes.sort();
        routes
    }
}
