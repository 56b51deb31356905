//! Snapshot tests of Service manifests; refresh with `UPDATE_EXPECT=1 cargo test -p node manifest`.

use std::fmt::Write;

use expect_test::{expect, Expect};

use crate::manifest::parse_file;
use crate::manifest::tests::{check, check_messages};

/// One line per service (key, type, address, ports, selector, affinity), then messages.
fn check_services(yaml: &str, expect: Expect) {
    let result = parse_file("test.yaml", yaml);
    let mut out = String::new();
    for s in result.objects().filter_map(|o| o.as_service()) {
        let ports: Vec<String> = s
            .ports
            .iter()
            .map(|p| {
                let name = p.name.as_deref().map(|n| format!("{n}=")).unwrap_or_default();
                let node = p.node_port.map(|n| format!(":{n}")).unwrap_or_default();
                format!("{name}{}{node}/{:?}->{}", p.port, p.protocol, p.target_port)
            })
            .collect();
        writeln!(
            out,
            "{} {:?} {:?} [{}] {:?} affinity={:?}",
            s.key,
            s.service_type,
            s.cluster_ip,
            ports.join(" "),
            s.selector,
            s.session_affinity
        )
        .expect("writing to a String");
    }
    for warning in result.warnings() {
        writeln!(out, "warning: {warning}").expect("writing to a String");
    }
    for error in result.errors() {
        writeln!(out, "error: {error}").expect("writing to a String");
    }
    expect.assert_eq(&out);
}

