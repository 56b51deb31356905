//! A seeded simulation of one rolling update across a fleet whose nodes each act on their
//! own stale view, with node crashes during the rollout: checks on the true state, at
//! every tick, the bounds PROTOCOL.md ("Rolling updates") states, and that the rollout
//! finishes once the crashes stop.
//!
//! The model, in ticks of 100 ms:
//! - `nodes` nodes; Deployment of `replicas` replicas rolls from revision A to B (every node
//!   learns B at tick 1; the spread of the desired state itself is not modelled).
//! - Claims: a node publishes its copies (replica, start tick, Ready) whenever they change;
//!   each other node receives that snapshot after its own random delay of 1–10 ticks
//!   (a newer snapshot is never replaced by an older one that arrives later). A node sees
//!   its own copies at once.
//! - Every tick, each node whose view changed runs the real `rollout::step` on its view
//!   (its own copies plus the latest snapshot of every node it does not know dead) and
//!   acts on its own copies: a copy that is not wanted, or that another claimant keeps
//!   (the earliest start, then the lowest node id), is deleted — its claim goes at once,
//!   the process drains for 2 s (`DRAIN`); a wanted current-revision replica that no
//!   node in the view claims is started by the node that wins the rendezvous hash among
//!   the live nodes of the view (placement's tie-break, without capacities), and is
//!   Ready 1–5 ticks later. Old-revision copies are never started again.
//! - Crashes: `crashes` random nodes crash as the rollout passes random points (their
//!   copies vanish at once and never come back); every other node learns it after its own
//!   detection delay of 12–18 ticks (~1.5 s, as membership), and only then drops the dead
//!   node's claims and stops placing on it.
//!
//! Invariants, on the true state at every tick (`check`), with the step's limits `surge`
//! and `unavailable`:
//! - claimed copies (both revisions, starting or running, not draining) ≤ `N + surge`;
//! - Ready copies ≥ `N − unavailable − debt`, where `debt` counts the Ready copies crashes
//!   took away: a crash adds its Ready copies when it happens; the debt is paid back, one
//!   per copy that turns Ready, only while every live node has detected every crash so far.
//! - No replica of B runs twice, and no copy of B is ever deleted.
//! - The rollout finishes (exactly the `N` replicas of B, each once and Ready, nothing of
//!   A) within `finish_limit` ticks after the last crash.
//!
//! A failure prints its seed; `PEER_SIM_SEED=<seed>` replays one seed, `PEER_SIM_SEEDS=N`
//! runs seeds 1..=N, and `PEER_ROLLOUT_SIM_LONG=1` (with `--release`) runs 1,000 replicas
//! over 200 nodes.

// Shared with the fleet simulation, which uses all of it.
#[allow(dead_code)]
#[path = "fleet_sim/rng.rs"]
mod rng;

use std::collections::{BTreeMap, BTreeSet};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::time::Instant;

use protocol::rollout::{self, Copy};
use protocol::spec::{IntOrPercent, Strategy};

use rng::Rng;

const OLD: &str = "000000000a";
const NEW: &str = "000000000b";
/// Claims reach another node 1–10 ticks after they change.
const GOSSIP: (u64, u64) = (1, 10);
/// A started copy turns Ready 1–5 ticks later.
const READY: (u64, u64) = (1, 5);
/// A node learns of a crash 12–18 ticks after it.
const DETECT: (u64, u64) = (12, 18);
/// A deleted copy's process runs on for 2 s without a claim (endpoints drain).
const DRAIN: u64 = 20;

/// A replica: (revision, 0 for A and 1 for B; index).
type Replica = (u8, u32);

/// One run's parameters.
#[derive(Debug, Clone, Copy)]
struct Scenario {
    nodes: usize,
    replicas: u32,
    surge: u32,
    unavailable: u32,
    crashes: usize,
    /// Ticks the rollout may take after the last crash.
    finish_limit: u64,
}

/// A copy as its node runs it.
#[derive(Debug, Clone, Copy)]
struct Own {
    since: u64,
    ready_at: u64,
}

