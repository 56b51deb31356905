//! A seeded simulation of placement on a fleet: 200 nodes, 1,000 replicas, nodes dying
//! one at a time and coming back, with the real `placement::place` recomputed after every
//! membership change.
//!
//! Invariants checked at every step: no node over capacity; the plan does not depend on
//! input order; with ample capacity a death moves only the dead node's replicas (replicas
//! with anti-affinity or topology spread may also move within their own workload); and
//! once every node is back the plan is the original one. A failure prints its seed.
//! `PEER_SIM_SEEDS=N` runs more seeds; `PEER_SIM_REPORT=1` prints moved counts.
//!
//! `placement_recompute_at_fleet_size` (ignored: a timing benchmark) times one full
//! recompute at 1,000 nodes and 10,000 replicas, without and with claims:
//! `cargo test -p protocol --release --test placement_sim -- --ignored --nocapture recompute`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use protocol::placement::{
    place, place_with_claims, Claim, NodeView, Plan, ReplicaReq, Resources, Taint, TaintEffect, Toleration,
    TolerationOperator, TopologySpread,
};

const NODES: usize = 200;
const REPLICAS: usize = 1000;
const DEATHS: usize = 30;

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

/// Nodes in 5 zones with 1–8 "cores" of `millis_per_core` CPU and `mi_per_core` memory
/// each; a few tainted or cordoned.
fn fleet(rng: &mut Rng, nodes: usize, millis_per_core: u64, mi_per_core: u64) -> Vec<NodeView> {
    (0..nodes)
        .map(|i| {
            let cores = 1 + rng.below(8);
            let mut labels = BTreeMap::from([("zone".to_owned(), format!("z{}", rng.below(5)))]);
            if rng.below(4) == 0 {
                labels.insert("disk".into(), "ssd".into());
            }
            let taints = if rng.below(20) == 0 {
                vec![Taint { key: "gpu".into(), value: "1".into(), effect: TaintEffect::NoSchedule }]
            } else {
                vec![]
            };
            NodeView {
                id: format!("edge-{i:03}"),
                labels,
                taints,
                capacity: Resources {
                    cpu_millis: cores * millis_per_core,
                    memory_bytes: (cores * mi_per_core) << 20,
                },
                cordoned: rng.below(50) == 0,
            }
        })
        .collect()
}

/// `total` replicas in workloads of `per_workload` (1–20 drawn at random when `None`); every
/// fifth workload anti-affine, every seventh spread over zones, some with a node selector
/// or a toleration.
fn workloads(rng: &mut Rng, total: usize, per_workload: Option<usize>) -> Vec<ReplicaReq> {
    let mut out = Vec::with_capacity(total);
    let mut w = 0;
    while out.len() < total {
        let count = per_workload.unwrap_or_else(|| 1 + rng.below(20) as usize).min(total - out.len());
        let cpu = 50 + rng.below(450);
        let mem = (64 + rng.below(448)) << 20;
        for i in 0..count {
            let mut r = ReplicaReq {
                workload: format!("default/app-{w}"),
                identity: format!("app-{w}-5f2a{w:04x}-{i}"),
                requests: Resources { cpu_millis: cpu, memory_bytes: mem },
                anti_affinity_by_hostname: w % 5 == 0,
                topology_spread: (w % 7 == 0)
                    .then(|| TopologySpread { topology_key: "zone".into(), max_skew: 1 }),
                ..ReplicaReq::default()
            };
            if w % 11 == 0 {
                r.node_selector.insert("disk".into(), "ssd".into());
            }
            if w % 13 == 0 {
                r.tolerations.push(Toleration {
                    key: "gpu".into(),
                    operator: TolerationOperator::Exists,
                    ..Toleration::default()
                });
            }
            out.push(r);
        }
        w += 1;
    }
    out
}

fn counted(r: &ReplicaReq) -> bool {
    r.anti_affinity_by_hostname || r.topology_spread.is_some()
}

#[derive(Debug, Default)]
struct Moves {
    /// Replicas that were on the dead node.
    from_dead: usize,
    /// Replicas moved between live nodes (cascades).
    between_live: usize,
    unschedulable: usize,
}

