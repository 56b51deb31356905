//! Several real nodes on loopback: desired state spreads over gossip + QUIC, survives its
//! author, heals after a partition, and refuses removed nodes.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::{
    apply, cluster, deployment, deployments, join, live_nodes, nodes_json, peer_bin, require_root, wait_for,
    Node,
};

#[test]
fn a_spec_reaches_every_node_survives_its_author_and_reaches_late_joiners() {
    if !require_root("a_spec_reaches_every_node_survives_its_author_and_reaches_late_joiners") {
        return;
    }
    let mut nodes = cluster(&["ca", "cb", "cc"]);
    let applied = Instant::now();
    apply(&nodes[0], "api.yaml", &deployment("api", 1));
    for node in &nodes[1..] {
        wait_for(&format!("api on {}", node.name), Duration::from_secs(1), || {
            (deployments(node) == vec![("api".to_string(), 1)]).then_some(())
        });
    }
    eprintln!("spec visible on all nodes after {:?}", applied.elapsed());
    // Exactly one node runs the one replica, and every node shows where.
    wait_for("one running api pod in the cluster", Duration::from_secs(30), || {
        (nodes.iter().map(|n| n.running_pods().len()).sum::<usize>() == 1).then_some(())
    });
    for node in &nodes {
        wait_for(&format!("{} to show the pod running", node.name), Duration::from_secs(5), || {
            (node.all_pods().iter().filter(|p| p["status"] == "Running").count() == 1).then_some(())
        });
    }

    // The author dies; the others keep the spec and act on a change made on another node.
    let killed = Instant::now();
    nodes[0].kill_agent();
    wait_for("the author seen dead", Duration::from_secs(5), || {
        (live_nodes(&nodes[1]).len() == 2).then_some(())
    });
    eprintln!("killed node seen dead after {:?}", killed.elapsed());
    apply(&nodes[1], "api.yaml", &deployment("api", 2));
    wait_for("the change on the third node", Duration::from_secs(2), || {
        (deployments(&nodes[2]) == vec![("api".to_string(), 2)]).then_some(())
    });
    wait_for("two replicas on the survivors", Duration::from_secs(30), || {
        (nodes[1].running_pods().len() + nodes[2].running_pods().len() == 2).then_some(())
    });

    // A node joining afterwards, through a survivor, gets the state.
    let token = nodes[1].peer_ok(&["token"]).trim().to_owned();
    let late = join("cd", &nodes[1], &token);
    wait_for("the state on the late joiner", Duration::from_secs(5), || {
        (deployments(&late) == vec![("api".to_string(), 2)]).then_some(())
    });
    nodes.push(late);
    // The dead author comes back with its old state and converges to the newer one.
    nodes[0].start_agent();
    wait_for("the returning author catches up", Duration::from_secs(5), || {
        (deployments(&nodes[0]) == vec![("api".to_string(), 2)]).then_some(())
    });
}

#[test]
fn both_sides_of_a_partition_edit_and_converge_after_it_heals() {
    if !require_root("both_sides_of_a_partition_edit_and_converge_after_it_heals") {
        return;
    }
    let mut nodes = cluster(&["pa", "pb", "pc"]);
    for n in nodes.iter_mut().skip(1) {
        n.agent_env.clear();
    }
    apply(&nodes[0], "web.yaml", &deployment("web", 1));
    for node in &nodes {
        wait_for("web everywhere", Duration::from_secs(2), || {
            (deployments(node) == vec![("web".to_string(), 1)]).then_some(())
        });
    }
    // Cut pa off from pb and pc (both directions, through the transport's test hook).
    let (a, b, c) = (nodes[0].listen.to_string(), nodes[1].listen.to_string(), nodes[2].listen.to_string());
    nodes[1].peer_ok(&["block", &a]);
    nodes[2].peer_ok(&["block", &a]);
    // pa's agent was started without the hook: restart it with the hook enabled.
    nodes[0].kill_agent();
    nodes[0].agent_env.push(("PEER_TEST_HOOKS".into(), "1".into()));
    nodes[0].start_agent();
    nodes[0].peer_ok(&["block", &b, &c]);
    wait_for("the partition seen on both sides", Duration::from_secs(10), || {
        (live_nodes(&nodes[0]).len() == 1 && live_nodes(&nodes[1]).len() == 2).then_some(())
    });

    // Concurrent edits of the same object on both sides, and one object per side.
    apply(&nodes[0], "web.yaml", &deployment("web", 3));
    apply(&nodes[0], "left.yaml", &deployment("left", 1));
    apply(&nodes[1], "web.yaml", &deployment("web", 2));
    apply(&nodes[1], "right.yaml", &deployment("right", 1));
    std::thread::sleep(Duration::from_millis(1500));
    assert_ne!(deployments(&nodes[0]), deployments(&nodes[2]), "nothing crosses the cut");

    let healed = Instant::now();
    for n in &nodes {
        n.peer_ok(&["block"]);
    }
    let converged = wait_for("one state everywhere after the cut heals", Duration::from_secs(15), || {
        let first = deployments(&nodes[0]);
        (first.len() == 3 && nodes.iter().all(|n| deployments(n) == first)).then_some(first)
    });
    eprintln!("converged after {:?}: {converged:?}", healed.elapsed());
    let web = converged.iter().find(|(n, _)| n == "web").expect("web").1;
    assert!(web == 2 || web == 3, "web is one of the concurrent writes, got {web}");
    // The side whose write lost sees that it was overwritten.
    let loser = if web == 3 { &nodes[1] } else { &nodes[0] };
    let rows = loser.json(&["get", "deployments"]);
    let row = rows.as_array().and_then(|r| r.iter().find(|d| d["name"] == "web").cloned()).expect("web row");
    assert!(row["overwritten_by"].is_string(), "the losing side shows the overwrite: {row}");
    // Both sides ran their replicas during the cut; after it, one copy of each remains.
    let want = web as usize + 2;
    wait_for("one copy of every replica after the heal", Duration::from_secs(30), || {
        let names: Vec<String> = nodes.iter().flat_map(|n| n.running_pods()).collect();
        let distinct: std::collections::BTreeSet<&String> = names.iter().collect();
        (names.len() == want && distinct.len() == want).then_some(())
    });
}

