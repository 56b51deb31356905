//! Tests of placement: a snapshot per constraint kind, and properties (determinism, no
//! overcommit, minimal movement on a node's death, exact restore on its return).

use expect_test::{expect, Expect};
use proptest::prelude::*;

use super::*;

fn node(id: &str, cpu: u64, mem_mi: u64, labels: &[(&str, &str)]) -> NodeView {
    NodeView {
        id: id.into(),
        labels: labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        taints: vec![],
        capacity: Resources { cpu_millis: cpu, memory_bytes: mem_mi << 20 },
        cordoned: false,
    }
}

fn replicas(workload: &str, n: usize, cpu: u64, mem_mi: u64) -> Vec<ReplicaReq> {
    (0..n)
        .map(|i| ReplicaReq {
            workload: workload.into(),
            identity: format!("{workload}-{i}"),
            requests: Resources { cpu_millis: cpu, memory_bytes: mem_mi << 20 },
            ..ReplicaReq::default()
        })
        .collect()
}

fn render(plan: &Plan) -> String {
    let mut out = String::new();
    for (r, n) in &plan.assignments {
        out.push_str(&format!("{r} -> {n}\n"));
    }
    for (r, why) in &plan.unschedulable {
        out.push_str(&format!("{r}: {why}\n"));
    }
    out
}

fn check(nodes: &[NodeView], replicas: &[ReplicaReq], expect: Expect) {
    let plan = place(nodes, replicas);
    assert_no_overcommit(nodes, replicas, &plan);
    expect.assert_eq(&render(&plan));
}

fn assert_no_overcommit(nodes: &[NodeView], replicas: &[ReplicaReq], plan: &Plan) {
    for (id, load) in plan.load(replicas) {
        let n = nodes.iter().find(|n| n.id == id).expect("assigned to a given node");
        assert!(
            load.cpu_millis <= n.capacity.cpu_millis && load.memory_bytes <= n.capacity.memory_bytes,
            "{id}"
        );
    }
}

fn three_zones() -> Vec<NodeView> {
    vec![
        node("n1", 4000, 4096, &[("zone", "a")]),
        node("n2", 4000, 4096, &[("zone", "a")]),
        node("n3", 4000, 4096, &[("zone", "b")]),
        node("n4", 4000, 4096, &[("zone", "c"), ("disk", "ssd")]),
    ]
}