fn check_step(seed: u64, rng: &mut Rng, nodes: &[NodeView], rs: &[ReplicaReq]) -> Plan {
    let plan = place(nodes, rs);
    for (id, load) in plan.load(rs) {
        let n = nodes.iter().find(|n| n.id == id).expect("assigned to a live node");
        assert!(
            load.cpu_millis <= n.capacity.cpu_millis && load.memory_bytes <= n.capacity.memory_bytes,
            "seed {seed}: {id} over capacity"
        );
    }
    let (mut n2, mut r2) = (nodes.to_vec(), rs.to_vec());
    rng.shuffle(&mut n2);
    rng.shuffle(&mut r2);
    assert_eq!(plan, place(&n2, &r2), "seed {seed}: plan depends on input order");
    plan
}

fn moves(before: &Plan, after: &Plan, dead: &str) -> Moves {
    let mut m = Moves { unschedulable: after.unschedulable.len(), ..Moves::default() };
    for (r, n) in &before.assignments {
        if n == dead {
            m.from_dead += 1;
        } else if after.assignments.get(r) != Some(n) {
            m.between_live += 1;
        }
    }
    m
}

/// Kills `DEATHS` nodes one by one, then brings them back in another order.
fn run(seed: u64, millis_per_core: u64, mi_per_core: u64, ample: bool) -> (Vec<Moves>, usize) {
    let mut rng = Rng::new(seed);
    let all = fleet(&mut rng, NODES, millis_per_core, mi_per_core);
    let rs = workloads(&mut rng, REPLICAS, None);
    let by_id: BTreeMap<&str, &ReplicaReq> = rs.iter().map(|r| (r.identity.as_str(), r)).collect();
    let original = check_step(seed, &mut rng, &all, &rs);
    let mut live = all.clone();
    let mut plan = original.clone();
    let mut log = vec![];
    let mut dead = vec![];
    for _ in 0..DEATHS {
        let victim = live.remove(rng.below(live.len() as u64) as usize);
        let next = check_step(seed, &mut rng, &live, &rs);
        if ample {
            for (r, n) in &plan.assignments {
                if *n != victim.id && !counted(by_id[r.as_str()]) {
                    assert_eq!(next.assignments.get(r), Some(n), "seed {seed}: {r} moved off live {n}");
                }
            }
        }
        log.push(moves(&plan, &next, &victim.id));
        dead.push(victim);
        plan = next;
    }
    rng.shuffle(&mut dead);
    for back in dead {
        live.push(back);
        plan = check_step(seed, &mut rng, &live, &rs);
    }
    assert_eq!(plan, original, "seed {seed}: the plan with every node back differs from the original");
    (log, original.unschedulable.len())
}

fn seeds() -> u64 {
    std::env::var("PEER_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(2)
}

fn report(name: &str, seed: u64, log: &[Moves], unschedulable_at_start: usize) {
    if std::env::var_os("PEER_SIM_REPORT").is_none() {
        return;
    }
    let from_dead: usize = log.iter().map(|m| m.from_dead).sum();
    let between: usize = log.iter().map(|m| m.between_live).sum();
    let worst = log.iter().map(|m| m.between_live).max().unwrap_or(0);
    let unsched = log.last().map_or(0, |m| m.unschedulable);
    println!(
        "{name} seed {seed}: {DEATHS} deaths of {NODES} nodes, {REPLICAS} replicas: {from_dead} moved off dead nodes, \
         {between} moved between live nodes (worst death {worst}); unschedulable {unschedulable_at_start} -> {unsched}"
    );
}

#[test]
fn placement_ample_capacity_deaths_move_only_the_dead_nodes_replicas() {
    for seed in 0..seeds() {
        // Each node could hold every replica: no capacity cascade can happen.
        let (log, unsched) = run(seed, 1 << 20, 1 << 30, true);
        assert!(log.iter().map(|m| m.from_dead).sum::<usize>() > 0, "seed {seed}: no death hit a replica");
        report("ample", seed, &log, unsched);
    }
}

#[test]
fn placement_tight_capacity_never_overcommits_and_restores() {
    for seed in 0..seeds() {
        // Requests (≈ 275 cores, ≈ 290 GiB) fill ≈ 80 % of the fleet: deaths push replicas
        // into full nodes and the cascades show.
        let (log, unsched) = run(seed, 380, 400, false);
        report("tight", seed, &log, unsched);
    }
}

/// Time this thread has spent on a CPU (Linux `schedstat`), which, unlike wall time, does
/// not grow when other processes share the cores; `None` elsewhere.
fn on_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    stat.split_whitespace().next()?.parse().ok().map(Duration::from_nanos)
}

