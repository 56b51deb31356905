//! Pod networking against the real kernel, only inside network namespaces the tests
//! create: a test "host" namespace gets the node network, pod namespaces hang off its
//! bridge, and TCP servers in them prove what reaches what.
//! Needs root; skipped (with a message) otherwise unless `PEER_REQUIRE_ROOT_TESTS=1`.

mod lab;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, ErrorKind};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lab::{ask, echo, ip, lab, links, open, wait_until, Lab, Server};
use runtime::net::{
    bridge_mac, host_veth_name, Forwarding, HostPortRule, Net, NodeNet, NodePortRule, VirtualService, L4,
};

const CLUSTER: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 42, 0, 0), 16);
const SERVICES: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 43, 0, 0), 16);

fn node_net(third: u8) -> NodeNet {
    NodeNet {
        bridge: NodeNet::DEFAULT_BRIDGE.into(),
        gateway: pod_ip(third, 1),
        prefix_len: 24,
        cluster_cidr: CLUSTER,
        service_cidr: SERVICES,
    }
}

fn pod_ip(third: u8, last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 42, third, last)
}

/// A test host namespace with the node network of `10.42.<third>.0/24`.
async fn host(lab: &Lab, name: &str, third: u8) -> (PathBuf, Net) {
    let ns = lab.ns(name).await;
    let net = Net::in_netns(&ns);
    net.setup_node_network(&node_net(third)).await.expect("set up node network");
    (ns, net)
}

/// A pod namespace attached to `net` with address `10.42.<third>.<last>`.
async fn pod(lab: &Lab, net: &Net, id: &str, third: u8, last: u8) -> PathBuf {
    let ns = lab.ns(id).await;
    net.attach_pod(id, &ns, pod_ip(third, last), 24, pod_ip(third, 1), None).await.expect("attach pod");
    ns
}

fn host_ip_forward() -> String {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").expect("read ip_forward")
}

#[tokio::test]
async fn pods_on_one_bridge_reach_each_other_and_the_gateway() {
    let Some(lab) = lab("bridge") else { return };
    let before = host_ip_forward();
    let (host_ns, net) = host(&lab, "host", 7).await;
    net.setup_node_network(&node_net(7)).await.expect("setting up again is fine");
    let a = pod(&lab, &net, "pod-a", 7, 2).await;
    // Attaching a pod that has no namespace yet makes one (`lo` up) on the way.
    let b = lab.runtime.pod_netns_path("pod-b");
    net.attach_pod("pod-b", &b, pod_ip(7, 3), 24, pod_ip(7, 1), None)
        .await
        .expect("attach pod without a namespace");
    net.attach_pod("pod-a", &a, pod_ip(7, 2), 24, pod_ip(7, 1), None).await.expect("attaching again is fine");
    assert!(ip(&b, "link show dev lo").contains("UP"), "lo is up in a namespace made by attach_pod");

    let _server_b = Server::start(&b, Ipv4Addr::UNSPECIFIED, 8080, "b");
    let _server_gw = Server::start(&host_ns, pod_ip(7, 1), 9000, "gw");
    assert_eq!(ask(&a, pod_ip(7, 3), 8080).expect("a reaches b"), "b 10.42.7.2");
    assert_eq!(ask(&a, pod_ip(7, 1), 9000).expect("a reaches the gateway"), "gw 10.42.7.2");
    assert_eq!(ask(&b, pod_ip(7, 1), 9000).expect("b reaches the gateway"), "gw 10.42.7.3");
    assert_eq!(lab::in_ns(&host_ns, host_ip_forward), "1\n", "forwarding is on in the test host");
    assert_eq!(host_ip_forward(), before, "the real host's ip_forward is untouched");
    let routes = ip(&a, "route show");
    assert!(routes.contains("default via 10.42.7.1 dev eth0"), "{routes}");
    assert_eq!(links(&a), ["lo", "eth0"]);
    // Pods are IPv4: neither end of the pair gets an IPv6 link-local address (no duplicate
    // address detection, no multicast reports for every pod started).
    assert_eq!(ip(&a, "-6 -o addr show dev eth0"), "", "IPv6 on the pod's eth0");
    let host_end = ip(&host_ns, &format!("-6 -o addr show dev {}", host_veth_name("pod-a")));
    assert_eq!(host_end, "", "IPv6 on the pod's host veth");

    // Detach removes the pair; detaching again is fine.
    let veth_a = host_veth_name("pod-a");
    assert!(links(&host_ns).contains(&veth_a));
    net.detach_pod("pod-a").await.expect("detach");
    net.detach_pod("pod-a").await.expect("detach again");
    assert!(!links(&host_ns).contains(&veth_a));
    assert_eq!(links(&a), ["lo"]);

    // Removing a pod's namespace without detaching leaves nothing behind either.
    let veth_b = host_veth_name("pod-b");
    drop(_server_b);
    lab.runtime.remove_pod_netns("pod-b").await.expect("remove pod namespace");
    wait_until("pod-b's host veth is gone", || !links(&host_ns).contains(&veth_b));

    // Re-numbering the node replaces the bridge's address.
    net.setup_node_network(&node_net(9)).await.expect("re-number");
    let addrs = ip(&host_ns, "-4 -o addr show dev peer0");
    assert!(addrs.contains("10.42.9.1/24") && !addrs.contains("10.42.7.1"), "{addrs}");
}

