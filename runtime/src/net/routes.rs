//! Routes to other nodes' pod ranges ("host-gw" mode).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::cmd::{self, ip};
use super::{check_prefix, network_of, Net, PEER_ROUTE_PROTOCOL};
use crate::error::Error;

/// Metric of peer's routes: a route to the same range that an administrator (or the
/// kernel, for a connected network) installed with a lower metric keeps winning, and
/// `ip route replace` never overwrites it.
const PEER_ROUTE_METRIC: &str = "50";

impl Net {
    /// Makes the routes marked with [`PEER_ROUTE_PROTOCOL`] exactly `routes`, each
    /// `(network, prefix_len, via)`: the pod range of another node through that node's
    /// address. Routes peer no longer wants are deleted; all others are left alone.
    ///
    /// This is "host-gw" mode: `via` must be directly reachable (nodes share an L2
    /// segment), because the kernel only accepts an on-link next hop and pod addresses
    /// travel unencapsulated. Nodes on different subnets or behind NAT need an overlay
    /// (VXLAN or WireGuard), which this does not provide; such a route fails with the
    /// kernel's "Nexthop has invalid gateway" and names the range.
    pub async fn set_peer_routes(&self, routes: &[(Ipv4Addr, u8, Ipv4Addr)]) -> Result<(), Error> {
        let mut want = BTreeMap::new();
        for &(net, len, via) in routes {
            let object = format!("route to {net}/{len}");
            check_prefix(&object, len)?;
            let dst = format!("{}/{len}", network_of(net, len));
            if let Some(other) = want.insert(dst.clone(), via) {
                if other != via {
                    let reason = format!("given twice, via {other} and via {via}");
                    return Err(Error::InvalidNet { object, reason });
                }
            }
        }
        self.run("peer routes".to_owned(), move || apply(&want)).await
    }
}

fn apply(want: &BTreeMap<String, Ipv4Addr>) -> Result<(), Error> {
    let proto = PEER_ROUTE_PROTOCOL.to_string();
    for route in cmd::ip_json("peer routes", &["route", "show", "proto", &proto])? {
        let Some(dst) = route["dst"].as_str() else { continue };
        // iproute2 prints a /32 without its length.
        let dst = if dst.contains('/') || dst == "default" { dst.to_owned() } else { format!("{dst}/32") };
        let via = route["gateway"].as_str().and_then(|g| g.parse::<Ipv4Addr>().ok());
        if want.get(&dst).is_some_and(|w| Some(*w) == via) {
            continue;
        }
        let metric = route["metric"].as_u64().map(|m| m.to_string()).unwrap_or_else(|| "0".into());
        ip(&format!("route to {dst}"), &["route", "del", &dst, "proto", &proto, "metric", &metric])?;
    }
    for (dst, via) in want {
        let via = via.to_string();
        let args = ["route", "replace", dst, "via", &via, "proto", &proto, "metric", PEER_ROUTE_METRIC];
        ip(&format!("route to {dst}"), &args)?;
    }
    Ok(())
}
