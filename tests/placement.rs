//! Leaderless placement with real agents and containers: every replica runs on exactly
//! one node, a dead node's replicas start on the survivors, and its return leaves exactly
//! the desired count.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use tests::{apply, cluster, deployment, join, live_nodes, require_root, wait_for, Node};

/// Names of the pods running on `nodes`, one entry per running copy.
fn running(nodes: &[&Node]) -> Vec<String> {
    nodes.iter().flat_map(|n| n.running_pods()).collect()
}

/// Waits until exactly `n` distinct replicas run on `nodes`, one copy each.
fn wait_exactly(what: &str, nodes: &[&Node], n: usize, limit: Duration) -> Vec<String> {
    wait_for(what, limit, || {
        let all = running(nodes);
        let distinct: BTreeSet<&String> = all.iter().collect();
        (all.len() == n && distinct.len() == n).then_some(all)
    })
}

#[test]
fn a_dead_nodes_replicas_run_on_the_survivors_and_its_return_leaves_exactly_ten() {
    if !require_root("a_dead_nodes_replicas_run_on_the_survivors_and_its_return_leaves_exactly_ten") {
        return;
    }
    let mut nodes = cluster(&["h1", "h2", "h3", "h4", "h5"]);
    apply(&nodes[0], "api.yaml", &deployment("api", 10));
    let all: Vec<&Node> = nodes.iter().collect();
    wait_exactly("10 replicas, one copy each", &all, 10, Duration::from_secs(60));
    let spread: Vec<usize> = nodes.iter().map(|n| n.running_pods().len()).collect();
    eprintln!("replicas per node: {spread:?}");
    assert!(spread.iter().filter(|c| **c > 0).count() >= 3, "10 replicas spread over the nodes: {spread:?}");

    // kill -9 the agent of the busiest node and every container it ran.
    let victim = (0..nodes.len()).max_by_key(|i| spread[*i]).expect("five nodes");
    let moved = nodes[victim].running_pods();
    let killed = Instant::now();
    nodes[victim].kill_agent();
    assert!(nodes[victim].kill_containers() >= moved.len());
    let survivors: Vec<&Node> =
        nodes.iter().enumerate().filter(|(i, _)| *i != victim).map(|(_, n)| n).collect();
    let after = wait_exactly("10 replicas on the survivors", &survivors, 10, Duration::from_secs(20));
    eprintln!("{} replicas of {} replaced in {:?}", moved.len(), nodes[victim].name, killed.elapsed());
    // Only the dead node's replicas moved: the survivors kept theirs.
    for (i, n) in nodes.iter().enumerate() {
        if i != victim {
            for p in n.running_pods() {
                assert!(after.contains(&p));
            }
        }
    }

    // The node comes back with its old pod records; once things settle, exactly 10 run.
    nodes[victim].start_agent();
    let all: Vec<&Node> = nodes.iter().collect();
    wait_for("the returned node to see four peers", Duration::from_secs(10), || {
        (live_nodes(&nodes[victim]).len() == 5).then_some(())
    });
    std::thread::sleep(Duration::from_secs(5));
    wait_exactly("exactly 10 after the return", &all, 10, Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(3));
    let settled = running(&all);
    assert_eq!(settled.len(), 10, "still exactly 10: {settled:?}");
    let spread: Vec<usize> = nodes.iter().map(|n| n.running_pods().len()).collect();
    eprintln!("replicas per node after the return: {spread:?}");
    assert_eq!(spread[victim], 0, "the returning node takes nothing back: {spread:?}");
}

/// A workload of the demo image: `kind` StatefulSet or DaemonSet (no `replicas` for the
/// latter), with `extra` lines appended under the pod spec.
fn workload(kind: &str, name: &str, replicas: Option<u32>, pod_extra: &str) -> String {
    let replicas = replicas.map(|r| format!("  replicas: {r}\n")).unwrap_or_default();
    format!(
        "apiVersion: apps/v1\nkind: {kind}\nmetadata: {{name: {name}}}\nspec:\n{replicas}  template:\n    spec:\n      terminationGracePeriodSeconds: 1\n{pod_extra}      containers:\n        - name: main\n          image: peer-demo:latest\n          resources:\n            limits: {{cpu: \"100m\", memory: \"32Mi\"}}\n"
    )
}

