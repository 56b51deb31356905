//! A seeded discrete-event simulation of desired-state replication among many nodes in
//! virtual time: the real `DesiredState`, `SyncSession`, `Replicator` and codec, over a
//! simulated network with latency, loss, limited uplinks and crashed nodes.
//!
//! Digests spread the way membership gossips them (PROTOCOL.md, "Membership"): chitchat rounds
//! every 200 ms, but a node sends its digest (and gets the peer's back) only in the
//! `NEWS_ROUNDS` rounds after news — its own digest changed, or a peer's digest it heard
//! changed — to 3 random peers per round, and otherwise once per anti-entropy interval
//! (1 s, 100 ms per node from 10 nodes up, at most 10 s). A failure prints its seed. `PEER_SIM_SEEDS=N` runs more seeds; `PEER_SIM_REPORT=1` prints convergence times
//! (used by BENCHMARKS.md).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use protocol::desired::{Clock, DesiredState, NodeId};
use protocol::membership;
use protocol::replicate::{ReplicateConfig, Replicator};
use protocol::spec::{Container, Kind, Object, ObjectKey, PodTemplate, RestartPolicy, Strategy, Workload};
use protocol::sync::{SyncMessage, SyncSession};

const GOSSIP_MS: u64 = 200;
/// Peers per gossip round (chitchat's fanout).
const FANOUT: usize = 3;

#[derive(Debug, Clone)]
struct Params {
    nodes: usize,
    seed: u64,
    loss: f64,
    min_latency_ms: u64,
    max_latency_ms: u64,
    /// Uplink of every node, bytes per ms (1000 = 1 MB/s).
    uplink_bytes_per_ms: u64,
    crashed: usize,
}

enum Event {
    /// A node pulls a random peer's digest.
    GossipTick(usize),
    Deliver {
        from: usize,
        to: usize,
        msg: Wire,
    },
    Write {
        node: usize,
        workload: Box<Workload>,
    },
}

enum Wire {
    Push(Vec<u8>),
    Round(Vec<u8>),
    DigestReply(u64),
}

struct Node {
    id: NodeId,
    state: DesiredState,
    clock: Clock,
    repl: Replicator,
    sessions: BTreeMap<usize, SyncSession>,
    uplink_free_at: u64,
    crashed: bool,
    /// The gossip gate: digests go out every round until then (news) ...
    hot_until: u64,
    /// ... and otherwise once at this time (anti-entropy).
    next_anti_entropy: u64,
    /// This node's digest as last gossiped, and each peer's as last heard.
    published: u64,
    heard: BTreeMap<usize, u64>,
}

struct Sim {
    p: Params,
    now: u64,
    rng: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    events: BTreeMap<u64, Event>,
    nodes: Vec<Node>,
    messages: u64,
    bytes: u64,
}

impl Sim {
    fn new(p: Params) -> Sim {
        let nodes = (0..p.nodes)
            .map(|i| {
                let id = NodeId(format!("n{i:05}"));
                Node {
                    clock: Clock::new(id.clone(), i as u64 + 1),
                    repl: Replicator::new(
                        id.clone(),
                        ReplicateConfig::default(),
                        p.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ ((i as u64 + 1) * 0x9e37),
                    ),
                    id,
                    state: DesiredState::new(),
                    sessions: BTreeMap::new(),
                    uplink_free_at: 0,
                    crashed: i < p.crashed,
                    hot_until: 0,
                    next_anti_entropy: 0,
                    published: 0,
                    heard: BTreeMap::new(),
                }
            })
            .collect();
        let mut sim = Sim {
            // splitmix-style spread so that nearby seeds give unrelated runs
            rng: p.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
            p,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            nodes,
            messages: 0,
            bytes: 0,
        };
        for i in 0..sim.nodes.len() {
            let first = sim.rand(GOSSIP_MS);
            sim.at(first, Event::GossipTick(i));
        }
        sim
    }

