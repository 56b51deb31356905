//! This node's part of the pod network: which range it holds (from the live peers'
//! claims, `network::Plan::choose_slot`), the address each new pod gets, and the kernel
//! state that follows from them (bridge, routes to the peers' ranges) through the runtime.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use runtime::net::{Net, NodeNet};

/// The newest value to program into the kernel, and the turn of the job applying it.
pub(super) type Latest<T> = std::sync::Arc<(std::sync::Mutex<T>, tokio::sync::Mutex<()>)>;

/// Programs `value` into the kernel with `apply` in a job. Jobs take turns and each
/// applies the newest value, so jobs that finish out of order never leave an older one.
fn apply_latest<T, F, Fut>(jobs: &mut tokio::task::JoinSet<()>, latest: &Latest<T>, value: T, apply: F)
where
    T: Clone + Send + 'static,
    F: FnOnce(T) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    *latest.0.lock().unwrap_or_else(|e| e.into_inner()) = value;
    let latest = latest.clone();
    jobs.spawn(async move {
        let _turn = latest.1.lock().await;
        let value = latest.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        apply(value).await;
    });
}

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
            apply_latest(&mut self.jobs, &self.latest_routes, routes, |routes| async move {
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

    /// The next free address of this node's range for a new pod (round, see `Plan::allocate`).
    pub(super) fn allocate_pod_ip(&mut self) -> Option<Ipv4Addr> {
        let slot = self.pod_slot()?;
        let used: BTreeSet<Ipv4Addr> = self.pods.values().filter_map(|p| p.ip).collect();
        let ip = self.cfg.net.allocate(slot, &used, self.last_ip)?;
        self.last_ip = Some(ip);
        Some(ip)
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

/// The DNS answers of a service table.
fn dns_records(table: &crate::services::ServiceTable) -> crate::dns::Records {
    use crate::dns::{Proto, ServicePort, ServiceRecord};
    let services = table
        .services
        .values()
        .map(|e| ServiceRecord {
            namespace: e.namespace.clone(),
            name: e.name.clone(),
            cluster_ip: e.cluster_ip,
            endpoints: e.endpoints.iter().filter(|p| p.ready).map(|p| p.ip).collect(),
            ports: e
                .ports
                .iter()
                .filter_map(|p| {
                    let proto = match p.protocol {
                        protocol::spec::Protocol::Tcp => Proto::Tcp,
                        protocol::spec::Protocol::Udp => Proto::Udp,
                    };
                    Some(ServicePort { name: p.name.clone()?, proto, port: p.port })
                })
                .collect(),
        })
        .collect();
    crate::dns::Records { domain: crate::dns::zone::DEFAULT_DOMAIN.to_owned(), services }
}

fn l4(p: protocol::spec::Protocol) -> runtime::net::L4 {
    match p {
        protocol::spec::Protocol::Tcp => runtime::net::L4::Tcp,
        protocol::spec::Protocol::Udp => runtime::net::L4::Udp,
    }
}

/// The kernel's forwarding rules for a service table and this node's pods' hostPorts.
fn forwarding(
    table: &crate::services::ServiceTable,
    pods: &std::collections::BTreeMap<String, crate::reconcile::ObservedPod>,
) -> runtime::net::Forwarding {
    use runtime::net::{Forwarding, HostPortRule, NodePortRule, VirtualService};
    let mut out = Forwarding::default();
    for e in table.services.values() {
        for (i, p) in e.ports.iter().enumerate() {
            let backends: Vec<(Ipv4Addr, u16)> = e.ready_backends(i).collect();
            if let Some(ip) = e.cluster_ip {
                out.virtual_ips.push(VirtualService {
                    ip,
                    port: p.port,
                    protocol: l4(p.protocol),
                    backends: backends.clone(),
                    client_ip_affinity: e.session_affinity,
                });
            }
            if let Some(port) = p.node_port {
                out.node_ports.push(NodePortRule { port, protocol: l4(p.protocol), backends });
            }
        }
    }
    for pod in pods.values().filter(|p| !p.deleting) {
        let Some(pod_ip) = pod.ip else { continue };
        for c in &pod.template.containers {
            for port in &c.ports {
                if let Some(host_port) = port.host_port {
                    out.host_ports.push(HostPortRule {
                        host_port,
                        protocol: l4(port.protocol),
                        pod_ip,
                        container_port: port.container_port,
                    });
                }
            }
        }
    }
    out
}

impl Agent {
    /// Brings the DNS answers and the kernel's service rules in step with the service
    /// table (services from the desired state, endpoints from every node's claims).
    pub(super) fn sync_services(&mut self) {
        if !self.network_up {
            return;
        }
        // Without services there is nothing to compute (host ports still are programmed).
        let table = if self.store.services().next().is_some() {
            self.service_table()
        } else {
            crate::services::ServiceTable::default()
        };
        let records = dns_records(&table);
        if **self.dns_records.borrow() != records {
            self.dns_records.send_replace(std::sync::Arc::new(records));
        }
        let rules = forwarding(&table, &self.pods);
        if rules != self.forwarding {
            tracing::info!(
                services = rules.virtual_ips.len(),
                node_ports = rules.node_ports.len(),
                host_ports = rules.host_ports.len(),
                "programming service rules"
            );
            self.forwarding = rules.clone();
            apply_latest(&mut self.jobs, &self.latest_rules, rules, |rules| async move {
                if let Err(e) = Net::host().set_forwarding(&rules).await {
                    tracing::error!("programming the service rules: {e}");
                }
            });
        }
    }
}
