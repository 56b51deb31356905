//! Cluster addresses and node ports: the allocation rule every node applies.
//!
//! Services are taken in creation order (`Service::created`, then key). Each keeps what
//! it asks for when it is free — an explicit `clusterIP` or `nodePort` — else gets the
//! first free value probing linearly from FNV-1a of its name. As an earlier service
//! never depends on a later one, **a service never moves because of one created after
//! it** (PROTOCOL.md). A request that is taken or out of range is a conflict: the service
//! gets an allocated value instead, and the conflict is reported.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use protocol::spec::service::NODE_PORT_RANGE;
use protocol::spec::{fnv1a64, ClusterIp, Protocol, Service, ServiceType};

/// Addresses of the service CIDR kept free: the network address and the next 10 (the
/// DNS service's address among them, by convention `.10`).
pub(super) const RESERVED: u32 = 11;

type Key = (String, String);

#[derive(Debug, Default)]
pub(super) struct Allocation {
    pub cluster_ips: BTreeMap<Key, Ipv4Addr>,
    /// (service, index of the port) → node port.
    pub node_ports: BTreeMap<(Key, usize), u16>,
    pub conflicts: Vec<String>,
}

pub(super) fn allocate(services: &[&Service], (net, bits): (Ipv4Addr, u8)) -> Allocation {
    let mut order: Vec<&Service> = services.to_vec();
    // A service without a creation stamp (not written yet) comes after all written ones.
    order.sort_by(|a, b| {
        (a.created.is_none(), &a.created, &a.key).cmp(&(b.created.is_none(), &b.created, &b.key))
    });
    let bits = u32::from(bits.min(32));
    let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
    let base = u32::from(net) & mask;
    let size = u64::from(!mask) + 1;
    // Usable for allocation: past the reserved addresses, before the broadcast address.
    let (first, count) = (u64::from(RESERVED), size.saturating_sub(u64::from(RESERVED) + 1));
    let ip_at = |offset: u64| Ipv4Addr::from(base + offset as u32);
    let node_first = u64::from(*NODE_PORT_RANGE.start());
    let node_count = u64::from(*NODE_PORT_RANGE.end()) - node_first + 1;

    let mut out = Allocation::default();
    let mut ips = BTreeSet::new();
    let mut node_ports = BTreeSet::new();
    for s in order {
        let key = (s.key.namespace.clone(), s.key.name.clone());
        let name = format!("{}/{}", key.0, key.1);
        let wanted = match s.cluster_ip {
            ClusterIp::Headless => None,
            ClusterIp::Allocate => Some(None),
            ClusterIp::Fixed(ip) => {
                let host = u32::from(ip) & !mask;
                let inside = u32::from(ip) & mask == base && host != 0 && host != !mask;
                if !inside {
                    out.conflicts.push(format!("service {name}: clusterIP {ip} is outside the service CIDR {net}/{bits}; allocated another"));
                    Some(None)
                } else if ips.contains(&ip) {
                    out.conflicts.push(format!(
                        "service {name}: clusterIP {ip} is taken by an earlier service; allocated another"
                    ));
                    Some(None)
                } else {
                    Some(Some(ip))
                }
            }
        };
        let ip = match wanted {
            None => None,
            Some(Some(ip)) => Some(ip),
            Some(None) => {
                let found = probe(fnv1a64(name.as_bytes()), count, |o| !ips.contains(&ip_at(first + o)));
                if found.is_none() {
                    out.conflicts.push(format!("service {name}: no free address left in {net}/{bits}"));
                }
                found.map(|o| ip_at(first + o))
            }
        };
        if let Some(ip) = ip {
            ips.insert(ip);
            out.cluster_ips.insert(key.clone(), ip);
        }
        if s.service_type != ServiceType::NodePort {
            continue;
        }
        for (i, p) in s.ports.iter().enumerate() {
            let explicit = p.node_port.filter(|n| {
                let free = !node_ports.contains(n);
                if !free {
                    out.conflicts.push(format!(
                        "service {name}: nodePort {n} is taken by an earlier service; allocated another"
                    ));
                }
                free
            });
            let proto = match p.protocol {
                Protocol::Tcp => "tcp",
                Protocol::Udp => "udp",
            };
            let seed = fnv1a64(format!("{name}/{}/{proto}", p.port).as_bytes());
            let port = explicit.or_else(|| {
                let found = probe(seed, node_count, |o| !node_ports.contains(&((node_first + o) as u16)));
                if found.is_none() {
                    out.conflicts.push(format!("service {name}: no free node port left"));
                }
                found.map(|o| (node_first + o) as u16)
            });
            if let Some(port) = port {
                node_ports.insert(port);
                out.node_ports.insert((key.clone(), i), port);
            }
        }
    }
    out
}

/// The first offset in `0..count`, from `hash % count` on and wrapping, that is `free`.
fn probe(hash: u64, count: u64, free: impl Fn(u64) -> bool) -> Option<u64> {
    if count == 0 {
        return None;
    }
    let start = hash % count;
    (0..count).map(|i| (start + i) % count).find(|o| free(*o))
}
