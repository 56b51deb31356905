//! One real node: `peer up` on a spec folder, real containers through libcontainer.

use std::time::{Duration, Instant};

use serde_json::Value;
use tests::{require_root, wait_for, Node};

fn deployment(name: &str, replicas: u32, extra_container_fields: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
        - name: main
          image: peer-demo:latest
          ports: [{{containerPort: 8080}}]
{extra_container_fields}"#
    )
}

const LIMITS: &str = "          resources:\n            limits: {cpu: \"200m\", memory: \"64Mi\"}\n";

fn container(describe: &Value) -> &Value {
    &describe["containers"][0]
}

fn running_pid(describe: &Value) -> Option<i64> {
    container(describe)["state"]["running"]["pid"].as_i64()
}

fn restarts(describe: &Value) -> u64 {
    container(describe)["restartCount"].as_u64().unwrap_or(0)
}

/// Waits for exactly `n` running pods (and no others) and returns their names.
fn wait_running(node: &Node, n: usize, timeout: Duration) -> Vec<String> {
    wait_for(&format!("{n} running pods"), timeout, || {
        let pods = node.pods();
        let running = node.running_pods();
        (pods.len() == n && running.len() == n).then_some(running)
    })
}

fn kill9(pid: i64) {
    let status = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().expect("kill");
    assert!(status.success(), "kill -9 {pid} failed");
}

#[test]
fn three_replicas_run_and_answer_on_their_port() {
    if !require_root("three_replicas_run_and_answer_on_their_port") {
        return;
    }
    let node = Node::start("answer");
    node.write_spec("web.yaml", &deployment("web", 3, LIMITS));
    let pods = wait_running(&node, 3, Duration::from_secs(60));
    let mut pids = Vec::new();
    for pod in &pods {
        let body = node.peer_ok(&["exec", pod, "--", "/peer-demo", "get", "http://127.0.0.1:8080/"]);
        assert!(body.contains(&format!("hello from {pod}")), "pod {pod} answered {body:?}");
        let d = node.describe(pod);
        let pid = running_pid(&d).expect("running pid");
        // Each replica has its own network namespace, not the host's.
        let ns = std::fs::read_link(format!("/proc/{pid}/ns/net")).expect("container netns");
        assert_ne!(ns, std::fs::read_link("/proc/self/ns/net").expect("host netns"));
        pids.push(pid);
        let logs = node.peer_ok(&["logs", pod]);
        assert!(logs.contains("peer-demo listening on :8080"), "logs of {pod}: {logs:?}");
    }
    pids.sort();
    pids.dedup();
    assert_eq!(pids.len(), 3);
}

#[test]
fn killed_container_restarts_at_once_then_backs_off() {
    if !require_root("killed_container_restarts_at_once_then_backs_off") {
        return;
    }
    let node = Node::start("restart");
    node.write_spec("web.yaml", &deployment("web", 1, LIMITS));
    let pod = wait_running(&node, 1, Duration::from_secs(60)).remove(0);
    let first = running_pid(&node.describe(&pod)).expect("pid");

    let killed = Instant::now();
    kill9(first);
    let second = wait_for("the first restart", Duration::from_secs(10), || {
        let d = node.describe(&pod);
        running_pid(&d).filter(|p| *p != first && restarts(&d) == 1)
    });
    eprintln!("first restart running after {:?}", killed.elapsed());
    let d = node.describe(&pod);
    assert_eq!(container(&d)["lastState"]["terminated"]["reason"], "Error", "{d:#}");
    assert_eq!(container(&d)["lastState"]["terminated"]["exitCode"], 137, "{d:#}");

    // A second crash right away waits out the back-off (10 s) in CrashLoopBackOff.
    let killed = Instant::now();
    kill9(second);
    wait_for("CrashLoopBackOff", Duration::from_secs(5), || {
        node.pods().iter().any(|p| p["status"] == "CrashLoopBackOff").then_some(())
    });
    wait_for("the second restart", Duration::from_secs(30), || {
        let d = node.describe(&pod);
        running_pid(&d).filter(|p| *p != second && restarts(&d) == 2)
    });
    let waited = killed.elapsed();
    assert!(waited >= Duration::from_secs(9), "second restart after {waited:?}, expected the 10 s back-off");
}

