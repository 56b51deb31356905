//! The node's side of pod networking: the bridge, forwarding sysctls, the service range
//! route and the `ip peer` nftables table (outbound masquerade, forward accept).

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use super::cmd::{self, ip, nft, sysctl};
use super::{check_prefix, network_of, Net, NodeNet, NODE_ROUTE_PROTOCOL};
use crate::error::Error;

/// The nftables table `setup_node_network` owns.
pub(super) const NODE_TABLE: &str = "peer";

impl Net {
    /// Sets up the node's pod network; idempotent, safe on every agent start, after a
    /// crash and with pods attached:
    ///
    /// - the bridge `node.bridge` exists, is up and has exactly one IPv4 address,
    ///   `gateway/prefix_len` (another one, from before the node was re-numbered, is
    ///   removed; pods attached with old addresses must be attached again), and the MAC
    ///   address [`bridge_mac`]`(gateway)`, so that no pod joining or leaving changes it;
    /// - `net.ipv4.ip_forward=1`; on the bridge `route_localnet=1` (so connections to
    ///   `127.0.0.1:<nodePort>` can be DNATed to a pod) and `send_redirects=0`;
    /// - a route of the service range to the bridge with source `gateway` (protocol
    ///   [`NODE_ROUTE_PROTOCOL`]), so the node reaches virtual IPs without a default
    ///   route and pods can answer it;
    /// - the nftables table `ip peer`, replaced in one transaction: masquerade from the
    ///   cluster range to anywhere outside it; masquerade of DNATed connections from this
    ///   node's pods back onto the bridge (hairpin, and pod-to-service-to-pod on the same
    ///   bridge, whose replies would otherwise be bridged past conntrack) and from
    ///   `127.0.0.0/8`; reject (TCP reset, ICMP port unreachable) of connections to the
    ///   service range that no service rule matched; accept of forwarding to and from the
    ///   bridge.
    ///
    /// Limit: an accept in this table does not override a drop in another table (e.g. a
    /// firewall with a forward policy of drop); such a host must allow the bridge itself.
    pub async fn setup_node_network(&self, node: &NodeNet) -> Result<(), Error> {
        let object = format!("bridge {}", node.bridge);
        check_ifname(&object, &node.bridge)?;
        check_prefix(&object, node.prefix_len)?;
        check_prefix(&object, node.cluster_cidr.1)?;
        check_prefix(&object, node.service_cidr.1)?;
        let node = node.clone();
        self.run(object.clone(), move || setup(&object, &node)).await
    }
}

fn setup(object: &str, node: &NodeNet) -> Result<(), Error> {
    let bridge = node.bridge.as_str();
    let mac = bridge_mac(node.gateway);
    // The bridge as it was before this call; `None` when this call made it.
    let existing = match cmd::link(object, bridge)? {
        None => match ip(object, &["link", "add", "name", bridge, "address", &mac, "type", "bridge"]) {
            Ok(_) => None,
            // Another call may have created it meanwhile; the check below decides.
            Err(e) => Some(cmd::link(object, bridge)?.ok_or(e)?),
        },
        Some(link) if cmd::link_kind(&link) != Some("bridge") => {
            return Err(Error::InvalidNet {
                object: object.to_owned(),
                reason: format!("a link of kind {:?} already has this name", cmd::link_kind(&link)),
            })
        }
        Some(link) => Some(link),
    };
    // A bridge older than this rule, or one made by another call, gets its address now.
    if existing.is_some_and(|link| link["address"].as_str() != Some(mac.as_str())) {
        ip(object, &["link", "set", "dev", bridge, "address", &mac])?;
    }
    let want = (node.gateway, node.prefix_len);
    for (addr, len) in cmd::ipv4_addrs(object, bridge)? {
        if (addr, len) != want {
            ip(object, &["addr", "del", &format!("{addr}/{len}"), "dev", bridge])?;
        }
    }
    ip(object, &["addr", "replace", &format!("{}/{}", node.gateway, node.prefix_len), "dev", bridge])?;
    ip(object, &["link", "set", "dev", bridge, "up"])?;

    sysctl(object, "net/ipv4/ip_forward", "1")?;
    sysctl(object, &format!("net/ipv4/conf/{bridge}/route_localnet"), "1")?;
    sysctl(object, &format!("net/ipv4/conf/{bridge}/send_redirects"), "0")?;

    let proto = NODE_ROUTE_PROTOCOL.to_string();
    let service = format!("{}/{}", network_of(node.service_cidr.0, node.service_cidr.1), node.service_cidr.1);
    for route in cmd::ip_json(object, &["route", "show", "proto", &proto])? {
        let dst = route["dst"].as_str().unwrap_or_default();
        let dev = route["dev"].as_str().unwrap_or_default();
        if dst != service || dev != bridge {
            ip(object, &["route", "del", dst, "dev", dev, "proto", &proto])?;
        }
    }
    let gateway = node.gateway.to_string();
    ip(object, &["route", "replace", &service, "dev", bridge, "src", &gateway, "proto", &proto])?;

    nft(&format!("{object}: nftables table ip {NODE_TABLE}"), &node_table(node))
}