#[test]
fn a_removed_node_is_refused() {
    if !require_root("a_removed_node_is_refused") {
        return;
    }
    let nodes = cluster(&["ra", "rb", "rc"]);
    nodes[0].peer_ok(&["node", "remove", "rc"]);
    for n in &nodes[..2] {
        wait_for(&format!("rc gone from {}'s live nodes", n.name), Duration::from_secs(10), || {
            (!live_nodes(n).contains(&"rc".to_string())).then_some(())
        });
    }
    // A write on the removed node reaches no one.
    apply(&nodes[2], "x.yaml", &deployment("x", 1));
    std::thread::sleep(Duration::from_secs(2));
    assert!(deployments(&nodes[0]).is_empty(), "the removed node's write crossed over");
    assert!(deployments(&nodes[1]).is_empty(), "the removed node's write crossed over");
}

#[test]
fn kill_9_during_apply_loses_no_acknowledged_write() {
    if !require_root("kill_9_during_apply_loses_no_acknowledged_write") {
        return;
    }
    let mut node = Node::start("crash");
    let mut acknowledged = Vec::new();
    for round in 0..3 {
        // Apply objects one by one and kill the agent at some point during the stream.
        let start = Instant::now();
        for i in 0..40 {
            let name = format!("d{round}-{i}");
            let path = node.dir.join(format!("{name}.yaml"));
            std::fs::write(&path, deployment(&name, 0)).expect("writing spec");
            let out = node.peer(&["apply", "-f", &path.display().to_string()]);
            if out.status.success() {
                acknowledged.push(name);
            }
            if start.elapsed() > Duration::from_millis(150 + 100 * round) {
                node.kill_agent();
                break;
            }
        }
        node.kill_agent();
        node.start_agent();
        let present: Vec<String> = deployments(&node).into_iter().map(|(n, _)| n).collect();
        for name in &acknowledged {
            assert!(present.contains(name), "acknowledged write {name} lost after kill -9");
        }
    }
    assert!(acknowledged.len() >= 3, "the test applied something before each kill");
}

#[test]
fn sigterm_leaves_gracefully_and_a_restart_rejoins() {
    if !require_root("sigterm_leaves_gracefully_and_a_restart_rejoins") {
        return;
    }
    let mut nodes = cluster(&["la", "lb"]);
    let stopped = Instant::now();
    nodes[1].stop_agent();
    let state = wait_for("lb shown as left", Duration::from_secs(5), || {
        let rows = nodes_json(&nodes[0]);
        let lb = rows.iter().find(|n| n["name"] == "lb")?;
        (lb["state"] != "live").then(|| lb["state"].as_str().unwrap_or_default().to_owned())
    });
    eprintln!("graceful leave seen after {:?}", stopped.elapsed());
    assert_eq!(state, "left");
    // Restarting uses the persisted peers as seeds and a new generation.
    nodes[1].start_agent();
    wait_for("lb live again", Duration::from_secs(10), || {
        (live_nodes(&nodes[0]).len() == 2 && live_nodes(&nodes[1]).len() == 2).then_some(())
    });
}

/// `peer get events -o json` on `node`: every live node's events.
fn events(node: &Node) -> Vec<Value> {
    node.json(&["get", "events"]).as_array().cloned().unwrap_or_default()
}

fn is_event(e: &Value, reason: &str, object: &str) -> bool {
    e["reason"] == reason && e["object"] == object
}