    fn rand(&mut self, n: u64) -> u64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }

    fn at(&mut self, time: u64, e: Event) {
        self.seq += 1;
        self.queue.push(Reverse((time, self.seq)));
        self.events.insert(self.seq, e);
    }

    fn live(&self) -> Vec<NodeId> {
        self.nodes.iter().filter(|n| !n.crashed).map(|n| n.id.clone()).collect()
    }

    fn index(&self, id: &NodeId) -> usize {
        id.0[1..].parse().expect("sim node ids are n<index>")
    }

    /// Sends over the simulated network: the sender's uplink serializes its messages.
    fn send(&mut self, from: usize, to: usize, msg: Wire) {
        let len = match &msg {
            Wire::Push(b) | Wire::Round(b) => b.len() as u64,
            Wire::DigestReply(_) => 16,
        } + 64;
        self.messages += 1;
        self.bytes += len;
        let start = self.nodes[from].uplink_free_at.max(self.now);
        let done = start + len / self.p.uplink_bytes_per_ms.max(1);
        self.nodes[from].uplink_free_at = done;
        let lost = (self.rand(1_000_000) as f64) < self.p.loss * 1_000_000.0;
        if lost || self.nodes[to].crashed {
            return;
        }
        let latency = self.p.min_latency_ms + self.rand(self.p.max_latency_ms - self.p.min_latency_ms + 1);
        self.at(done + latency, Event::Deliver { from, to, msg });
    }

    fn send_round(&mut self, from: usize, to: usize) {
        while let Some(m) = self.nodes[from].sessions.get_mut(&to).and_then(SyncSession::poll_transmit) {
            let bytes = m.encode().expect("sync messages encode");
            self.send(from, to, Wire::Round(bytes));
        }
        let done = self.nodes[from].sessions.get(&to).is_some_and(SyncSession::is_done);
        if done {
            self.nodes[from].sessions.remove(&to);
            let peer = self.nodes[to].id.clone();
            let now = self.now;
            self.nodes[from].repl.round_ended(&peer, now);
        }
    }

    fn step(&mut self) -> bool {
        let Some(Reverse((time, seq))) = self.queue.pop() else { return false };
        self.now = time;
        let event = self.events.remove(&seq).expect("every queued seq has an event");
        match event {
            Event::GossipTick(i) => {
                if !self.nodes[i].crashed {
                    let mine = self.nodes[i].state.digest();
                    let anti_entropy = (100 * self.nodes.len() as u64).clamp(1000, 10_000);
                    let n = &mut self.nodes[i];
                    if n.published != mine {
                        n.published = mine;
                        n.hot_until = time + membership::NEWS_ROUNDS as u64 * GOSSIP_MS;
                    }
                    let exchanges = if time < n.hot_until {
                        FANOUT
                    } else if time >= n.next_anti_entropy {
                        n.next_anti_entropy = time + anti_entropy;
                        1
                    } else {
                        0
                    };
                    for _ in 0..exchanges {
                        // Syn carries this node's digest, SynAck the peer's.
                        let peer = self.rand(self.nodes.len() as u64) as usize;
                        if peer != i {
                            self.send(i, peer, Wire::DigestReply(mine));
                            if !self.nodes[peer].crashed {
                                let d = self.nodes[peer].state.digest();
                                self.send(peer, i, Wire::DigestReply(d));
                            }
                        }
                    }
                    self.at(time + GOSSIP_MS, Event::GossipTick(i));
                }
            }
            Event::Write { node, workload } => {
                let n = &mut self.nodes[node];
                let entry = n.state.put((*workload).clone(), &mut n.clock).expect("sim workloads are small");
                let live = self.live();
                let n = &mut self.nodes[node];
                let out = n.repl.on_local_write(&n.state, vec![(workload.key.clone(), entry)], &live);
                for (to, msg) in out {
                    let to = self.index(&to);
                    self.send(node, to, Wire::Push(msg.encode().expect("push encodes")));
                }
            }
            Event::Deliver { from, to, msg } => match msg {
                Wire::DigestReply(d) => {
                    let peer = self.nodes[from].id.clone();
                    let n = &mut self.nodes[to];
                    if n.heard.insert(from, d) != Some(d) {
                        // A peer's digest changed: news, gossiped on for a few rounds.
                        n.hot_until = time + membership::NEWS_ROUNDS as u64 * GOSSIP_MS;
                    }
                    let mine = n.state.digest();
                    if n.repl.want_round(mine, &peer, d, time) {
                        n.repl.round_started(&peer, time);
                        n.sessions.insert(from, SyncSession::start(&n.state));
                        self.send_round(to, from);
                    }
                }
                Wire::Push(bytes) => {
                    let msg = SyncMessage::decode(&bytes).expect("sim pushes decode");
                    let live = self.live();
                    let peer = self.nodes[from].id.clone();
                    let n = &mut self.nodes[to];
                    let (_, out) = n.repl.on_push(&mut n.state, &peer, msg, &live);
                    for (t, m) in out {
                        let t = self.index(&t);
                        self.send(to, t, Wire::Push(m.encode().expect("push encodes")));
                    }
                }
                Wire::Round(bytes) => {
                    let msg = SyncMessage::decode(&bytes).expect("sim round messages decode");
                    let peer = self.nodes[from].id.clone();
                    let n = &mut self.nodes[to];
                    if !n.sessions.contains_key(&from) {
                        // The peer started a round: answer with our side of it.
                        n.repl.round_started(&peer, time);
                        n.sessions.insert(from, SyncSession::start(&n.state));
                    }
                    let n = &mut self.nodes[to];
                    let session = n.sessions.get_mut(&from).expect("session exists");
                    if session.handle_message(&mut n.state, msg).is_err() {
                        n.sessions.remove(&from);
                        n.repl.round_ended(&peer, time);
                    } else {
                        self.send_round(to, from);
                    }
                }
            },
        }
        true
    }

    fn converged(&self) -> bool {
        let mut digests = self.nodes.iter().filter(|n| !n.crashed).map(|n| n.state.digest());
        let first = digests.next();
        digests.all(|d| Some(d) == first)
    }

    /// Runs until all live nodes hold equal state or `limit_ms` passes; returns the time.
    /// Once every live node has the same digest, messages still in flight carry nothing
    /// new (merges are idempotent), so that moment is the convergence time. Checked every
    /// 5 ms of virtual time, after `from_ms` (when the writes happen).
    fn run_until_converged(&mut self, from_ms: u64, limit_ms: u64) -> Option<u64> {
        let mut next_check = from_ms;
        while self.now <= limit_ms {
            if !self.step() {
                break;
            }
            if self.now >= next_check {
                if self.converged() {
                    return Some(self.now);
                }
                next_check = self.now + 5;
            }
        }
        self.converged().then_some(self.now)
    }

    /// Equal digests must mean equal live objects everywhere.
    fn check_invariants(&self) {
        let live: Vec<&Node> = self.nodes.iter().filter(|n| !n.crashed).collect();
        let reference: Vec<&Object> = live[0].state.live().collect();
        for n in &live {
            let objects: Vec<&Object> = n.state.live().collect();
            assert_eq!(objects, reference, "node {} differs", n.id);
        }
    }
}