/// The bridge's MAC address: `0a:58` and the four bytes of its IPv4 address, the
/// locally administered address Kubernetes' bridge plugins give a node bridge (unique per
/// node, since each node has its own range).
///
/// Why it is set at all: a Linux bridge without an address of its own takes the lowest
/// MAC address of its ports, so it changes whenever the pod with the lowest one joins or
/// leaves. The pods keep the old address for their gateway in their neighbour tables for
/// many seconds, and once its port is gone nothing delivers frames sent to it: every
/// packet the node's other pods send off the bridge is lost until the node happens to
/// ask them for their own addresses again. A reply in flight when a pod was stopped was
/// lost that way, and its client saw a read time-out (`tests/rollout.rs`).
pub fn bridge_mac(gateway: Ipv4Addr) -> String {
    let [a, b, c, d] = gateway.octets();
    format!("0a:58:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

/// The whole `ip peer` table as one `nft -f` transaction that replaces it. Pure.
pub(super) fn node_table(node: &NodeNet) -> String {
    let cidr = |(addr, len): (Ipv4Addr, u8)| format!("{}/{len}", network_of(addr, len));
    let cluster = cidr(node.cluster_cidr);
    let service = cidr(node.service_cidr);
    let local = cidr((node.gateway, node.prefix_len));
    let bridge = &node.bridge;
    let mut s = String::new();
    // Creating the table first makes the delete valid on the first run too.
    let _ = writeln!(s, "table ip {NODE_TABLE} {{}}\ndelete table ip {NODE_TABLE}\ntable ip {NODE_TABLE} {{");
    let _ = writeln!(s, "  chain postrouting {{\n    type nat hook postrouting priority 100; policy accept;");
    let _ = writeln!(s, "    ip saddr {cluster} ip daddr != {cluster} masquerade");
    let _ = writeln!(s, "    oifname \"{bridge}\" ip saddr {local} ct status dnat masquerade");
    let _ = writeln!(s, "    ip saddr 127.0.0.0/8 ct status dnat masquerade\n  }}");
    for (chain, hook) in [("forward", "forward"), ("output", "output")] {
        let _ = writeln!(s, "  chain {chain} {{\n    type filter hook {hook} priority 0; policy accept;");
        let _ = writeln!(s, "    ip daddr {service} meta l4proto tcp reject with tcp reset");
        let _ = writeln!(s, "    ip daddr {service} reject");
        if chain == "forward" {
            let _ = writeln!(s, "    iifname \"{bridge}\" accept\n    oifname \"{bridge}\" accept");
        }
        let _ = writeln!(s, "  }}");
    }
    s.push_str("}\n");
    s
}

/// Checks an interface name: 1 to 15 bytes of letters, digits, `-`, `_`, `.`.
pub(super) fn check_ifname(object: &str, name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        return Ok(());
    }
    Err(Error::InvalidNet {
        object: object.to_owned(),
        reason: format!("interface name {name:?} must be 1 to 15 letters, digits, '-', '_' or '.'"),
    })
}

#[cfg(test)]
mod tests {
    use expect_test::expect;

    use super::*;

    #[test]
    fn table() {
        let node = NodeNet {
            bridge: "peer0".into(),
            gateway: Ipv4Addr::new(10, 42, 7, 1),
            prefix_len: 24,
            cluster_cidr: (Ipv4Addr::new(10, 42, 0, 0), 16),
            service_cidr: (Ipv4Addr::new(10, 43, 0, 0), 16),
        };
        expect![[r#"
            table ip peer {}
            delete table ip peer
            table ip peer {
              chain postrouting {
                type nat hook postrouting priority 100; policy accept;
                ip saddr 10.42.0.0/16 ip daddr != 10.42.0.0/16 masquerade
                oifname "peer0" ip saddr 10.42.7.0/24 ct status dnat masquerade
                ip saddr 127.0.0.0/8 ct status dnat masquerade
              }
              chain forward {
                type filter hook forward priority 0; policy accept;
                ip daddr 10.43.0.0/16 meta l4proto tcp reject with tcp reset
                ip daddr 10.43.0.0/16 reject
                iifname "peer0" accept
                oifname "peer0" accept
              }
              chain output {
                type filter hook output priority 0; policy accept;
                ip daddr 10.43.0.0/16 meta l4proto tcp reject with tcp reset
                ip daddr 10.43.0.0/16 reject
              }
            }
        "#]]
        .assert_eq(&node_table(&node));
    }

    #[test]
    fn bridge_macs_are_locally_administered_unicast_and_differ_per_node() {
        expect![["0a:58:0a:2a:07:01"]].assert_eq(&bridge_mac(Ipv4Addr::new(10, 42, 7, 1)));
        let first = u8::from_str_radix(&bridge_mac(Ipv4Addr::new(10, 42, 7, 1))[..2], 16).expect("hex");
        assert_eq!(first & 0b10, 0b10, "locally administered");
        assert_eq!(first & 0b1, 0, "unicast");
        assert_ne!(bridge_mac(Ipv4Addr::new(10, 42, 7, 1)), bridge_mac(Ipv4Addr::new(10, 42, 8, 1)));
    }

    #[test]
    fn interface_names() {
        assert!(check_ifname("x", "peer0").is_ok());
        for bad in ["", "a-name-too-long-x", "a b", "a\"b"] {
            assert!(check_ifname("x", bad).is_err(), "{bad:?}");
        }
    }
}