/// The MAC address of link `name` in `ns`.
fn mac(ns: &Path, name: &str) -> String {
    ip(ns, &format!("-br link show dev {name}")).split_whitespace().nth(2).expect("a MAC address").to_owned()
}

#[tokio::test]
async fn the_gateway_keeps_its_mac_address_when_the_pod_with_the_lowest_one_leaves() {
    let Some(lab) = lab("bridge-mac") else { return };
    let (host_ns, net) = host(&lab, "host", 7).await;
    let _gateway = Server::start(&host_ns, pod_ip(7, 1), 9000, "gw");
    let ids = ["pod-a", "pod-b", "pod-c"];
    let mut pods = Vec::new();
    for (id, last) in ids.into_iter().zip(2..) {
        pods.push((id, pod(&lab, &net, id, 7, last).await, last));
    }
    // Every pod learns its gateway's MAC address, as a server does with its first answer.
    for (id, ns, last) in &pods {
        assert_eq!(ask(ns, pod_ip(7, 1), 9000).expect(id), format!("gw 10.42.7.{last}"));
    }
    let before = mac(&host_ns, "peer0");

    // Without an address of its own the bridge takes the lowest of its ports' addresses:
    // the pod with that port leaves, and the others still reach their gateway.
    let lowest = pods.iter().map(|(id, _, _)| *id).min_by_key(|id| mac(&host_ns, &host_veth_name(id)));
    let lowest = lowest.expect("pods");
    net.detach_pod(lowest).await.expect("detach");
    for (id, ns, last) in pods.iter().filter(|(id, _, _)| *id != lowest) {
        let answer = ask(ns, pod_ip(7, 1), 9000).map_err(|e| format!("{id} lost its gateway: {e}"));
        assert_eq!(answer.expect("an answer"), format!("gw 10.42.7.{last}"));
    }
    assert_eq!(mac(&host_ns, "peer0"), before, "the bridge keeps its MAC address");
    assert_eq!(before, bridge_mac(pod_ip(7, 1)));

    // A bridge made before the address was set gets it on the next setup.
    ip(&host_ns, "link set dev peer0 address 02:00:00:00:00:01");
    net.setup_node_network(&node_net(7)).await.expect("set up again");
    assert_eq!(mac(&host_ns, "peer0"), bridge_mac(pod_ip(7, 1)));
}

