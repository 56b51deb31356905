//! Usage metrics with real agents and real containers: a pod that burns CPU and one that
//! holds memory, seen through `peer top` from the node that does not run them.

use std::time::Duration;

use serde_json::Value;
use tests::{apply, cluster, require_root, wait_for, Node};

/// A Deployment of one demo container running `args`, with the given limits.
fn workload(name: &str, args: &str, cpu: &str, memory: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  replicas: 1\n  template:\n    spec:\n      terminationGracePeriodSeconds: 1\n      containers:\n        - name: main\n          image: peer-demo:latest\n          command: [{args}]\n          resources:\n            limits: {{cpu: \"{cpu}\", memory: \"{memory}\"}}\n"
    )
}

/// The node that runs the pod of Deployment `deployment`, as `node` sees it.
fn node_of(node: &Node, deployment: &str) -> Option<(String, String)> {
    node.all_pods().into_iter().find_map(|p| {
        let name = p["name"].as_str()?;
        let running = p["status"] == "Running";
        (running && name.starts_with(&format!("{deployment}-")))
            .then(|| (name.to_owned(), p["node"].as_str().unwrap_or_default().to_owned()))
    })
}

/// The `peer top pods -o json` row of `pod`, as `node` shows it.
fn top_pod(node: &Node, pod: &str) -> Option<Value> {
    let rows = node.json(&["top", "pods"]);
    rows.as_array()?.iter().find(|r| r["name"] == pod).cloned()
}

#[test]
fn top_shows_every_nodes_pods_and_nodes_from_any_node() {
    if !require_root("top_shows_every_nodes_pods_and_nodes_from_any_node") {
        return;
    }
    let nodes = cluster(&["ma", "mb"]);
    // A full core's worth of spinning (limited to one core), and 40 MiB held while idle.
    apply(&nodes[0], "burner.yaml", &workload("burner", "/peer-demo, burn, \"1000\"", "1000m", "64Mi"));
    apply(&nodes[0], "idle.yaml", &workload("idle", "/peer-demo, alloc, \"40\"", "100m", "128Mi"));
    let (burner, burner_node) =
        wait_for("the burner running", Duration::from_secs(60), || node_of(&nodes[0], "burner"));
    let (idle, idle_node) =
        wait_for("the idle pod running", Duration::from_secs(60), || node_of(&nodes[0], "idle"));
    let other = nodes.iter().find(|n| n.name != burner_node).expect("two nodes");
    eprintln!("burner {burner} on {burner_node}, idle {idle} on {idle_node}; asking {}", other.name);

    // Two samples (5 s apart) and a gossip round after the burner started.
    let row =
        wait_for("the burner's CPU in peer top pods on the other node", Duration::from_secs(60), || {
            top_pod(other, &burner).filter(|r| r["cpu_millis"].as_u64().is_some_and(|c| c >= 150))
        });
    eprintln!("burner: {row}");
    assert_eq!(row["node"], burner_node.as_str());
    assert_eq!(row["namespace"], "default");

    let other_idle = nodes.iter().find(|n| n.name != idle_node).expect("two nodes");
    let row =
        wait_for("the idle pod's memory on the node that does not run it", Duration::from_secs(60), || {
            top_pod(other_idle, &idle).filter(|r| r["memory_bytes"].as_u64().is_some_and(|m| m >= 40 << 20))
        });
    eprintln!("idle: {row}");
    assert_eq!(row["node"], idle_node.as_str());
    let idle_cpu = row["cpu_millis"].as_u64().expect("cpu_millis");
    assert!(idle_cpu < 50, "the idle pod uses little CPU: {row}");
    let memory = row["memory_bytes"].as_u64().expect("memory_bytes");
    assert!(memory < 64 << 20, "the idle pod's working set is about what it holds: {row}");

    // Nodes: both, with usage and its share of capacity; the burner's node is busy.
    let rows = wait_for("both nodes in peer top nodes", Duration::from_secs(30), || {
        let rows = other.json(&["top", "nodes"]).as_array().cloned().unwrap_or_default();
        (rows.len() == 2 && rows.iter().all(|r| r["cpu_millis"].is_u64() && r["memory_percent"].is_u64()))
            .then_some(rows)
    });
    eprintln!("nodes: {rows:?}");
    let names: Vec<&str> = rows.iter().filter_map(|r| r["name"].as_str()).collect();
    assert_eq!(names, ["ma", "mb"]);
    let busy = rows.iter().find(|r| r["name"] == burner_node.as_str()).expect("the burner's node");
    assert!(busy["cpu_millis"].as_u64().is_some_and(|c| c >= 150), "the burner's node is busy: {busy}");
    assert!(busy["memory_bytes"].as_u64().is_some_and(|m| m > 0), "{busy}");

    // The tables, as kubectl prints them.
    let table = other.peer_ok(&["top", "pods"]);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.lines().next().is_some_and(|h| h.contains("CPU(cores)") && h.contains("MEMORY(bytes)")));
    assert!(table.lines().any(|l| l.starts_with(&burner) && l.contains(&burner_node)), "{table}");
    let all = other.peer_ok(&["top", "pods", "-A"]);
    assert!(all.starts_with("NAMESPACE"), "{all}");
    assert!(other.peer_ok(&["top", "pods", "-n", "elsewhere"]).is_empty());
    let table = other.peer_ok(&["top", "nodes"]);
    assert!(table.lines().next().is_some_and(|h| h.contains("CPU%") && h.contains("MEMORY%")), "{table}");
    assert_eq!(table.lines().count(), 3, "{table}");

    // A deleted pod leaves the metrics with its node's next sample.
    nodes[0].peer_ok(&["delete", "deployment", "burner"]);
    wait_for("the burner gone from peer top pods", Duration::from_secs(30), || {
        top_pod(other, &burner).is_none().then_some(())
    });
}