fn cgroup_file(node: &Node, pod: &str, v1_controller: &str, v1_file: &str, v2_file: &str) -> String {
    let id = format!("default_{pod}_main");
    let v1 = format!("/sys/fs/cgroup/{v1_controller}/{}/{id}/{v1_file}", node.cgroup_parent);
    let v2 = format!("/sys/fs/cgroup/{}/{id}/{v2_file}", node.cgroup_parent);
    std::fs::read_to_string(&v1)
        .or_else(|_| std::fs::read_to_string(&v2))
        .unwrap_or_else(|e| panic!("reading {v1} or {v2}: {e}"))
        .trim()
        .to_owned()
}

#[test]
fn limits_are_in_the_cgroup_and_cannot_be_raised_from_inside() {
    if !require_root("limits_are_in_the_cgroup_and_cannot_be_raised_from_inside") {
        return;
    }
    let node = Node::start("limits");
    node.write_spec("web.yaml", &deployment("web", 1, LIMITS));
    let pod = wait_running(&node, 1, Duration::from_secs(60)).remove(0);
    let memory = cgroup_file(&node, &pod, "memory", "memory.limit_in_bytes", "memory.max");
    assert_eq!(memory, (64u64 << 20).to_string());
    let cpu = cgroup_file(&node, &pod, "cpu", "cpu.cfs_quota_us", "cpu.max");
    assert!(cpu.starts_with("20000"), "cpu quota {cpu:?}");

    // A root process in the container sees no writable cgroup file system and cannot mount one.
    for target in [
        "/sys/fs/cgroup/memory/memory.limit_in_bytes".to_string(),
        "/sys/fs/cgroup/memory.max".to_string(),
        format!("/sys/fs/cgroup/memory/{}/default_{pod}_main/memory.limit_in_bytes", node.cgroup_parent),
    ] {
        let out = node.peer(&["exec", &pod, "--", "/peer-demo", "write", &target, "1073741824"]);
        assert!(!out.status.success(), "writing {target} from inside the container succeeded");
    }
    let out = node.peer(&["exec", &pod, "--", "/peer-demo", "mount-cgroup"]);
    assert!(!out.status.success(), "mounting a cgroup fs inside the container succeeded");
    assert_eq!(
        cgroup_file(&node, &pod, "memory", "memory.limit_in_bytes", "memory.max"),
        (64u64 << 20).to_string()
    );
}

#[test]
fn exceeding_the_memory_limit_is_oomkilled_and_restarted() {
    if !require_root("exceeding_the_memory_limit_is_oomkilled_and_restarted") {
        return;
    }
    let node = Node::start("oom");
    let extra = "          command: [\"/peer-demo\", \"alloc\", \"256\"]\n          resources:\n            limits: {memory: \"32Mi\"}\n";
    node.write_spec("hog.yaml", &deployment("hog", 1, extra));
    let pod = wait_for("a pod", Duration::from_secs(60), || {
        node.pods().first().and_then(|p| p["name"].as_str().map(str::to_owned))
    });
    let d = wait_for("an OOMKilled termination", Duration::from_secs(60), || {
        let d = node.describe(&pod);
        (container(&d)["lastState"]["terminated"]["reason"] == "OOMKilled" && restarts(&d) >= 1).then_some(d)
    });
    assert_eq!(container(&d)["lastState"]["terminated"]["exitCode"], 137, "{d:#}");
    let events = node.peer_ok(&["get", "events"]);
    assert!(events.contains("OOMKilled"), "events: {events}");
}

