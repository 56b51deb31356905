//! The simulated world: a discrete-event loop in virtual time over a network with
//! per-message latency, loss and partitions; the nodes' gossip, pushes and sync rounds;
//! and the faults. Plans are in `plans`, what runs where in `ledger`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::rc::Rc;

use protocol::desired::DesiredState;
use protocol::placement::NodeView;
use protocol::spec::{ObjectKey, Workload};
use protocol::sync::{SyncMessage, SyncSession};

use super::fleet::{self, index_of};
use super::ledger::Metrics;
use super::node::TICK_MS;
use super::node::{
    Fencing, Node, Phase, Seen, Session, GOSSIP_FANOUT, PLAN_EVERY_MS, QUIET_MS, ROUND_TIMEOUT_MS,
};
use super::plans::{Expansion, PlanInfo, PlanKey};
use super::rng::Rng;

#[derive(Debug, Clone)]
pub struct Net {
    pub min_latency_ms: u64,
    pub max_latency_ms: u64,
    /// Retransmission delay of a lost packet on a stream (sync rounds and pushes).
    pub rto_ms: u64,
}

#[derive(Debug, Clone)]
pub enum Fault {
    Crash(usize),
    Restart(usize),
    /// Side of each node; messages between sides are dropped.
    Partition(Vec<u8>),
    Heal,
    /// Probability that a message (or a stream packet) is lost.
    Loss(f64),
}

pub enum Event {
    Tick { node: usize, gen: u64 },
    Gossip { from: usize, from_gen: u64, to: usize, to_gen: u64, view: Rc<Vec<Seen>>, reply: bool },
    Push { from: usize, to: usize, to_gen: u64, bytes: Vec<u8> },
    Round { from: usize, from_gen: u64, to: usize, to_gen: u64, bytes: Vec<u8> },
    StartDone { node: usize, gen: u64, replica: String },
    StopDone { node: usize, gen: u64, replica: String },
    Write { node: usize, workloads: Vec<Workload> },
    Delete { node: usize, key: ObjectKey },
    Fault(Fault),
}

struct Queued(u64, u64, Event);

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.0, self.1) == (other.0, other.1)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.0, self.1).cmp(&(other.0, other.1))
    }
}

pub struct World {
    pub now: u64,
    pub rng: Rng,
    queue: BinaryHeap<Reverse<Queued>>,
    seq: u64,
    pub net: Net,
    pub fleet: Vec<NodeView>,
    pub nodes: Vec<Node>,
    pub side: Vec<u8>,
    loss: f64,
    fencing: (Fencing, u64),
    /// Replicas per desired-state digest, and plans by their inputs (see `plans`).
    pub expansions: BTreeMap<u64, Rc<Expansion>>,
    pub plans: BTreeMap<PlanKey, Rc<PlanInfo>>,
    pub plan_order: VecDeque<PlanKey>,
    /// Copies of each replica on up nodes, in any phase (starting, running, stopping).
    pub copies: BTreeMap<String, u32>,
    /// StatefulSet replicas ever started (their copies are never "extra": they are fenced).
    pub stateful: BTreeSet<String>,
    /// Extra copies of Deployment replicas now, and since when (see `ledger`).
    pub excess: u64,
    pub excess_since: u64,
    pub last_ran_on: BTreeMap<String, usize>,
    pub metrics: Metrics,
    /// Moves and duplicates are counted from this time on (the first fault).
    pub count_from: u64,
    /// Whether a second copy of a StatefulSet replica fails the run at once (otherwise it
    /// is counted in `stateful_overlaps`, for the control run without fencing).
    pub strict: bool,
    pub stateful_overlaps: u64,
    pub seed: u64,
    /// `PEER_SIM_TRACE=<text>`: print starts and stops of replicas whose identity contains
    /// it, and every fault.
    pub trace: Option<String>,
}

