//! Service, NodePort and hostPort forwarding: kernel DNAT in the nftables table
//! `ip peer_svc`, in the style of kube-proxy's nftables mode, replaced in one transaction.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::cmd::nft;
use super::{Net, MASQUERADE_MARK};
use crate::error::Error;

/// The nftables table `set_forwarding` owns.
pub(super) const SERVICE_TABLE: &str = "peer_svc";

/// Transport protocol of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum L4 {
    Tcp,
    Udp,
}

impl L4 {
    fn nft(self) -> &'static str {
        match self {
            L4::Tcp => "tcp",
            L4::Udp => "udp",
        }
    }
}

/// Everything the node forwards; [`Net::set_forwarding`] makes the kernel's rules exactly this.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forwarding {
    pub virtual_ips: Vec<VirtualService>,
    pub node_ports: Vec<NodePortRule>,
    pub host_ports: Vec<HostPortRule>,
}

/// Connections to `ip:port` go to one of `backends`, chosen at random per connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtualService {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub protocol: L4,
    /// No backends: connections are refused (TCP reset, ICMP port unreachable).
    pub backends: Vec<(Ipv4Addr, u16)>,
    /// Keep sending a client address to the same backend while it connects again within
    /// this many seconds (Kubernetes `sessionAffinity: ClientIP`).
    pub client_ip_affinity: Option<u32>,
}

/// Connections to `port` on any of the node's addresses go to one of `backends`; they
/// are masqueraded, so replies come back through this node when the backend is elsewhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePortRule {
    pub port: u16,
    pub protocol: L4,
    /// No backends: connections are refused.
    pub backends: Vec<(Ipv4Addr, u16)>,
}

/// Connections to `host_port` on any of the node's addresses go to `pod_ip:container_port`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPortRule {
    pub host_port: u16,
    pub protocol: L4,
    pub pod_ip: Ipv4Addr,
    pub container_port: u16,
}

impl Net {
    /// Replaces the table `ip peer_svc` with rules for `forwarding`, atomically (one
    /// `nft -f -` transaction): a connection sees either the old rules or the new ones.
    ///
    /// DNAT happens in `prerouting` (traffic from pods and other hosts) and `output`
    /// (the node's own connections); NodePorts and hostPorts match any local address
    /// (`fib daddr type local`). A backend is chosen with `numgen random mod N`. Existing
    /// connections keep their backend when rules change, since NAT is decided once per
    /// connection and kept by conntrack. ClientIP affinity uses one dynamic set of client
    /// addresses per backend with the affinity timeout; those sets are part of the table,
    /// so a client's affinity starts over whenever the rules change.
    ///
    /// Fails without changing anything when two rules claim the same address, port and
    /// protocol.
    pub async fn set_forwarding(&self, forwarding: &Forwarding) -> Result<(), Error> {
        let script = render(forwarding)?;
        let object = format!("nftables table ip {SERVICE_TABLE}");
        self.run(object.clone(), move || nft(&object, &script)).await
    }
}

