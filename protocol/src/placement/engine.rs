//! The placement loop: replicas in stable-hash order, each on its best feasible node,
//! with capacity, anti-affinity and topology-spread bookkeeping.
//!
//! Every node recomputes the whole plan on each membership change, so the loop is built for
//! 1,000 nodes × 10,000 replicas: what does not depend on earlier replicas is computed once
//! (per node: hash and weight; per distinct constraints: the statically feasible nodes,
//! their scores, the static reasons and topology domains, see `groups`); the inner loop
//! works on indices into `Vec`s and allocates nothing; a node's race time costs a division
//! only when it beats the best so far (`hrw::race_below`); and the reasons a replica fits
//! nowhere are counted only for such a replica. `reference` keeps the first, plain version
//! of this loop; a test checks both give the same plans.

#[cfg(test)]
mod equivalence;
mod groups;
#[cfg(test)]
mod reference;

use std::cmp::{Ordering, Reverse};
use std::collections::BTreeMap;

use self::groups::{Candidate, Group, Groups, NO_DOMAIN};
use super::filter::{may_keep, Reason};
use super::hrw::{key_hash, race_below, race_rotated, rotated, weight};
use super::{Claim, NodeView, Plan, ReplicaReq, Resources};

/// Places `replicas` on `nodes` (the live ones). Pure and deterministic: the same sets of
/// nodes and replicas give the same plan, in any input order. Nodes with the same id, or
/// replicas with the same identity, are placed once (the smallest by `Ord` wins).
pub fn place(nodes: &[NodeView], replicas: &[ReplicaReq]) -> Plan {
    place_with_claims(nodes, replicas, &[])
}

/// Like [`place`], with what live nodes say they run. Claims by nodes not in `nodes`, or
/// of replicas not in `replicas`, are ignored. Claimed replicas are kept first, in hash
/// order: on the claimant with the smallest race time among those that may keep it and
/// have room. The rest are placed on the room left. Pure: the same sets of nodes,
/// replicas and claims give the same plan.
pub fn place_with_claims(nodes: &[NodeView], replicas: &[ReplicaReq], claims: &[Claim]) -> Plan {
    place_with_phased_claims(nodes, replicas, &[], claims)
}

/// Like [`place_with_claims`], with claims of copies that run (`running`, each with when
/// it started running, in the claimant's milliseconds) and of copies that are still
/// starting (`pending`). Among a replica's claimants a running copy is kept before a
/// pending one, the longest-running first, then the smallest race time decides: a node
/// that comes back and restarts its old copies does not take a replica back from the node
/// whose copy already runs. The start times only break ties between copies, so clocks
/// that disagree cost at most an extra move, never a second copy: every node reads the
/// same claims and so keeps the same copy.
pub fn place_with_phased_claims(
    nodes: &[NodeView],
    replicas: &[ReplicaReq],
    running: &[(Claim, u64)],
    pending: &[Claim],
) -> Plan {
    let nodes = canonical_nodes(nodes);
    let mut state: Vec<NodeState> = nodes
        .iter()
        .map(|n| NodeState {
            free: n.capacity,
            rotated: rotated(key_hash(&n.id)),
            weight: weight(n.capacity.cpu_millis),
        })
        .collect();
    let ordered = ordered_replicas(replicas);
    let claims = live_claims(&nodes, running, pending);
    let mut assigned: Vec<(&ReplicaReq, usize)> = Vec::with_capacity(ordered.len());

    // Claimed replicas stay where they run. Claims are sorted like `ordered`, so one pass
    // over both finds each replica's claimants.
    let mut rest = Vec::new();
    let mut next_claim = 0;
    for &(rh, r) in &ordered {
        let me = (rh, r.identity.as_str());
        while claims.get(next_claim).is_some_and(|c| (c.0, c.1) < me) {
            next_claim += 1;
        }
        let first = next_claim;
        while claims.get(next_claim).is_some_and(|c| (c.0, c.1) == me) {
            next_claim += 1;
        }
        let keeper = claims[first..next_claim]
            .iter()
            .map(|&(_, _, phase, i)| (phase, i))
            .filter(|&(_, i)| may_keep(nodes[i], r) && fits(&state[i].free, &r.requests))
            .min_by_key(|&(phase, i)| (phase, race_rotated(rh, state[i].rotated, state[i].weight), i))
            .map(|(_, i)| i);
        match keeper {
            Some(i) => {
                take(&mut state[i].free, &r.requests);
                assigned.push((r, i));
            }
            None => rest.push((rh, r)),
        }
    }

    let mut unschedulable = Vec::new();
    if !rest.is_empty() {
        let (mut placer, workload_of) = Placer::new(&nodes, state, &rest, &assigned);
        for ((rh, r), w) in rest.into_iter().zip(workload_of) {
            match placer.place(rh, r, w) {
                Ok(i) => assigned.push((r, i)),
                Err(why) => unschedulable.push((r.identity.clone(), why)),
            }
        }
    }
    // Sorted first, small and by reference: the maps are then built from one sorted run.
    assigned.sort_unstable_by(|(a, _), (b, _)| a.identity.cmp(&b.identity));
    unschedulable.sort_unstable();
    Plan {
        assignments: assigned.into_iter().map(|(r, i)| (r.identity.clone(), nodes[i].id.clone())).collect(),
        unschedulable: unschedulable.into_iter().collect(),
    }
}

