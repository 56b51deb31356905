//! Controlling a rollout on a real agent: revision history and undo, pause and resume,
//! `minReadySeconds` holding a rollout back, and `progressDeadlineSeconds` marking a
//! stuck one failed.

use std::time::{Duration, Instant};

use tests::{require_root, wait_for, Node};

fn spec(version: &str, image: &str, extra: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  annotations: {{kubernetes.io/change-cause: \"{version}\"}}
spec:
  replicas: 3
  selector: {{matchLabels: {{app: web}}}}
  strategy: {{type: RollingUpdate, rollingUpdate: {{maxSurge: 1, maxUnavailable: 0}}}}
{extra}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: web
          image: {image}
          env: [{{name: VERSION, value: \"{version}\"}}]
          resources: {{limits: {{cpu: 100m, memory: 32Mi}}}}
"
    )
}

/// Revisions (name hashes) of the `web` pods that run and are Ready, and how many pods
/// there are in all.
fn revisions(node: &Node) -> (Vec<String>, usize) {
    let rows = node.all_pods();
    let web: Vec<_> =
        rows.iter().filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with("web-"))).collect();
    let ready = web
        .iter()
        .filter(|p| p["status"] == "Running" && p["ready"] == "1/1")
        .filter_map(|p| p["name"].as_str()?.split('-').nth(1).map(str::to_owned))
        .collect();
    (ready, web.len())
}

/// Waits until exactly `n` Ready pods of one revision run (and nothing else); returns it.
fn settled(node: &Node, n: usize, what: &str) -> String {
    wait_for(what, Duration::from_secs(90), || {
        let (ready, total) = revisions(node);
        (ready.len() == n && total == n && ready.iter().all(|r| *r == ready[0])).then(|| ready[0].clone())
    })
}

fn history(node: &Node) -> Vec<(u64, String)> {
    let data = node.json(&["rollout", "history", "deployment/web"]);
    data["revisions"]
        .as_array()
        .expect("revisions")
        .iter()
        .map(|r| (r["revision"].as_u64().unwrap_or(0), r["changeCause"].as_str().unwrap_or("").to_owned()))
        .collect()
}

#[test]
fn history_undo_pause_resume_min_ready_and_progress_deadline() {
    if !require_root("history_undo_pause_resume_min_ready_and_progress_deadline") {
        return;
    }
    let node = Node::start("rollctl");
    tests::apply(&node, "web.yaml", &spec("v1", "peer-demo:latest", "  minReadySeconds: 3"));
    let v1 = settled(&node, 3, "3 ready v1 replicas");
    // Available (Ready for minReadySeconds) before the next template: old copies that are
    // not available count for nothing and would be replaced at once.
    node.peer_ok(&["rollout", "status", "deployment/web"]);

    // minReadySeconds 3 with maxSurge 1: each of the 3 replacements waits 3 s after it is
    // Ready before the next step, so the rollout takes at least 9 s.
    let started = Instant::now();
    tests::apply(&node, "web.yaml", &spec("v2", "peer-demo:latest", "  minReadySeconds: 3"));
    let status = node.peer_ok(&["rollout", "status", "deployment/web"]);
    let took = started.elapsed();
    assert!(status.contains("successfully rolled out"), "{status}");
    assert!(took >= Duration::from_secs(8), "minReadySeconds 3 did not hold the rollout back: {took:?}");
    let v2 = settled(&node, 3, "3 ready v2 replicas");
    assert_ne!(v1, v2);
    assert_eq!(history(&node), [(1, "v1".to_owned()), (2, "v2".to_owned())]);

    // Undo: v1's template comes back as revision 3.
    let out = node.peer_ok(&["rollout", "undo", "deployment/web"]);
    assert!(out.contains("rolled back"), "{out}");
    let back = settled(&node, 3, "v1 back after undo");
    assert_eq!(back, v1);
    assert_eq!(history(&node), [(2, "v2".to_owned()), (3, "v1".to_owned())]);
    let undo_to = node.peer(&["rollout", "undo", "deployment/web", "--to-revision", "7"]);
    assert!(!undo_to.status.success());
    assert!(String::from_utf8_lossy(&undo_to.stderr).contains("revision 7"), "{undo_to:?}");

    // Paused: a new template starts nothing, and the running revision still scales.
    node.peer_ok(&["rollout", "pause", "deployment/web"]);
    tests::apply(&node, "web.yaml", &spec("v3", "peer-demo:latest", "  minReadySeconds: 3\n  paused: true"));
    node.peer_ok(&["scale", "deployment/web", "--replicas", "4"]);
    assert_eq!(settled(&node, 4, "4 ready v1 replicas while paused"), v1);
    let status = node.peer(&["rollout", "status", "deployment/web", "--no-wait"]);
    assert!(String::from_utf8_lossy(&status.stdout).contains("paused"), "{status:?}");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(revisions(&node), (vec![v1.clone(); 4], 4), "nothing of v3 started while paused");
    node.peer_ok(&["rollout", "resume", "deployment/web"]);
    let v3 = settled(&node, 4, "4 ready v3 replicas after resume");
    assert!(v3 != v1 && v3 != v2);

    // An image that does not exist never gets Ready: after progressDeadlineSeconds the
    // rollout is marked failed, and the old replicas keep serving (maxUnavailable 0; the
    // manifest sets 3 replicas again, so one of the 4 went).
    tests::apply(&node, "web.yaml", &spec("v4", "peer-demo:no-such-tag", "  progressDeadlineSeconds: 4"));
    let status = node.peer(&["rollout", "status", "deployment/web"]);
    let stderr = String::from_utf8_lossy(&status.stderr);
    assert!(!status.status.success() && stderr.contains("exceeded its progress deadline"), "{status:?}");
    let events = node.peer_ok(&["get", "events", "-o", "json"]);
    assert!(events.contains("ProgressDeadlineExceeded"), "{events}");
    let (ready, _) = revisions(&node);
    assert_eq!(ready.iter().filter(|r| **r == v3).count(), 3, "the old replicas kept running: {ready:?}");
}
