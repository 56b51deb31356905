//! This node's share of the cluster's pods.
//!
//! Every node expands the same desired state into all pods (`reconcile::desired_pods`),
//! builds the same placement inputs from its live view (nodes with their gossiped
//! capacity, labels, taints and cordon; every live node's claims), runs the pure
//! `protocol::placement::place_with_claims`, and keeps the pods assigned to itself. On
//! top: StatefulSet ordinals start in order and pass `protocol::fence`; a starting node
//! waits for its first view of the cluster before it decides anything.

use std::collections::{BTreeMap, BTreeSet};

use protocol::fence::Fence;
use protocol::placement::{self, Claim, NodeView, ReplicaReq, Resources, Taint, TaintEffect};
use protocol::spec::{Kind, ObjectKey};

use crate::cluster::claims::{ClaimState, Claims};
use crate::cluster::NodeInfo;
use crate::reconcile::{self, pod_key, ContainerState, DesiredPod, ObservedPod};

/// How long a starting node that knows of peers waits to hear from one before it places
/// pods on its own view (it may be cut off, or the only one up).
pub const SETTLE_MS: u64 = 3_000;

/// One live node as this node sees it, with what it claims.
pub struct LiveNode<'a> {
    pub id: &'a str,
    pub info: &'a NodeInfo,
    pub claims: &'a Claims,
}

/// The outcome for this node.
#[derive(Debug, Default)]
pub struct Share {
    /// The pods this node should run now.
    pub mine: Vec<DesiredPod>,
    /// StatefulSet pods this node must stop at once (no quorum).
    pub fenced: BTreeSet<String>,
    /// When to decide again at the latest (a fence delay ending).
    pub wake_at_ms: Option<u64>,
}

pub struct Placement {
    fence: Fence,
    /// Until then, a node that knows of peers and has not heard from one decides nothing.
    settle_until_ms: Option<u64>,
    /// Pod key → why it fits nowhere, from the last plan.
    pub unschedulable: BTreeMap<String, String>,
    /// Every pod of the last plan (pod key →), for `peer get`.
    pub planned: BTreeMap<String, Planned>,
}

/// A pod of the last plan.
#[derive(Debug, Clone)]
pub struct Planned {
    pub workload: protocol::spec::ObjectKey,
    pub revision: String,
    /// Its node; `None` when it fits nowhere.
    pub node: Option<String>,
}

impl Placement {
    pub fn new(now_ms: u64, has_known_peers: bool) -> Placement {
        Placement {
            fence: Fence::new(protocol::fence::DEFAULT_FENCE_DELAY_MS),
            settle_until_ms: has_known_peers.then_some(now_ms + SETTLE_MS),
            unschedulable: BTreeMap::new(),
            planned: BTreeMap::new(),
        }
    }

    /// Whether this node still waits for its first view of the cluster; when it does,
    /// the time to stop waiting.
    pub fn settling(&mut self, now_ms: u64, peers_seen: bool) -> Option<u64> {
        if peers_seen || self.settle_until_ms.is_some_and(|t| now_ms >= t) {
            self.settle_until_ms = None;
        }
        self.settle_until_ms
    }

    /// Whether this node still waits for its first complete view.
    pub fn is_settling(&self) -> bool {
        self.settle_until_ms.is_some()
    }

