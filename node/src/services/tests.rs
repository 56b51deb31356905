//! Tests of the service table with plain values.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use expect_test::{expect, Expect};
use protocol::desired::{NodeId, Stamp};
use protocol::spec::service::DEFAULT_SERVICE_CIDR;
use protocol::spec::{ClusterIp, Kind, ObjectKey, Protocol, Service, ServicePort, ServiceType, TargetPort};

use super::*;

fn stamp(lamport: u64) -> Stamp {
    Stamp { lamport, node: NodeId("n1".into()), incarnation: 1 }
}

/// Service `name` created at `created`, selecting `app: <app>`, port 80 to the port named http.
fn svc(name: &str, created: u64, app: &str) -> Service {
    Service {
        key: ObjectKey { kind: Kind::Service, namespace: "default".into(), name: name.into() },
        labels: BTreeMap::new(),
        service_type: ServiceType::ClusterIp,
        cluster_ip: ClusterIp::Allocate,
        ports: vec![ServicePort {
            name: Some("http".into()),
            protocol: Protocol::Tcp,
            port: 80,
            target_port: TargetPort::Name("http".into()),
            node_port: None,
        }],
        selector: BTreeMap::from([("app".to_owned(), app.to_owned())]),
        session_affinity: None,
        created: Some(stamp(created)),
    }
}

fn pod(name: &str, app: &str, ip: Option<[u8; 4]>, ready: bool, http: Option<u16>) -> PodInfo {
    PodInfo {
        namespace: "default".into(),
        name: name.into(),
        node: "n1".into(),
        ip: ip.map(Ipv4Addr::from),
        ready,
        labels: BTreeMap::from([("app".to_owned(), app.to_owned())]),
        ports: http.map(|p| (Some("http".to_owned()), p, Protocol::Tcp)).into_iter().collect(),
    }
}

fn render(t: &ServiceTable) -> String {
    let mut out = String::new();
    for e in t.services.values() {
        let ports: Vec<String> = e
            .ports
            .iter()
            .map(|p| {
                format!(
                    "{}{}/{:?}",
                    p.port,
                    p.node_port.map(|n| format!(":{n}")).unwrap_or_default(),
                    p.protocol
                )
            })
            .collect();
        out.push_str(&format!(
            "{}/{} {:?} {:?} [{}] affinity={:?}\n",
            e.namespace,
            e.name,
            e.kind,
            e.cluster_ip,
            ports.join(" "),
            e.session_affinity
        ));
        for ep in &e.endpoints {
            out.push_str(&format!(
                "  {} {} {} ready={} {:?}\n",
                ep.pod, ep.node, ep.ip, ep.ready, ep.target_ports
            ));
        }
    }
    for c in &t.conflicts {
        out.push_str(&format!("conflict: {c}\n"));
    }
    out
}

fn check(services: &[Service], pods: &[PodInfo], expect: Expect) {
    let refs: Vec<&Service> = services.iter().collect();
    let t = table(&refs, pods, DEFAULT_SERVICE_CIDR);
    expect.assert_eq(&render(&t));
    // The input order does not matter.
    let reversed: Vec<&Service> = services.iter().rev().collect();
    let pods_rev: Vec<PodInfo> = pods.iter().rev().cloned().collect();
    assert_eq!(table(&reversed, &pods_rev, DEFAULT_SERVICE_CIDR), t);
}