impl World {
    pub fn new(seed: u64, fleet: Vec<NodeView>, net: Net, fencing: (Fencing, u64)) -> World {
        let mut rng = Rng::new(seed);
        let nodes: Vec<Node> =
            (0..fleet.len()).map(|i| Node::new(&fleet, i, 1, 0, rng.next(), fencing)).collect();
        let mut w = World {
            now: 0,
            rng,
            queue: BinaryHeap::new(),
            seq: 0,
            net,
            side: vec![0; fleet.len()],
            fleet,
            nodes,
            loss: 0.0,
            fencing,
            expansions: BTreeMap::new(),
            plans: BTreeMap::new(),
            plan_order: VecDeque::new(),
            copies: BTreeMap::new(),
            stateful: BTreeSet::new(),
            excess: 0,
            excess_since: 0,
            last_ran_on: BTreeMap::new(),
            metrics: Metrics::default(),
            count_from: u64::MAX,
            strict: true,
            stateful_overlaps: 0,
            seed,
            trace: std::env::var("PEER_SIM_TRACE").ok(),
        };
        for i in 0..w.nodes.len() {
            let first = w.rng.below(TICK_MS);
            w.at(first, Event::Tick { node: i, gen: 1 });
        }
        w
    }

    /// Gives every node the same desired state, as if it had spread before the run.
    pub fn preload(&mut self, state: &DesiredState) {
        for n in &mut self.nodes {
            n.state = state.clone();
            n.clock.observe(state.max_lamport());
            n.digest = n.state.digest();
        }
    }

    pub fn at(&mut self, time: u64, e: Event) {
        self.seq += 1;
        self.queue.push(Reverse(Queued(time, self.seq, e)));
    }

