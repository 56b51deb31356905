//! One simulated node: its membership view (heartbeats, digests and claims of every node,
//! as gossip brought them), its copy of the desired state with the real sync machinery,
//! and the agent that runs exactly the replicas its own plan gives it.

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use protocol::desired::{Clock, DesiredState, NodeId};
use protocol::fence::{has_quorum, Fence};
use protocol::placement::{NodeView, Resources};
use protocol::replicate::{ReplicateConfig, Replicator};
use protocol::sync::SyncSession;

use super::plans::Expansion;

/// Gossip interval: every node bumps its heartbeat and gossips this often.
pub const TICK_MS: u64 = 200;
/// Peers a node gossips its view to per tick (chitchat's fanout).
pub const GOSSIP_FANOUT: usize = 3;
/// A peer whose heartbeat has not advanced for this long is dead.
pub const DEAD_AFTER_MS: u64 = 1500;
/// A (re)started node acts on placement only after one failure-detection timeout: before
/// that, a peer missing from its view may be alive.
pub const QUIET_MS: u64 = DEAD_AFTER_MS;
/// A node recomputes its plan at most this often (when its view changed).
pub const PLAN_EVERY_MS: u64 = 500;
pub const START_MS: u64 = 100;
pub const STOP_MS: u64 = 50;
/// A sync round not finished by then is abandoned (its stream was cut).
pub const ROUND_TIMEOUT_MS: u64 = 10_000;

/// What a node publishes about the replicas it runs (starting or running), sorted.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Claims {
    pub all: Vec<String>,
    /// The StatefulSet replicas among them (what the fence watches).
    pub stateful: Vec<String>,
}

/// What a node knows of one node: gossip state versioned by (generation, heartbeat) and
/// (generation, claims version); `heard_at` is local (when the heartbeat last advanced).
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// 0: never heard of. A node's generation grows at each restart.
    pub gen: u64,
    pub hb: u64,
    pub heard_at: u64,
    pub digest: u64,
    pub claims_ver: u64,
    pub claims: Rc<Claims>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Starting,
    Running,
    Stopping,
}

#[derive(Debug, Clone)]
pub struct Run {
    pub phase: Phase,
    pub requests: Resources,
    pub stateful: bool,
}

/// A sync round with one peer over one ordered stream.
pub struct Session {
    pub sync: SyncSession,
    pub peer_gen: u64,
    pub started_at: u64,
    /// Deliveries on the stream keep their order: none before this time.
    pub next_delivery: u64,
}

/// How a node guards StatefulSet replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fencing {
    /// Not at all: the control run, where second copies must show.
    Off,
    /// `protocol::fence` rules 1 and 2 only (`Fence::without_stable_assignment`): (1) run
    /// only with a quorum, (2) start only after a quorum and no other claim of the replica
    /// for the fence delay. The control that shows why rule 3 exists.
    Rules,
    /// `protocol::fence` as the node uses it (`Fence::new`): rules 1 and 2, and (3) start
    /// only once the node's own plan has given it the replica continuously for the fence
    /// delay. Without it a node whose quorum is stale (cut off for less than the detection
    /// time) can start a replica the other side has just started.
    StableAssignment,
}

/// The replicas a node's plan gives it: identity → (requests, stateful).
pub type Target = BTreeMap<String, (Resources, bool)>;

pub struct Node {
    pub idx: usize,
    pub id: NodeId,
    pub capacity: Resources,
    pub up: bool,
    pub gen: u64,
    pub started_at: u64,
    pub hb: u64,
    pub view: Vec<Seen>,
    /// Liveness per node as of the last tick.
    pub live: Vec<bool>,
    pub state: DesiredState,
    pub clock: Clock,
    pub repl: Replicator,
    pub sessions: BTreeMap<usize, Session>,
    pub digest: u64,
    pub runs: BTreeMap<String, Run>,
    /// Bumped whenever the set of starting-or-running replicas changes.
    pub run_ver: u64,
    pub published: Rc<Claims>,
    pub published_ver: u64,
    pub target: Target,
    pub plan_dirty: bool,
    pub last_plan_at: Option<u64>,
    pub fence: Option<Fence>,
    snapshot: Option<Rc<Vec<Seen>>>,
}

