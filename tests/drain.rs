//! `peer drain` with a PodDisruptionBudget: the drained node's replicas move to the
//! other nodes, and the Ready replicas never fall under the budget's minAvailable. Drains,
//! cordons and uncordons work from any node for any live node.

use std::collections::BTreeSet;
use std::process::Child;
use std::time::{Duration, Instant};

use tests::{apply, cluster, nodes_json, require_root, wait_for, Node};

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

/// The STATE column of `peer get nodes` on `observer` for node `name`.
fn state_on(observer: &Node, name: &str) -> String {
    nodes_json(observer)
        .into_iter()
        .find(|n| n["name"] == name)
        .and_then(|n| n["state"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Waits until `observer` shows node `name` in `state`.
fn wait_state(observer: &Node, name: &str, state: &str) {
    wait_for(&format!("{} to show node {name} {state}", observer.name), Duration::from_secs(15), || {
        (state_on(observer, name) == state).then_some(())
    });
}

/// Whether `observer`'s `peer get events` has an event of node `node` with `reason` whose
/// message contains `text`.
fn has_event(observer: &Node, node: &str, reason: &str, text: &str) -> bool {
    let events = observer.json(&["get", "events"]);
    events.as_array().into_iter().flatten().any(|e| {
        e["node"] == node
            && e["reason"] == reason
            && e["object"] == format!("node/{node}").as_str()
            && e["message"].as_str().is_some_and(|m| m.contains(text))
    })
}

/// Waits for a CLI command started with `Node::peer_spawn`; returns its stdout.
fn finish(mut cli: Child, what: &str) -> String {
    wait_for(what, Duration::from_secs(30), || cli.try_wait().expect("polling the CLI").map(|_| ()));
    let out = cli.wait_with_output().expect("reading the CLI's output");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{what} failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

#[test]
fn drain_moves_a_nodes_replicas_within_the_disruption_budget() {
    if !require_root("drain_moves_a_nodes_replicas_within_the_disruption_budget") {
        return;
    }
    let nodes = cluster(&["da", "db", "dc", "dd", "de"]);

    // Cordon and uncordon another node through da; dc sees it in `peer get nodes`.
    nodes[0].peer_ok(&["cordon", "dd"]);
    wait_state(&nodes[2], "dd", "live,SchedulingDisabled");
    assert!(has_event(&nodes[2], "dd", "NodeNotSchedulable", "asked by node da"), "dd recorded no cordon");
    nodes[0].peer_ok(&["uncordon", "dd"]);
    wait_state(&nodes[2], "dd", "live");
    assert!(has_event(&nodes[2], "dd", "NodeSchedulable", "asked by node da"), "dd recorded no uncordon");
    // A name that is no member is refused, naming the node and listing the members.
    let out = nodes[0].peer(&["drain", "nosuch"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "draining an unknown node succeeded");
    assert!(
        stderr.contains("node nosuch is not a member of this cluster") && stderr.contains("dd (live)"),
        "unexpected error: {stderr}"
    );

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
    // Drain the busiest node other than the one we watch from, through da's API with
    // `peer drain NODE` waiting as kubectl's does; then, with a tighter budget that allows
    // one eviction at a time, the next busiest, on itself.
    let mut drained: Vec<&Node> = Vec::new();
    for min_available in [8, 9] {
        if min_available == 9 {
            apply(&nodes[0], "web.yaml", &SPEC.replace("minAvailable: 8", "minAvailable: 9"));
        }
        let busiest = nodes[1..]
            .iter()
            .filter(|n| !drained.iter().any(|d| d.name == n.name))
            .max_by_key(|n| n.pods().len())
            .expect("nodes");
        let before: BTreeSet<String> =
            busiest.pods().iter().filter_map(|p| p["name"].as_str().map(str::to_owned)).collect();
        assert!(before.len() >= 2, "the drained node runs {} replicas", before.len());
        let cli = if min_available == 8 {
            Some(nodes[0].peer_spawn(&["drain", &busiest.name]))
        } else {
            busiest.peer_ok(&["drain", "--no-wait"]);
            None
        };
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
            "minAvailable {min_available}: drained {} replicas off {} in {:?}, {samples} samples, ready >= {min_ready}",
            before.len(),
            busiest.name,
            started.elapsed()
        );
        if let Some(cli) = cli {
            let out = finish(cli, &format!("`peer drain {}` on da", busiest.name));
            let evicted: BTreeSet<String> = out
                .lines()
                .filter_map(|l| l.strip_prefix("pod/")?.strip_suffix(" evicted"))
                .map(str::to_owned)
                .collect();
            assert_eq!(evicted, before, "`peer drain` printed: {out}");
            assert_eq!(out.lines().last(), Some(format!("node {} drained", busiest.name).as_str()), "{out}");
            assert!(has_event(&nodes[2], &busiest.name, "NodeDraining", "asked by node da"));
        }
        assert!(busiest.pods().is_empty(), "the drained node still runs pods");
        assert!(state_on(&nodes[0], &busiest.name).ends_with(",SchedulingDisabled"));
        drained.push(busiest);
    }
    // Uncordoning ends a drain: the first through da, seen on a third node.
    let observer =
        nodes[1..].iter().find(|n| drained.iter().all(|d| d.name != n.name)).expect("a third node");
    nodes[0].peer_ok(&["uncordon", &drained[0].name]);
    wait_state(observer, &drained[0].name, "live");
    drained[1].peer_ok(&["uncordon"]);
    wait_state(observer, &drained[1].name, "live");
}

/// A node that left cannot be cordoned; the error says so and lists the nodes.
#[test]
fn a_node_that_is_not_live_is_not_reachable() {
    if !require_root("a_node_that_is_not_live_is_not_reachable") {
        return;
    }
    let mut nodes = cluster(&["ea", "eb"]);
    nodes[1].stop_agent();
    wait_state(&nodes[0], "eb", "left");
    let out = nodes[0].peer(&["cordon", "eb"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "cordoning a node that left succeeded");
    assert!(
        stderr.contains("node eb is not reachable: it is not live (left)") && stderr.contains("ea (live)"),
        "unexpected error: {stderr}"
    );
}