/// The whole `ip peer_svc` table as one `nft -f` transaction that replaces it. Pure.
pub(super) fn render(fw: &Forwarding) -> Result<String, Error> {
    check_unique(fw)?;
    let mut sets = String::new();
    let mut chains = String::new();
    let mut vips = Vec::new();
    let mut locals = Vec::new();
    let mut vip_rejects = Vec::new();
    let mut local_rejects = Vec::new();
    for (i, svc) in fw.virtual_ips.iter().enumerate() {
        let proto = svc.protocol.nft();
        let key = format!("{} . {proto} . {}", svc.ip, svc.port);
        if svc.backends.is_empty() {
            vip_rejects.push(key);
            continue;
        }
        vips.push(format!("{key} : goto svc_{i}"));
        balance(
            &mut sets,
            &mut chains,
            &format!("svc_{i}"),
            proto,
            &svc.backends,
            svc.client_ip_affinity,
            false,
        );
    }
    for (i, rule) in fw.node_ports.iter().enumerate() {
        let proto = rule.protocol.nft();
        let key = format!("{proto} . {}", rule.port);
        if rule.backends.is_empty() {
            local_rejects.push(key);
            continue;
        }
        locals.push(format!("{key} : goto np_{i}"));
        balance(&mut sets, &mut chains, &format!("np_{i}"), proto, &rule.backends, None, true);
    }
    for (i, rule) in fw.host_ports.iter().enumerate() {
        let proto = rule.protocol.nft();
        locals.push(format!("{proto} . {} : goto hp_{i}", rule.host_port));
        let _ = writeln!(
            chains,
            "  chain hp_{i} {{\n    meta l4proto {proto} dnat to {}:{}\n  }}",
            rule.pod_ip, rule.container_port
        );
    }

    let mut s = String::new();
    let t = SERVICE_TABLE;
    let _ = writeln!(s, "table ip {t} {{}}\ndelete table ip {t}\ntable ip {t} {{");
    if !vip_rejects.is_empty() {
        let elements = vip_rejects.join(", ");
        let _ = writeln!(
            s,
            "  set no_backends {{\n    type ipv4_addr . inet_proto . inet_service\n    elements = {{ {elements} }}\n  }}"
        );
    }
    if !local_rejects.is_empty() {
        let elements = local_rejects.join(", ");
        let _ = writeln!(
            s,
            "  set no_backends_local {{\n    type inet_proto . inet_service\n    elements = {{ {elements} }}\n  }}"
        );
    }
    s.push_str(&sets);
    for (chain, hook) in [("prerouting", "prerouting"), ("output", "output")] {
        let _ = writeln!(
            s,
            "  chain {chain} {{\n    type nat hook {hook} priority -100; policy accept;\n    jump services\n  }}"
        );
    }
    let _ = writeln!(
        s,
        "  chain postrouting {{\n    type nat hook postrouting priority 100; policy accept;\n    \
         meta mark & {MASQUERADE_MARK:#010x} == {MASQUERADE_MARK:#010x} masquerade\n  }}"
    );
    s.push_str("  chain services {\n");
    if !vips.is_empty() {
        let _ = writeln!(s, "    ip daddr . meta l4proto . th dport vmap {{ {} }}", vips.join(", "));
    }
    if !locals.is_empty() {
        let _ =
            writeln!(s, "    fib daddr type local meta l4proto . th dport vmap {{ {} }}", locals.join(", "));
    }
    s.push_str("  }\n");
    for (chain, hook) in
        [("filter_forward", "forward"), ("filter_output", "output"), ("filter_input", "input")]
    {
        let _ = writeln!(s, "  chain {chain} {{\n    type filter hook {hook} priority 0; policy accept;");
        if !vip_rejects.is_empty() && hook != "input" {
            let matcher = "ip daddr . meta l4proto . th dport @no_backends";
            let _ = writeln!(s, "    {matcher} meta l4proto tcp reject with tcp reset\n    {matcher} reject");
        }
        if !local_rejects.is_empty() && hook == "input" {
            let matcher = "meta l4proto . th dport @no_backends_local";
            let _ = writeln!(s, "    {matcher} meta l4proto tcp reject with tcp reset\n    {matcher} reject");
        }
        s.push_str("  }\n");
    }
    s.push_str(&chains);
    s.push_str("}\n");
    Ok(s)
}

/// The chain `name` that spreads connections over `backends`, and one chain per backend.
fn balance(
    sets: &mut String,
    chains: &mut String,
    name: &str,
    proto: &str,
    backends: &[(Ipv4Addr, u16)],
    affinity: Option<u32>,
    masquerade: bool,
) {
    let _ = writeln!(chains, "  chain {name} {{");
    if let Some(timeout) = affinity {
        for j in 0..backends.len() {
            let _ = writeln!(
                sets,
                "  set {name}_aff_{j} {{\n    type ipv4_addr\n    flags dynamic,timeout\n    timeout {}s\n  }}",
                timeout.max(1)
            );
            let _ = writeln!(chains, "    ip saddr @{name}_aff_{j} goto {name}_{j}");
        }
    }
    let arms: Vec<String> = (0..backends.len()).map(|j| format!("{j} : goto {name}_{j}")).collect();
    let _ = writeln!(chains, "    numgen random mod {} vmap {{ {} }}\n  }}", backends.len(), arms.join(", "));
    for (j, (ip, port)) in backends.iter().enumerate() {
        let _ = writeln!(chains, "  chain {name}_{j} {{");
        if affinity.is_some() {
            let _ = writeln!(chains, "    update @{name}_aff_{j} {{ ip saddr }}");
        }
        if masquerade {
            let _ = writeln!(chains, "    meta mark set meta mark | {MASQUERADE_MARK:#010x}");
        }
        let _ = writeln!(chains, "    meta l4proto {proto} dnat to {ip}:{port}\n  }}");
    }
}

/// Two rules for the same address, port and protocol would make nft fail on the whole
/// table; this names them instead.
fn check_unique(fw: &Forwarding) -> Result<(), Error> {
    let duplicate = |what: String| Error::InvalidNet {
        object: format!("nftables table ip {SERVICE_TABLE}"),
        reason: format!("{what} has more than one rule"),
    };
    let mut vips = BTreeSet::new();
    for svc in &fw.virtual_ips {
        if !vips.insert((svc.ip, svc.port, svc.protocol)) {
            return Err(duplicate(format!("virtual ip {}:{}/{}", svc.ip, svc.port, svc.protocol.nft())));
        }
    }
    let mut locals = BTreeSet::new();
    let ports = fw.node_ports.iter().map(|r| (r.port, r.protocol));
    for (port, protocol) in ports.chain(fw.host_ports.iter().map(|r| (r.host_port, r.protocol))) {
        if !locals.insert((port, protocol)) {
            return Err(duplicate(format!("node port {port}/{}", protocol.nft())));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