impl Node {
    /// A node (re)started at `now` with empty memory, generation `gen`.
    pub fn new(
        fleet: &[NodeView],
        idx: usize,
        gen: u64,
        now: u64,
        seed: u64,
        (fencing, fence_delay_ms): (Fencing, u64),
    ) -> Node {
        let id = NodeId(fleet[idx].id.clone());
        let state = DesiredState::new();
        Node {
            idx,
            capacity: fleet[idx].capacity,
            up: true,
            gen,
            started_at: now,
            hb: 0,
            view: vec![Seen::default(); fleet.len()],
            live: vec![false; fleet.len()],
            digest: state.digest(),
            state,
            clock: Clock::new(id.clone(), seed | 1),
            repl: Replicator::new(id.clone(), ReplicateConfig::default(), seed),
            id,
            sessions: BTreeMap::new(),
            runs: BTreeMap::new(),
            run_ver: 0,
            published: Rc::default(),
            published_ver: 0,
            target: Target::new(),
            plan_dirty: true,
            last_plan_at: None,
            fence: match fencing {
                Fencing::Off => None,
                Fencing::Rules => Some(Fence::without_stable_assignment(fence_delay_ms)),
                Fencing::StableAssignment => Some(Fence::new(fence_delay_ms)),
            },
            snapshot: None,
        }
    }

    /// Whether this node sees `x` as live: itself, or a heartbeat within the timeout.
    pub fn sees_live(&self, x: usize, now: u64) -> bool {
        x == self.idx || (self.view[x].gen > 0 && now.saturating_sub(self.view[x].heard_at) <= DEAD_AFTER_MS)
    }

    /// Recomputes liveness; true when it changed.
    pub fn refresh_live(&mut self, now: u64) -> bool {
        let mut changed = false;
        for x in 0..self.view.len() {
            let live = self.sees_live(x, now);
            changed |= self.live[x] != live;
            self.live[x] = live;
        }
        changed
    }

    pub fn live_ids(&self) -> Vec<NodeId> {
        (0..self.live.len()).filter(|&x| self.live[x]).map(|x| NodeId(super::fleet::node_id(x))).collect()
    }

    /// A new heartbeat, and the claims as they are now.
    pub fn beat(&mut self) {
        self.hb += 1;
        if self.published_ver != self.run_ver {
            self.published = Rc::new(self.claims_now());
            self.published_ver = self.run_ver;
        }
        self.snapshot = None;
    }

    /// The replicas this node starts or runs.
    pub fn claims_now(&self) -> Claims {
        let mut claims = Claims::default();
        for (r, run) in &self.runs {
            if run.phase != Phase::Stopping {
                claims.all.push(r.clone());
                if run.stateful {
                    claims.stateful.push(r.clone());
                }
            }
        }
        claims
    }

    /// This node's view as it gossips it, its own entry current.
    pub fn snapshot(&mut self) -> Rc<Vec<Seen>> {
        if let Some(s) = &self.snapshot {
            return s.clone();
        }
        let mut view = self.view.clone();
        view[self.idx] = Seen {
            gen: self.gen,
            hb: self.hb,
            heard_at: 0,
            digest: self.digest,
            claims_ver: self.published_ver,
            claims: self.published.clone(),
        };
        let view = Rc::new(view);
        self.snapshot = Some(view.clone());
        view
    }

