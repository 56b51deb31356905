//! Snapshot tests of the service table.

use expect_test::{expect, Expect};

use super::*;

fn check(fw: &Forwarding, expect: Expect) {
    expect.assert_eq(&render(fw).expect("renders"));
}

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 42, 7, last)
}

#[test]
fn empty() {
    check(
        &Forwarding::default(),
        expect![[r#"
        table ip peer_svc {}
        delete table ip peer_svc
        table ip peer_svc {
          chain prerouting {
            type nat hook prerouting priority -100; policy accept;
            jump services
          }
          chain output {
            type nat hook output priority -100; policy accept;
            jump services
          }
          chain postrouting {
            type nat hook postrouting priority 100; policy accept;
            meta mark & 0x00040000 == 0x00040000 masquerade
          }
          chain services {
          }
          chain filter_forward {
            type filter hook forward priority 0; policy accept;
          }
          chain filter_output {
            type filter hook output priority 0; policy accept;
          }
          chain filter_input {
            type filter hook input priority 0; policy accept;
          }
        }
    "#]],
    );
}

#[test]
fn services_node_ports_host_ports() {
    let fw = Forwarding {
        virtual_ips: vec![
            VirtualService {
                ip: Ipv4Addr::new(10, 43, 0, 10),
                port: 80,
                protocol: L4::Tcp,
                backends: vec![(ip(2), 8080), (ip(3), 8080)],
                client_ip_affinity: None,
            },
            VirtualService {
                ip: Ipv4Addr::new(10, 43, 0, 11),
                port: 53,
                protocol: L4::Udp,
                backends: vec![(ip(4), 5353)],
                client_ip_affinity: Some(10800),
            },
            VirtualService {
                ip: Ipv4Addr::new(10, 43, 0, 12),
                port: 80,
                protocol: L4::Tcp,
                backends: vec![],
                client_ip_affinity: None,
            },
        ],
        node_ports: vec![
            NodePortRule { port: 30080, protocol: L4::Tcp, backends: vec![(ip(2), 8080)] },
            NodePortRule { port: 30081, protocol: L4::Tcp, backends: vec![] },
        ],
        host_ports: vec![HostPortRule {
            host_port: 8443,
            protocol: L4::Tcp,
            pod_ip: ip(5),
            container_port: 443,
        }],
    };
    check(
        &fw,
        expect![[r#"
        table ip peer_svc {}
        delete table ip peer_svc
        table ip peer_svc {
          set no_backends {
            type ipv4_addr . inet_proto . inet_service
            elements = { 10.43.0.12 . tcp . 80 }
          }
          set no_backends_local {
            type inet_proto . inet_service
            elements = { tcp . 30081 }
          }
          set svc_1_aff_0 {
            type ipv4_addr
            flags dynamic,timeout
            timeout 10800s
          }
          chain prerouting {
            type nat hook prerouting priority -100; policy accept;
            jump services
          }
          chain output {
            type nat hook output priority -100; policy accept;
            jump services
          }
          chain postrouting {
            type nat hook postrouting priority 100; policy accept;
            meta mark & 0x00040000 == 0x00040000 masquerade
          }
          chain services {
            ip daddr . meta l4proto . th dport vmap { 10.43.0.10 . tcp . 80 : goto svc_0, 10.43.0.11 . udp . 53 : goto svc_1 }
            fib daddr type local meta l4proto . th dport vmap { tcp . 30080 : goto np_0, tcp . 8443 : goto hp_0 }
          }
          chain filter_forward {
            type filter hook forward priority 0; policy accept;
            ip daddr . meta l4proto . th dport @no_backends meta l4proto tcp reject with tcp reset
            ip daddr . meta l4proto . th dport @no_backends reject
          }
          chain filter_output {
            type filter hook output priority 0; policy accept;
            ip daddr . meta l4proto . th dport @no_backends meta l4proto tcp reject with tcp reset
            ip daddr . meta l4proto . th dport @no_backends reject
          }
          chain filter_input {
            type filter hook input priority 0; policy accept;
            meta l4proto . th dport @no_backends_local meta l4proto tcp reject with tcp reset
            meta l4proto . th dport @no_backends_local reject
          }
          chain svc_0 {
            numgen random mod 2 vmap { 0 : goto svc_0_0, 1 : goto svc_0_1 }
          }
          chain svc_0_0 {
            meta l4proto tcp dnat to 10.42.7.2:8080
          }
          chain svc_0_1 {
            meta l4proto tcp dnat to 10.42.7.3:8080
          }
          chain svc_1 {
            ip saddr @svc_1_aff_0 goto svc_1_0
            numgen random mod 1 vmap { 0 : goto svc_1_0 }
          }
          chain svc_1_0 {
            update @svc_1_aff_0 { ip saddr }
            meta l4proto udp dnat to 10.42.7.4:5353
          }
          chain np_0 {
            numgen random mod 1 vmap { 0 : goto np_0_0 }
          }
          chain np_0_0 {
            meta mark set meta mark | 0x00040000
            meta l4proto tcp dnat to 10.42.7.2:8080
          }
          chain hp_0 {
            meta l4proto tcp dnat to 10.42.7.5:443
          }
        }
    "#]],
    );
}

#[test]
fn duplicates_are_named() {
    let rule = |port| HostPortRule { host_port: port, protocol: L4::Tcp, pod_ip: ip(2), container_port: 80 };
    let fw = Forwarding {
        node_ports: vec![NodePortRule { port: 30080, protocol: L4::Tcp, backends: vec![] }],
        host_ports: vec![rule(8080), rule(30080)],
        ..Forwarding::default()
    };
    let err = render(&fw).expect_err("duplicate");
    assert_eq!(err.to_string(), "nftables table ip peer_svc: node port 30080/tcp has more than one rule");
}