#[test]
fn a_daemonset_runs_on_every_node_and_a_statefulset_starts_in_order() {
    if !require_root("a_daemonset_runs_on_every_node_and_a_statefulset_starts_in_order") {
        return;
    }
    let mut nodes = cluster(&["d1", "d2", "d3"]);
    apply(&nodes[0], "agent.yaml", &workload("DaemonSet", "agent", None, ""));
    apply(&nodes[0], "db.yaml", &workload("StatefulSet", "db", Some(3), ""));
    for n in &nodes {
        let want = format!("agent-{}", n.name);
        wait_for(&format!("{want} on its node"), Duration::from_secs(30), || {
            n.running_pods().contains(&want).then_some(())
        });
    }
    // Ordinals start one after the other: record when each is first seen running.
    let all: Vec<&Node> = nodes.iter().collect();
    let start = Instant::now();
    let mut first_seen: [Option<Duration>; 3] = [None; 3];
    wait_for("db-0, db-1, db-2 running", Duration::from_secs(60), || {
        for p in running(&all) {
            if let Some(i) = p.strip_prefix("db-").and_then(|i| i.parse::<usize>().ok()) {
                first_seen[i].get_or_insert(start.elapsed());
            }
        }
        first_seen.iter().all(Option::is_some).then_some(())
    });
    eprintln!("statefulset ordinals first seen running at {first_seen:?}");
    assert!(first_seen[0] < first_seen[1] && first_seen[1] < first_seen[2], "{first_seen:?}");
    let dbs: Vec<String> = running(&all).into_iter().filter(|p| p.starts_with("db-")).collect();
    assert_eq!(dbs.len(), 3, "one copy of each identity: {dbs:?}");

    // A node joining later gets its DaemonSet pod.
    let token = nodes[0].peer_ok(&["token"]).trim().to_owned();
    let late = join("d4", &nodes[0], &token);
    wait_for("agent-d4 on the late joiner", Duration::from_secs(30), || {
        late.running_pods().contains(&"agent-d4".to_owned()).then_some(())
    });
    nodes.push(late);
}

#[test]
fn cordon_and_selectors_keep_pods_off_and_unschedulable_pods_say_why() {
    if !require_root("cordon_and_selectors_keep_pods_off_and_unschedulable_pods_say_why") {
        return;
    }
    let nodes = cluster(&["c1", "c2"]);
    nodes[0].peer_ok(&["cordon"]);
    wait_for("c1 shown cordoned on c2", Duration::from_secs(10), || {
        let rows = tests::nodes_json(&nodes[1]);
        rows.iter().any(|n| n["name"] == "c1" && n["state"] == "live,SchedulingDisabled").then_some(())
    });
    apply(&nodes[1], "web.yaml", &deployment("web", 2));
    let all: Vec<&Node> = nodes.iter().collect();
    wait_exactly("2 web replicas", &all, 2, Duration::from_secs(30));
    assert!(nodes[0].running_pods().is_empty(), "nothing new on a cordoned node");
    // Any node describes a pod from the runner's claim.
    let pod = nodes[1].running_pods().pop().expect("a web pod on c2");
    wait_for("c1 to describe the pod running on c2", Duration::from_secs(5), || {
        let d = nodes[0].describe(&pod);
        (d["node"] == "c2" && d["status"] == "Running").then_some(())
    });
    nodes[0].peer_ok(&["uncordon"]);
    wait_for("c1 shown schedulable on c2", Duration::from_secs(10), || {
        let rows = tests::nodes_json(&nodes[1]);
        rows.iter().any(|n| n["name"] == "c1" && n["state"] == "live").then_some(())
    });

    // A pod that fits nowhere is Pending with Kubernetes' FailedScheduling reason, on
    // every node, and runs as soon as a node matches.
    let ssd = "      nodeSelector: {disk: ssd}\n";
    apply(&nodes[0], "fast.yaml", &workload("StatefulSet", "fast", Some(1), ssd));
    let why = wait_for("fast-0 unschedulable", Duration::from_secs(10), || {
        let d = nodes[1].describe("fast-0");
        d["conditions"][0]["message"].as_str().map(str::to_owned)
    });
    assert_eq!(why, "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector");
    let events = nodes[0].peer_ok(&["get", "events"]);
    assert!(events.contains("FailedScheduling"), "{events}");
    nodes[1].peer_ok(&["label", "disk=ssd"]);
    wait_for("fast-0 running on c2 once it matches", Duration::from_secs(40), || {
        nodes[1].running_pods().contains(&"fast-0".to_owned()).then_some(())
    });
}

