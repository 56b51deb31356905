//! The cluster's address plan, pure: which pod range (a slot of the cluster CIDR) each node
//! uses, and which address each pod of a node gets.
//!
//! A node's range is a `/node_prefix` slot of the cluster CIDR (`10.42.0.0/16` split into
//! `/24`s by default, as k3s does). A node first tries the slot its id hashes to, keeps the
//! slot it has (persisted), and publishes it with the time it took it. When two live nodes
//! hold the same slot, the one that took it earlier keeps it (then the smaller node id), so
//! a node that joins never renumbers the incumbents; the other moves to the next slot that
//! no live node holds. Pod addresses come from the node's range: `.1` is the node's bridge
//! (the pods' gateway and DNS server), pods get the next free address from `.2` on, going round.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// An IPv4 network: address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Net {
    pub addr: Ipv4Addr,
    pub len: u8,
}

impl Net {
    /// Parses `10.42.0.0/16`; the address is masked to the network.
    pub fn parse(s: &str) -> Result<Net, String> {
        let (a, l) = s
            .split_once('/')
            .ok_or_else(|| format!("expected an IPv4 network such as 10.42.0.0/16, got {s:?}"))?;
        let addr: Ipv4Addr =
            a.parse().map_err(|_| format!("expected an IPv4 address before '/', got {a:?}"))?;
        let len: u8 = l
            .parse()
            .ok()
            .filter(|l| *l <= 32)
            .ok_or_else(|| format!("expected a prefix length from 0 to 32 after '/', got {l:?}"))?;
        Ok(Net { addr: Ipv4Addr::from(u32::from(addr) & mask(len)), len })
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.len) == u32::from(self.addr)
    }

    /// The `i`-th address of the network (0 is the network address itself).
    pub fn nth(&self, i: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr).wrapping_add(i))
    }

    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.len))
    }
}

impl std::fmt::Display for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

/// The address plan every node of a cluster must share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Pod addresses of the whole cluster.
    pub cluster: Net,
    /// Prefix length of one node's range.
    pub node_prefix: u8,
    /// Virtual addresses of services.
    pub services: Net,
}

impl Default for Plan {
    fn default() -> Plan {
        Plan {
            cluster: Net { addr: Ipv4Addr::new(10, 42, 0, 0), len: 16 },
            node_prefix: 24,
            services: Net { addr: Ipv4Addr::new(10, 43, 0, 0), len: 16 },
        }
    }
}

/// A node's claim on a slot, as published in gossip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotClaim {
    pub slot: u32,
    /// When the node took the slot (its clock, ms); earlier claims win.
    pub since_ms: u64,
}

impl Plan {
    /// Checks that the ranges make sense together.
    pub fn validate(&self) -> Result<(), String> {
        if self.node_prefix < self.cluster.len || self.node_prefix > 30 {
            return Err(format!(
                "the node range prefix /{} must be between the cluster CIDR's /{} and /30",
                self.node_prefix, self.cluster.len
            ));
        }
        if self.cluster.contains(self.services.addr) || self.services.contains(self.cluster.addr) {
            return Err(format!(
                "the cluster CIDR {} and the service CIDR {} overlap",
                self.cluster, self.services
            ));
        }
        Ok(())
    }

    /// How many node ranges the cluster CIDR holds.
    pub fn slots(&self) -> u32 {
        1u32 << (self.node_prefix - self.cluster.len).min(31)
    }

    /// The range of slot `slot`.
    pub fn node_range(&self, slot: u32) -> Net {
        let step = 1u32 << (32 - u32::from(self.node_prefix));
        Net { addr: self.cluster.nth(slot.wrapping_mul(step)), len: self.node_prefix }
    }

    /// The node's bridge address (the pods' gateway and DNS server): `.1` of its range.
    pub fn gateway(&self, slot: u32) -> Ipv4Addr {
        self.node_range(slot).nth(1)
    }

    /// The slot a node's id hashes to.
    pub fn preferred_slot(&self, node_id: &str) -> u32 {
        (protocol::spec::fnv1a64(node_id.as_bytes()) % u64::from(self.slots())) as u32
    }

    /// The slot this node should hold, given its current claim and the live peers' claims.
    /// Returns the claim to publish (a new one, with `now_ms`, when it must move).
    pub fn choose_slot(
        &self,
        me: &str,
        mine: Option<SlotClaim>,
        peers: &[(&str, SlotClaim)],
        now_ms: u64,
    ) -> Result<SlotClaim, String> {
        if let Some(c) = mine.filter(|c| c.slot < self.slots()) {
            let beaten = peers.iter().any(|(id, p)| p.slot == c.slot && (p.since_ms, *id) < (c.since_ms, me));
            if !beaten {
                return Ok(c);
            }
        }
        let taken: BTreeSet<u32> = peers.iter().map(|(_, p)| p.slot).collect();
        let n = self.slots();
        let first = self.preferred_slot(me);
        (0..n)
            .map(|i| (first + i) % n)
            .find(|s| !taken.contains(s))
            .map(|slot| SlotClaim { slot, since_ms: now_ms })
            .ok_or_else(|| {
                format!("every one of the {n} node ranges of {} is taken by a live node", self.cluster)
            })
    }