/// What a node claims, as its peers receive it.
#[derive(Debug)]
struct Snapshot {
    version: u64,
    copies: Vec<(Replica, u64, bool)>,
}

struct Node {
    alive: bool,
    own: BTreeMap<Replica, Own>,
    /// Deleted copies still draining, until the tick given.
    draining: Vec<u64>,
    version: u64,
    /// The latest snapshot received from each node, and the nodes known dead.
    view: Vec<Option<Rc<Snapshot>>>,
    dead: Vec<bool>,
    changed: bool,
}

impl Node {
    fn snapshot(&self, now: u64) -> Snapshot {
        let copies = self.own.iter().map(|(r, o)| (*r, o.since, o.ready_at <= now)).collect();
        Snapshot { version: self.version, copies }
    }
}

/// What a run measured.
#[derive(Debug)]
struct Report {
    finished_at: u64,
    last_crash: u64,
    last_detected: u64,
    max_claimed: u32,
    max_running: u32,
    min_ready: u32,
    max_debt: u32,
    lost_ready: u32,
}

struct World {
    s: Scenario,
    rng: Rng,
    now: u64,
    nodes: Vec<Node>,
    /// Rendezvous order of the nodes for each replica of B.
    ranking: Vec<Vec<u16>>,
    /// Claims in flight: tick → (to, from, snapshot).
    inbox: BTreeMap<u64, Vec<(usize, usize, Rc<Snapshot>)>>,
    /// Crash detections due: tick → (observer, crashed).
    detections: BTreeMap<u64, Vec<(usize, usize)>>,
    /// Crashes not yet detected by every live node: (crashed node, Ready copies lost).
    undetected: Vec<(usize, u32)>,
    debt: u32,
    report: Report,
}

