//! The placement loop as first written (commit d1c7d97): straightforward and slow, kept
//! as the executable specification the fast engine is compared with, plan for plan, on
//! random fleets (`equivalence`). Test-only.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use crate::placement::engine::groups::Constraints;
use crate::placement::engine::{canonical_nodes, failed_scheduling};
use crate::placement::filter::{may_keep, prefer_no_schedule, preferred_weight, static_fit, Reason};
use crate::placement::hrw::{key_hash, race, weight};
use crate::placement::{Claim, NodeView, Plan, ReplicaReq, Resources};

/// A node's static result for a set of constraints: a reason it is out, or its scores.
type Static = Result<(u32, Reverse<u64>), Reason>;

/// Like [`place`], with what live nodes say they run. Claims by nodes not in `nodes`, or
/// of replicas not in `replicas`, are ignored. Claimed replicas are kept first, in hash
/// order: on the claimant with the smallest race time among those that may keep it and
/// have room. The rest are placed on the room left. Pure: the same sets of nodes,
/// replicas and claims give the same plan.
pub(crate) fn place_with_claims(nodes: &[NodeView], replicas: &[ReplicaReq], claims: &[Claim]) -> Plan {
    let nodes = canonical_nodes(nodes);
    let node_hashes: Vec<u64> = nodes.iter().map(|n| key_hash(&n.id)).collect();
    let weights: Vec<u64> = nodes.iter().map(|n| weight(n.capacity.cpu_millis)).collect();
    let mut free: Vec<Resources> = nodes.iter().map(|n| n.capacity).collect();
    // Workload -> node index -> replicas of that workload placed there so far.
    let mut placed: BTreeMap<&str, BTreeMap<usize, u32>> = BTreeMap::new();
    let mut plan = Plan::default();
    let mut cache: BTreeMap<Constraints<'_>, Vec<Static>> = BTreeMap::new();
    let ordered = ordered_replicas(replicas);

    // Claimed replicas stay where they run.
    let index: BTreeMap<&str, usize> = nodes.iter().enumerate().map(|(i, n)| (n.id.as_str(), i)).collect();
    let mut claimants: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for c in claims {
        if let Some(&i) = index.get(c.node.as_str()) {
            claimants.entry(c.replica.as_str()).or_default().push(i);
        }
    }
    let mut rest = Vec::with_capacity(ordered.len());
    for (rh, r) in ordered {
        let keeper = claimants.get(r.identity.as_str()).and_then(|on| {
            on.iter()
                .copied()
                .filter(|&i| may_keep(nodes[i], r) && fits(&free[i], &r.requests))
                .min_by_key(|&i| (race(rh, node_hashes[i], weights[i]), i))
        });
        match keeper {
            Some(i) => {
                take(&mut free[i], &r.requests);
                *placed.entry(r.workload.as_str()).or_default().entry(i).or_default() += 1;
                plan.assignments.insert(r.identity.clone(), nodes[i].id.clone());
            }
            None => rest.push((rh, r)),
        }
    }

    for (rh, r) in rest {
        let mut reasons: BTreeMap<Reason, usize> = BTreeMap::new();
        let constraints = (
            &r.node_selector,
            &r.tolerations[..],
            &r.required_affinity[..],
            &r.preferred_affinity[..],
            r.node_name.as_deref(),
        );
        let statics = cache.entry(constraints).or_insert_with(|| {
            let scores = |n: &NodeView| (prefer_no_schedule(n, r), Reverse(preferred_weight(n, r)));
            nodes.iter().map(|n| static_fit(n, r).map(|()| scores(n))).collect()
        });
        let siblings = placed.get(r.workload.as_str());
        let spread = r.topology_spread.as_ref().map(|s| {
            let counts = domain_counts(&nodes, statics, siblings, &s.topology_key);
            let min = counts.values().copied().min().unwrap_or(0);
            (s, counts, min)
        });

        let mut best: Option<(Key, usize)> = None;
        for (i, node) in nodes.iter().enumerate() {
            let (prefer_no_schedule, preferred) = match &statics[i] {
                Ok(scores) => *scores,
                Err(reason) => {
                    *reasons.entry(reason.clone()).or_default() += 1;
                    continue;
                }
            };
            let (cpu_short, mem_short) =
                (free[i].cpu_millis < r.requests.cpu_millis, free[i].memory_bytes < r.requests.memory_bytes);
            if cpu_short || mem_short {
                // Like Kubernetes' NodeResourcesFit, a node counts once per missing resource.
                if cpu_short {
                    *reasons.entry(Reason::InsufficientCpu).or_default() += 1;
                }
                if mem_short {
                    *reasons.entry(Reason::InsufficientMemory).or_default() += 1;
                }
                continue;
            }
            if let Some((s, counts, min)) = &spread {
                let Some(domain) = node.labels.get(&s.topology_key) else {
                    *reasons.entry(Reason::SpreadMissingLabel).or_default() += 1;
                    continue;
                };
                let here = counts.get(domain.as_str()).copied().unwrap_or(0);
                if here + 1 - min > s.max_skew.max(1) {
                    *reasons.entry(Reason::Spread).or_default() += 1;
                    continue;
                }
            }
            let on_node = match siblings {
                Some(s) if r.anti_affinity_by_hostname => s.get(&i).copied().unwrap_or(0),
                _ => 0,
            };
            let key = Key {
                siblings: on_node,
                prefer_no_schedule,
                preferred,
                race: race(rh, node_hashes[i], weights[i]),
            };
            if best.as_ref().is_none_or(|(b, _)| key < *b) {
                best = Some((key, i));
            }
        }

        match best {
            Some((_, i)) => {
                take(&mut free[i], &r.requests);
                *placed.entry(r.workload.as_str()).or_default().entry(i).or_default() += 1;
                plan.assignments.insert(r.identity.clone(), nodes[i].id.clone());
            }
            None => {
                plan.unschedulable.insert(r.identity.clone(), failed_scheduling(nodes.len(), &reasons));
            }
        }
    }
    plan
}

