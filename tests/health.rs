//! Probes with real containers: liveness restarts a container whose HTTP endpoint fails,
//! a startup probe protects a slow start, readiness flips Ready without a restart and is
//! seen from another node, and an exec probe runs inside the container.

use std::time::{Duration, Instant};

use serde_json::Value;
use tests::{cluster, event_messages, require_root, wait_for, Node};

/// A bare Pod of the demo server with `container_extra` appended to its container.
fn pod(name: &str, container_extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n    - name: main\n      image: peer-demo:latest\n      resources:\n        limits: {{cpu: \"100m\", memory: \"32Mi\"}}\n{container_extra}"
    )
}

fn container(d: &Value) -> &Value {
    &d["containers"][0]
}

fn restarts(node: &Node, pod: &str) -> u64 {
    container(&node.describe(pod))["restartCount"].as_u64().unwrap_or(0)
}

/// Whether the pod is Running with every container ready, as `peer get pods` on `node` says.
fn ready_on(node: &Node, pod: &str) -> Option<bool> {
    let row = node.all_pods().into_iter().find(|p| p["name"] == pod)?;
    let ready = row["ready"].as_str()?.to_owned();
    Some(row["status"] == "Running" && ready.split_once('/').is_some_and(|(a, b)| a == b && a != "0"))
}

#[test]
fn liveness_restarts_a_failing_server_and_a_startup_probe_protects_a_slow_start() {
    if !require_root("liveness_restarts_a_failing_server_and_a_startup_probe_protects_a_slow_start") {
        return;
    }
    let node = Node::start("health-live");
    // Ready only once the server answers, so the test can tell when the endpoint is up.
    let liveness = "      livenessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1, failureThreshold: 3}\n      readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1}\n";
    node.write_spec("live.yaml", &pod("live", liveness));
    // A server that answers only after 4 s: a startup probe (15 × 1 s) holds its
    // liveness probe back; the same server without one is killed while starting.
    let slow = "      env: [{name: START_DELAY_SECS, value: \"4\"}]\n";
    let strict = "      livenessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1, failureThreshold: 1}\n";
    let startup = "      startupProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1, failureThreshold: 15}\n";
    node.write_spec("slow.yaml", &pod("slow", &format!("{slow}{strict}{startup}")));
    node.write_spec("unguarded.yaml", &pod("unguarded", &format!("{slow}{strict}")));

    wait_for("live to be ready", Duration::from_secs(30), || ready_on(&node, "live")?.then_some(()));
    assert_eq!(restarts(&node, "live"), 0);
    // A liveness check that ran before the server listened failed (connection refused), as
    // in Kubernetes; one period after the server answered, a check has succeeded and the
    // count of failures in a row starts again from zero.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(restarts(&node, "live"), 0);

    // The endpoint starts failing: three failed checks a second apart, then a restart.
    node.peer_ok(&["exec", "live", "--", "/peer-demo", "write", "/tmp/unhealthy", "x"]);
    let broke = Instant::now();
    wait_for("live to be restarted", Duration::from_secs(30), || {
        (restarts(&node, "live") == 1).then_some(())
    });
    let after = broke.elapsed();
    eprintln!("liveness restart {after:?} after the endpoint started failing (3 × 1 s)");
    assert!(
        after >= Duration::from_secs(2),
        "restarted after {after:?}, before 3 failed checks a second apart"
    );
    let d = node.describe("live");
    let unhealthy = event_messages(&d, "Unhealthy");
    assert!(
        unhealthy.iter().any(|m| m.contains("Liveness probe failed: HTTP probe failed with statuscode: 500")),
        "{unhealthy:?}"
    );
    assert!(event_messages(&d, "Killing").iter().any(|m| m.contains("failed liveness probe")), "{d}");
    // The new container starts from a fresh writable layer, so it is healthy again and stays.
    wait_for("live to be ready again", Duration::from_secs(30), || ready_on(&node, "live")?.then_some(()));
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(restarts(&node, "live"), 1, "a healthy container was restarted again");

    // The slow starter became ready without a restart; the unguarded one was killed.
    wait_for("slow to be ready", Duration::from_secs(30), || ready_on(&node, "slow")?.then_some(()));
    assert_eq!(restarts(&node, "slow"), 0, "the startup probe did not hold liveness back");
    assert_eq!(container(&node.describe("slow"))["started"], true);
    wait_for("unguarded to be killed by liveness", Duration::from_secs(30), || {
        (restarts(&node, "unguarded") >= 1).then_some(())
    });
}

#[test]
fn an_exec_probe_runs_inside_the_container() {
    if !require_root("an_exec_probe_runs_inside_the_container") {
        return;
    }
    let node = Node::start("health-exec");
    // A path that exists on the host but not in the container.
    let marker = node.dir.join("marker");
    std::fs::write(&marker, "host").expect("writing the host marker");
    let marker = marker.display().to_string();
    let probe = format!(
        "      readinessProbe: {{exec: {{command: [/peer-demo, cat, \"{marker}\"]}}, periodSeconds: 1}}\n"
    );
    node.write_spec("exec.yaml", &pod("exec", &probe));
    wait_for("exec to run", Duration::from_secs(30), || {
        let row = node.pods().into_iter().find(|p| p["name"] == "exec")?;
        (row["status"] == "Running").then_some(())
    });
    // Unready: the probe does not see the host's file ...
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(ready_on(&node, "exec"), Some(false), "the exec probe saw the host's filesystem");
    let d = node.describe("exec");
    assert!(
        event_messages(&d, "Unhealthy").iter().any(|m| m.starts_with("Readiness probe failed: command")),
        "{d}"
    );
    // ... and becomes ready once the file exists in the container's own filesystem.
    let dir = std::path::Path::new(&marker).parent().expect("marker has a parent").display().to_string();
    node.peer_ok(&["exec", "exec", "--", "/peer-demo", "mkdir", &dir]);
    node.peer_ok(&["exec", "exec", "--", "/peer-demo", "write", &marker, "container"]);
    wait_for("exec to be ready", Duration::from_secs(10), || ready_on(&node, "exec")?.then_some(()));
    assert_eq!(restarts(&node, "exec"), 0, "a readiness probe never restarts a container");
}

#[test]
fn readiness_flips_without_a_restart_and_another_node_sees_it() {
    if !require_root("readiness_flips_without_a_restart_and_another_node_sees_it") {
        return;
    }
    let nodes = cluster(&["ready-a", "ready-b"]);
    let (a, b) = (&nodes[0], &nodes[1]);
    let spec = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 1\n  template:\n    spec:\n      nodeSelector: {kubernetes.io/hostname: ready-b}\n      terminationGracePeriodSeconds: 1\n      containers:\n        - name: main\n          image: peer-demo:latest\n          resources:\n            limits: {cpu: \"100m\", memory: \"32Mi\"}\n          readinessProbe: {httpGet: {path: /ready, port: 8080}, periodSeconds: 1, failureThreshold: 1}\n";
    tests::apply(a, "web.yaml", spec);
    let pod = wait_for("web to be ready on b, seen from a", Duration::from_secs(60), || {
        let row = a.all_pods().into_iter().find(|p| p["node"] == "ready-b")?;
        let name = row["name"].as_str()?.to_owned();
        ready_on(a, &name)?.then_some(name)
    });

    b.peer_ok(&["exec", &pod, "--", "/peer-demo", "write", "/tmp/notready", "x"]);
    let on_b = wait_for("b to mark web unready", Duration::from_secs(10), || {
        (ready_on(b, &pod) == Some(false)).then(Instant::now)
    });
    wait_for("a to see web unready", Duration::from_secs(10), || {
        (ready_on(a, &pod) == Some(false)).then_some(())
    });
    let seen = on_b.elapsed();
    eprintln!("readiness flip seen on the other node {seen:?} after the owner flipped it");
    assert!(seen <= Duration::from_secs(2), "another node saw the readiness flip only after {seen:?}");
    let d = b.describe(&pod);
    assert_eq!(container(&d)["restartCount"], 0, "a readiness failure restarted the container");
    let ready = d["conditions"].as_array().into_iter().flatten().find(|c| c["type"] == "Ready").cloned();
    assert_eq!(ready.as_ref().map(|c| c["status"].clone()), Some(Value::from("False")), "{d}");
    assert!(a.all_pods().iter().any(|p| p["name"] == pod.as_str() && p["status"] == "Running"));

    b.peer_ok(&["exec", &pod, "--", "/peer-demo", "rm", "/tmp/notready"]);
    wait_for("a to see web ready again", Duration::from_secs(10), || ready_on(a, &pod)?.then_some(()));
    assert_eq!(restarts(b, &pod), 0);
}

#[test]
fn pre_stop_hooks_run_before_the_container_is_stopped() {
    if !require_root("pre_stop_hooks_run_before_the_container_is_stopped") {
        return;
    }
    let node = Node::start("health-hook");
    let sleepy = "      lifecycle: {preStop: {sleep: {seconds: 3}}}\n";
    let failing = "      lifecycle: {preStop: {exec: {command: [/peer-demo, exit, \"3\"]}}}\n";
    node.write_spec(
        "sleepy.yaml",
        &pod("sleepy", sleepy)
            .replace("terminationGracePeriodSeconds: 1", "terminationGracePeriodSeconds: 10"),
    );
    node.write_spec("failing.yaml", &pod("failing", failing));
    for name in ["sleepy", "failing"] {
        wait_for(&format!("{name} to run"), Duration::from_secs(30), || ready_on(&node, name)?.then_some(()));
    }
    let pid = container(&node.describe("sleepy"))["state"]["running"]["pid"].as_i64().expect("a pid");
    node.remove_spec("sleepy.yaml");
    let deleted = Instant::now();
    // The 3 s preStop sleep runs first: the container is still alive meanwhile.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the container was stopped before its preStop hook ended"
    );
    wait_for("sleepy to be gone", Duration::from_secs(20), || {
        node.pods().iter().all(|p| p["name"] != "sleepy").then_some(())
    });
    let took = deleted.elapsed();
    assert!(took >= Duration::from_secs(3), "sleepy was gone after {took:?}, before its 3 s preStop sleep");

    // A failing hook is reported, and the container is stopped all the same.
    node.remove_spec("failing.yaml");
    wait_for("failing to be gone", Duration::from_secs(20), || {
        node.pods().iter().all(|p| p["name"] != "failing").then_some(())
    });
    let events = node.peer_ok(&["get", "events", "-o", "json"]);
    assert!(events.contains("FailedPreStopHook") && events.contains("exited with code 3"), "{events}");
}