/// A node's placement bookkeeping.
#[derive(Debug, Clone, Copy)]
struct NodeState {
    /// Capacity not yet taken by replicas placed so far.
    free: Resources,
    /// The hash of the node id, as the race mixes it in.
    rotated: u64,
    weight: u64,
}

/// Places unclaimed replicas one at a time, in the order given, on the room claims left.
struct Placer<'n, 'r> {
    nodes: &'n [&'r NodeView],
    state: Vec<NodeState>,
    groups: Groups<'r>,
    /// Per workload, the node of each replica placed so far (one entry per replica).
    siblings: Vec<Vec<usize>>,
    /// Per workload, the group of its last replica (the next one's likely group).
    group_of: Vec<Option<usize>>,
    /// Per node, the replicas of the current workload there; zero between replicas.
    on_node: Vec<u32>,
    /// Per topology domain, the replicas of the current workload there.
    per_domain: Vec<u32>,
    /// Per topology domain, whether the current replica may go there.
    allowed: Vec<bool>,
}

impl<'n, 'r> Placer<'n, 'r> {
    /// The placer, and the index of each unclaimed replica's workload. Only the workloads
    /// of unclaimed replicas get sibling counts: no other workload's are ever read.
    fn new(
        nodes: &'n [&'r NodeView],
        state: Vec<NodeState>,
        rest: &[(u64, &'r ReplicaReq)],
        assigned: &[(&'r ReplicaReq, usize)],
    ) -> (Self, Vec<usize>) {
        // Workloads by (hash, name): lookups compare hashes, rarely strings.
        let key = |r: &'r ReplicaReq| (key_hash(&r.workload), r.workload.as_str());
        let mut workloads: Vec<(u64, &str)> = rest.iter().map(|&(_, r)| key(r)).collect();
        workloads.sort_unstable();
        workloads.dedup();
        let index = |r: &'r ReplicaReq| workloads.binary_search(&key(r)).ok();
        let workload_of =
            rest.iter().map(|&(_, r)| index(r).expect("every unclaimed workload is listed")).collect();
        let mut siblings = vec![Vec::new(); workloads.len()];
        for &(r, i) in assigned {
            if let Some(w) = index(r) {
                siblings[w].push(i);
            }
        }
        let placer = Placer {
            nodes,
            on_node: vec![0; nodes.len()],
            state,
            groups: Groups::default(),
            group_of: vec![None; siblings.len()],
            siblings,
            per_domain: Vec::new(),
            allowed: Vec::new(),
        };
        (placer, workload_of)
    }

    /// The node for `r` of workload `w` (its room taken), or why it fits nowhere.
    fn place(&mut self, rh: u64, r: &'r ReplicaReq, w: usize) -> Result<usize, String> {
        let at = self.groups.index_of(self.nodes, r, self.group_of[w]);
        self.group_of[w] = Some(at);
        let group = self.groups.get_mut(at);
        let spread_at = r
            .topology_spread
            .as_ref()
            .map(|s| (group.domains_of(self.nodes, &s.topology_key), s.max_skew.max(1)));
        let group: &Group<'r> = group;
        // Topology spread: the workload's replicas per domain, and the domains one more may
        // go to (within `max_skew` of the least loaded one).
        let spread = match spread_at {
            Some((at, max_skew)) => {
                let domains = group.domains(at);
                self.per_domain.clear();
                self.per_domain.resize(domains.count, 0);
                for &i in &self.siblings[w] {
                    if let Some(n) = self.per_domain.get_mut(domains.of_node[i]) {
                        *n += 1;
                    }
                }
                let min = self.per_domain.iter().copied().min().unwrap_or(0);
                self.allowed.clear();
                self.allowed.extend(self.per_domain.iter().map(|&here| here + 1 - min <= max_skew));
                Some(Spread { of_node: &domains.of_node, allowed: &self.allowed })
            }
            None => None,
        };
        let anti = r.anti_affinity_by_hostname;
        if anti {
            for &i in &self.siblings[w] {
                self.on_node[i] += 1;
            }
        }

        // The best node is the smallest by (siblings if anti-affine, PreferNoSchedule
        // taints, -preferred weight, race time), ties to the smaller index. When the
        // group's scores are uniform, a node without siblings ranks first whatever its race,
        // so the race among those decides and the full ranking is needed only when none fits.
        let (state, on_node) = (&self.state[..], &self.on_node[..]);
        let mut best = None;
        if group.uniform {
            best = match (anti, &spread) {
                (false, None) => race_winner(state, &group.candidates, rh, &r.requests, |_| true),
                _ => race_winner(state, &group.candidates, rh, &r.requests, |i| {
                    (!anti || on_node[i] == 0) && spread.as_ref().is_none_or(|s| s.allows(i))
                }),
            };
        }
        if best.is_none() && (anti || !group.uniform) {
            best = ranked_winner(state, on_node, group, rh, r, spread.as_ref());
        }

        if anti {
            for &i in &self.siblings[w] {
                self.on_node[i] = 0;
            }
        }
        match best {
            Some(i) => {
                take(&mut self.state[i].free, &r.requests);
                self.siblings[w].push(i);
                Ok(i)
            }
            None => Err(why_not(&self.state, group, spread.as_ref(), &r.requests)),
        }
    }
}

/// The candidate with room and `eligible` with the smallest race time (ties to the smaller
/// index). Each node's race is asked for below a bound: the best race so far, or 0 for a
/// node that cannot take the replica (a bound, not a branch: which nodes are full is
/// unpredictable). This loop runs about once per (replica, node): keep it lean.
fn race_winner(
    state: &[NodeState],
    candidates: &[Candidate],
    rh: u64,
    requests: &Resources,
    eligible: impl Fn(usize) -> bool,
) -> Option<usize> {
    let (mut best_race, mut best) = (u64::MAX, None);
    for c in candidates {
        let free = &state[c.node].free;
        let bound = if fits(free, requests) & eligible(c.node) { best_race } else { 0 };
        if let Some(t) = race_below(rh, c.rotated, c.weight, bound) {
            (best_race, best) = (t, Some(c.node));
        }
    }
    best
}

/// The candidate with room (and allowed by the spread) with the smallest (siblings if
/// anti-affine, PreferNoSchedule taints, -preferred weight, race time); ties to the smaller
/// index, as only a strictly better node replaces the best.
fn ranked_winner(
    state: &[NodeState],
    on_node: &[u32],
    group: &Group<'_>,
    rh: u64,
    r: &ReplicaReq,
    spread: Option<&Spread<'_>>,
) -> Option<usize> {
    let mut best: Option<(Rank, u64, usize)> = None;
    for c in &group.candidates {
        let i = c.node;
        if !fits(&state[i].free, &r.requests) || spread.is_some_and(|s| !s.allows(i)) {
            continue;
        }
        let rank = (
            if r.anti_affinity_by_hostname { on_node[i] } else { 0 },
            c.prefer_no_schedule,
            Reverse(c.preferred),
        );
        // A better rank wins whatever its race (every race is below u64::MAX); a tie needs
        // a smaller race; a worse rank cannot win.
        let bound = match &best {
            Some((best_rank, best_race, _)) => match rank.cmp(best_rank) {
                Ordering::Less => u64::MAX,
                Ordering::Equal => *best_race,
                Ordering::Greater => continue,
            },
            None => u64::MAX,
        };
        if let Some(t) = race_below(rh, c.rotated, c.weight, bound) {
            best = Some((rank, t, i));
        }
    }
    best.map(|(_, _, i)| i)
}

/// (siblings on the node, untolerated PreferNoSchedule taints, preferred-affinity weight):
/// how a node ranks before the race; smaller is better.
type Rank = (u32, u32, Reverse<u64>);

/// The FailedScheduling message of a replica that fits nowhere: the group's static
/// reasons plus, per statically feasible node, the first dynamic check it fails.
fn why_not(
    state: &[NodeState],
    group: &Group<'_>,
    spread: Option<&Spread<'_>>,
    requests: &Resources,
) -> String {
    let mut reasons = group.static_reasons.clone();
    let mut count = |reason| *reasons.entry(reason).or_insert(0) += 1;
    for c in &group.candidates {
        let free = &state[c.node].free;
        let (cpu_short, mem_short) =
            (free.cpu_millis < requests.cpu_millis, free.memory_bytes < requests.memory_bytes);
        if cpu_short || mem_short {
            // Like Kubernetes' NodeResourcesFit, a node counts once per missing resource.
            if cpu_short {
                count(Reason::InsufficientCpu);
            }
            if mem_short {
                count(Reason::InsufficientMemory);
            }
        } else if let Some(s) = spread {
            if s.of_node[c.node] == NO_DOMAIN {
                count(Reason::SpreadMissingLabel);
            } else if !s.allows(c.node) {
                count(Reason::Spread);
            }
        }
    }
    failed_scheduling(state.len(), &reasons)
}

/// Topology spread (DoNotSchedule) for the replica being placed.
struct Spread<'a> {
    /// Node → domain, or `NO_DOMAIN`.
    of_node: &'a [usize],
    /// Per domain: one more replica there keeps the skew within `max_skew`.
    allowed: &'a [bool],
}

impl Spread<'_> {
    /// Whether a statically feasible node carries the key and its domain may take one more.
    fn allows(&self, node: usize) -> bool {
        self.allowed.get(self.of_node[node]).copied().unwrap_or(false)
    }
}

fn fits(free: &Resources, requests: &Resources) -> bool {
    free.cpu_millis >= requests.cpu_millis && free.memory_bytes >= requests.memory_bytes
}

fn take(free: &mut Resources, requests: &Resources) {
    free.cpu_millis -= requests.cpu_millis;
    free.memory_bytes -= requests.memory_bytes;
}

/// Nodes sorted by id, one per id.
pub(super) fn canonical_nodes(nodes: &[NodeView]) -> Vec<&NodeView> {
    let mut sorted: Vec<&NodeView> = nodes.iter().collect();
    sorted.sort();
    sorted.dedup_by(|b, a| a.id == b.id);
    sorted
}

/// Replicas in processing order: by stable hash of the identity (independent of the node
/// set, so a membership change never reorders them), then identity; one per identity, the
/// smallest by `Ord`.
fn ordered_replicas(replicas: &[ReplicaReq]) -> Vec<(u64, &ReplicaReq)> {
    let mut ordered: Vec<(u64, &ReplicaReq)> = replicas.iter().map(|r| (key_hash(&r.identity), r)).collect();
    ordered.sort_unstable_by(|(ha, a), (hb, b)| {
        ha.cmp(hb).then_with(|| a.identity.cmp(&b.identity)).then_with(|| a.cmp(b))
    });
    ordered.dedup_by(|(_, b), (_, a)| a.identity == b.identity);
    ordered
}

/// Claims by live nodes as (replica hash, replica, seniority: the running copy's start time
/// or `u64::MAX` for a pending one, node index), sorted like `ordered_replicas`.
fn live_claims<'c>(
    nodes: &[&NodeView],
    running: &'c [(Claim, u64)],
    pending: &'c [Claim],
) -> Vec<(u64, &'c str, u64, usize)> {
    let phased = running.iter().map(|(c, since)| (*since, c)).chain(pending.iter().map(|c| (u64::MAX, c)));
    let mut live: Vec<(u64, &str, u64, usize)> = phased
        .filter_map(|(phase, c)| {
            let i = nodes.binary_search_by(|n| n.id.as_str().cmp(&c.node)).ok()?;
            Some((key_hash(&c.replica), c.replica.as_str(), phase, i))
        })
        .collect();
    live.sort_unstable();
    live.dedup();
    live
}

/// `0/5 nodes are available: 2 Insufficient memory, 3 node(s) didn't match ...`: the
/// counted reasons as `"<count> <reason>"`, sorted as strings like Kubernetes' FitError.
pub(super) fn failed_scheduling(total: usize, reasons: &BTreeMap<Reason, usize>) -> String {
    if total == 0 {
        return "0/0 nodes are available: no live nodes".to_owned();
    }
    let mut parts: Vec<String> = reasons.iter().map(|(reason, n)| format!("{n} {reason}")).collect();
    parts.sort();
    format!("0/{total} nodes are available: {}", parts.join(", "))
}