#[tokio::test]
async fn peer_routes_reach_a_pod_on_another_host() {
    let Some(lab) = lab("routes") else { return };
    let (host_a, net_a) = host(&lab, "host-a", 1).await;
    let (host_b, net_b) = host(&lab, "host-b", 2).await;
    // The two hosts share a link, like nodes on one L2 segment.
    let path_b = host_b.to_str().expect("utf-8 path");
    ip(&host_a, &format!("link add uplink type veth peer name uplink netns {path_b}"));
    ip(&host_a, "addr add 192.168.50.1/24 dev uplink");
    ip(&host_a, "link set uplink up");
    ip(&host_b, "addr add 192.168.50.2/24 dev uplink");
    ip(&host_b, "link set uplink up");
    let pod_a = pod(&lab, &net_a, "pod-a", 1, 2).await;
    let pod_b = pod(&lab, &net_b, "pod-b", 2, 2).await;
    let _server = Server::start(&pod_b, Ipv4Addr::UNSPECIFIED, 8080, "b");

    // A stale route of peer's goes; a route peer does not own stays.
    ip(&host_a, "route add 10.42.99.0/24 via 192.168.50.2 proto 194 metric 50");
    ip(&host_a, "route add 10.42.98.0/24 via 192.168.50.2");
    net_a.set_peer_routes(&[(pod_ip(2, 0), 24, Ipv4Addr::new(192, 168, 50, 2))]).await.expect("routes on a");
    net_b.set_peer_routes(&[(pod_ip(1, 0), 24, Ipv4Addr::new(192, 168, 50, 1))]).await.expect("routes on b");
    net_a.set_peer_routes(&[(pod_ip(2, 0), 24, Ipv4Addr::new(192, 168, 50, 2))]).await.expect("again");
    let routes = ip(&host_a, "route show");
    assert!(!routes.contains("10.42.99.0/24"), "{routes}");
    assert!(routes.contains("10.42.98.0/24"), "{routes}");
    assert!(routes.contains("10.42.2.0/24 via 192.168.50.2 dev uplink proto 194 metric 50"), "{routes}");

    // Pod to pod across hosts keeps the pod's address (no NAT inside the cluster).
    assert_eq!(ask(&pod_a, pod_ip(2, 2), 8080).expect("a reaches b"), "b 10.42.1.2");

    net_a.set_peer_routes(&[]).await.expect("no routes");
    assert!(!ip(&host_a, "route show").contains("10.42.2.0/24"));
}

#[tokio::test]
async fn outbound_traffic_leaves_with_the_node_address() {
    let Some(lab) = lab("masquerade") else { return };
    let (host_ns, net) = host(&lab, "host", 7).await;
    let internet = lab.ns("internet").await;
    let path = internet.to_str().expect("utf-8 path");
    ip(&host_ns, &format!("link add wan type veth peer name wan netns {path}"));
    ip(&host_ns, "addr add 192.0.2.1/24 dev wan");
    ip(&host_ns, "link set wan up");
    ip(&internet, "addr add 192.0.2.2/24 dev wan");
    ip(&internet, "link set wan up");
    let client = pod(&lab, &net, "client", 7, 2).await;
    let _server = Server::start(&internet, Ipv4Addr::UNSPECIFIED, 80, "internet");
    assert_eq!(
        ask(&client, Ipv4Addr::new(192, 0, 2, 2), 80).expect("pod reaches the internet"),
        "internet 192.0.2.1"
    );
}

fn service(ip: Ipv4Addr, backends: &[Ipv4Addr], affinity: Option<u32>) -> VirtualService {
    VirtualService {
        ip,
        port: 80,
        protocol: L4::Tcp,
        backends: backends.iter().map(|b| (*b, 8080)).collect(),
        client_ip_affinity: affinity,
    }
}

/// Who answered `n` connections to `addr:port` from `ns`.
fn tally(ns: &Path, addr: Ipv4Addr, port: u16, n: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let line = ask(ns, addr, port).unwrap_or_else(|e| panic!("connect to {addr}:{port}: {e}"));
        let name = line.split(' ').next().unwrap_or_default().to_owned();
        *seen.entry(name).or_insert(0) += 1;
    }
    seen
}

#[tokio::test]
async fn services_node_ports_and_host_ports_routed() {
    let Some(lab) = lab("services-routed") else { return };
    services(lab, false).await;
}

/// The same where br_netfilter is active (Docker and Kubernetes hosts load it): bridged
/// packets then pass the IPv4 hooks too, and same-bridge DNAT happens inside the bridge.
#[tokio::test]
async fn services_node_ports_and_host_ports_br_netfilter() {
    let Some(lab) = lab("services-brnf") else { return };
    if !Path::new(BR_NF).exists() {
        eprintln!("skipping the br_netfilter variant: br_netfilter is not loaded on this host");
        return;
    }
    services(lab, true).await;
}

/// The per-namespace switch of br_netfilter (exists only while the module is loaded).
const BR_NF: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";

