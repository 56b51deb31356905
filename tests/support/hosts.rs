//! Test hosts: network namespaces made by a test, each with one address on a shared test
//! switch (a bridge in a namespace of its own), so agents talk over a real network that
//! exists only for the test and is deleted after it.

use std::net::Ipv4Addr;
use std::process::Command;

/// A switch and the hosts plugged into it, all in namespaces named `pt<tag>-…`.
pub struct TestNet {
    tag: String,
    hosts: Vec<String>,
}

/// The subnet of every test switch: hosts are `192.168.251.(i + 10)`.
pub const TEST_SUBNET: [u8; 3] = [192, 168, 251];

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip (iproute2)");
    assert!(out.status.success(), "ip {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

impl TestNet {
    /// A new switch; `tag` keeps names unique (at most 6 characters).
    pub fn new(tag: &str) -> TestNet {
        // Unique per process and per network, so tests of one binary running in parallel
        // never share a namespace name.
        static NETS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NETS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let tag = format!("{tag}{}n{n}", std::process::id() % 10000);
        let net = TestNet { tag, hosts: vec![] };
        let sw = net.switch();
        let _ = Command::new("ip").args(["netns", "del", &sw]).output();
        ip(&["netns", "add", &sw]);
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &sw, "link", "set", "br0", "up"]);
        ip(&["-n", &sw, "link", "set", "lo", "up"]);
        net
    }

    fn switch(&self) -> String {
        format!("pt{}-sw", self.tag)
    }

    /// Adds host `i`: a namespace with `lo` and `eth0` (`192.168.251.(i + 10)/24`) up.
    /// Returns the namespace's name and the host's address.
    pub fn add_host(&mut self, i: u8) -> (String, Ipv4Addr) {
        let ns = format!("pt{}-h{i}", self.tag);
        let addr = Ipv4Addr::new(TEST_SUBNET[0], TEST_SUBNET[1], TEST_SUBNET[2], i + 10);
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        ip(&["netns", "add", &ns]);
        // Both ends are made inside their namespaces, so parallel tests never meet on a
        // name in the machine's own namespace.
        let outer = format!("h{i}");
        let sw = self.switch();
        ip(&["link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &outer, "netns", &sw]);
        ip(&["-n", &sw, "link", "set", &outer, "master", "br0", "up"]);
        ip(&["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        self.hosts.push(ns.clone());
        (ns, addr)
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        for ns in self.hosts.iter().chain([&self.switch()]) {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}
