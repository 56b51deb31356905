//! Pods on the node's bridge: a veth pair per pod, the host end on the bridge, the other
//! end `eth0` inside the pod's network namespace with its address and default route.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};

use netlink_packet_route::route::RouteScope;

use super::rtnl::{Route, Rtnl};
use super::{check_prefix, enter, network_of, Net};
use crate::error::{validate_id, Error};

/// Name of the pod's end inside its namespace.
const POD_IF: &str = "eth0";

/// The host end of a pod's veth pair: `vp` and the 32-bit FNV-1a hash of the pod id in
/// hex, 10 bytes (interface names may have 15), the same on every start.
pub fn host_veth_name(pod_id: &str) -> String {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in pod_id.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    format!("vp{hash:08x}")
}

impl Net {
    /// Connects the pod whose network namespace is bind-mounted at `netns` to the bridge
    /// that has address `gateway` (see [`Net::setup_node_network`]); idempotent. When
    /// there is no namespace at `netns` yet, it makes one first (only `lo`, up, as
    /// `Runtime::ensure_pod_netns` does).
    ///
    /// The host end, [`host_veth_name`]`(pod_id)`, joins the bridge in hairpin mode and goes up; the other
    /// end is created directly inside the pod's namespace as `eth0` with exactly one IPv4
    /// address, `ip/prefix_len`, and a default route via `gateway` (with a link route to
    /// the gateway first when it lies outside `ip/prefix_len`, e.g. for a /32). A host end
    /// left from an earlier namespace of the same pod id is replaced.
    ///
    /// `namespace_ready`, when given, is sent as soon as the namespace exists at `netns`
    /// (before the veth pair), so that a container can be created in it while its network
    /// is set up; dropped unsent when the namespace could not be made.
    pub async fn attach_pod(
        &self,
        pod_id: &str,
        netns: &Path,
        ip: Ipv4Addr,
        prefix_len: u8,
        gateway: Ipv4Addr,
        namespace_ready: Option<tokio::sync::oneshot::Sender<()>>,
    ) -> Result<(), Error> {
        validate_id(pod_id)?;
        let object = format!("pod {pod_id}");
        check_prefix(&object, prefix_len)?;
        let (pod_id, netns) = (pod_id.to_owned(), netns.to_owned());
        self.run(object.clone(), move || {
            attach(&object, &pod_id, &netns, (ip, prefix_len), gateway, namespace_ready)
        })
        .await
    }

    /// Deletes the pod's host veth end, which takes its `eth0` with it; fine if absent.
    /// Deleting the pod's namespace (`Runtime::remove_pod_netns`) removes the pair too.
    pub async fn detach_pod(&self, pod_id: &str) -> Result<(), Error> {
        validate_id(pod_id)?;
        let object = format!("pod {pod_id}");
        let host = host_veth_name(pod_id);
        self.run(object.clone(), move || delete_link(&object, &host)).await
    }
}

fn delete_link(object: &str, name: &str) -> Result<(), Error> {
    let mut host = Rtnl::open(object)?;
    match host.link_index(name)? {
        Some(index) => host.delete_link(index, name),
        None => Ok(()),
    }
}