#[test]
fn endpoints_are_selected_ready_pods_with_resolved_ports() {
    let mut headless = svc("db", 2, "db");
    headless.cluster_ip = ClusterIp::Headless;
    headless.ports[0].target_port = TargetPort::Number(5432);
    let mut np = svc("edge", 3, "web");
    np.service_type = ServiceType::NodePort;
    np.session_affinity = Some(10_800);
    np.ports[0].node_port = Some(30080);
    np.ports.push(ServicePort {
        name: Some("dns".into()),
        protocol: Protocol::Udp,
        port: 53,
        target_port: TargetPort::Number(5353),
        node_port: None,
    });
    let mut other_ns = pod("web-x", "web", Some([10, 42, 9, 9]), true, Some(8080));
    other_ns.namespace = "shop".into();
    let pods = [
        pod("web-b", "web", Some([10, 42, 1, 3]), true, Some(8080)),
        pod("web-a", "web", Some([10, 42, 1, 2]), false, Some(8081)),
        pod("web-noip", "web", None, true, Some(8080)),
        pod("web-noport", "web", Some([10, 42, 1, 4]), true, None),
        other_ns,
        pod("db-0", "db", Some([10, 42, 2, 2]), true, None),
    ];
    check(
        &[svc("web", 1, "web"), headless, np],
        &pods,
        expect![[r#"
        default/db ClusterIp None [80/Tcp] affinity=None
          db-0 n1 10.42.2.2 ready=true [Some(5432)]
        default/edge NodePort Some(10.43.192.129) [80:30080/Tcp 53:30415/Udp] affinity=Some(10800)
          web-a n1 10.42.1.2 ready=false [Some(8081), Some(5353)]
          web-b n1 10.42.1.3 ready=true [Some(8080), Some(5353)]
          web-noport n1 10.42.1.4 ready=true [None, Some(5353)]
        default/web ClusterIp Some(10.43.219.178) [80/Tcp] affinity=None
          web-a n1 10.42.1.2 ready=false [Some(8081)]
          web-b n1 10.42.1.3 ready=true [Some(8080)]
    "#]],
    );
}

#[test]
fn a_service_without_selector_has_no_endpoints() {
    let mut s = svc("manual", 1, "web");
    s.selector.clear();
    let t = table(&[&s], &[pod("web-a", "web", Some([10, 42, 1, 2]), true, Some(80))], DEFAULT_SERVICE_CIDR);
    assert!(t.services[&("default".to_owned(), "manual".to_owned())].endpoints.is_empty());
}

#[test]
fn dns_answers_are_the_cluster_address_or_the_ready_endpoints() {
    let mut headless = svc("db", 1, "db");
    headless.cluster_ip = ClusterIp::Headless;
    let pods = [
        pod("db-0", "db", Some([10, 42, 2, 2]), true, Some(5432)),
        pod("db-1", "db", Some([10, 42, 2, 3]), false, Some(5432)),
    ];
    let plain = svc("web", 2, "web");
    let t = table(&[&headless, &plain], &pods, DEFAULT_SERVICE_CIDR);
    let db = &t.services[&("default".to_owned(), "db".to_owned())];
    assert_eq!(db.dns_addresses(), vec![Ipv4Addr::new(10, 42, 2, 2)]);
    assert_eq!(db.ready_backends(0).collect::<Vec<_>>(), vec![(Ipv4Addr::new(10, 42, 2, 2), 5432)]);
    let web = &t.services[&("default".to_owned(), "web".to_owned())];
    assert_eq!(web.dns_addresses(), web.cluster_ip.into_iter().collect::<Vec<_>>());
}

/// In a /28 only 4 addresses are allocatable (16 minus the network address, 10 reserved
/// and the broadcast), so collisions are certain: adding services created later never
/// moves an earlier one, whatever the names.
#[test]
fn a_later_service_never_moves_an_earlier_one() {
    let cidr = (Ipv4Addr::new(10, 43, 0, 0), 28);
    let names = ["a", "b", "c", "d", "e", "f", "g"];
    let all: Vec<Service> = names.iter().enumerate().map(|(i, n)| svc(n, i as u64 + 1, n)).collect();
    let mut before: BTreeMap<String, Option<Ipv4Addr>> = BTreeMap::new();
    for n in 1..=all.len() {
        let refs: Vec<&Service> = all[..n].iter().rev().collect();
        let t = table(&refs, &[], cidr);
        for (name, ip) in &before {
            assert_eq!(
                t.services[&("default".to_owned(), name.clone())].cluster_ip,
                *ip,
                "{name} moved at {n}"
            );
        }
        for e in t.services.values() {
            before.insert(e.name.clone(), e.cluster_ip);
            if let Some(ip) = e.cluster_ip {
                let host = u32::from(ip) & 0xf;
                assert!((11..15).contains(&host), "{ip} is reserved or broadcast");
            }
        }
    }
    let allocated: Vec<_> = before.values().flatten().collect();
    assert_eq!(allocated.len(), 4, "every allocatable address is used once: {before:?}");
    let t = table(&all.iter().collect::<Vec<_>>(), &[], cidr);
    assert_eq!(t.conflicts.len(), 3, "{:?}", t.conflicts);
}

#[test]
fn explicit_requests_win_unless_an_earlier_service_holds_them() {
    let mut old = svc("old", 1, "a");
    old.cluster_ip = ClusterIp::Fixed(Ipv4Addr::new(10, 43, 0, 10));
    old.service_type = ServiceType::NodePort;
    old.ports[0].node_port = Some(30080);
    let mut new = svc("new", 2, "a");
    new.cluster_ip = ClusterIp::Fixed(Ipv4Addr::new(10, 43, 0, 10));
    new.service_type = ServiceType::NodePort;
    new.ports[0].node_port = Some(30080);
    let mut outside = svc("outside", 3, "a");
    outside.cluster_ip = ClusterIp::Fixed(Ipv4Addr::new(192, 168, 0, 1));
    check(
        &[old, new, outside],
        &[],
        expect![[r#"
        default/new NodePort Some(10.43.172.50) [80:32004/Tcp] affinity=None
        default/old NodePort Some(10.43.0.10) [80:30080/Tcp] affinity=None
        default/outside ClusterIp Some(10.43.235.137) [80/Tcp] affinity=None
        conflict: service default/new: clusterIP 10.43.0.10 is taken by an earlier service; allocated another
        conflict: service default/new: nodePort 30080 is taken by an earlier service; allocated another
        conflict: service default/outside: clusterIP 192.168.0.1 is outside the service CIDR 10.43.0.0/16; allocated another
    "#]],
    );
}

#[test]
fn columns_read_like_kubectl() {
    let mut s = svc("web", 1, "web");
    s.service_type = ServiceType::NodePort;
    s.ports.push(ServicePort {
        name: Some("dns".into()),
        protocol: Protocol::Udp,
        port: 53,
        target_port: TargetPort::Number(53),
        node_port: Some(30053),
    });
    let pods: Vec<PodInfo> =
        (1..=3).map(|i| pod(&format!("web-{i}"), "web", Some([10, 42, 0, i]), i != 2, Some(8080))).collect();
    let t = table(&[&s], &pods, DEFAULT_SERVICE_CIDR);
    let e = &t.services[&("default".to_owned(), "web".to_owned())];
    let node_port = e.ports[0].node_port.expect("allocated");
    assert_eq!(e.ports_column(), format!("80:{node_port}/TCP,53:30053/UDP"));
    assert_eq!(e.endpoints_column(), "10.42.0.1:8080,10.42.0.1:53,10.42.0.3:8080 + 1 more...");
    let none = table(&[&svc("x", 1, "nothing")], &pods, DEFAULT_SERVICE_CIDR);
    assert_eq!(none.services.values().next().map(ServiceEntry::endpoints_column).as_deref(), Some("<none>"));
}