fn mix(mut x: u64) -> u64 {
    // splitmix64's finaliser: a stable hash, the same on every run and machine.
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn rendezvous(r: Replica, node: usize) -> u64 {
    mix(mix(u64::from(r.0) << 32 | u64::from(r.1)) ^ node as u64)
}

impl World {
    fn new(s: Scenario, seed: u64) -> World {
        let n = s.nodes;
        let mut nodes: Vec<Node> = (0..n)
            .map(|_| Node {
                alive: true,
                own: BTreeMap::new(),
                draining: Vec::new(),
                version: 1,
                view: vec![None; n],
                dead: vec![false; n],
                changed: true,
            })
            .collect();
        // Revision A runs everywhere, Ready, and every node has seen every claim.
        for i in 0..s.replicas {
            let home = (0..n).max_by_key(|node| rendezvous((0, i), *node)).expect("nodes");
            nodes[home].own.insert((0, i), Own { since: 0, ready_at: 0 });
        }
        let snapshots: Vec<Rc<Snapshot>> = nodes.iter().map(|node| Rc::new(node.snapshot(0))).collect();
        for node in &mut nodes {
            node.view = snapshots.iter().cloned().map(Some).collect();
        }
        let ranking = (0..s.replicas)
            .map(|i| {
                let mut order: Vec<u16> = (0..n as u16).collect();
                order.sort_by_key(|node| std::cmp::Reverse(rendezvous((1, i), usize::from(*node))));
                order
            })
            .collect();
        World {
            s,
            rng: Rng::new(seed),
            now: 0,
            nodes,
            ranking,
            inbox: BTreeMap::new(),
            detections: BTreeMap::new(),
            undetected: Vec::new(),
            debt: 0,
            report: Report {
                finished_at: 0,
                last_crash: 0,
                last_detected: 0,
                max_claimed: 0,
                max_running: 0,
                min_ready: u32::MAX,
                max_debt: 0,
                lost_ready: 0,
            },
        }
    }

    fn strategy(&self) -> Strategy {
        Strategy::RollingUpdate {
            max_surge: IntOrPercent::Int(self.s.surge),
            max_unavailable: IntOrPercent::Int(self.s.unavailable),
        }
    }

    fn crash(&mut self, victim: usize) {
        let now = self.now;
        let node = &mut self.nodes[victim];
        node.alive = false;
        self.report.last_crash = now;
        let lost = node.own.values().filter(|o| o.ready_at <= now).count() as u32;
        node.own.clear();
        node.draining.clear();
        self.undetected.push((victim, lost));
        self.report.lost_ready += lost;
        for observer in 0..self.nodes.len() {
            if observer != victim && self.nodes[observer].alive {
                let at = now + self.rng.between(DETECT.0, DETECT.1);
                self.detections.entry(at).or_default().push((observer, victim));
            }
        }
    }

    /// Applies the detections due now; a crash every live node has detected joins the debt.
    fn detect(&mut self) {
        for (observer, victim) in self.detections.remove(&self.now).unwrap_or_default() {
            let node = &mut self.nodes[observer];
            node.dead[victim] = true;
            node.view[victim] = None;
            node.changed = true;
        }
        let nodes = &self.nodes;
        let (known, pending): (Vec<_>, Vec<_>) = self.undetected.iter().partition(|(victim, _)| {
            nodes.iter().enumerate().all(|(i, n)| !n.alive || i == *victim || n.dead[*victim])
        });
        if !known.is_empty() {
            self.report.last_detected = self.now;
        }
        self.debt += known.iter().map(|(_, lost)| lost).sum::<u32>();
        self.undetected = pending;
    }

    fn deliver(&mut self) {
        for (to, from, snapshot) in self.inbox.remove(&self.now).unwrap_or_default() {
            let node = &mut self.nodes[to];
            if !node.alive || node.dead[from] {
                continue;
            }
            if node.view[from].as_ref().is_none_or(|old| old.version < snapshot.version) {
                node.view[from] = Some(snapshot);
                node.changed = true;
            }
        }
    }

    /// One node runs the step on its view and acts on its own copies.
    fn act(&mut self, me: usize) {
        let now = self.now;
        let strategy = self.strategy();
        let node = &self.nodes[me];
        // Every copy in the view, and who claims each replica (earliest start, then id).
        let mut copies = Vec::new();
        let mut claimant: BTreeMap<Replica, (u64, usize)> = BTreeMap::new();
        let own = node.own.iter().map(|(r, o)| (me, *r, o.since, o.ready_at <= now));
        let others = node.view.iter().enumerate().filter(|(from, _)| *from != me).flat_map(|(from, s)| {
            s.iter()
                .flat_map(move |s| s.copies.iter().map(move |(r, since, ready)| (from, *r, *since, *ready)))
        });
        for (from, replica, since, ready) in own.chain(others) {
            let revision = if replica.0 == 0 { OLD } else { NEW };
            copies.push(Copy { revision: revision.to_owned(), index: replica.1, ready });
            let c = claimant.entry(replica).or_insert((since, from));
            *c = (*c).min((since, from));
        }
        let step = rollout::step(self.s.replicas, &strategy, NEW, &copies, &rollout::Gates::default());
        let keep_old: BTreeSet<u32> =
            step.keep_old.iter().filter(|(r, _)| r == OLD).map(|(_, i)| *i).collect();
        let wanted = |r: &Replica| if r.0 == 0 { keep_old.contains(&r.1) } else { r.1 < step.new };
        let drop: Vec<Replica> = node
            .own
            .keys()
            .filter(|r| !wanted(r) || claimant.get(*r).is_some_and(|(_, holder)| *holder != me))
            .copied()
            .collect();
        let start: Vec<u32> = (0..step.new)
            .filter(|i| !claimant.contains_key(&(1, *i)))
            .filter(|i| {
                let winner =
                    self.ranking[*i as usize].iter().map(|n| usize::from(*n)).find(|n| !node.dead[*n]);
                winner == Some(me)
            })
            .collect();
        // The step never lowers `new` under an index that runs, and this placement agrees
        // across views that differ only in the dead nodes they know: a copy of B never goes.
        assert!(drop.iter().all(|r| r.0 == 0), "tick {now}: node {me} deletes a copy of B: {drop:?}");
        let changed = !drop.is_empty() || !start.is_empty();
        for replica in drop {
            self.nodes[me].own.remove(&replica);
            self.nodes[me].draining.push(now + DRAIN);
        }
        for index in start {
            let ready_at = now + self.rng.between(READY.0, READY.1);
            self.nodes[me].own.insert((1, index), Own { since: now, ready_at });
        }
        if changed {
            self.nodes[me].version += 1;
            self.nodes[me].changed = true;
        }
    }

    fn publish(&mut self, me: usize) {
        let node = &mut self.nodes[me];
        node.draining.retain(|until| *until > self.now);
        let turned_ready = node.own.values().any(|o| o.ready_at == self.now);
        if turned_ready {
            node.version += 1;
        }
        let current = node.view[me].as_ref().is_some_and(|s| s.version == node.version);
        if current {
            return;
        }
        let snapshot = Rc::new(node.snapshot(self.now));
        node.view[me] = Some(snapshot.clone());
        for to in 0..self.nodes.len() {
            if to != me && self.nodes[to].alive {
                let at = self.now + self.rng.between(GOSSIP.0, GOSSIP.1);
                self.inbox.entry(at).or_default().push((to, me, snapshot.clone()));
            }
        }
    }

    /// The bounds on the true state; returns whether the rollout is done.
    fn check(&mut self) -> bool {
        let (n, now) = (self.s.replicas, self.now);
        let live = || self.nodes.iter().filter(|node| node.alive);
        let claimed = live().map(|node| node.own.len() as u32).sum::<u32>();
        let running = claimed + live().map(|node| node.draining.len() as u32).sum::<u32>();
        let ready = live().flat_map(|node| node.own.values()).filter(|o| o.ready_at <= now).count() as u32;
        let turned_ready = live().flat_map(|node| node.own.values()).filter(|o| o.ready_at == now).count();
        if self.undetected.is_empty() {
            self.debt = self.debt.saturating_sub(turned_ready as u32);
        }
        let debt = self.debt + self.undetected.iter().map(|(_, lost)| lost).sum::<u32>();
        let r = &mut self.report;
        (r.max_claimed, r.max_running) = (r.max_claimed.max(claimed), r.max_running.max(running));
        (r.min_ready, r.max_debt) = (r.min_ready.min(ready), r.max_debt.max(debt));
        assert!(claimed <= n + self.s.surge, "tick {now}: {claimed} copies claimed > {n} + {}", self.s.surge);
        assert!(
            ready + self.s.unavailable + debt >= n,
            "tick {now}: {ready} Ready < {n} - {} - {debt} (Ready copies crashes took)",
            self.s.unavailable
        );
        let new: BTreeSet<u32> =
            live().flat_map(|node| node.own.keys()).filter(|r| r.0 == 1).map(|r| r.1).collect();
        let new_copies = live().flat_map(|node| node.own.keys()).filter(|r| r.0 == 1).count();
        assert_eq!(new.len(), new_copies, "tick {now}: a replica of B runs twice");
        let all_new = live().flat_map(|node| node.own.keys()).all(|r| r.0 == 1);
        all_new && claimed == n && new.len() as u32 == n && ready == n
    }

    fn run(mut self) -> Report {
        // Crashes fire as the rollout passes random fractions of B's Ready copies.
        let mut at: Vec<u32> = (0..self.s.crashes).map(|_| self.rng.below(90) as u32).collect();
        at.sort_unstable();
        at.reverse();
        loop {
            self.now += 1;
            self.deliver();
            let ready_new = self
                .nodes
                .iter()
                .filter(|node| node.alive)
                .flat_map(|node| node.own.iter())
                .filter(|(r, o)| r.0 == 1 && o.ready_at <= self.now)
                .count() as u32;
            while at.last().is_some_and(|pct| ready_new * 100 >= pct * self.s.replicas) {
                at.pop();
                let live: Vec<usize> = (0..self.nodes.len()).filter(|i| self.nodes[*i].alive).collect();
                let victim = live[self.rng.below(live.len() as u64) as usize];
                self.crash(victim);
            }
            self.detect();
            for me in 0..self.nodes.len() {
                let node = &mut self.nodes[me];
                let ready_now = node.own.values().any(|o| o.ready_at == self.now);
                if node.alive && (std::mem::take(&mut node.changed) || ready_now) {
                    self.act(me);
                }
            }
            for me in 0..self.nodes.len() {
                if self.nodes[me].alive {
                    self.publish(me);
                }
            }
            let done = self.check();
            if done && at.is_empty() && self.undetected.is_empty() {
                self.report.finished_at = self.now;
                return self.report;
            }
            let since = self.now - self.report.last_crash;
            assert!(
                !at.is_empty() || since <= self.s.finish_limit,
                "not finished {since} ticks after the last crash"
            );
        }
    }
}

fn seeds(default: u64) -> Vec<u64> {
    if let Some(seed) = std::env::var("PEER_SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        return vec![seed];
    }
    let n = std::env::var("PEER_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(default);
    (1..=n).collect()
}

fn sweep(name: &str, s: Scenario, default_seeds: u64) {
    for seed in seeds(default_seeds) {
        let started = Instant::now();
        let report = match catch_unwind(AssertUnwindSafe(|| World::new(s, seed).run())) {
            Ok(report) => report,
            Err(panic) => {
                eprintln!("rollout_sim {name}: seed {seed} failed (PEER_SIM_SEED={seed} replays it)");
                resume_unwind(panic)
            }
        };
        println!(
            "{name} seed {seed}: done at tick {} ({} after the last crash, {} after its detection); claimed ≤ {}, running \
             with draining ≤ {}, Ready ≥ {}, {} Ready lost to crashes (debt ≤ {}); {:.2} s",
            report.finished_at,
            report.finished_at - report.last_crash,
            report.finished_at - report.last_detected,
            report.max_claimed,
            report.max_running,
            report.min_ready,
            report.lost_ready,
            report.max_debt,
            started.elapsed().as_secs_f64()
        );
    }
}

#[test]
fn rollouts_keep_the_bounds_under_crashes_and_finish() {
    // The limits hold the slowest of 300 seeds with a margin: a crash late in the rollout
    // leaves up to a tenth of it, and a lost copy costs a detection and a start.
    let base =
        Scenario { nodes: 20, replicas: 100, surge: 25, unavailable: 25, crashes: 3, finish_limit: 60 };
    sweep("20x100 surge 25 unavailable 25", base, 4);
    sweep(
        "20x100 surge 10 unavailable 0",
        Scenario { surge: 10, unavailable: 0, finish_limit: 150, ..base },
        3,
    );
    sweep(
        "20x100 surge 0 unavailable 10",
        Scenario { surge: 0, unavailable: 10, finish_limit: 150, ..base },
        3,
    );
    sweep(
        "20x100 surge 1 unavailable 0",
        Scenario { surge: 1, unavailable: 0, finish_limit: 1500, ..base },
        1,
    );
    // Without crashes the debt stays 0: the bounds of a single view hold across lagging ones.
    let calm = Scenario { crashes: 0, finish_limit: 200, ..base };
    sweep("20x100 surge 25 unavailable 25, no crashes", calm, 2);
    sweep("20x100 surge 10 unavailable 0, no crashes", Scenario { surge: 10, unavailable: 0, ..calm }, 2);
}

#[test]
fn a_thousand_replicas_over_two_hundred_nodes() {
    if std::env::var("PEER_ROLLOUT_SIM_LONG").is_err() {
        return;
    }
    let s =
        Scenario { nodes: 200, replicas: 1000, surge: 250, unavailable: 250, crashes: 20, finish_limit: 60 };
    sweep("200x1000 surge 25% unavailable 25%", s, 3);
    sweep(
        "200x1000 surge 10% unavailable 0",
        Scenario { surge: 100, unavailable: 0, finish_limit: 200, ..s },
        2,
    );
}