fn workload(name: &str, replicas: u32) -> Workload {
    Workload {
        key: ObjectKey { kind: Kind::Deployment, namespace: "default".into(), name: name.into() },
        labels: Default::default(),
        replicas,
        selector: Default::default(),
        strategy: Strategy::Recreate,
        pod_management: Default::default(),
        rollout: Default::default(),
        template: PodTemplate {
            labels: Default::default(),
            containers: vec![Container::new("main", "peer-demo:latest")],
            restart_policy: RestartPolicy::Always,
            termination_grace_period_seconds: 30,
            host_network: false,
            scheduling: Default::default(),
            image_pull_secrets: vec![],
        },
    }
}

/// One spec change written on one node at t = 1 s; returns ms until every live node has it.
fn spread_time(p: Params) -> (u64, Sim) {
    let seed = p.seed;
    let mut sim = Sim::new(p);
    // A second write, concurrent, on another live node: both must converge to one winner.
    let writer = sim.nodes.iter().position(|n| !n.crashed).expect("a live node");
    let other = sim.nodes.len() - 1;
    sim.at(1000, Event::Write { node: writer, workload: Box::new(workload("api", 3)) });
    sim.at(1000, Event::Write { node: other, workload: Box::new(workload("api", 5)) });
    sim.at(1000, Event::Write { node: other, workload: Box::new(workload("web", 2)) });
    let done = sim
        .run_until_converged(1001, 60_000)
        .unwrap_or_else(|| panic!("seed {seed}: no convergence in 60 s"));
    sim.check_invariants();
    (done - 1000, sim)
}

fn base(nodes: usize, seed: u64) -> Params {
    Params {
        nodes,
        seed,
        loss: 0.01,
        min_latency_ms: 1,
        max_latency_ms: 20,
        uplink_bytes_per_ms: 1000,
        crashed: 0,
    }
}

fn seeds() -> Vec<u64> {
    let n = std::env::var("PEER_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3u64);
    (1..=n).collect()
}

fn report(label: &str, ms: u64, sim: &Sim) {
    if std::env::var("PEER_SIM_REPORT").is_ok() {
        println!("{label}: converged in {ms} ms, {} messages, {} bytes", sim.messages, sim.bytes);
    }
}

#[test]
fn hundred_nodes_converge_with_loss_and_crashes() {
    for seed in seeds() {
        let (ms, sim) = spread_time(Params { crashed: 10, loss: 0.05, ..base(100, seed) });
        report(&format!("100 nodes, 10 crashed, 5% loss, seed {seed}"), ms, &sim);
        assert!(ms < 10_000, "seed {seed}: 100 nodes took {ms} ms");
    }
}

#[test]
fn thousand_nodes_converge() {
    for seed in seeds().into_iter().take(2) {
        let (ms, sim) = spread_time(base(1000, seed));
        report(&format!("1000 nodes, 1% loss, seed {seed}"), ms, &sim);
        assert!(ms < 10_000, "seed {seed}: 1000 nodes took {ms} ms");
    }
}

#[test]
fn a_partition_heals_into_one_state() {
    for seed in seeds() {
        // Loss of 100% for a while is a partition; model it as two writes made where the
        // pushes are all lost, then repaired by anti-entropy alone.
        let mut sim = Sim::new(Params { loss: 1.0, ..base(20, seed) });
        sim.at(100, Event::Write { node: 0, workload: Box::new(workload("api", 1)) });
        sim.at(100, Event::Write { node: 19, workload: Box::new(workload("api", 2)) });
        while sim.now < 2000 && sim.step() {}
        assert!(!sim.converged(), "seed {seed}: nothing can cross a full partition");
        sim.p.loss = 0.0;
        let done =
            sim.run_until_converged(2000, 60_000).unwrap_or_else(|| panic!("seed {seed}: no convergence"));
        sim.check_invariants();
        report(&format!("20 nodes healing a partition, seed {seed}"), done - 2000, &sim);
    }
}