#[test]
fn editing_replicas_scales_and_removing_the_file_deletes() {
    if !require_root("editing_replicas_scales_and_removing_the_file_deletes") {
        return;
    }
    let node = Node::start("scale");
    node.write_spec("web.yaml", &deployment("web", 2, LIMITS));
    wait_running(&node, 2, Duration::from_secs(60));
    node.write_spec("web.yaml", &deployment("web", 4, LIMITS));
    wait_running(&node, 4, Duration::from_secs(30));
    node.write_spec("web.yaml", &deployment("web", 1, LIMITS));
    let left = wait_running(&node, 1, Duration::from_secs(30));
    assert!(left[0].ends_with("-0"), "scale down keeps the lowest index, left {left:?}");
    node.remove_spec("web.yaml");
    wait_for("no pods", Duration::from_secs(30), || node.pods().is_empty().then_some(()));
    // The containers are gone from the runtime too: no cgroup of this node is left.
    let cgroups = std::fs::read_dir(format!("/sys/fs/cgroup/memory/{}", node.cgroup_parent))
        .or_else(|_| std::fs::read_dir(format!("/sys/fs/cgroup/{}", node.cgroup_parent)))
        .map(|d| d.flatten().filter(|e| e.path().is_dir()).count())
        .unwrap_or(0);
    assert_eq!(cgroups, 0, "container cgroups left behind");

    // The same through the CLI: apply, then delete by name.
    let file = node.dir.join("api.yaml");
    std::fs::write(&file, deployment("api", 2, LIMITS)).expect("writing api.yaml");
    node.peer_ok(&["apply", "-f", &file.display().to_string()]);
    wait_running(&node, 2, Duration::from_secs(30));
    node.peer_ok(&["delete", "deployment", "api"]);
    wait_for("no pods after delete", Duration::from_secs(30), || node.pods().is_empty().then_some(()));
}

#[test]
fn restarting_the_agent_adopts_its_containers() {
    if !require_root("restarting_the_agent_adopts_its_containers") {
        return;
    }
    let mut node = Node::start("adopt");
    node.write_spec("web.yaml", &deployment("web", 2, LIMITS));
    let pods = wait_running(&node, 2, Duration::from_secs(60));
    let pids: Vec<i64> = pods.iter().map(|p| running_pid(&node.describe(p)).expect("pid")).collect();

    node.kill_agent();
    node.start_agent();
    let after = wait_running(&node, 2, Duration::from_secs(30));
    assert_eq!(after, pods);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(node.pods().len(), 2, "no duplicates after adoption");
    for (pod, pid) in pods.iter().zip(&pids) {
        let d = node.describe(pod);
        assert_eq!(running_pid(&d), Some(*pid), "pod {pod} kept its container");
        assert_eq!(restarts(&d), 0);
    }
    // An adopted container is still watched: killing it gets it restarted.
    kill9(pids[0]);
    wait_for("restart of an adopted container", Duration::from_secs(15), || {
        let d = node.describe(&pods[0]);
        running_pid(&d).filter(|p| *p != pids[0])
    });
}

#[test]
fn malformed_yaml_is_reported_and_nothing_else_is_lost() {
    if !require_root("malformed_yaml_is_reported_and_nothing_else_is_lost") {
        return;
    }
    let node = Node::start("bad");
    node.write_spec("web.yaml", &deployment("web", 1, LIMITS));
    let pod = wait_running(&node, 1, Duration::from_secs(60)).remove(0);
    let pid = running_pid(&node.describe(&pod)).expect("pid");

    // A wrong type in another file names the file and the field.
    node.write_spec("bad.yaml", &deployment("bad", 1, LIMITS).replace("replicas: 1", "replicas: five"));
    wait_for("an event naming bad.yaml and spec.replicas", Duration::from_secs(5), || {
        let events = node.peer_ok(&["get", "events"]);
        (events.contains("bad.yaml") && events.contains("spec.replicas")).then_some(())
    });
    // A syntax error in the running object's own file keeps its last good version.
    node.write_spec("web.yaml", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web\nspec: [\n");
    wait_for("an event naming web.yaml with a line", Duration::from_secs(5), || {
        let events = node.peer_ok(&["get", "events"]);
        (events.contains("web.yaml") && events.contains("line")).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(node.running_pods(), vec![pod.clone()]);
    assert_eq!(running_pid(&node.describe(&pod)), Some(pid), "the good deployment kept running untouched");
    assert_eq!(node.pods().len(), 1, "the bad file started nothing");
}