#[test]
fn snapshot_capacity_and_failed_scheduling() {
    // 3 x 1500m fit on a 4000m node twice; the fifth big replica fits nowhere.
    let nodes = vec![node("n1", 4000, 1024, &[]), node("n2", 2000, 8192, &[])];
    let mut rs = replicas("web", 4, 1500, 256);
    rs.push(ReplicaReq {
        identity: "big".into(),
        workload: "big".into(),
        requests: Resources { cpu_millis: 3000, memory_bytes: 2048 << 20 },
        ..ReplicaReq::default()
    });
    check(
        &nodes,
        &rs,
        expect![[r#"
            web-0 -> n2
            web-2 -> n1
            web-3 -> n1
            big: 0/2 nodes are available: 1 Insufficient memory, 2 Insufficient cpu
            web-1: 0/2 nodes are available: 2 Insufficient cpu
        "#]],
    );
}

#[test]
fn snapshot_selector_affinity_and_cordon() {
    let mut nodes = three_zones();
    nodes[2].cordoned = true;
    let mut rs = replicas("db", 2, 100, 64);
    for r in &mut rs {
        r.required_affinity = vec![NodeSelectorTerm {
            match_expressions: vec![NodeSelectorRequirement {
                key: "zone".into(),
                operator: SelectorOperator::In,
                values: vec!["b".into(), "c".into()],
            }],
        }];
    }
    let mut ssd = replicas("cache", 2, 100, 64);
    ssd[0].node_selector.insert("disk".into(), "ssd".into());
    ssd[1].node_selector.insert("disk".into(), "nvme".into());
    rs.extend(ssd);
    check(
        &nodes,
        &rs,
        expect![[r#"
            cache-0 -> n4
            db-0 -> n4
            db-1 -> n4
            cache-1: 0/4 nodes are available: 1 node(s) were unschedulable, 3 node(s) didn't match Pod's node affinity/selector
        "#]],
    );
}

#[test]
fn snapshot_taints_and_tolerations() {
    let mut nodes = three_zones();
    nodes[0].taints.push(Taint { key: "gpu".into(), value: "yes".into(), effect: TaintEffect::NoSchedule });
    nodes[1].taints.push(Taint { key: "edge".into(), value: "".into(), effect: TaintEffect::NoExecute });
    nodes[2].taints.push(Taint {
        key: "slow".into(),
        value: "".into(),
        effect: TaintEffect::PreferNoSchedule,
    });
    nodes[3].taints.push(Taint {
        key: "slow".into(),
        value: "".into(),
        effect: TaintEffect::PreferNoSchedule,
    });
    let mut rs = replicas("plain", 2, 100, 64);
    let mut gpu = replicas("gpu", 2, 100, 64);
    for r in &mut gpu {
        r.tolerations.push(Toleration {
            key: "gpu".into(),
            operator: TolerationOperator::Exists,
            ..Toleration::default()
        });
    }
    rs.extend(gpu);
    let mut none = replicas("strict", 1, 100, 64);
    none[0].node_selector.insert("zone".into(), "a".into());
    rs.extend(none);
    check(
        &nodes,
        &rs,
        expect![[r#"
            gpu-0 -> n1
            gpu-1 -> n1
            plain-0 -> n4
            plain-1 -> n3
            strict-0: 0/4 nodes are available: 1 node(s) had untolerated taint {edge: }, 1 node(s) had untolerated taint {gpu: yes}, 2 node(s) didn't match Pod's node affinity/selector
        "#]],
    );
}

#[test]
fn snapshot_anti_affinity_and_spread() {
    let nodes = three_zones();
    let mut anti = replicas("anti", 5, 100, 64);
    for r in &mut anti {
        r.anti_affinity_by_hostname = true;
    }
    let mut spread = replicas("zonal", 6, 100, 64);
    for r in &mut spread {
        r.topology_spread = Some(TopologySpread { topology_key: "zone".into(), max_skew: 1 });
    }
    anti.extend(spread);
    let plan = place(&nodes, &anti);
    let per_node = |w: &str| {
        let mut c = BTreeMap::<&str, usize>::new();
        for (r, n) in &plan.assignments {
            if r.starts_with(w) {
                *c.entry(n.as_str()).or_default() += 1;
            }
        }
        c
    };
    // Five anti-affine replicas on four nodes: one node gets two, no node more.
    assert_eq!(per_node("anti-").len(), 4);
    assert!(per_node("anti-").values().all(|&c| c <= 2));
    check(
        &nodes,
        &anti,
        expect![[r#"
            anti-0 -> n4
            anti-1 -> n3
            anti-2 -> n2
            anti-3 -> n1
            anti-4 -> n3
            zonal-0 -> n3
            zonal-1 -> n3
            zonal-2 -> n4
            zonal-3 -> n2
            zonal-4 -> n4
            zonal-5 -> n2
        "#]],
    );
}

#[test]
fn spread_refuses_skew_beyond_max() {
    // Zone b has room for one replica only; with max_skew 1 zone a may hold at most two.
    let nodes = vec![node("a1", 4000, 4096, &[("zone", "a")]), node("b1", 100, 4096, &[("zone", "b")])];
    let mut rs = replicas("z", 4, 100, 64);
    for r in &mut rs {
        r.topology_spread = Some(TopologySpread { topology_key: "zone".into(), max_skew: 1 });
    }
    let plan = place(&nodes, &rs);
    assert_eq!(plan.assignments.values().filter(|n| *n == "a1").count(), 2);
    assert_eq!(plan.assignments.values().filter(|n| *n == "b1").count(), 1);
    assert_eq!(
        plan.unschedulable.values().next().map(String::as_str),
        Some("0/2 nodes are available: 1 Insufficient cpu, 1 node(s) didn't match pod topology spread constraints")
    );
}

#[test]
fn death_moves_only_the_dead_nodes_replicas() {
    let nodes: Vec<NodeView> = (0..10).map(|i| node(&format!("n{i}"), 64_000, 65_536, &[])).collect();
    let rs = replicas("web", 100, 100, 64);
    let before = place(&nodes, &rs);
    let survivors: Vec<NodeView> = nodes.iter().filter(|n| n.id != "n3").cloned().collect();
    let after = place(&survivors, &rs);
    let moved: Vec<&String> =
        before.assignments.keys().filter(|r| before.assignments[*r] != after.assignments[*r]).collect();
    assert!(!moved.is_empty());
    assert!(moved.iter().all(|r| before.assignments[*r] == "n3"));
    assert_eq!(moved.len(), before.replicas_on("n3").count());
}

#[test]
fn no_nodes_reports_every_replica() {
    let plan = place(&[], &replicas("web", 2, 1, 1));
    assert_eq!(plan.unschedulable.len(), 2);
    assert_eq!(plan.unschedulable["web-0"], "0/0 nodes are available: no live nodes");
}

fn claims_of(plan: &Plan) -> Vec<Claim> {
    plan.assignments.iter().map(|(r, n)| Claim { node: n.clone(), replica: r.clone() }).collect()
}

#[test]
fn claims_keep_replicas_where_they_run_when_a_node_returns() {
    let nodes: Vec<NodeView> = (0..5).map(|i| node(&format!("n{i}"), 8000, 8192, &[])).collect();
    let rs = replicas("web", 20, 100, 64);
    let before = place(&nodes, &rs);
    let survivors: Vec<NodeView> = nodes.iter().filter(|n| n.id != "n1").cloned().collect();
    let during = place_with_claims(&survivors, &rs, &claims_of(&before));
    assert_eq!(during.unschedulable.len(), 0);
    for (r, n) in &before.assignments {
        if n != "n1" {
            assert_eq!(&during.assignments[r], n, "{r} must not move: its node lives");
        }
    }
    // n1 returns empty (its containers died with it): nothing moves back to it.
    let after = place_with_claims(&nodes, &rs, &claims_of(&during));
    assert_eq!(after, during);
    assert_eq!(after.replicas_on("n1").count(), 0);
}

#[test]
fn duplicate_claims_leave_one_copy_by_one_rule() {
    let nodes: Vec<NodeView> = (0..4).map(|i| node(&format!("n{i}"), 8000, 8192, &[])).collect();
    let rs = replicas("web", 8, 100, 64);
    // Every node claims every replica (a healed partition where each side ran them all).
    let claims: Vec<Claim> = nodes
        .iter()
        .flat_map(|n| rs.iter().map(|r| Claim { node: n.id.clone(), replica: r.identity.clone() }))
        .collect();
    let plan = place_with_claims(&nodes, &rs, &claims);
    assert_eq!(plan.assignments.len(), 8);
    let mut reversed = claims.clone();
    reversed.reverse();
    assert_eq!(place_with_claims(&nodes, &rs, &reversed), plan, "claim order does not matter");
    // The keeper is the claimant the replica would pick by rank: the unclaimed plan.
    assert_eq!(plan, place(&nodes, &rs));
    // With two claimants only, the keeper is one of them.
    let two: Vec<Claim> = rs
        .iter()
        .flat_map(|r| ["n0", "n3"].map(|n| Claim { node: n.into(), replica: r.identity.clone() }))
        .collect();
    let plan = place_with_claims(&nodes, &rs, &two);
    assert!(plan.assignments.values().all(|n| n == "n0" || n == "n3"));
}

#[test]
fn a_running_copy_is_kept_before_a_pending_one() {
    let nodes: Vec<NodeView> = (0..4).map(|i| node(&format!("n{i}"), 8000, 8192, &[])).collect();
    let rs = replicas("web", 8, 100, 64);
    let ideal = place(&nodes, &rs);
    // Each replica runs on a node that is not its first choice; its first choice restarts
    // an old copy (pending). The running copies stay.
    let elsewhere = |r: &str| {
        let best = &ideal.assignments[r];
        nodes.iter().map(|n| n.id.clone()).find(|n| n != best).expect("four nodes")
    };
    let running: Vec<(Claim, u64)> = rs
        .iter()
        .map(|r| (Claim { node: elsewhere(&r.identity), replica: r.identity.clone() }, 1_000))
        .collect();
    let pending: Vec<Claim> = claims_of(&ideal);
    let plan = place_with_phased_claims(&nodes, &rs, &running, &pending);
    for (c, _) in &running {
        assert_eq!(plan.assignments[&c.replica], c.node, "{} stays where it runs", c.replica);
    }
    // Both running: the copy running longer stays, whatever the rank.
    let newer: Vec<(Claim, u64)> = pending.iter().map(|c| (c.clone(), 2_000)).collect();
    let both: Vec<(Claim, u64)> = running.iter().chain(&newer).cloned().collect();
    assert_eq!(place_with_phased_claims(&nodes, &rs, &both, &[]), plan);
    // Both pending: the rank decides, as with unphased claims.
    let both: Vec<Claim> = running.iter().map(|(c, _)| c).chain(&pending).cloned().collect();
    assert_eq!(place_with_phased_claims(&nodes, &rs, &[], &both), place_with_claims(&nodes, &rs, &both));
}

#[test]
fn claims_yield_to_no_execute_taints_and_capacity() {
    let mut nodes = vec![node("a", 1000, 1024, &[]), node("b", 1000, 1024, &[])];
    let rs = replicas("web", 3, 400, 64);
    // Three claimed on `a`, which has room for two: the third goes to `b`.
    let on_a: Vec<Claim> =
        rs.iter().map(|r| Claim { node: "a".into(), replica: r.identity.clone() }).collect();
    let plan = place_with_claims(&nodes, &rs, &on_a);
    assert_eq!(plan.replicas_on("a").count(), 2);
    assert_eq!(plan.replicas_on("b").count(), 1);
    // A NoExecute taint on `a` evicts them all; a NoSchedule one would not.
    nodes[0].taints = vec![Taint { key: "k".into(), value: "v".into(), effect: TaintEffect::NoSchedule }];
    assert_eq!(place_with_claims(&nodes, &rs, &on_a).replicas_on("a").count(), 2);
    nodes[0].taints[0].effect = TaintEffect::NoExecute;
    let plan = place_with_claims(&nodes, &rs, &on_a);
    assert_eq!(plan.replicas_on("a").count(), 0);
    assert_eq!(plan.replicas_on("b").count(), 2);
    assert_eq!(plan.unschedulable.len(), 1);
    // A toleration with tolerationSeconds lets claimed replicas stay but keeps new ones off.
    let mut tolerating = rs.clone();
    for r in &mut tolerating {
        r.tolerations = vec![Toleration {
            key: "k".into(),
            operator: TolerationOperator::Exists,
            value: String::new(),
            effect: Some(TaintEffect::NoExecute),
            toleration_seconds: Some(60),
        }];
    }
    assert_eq!(place_with_claims(&nodes, &tolerating, &on_a).replicas_on("a").count(), 2);
    assert_eq!(place(&nodes, &tolerating).replicas_on("a").count(), 0);
}

#[test]
fn node_name_pins_a_replica_and_ignores_cordon() {
    let mut nodes = vec![node("a", 1000, 1024, &[]), node("b", 1000, 1024, &[])];
    nodes[0].cordoned = true;
    let mut rs = replicas("ds", 2, 100, 64);
    rs[0].node_name = Some("a".into());
    rs[1].node_name = Some("c".into());
    check(
        &nodes,
        &rs,
        expect![[r#"
            ds-0 -> a
            ds-1: 0/2 nodes are available: 2 node(s) didn't match the requested node name
        "#]],
    );
}

// --- properties -------------------------------------------------------------------------

fn arb_node(i: usize, ample: bool) -> impl Strategy<Value = NodeView> {
    let cap = if ample {
        (Just(1u64 << 40), Just(1u64 << 50)).boxed()
    } else {
        (0u64..4000, 0u64..(4 << 30)).boxed()
    };
    (cap, 1u64..4, prop::sample::select(vec!["a", "b", "c"]), any::<bool>(), 0u8..8).prop_map(
        move |((cpu, mem), w, zone, ssd, flags)| {
            let mut labels = BTreeMap::from([("zone".to_owned(), zone.to_owned())]);
            if ssd {
                labels.insert("disk".into(), "ssd".into());
            }
            let taints = match flags {
                0 => vec![Taint { key: "gpu".into(), value: "1".into(), effect: TaintEffect::NoSchedule }],
                1 => vec![Taint {
                    key: "slow".into(),
                    value: "".into(),
                    effect: TaintEffect::PreferNoSchedule,
                }],
                _ => vec![],
            };
            NodeView {
                id: format!("n{i}"),
                labels,
                taints,
                capacity: Resources { cpu_millis: cpu.max(1) * w, memory_bytes: mem },
                cordoned: flags == 7,
            }
        },
    )
}

fn arb_nodes(ample: bool) -> impl Strategy<Value = Vec<NodeView>> {
    (1usize..12).prop_flat_map(move |n| (0..n).map(|i| arb_node(i, ample)).collect::<Vec<_>>())
}

/// Replicas of up to 5 workloads; `counted` allows anti-affinity and topology spread,
/// whose counts legitimately cascade within a workload.
fn arb_replicas(counted: bool) -> impl Strategy<Value = Vec<ReplicaReq>> {
    let workload = (0u64..800, 0u64..(1 << 30), 0u8..6, 1usize..10, any::<bool>());
    prop::collection::vec(workload, 0..5).prop_map(move |ws| {
        let mut out = vec![];
        for (w, (cpu, mem, kind, count, flag)) in ws.into_iter().enumerate() {
            let mut rs = replicas(&format!("w{w}"), count, cpu, 0);
            for r in &mut rs {
                r.requests.memory_bytes = mem;
                match kind {
                    0 => drop(r.node_selector.insert("disk".into(), "ssd".into())),
                    1 => r.tolerations.push(Toleration {
                        key: "gpu".into(),
                        operator: TolerationOperator::Exists,
                        ..Toleration::default()
                    }),
                    2 => r.preferred_affinity.push(PreferredTerm {
                        weight: 10,
                        preference: NodeSelectorTerm {
                            match_expressions: vec![NodeSelectorRequirement {
                                key: "zone".into(),
                                operator: SelectorOperator::In,
                                values: vec!["a".into()],
                            }],
                        },
                    }),
                    3 if counted => r.anti_affinity_by_hostname = flag,
                    4 if counted => {
                        r.topology_spread = Some(TopologySpread { topology_key: "zone".into(), max_skew: 1 })
                    }
                    _ => {}
                }
            }
            out.extend(rs);
        }
        out
    })
}

proptest! {
    #[test]
    fn same_sets_same_plan_in_any_order(
        (nodes, shuffled_nodes) in arb_nodes(false).prop_flat_map(|n| (Just(n.clone()), Just(n).prop_shuffle())),
        (rs, shuffled_rs) in arb_replicas(true).prop_flat_map(|r| (Just(r.clone()), Just(r).prop_shuffle())),
    ) {
        let plan = place(&nodes, &rs);
        prop_assert_eq!(&plan, &place(&shuffled_nodes, &shuffled_rs));
        prop_assert_eq!(plan.assignments.len() + plan.unschedulable.len(), rs.len());
    }

    #[test]
    fn no_node_over_capacity(nodes in arb_nodes(false), rs in arb_replicas(true)) {
        let plan = place(&nodes, &rs);
        assert_no_overcommit(&nodes, &rs, &plan);
        for r in plan.assignments.keys() {
            prop_assert!(!plan.unschedulable.contains_key(r));
        }
    }

    #[test]
    fn a_death_moves_only_its_replicas_and_a_return_restores(
        nodes in arb_nodes(true), rs in arb_replicas(false), victim in any::<prop::sample::Index>(),
    ) {
        let dead = victim.get(&nodes).id.clone();
        let before = place(&nodes, &rs);
        let survivors: Vec<NodeView> = nodes.iter().filter(|n| n.id != dead).cloned().collect();
        let after = place(&survivors, &rs);
        for (r, n) in &before.assignments {
            if *n != dead {
                prop_assert_eq!(after.assignments.get(r), Some(n), "{} moved off live {}", r, n);
            }
        }
        for (r, n) in &after.assignments {
            prop_assert!(before.assignments.contains_key(r), "{} was unschedulable, now on {}", r, n);
        }
        let mut back = survivors;
        back.push(victim.get(&nodes).clone());
        prop_assert_eq!(place(&back, &rs), before);
    }
}