    /// Runs events up to `until` (inclusive).
    pub fn run_until(&mut self, until: u64) {
        while self.queue.peek().is_some_and(|Reverse(q)| q.0 <= until) {
            let Some(Reverse(Queued(time, _, event))) = self.queue.pop() else { break };
            self.now = time;
            self.handle(event);
        }
        self.now = self.now.max(until);
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Tick { node, gen } => self.tick(node, gen),
            Event::Gossip { from, from_gen, to, to_gen, view, reply } => {
                if !self.reaches(to, to_gen) {
                    return;
                }
                let now = self.now;
                self.nodes[to].merge(&view, now);
                if !reply {
                    let view = self.nodes[to].snapshot();
                    let gen = self.nodes[to].gen;
                    self.gossip(to, gen, from, from_gen, view, true);
                }
            }
            Event::Push { from, to, to_gen, bytes } => {
                if !self.reaches(to, to_gen) {
                    return;
                }
                let msg = SyncMessage::decode(&bytes).expect("simulated pushes decode");
                let live = self.nodes[to].live_ids();
                let peer = self.nodes[from].id.clone();
                let n = &mut self.nodes[to];
                let (stats, out) = n.repl.on_push(&mut n.state, &peer, msg, &live);
                if stats.changed > 0 {
                    self.state_changed(to);
                }
                for (t, m) in out {
                    let bytes = m.encode().expect("pushes encode");
                    self.push(to, index_of(&t.0), bytes);
                }
            }
            Event::Round { from, from_gen, to, to_gen, bytes } => {
                self.round_message(from, from_gen, to, to_gen, &bytes)
            }
            Event::StartDone { node, gen, replica } => {
                let n = &mut self.nodes[node];
                if !n.up || n.gen != gen {
                    return;
                }
                if let Some(run) = n.runs.get_mut(&replica).filter(|r| r.phase == Phase::Starting) {
                    run.phase = Phase::Running;
                    self.last_ran_on.insert(replica, node);
                }
            }
            Event::StopDone { node, gen, replica } => {
                let n = &mut self.nodes[node];
                if !n.up || n.gen != gen || n.runs.get(&replica).is_none_or(|r| r.phase != Phase::Stopping) {
                    return;
                }
                n.runs.remove(&replica);
                self.copy_gone(&replica);
                // It may be wanted again (a fenced replica whose quorum came back).
                self.reconcile(node);
            }
            Event::Write { node, workloads } => {
                if !self.nodes[node].up {
                    return;
                }
                let n = &mut self.nodes[node];
                let mut entries = Vec::new();
                for w in workloads {
                    let key = w.key.clone();
                    let entry = n.state.put(w, &mut n.clock).expect("simulated workloads are small");
                    entries.push((key, entry));
                }
                self.write_out(node, entries);
            }
            Event::Delete { node, key } => {
                if !self.nodes[node].up {
                    return;
                }
                let n = &mut self.nodes[node];
                if let Some(entry) = n.state.delete(&key, &mut n.clock) {
                    self.write_out(node, vec![(key, entry)]);
                }
            }
            Event::Fault(f) => self.fault(f),
        }
    }

    fn write_out(&mut self, node: usize, entries: Vec<(ObjectKey, protocol::desired::Entry)>) {
        self.state_changed(node);
        let live = self.nodes[node].live_ids();
        let n = &mut self.nodes[node];
        let out = n.repl.on_local_write(&n.state, entries, &live);
        for (t, m) in out {
            let bytes = m.encode().expect("pushes encode");
            self.push(node, index_of(&t.0), bytes);
        }
    }

    fn state_changed(&mut self, node: usize) {
        let n = &mut self.nodes[node];
        let digest = n.state.digest();
        if digest != n.digest {
            n.digest = digest;
            n.plan_dirty = true;
        }
    }

    /// Whether a message for `to` at generation `to_gen` is still wanted there.
    fn reaches(&self, to: usize, to_gen: u64) -> bool {
        self.nodes[to].up && self.nodes[to].gen == to_gen
    }

    fn cut(&self, a: usize, b: usize) -> bool {
        self.side[a] != self.side[b] || !self.nodes[b].up
    }

    fn latency(&mut self) -> u64 {
        self.rng.between(self.net.min_latency_ms, self.net.max_latency_ms)
    }

    fn gossip(
        &mut self,
        from: usize,
        from_gen: u64,
        to: usize,
        to_gen: u64,
        view: Rc<Vec<Seen>>,
        reply: bool,
    ) {
        self.metrics.messages += 1;
        let lost = self.rng.chance(self.loss);
        if lost || self.cut(from, to) {
            return;
        }
        let at = self.now + self.latency();
        self.at(at, Event::Gossip { from, from_gen, to, to_gen, view, reply });
    }

    /// The delay of a packet on a reliable stream: latency plus a retransmission per loss.
    fn stream_delay(&mut self) -> u64 {
        let mut delay = self.latency();
        while self.rng.chance(self.loss.min(0.9)) {
            delay += self.net.rto_ms;
        }
        delay
    }

    fn push(&mut self, from: usize, to: usize, bytes: Vec<u8>) {
        self.metrics.messages += 1;
        if self.cut(from, to) {
            return;
        }
        let at = self.now + self.stream_delay();
        let to_gen = self.nodes[to].gen;
        self.at(at, Event::Push { from, to, to_gen, bytes });
    }

    fn tick(&mut self, i: usize, gen: u64) {
        if !self.reaches(i, gen) {
            return;
        }
        let now = self.now;
        let n = &mut self.nodes[i];
        n.beat();
        if n.refresh_live(now) {
            n.plan_dirty = true;
        }
        // Gossip to random members, live or not (a dead one may be back).
        let view = n.snapshot();
        let count = self.nodes.len();
        for _ in 0..GOSSIP_FANOUT.min(count - 1) {
            let mut to = self.rng.below(count as u64 - 1) as usize;
            if to >= i {
                to += 1;
            }
            let to_gen = self.nodes[to].gen;
            self.gossip(i, gen, to, to_gen, view.clone(), false);
        }
        self.anti_entropy(i);
        let members = self.nodes.len();
        let n = &mut self.nodes[i];
        n.observe_fence(now, members);
        let settled = now >= n.started_at + QUIET_MS;
        let due = n.last_plan_at.is_none_or(|t| now >= t + PLAN_EVERY_MS);
        if settled && n.plan_dirty && due {
            self.plan(i);
        }
        if settled {
            self.reconcile(i);
        }
        self.at(now + TICK_MS, Event::Tick { node: i, gen });
    }

    /// Starts sync rounds with up to two live peers whose digest differs (the Replicator
    /// decides), and abandons rounds whose stream went quiet.
    fn anti_entropy(&mut self, i: usize) {
        let now = self.now;
        let n = &mut self.nodes[i];
        let stale: Vec<usize> = n
            .sessions
            .iter()
            .filter(|(_, s)| now > s.started_at + ROUND_TIMEOUT_MS)
            .map(|(p, _)| *p)
            .collect();
        for p in stale {
            n.sessions.remove(&p);
            n.repl.round_ended(&protocol::desired::NodeId(fleet::node_id(p)), now);
        }
        let differ: Vec<usize> = (0..n.view.len())
            .filter(|&x| x != i && n.live[x] && n.view[x].digest != n.digest && !n.sessions.contains_key(&x))
            .collect();
        for _ in 0..2.min(differ.len()) {
            let peer = differ[self.rng.below(differ.len() as u64) as usize];
            let n = &mut self.nodes[i];
            let peer_id = protocol::desired::NodeId(fleet::node_id(peer));
            if n.sessions.contains_key(&peer)
                || !n.repl.want_round(n.digest, &peer_id, n.view[peer].digest, now)
            {
                continue;
            }
            n.repl.round_started(&peer_id, now);
            let peer_gen = n.view[peer].gen;
            n.sessions.insert(
                peer,
                Session { sync: SyncSession::start(&n.state), peer_gen, started_at: now, next_delivery: 0 },
            );
            self.send_round(i, peer);
        }
    }

    fn send_round(&mut self, from: usize, to: usize) {
        let from_gen = self.nodes[from].gen;
        loop {
            let Some(s) = self.nodes[from].sessions.get_mut(&to) else { return };
            let Some(m) = s.sync.poll_transmit() else { break };
            let bytes = m.encode().expect("sync messages encode");
            let to_gen = s.peer_gen;
            self.metrics.messages += 1;
            if self.cut(from, to) {
                // The stream is cut: nothing more arrives; the round times out.
                continue;
            }
            let delay = self.stream_delay();
            let s = self.nodes[from].sessions.get_mut(&to).expect("checked above");
            let at = (self.now + delay).max(s.next_delivery);
            s.next_delivery = at;
            self.at(at, Event::Round { from, from_gen, to, to_gen, bytes });
        }
        let n = &mut self.nodes[from];
        if n.sessions.get(&to).is_some_and(|s| s.sync.is_done()) {
            n.sessions.remove(&to);
            n.repl.round_ended(&protocol::desired::NodeId(fleet::node_id(to)), self.now);
        }
    }

    fn round_message(&mut self, from: usize, from_gen: u64, to: usize, to_gen: u64, bytes: &[u8]) {
        if !self.reaches(to, to_gen) {
            return;
        }
        let now = self.now;
        let msg = SyncMessage::decode(bytes).expect("simulated round messages decode");
        let peer = protocol::desired::NodeId(fleet::node_id(from));
        let n = &mut self.nodes[to];
        if n.sessions.get(&from).is_some_and(|s| s.peer_gen != from_gen) {
            // The peer restarted: its old stream is gone.
            n.sessions.remove(&from);
            n.repl.round_ended(&peer, now);
        }
        if !n.sessions.contains_key(&from) {
            if !matches!(msg, SyncMessage::Digest { .. }) {
                return;
            }
            n.repl.round_started(&peer, now);
            let sync = SyncSession::start(&n.state);
            n.sessions.insert(from, Session { sync, peer_gen: from_gen, started_at: now, next_delivery: 0 });
        }
        let n = &mut self.nodes[to];
        let s = n.sessions.get_mut(&from).expect("inserted above");
        let result = s.sync.handle_message(&mut n.state, msg);
        self.state_changed(to);
        if result.is_err() {
            let n = &mut self.nodes[to];
            n.sessions.remove(&from);
            n.repl.round_ended(&peer, now);
        } else {
            self.send_round(to, from);
        }
    }

    fn fault(&mut self, f: Fault) {
        if self.trace.is_some() {
            eprintln!("{} fault {f:?}", self.now);
        }
        match f {
            Fault::Crash(i) => {
                let n = &mut self.nodes[i];
                if !n.up {
                    return;
                }
                n.up = false;
                let gone: Vec<String> = std::mem::take(&mut n.runs).into_keys().collect();
                self.metrics.lost += gone.len() as u64;
                for r in gone {
                    self.copy_gone(&r);
                }
            }
            Fault::Restart(i) => {
                if self.nodes[i].up {
                    return;
                }
                let gen = self.nodes[i].gen + 1;
                let seed = self.rng.next();
                self.nodes[i] = Node::new(&self.fleet, i, gen, self.now, seed, self.fencing);
                let first = self.now + self.rng.below(TICK_MS);
                self.at(first, Event::Tick { node: i, gen });
            }
            Fault::Partition(sides) => self.side = sides,
            Fault::Heal => self.side = vec![0; self.nodes.len()],
            Fault::Loss(p) => self.loss = p,
        }
    }
}
