//! Rolling updates with real agents on test hosts: under continuous load through the
//! service, a template change replaces every replica with no failed request, and the
//! cluster never has fewer Ready or more replicas than maxUnavailable and maxSurge allow.

use std::time::{Duration, Instant};

use serde_json::Value;
use tests::{cluster_on, require_root, wait_for, TestNet};

fn spec(version: &str, surge: u32, unavailable: u32) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 10
  selector: {{matchLabels: {{app: web}}}}
  strategy: {{type: RollingUpdate, rollingUpdate: {{maxSurge: {surge}, maxUnavailable: {unavailable}}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 5
      affinity:
        nodeAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            nodeSelectorTerms:
              - matchExpressions: [{{key: kubernetes.io/hostname, operator: In, values: [rb, rc, rd, re]}}]
      containers:
        - name: web
          image: peer-demo:latest
          env: [{{name: VERSION, value: \"{version}\"}}]
          ports: [{{name: http, containerPort: 8080}}]
          resources: {{limits: {{cpu: 100m, memory: 32Mi}}}}
          readinessProbe: {{httpGet: {{path: /ready, port: http}}, periodSeconds: 1, failureThreshold: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: http}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client}}
spec:
  nodeSelector: {{kubernetes.io/hostname: ra}}
  terminationGracePeriodSeconds: 1
  containers:
    - name: client
      image: peer-demo:latest
      resources: {{limits: {{cpu: 100m, memory: 32Mi}}}}
"
    )
}

/// (ready, total) replicas of `web` and the revisions of the ready ones, as `rows` show.
fn count(rows: &[Value]) -> (usize, usize, Vec<String>) {
    let web: Vec<&Value> =
        rows.iter().filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with("web-"))).collect();
    let ready: Vec<&&Value> =
        web.iter().filter(|p| p["status"] == "Running" && p["ready"] == "1/1").collect();
    let revisions =
        ready.iter().filter_map(|p| p["name"].as_str()?.split('-').nth(1).map(str::to_owned)).collect();
    (ready.len(), web.len(), revisions)
}

fn roll(surge: u32, unavailable: u32) {
    // One rollout at a time: two clusters of five under load on the same cores would
    // measure the machine, not the rollout.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut net = TestNet::new("roll");
    let nodes = cluster_on(&mut net, &["ra", "rb", "rc", "rd", "re"]);
    let a = &nodes[0];
    tests::apply(a, "web.yaml", &spec("v1", surge, unavailable));
    let v1 = wait_for("10 ready v1 replicas and the client", Duration::from_secs(120), || {
        let rows = a.all_pods();
        let (ready, total, revs) = count(&rows);
        let client = rows.iter().any(|p| p["name"] == "client" && p["ready"] == "1/1");
        (ready == N && total == N && client).then(|| revs[0].clone())
    });
    wait_for("the service to answer", Duration::from_secs(20), || {
        a.peer(&["exec", "client", "--", "/peer-demo", "get", "http://web/"]).status.success().then_some(())
    });

    // Continuous load through the service during the whole rollout.
    let load = {
        let (data, netns) = (a.data.clone(), a.netns.clone().expect("a test host"));
        std::thread::spawn(move || {
            let out = std::process::Command::new("nsenter")
                .arg(format!("--net=/run/netns/{netns}"))
                .arg("--")
                .arg(tests::peer_bin())
                .args(["exec", "client", "--", "/peer-demo", "hammer", "http://web/", "900", "50"])
                .env("PEER_DATA_DIR", data)
                .output()
                .expect("running the load");
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    tests::apply(a, "web.yaml", &spec("v2", surge, unavailable));
    let started = Instant::now();
    let (mut samples, mut min_ready, mut max_total) = (0, usize::MAX, 0);
    loop {
        let (ready, total, revs) = count(&a.all_pods());
        samples += 1;
        min_ready = min_ready.min(ready);
        max_total = max_total.max(total);
        assert!(ready + unavailable as usize >= N, "only {ready} ready replicas during the rollout");
        assert!(total <= N + surge as usize, "{total} replicas during the rollout");
        if ready == N && total == N && revs.iter().all(|r| *r != v1) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "the rollout did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = started.elapsed();
    let lines = load.join().expect("the load thread");
    let failed: Vec<&str> = lines.lines().filter(|l| l.split(' ').nth(1) != Some("ok")).collect();
    eprintln!(
        "maxSurge {surge} maxUnavailable {unavailable}: rollout {took:?}, {samples} samples, ready >= {min_ready}, total <= {max_total}; {} requests, {} failed",
        lines.lines().count(),
        failed.len()
    );
    assert!(samples as f64 >= took.as_secs_f64() * 10.0 * 0.5, "sampled too rarely");
    assert!(lines.lines().count() >= 800, "the load stopped early: {lines}");
    assert!(failed.is_empty(), "failed requests during the rollout: {failed:?}");
    let status = a.peer_ok(&["rollout", "status", "deployment/web", "--no-wait"]);
    assert!(status.contains("successfully rolled out"), "{status}");

    // Scaling keeps the revision: two more replicas, all of it Ready.
    a.peer_ok(&["scale", "deployment/web", "--replicas", "12"]);
    wait_for("12 ready replicas of the new revision", Duration::from_secs(60), || {
        let (ready, total, revs) = count(&a.all_pods());
        (ready == 12 && total == 12 && revs.iter().all(|r| *r != v1)).then_some(())
    });
}

/// Replicas of the Deployment under test.
const N: usize = 10;

#[test]
fn a_rolling_update_with_surge_loses_no_request() {
    if !require_root("a_rolling_update_with_surge_loses_no_request") {
        return;
    }
    roll(1, 0);
}

#[test]
fn a_rolling_update_with_unavailability_loses_no_request() {
    if !require_root("a_rolling_update_with_unavailability_loses_no_request") {
        return;
    }
    roll(0, 2);
}