#[test]
fn a_cluster_ip_service_in_full() {
    check(
        r#"
apiVersion: v1
kind: Service
metadata: {name: web, labels: {tier: front}}
spec:
  selector: {app: hello}
  ports:
    - {name: http, port: 80, targetPort: http}
"#,
        expect![[r#"
            object: {
              "key": {
                "kind": "Service",
                "namespace": "default",
                "name": "web"
              },
              "labels": {
                "tier": "front"
              },
              "service_type": "ClusterIp",
              "cluster_ip": "Allocate",
              "ports": [
                {
                  "name": "http",
                  "protocol": "Tcp",
                  "port": 80,
                  "target_port": {
                    "Name": "http"
                  },
                  "node_port": null
                }
              ],
              "selector": {
                "app": "hello"
              },
              "session_affinity": null,
              "created": null
            }
        "#]],
    );
}

#[test]
fn types_addresses_ports_and_defaults() {
    check_services(
        r#"
apiVersion: v1
kind: Service
metadata: {name: plain, namespace: shop}
spec:
  selector: {app: a}
  ports: [{port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: np}
spec:
  type: NodePort
  clusterIP: 10.43.7.7
  selector: {app: a}
  sessionAffinity: ClientIP
  ports:
    - {name: web, port: 80, targetPort: 8080, nodePort: 30080}
    - {name: dns, port: 53, protocol: UDP}
---
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  clusterIP: None
  selector: {app: db}
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}
  sessionAffinity: ClientIP
---
apiVersion: v1
kind: Service
metadata: {name: lb}
spec:
  type: LoadBalancer
  selector: {app: a}
  ports: [{port: 443, targetPort: https}]
---
apiVersion: v1
kind: Service
metadata: {name: alias}
spec:
  type: ExternalName
  externalName: example.com
---
apiVersion: v1
kind: Service
metadata: {name: manual}
spec:
  ports: [{port: 80}]
  externalTrafficPolicy: Local
  publishNotReadyAddresses: true
"#,
        expect![[r#"
            Service/shop/plain ClusterIp Allocate [8080/Tcp->8080] {"app": "a"} affinity=None
            Service/default/np NodePort Fixed(10.43.7.7) [web=80:30080/Tcp->8080 dns=53/Udp->53] {"app": "a"} affinity=Some(10800)
            Service/default/db ClusterIp Headless [] {"app": "db"} affinity=Some(60)
            Service/default/lb NodePort Allocate [443/Tcp->https] {"app": "a"} affinity=None
            Service/default/manual ClusterIp Allocate [80/Tcp->80] {} affinity=None
            warning: test.yaml: document 4 (Service lb): spec.type: LoadBalancer is not implemented by peer: treated as NodePort (each port is also opened on every node), no external load balancer is provisioned
            warning: test.yaml: document 5 (Service alias): spec.type: ExternalName services are not implemented by peer, ignored: the name gets no DNS alias
            warning: test.yaml: document 6 (Service manual): spec.externalTrafficPolicy: not implemented by peer yet, ignored
            warning: test.yaml: document 6 (Service manual): spec.publishNotReadyAddresses: not implemented by peer yet, ignored: only ready pods are endpoints
            warning: test.yaml: document 6 (Service manual): spec.selector: the service has no selector, so it gets no endpoints (peer does not read Endpoints or EndpointSlice objects)
        "#]],
    );
}

#[test]
fn invalid_services_name_the_field() {
    check_messages(
        r#"
apiVersion: v1
kind: Service
metadata: {name: 1web}
spec: {ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: out}
spec: {clusterIP: 10.0.0.1, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: sctp}
spec: {ports: [{port: 80, protocol: SCTP}]}
---
apiVersion: v1
kind: Service
metadata: {name: low}
spec: {type: NodePort, ports: [{port: 80, nodePort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: cip}
spec: {ports: [{port: 80, nodePort: 30001}]}
---
apiVersion: v1
kind: Service
metadata: {name: two}
spec: {ports: [{port: 80}, {port: 81}]}
---
apiVersion: v1
kind: Service
metadata: {name: hl}
spec: {type: NodePort, clusterIP: None, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: noports}
spec: {selector: {app: a}}
---
apiVersion: v1
kind: Service
metadata: {name: tp}
spec: {ports: [{port: 80, targetPort: Not_A_Name}]}
---
apiVersion: v1
kind: Service
metadata: {name: aff}
spec: {sessionAffinity: Sticky, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: big}
spec: {ports: [{port: 70000}]}
---
apiVersion: v1
kind: Service
metadata: {name: v6}
spec: {clusterIP: "fd00::1", ports: [{port: 80}]}
"#,
        expect![[r#"
            error: test.yaml: document 1 (Service 1web): metadata.name: expected lowercase letters, digits and '-', starting with a letter and ending with a letter or digit, at most 63 characters, got "1web"
            error: test.yaml: document 2 (Service out): spec.clusterIP: 10.0.0.1 is not a usable address of the service CIDR 10.43.0.0/16
            error: test.yaml: document 3 (Service sctp): spec.ports[0].protocol: expected TCP or UDP (peer does not support SCTP), got "SCTP"
            error: test.yaml: document 4 (Service low): spec.ports[0].nodePort: expected a port between 30000 and 32767, got 8080
            error: test.yaml: document 5 (Service cip): spec.ports[0].nodePort: may not be used when type is ClusterIP, got 30001
            error: test.yaml: document 6 (Service two): spec.ports[0].name: required field is missing: every port of a service with several ports needs a name
            error: test.yaml: document 7 (Service hl): spec.clusterIP: a headless service (clusterIP: None) cannot have type NodePort or LoadBalancer
            error: test.yaml: document 8 (Service noports): spec.ports: required field is missing: a service needs at least one port unless it is headless (clusterIP: None)
            error: test.yaml: document 9 (Service tp): spec.ports[0].targetPort: expected a container port name (at most 15 lowercase letters, digits and '-', with a letter), got "Not_A_Name"
            error: test.yaml: document 10 (Service aff): spec.sessionAffinity: expected None or ClientIP, got "Sticky"
            error: test.yaml: document 11 (Service big): spec.ports[0].port: expected a port number between 1 and 65535, got 70000
            error: test.yaml: document 12 (Service v6): spec.clusterIP: expected an IPv4 address in 10.43.0.0/16, "None" or nothing, got "fd00::1"
        "#]],
    );
}