    /// The next free pod address of the node's range after `last` (`.2` on, wrapping; the
    /// last address is broadcast). Addresses go round rather than lowest-first, so a
    /// just-freed address is not handed out again at once: neighbours may still map it to
    /// the old pod's MAC for a while (the reason CNI's host-local IPAM goes round too).
    pub fn allocate(&self, slot: u32, used: &BTreeSet<Ipv4Addr>, last: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
        let range = self.node_range(slot);
        let (first, end) = (2u64, range.size().saturating_sub(1));
        let n = end.saturating_sub(first);
        let start = last
            .filter(|ip| range.contains(*ip))
            .map_or(first, |ip| u64::from(u32::from(ip) - u32::from(range.addr)) + 1);
        (0..n)
            .map(|k| first + (start.saturating_sub(first) + k) % n.max(1))
            .map(|i| range.nth(i as u32))
            .find(|ip| !used.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(slot: u32, since_ms: u64) -> SlotClaim {
        SlotClaim { slot, since_ms }
    }

    #[test]
    fn parses_and_lays_out_ranges() {
        let plan = Plan::default();
        plan.validate().expect("the defaults are valid");
        assert_eq!(plan.slots(), 256);
        assert_eq!(plan.node_range(7).to_string(), "10.42.7.0/24");
        assert_eq!(plan.gateway(7), Ipv4Addr::new(10, 42, 7, 1));
        assert_eq!(Net::parse("10.42.9.9/16").map(|n| n.to_string()), Ok("10.42.0.0/16".into()));
        assert!(Net::parse("10.42.0.0").is_err());
        assert!(Net::parse("10.42.0.0/33").is_err());
        let overlap = Plan { services: Net { addr: Ipv4Addr::new(10, 42, 128, 0), len: 20 }, ..plan };
        assert!(overlap.validate().is_err());
    }

    #[test]
    fn a_node_keeps_its_slot_and_a_later_claim_moves() {
        let plan = Plan::default();
        let first = plan.choose_slot("a", None, &[], 100).expect("a slot");
        assert_eq!(first, claim(plan.preferred_slot("a"), 100));
        // Kept while no one else holds it.
        assert_eq!(plan.choose_slot("a", Some(first), &[("b", claim(first.slot + 1, 5))], 900), Ok(first));
        // "b" claimed the same slot earlier: "a" moves to the next free one.
        let peers = [("b", claim(first.slot, 50)), ("c", claim((first.slot + 1) % 256, 60))];
        let moved = plan.choose_slot("a", Some(first), &peers, 900).expect("a slot");
        assert_eq!(moved, claim((first.slot + 2) % 256, 900));
        // A newcomer with a smaller id does not take the incumbent's slot.
        let newcomer = [("0", claim(first.slot, 800))];
        assert_eq!(plan.choose_slot("a", Some(first), &newcomer, 900), Ok(first));
        // Same time: the smaller id keeps it.
        assert_eq!(plan.choose_slot("0", Some(claim(3, 10)), &[("a", claim(3, 10))], 20), Ok(claim(3, 10)));
    }

    #[test]
    fn full_cluster_and_addresses() {
        let plan = Plan { node_prefix: 17, ..Plan::default() };
        let peers = [("x", claim(0, 1)), ("y", claim(1, 1))];
        assert!(plan.choose_slot("a", None, &peers, 5).is_err());
        let plan = Plan::default();
        let used: BTreeSet<Ipv4Addr> = [Ipv4Addr::new(10, 42, 3, 2), Ipv4Addr::new(10, 42, 3, 4)].into();
        assert_eq!(plan.allocate(3, &used, None), Some(Ipv4Addr::new(10, 42, 3, 3)));
        // Round: after .3 comes .5 (.4 is used), not the freed .2 again.
        assert_eq!(
            plan.allocate(3, &used, Some(Ipv4Addr::new(10, 42, 3, 3))),
            Some(Ipv4Addr::new(10, 42, 3, 5))
        );
        assert_eq!(
            plan.allocate(3, &BTreeSet::new(), Some(Ipv4Addr::new(10, 42, 3, 254))),
            Some(Ipv4Addr::new(10, 42, 3, 2))
        );
        let all: BTreeSet<Ipv4Addr> = (2..255).map(|i| Ipv4Addr::new(10, 42, 3, i)).collect();
        assert_eq!(plan.allocate(3, &all, None), None, ".255 is the broadcast address");
    }
}