#[test]
fn events_of_every_node_are_listed_anywhere_survive_kill_9_and_a_death_is_recorded_once() {
    if !require_root("events_of_every_node_are_listed_anywhere_survive_kill_9_and_a_death_is_recorded_once") {
        return;
    }
    let mut nodes = cluster(&["ea", "eb", "ec"]);
    apply(&nodes[0], "ev.yaml", &deployment("ev", 1));
    let (runner, pod) = wait_for("the ev pod running", Duration::from_secs(30), || {
        nodes.iter().enumerate().find_map(|(i, n)| n.running_pods().first().map(|p| (i, p.clone())))
    });
    let (name, object) = (nodes[runner].name.clone(), format!("pod/{pod}"));
    let other = (runner + 1) % nodes.len();

    // The pod's Started event, recorded on the runner, is listed on another node with its node.
    let started = wait_for("the Started event from another node", Duration::from_secs(10), || {
        events(&nodes[other]).into_iter().find(|e| is_event(e, "Started", &object) && e["node"] == name)
    });
    let table = nodes[other].peer_ok(&["get", "events"]);
    let header: Vec<&str> = table.lines().next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(header, ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "NODE", "MESSAGE"], "{table}");
    assert!(
        table.lines().any(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            cells.contains(&"Started") && cells.contains(&object.as_str()) && cells.contains(&name.as_str())
        }),
        "the table lists the Started event with NODE {name}:\n{table}"
    );

    // kill -9: until failure detection notices, the node is named as unreachable, and the
    // read does not wait for it longer than its timeout.
    nodes[runner].kill_agent();
    let asked = Instant::now();
    let out = nodes[other].peer(&["get", "events"]);
    let took = asked.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("node {name} did not answer")), "took {took:?}, stderr: {stderr}");
    assert!(took < Duration::from_secs(3), "a dead node blocked the read for {took:?}");

    // Its death is recorded by exactly one survivor.
    let dead_object = format!("node/{name}");
    let dead = |n: &Node| -> Vec<Value> {
        events(n).into_iter().filter(|e| is_event(e, "NodeDead", &dead_object)).collect()
    };
    wait_for("the NodeDead event", Duration::from_secs(10), || {
        (!dead(&nodes[other]).is_empty()).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    for n in nodes.iter().filter(|n| n.name != name) {
        let rows = dead(n);
        assert_eq!(rows.len(), 1, "one NodeDead event cluster-wide, as {} lists them: {rows:?}", n.name);
        assert_ne!(rows[0]["node"], name.as_str());
        assert_eq!(rows[0]["kind"], "Warning");
    }

    // After a restart, the events from before the kill are still listed, from the file.
    nodes[runner].start_agent();
    let again = wait_for("the runner's old events back in the cluster view", Duration::from_secs(15), || {
        events(&nodes[other]).into_iter().find(|e| e["node"] == name && e["seq"] == started["seq"])
    });
    assert_eq!(again["first_ms"], started["first_ms"]);
    assert_eq!(again["reason"], "Started");
    let local = events(&nodes[runner]);
    assert!(local.iter().any(|e| e["node"] == name && e["seq"] == started["seq"]), "{local:?}");
}

#[test]
fn watching_events_prints_new_ones_from_every_node_including_late_joiners() {
    if !require_root("watching_events_prints_new_ones_from_every_node_including_late_joiners") {
        return;
    }
    let mut nodes = cluster(&["wa", "wb"]);
    let mut child = Command::new(peer_bin())
        .args(["get", "events", "-w"])
        .env("PEER_DATA_DIR", &nodes[0].data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting peer get events -w");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen: Vec<String> = Vec::new();
    expect_line(&rx, &mut seen, "the header", |c| c.starts_with(&["LAST", "SEEN"]));
    let rotated = |node: &'static str| move |c: &[&str]| c.contains(&"TokenRotated") && c.contains(&node);
    assert!(!seen.iter().any(|l| l.contains("TokenRotated")), "no rotation yet: {seen:?}");

    // A new event on another node after the watch started.
    nodes[1].peer_ok(&["token", "rotate"]);
    expect_line(&rx, &mut seen, "wb's TokenRotated event", rotated("wb"));

    // A node that joins later: its join, and then its own events.
    let token = nodes[1].peer_ok(&["token"]).trim().to_owned();
    let late = join("wc", &nodes[1], &token);
    nodes.push(late);
    expect_line(&rx, &mut seen, "wc's NodeJoined event", |c| {
        c.contains(&"NodeJoined") && c.contains(&"node/wc")
    });
    nodes[2].peer_ok(&["token", "rotate"]);
    expect_line(&rx, &mut seen, "wc's TokenRotated event", rotated("wc"));

    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
}

/// Reads lines of a running watch into `seen` until one's whitespace-separated cells pass
/// `f`, or panics after 15 s with what was printed.
fn expect_line(rx: &mpsc::Receiver<String>, seen: &mut Vec<String>, what: &str, f: impl Fn(&[&str]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if seen.iter().any(|l| f(&l.split_whitespace().collect::<Vec<_>>())) {
            return;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("timed out waiting for {what}; the watch printed:\n{}", seen.join("\n")),
        }
    }
}