fn attach(
    object: &str,
    pod_id: &str,
    netns: &Path,
    addr: (Ipv4Addr, u8),
    gateway: Ipv4Addr,
    namespace_ready: Option<tokio::sync::oneshot::Sender<()>>,
) -> Result<(), Error> {
    let host_name = host_veth_name(pod_id);
    // One socket per namespace, opened on this thread while it is in that namespace.
    let mut host = Rtnl::open(object)?;
    let bridge = host.bridge_with(gateway)?.ok_or_else(|| Error::InvalidNet {
        object: object.to_owned(),
        reason: format!("no bridge has the gateway address {gateway}: set up the node network first"),
    })?;
    let here = File::open("/proc/thread-self/ns/net")
        .map_err(|e| setns_error(object, "/proc/thread-self/ns/net".into(), e))?;
    let mut pod = if crate::netns::is_netns(netns) {
        in_pod(object, netns, || Rtnl::open(object))?
    } else {
        // A new pod: its namespace is made on this thread, which is then inside it, so
        // a pod start costs one short-lived thread instead of one for the namespace
        // and one for the veth pair.
        crate::netns::create(netns).map_err(|e| Error::Net {
            object: object.to_owned(),
            command: format!("create network namespace {}", netns.display()),
            message: e.to_string(),
        })?;
        Rtnl::open(object)?
    };
    back(object, &here)?;
    let pod_ns = File::open(netns).map_err(|e| setns_error(object, netns.to_owned(), e))?;
    if let Some(ready) = namespace_ready {
        let _ = ready.send(());
    }

    let pod_eth0 = pod.link_index(POD_IF)?;
    let host_link = host.link_index(&host_name)?;
    if let (Some(index), None) = (host_link, pod_eth0) {
        // A pair from an earlier namespace of this pod id, or half-made by a crash.
        host.delete_link(index, &host_name)?;
    }
    if host_link.is_none() || pod_eth0.is_none() {
        if let Some(index) = pod_eth0 {
            // Not ours (no host end): make room for the pair.
            pod.delete_link(index, POD_IF)?;
        }
        // Created in place: the pod's end never exists in the host namespace, so its name
        // cannot clash with a host interface.
        host.add_veth(&host_name, POD_IF, pod_ns.as_raw_fd())?;
    }
    let host_index = host.link_index(&host_name)?.ok_or_else(|| Error::Net {
        object: object.to_owned(),
        command: format!("netlink: get link {host_name}"),
        message: "the veth pair just made is gone".into(),
    })?;
    host.set_no_link_local(host_index, &host_name)?;
    host.set_up(host_index, &host_name, Some(bridge))?;
    // Hairpin lets a packet leave through the port it came in on. Where br_netfilter is
    // active (Docker and Kubernetes hosts load it; bridged packets then pass the IPv4
    // hooks), a pod reaching itself through a service is DNATed inside the bridge and
    // sent back out its own port, which the bridge refuses without this flag (measured).
    host.set_hairpin(host_index, &host_name)?;

    configure_pod_side(object, &mut pod, addr, gateway)
}

/// Inside the pod: `eth0` with exactly `addr`, up, and the default route via `gateway`.
fn configure_pod_side(
    object: &str,
    pod: &mut Rtnl,
    (ip_addr, len): (Ipv4Addr, u8),
    gateway: Ipv4Addr,
) -> Result<(), Error> {
    let missing = |name: &str| Error::Net {
        object: object.to_owned(),
        command: format!("netlink: get link {name}"),
        message: "no such link in the pod's network namespace".into(),
    };
    let eth0 = pod.link_index(POD_IF)?.ok_or_else(|| missing(POD_IF))?;
    for (_, old, old_len) in pod.ipv4_addrs(Some(eth0))? {
        if (old, old_len) != (ip_addr, len) {
            pod.delete_address(eth0, old, old_len)?;
        }
    }
    pod.replace_address(eth0, ip_addr, len)?;
    pod.set_no_link_local(eth0, POD_IF)?;
    pod.set_up(eth0, POD_IF, None)?;
    let lo = pod.link_index("lo")?.ok_or_else(|| missing("lo"))?;
    pod.set_up(lo, "lo", None)?;
    if network_of(gateway, len) != network_of(ip_addr, len) {
        let on_link = Route { dst: Some((gateway, 32)), gateway: None, oif: eth0, scope: RouteScope::Link };
        pod.replace_route(&on_link)?;
    }
    pod.replace_route(&Route { dst: None, gateway: Some(gateway), oif: eth0, scope: RouteScope::Universe })
}

/// Runs `work` with this thread inside the pod's namespace; the caller goes back with
/// [`back`] if it needs the host namespace again.
fn in_pod<T>(object: &str, netns: &Path, work: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
    enter(netns).map_err(|e| setns_error(object, netns.to_owned(), e))?;
    work()
}

fn back(object: &str, here: &File) -> Result<(), Error> {
    setns(here, CloneFlags::CLONE_NEWNET)
        .map_err(|e| setns_error(object, "the node's network namespace".into(), e.into()))
}

fn setns_error(object: &str, path: PathBuf, e: std::io::Error) -> Error {
    Error::Net {
        object: object.to_owned(),
        command: format!("setns {}", path.display()),
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_short_and_stable() {
        assert_eq!(host_veth_name(""), "vp811c9dc5");
        assert_eq!(host_veth_name("a"), "vpe40c292c");
        let long = host_veth_name(&"x".repeat(128));
        assert_eq!(long.len(), 10);
        assert_ne!(host_veth_name("default_web-1"), host_veth_name("default_web-2"));
    }
}