    /// Merges a peer's view: newer heartbeats (with the digest they carry) and newer
    /// claims win. A claims change of a live node makes the plan stale.
    pub fn merge(&mut self, theirs: &[Seen], now: u64) {
        let mut changed = false;
        for (x, s) in theirs.iter().enumerate() {
            if x == self.idx || s.gen == 0 {
                continue;
            }
            let mine = &mut self.view[x];
            if s.gen > mine.gen {
                *mine = Seen { heard_at: now, ..s.clone() };
                changed = true;
                self.plan_dirty |= self.live[x];
                continue;
            }
            if s.gen < mine.gen {
                continue;
            }
            if s.hb > mine.hb {
                mine.hb = s.hb;
                mine.heard_at = now;
                mine.digest = s.digest;
                changed = true;
            }
            if s.claims_ver > mine.claims_ver {
                mine.claims_ver = s.claims_ver;
                mine.claims = s.claims.clone();
                changed = true;
                self.plan_dirty |= self.live[x];
            }
        }
        if changed {
            self.snapshot = None;
        }
    }

    /// Feeds the fence this node's view: quorum over the cluster's members (`members`, as
    /// a node's member list is on disk and survives restarts), and the StatefulSet
    /// replicas other live nodes claim.
    pub fn observe_fence(&mut self, now: u64, members: usize) {
        let live = self.live.iter().filter(|l| **l).count();
        let quorum = has_quorum(live, members);
        let view = &self.view;
        let others = (0..view.len())
            .filter(|&x| x != self.idx && self.live[x])
            .flat_map(|x| view[x].claims.stateful.iter().map(String::as_str));
        if let Some(fence) = &mut self.fence {
            fence.observe(now, quorum, others);
        }
    }

    /// Moves the running set towards the target: stops what the plan no longer gives this
    /// node (and StatefulSet replicas without quorum: fencing), starts what it gives when
    /// the node has room next to everything it still runs or stops, and, for StatefulSet
    /// replicas, when the fence allows. Returns (started, stopped).
    pub fn reconcile(&mut self, now: u64) -> (Vec<String>, Vec<String>) {
        let may_run = self.fence.as_ref().is_none_or(Fence::may_run);
        let fence = self.fence.as_ref();
        let mut stopped = Vec::new();
        for (r, run) in &mut self.runs {
            let keep = self.target.contains_key(r) && (may_run || !run.stateful);
            if run.phase != Phase::Stopping && !keep {
                run.phase = Phase::Stopping;
                stopped.push(r.clone());
            }
        }
        let mut used = Resources::default();
        for run in self.runs.values() {
            used.cpu_millis += run.requests.cpu_millis;
            used.memory_bytes += run.requests.memory_bytes;
        }
        let mut started = Vec::new();
        for (r, &(requests, stateful)) in &self.target {
            let fenced = stateful && !(may_run && fence.is_none_or(|f| f.may_start(now, r)));
            if self.runs.contains_key(r) || fenced {
                continue;
            }
            let after = Resources {
                cpu_millis: used.cpu_millis + requests.cpu_millis,
                memory_bytes: used.memory_bytes + requests.memory_bytes,
            };
            if after.cpu_millis > self.capacity.cpu_millis || after.memory_bytes > self.capacity.memory_bytes
            {
                continue;
            }
            used = after;
            self.runs.insert(r.clone(), Run { phase: Phase::Starting, requests, stateful });
            started.push(r.clone());
        }
        if !started.is_empty() || !stopped.is_empty() {
            self.run_ver += 1;
        }
        (started, stopped)
    }

    /// Takes a new plan's assignments to this node.
    pub fn set_target(&mut self, exp: &Expansion, mine: &[usize], now: u64) {
        self.target = mine
            .iter()
            .map(|&k| {
                let r = &exp.reqs[k];
                (r.identity.clone(), (r.requests, super::fleet::is_stateful(r)))
            })
            .collect();
        if let Some(fence) = &mut self.fence {
            let stateful = self.target.iter().filter(|(_, (_, s))| *s).map(|(r, _)| r.as_str());
            fence.assigned(now, stateful);
        }
        self.plan_dirty = false;
        self.last_plan_at = Some(now);
    }

    /// The identities this node starts or runs (what its claims will say).
    pub fn active(&self) -> BTreeSet<&str> {
        self.runs.iter().filter(|(_, r)| r.phase != Phase::Stopping).map(|(r, _)| r.as_str()).collect()
    }
}
