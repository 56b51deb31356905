//! Snapshot tests of the cluster zone's answers, with plain values and no sockets.

use expect_test::{expect, Expect};

use super::*;
use crate::dns::{ServicePort, ServiceRecord};

fn records() -> Records {
    let service = |ns: &str, name: &str, ip: Option<[u8; 4]>, endpoints: &[[u8; 4]]| ServiceRecord {
        namespace: ns.into(),
        name: name.into(),
        cluster_ip: ip.map(Ipv4Addr::from),
        endpoints: endpoints.iter().map(|&e| Ipv4Addr::from(e)).collect(),
        ports: vec![ServicePort { name: "Web".into(), proto: Proto::Tcp, port: 8080 }],
    };
    Records {
        domain: "Cluster.Local.".into(),
        services: vec![
            service("default", "api", Some([10, 96, 0, 10]), &[[10, 42, 1, 5]]),
            // Duplicate endpoints count once; the first service in name order owns a PTR.
            service("prod", "db", None, &[[10, 42, 2, 6], [10, 42, 2, 6], [10, 42, 1, 7]]),
            service("prod", "zz", None, &[[10, 42, 1, 7]]),
            service("prod", "bad.name", Some([10, 96, 0, 11]), &[]),
            service("", "empty-namespace", Some([10, 96, 0, 12]), &[]),
        ],
    }
}

fn check(name: &str, rtype: RecordType, expect: Expect) {
    let (zone, skipped) = Zone::new(&records());
    assert_eq!(skipped, 2);
    let name = Name::from_ascii(name).expect("test names are valid");
    let actual = match zone.lookup(&name, rtype) {
        Lookup::Forward => "forward\n".to_owned(),
        Lookup::Answer(answer) => {
            let mut out = format!("{}\n", answer.code);
            for (section, records) in
                [("an", &answer.answers), ("ns", &answer.authorities), ("ar", &answer.additionals)]
            {
                for record in records {
                    out.push_str(&format!("{section} {record}\n"));
                }
            }
            out
        }
    };
    expect.assert_eq(&actual);
}

#[test]
fn schema_version_and_apex() {
    check(
        "dns-version.cluster.local.",
        RecordType::TXT,
        expect![[r#"
        No Error
        an dns-version.cluster.local. 5 IN TXT 1.0.1
    "#]],
    );
    check(
        "cluster.local.",
        RecordType::SOA,
        expect![[r#"
        No Error
        an cluster.local. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5
    "#]],
    );
    check(
        "svc.cluster.local.",
        RecordType::A,
        expect![[r#"
        No Error
        ns cluster.local. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5
    "#]],
    );
    check(
        "prod.svc.cluster.local.",
        RecordType::A,
        expect![[r#"
        No Error
        ns cluster.local. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5
    "#]],
    );
    check(
        "nope.svc.cluster.local.",
        RecordType::A,
        expect![[r#"
        Non-Existent Domain
        ns cluster.local. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5
    "#]],
    );
}

#[test]
fn services_and_ports() {
    check(
        "api.default.svc.cluster.local.",
        RecordType::ANY,
        expect![[r#"
        No Error
        an api.default.svc.cluster.local. 5 IN A 10.96.0.10
    "#]],
    );
    check(
        "_web._tcp.api.default.svc.cluster.local.",
        RecordType::SRV,
        expect![[r#"
        No Error
        an _web._tcp.api.default.svc.cluster.local. 5 IN SRV 0 100 8080 api.default.svc.cluster.local.
        ar api.default.svc.cluster.local. 5 IN A 10.96.0.10
    "#]],
    );
    check(
        "_tcp.api.default.svc.cluster.local.",
        RecordType::SRV,
        expect![[r#"
        No Error
        ns cluster.local. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5
    "#]],
    );
    check(
        "_web._tcp.db.prod.svc.cluster.local.",
        RecordType::SRV,
        expect![[r#"
        No Error
        an _web._tcp.db.prod.svc.cluster.local. 5 IN SRV 0 100 8080 10-42-1-7.db.prod.svc.cluster.local.
        an _web._tcp.db.prod.svc.cluster.local. 5 IN SRV 0 100 8080 10-42-2-6.db.prod.svc.cluster.local.
        ar 10-42-1-7.db.prod.svc.cluster.local. 5 IN A 10.42.1.7
        ar 10-42-2-6.db.prod.svc.cluster.local. 5 IN A 10.42.2.6
    "#]],
    );
    check(
        "10-42-1-7.db.prod.svc.cluster.local.",
        RecordType::A,
        expect![[r#"
        No Error
        an 10-42-1-7.db.prod.svc.cluster.local. 5 IN A 10.42.1.7
    "#]],
    );
    // Endpoints of a cluster IP service have no names, nor do other spellings of an address.
    check(
        "10-42-1-5.api.default.svc.cluster.local.",
        RecordType::A,
        expect![[r#"
        Non-Existent Domain
        ns cluster.local. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5
    "#]],
    );
    check(
        "010-42-1-7.db.prod.svc.cluster.local.",
        RecordType::A,
        expect![[r#"
        Non-Existent Domain
        ns cluster.local. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5
    "#]],
    );
}

#[test]
fn pods_and_reverse_names() {
    check(
        "10-42-9-9.anything.pod.cluster.local.",
        RecordType::A,
        expect![[r#"
        No Error
        an 10-42-9-9.anything.pod.cluster.local. 5 IN A 10.42.9.9
    "#]],
    );
    check(
        "10.0.96.10.in-addr.arpa.",
        RecordType::PTR,
        expect![[r#"
        No Error
        an 10.0.96.10.in-addr.arpa. 5 IN PTR api.default.svc.cluster.local.
    "#]],
    );
    check(
        "7.1.42.10.in-addr.arpa.",
        RecordType::PTR,
        expect![[r#"
        No Error
        an 7.1.42.10.in-addr.arpa. 5 IN PTR 10-42-1-7.db.prod.svc.cluster.local.
    "#]],
    );
    check(
        "7.1.42.10.in-addr.arpa.",
        RecordType::A,
        expect![[r#"
        No Error
    "#]],
    );
    // Addresses the cluster does not know are the upstream's business.
    check(
        "1.1.168.192.in-addr.arpa.",
        RecordType::PTR,
        expect![[r#"
        forward
    "#]],
    );
    check(
        "example.org.",
        RecordType::A,
        expect![[r#"
        forward
    "#]],
    );
    check(
        "*.cluster.local.",
        RecordType::A,
        expect![[r#"
        Non-Existent Domain
        ns cluster.local. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5
    "#]],
    );
}

#[test]
fn invalid_domain_falls_back_to_cluster_local() {
    for domain in ["", ".", "a..b"] {
        let (zone, _) = Zone::new(&Records { domain: domain.into(), services: Vec::new() });
        assert_eq!(zone.origin().to_ascii(), "cluster.local.", "{domain:?}");
    }
}
