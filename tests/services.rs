//! Services across nodes that are separate test hosts (network namespaces made by the
//! test): pod networking, service addresses and DNS names, load balancing over ready
//! endpoints cluster-wide.

use std::time::Duration;

use serde_json::Value;
use tests::{cluster_on, require_root, wait_for, Node, TestNet};

/// Every pod of the cluster that runs, as (node, name, ip) from `node`'s view.
fn pods_with_ips(node: &Node) -> Vec<(String, String, String)> {
    node.all_pods()
        .into_iter()
        .filter(|p| p["status"] == "Running")
        .filter_map(|p: Value| {
            Some((
                p["node"].as_str()?.to_owned(),
                p["name"].as_str()?.to_owned(),
                p["ip"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

#[test]
fn pods_on_different_test_hosts_reach_each_other_by_address() {
    if !require_root("pods_on_different_test_hosts_reach_each_other_by_address") {
        return;
    }
    let mut net = TestNet::new("pnet");
    let mut nodes = cluster_on(&mut net, &["pa", "pb", "pc"]);
    tests::apply(&nodes[0], "api.yaml", &tests::deployment("api", 3));
    let pods = wait_for("3 replicas with addresses on 3 hosts", Duration::from_secs(60), || {
        let pods = pods_with_ips(&nodes[0]);
        let hosts: std::collections::BTreeSet<&String> = pods.iter().map(|p| &p.0).collect();
        (pods.len() == 3 && hosts.len() == 3).then_some(pods)
    });
    eprintln!("pods: {pods:?}");
    // From the pod on pa, every pod answers by its address, wherever it runs.
    let (_, local, _) = pods.iter().find(|p| p.0 == "pa").cloned().expect("a pod on pa");
    let reach_all = |node: &Node| {
        for (host, name, ip) in &pods {
            let url = format!("http://{ip}:8080/");
            let body = node.peer_ok(&["exec", &local, "--", "/peer-demo", "get", &url]);
            assert!(body.contains(name.as_str()), "{name} on {host} at {ip} answered {body:?}");
        }
    };
    reach_all(&nodes[0]);

    // An agent killed and started again keeps its range, its pods' addresses and the routes.
    nodes[0].kill_agent();
    nodes[0].start_agent();
    let mine = pods.iter().find(|p| p.0 == "pa").cloned().expect("a pod on pa");
    wait_for("pa's agent to adopt its pod", Duration::from_secs(30), || {
        pods_with_ips(&nodes[0]).contains(&mine).then_some(())
    });
    reach_all(&nodes[0]);
}

/// Lines of `/peer-demo hammer`: (ms since start, ok, body or error).
fn hammer(node: &Node, pod: &str, url: &str, count: u32, interval_ms: u32) -> Vec<(u64, bool, String)> {
    let out = node.peer_ok(&[
        "exec",
        pod,
        "--",
        "/peer-demo",
        "hammer",
        url,
        &count.to_string(),
        &interval_ms.to_string(),
    ]);
    out.lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ' ');
            let t = parts.next()?.parse().ok()?;
            let ok = parts.next()? == "ok";
            Some((t, ok, parts.next().unwrap_or_default().to_owned()))
        })
        .collect()
}

/// The pod answering a demo server's `/`: "hello from NAME (pid N)".
fn answered_by(body: &str) -> Option<String> {
    body.strip_prefix("hello from ")?.split_whitespace().next().map(str::to_owned)
}

const API: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: api}
spec:
  replicas: 2
  selector: {matchLabels: {app: api}}
  template:
    metadata: {labels: {app: api}}
    spec:
      terminationGracePeriodSeconds: 1
      affinity:
        nodeAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            nodeSelectorTerms:
              - matchExpressions: [{key: kubernetes.io/hostname, operator: In, values: [sb, sc]}]
      containers:
        - name: api
          image: peer-demo:latest
          ports: [{name: http, containerPort: 8080}]
          resources: {limits: {cpu: 100m, memory: 32Mi}}
          readinessProbe: {httpGet: {path: /ready, port: http}, periodSeconds: 1, failureThreshold: 1}
---
apiVersion: v1
kind: Service
metadata: {name: api}
spec:
  selector: {app: api}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: api-direct}
spec:
  clusterIP: None
  selector: {app: api}
  ports: [{name: http, port: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  nodeSelector: {kubernetes.io/hostname: sa}
  terminationGracePeriodSeconds: 1
  containers:
    - name: client
      image: peer-demo:latest
      resources: {limits: {cpu: 100m, memory: 32Mi}}
";

#[test]
fn a_service_name_reaches_ready_replicas_on_other_nodes_and_survives_a_dead_node() {
    if !require_root("a_service_name_reaches_ready_replicas_on_other_nodes_and_survives_a_dead_node") {
        return;
    }
    let mut net = TestNet::new("svc");
    let mut nodes = cluster_on(&mut net, &["sa", "sb", "sc"]);
    tests::apply(&nodes[0], "api.yaml", API);
    let api =
        wait_for("2 ready api replicas on sb and sc, and the client on sa", Duration::from_secs(90), || {
            let pods = nodes[0].all_pods();
            let ready = |p: &Value| p["status"] == "Running" && p["ready"] == "1/1";
            let api: Vec<(String, String, String)> = pods
                .iter()
                .filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with("api-")) && ready(p))
                .filter_map(|p| {
                    Some((
                        p["node"].as_str()?.to_owned(),
                        p["name"].as_str()?.to_owned(),
                        p["ip"].as_str()?.to_owned(),
                    ))
                })
                .collect();
            let client = pods.iter().any(|p| p["name"] == "client" && ready(p));
            (api.len() == 2 && client).then_some(api)
        });
    let on = |node: &str| api.iter().find(|p| p.0 == node).cloned().expect("an api pod on the node");
    let (b, c) = (on("sb"), on("sc"));

    // By name, through the service's address: both replicas answer, on the other hosts.
    let answers = wait_for("http://api/ to answer", Duration::from_secs(20), || {
        let lines = hammer(&nodes[0], "client", "http://api/", 40, 20);
        lines.iter().all(|l| l.1).then_some(lines)
    });
    let by = |pod: &str| answers.iter().filter(|l| answered_by(&l.2).as_deref() == Some(pod)).count();
    eprintln!("40 requests: {} from {} on sb, {} from {} on sc", by(&b.1), b.1, by(&c.1), c.1);
    assert!(by(&b.1) >= 5 && by(&c.1) >= 5, "not spread over both replicas: {answers:?}");
    // The headless name resolves to the ready endpoints themselves.
    let resolved = nodes[0].peer_ok(&["exec", "client", "--", "/peer-demo", "resolve", "api-direct"]);
    let mut want = vec![b.2.clone(), c.2.clone()];
    want.sort();
    assert_eq!(resolved.lines().collect::<Vec<_>>(), want, "headless service api-direct");
    // The service name resolves to one virtual address outside the pod ranges.
    let vip =
        nodes[0].peer_ok(&["exec", "client", "--", "/peer-demo", "resolve", "api.default.svc.cluster.local"]);
    assert!(vip.trim().starts_with("10.43."), "api resolved to {vip:?}");

    // A replica failing readiness gets no traffic.
    nodes[1].peer_ok(&["exec", &b.1, "--", "/peer-demo", "write", "/tmp/notready", "x"]);
    wait_for("only sc's replica to answer", Duration::from_secs(10), || {
        let lines = hammer(&nodes[0], "client", "http://api/", 20, 10);
        lines.iter().all(|l| l.1 && answered_by(&l.2).as_deref() == Some(c.1.as_str())).then_some(())
    });
    nodes[1].peer_ok(&["exec", &b.1, "--", "/peer-demo", "rm", "/tmp/notready"]);
    wait_for("sb's replica back in rotation", Duration::from_secs(10), || {
        let lines = hammer(&nodes[0], "client", "http://api/", 20, 10);
        lines.iter().any(|l| answered_by(&l.2).as_deref() == Some(b.1.as_str())).then_some(())
    });

    // sb dies (agent and containers): every request succeeds again within 2 s.
    nodes[1].kill_agent();
    nodes[1].kill_containers();
    let lines = hammer(&nodes[0], "client", "http://api/", 100, 50);
    let last_failure = lines.iter().filter(|l| !l.1).map(|l| l.0).max();
    eprintln!(
        "after sb died: {} of 100 requests failed, the last at {last_failure:?} ms",
        lines.iter().filter(|l| !l.1).count()
    );
    assert!(
        last_failure.is_none_or(|t| t <= 2000),
        "requests still failed {last_failure:?} ms after sb died: {lines:?}"
    );
    // (sb's replica comes back on sc, under the same name: Deployment pods are named by index.)
    assert!(lines.iter().rev().take(40).all(|l| l.1), "requests failed late: {lines:?}");
}
