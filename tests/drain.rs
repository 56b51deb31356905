//! `peer drain` with a PodDisruptionBudget: the drained node's replicas move to the
//! other nodes, and the Ready replicas never fall under the budget's minAvailable.

use std::time::{Duration, Instant};

use tests::{apply, cluster, require_root, wait_for};

const SPEC: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 10
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: web
          image: peer-demo:latest
          resources: {limits: {cpu: 50m, memory: 32Mi}}
          readinessProbe: {exec: {command: [/peer-demo, cat, /etc/hostname]}, periodSeconds: 1}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: web}
spec:
  minAvailable: 8
  selector: {matchLabels: {app: web}}
";

#[test]
fn drain_moves_a_nodes_replicas_within_the_disruption_budget() {
    if !require_root("drain_moves_a_nodes_replicas_within_the_disruption_budget") {
        return;
    }
    let nodes = cluster(&["da", "db", "dc", "dd", "de"]);
    apply(&nodes[0], "web.yaml", SPEC);
    let ready = |rows: &[serde_json::Value]| {
        rows.iter()
            .filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with("web-")))
            .filter(|p| p["status"] == "Running" && p["ready"] == "1/1")
            .count()
    };
    wait_for("10 ready replicas", Duration::from_secs(90), || {
        (ready(&nodes[0].all_pods()) == 10).then_some(())
    });
    // Drain the busiest node other than the one we watch from; then, with a tighter
    // budget that allows one eviction at a time, the next busiest.
    let mut drained: Vec<&tests::Node> = Vec::new();
    for min_available in [8, 9] {
        if min_available == 9 {
            apply(&nodes[0], "web.yaml", &SPEC.replace("minAvailable: 8", "minAvailable: 9"));
        }
        let busiest = nodes[1..]
            .iter()
            .filter(|n| !drained.iter().any(|d| d.name == n.name))
            .max_by_key(|n| n.pods().len())
            .expect("nodes");
        let before = busiest.pods().len();
        assert!(before >= 2, "the drained node runs {before} replicas");
        busiest.peer_ok(&["drain", "--no-wait"]);
        let started = Instant::now();
        let (mut samples, mut min_ready) = (0, usize::MAX);
        loop {
            let rows = nodes[0].all_pods();
            let n = ready(&rows);
            samples += 1;
            min_ready = min_ready.min(n);
            assert!(
                n >= min_available,
                "only {n} ready replicas during the drain (minAvailable {min_available})"
            );
            let left = rows.iter().filter(|p| p["node"] == busiest.name.as_str()).count();
            if left == 0 && n == 10 {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(90), "the drain did not finish: {rows:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "minAvailable {min_available}: drained {before} replicas off {} in {:?}, {samples} samples, ready >= {min_ready}",
            busiest.name,
            started.elapsed()
        );
        assert!(busiest.pods().is_empty(), "the drained node still runs pods");
        drained.push(busiest);
    }
    // Uncordoning ends a drain.
    for node in drained {
        node.peer_ok(&["uncordon"]);
    }
}
