//! The ledger of what runs where: every start and stop goes through it, and so do the
//! invariants that must hold at every instant (capacity, one StatefulSet copy, nothing
//! outside the node's plan) and the measures (duplicates, moves).

use super::node::{START_MS, STOP_MS};
use super::world::{Event, World};

/// What the run measured.
#[derive(Debug, Default, Clone)]
pub struct Metrics {
    /// Sum over time of extra copies of Deployment replicas (copies beyond the first).
    pub duplicate_ms: u64,
    /// Starts of a replica that last ran on another node (counted after `count_from`).
    pub moves: u64,
    /// Copies that died with their node (crashes happen after `count_from`).
    pub lost: u64,
    pub starts: u64,
    pub plans_computed: u64,
    pub plans_reused: u64,
    /// Messages sent: gossip, pushes and sync-round messages.
    pub messages: u64,
}

impl World {
    /// Node `i` moves what it runs towards its plan (`Node::reconcile`); the starts and
    /// stops go on the ledger and the clock.
    pub(crate) fn reconcile(&mut self, i: usize) {
        let now = self.now;
        let (started, stopped) = self.nodes[i].reconcile(now);
        let gen = self.nodes[i].gen;
        if let Some(t) = &self.trace {
            let n = &self.nodes[i];
            let quorum = n.fence.as_ref().map(protocol::fence::Fence::may_run);
            let live = n.live.iter().filter(|l| **l).count();
            for r in started.iter().filter(|r| r.contains(t.as_str())) {
                eprintln!(
                    "{now} {} (side {}, {live} live, quorum {quorum:?}) starts {r}",
                    n.id, self.side[i]
                );
            }
            for r in stopped.iter().filter(|r| r.contains(t.as_str())) {
                eprintln!("{now} {} (side {}, {live} live, quorum {quorum:?}) stops {r}", n.id, self.side[i]);
            }
        }
        for r in stopped {
            self.at(now + STOP_MS, Event::StopDone { node: i, gen, replica: r });
        }
        for r in started {
            self.copy_started(i, &r);
            self.at(now + START_MS, Event::StartDone { node: i, gen, replica: r });
        }
        // What a node starts or runs is what its own plan gives it (stops are immediate).
        let n = &self.nodes[i];
        for r in n.active() {
            assert!(n.target.contains_key(r), "seed {}: {} runs {r} outside its plan", self.seed, n.id);
        }
    }

    /// Adds the extra copies' time since the last change (only from `count_from` on).
    fn account(&mut self) {
        let from = self.excess_since.max(self.count_from);
        if self.now > from {
            self.metrics.duplicate_ms += self.excess * (self.now - from);
        }
        self.excess_since = self.now;
    }

    /// A copy of `r` starts on `node`: the checks of every instant happen here.
    fn copy_started(&mut self, node: usize, r: &str) {
        self.account();
        let stateful = self.nodes[node].runs[r].stateful;
        let copies = self.copies.entry(r.to_owned()).or_insert(0);
        *copies += 1;
        if stateful {
            let copies = *copies;
            if copies > 1 {
                self.stateful_overlaps += 1;
                assert!(
                    !self.strict,
                    "seed {}: StatefulSet replica {r} starts on {} while another copy runs (t = {} ms): {}",
                    self.seed,
                    self.nodes[node].id,
                    self.now,
                    self.describe(node, r)
                );
            }
            self.stateful.insert(r.to_owned());
        } else if *copies > 1 {
            self.excess += 1;
        }
        self.metrics.starts += 1;
        if self.now >= self.count_from && self.last_ran_on.get(r).is_some_and(|&on| on != node) {
            self.metrics.moves += 1;
        }
        // Everything a node starts, runs or stops fits its capacity, at every instant.
        let n = &self.nodes[node];
        let (cpu, mem) = n
            .runs
            .values()
            .fold((0, 0), |(c, m), run| (c + run.requests.cpu_millis, m + run.requests.memory_bytes));
        assert!(
            cpu <= n.capacity.cpu_millis && mem <= n.capacity.memory_bytes,
            "seed {}: {} runs {cpu} m CPU and {mem} bytes, over its capacity {:?}",
            self.seed,
            n.id,
            n.capacity
        );
    }

    /// A copy of `r` stopped, or died with its node.
    pub(crate) fn copy_gone(&mut self, r: &str) {
        self.account();
        let copies = self.copies.get_mut(r).expect("a stopping replica was counted");
        if *copies > 1 && !self.stateful.contains(r) {
            self.excess -= 1;
        }
        *copies -= 1;
        if *copies == 0 {
            self.copies.remove(r);
        }
    }

    /// Who else runs `r`, and how `node` sees them: for failure messages.
    fn describe(&self, node: usize, r: &str) -> String {
        let me = &self.nodes[node];
        let mut out = format!("{} (side {}, up since {} ms)", me.id, self.side[node], me.started_at);
        for (x, other) in self.nodes.iter().enumerate() {
            if x == node || !other.up {
                continue;
            }
            if let Some(run) = other.runs.get(r) {
                let seen = &me.view[x];
                out += &format!(
                    "; {} has it {:?} (side {}, gen {}), seen by {} at gen {} heard {} ms ago, claims {:?}",
                    other.id,
                    run.phase,
                    self.side[x],
                    other.gen,
                    me.id,
                    seen.gen,
                    self.now.saturating_sub(seen.heard_at),
                    seen.claims.stateful
                );
            }
        }
        out
    }

    /// Closes the duplicate accounting at the current time.
    pub fn settle_metrics(&mut self) {
        self.account();
    }
}
