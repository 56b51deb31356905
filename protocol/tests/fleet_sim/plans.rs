//! Plans: every node computes its own with the real placement from its own view; nodes
//! whose views are equal share one computation (placement is pure), which is what makes a
//! 1,000-node fleet affordable.

use std::collections::BTreeMap;
use std::rc::Rc;

use protocol::placement::{place_with_claims, Claim, NodeView, ReplicaReq};

use super::fleet::{self, index_of};
use super::node::{Phase, Run, Seen};
use super::world::World;

/// The replicas of one desired state, in identity order (shared by every node holding
/// that state).
pub struct Expansion {
    pub reqs: Vec<ReplicaReq>,
}

/// A computed plan: per node index, its replicas (indices into the expansion).
pub struct PlanInfo {
    pub exp: Rc<Expansion>,
    pub by_node: BTreeMap<usize, Vec<usize>>,
    pub unschedulable: BTreeMap<String, String>,
}

/// Everything a plan depends on: the desired state's digest and, per live node, the
/// version of its claims (a node's own claims are its current running set).
pub type PlanKey = (u64, Vec<(usize, u64, u64)>);

impl World {
    /// Starts the fleet at rest (after `preload`): every node runs its part of the plan of
    /// all nodes and knows every node's heartbeat and claims, as in a cluster that has
    /// been up for a while.
    pub fn start_at_rest(&mut self) {
        let exp = self.expansion(0);
        let plan = protocol::placement::place(&self.fleet, &exp.reqs);
        for r in &exp.reqs {
            let Some(node) = plan.assignments.get(&r.identity) else { continue };
            let i = index_of(node);
            let run = Run { phase: Phase::Running, requests: r.requests, stateful: fleet::is_stateful(r) };
            self.nodes[i].runs.insert(r.identity.clone(), run);
            self.nodes[i].target.insert(r.identity.clone(), (r.requests, fleet::is_stateful(r)));
            *self.copies.entry(r.identity.clone()).or_insert(0) += 1;
            self.last_ran_on.insert(r.identity.clone(), i);
        }
        let mut seen = Vec::with_capacity(self.nodes.len());
        for n in &mut self.nodes {
            n.run_ver = 1;
            n.beat();
            seen.push(Seen {
                gen: n.gen,
                hb: n.hb,
                heard_at: 0,
                digest: n.digest,
                claims_ver: n.published_ver,
                claims: n.published.clone(),
            });
        }
        for n in &mut self.nodes {
            n.view = seen.clone();
            n.refresh_live(0);
        }
    }

    /// The replicas of a node's desired state (computed once per distinct state).
    pub(crate) fn expansion(&mut self, i: usize) -> Rc<Expansion> {
        let n = &self.nodes[i];
        self.expansions
            .entry(n.digest)
            .or_insert_with(|| Rc::new(Expansion { reqs: fleet::replicas(&n.state) }))
            .clone()
    }

    /// Everything node `i`'s plan depends on, as it sees it now.
    fn plan_key(&self, i: usize) -> (PlanKey, Vec<usize>) {
        let n = &self.nodes[i];
        let live: Vec<usize> = (0..n.live.len()).filter(|&x| n.live[x]).collect();
        let versions = live
            .iter()
            .map(|&x| if x == i { (x, n.gen, n.run_ver) } else { (x, n.view[x].gen, n.view[x].claims_ver) })
            .collect();
        ((n.digest, versions), live)
    }

    /// The plan node `i` computes from its own view with the real placement. Nodes with
    /// the same view share the computation (placement is pure).
    pub fn plan_of(&mut self, i: usize) -> Rc<PlanInfo> {
        let (key, live) = self.plan_key(i);
        if let Some(info) = self.plans.get(&key) {
            self.metrics.plans_reused += 1;
            return info.clone();
        }
        self.metrics.plans_computed += 1;
        let exp = self.expansion(i);
        let info = Rc::new(self.compute_plan(i, &live, exp));
        self.plans.insert(key.clone(), info.clone());
        self.plan_order.push_back(key);
        if self.plan_order.len() > 64 {
            let old = self.plan_order.pop_front().expect("not empty");
            self.plans.remove(&old);
        }
        info
    }

    /// Node `i` takes its part of its plan.
    pub(crate) fn plan(&mut self, i: usize) {
        let info = self.plan_of(i);
        let mine = info.by_node.get(&i).map_or(&[][..], Vec::as_slice);
        let now = self.now;
        self.nodes[i].set_target(&info.exp, mine, now);
    }

    fn compute_plan(&self, i: usize, live: &[usize], exp: Rc<Expansion>) -> PlanInfo {
        let n = &self.nodes[i];
        let views: Vec<NodeView> = live.iter().map(|&x| self.fleet[x].clone()).collect();
        let own = n.claims_now();
        let mut claims = Vec::new();
        for &x in live {
            let list = if x == i { &own.all } else { &n.view[x].claims.all };
            let node = &self.fleet[x].id;
            claims.extend(list.iter().map(|r| Claim { node: node.clone(), replica: r.clone() }));
        }
        let plan = place_with_claims(&views, &exp.reqs, &claims);
        // Both are in identity order: walk them together.
        let mut by_node: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        let mut load = vec![protocol::placement::Resources::default(); self.fleet.len()];
        let mut k = 0;
        for (r, node) in &plan.assignments {
            while exp.reqs[k].identity != *r {
                k += 1;
            }
            let x = index_of(node);
            by_node.entry(x).or_default().push(k);
            load[x].cpu_millis += exp.reqs[k].requests.cpu_millis;
            load[x].memory_bytes += exp.reqs[k].requests.memory_bytes;
        }
        // Placement's own promise, checked on every plan any node computes.
        for (x, load) in load.iter().enumerate() {
            let cap = self.fleet[x].capacity;
            assert!(
                load.cpu_millis <= cap.cpu_millis && load.memory_bytes <= cap.memory_bytes,
                "seed {}: a plan puts more than its capacity on {}",
                self.seed,
                self.fleet[x].id
            );
        }
        PlanInfo { exp, by_node, unschedulable: plan.unschedulable }
    }
}
