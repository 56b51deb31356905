//! Leaderless placement with real agents and containers: every replica runs on exactly
//! one node, a dead node's replicas start on the survivors, and its return leaves exactly
//! the desired count.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use tests::{apply, cluster, deployment, require_root, wait_for, Node};

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
        (tests::live_nodes(&nodes[victim]).len() == 5).then_some(())
    });
    std::thread::sleep(Duration::from_secs(5));
    wait_exactly("exactly 10 after the return", &all, 10, Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(3));
    let settled = running(&all);
    assert_eq!(settled.len(), 10, "still exactly 10: {settled:?}");
}