async fn services(lab: Lab, br_netfilter: bool) {
    let (host_ns, net) = host(&lab, "host", 7).await;
    if Path::new(BR_NF).exists() {
        let value = if br_netfilter { "1" } else { "0" };
        lab::in_ns(&host_ns, move || std::fs::write(BR_NF, value).expect("set bridge-nf-call-iptables"));
    }
    let client = pod(&lab, &net, "client", 7, 2).await;
    let b2 = pod(&lab, &net, "b2", 7, 3).await;
    let b3 = pod(&lab, &net, "b3", 7, 4).await;
    let _s2 = Server::start(&b2, Ipv4Addr::UNSPECIFIED, 8080, "b2");
    let _s3 = Server::start(&b3, Ipv4Addr::UNSPECIFIED, 8080, "b3");
    let (vip, sticky, empty) =
        (Ipv4Addr::new(10, 43, 0, 10), Ipv4Addr::new(10, 43, 0, 11), Ipv4Addr::new(10, 43, 0, 12));
    let both = [pod_ip(7, 3), pod_ip(7, 4)];
    let mut rules = Forwarding {
        virtual_ips: vec![
            service(vip, &both, None),
            service(sticky, &both, Some(60)),
            service(empty, &[], None),
        ],
        node_ports: vec![
            NodePortRule { port: 30080, protocol: L4::Tcp, backends: vec![(pod_ip(7, 3), 8080)] },
            NodePortRule { port: 30081, protocol: L4::Tcp, backends: vec![] },
        ],
        host_ports: vec![HostPortRule {
            host_port: 8081,
            protocol: L4::Tcp,
            pod_ip: pod_ip(7, 4),
            container_port: 8080,
        }],
    };
    net.set_forwarding(&rules).await.expect("set forwarding");
    net.set_forwarding(&rules).await.expect("setting the same rules again is fine");

    // Spread evenly; the backend on the client's own bridge still answers through the
    // service address (masqueraded, so the reply passes conntrack).
    let seen = tally(&client, vip, 80, 200);
    assert_eq!(seen.values().sum::<usize>(), 200, "{seen:?}");
    for backend in ["b2", "b3"] {
        assert!(seen.get(backend).copied().unwrap_or(0) >= 60, "unfair spread {seen:?}");
    }
    // From the node itself (output hook).
    assert!(ask(&host_ns, vip, 80).expect("node reaches the service").starts_with('b'));
    // Hairpin: a pod reaches itself through a service.
    let hairpin = Forwarding { virtual_ips: vec![service(vip, &[pod_ip(7, 3)], None)], ..rules.clone() };
    net.set_forwarding(&hairpin).await.expect("hairpin rules");
    assert!(ask(&b2, vip, 80).expect("hairpin").starts_with("b2 "));
    net.set_forwarding(&rules).await.expect("rules back");

    // ClientIP affinity: one client sticks to one backend.
    let seen = tally(&client, sticky, 80, 20);
    assert_eq!(seen.len(), 1, "affinity broken: {seen:?}");

    // An open connection survives the removal of its backend from the rules; every new
    // connection goes to the remaining one.
    let mut kept = loop {
        let stream = open(&client, vip, 80).expect("connect");
        let mut first = String::new();
        BufReader::new(&stream).read_line(&mut first).expect("greeting");
        if first.starts_with("b2 ") {
            break stream;
        }
    };
    rules.virtual_ips[0] = service(vip, &[pod_ip(7, 4)], None);
    net.set_forwarding(&rules).await.expect("remove a backend");
    assert_eq!(tally(&client, vip, 80, 50), BTreeMap::from([("b3".to_owned(), 50)]));
    assert_eq!(echo(&mut kept, "still here").expect("old connection works"), "still here");

    // NodePort on any local address, from the node and from a pod; hostPort likewise.
    for addr in [pod_ip(7, 1), Ipv4Addr::LOCALHOST] {
        assert!(ask(&host_ns, addr, 30080).expect("node port").starts_with("b2 "), "via {addr}");
        assert!(ask(&host_ns, addr, 8081).expect("host port").starts_with("b3 "), "via {addr}");
    }
    assert!(ask(&client, pod_ip(7, 1), 30080).expect("node port from a pod").starts_with("b2 "));
    assert_eq!(ask(&client, pod_ip(7, 1), 8081).expect("host port from a pod"), "b3 10.42.7.1");

    // No backends: refused at once, from a pod and from the node.
    for (ns, addr, port) in [(&client, empty, 80), (&host_ns, empty, 80), (&host_ns, pod_ip(7, 1), 30081)] {
        let started = Instant::now();
        let err = open(ns, addr, port).expect_err("no backends");
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{addr}:{port}: {err}");
        assert!(started.elapsed() < Duration::from_secs(1), "{addr}:{port} took {:?}", started.elapsed());
    }
    // A service address nobody configured is refused too (the node table's catch-all).
    let err = open(&client, Ipv4Addr::new(10, 43, 9, 9), 80).expect_err("unknown service");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");

    net.set_forwarding(&Forwarding::default()).await.expect("no rules");
    let err = open(&client, vip, 80).expect_err("service gone");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
}
