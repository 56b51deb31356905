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
    let nodes = cluster_on(&mut net, &["pa", "pb", "pc"]);
    tests::apply(&nodes[0], "api.yaml", &tests::deployment("api", 3));
    let pods = wait_for("3 replicas with addresses on 3 hosts", Duration::from_secs(60), || {
        let pods = pods_with_ips(&nodes[0]);
        let hosts: std::collections::BTreeSet<&String> = pods.iter().map(|p| &p.0).collect();
        (pods.len() == 3 && hosts.len() == 3).then_some(pods)
    });
    eprintln!("pods: {pods:?}");
    // From the pod on pa, every pod answers by its address, wherever it runs.
    let (_, local, _) = pods.iter().find(|p| p.0 == "pa").cloned().expect("a pod on pa");
    for (host, name, ip) in &pods {
        let body =
            nodes[0].peer_ok(&["exec", &local, "--", "/peer-demo", "get", &format!("http://{ip}:8080/")]);
        assert!(body.contains(name.as_str()), "{name} on {host} at {ip} answered {body:?}");
    }
}
