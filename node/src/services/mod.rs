//! Every service's virtual address, ports and endpoints, computed the same way on every
//! node from the desired services and what is known of the pods. Pure: no I/O, no clock.
//!
//! Addresses and node ports that a manifest does not give are allocated in `alloc` by a
//! rule every node applies to the same set of services, in the order the services were
//! created (their creation stamps, which every node holds), so that a new service never
//! moves an existing one (PROTOCOL.md, "Service addresses").

mod alloc;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use protocol::spec::{ClusterIp, Protocol, Service, ServiceType, TargetPort};
use serde::{Deserialize, Serialize};

/// What the table needs to know of one pod, wherever it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub node: String,
    /// The pod's address; a pod without one is no endpoint.
    pub ip: Option<Ipv4Addr>,
    /// Kubernetes' Ready condition: only ready endpoints get traffic.
    pub ready: bool,
    pub labels: BTreeMap<String, String>,
    /// Its containers' ports: (name, number, protocol).
    pub ports: Vec<(Option<String>, u16, Protocol)>,
}

/// Every service, keyed by (namespace, name).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceTable {
    pub services: BTreeMap<(String, String), ServiceEntry>,
    /// Explicit addresses or node ports that could not be honoured (taken by an earlier
    /// service, or outside the range), one message each naming the service.
    pub conflicts: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEntry {
    pub namespace: String,
    pub name: String,
    pub kind: ServiceType,
    /// `None`: headless (or, with a conflict, no address was left in the CIDR).
    pub cluster_ip: Option<Ipv4Addr>,
    pub ports: Vec<PortEntry>,
    /// Matching pods with an address, by pod name.
    pub endpoints: Vec<EndpointEntry>,
    /// ClientIP affinity timeout in seconds; `None` without affinity.
    pub session_affinity: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortEntry {
    pub name: Option<String>,
    pub protocol: Protocol,
    pub port: u16,
    /// Set for every port of a NodePort service.
    pub node_port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointEntry {
    pub pod: String,
    pub node: String,
    pub ip: Ipv4Addr,
    pub ready: bool,
    /// Per service port (same order as `ServiceEntry::ports`), the pod's port for it.
    /// `None` where the port's `targetPort` names a container port this pod does not
    /// have (with that protocol): the pod is no endpoint for that port.
    pub target_ports: Vec<Option<u16>>,
}

impl ServiceEntry {
    /// What the service's DNS name resolves to: its cluster address, or for a headless
    /// service the addresses of its ready endpoints.
    pub fn dns_addresses(&self) -> Vec<Ipv4Addr> {
        match self.cluster_ip {
            Some(ip) => vec![ip],
            None => self.endpoints.iter().filter(|e| e.ready).map(|e| e.ip).collect(),
        }
    }

    /// kubectl's PORT(S) column: `80/TCP`, `80:30080/TCP`, comma separated.
    pub fn ports_column(&self) -> String {
        let cells: Vec<String> = self
            .ports
            .iter()
            .map(|p| {
                let proto = match p.protocol {
                    Protocol::Tcp => "TCP",
                    Protocol::Udp => "UDP",
                };
                match p.node_port {
                    Some(n) => format!("{}:{n}/{proto}", p.port),
                    None => format!("{}/{proto}", p.port),
                }
            })
            .collect();
        if cells.is_empty() {
            "<none>".to_owned()
        } else {
            cells.join(",")
        }
    }

    /// kubectl's ENDPOINTS column: ready `ip:port`s, the first three then `+ N more...`.
    pub fn endpoints_column(&self) -> String {
        let mut all: Vec<String> = Vec::new();
        for e in self.endpoints.iter().filter(|e| e.ready) {
            if e.target_ports.is_empty() {
                all.push(e.ip.to_string());
            }
            all.extend(e.target_ports.iter().flatten().map(|p| format!("{}:{p}", e.ip)));
        }
        match all.len() {
            0 => "<none>".to_owned(),
            n if n <= 3 => all.join(","),
            n => format!("{} + {} more...", all[..3].join(","), n - 3),
        }
    }

    /// Ready `(ip, port)` pairs of service port `i`: where its traffic goes.
    pub fn ready_backends(&self, i: usize) -> impl Iterator<Item = (Ipv4Addr, u16)> + '_ {
        self.endpoints
            .iter()
            .filter(|e| e.ready)
            .filter_map(move |e| Some((e.ip, (*e.target_ports.get(i)?)?)))
    }
}

/// The table of `services`, with endpoints from `pods`, addresses in `service_cidr`
/// (network address, prefix length). Every node computes the same table from the same
/// inputs; the order of `services` and `pods` does not matter.
pub fn table(services: &[&Service], pods: &[PodInfo], service_cidr: (Ipv4Addr, u8)) -> ServiceTable {
    let alloc = alloc::allocate(services, service_cidr);
    let mut out = ServiceTable { services: BTreeMap::new(), conflicts: alloc.conflicts };
    for s in services {
        let key = (s.key.namespace.clone(), s.key.name.clone());
        let ports = s
            .ports
            .iter()
            .enumerate()
            .map(|(i, p)| PortEntry {
                name: p.name.clone(),
                protocol: p.protocol,
                port: p.port,
                node_port: alloc.node_ports.get(&(key.clone(), i)).copied(),
            })
            .collect();
        let cluster_ip = match s.cluster_ip {
            ClusterIp::Headless => None,
            ClusterIp::Allocate | ClusterIp::Fixed(_) => alloc.cluster_ips.get(&key).copied(),
        };
        let entry = ServiceEntry {
            namespace: key.0.clone(),
            name: key.1.clone(),
            kind: s.service_type,
            cluster_ip,
            ports,
            endpoints: endpoints(s, pods),
            session_affinity: s.session_affinity,
        };
        out.services.insert(key, entry);
    }
    out
}

/// The pods `s` selects that have an address, each with its port per service port.
fn endpoints(s: &Service, pods: &[PodInfo]) -> Vec<EndpointEntry> {
    if s.selector.is_empty() {
        return Vec::new();
    }
    let mut out: Vec<EndpointEntry> = pods
        .iter()
        .filter(|p| p.namespace == s.key.namespace)
        .filter(|p| s.selector.iter().all(|(k, v)| p.labels.get(k) == Some(v)))
        .filter_map(|p| {
            let ip = p.ip?;
            let target_ports: Vec<Option<u16>> = s
                .ports
                .iter()
                .map(|sp| match &sp.target_port {
                    TargetPort::Number(n) => Some(*n),
                    TargetPort::Name(name) => p
                        .ports
                        .iter()
                        .find(|(n, _, proto)| n.as_deref() == Some(name) && *proto == sp.protocol)
                        .map(|(_, port, _)| *port),
                })
                .collect();
            // A pod that serves none of the ports is no endpoint at all.
            if !s.ports.is_empty() && target_ports.iter().all(Option::is_none) {
                return None;
            }
            Some(EndpointEntry {
                pod: p.name.clone(),
                node: p.node.clone(),
                ip,
                ready: p.ready,
                target_ports,
            })
        })
        .collect();
    out.sort_by(|a, b| a.pod.cmp(&b.pod));
    out
}
