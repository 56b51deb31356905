//! When the fleet has converged, and what must hold then.

use std::collections::BTreeSet;

use protocol::spec::Object;

use super::node::Phase;
use super::world::World;

/// `Ok` when the fleet is at rest: every live node holds the same desired state, sees
/// exactly the live nodes live and every live node's current claims, has a plan computed
/// from that view and runs exactly its part of it (all started); and every desired replica
/// runs once. Otherwise the first thing that is not yet so.
pub fn converged(w: &mut World) -> Result<(), String> {
    let now = w.now;
    let up: Vec<usize> = (0..w.nodes.len()).filter(|&i| w.nodes[i].up).collect();
    let first = *up.first().ok_or("no node is up")?;
    let digest = w.nodes[first].digest;
    for &i in &up {
        let n = &w.nodes[i];
        if n.digest != digest {
            return Err(format!("{} holds another desired state", n.id));
        }
        for (x, other) in w.nodes.iter().enumerate() {
            if n.sees_live(x, now) != other.up || n.live[x] != other.up {
                return Err(format!("{} sees {} wrongly", n.id, other.id));
            }
            if other.up && x != i {
                let seen = &n.view[x];
                if (seen.gen, seen.claims_ver) != (other.gen, other.published_ver) {
                    return Err(format!("{} has old claims of {}", n.id, other.id));
                }
            }
        }
        if n.published_ver != n.run_ver {
            return Err(format!("{} has not published its claims", n.id));
        }
        if n.plan_dirty {
            return Err(format!("{} has not planned since its view changed", n.id));
        }
        if n.runs.values().any(|r| r.phase != Phase::Running) {
            return Err(format!("{} is starting or stopping replicas", n.id));
        }
        if !n.runs.keys().eq(n.target.keys()) {
            return Err(format!("{} does not run what its plan gives it", n.id));
        }
    }
    // A node does not replan for its own starts and stops (they follow its plan): its
    // plan must still be what its view, own claims included, gives now.
    for &i in &up {
        let plan = w.plan_of(i);
        let n = &w.nodes[i];
        let now_mine = plan.by_node.get(&i).map_or(&[][..], Vec::as_slice);
        if !now_mine.iter().map(|&k| &plan.exp.reqs[k].identity).eq(n.target.keys()) {
            return Err(format!("{}'s plan is stale", n.id));
        }
    }
    let plan = w.plan_of(first);
    if let Some((r, why)) = plan.unschedulable.iter().next() {
        return Err(format!("{} replicas unschedulable, e.g. {r}: {why}", plan.unschedulable.len()));
    }
    let desired: BTreeSet<&str> = plan.exp.reqs.iter().map(|r| r.identity.as_str()).collect();
    for r in &desired {
        match w.copies.get(*r) {
            Some(1) => {}
            copies => return Err(format!("{r} runs {} times", copies.copied().unwrap_or(0))),
        }
    }
    if let Some(r) = w.copies.keys().find(|r| !desired.contains(r.as_str())) {
        return Err(format!("{r} runs but is not desired"));
    }
    Ok(())
}

/// What must hold once converged, checked independently of how `converged` got there:
/// equal live objects on every live node, every desired replica on exactly one live node
/// and running, and no node over capacity.
pub fn assert_at_rest(w: &mut World) {
    let seed = w.seed;
    let up: Vec<usize> = (0..w.nodes.len()).filter(|&i| w.nodes[i].up).collect();
    let reference: Vec<&Object> = w.nodes[up[0]].state.live().collect();
    for &i in &up {
        let objects: Vec<&Object> = w.nodes[i].state.live().collect();
        assert_eq!(objects, reference, "seed {seed}: {} holds other objects", w.nodes[i].id);
    }
    let plan = w.plan_of(up[0]);
    for r in &plan.exp.reqs {
        let on: Vec<&str> = up
            .iter()
            .filter(|&&i| w.nodes[i].runs.get(&r.identity).is_some_and(|run| run.phase == Phase::Running))
            .map(|&i| w.nodes[i].id.0.as_str())
            .collect();
        assert_eq!(on.len(), 1, "seed {seed}: {} runs on {on:?}", r.identity);
    }
    for &i in &up {
        let n = &w.nodes[i];
        let cpu: u64 = n.runs.values().map(|r| r.requests.cpu_millis).sum();
        let mem: u64 = n.runs.values().map(|r| r.requests.memory_bytes).sum();
        assert!(
            cpu <= n.capacity.cpu_millis && mem <= n.capacity.memory_bytes,
            "seed {seed}: {} over capacity",
            n.id
        );
    }
}
