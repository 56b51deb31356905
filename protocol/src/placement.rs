//! Leaderless placement: a pure function from (live nodes, replicas to place) to the node
//! each replica runs on, which every node computes on its own and gets the same answer.
//!
//! Architecture invariant: no I/O, no clock, no randomness, no `HashMap` order. The plan
//! depends only on the *sets* of nodes and replicas, never on their order in the input.
//!
//! How a replica picks its node (see `engine`):
//! 1. Replicas are processed one at a time in the order of a stable hash of their identity,
//!    so the order does not depend on which nodes are live.
//! 2. Nodes that are cordoned, carry an untolerated `NoSchedule`/`NoExecute` taint, or fail
//!    the node selector or required node affinity are out (`filter`). So are nodes without
//!    room left for the replica's requests, and nodes whose topology domain would exceed
//!    `max_skew`.
//! 3. Among the rest the replica takes the best by, in order: fewest replicas of the same
//!    workload already there (when `anti_affinity_by_hostname`), fewest untolerated
//!    `PreferNoSchedule` taints, highest preferred-affinity weight, then the weighted
//!    rendezvous (HRW) rank of (replica identity, node id) (`hrw`).
//!
//! Claims come first (`place_with_claims`): a replica a live node already runs stays there
//! while that node still may keep it (no untolerated `NoExecute` taint, room for its
//! requests in claim order). When several live nodes claim one replica, the claimant with
//! the smallest HRW race time keeps it and the others stop their copies: every node
//! applies the same rule to the same claims, so duplicates end once claims have spread.
//! Only unclaimed replicas are placed by the steps above, on the room claims left.
//!
//! Cascade limits (what we accept): when every replica's best node has room, a node's
//! death moves only that node's replicas and its return restores the plan exactly. When
//! nodes are full, a moved replica can take room a later replica (in hash order) had, and
//! that replica moves too; with anti-affinity or topology spread, a moved replica changes
//! its workload's counts, so siblings of the same workload may move. Both chains start
//! only at a replica that had to move.

mod engine;
mod filter;
pub(crate) mod hrw;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use engine::{place, place_with_claims, place_with_phased_claims};
pub use filter::tolerates;

/// CPU and memory, as a node's capacity or a replica's requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Resources {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

/// What a taint keeps away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TaintEffect {
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
}

/// A node taint, as `key=value:Effect`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Taint {
    pub key: String,
    pub value: String,
    pub effect: TaintEffect,
}

/// One live node as placement sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeView {
    pub id: String,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    pub capacity: Resources,
    pub cordoned: bool,
}

/// Kubernetes' toleration operator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TolerationOperator {
    #[default]
    Equal,
    Exists,
}

/// A toleration. An empty `key` with `Exists` tolerates every taint; `effect: None`
/// matches every effect. `toleration_seconds` only bounds how long a replica may stay
/// on a node after a `NoExecute` taint appears; placement itself ignores it (the
/// eviction timer belongs to reconcile, which has a clock).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Toleration {
    pub key: String,
    pub operator: TolerationOperator,
    pub value: String,
    pub effect: Option<TaintEffect>,
    pub toleration_seconds: Option<u64>,
}

/// Operator of a node selector requirement (`Gt`/`Lt` are not supported).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum SelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// One `matchExpressions` entry on node labels.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeSelectorRequirement {
    pub key: String,
    pub operator: SelectorOperator,
    pub values: Vec<String>,
}

/// A node selector term: all its requirements must hold (an empty term matches nothing,
/// as in Kubernetes).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeSelectorTerm {
    pub match_expressions: Vec<NodeSelectorRequirement>,
}

/// A preferred node affinity term with its weight (1–100 in Kubernetes).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PreferredTerm {
    pub weight: u32,
    pub preference: NodeSelectorTerm,
}

/// `topologySpreadConstraints` with `whenUnsatisfiable: DoNotSchedule` over the replicas
/// of the same workload.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TopologySpread {
    pub topology_key: String,
    /// At least 1; 0 is read as 1.
    pub max_skew: u32,
}

/// One replica to place. `identity` must be stable across membership changes (e.g. the
/// pod name `D-rev-i`), never a position in a list.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ReplicaReq {
    /// The workload this replica belongs to (e.g. `ObjectKey` as a string); anti-affinity
    /// and topology spread count replicas with the same workload.
    pub workload: String,
    pub identity: String,
    pub requests: Resources,
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<Toleration>,
    /// `requiredDuringSchedulingIgnoredDuringExecution`: terms are ORed; empty means none.
    pub required_affinity: Vec<NodeSelectorTerm>,
    /// `preferredDuringSchedulingIgnoredDuringExecution`.
    pub preferred_affinity: Vec<PreferredTerm>,
    /// Spread replicas of the workload one per node when possible (soft).
    pub anti_affinity_by_hostname: bool,
    pub topology_spread: Option<TopologySpread>,
    /// Only this node may run the replica (a DaemonSet's pod for that node). Cordon does
    /// not keep it away, as Kubernetes' DaemonSet controller ignores `unschedulable`.
    pub node_name: Option<String>,
}

/// A node's statement that it runs (or is starting) a replica, from its gossip state.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Claim {
    pub node: String,
    pub replica: String,
}

/// The outcome of `place`: every distinct replica identity is in exactly one map.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Replica identity → node id.
    pub assignments: BTreeMap<String, String>,
    /// Replica identity → why it fits nowhere, worded like Kubernetes' FailedScheduling.
    pub unschedulable: BTreeMap<String, String>,
}

impl Plan {
    /// The replicas this node should run, in identity order.
    pub fn replicas_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.assignments.iter().filter(move |(_, n)| n.as_str() == node).map(|(r, _)| r.as_str())
    }

    /// The requests placed on each node (nodes without replicas are absent).
    pub fn load(&self, replicas: &[ReplicaReq]) -> BTreeMap<String, Resources> {
        let mut load: BTreeMap<String, Resources> = BTreeMap::new();
        let by_id: BTreeMap<&str, &ReplicaReq> = replicas.iter().map(|r| (r.identity.as_str(), r)).collect();
        for (id, node) in &self.assignments {
            if let Some(r) = by_id.get(id.as_str()) {
                let l = load.entry(node.clone()).or_default();
                l.cpu_millis = l.cpu_millis.saturating_add(r.requests.cpu_millis);
                l.memory_bytes = l.memory_bytes.saturating_add(r.requests.memory_bytes);
            }
        }
        load
    }
}
