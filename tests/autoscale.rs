//! Horizontal autoscaling with real agents and real containers: a Deployment whose pods
//! burn CPU scales up from its minimum, and back down once the load stops; one node
//! decides at a time, and when it dies another takes the decision over.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::{cluster_with, require_root, wait_for, Node};

/// Each pod burns 150m against a request of 100m (150 % of the 50 % target) until
/// `/tmp/idle` exists in it. Scale-down waits 10 s of lower recommendations.
const SPEC: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: burner}
spec:
  replicas: 3
  selector: {matchLabels: {app: burner}}
  template:
    metadata: {labels: {app: burner}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: burn
          image: peer-demo:latest
          command: [/peer-demo, burn, \"150\", /tmp/idle]
          resources:
            requests: {cpu: 100m, memory: 16Mi}
            limits: {cpu: 400m, memory: 32Mi}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: burner}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: burner}
  minReplicas: 3
  maxReplicas: 5
  metrics:
    - type: Resource
      resource: {name: cpu, target: {type: Utilization, averageUtilization: 50}}
  behavior:
    scaleDown: {stabilizationWindowSeconds: 10}
";

const PERIOD: Duration = Duration::from_secs(5);

fn desired(node: &Node) -> u64 {
    tests::deployments(node).into_iter().find(|(n, _)| n == "burner").map_or(0, |(_, d)| d)
}

/// The last decision as `peer describe hpa` on `node` shows it: (seq, by, at_ms).
fn last_decision(node: &Node) -> Option<(u64, String, u64)> {
    let out = node.peer(&["describe", "hpa", "burner"]);
    if !out.status.success() {
        return None;
    }
    let d: Value = serde_yaml_ng::from_slice(&out.stdout).ok()?;
    let last = &d["lastDecision"];
    Some((last["seq"].as_u64()?, last["by"].as_str()?.to_owned(), last["at_ms"].as_u64()?))
}

/// Every decision seen so far, by sequence number.
#[derive(Default)]
struct Decisions(BTreeMap<u64, (String, u64)>);

impl Decisions {
    fn sample(&mut self, node: &Node) {
        if let Some((seq, by, at)) = last_decision(node) {
            let before = self.0.insert(seq, (by.clone(), at));
            assert!(
                before.as_ref().is_none_or(|b| *b == (by.clone(), at)),
                "two decisions with sequence number {seq}: {before:?} and {:?}",
                (by, at)
            );
        }
    }

    /// No two decisions less than a period apart (less a little for timer jitter).
    fn check(&self) {
        let at: Vec<(u64, &str)> = self.0.values().map(|(by, at)| (*at, by.as_str())).collect();
        for w in at.windows(2) {
            assert!(
                w[1].0 >= w[0].0 + PERIOD.as_millis() as u64 - 1000,
                "decisions {w:?} less than a period apart: {:?}",
                self.0
            );
        }
    }
}

#[test]
fn load_scales_a_deployment_up_and_back_down_and_the_decision_survives_its_node() {
    if !require_root("load_scales_a_deployment_up_and_back_down_and_the_decision_survives_its_node") {
        return;
    }
    let mut nodes = cluster_with(&["ha", "hb", "hc"], &["--hpa-sync-period", "5"]);
    tests::apply(&nodes[0], "burner.yaml", SPEC);
    let mut decisions = Decisions::default();

    // Up: every pod burns 150 % of its request; the autoscaler goes to its maximum.
    let started = Instant::now();
    wait_for("the autoscaler to scale burner up to 5", Duration::from_secs(150), || {
        decisions.sample(&nodes[1]);
        (desired(&nodes[0]) == 5).then_some(())
    });
    eprintln!("scaled up to 5 after {:?}", started.elapsed());
    let hpa = nodes[2].json(&["get", "hpa"]);
    assert_eq!(hpa[0]["maxPods"], 5, "{hpa}");
    assert!(
        hpa[0]["targets"].as_str().is_some_and(|t| t.starts_with("cpu: ") && t.ends_with("/50%")),
        "{hpa}"
    );

    // Down: the load stops in every pod; after the 10 s window, back to the minimum.
    wait_for("5 running burner pods", Duration::from_secs(60), || {
        let pods: Vec<Value> = nodes[0]
            .all_pods()
            .into_iter()
            .filter(|p| {
                p["name"].as_str().is_some_and(|n| n.starts_with("burner-")) && p["status"] == "Running"
            })
            .collect();
        (pods.len() == 5).then_some(pods)
    })
    .iter()
    .for_each(|p| {
        let (name, node) = (p["name"].as_str().unwrap_or_default(), p["node"].as_str().unwrap_or_default());
        let host = nodes.iter().find(|n| n.name == node).expect("the pod's node");
        host.peer_ok(&["exec", name, "--", "/peer-demo", "write", "/tmp/idle", "stop"]);
    });
    let stopped = Instant::now();
    wait_for("the autoscaler to scale burner back down to 3", Duration::from_secs(150), || {
        decisions.sample(&nodes[1]);
        (desired(&nodes[0]) == 3).then_some(())
    });
    let down = stopped.elapsed();
    eprintln!("scaled down to 3 {down:?} after the load stopped");
    assert!(down >= Duration::from_secs(10), "the 10 s stabilization window did not hold: {down:?}");

    // The deciding node dies: another one takes the decisions over.
    let (_, owner, _) = last_decision(&nodes[1]).expect("a decision");
    let i = nodes.iter().position(|n| n.name == owner).expect("the owner is a node");
    nodes[i].kill_agent();
    let survivor = (i + 1) % nodes.len();
    let killed = Instant::now();
    let new_owner = wait_for("another node to decide", Duration::from_secs(60), || {
        decisions.sample(&nodes[survivor]);
        last_decision(&nodes[survivor]).map(|(_, by, _)| by).filter(|by| *by != owner)
    });
    eprintln!("node {owner} killed; {new_owner} decides {:?} later", killed.elapsed());
    // A few more periods from the new owner.
    let until = Instant::now() + PERIOD * 3;
    while Instant::now() < until {
        decisions.sample(&nodes[survivor]);
        std::thread::sleep(Duration::from_millis(500));
    }
    decisions.check();
    assert!(decisions.0.len() >= 5, "too few decisions seen: {:?}", decisions.0);
}