/// Median, min and max of some durations.
fn spread_of(mut times: Vec<Duration>) -> (Duration, Duration, Duration) {
    times.sort();
    (times[times.len() / 2], times[0], times[times.len() - 1])
}

/// Runs `f` `runs` times after one warm-up; (median, min, max) of the wall times and of
/// the on-CPU times.
fn time_runs<T>(runs: usize, mut f: impl FnMut() -> T) -> [(Duration, Duration, Duration); 2] {
    std::hint::black_box(f());
    let (mut wall, mut cpu) = (vec![], vec![]);
    for _ in 0..runs {
        let (start, start_cpu) = (Instant::now(), on_cpu());
        std::hint::black_box(f());
        wall.push(start.elapsed());
        cpu.push(on_cpu().zip(start_cpu).map_or(Duration::ZERO, |(end, start)| end - start));
    }
    [spread_of(wall), spread_of(cpu)]
}

/// A fingerprint of a plan, to see at a glance that two builds compute the same one.
fn fingerprint(plan: &Plan) -> u64 {
    let mut text = String::new();
    for (r, n) in &plan.assignments {
        text.push_str(&format!("{r}={n};"));
    }
    for (r, why) in &plan.unschedulable {
        text.push_str(&format!("{r}:{why};"));
    }
    protocol::spec::fnv1a64(text.as_bytes())
}

#[test]
#[ignore = "timing benchmark; run in release with --ignored --nocapture (see the module docs)"]
fn placement_recompute_at_fleet_size() {
    const RUNS: usize = 9;
    let mut rng = Rng::new(1);
    // Ten replicas per node on average, filling about 80 % of the fleet like the tight test.
    let nodes = fleet(&mut rng, 1000, 760, 800);
    let rs = workloads(&mut rng, 10_000, Some(5));
    let plan = place(&nodes, &rs);
    for (id, load) in plan.load(&rs) {
        let n = nodes.iter().find(|n| n.id == id).expect("assigned to a live node");
        assert!(load.cpu_millis <= n.capacity.cpu_millis && load.memory_bytes <= n.capacity.memory_bytes);
    }
    // The steady state of a running cluster: every placed replica claimed where it runs.
    let claims: Vec<Claim> =
        plan.assignments.iter().map(|(r, n)| Claim { node: n.clone(), replica: r.clone() }).collect();
    let claimed = place_with_claims(&nodes, &rs, &claims);
    for c in &claims {
        assert_eq!(claimed.assignments.get(&c.replica), Some(&c.node), "a claimed replica moved");
    }
    println!(
        "1000 nodes, {} replicas: {} placed, {} unschedulable; plan {:016x}, with claims {:016x}",
        rs.len(),
        plan.assignments.len(),
        plan.unschedulable.len(),
        fingerprint(&plan),
        fingerprint(&claimed),
    );
    let show = |label: &str, [wall, cpu]: [(Duration, Duration, Duration); 2]| {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "recompute, {label}: median {:.1} ms, min {:.1}, max {:.1} (wall, {RUNS} runs); \
             on-CPU median {:.1} ms, min {:.1}, max {:.1}",
            ms(wall.0),
            ms(wall.1),
            ms(wall.2),
            ms(cpu.0),
            ms(cpu.1),
            ms(cpu.2)
        );
    };
    show("no claims", time_runs(RUNS, || place(&nodes, &rs)));
    let label = format!("{} claims", claims.len());
    show(&label, time_runs(RUNS, || place_with_claims(&nodes, &rs, &claims)));
}