    /// Decides this node's share. `nodes` are the live nodes, this one included.
    pub fn decide(
        &mut self,
        me: &str,
        all: &[DesiredPod],
        nodes: &[LiveNode<'_>],
        quorum: bool,
        now_ms: u64,
    ) -> Share {
        let claims = || nodes.iter().flat_map(|n| n.claims.iter());
        let ready: BTreeSet<&str> = claims().filter(|(_, c)| c.is_ready()).map(|(p, _)| p.as_str()).collect();
        let claimed: BTreeSet<&str> = claims().map(|(p, _)| p.as_str()).collect();
        let pods: Vec<&DesiredPod> = all.iter().filter(|d| ordered_ready(d, all, &ready, &claimed)).collect();
        let reqs: Vec<ReplicaReq> = pods.iter().map(|d| replica_req(d)).collect();
        let wanted: BTreeSet<&str> = reqs.iter().map(|r| r.identity.as_str()).collect();
        let (mut running_claims, mut pending_claims) = (Vec::new(), Vec::new());
        for n in nodes {
            for (p, c) in n.claims.iter().filter(|(p, _)| wanted.contains(p.as_str())) {
                let claim = Claim { node: n.id.to_owned(), replica: p.clone() };
                if c.running {
                    running_claims.push((claim, c.since_ms));
                } else {
                    pending_claims.push(claim);
                }
            }
        }
        let views: Vec<NodeView> = nodes.iter().map(|n| node_view(n.id, n.info)).collect();
        let plan = placement::place_with_phased_claims(&views, &reqs, &running_claims, &pending_claims);

        let stateful = |d: &DesiredPod| d.workload.kind == Kind::StatefulSet;
        let others_stateful = nodes
            .iter()
            .filter(|n| n.id != me)
            .flat_map(|n| n.claims.keys())
            .filter(|p| pods.iter().any(|d| stateful(d) && pod_key(&d.namespace, &d.name) == **p));
        self.fence.observe(now_ms, quorum, others_stateful.map(String::as_str));
        let mine_stateful = pods
            .iter()
            .filter(|d| stateful(d))
            .map(|d| pod_key(&d.namespace, &d.name))
            .filter(|k| plan.assignments.get(k).map(String::as_str) == Some(me));
        let mine_stateful: Vec<String> = mine_stateful.collect();
        self.fence.assigned(now_ms, mine_stateful.iter().map(String::as_str));
        let held = nodes.iter().find(|n| n.id == me).map(|n| n.claims);

        let mut share = Share::default();
        for d in &pods {
            let key = pod_key(&d.namespace, &d.name);
            if plan.assignments.get(&key).map(String::as_str) != Some(me) {
                continue;
            }
            if stateful(d) {
                let holds = held.is_some_and(|c| c.contains_key(&key));
                let ok = if holds { self.fence.may_run() } else { self.fence.may_start(now_ms, &key) };
                if !ok {
                    if holds {
                        share.fenced.insert(key);
                    } else if let Some(t) = self.fence.next_change_ms(now_ms) {
                        share.wake_at_ms = Some(share.wake_at_ms.map_or(t, |w| w.min(t)));
                    }
                    continue;
                }
            }
            share.mine.push((*d).clone());
        }
        if !self.fence.may_run() {
            if let Some(held) = held {
                share.fenced.extend(
                    held.keys()
                        .filter(|k| pods.iter().any(|d| stateful(d) && pod_key(&d.namespace, &d.name) == **k))
                        .cloned(),
                );
            }
        }
        // A DaemonSet pod for a node it does not match is not wanted, not unschedulable.
        let daemon =
            |key: &str| pods.iter().any(|d| d.node_name.is_some() && pod_key(&d.namespace, &d.name) == key);
        self.unschedulable = plan
            .unschedulable
            .into_iter()
            .filter(|(k, why)| !daemon(k) || why.contains("Insufficient"))
            .collect();
        self.planned = pods
            .iter()
            .filter(|d| {
                d.node_name.is_none() || plan.assignments.contains_key(&pod_key(&d.namespace, &d.name))
            })
            .map(|d| {
                let key = pod_key(&d.namespace, &d.name);
                let node = plan.assignments.get(&key).cloned();
                (key, Planned { workload: d.workload.clone(), revision: d.revision.clone(), node })
            })
            .collect();
        share
    }
}

/// An `OrderedReady` StatefulSet's ordinal `i` is created only once `0..i` are Running and
/// Ready somewhere; as in Kubernetes, one that exists (is claimed) is kept even when a
/// lower ordinal fails later: ordering holds back creation, it never removes a pod.
fn ordered_ready(
    d: &DesiredPod,
    all: &[DesiredPod],
    ready: &BTreeSet<&str>,
    claimed: &BTreeSet<&str>,
) -> bool {
    if !d.ordered || d.ordinal == 0 || claimed.contains(pod_key(&d.namespace, &d.name).as_str()) {
        return true;
    }
    all.iter()
        .filter(|o| o.workload == d.workload && o.ordinal < d.ordinal)
        .all(|o| ready.contains(pod_key(&o.namespace, &o.name).as_str()))
}

/// This node's claims: its pods that are not being deleted. A pod whose containers do
/// not run is not claimed while a live peer claims a running copy, nor while this node
/// has not yet seen its peers' claims (`settling`): a node back from a crash does not
/// take a replica back from the node that replaced it.
pub fn my_claims(
    pods: &BTreeMap<String, ObservedPod>,
    peers_running: &BTreeSet<&str>,
    settling: bool,
    now_ms: u64,
    min_ready_seconds: &dyn Fn(&ObjectKey) -> u32,
) -> Claims {
    pods.iter()
        .filter(|(_, p)| !p.deleting)
        .filter_map(|(k, p)| {
            let running = reconcile::pod_phase(p) == "Running";
            // Running since the latest (re)start of one of its containers.
            let since_ms = p
                .containers
                .values()
                .filter_map(|c| match c.state {
                    ContainerState::Running { started_at_ms, .. } => Some(started_at_ms),
                    _ => None,
                })
                .max()
                .unwrap_or(0);
            let claim = ClaimState {
                running,
                revision: p.revision.clone(),
                since_ms: if running { since_ms } else { 0 },
                status: crate::status::pod_status(p, now_ms),
                ready: {
                    let (ready, all) = crate::status::ready_counts(p);
                    (ready as u32, all as u32)
                },
                restarts: p.containers.values().map(|c| c.restart_count).sum(),
                ip: p.ip,
                available: false,
            };
            let min_ready_ms = u64::from(min_ready_seconds(&p.workload)) * 1000;
            let claim = ClaimState {
                available: claim.is_ready()
                    && p.ready_since_ms.is_some_and(|t| now_ms.saturating_sub(t) >= min_ready_ms),
                ..claim
            };
            let claim_pending = !settling && !peers_running.contains(k.as_str());
            (running || claim_pending).then(|| (k.clone(), claim))
        })
        .collect()
}

pub fn replica_req(d: &DesiredPod) -> ReplicaReq {
    d.template.replica_req(d.workload.to_string(), pod_key(&d.namespace, &d.name), d.node_name.clone())
}

/// A node as placement sees it. Like Kubernetes, the node's name is also its
/// `kubernetes.io/hostname` label.
pub fn node_view(id: &str, info: &NodeInfo) -> NodeView {
    let mut labels = info.labels.clone();
    labels.entry("kubernetes.io/hostname".to_owned()).or_insert_with(|| id.to_owned());
    NodeView {
        id: id.to_owned(),
        labels,
        taints: info.taints.iter().filter_map(|t| parse_taint(t)).collect(),
        capacity: Resources { cpu_millis: info.cpu_millis, memory_bytes: info.memory_bytes },
        cordoned: info.cordoned,
    }
}

/// `key=value:Effect` or `key:Effect` (checked when set, see `nodecfg::check_taint`).
pub fn parse_taint(t: &str) -> Option<Taint> {
    let (kv, effect) = t.rsplit_once(':')?;
    let effect = match effect {
        "NoSchedule" => TaintEffect::NoSchedule,
        "PreferNoSchedule" => TaintEffect::PreferNoSchedule,
        "NoExecute" => TaintEffect::NoExecute,
        _ => return None,
    };
    let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
    Some(Taint { key: key.to_owned(), value: value.to_owned(), effect })
}

/// `NoExecute` taints on this node that a pod tolerates only for `tolerationSeconds`: the
/// pod leaves once that long has passed since the taint appeared (Kubernetes' taint
/// manager). Removes such pods from `mine` and returns the pods evicted and the next
/// deadline still ahead. `taints` are this node's taints with when it first saw each.
pub fn evict_for_taints(
    mine: &mut Vec<DesiredPod>,
    taints: &[(Taint, u64)],
    now_ms: u64,
) -> (Vec<String>, Option<u64>) {
    let mut evicted = Vec::new();
    let mut next: Option<u64> = None;
    mine.retain(|d| {
        let tolerations = &d.template.scheduling.tolerations;
        for (taint, since) in taints.iter().filter(|(t, _)| t.effect == TaintEffect::NoExecute) {
            let matching = tolerations.iter().filter(|t| placement::tolerates(t, taint));
            // The longest bound applies; any unbounded toleration means "stay".
            let bound = matching.map(|t| t.toleration_seconds).max_by_key(|s| s.map_or(u64::MAX, |s| s));
            let Some(Some(seconds)) = bound else { continue };
            let deadline = since.saturating_add(seconds.saturating_mul(1000));
            if now_ms >= deadline {
                evicted.push(pod_key(&d.namespace, &d.name));
                return false;
            }
            next = Some(next.map_or(deadline, |n| n.min(deadline)));
        }
        true
    });
    (evicted, next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::placement::{Toleration, TolerationOperator};
    use protocol::spec::ObjectKey;

    fn pod(name: &str, seconds: Option<u64>) -> DesiredPod {
        let mut template: protocol::spec::PodTemplate = serde_json::from_value(serde_json::json!({
            "labels": {}, "containers": [], "restart_policy": "Always",
            "termination_grace_period_seconds": 1, "host_network": false
        }))
        .expect("a template");
        template.scheduling.tolerations = vec![Toleration {
            key: "maintenance".into(),
            operator: TolerationOperator::Exists,
            value: String::new(),
            effect: Some(TaintEffect::NoExecute),
            toleration_seconds: seconds,
        }];
        DesiredPod {
            namespace: "default".into(),
            name: name.into(),
            workload: ObjectKey { kind: Kind::Pod, namespace: "default".into(), name: name.into() },
            revision: "r".into(),
            template,
            ordinal: 0,
            node_name: None,
            ordered: false,
            create: true,
        }
    }

    #[test]
    fn toleration_seconds_bound_the_stay_after_a_no_execute_taint() {
        let taint = Taint { key: "maintenance".into(), value: String::new(), effect: TaintEffect::NoExecute };
        let mut mine = vec![pod("bounded", Some(60)), pod("forever", None)];
        let (evicted, next) = evict_for_taints(&mut mine, &[(taint.clone(), 1_000)], 30_000);
        assert!(evicted.is_empty());
        assert_eq!(next, Some(61_000));
        let (evicted, next) = evict_for_taints(&mut mine, &[(taint, 1_000)], 61_000);
        assert_eq!(evicted, vec!["default/bounded".to_owned()]);
        assert_eq!(next, None);
        assert_eq!(mine.len(), 1);
        assert_eq!(mine[0].name, "forever");
    }
}
