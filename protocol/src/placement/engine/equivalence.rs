//! The fast engine gives the reference's plans, bit for bit, on random fleets that mix
//! every constraint, duplicate node ids and replica identities, and claims (duplicated, by
//! dead nodes, of unknown replicas).

use std::collections::BTreeMap;

use super::reference;
use crate::placement::hrw::mix64;
use crate::placement::*;

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = mix64(self.0.wrapping_add(0x9e37_79b9_7f4a_7c15));
        self.0 % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len() as u64) as usize]
    }
}

fn term(rng: &mut Rng) -> NodeSelectorTerm {
    let reqs = 1 + rng.below(2);
    NodeSelectorTerm {
        match_expressions: (0..reqs)
            .map(|_| NodeSelectorRequirement {
                key: rng.pick(&["zone", "disk", "rack"]).into(),
                operator: [
                    SelectorOperator::In,
                    SelectorOperator::NotIn,
                    SelectorOperator::Exists,
                    SelectorOperator::DoesNotExist,
                ][rng.below(4) as usize],
                values: vec![rng.pick(&["a", "b", "ssd"]).into()],
            })
            .collect(),
    }
}

fn nodes(rng: &mut Rng, n: u64, ample: bool) -> Vec<NodeView> {
    (0..n)
        .map(|_| {
            let mut labels = BTreeMap::new();
            if !rng.chance(10) {
                labels.insert("zone".to_owned(), rng.pick(&["a", "b", "c"]).to_owned());
            }
            if rng.chance(30) {
                labels.insert("disk".into(), "ssd".into());
            }
            let mut taints = vec![];
            for (key, value, effect, p) in [
                ("gpu", "1", TaintEffect::NoSchedule, 10),
                ("slow", "", TaintEffect::PreferNoSchedule, 20),
                ("old", "x", TaintEffect::PreferNoSchedule, 10),
                ("edge", "", TaintEffect::NoExecute, 8),
            ] {
                if rng.chance(p) {
                    taints.push(Taint { key: key.into(), value: value.into(), effect });
                }
            }
            let cores = 1 + rng.below(8);
            let capacity = if ample {
                Resources { cpu_millis: cores << 30, memory_bytes: 1 << 50 }
            } else {
                Resources {
                    cpu_millis: cores * rng.below(1200),
                    memory_bytes: (cores * rng.below(1500)) << 20,
                }
            };
            // Few enough ids that some repeat, with other contents.
            NodeView {
                id: format!("n{}", rng.below(n + n / 8 + 1)),
                labels,
                taints,
                capacity,
                cordoned: rng.chance(8),
            }
        })
        .collect()
}

fn replicas(rng: &mut Rng, workloads: u64, node_count: u64) -> Vec<ReplicaReq> {
    let mut out = vec![];
    for w in 0..workloads {
        let mut base = ReplicaReq {
            workload: format!("default/w{w}"),
            requests: Resources { cpu_millis: rng.below(600), memory_bytes: rng.below(700) << 20 },
            anti_affinity_by_hostname: rng.chance(30),
            topology_spread: rng.chance(25).then(|| TopologySpread {
                topology_key: rng.pick(&["zone", "zone", "rack"]).into(),
                max_skew: rng.below(3) as u32,
            }),
            ..ReplicaReq::default()
        };
        if rng.chance(20) {
            base.node_selector.insert("disk".into(), "ssd".into());
        }
        if rng.chance(25) {
            base.tolerations.push(Toleration {
                key: rng.pick(&["gpu", "edge", "slow", ""]).into(),
                operator: if rng.chance(70) { TolerationOperator::Exists } else { TolerationOperator::Equal },
                value: String::new(),
                effect: rng.chance(30).then_some(TaintEffect::NoExecute),
                toleration_seconds: rng.chance(30).then_some(60),
            });
        }
        if rng.chance(15) {
            base.required_affinity = (0..1 + rng.below(2)).map(|_| term(rng)).collect();
        }
        if rng.chance(25) {
            base.preferred_affinity = (0..1 + rng.below(2))
                .map(|_| PreferredTerm { weight: 1 + rng.below(100) as u32, preference: term(rng) })
                .collect();
        }
        let count = 1 + rng.below(12);
        for i in 0..count {
            let mut r = base.clone();
            r.identity = format!("w{w}-{i}");
            if rng.chance(5) {
                // A replica that differs from its siblings: its own group.
                r.node_selector.insert("zone".into(), "a".into());
            }
            if rng.chance(4) {
                r.node_name = Some(format!("n{}", rng.below(node_count + 2)));
            }
            if rng.chance(3) {
                // The same identity twice, with other requests: the smaller wins.
                let mut twin = r.clone();
                twin.requests.cpu_millis += 1;
                out.push(twin);
            }
            out.push(r);
        }
    }
    out
}

fn claims(rng: &mut Rng, plan: &Plan, rs: &[ReplicaReq], node_count: u64) -> Vec<Claim> {
    let mut out: Vec<Claim> = plan
        .assignments
        .iter()
        .filter(|_| rng.chance(80))
        .map(|(r, n)| Claim { node: n.clone(), replica: r.clone() })
        .collect();
    for r in rs {
        if rng.chance(15) {
            // Another claimant, perhaps dead.
            out.push(Claim { node: format!("n{}", rng.below(node_count + 3)), replica: r.identity.clone() });
        }
    }
    out.push(Claim { node: "n0".into(), replica: "nobody".into() });
    let dup = out.first().cloned();
    out.extend(dup);
    out
}

fn check(seed: u64, nodes: &[NodeView], rs: &[ReplicaReq], claims: &[Claim]) {
    let want = reference::place_with_claims(nodes, rs, claims);
    let got = crate::placement::place_with_claims(nodes, rs, claims);
    assert_eq!(got, want, "seed {seed}: the engine differs from the reference");
}

#[test]
fn the_engine_places_like_the_reference() {
    for seed in 0..300 {
        let mut rng = Rng(seed);
        let n = rng.below(40);
        let ns = nodes(&mut rng, n, seed % 5 == 0);
        let workloads = 1 + rng.below(12);
        let rs = replicas(&mut rng, workloads, n);
        check(seed, &ns, &rs, &[]);
        let plan = reference::place_with_claims(&ns, &rs, &[]);
        let cs = claims(&mut rng, &plan, &rs, n);
        check(seed, &ns, &rs, &cs);
        // A node dies: its claims stay in the list but are ignored.
        if !ns.is_empty() {
            let survivors = &ns[1..];
            check(seed, survivors, &rs, &cs);
        }
    }
}

#[test]
fn the_engine_places_like_the_reference_on_a_fleet() {
    for seed in 1000..1003 {
        let mut rng = Rng(seed);
        let ns = nodes(&mut rng, 150, false);
        let rs = replicas(&mut rng, 150, 150);
        check(seed, &ns, &rs, &[]);
        let plan = reference::place_with_claims(&ns, &rs, &[]);
        let cs = claims(&mut rng, &plan, &rs, 150);
        check(seed, &ns[10..], &rs, &cs);
    }
}