fn fits(free: &Resources, requests: &Resources) -> bool {
    free.cpu_millis >= requests.cpu_millis && free.memory_bytes >= requests.memory_bytes
}

fn take(free: &mut Resources, requests: &Resources) {
    free.cpu_millis -= requests.cpu_millis;
    free.memory_bytes -= requests.memory_bytes;
}

/// How a feasible node ranks for a replica: smaller is better, compared field by field.
/// Ties on all fields fall to the smaller node id (nodes are scanned in id order and only
/// a strictly smaller key replaces the best).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    siblings: u32,
    prefer_no_schedule: u32,
    preferred: Reverse<u64>,
    race: u64,
}

/// Replicas in processing order: by stable hash of the identity (independent of the node
/// set, so a membership change never reorders them), one per identity.
fn ordered_replicas(replicas: &[ReplicaReq]) -> Vec<(u64, &ReplicaReq)> {
    let mut sorted: Vec<&ReplicaReq> = replicas.iter().collect();
    sorted.sort_by(|a, b| a.identity.cmp(&b.identity).then_with(|| a.cmp(b)));
    sorted.dedup_by(|b, a| a.identity == b.identity);
    let mut ordered: Vec<(u64, &ReplicaReq)> =
        sorted.into_iter().map(|r| (key_hash(&r.identity), r)).collect();
    ordered.sort_by(|(ha, a), (hb, b)| ha.cmp(hb).then_with(|| a.identity.cmp(&b.identity)));
    ordered
}

/// Replicas of the workload per topology domain, over the domains of the nodes that pass
/// the static checks and carry the key (Kubernetes' default `nodeAffinityPolicy: Honor`,
/// `nodeTaintsPolicy: Ignore` differs: here tainted nodes do not form domains).
fn domain_counts<'a>(
    nodes: &[&'a NodeView],
    statics: &[Static],
    siblings: Option<&BTreeMap<usize, u32>>,
    key: &str,
) -> BTreeMap<&'a str, u32> {
    let mut counts: BTreeMap<&str, u32> = BTreeMap::new();
    for (i, node) in nodes.iter().enumerate() {
        if statics[i].is_err() {
            continue;
        }
        if let Some(domain) = node.labels.get(key) {
            let here = siblings.and_then(|s| s.get(&i)).copied().unwrap_or(0);
            *counts.entry(domain.as_str()).or_default() += here;
        }
    }
    counts
}