#[test]
fn a_statefulset_replica_never_runs_twice_across_a_partition() {
    if !require_root("a_statefulset_replica_never_runs_twice_across_a_partition") {
        return;
    }
    let nodes = cluster(&["s1", "s2", "s3"]);
    apply(&nodes[0], "db.yaml", &workload("StatefulSet", "db", Some(1), ""));
    let all: Vec<&Node> = nodes.iter().collect();
    wait_exactly("db-0 running", &all, 1, Duration::from_secs(60));
    let holder = nodes.iter().position(|n| !n.running_pods().is_empty()).expect("a holder");
    let others: Vec<usize> = (0..3).filter(|i| *i != holder).collect();
    // Cut the holder off from the other two (both directions).
    let addr = |i: usize| nodes[i].listen.to_string();
    nodes[holder].peer_ok(&["block", &addr(others[0]), &addr(others[1])]);
    for &o in &others {
        nodes[o].peer_ok(&["block", &addr(holder)]);
    }
    let cut = Instant::now();
    // The minority fences db-0; the majority starts it after the fence delay. At no
    // poll do two copies run.
    let moved = wait_for("db-0 on the majority side", Duration::from_secs(60), || {
        let copies = running(&all).len();
        assert!(copies <= 1, "db-0 ran twice {:?} after the cut", cut.elapsed());
        others.iter().find(|o| !nodes[**o].running_pods().is_empty()).copied()
    });
    eprintln!("db-0 moved from {} to {} after {:?}", nodes[holder].name, nodes[moved].name, cut.elapsed());
    assert!(nodes[holder].running_pods().is_empty(), "the minority fenced its copy");
    for n in &nodes {
        n.peer_ok(&["block"]);
    }
    // After the heal, still one copy.
    let healed = Instant::now();
    while healed.elapsed() < Duration::from_secs(8) {
        assert!(running(&all).len() <= 1, "db-0 ran twice after the heal");
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_exactly("db-0 running once", &all, 1, Duration::from_secs(30));
}

#[test]
fn a_node_cut_off_or_rebooted_alone_keeps_its_workloads_running() {
    if !require_root("a_node_cut_off_or_rebooted_alone_keeps_its_workloads_running") {
        return;
    }
    let mut nodes = cluster(&["a1", "a2", "a3"]);
    apply(&nodes[0], "api.yaml", &deployment("api", 3));
    let all: Vec<&Node> = nodes.iter().collect();
    wait_exactly("3 replicas", &all, 3, Duration::from_secs(60));

    // Cut a1 off: it runs every replica itself (availability first) and restarts them.
    let addr = |i: usize| nodes[i].listen.to_string();
    nodes[0].peer_ok(&["block", &addr(1), &addr(2)]);
    nodes[1].peer_ok(&["block", &addr(0)]);
    nodes[2].peer_ok(&["block", &addr(0)]);
    wait_exactly("all 3 on the cut-off node", &[&nodes[0]], 3, Duration::from_secs(30));
    assert!(nodes[0].kill_containers() >= 3);
    wait_exactly("all 3 restarted on the cut-off node", &[&nodes[0]], 3, Duration::from_secs(30));

    // The others stop; a1 reboots (agent and containers killed) with no peer reachable.
    nodes[1].kill_agent();
    nodes[2].kill_agent();
    nodes[0].kill_agent();
    nodes[0].kill_containers();
    nodes[0].start_agent();
    wait_exactly("all 3 back after a reboot alone", &[&nodes[0]], 3, Duration::from_secs(30));

    // The others come back (their containers ran on): the cut heals and the cluster
    // converges to one copy of each replica, with no extra left running.
    nodes[1].start_agent();
    nodes[2].start_agent();
    let all: Vec<&Node> = nodes.iter().collect();
    wait_for("all three nodes live again", Duration::from_secs(30), || {
        (live_nodes(&nodes[0]).len() == 3).then_some(())
    });
    wait_exactly("one copy of each replica after the heal", &all, 3, Duration::from_secs(60));
    let healed = Instant::now();
    while healed.elapsed() < Duration::from_secs(5) {
        let copies = running(&all);
        assert!(copies.len() <= 3, "extra replicas after the heal: {copies:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}
