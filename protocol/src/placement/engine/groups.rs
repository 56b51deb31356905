//! What placement knows about a set of per-node constraints before it places anything:
//! the statically feasible nodes with their scores, the reasons the others are out, and
//! the topology domains among the feasible ones. Replicas of a workload usually share one
//! set of constraints, so this is computed once per distinct set, not once per replica.

use std::collections::BTreeMap;

use crate::placement::filter::{prefer_no_schedule, preferred_weight, static_fit, Reason};
use crate::placement::hrw::{key_hash, rotated, weight};
use crate::placement::{NodeSelectorTerm, NodeView, PreferredTerm, ReplicaReq, Toleration};

/// The per-node constraints of a replica, the key of a [`Group`].
pub(super) type Constraints<'a> = (
    &'a BTreeMap<String, String>,
    &'a [Toleration],
    &'a [NodeSelectorTerm],
    &'a [PreferredTerm],
    Option<&'a str>,
);

fn constraints(r: &ReplicaReq) -> Constraints<'_> {
    (
        &r.node_selector,
        &r.tolerations[..],
        &r.required_affinity[..],
        &r.preferred_affinity[..],
        r.node_name.as_deref(),
    )
}

/// A node that passes the static checks, with the scores they give it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Candidate {
    /// Index into the canonical node list.
    pub(super) node: usize,
    /// The node's hash and weight as the race takes them (`hrw::rotated`, `hrw::weight`),
    /// here rather than in a per-node table: the race loop reads candidates in order.
    pub(super) rotated: u64,
    pub(super) weight: u64,
    /// Untolerated `PreferNoSchedule` taints: fewer is better.
    pub(super) prefer_no_schedule: u32,
    /// Matched preferred-affinity weight: more is better.
    pub(super) preferred: u64,
}

/// Marks a node outside every topology domain in [`Domains::of_node`].
pub(super) const NO_DOMAIN: usize = usize::MAX;

/// The topology domains of one key over the statically feasible nodes.
#[derive(Debug)]
pub(super) struct Domains {
    /// Node index → domain index, or [`NO_DOMAIN`] when the node fails the static checks
    /// or lacks the label.
    pub(super) of_node: Vec<usize>,
    pub(super) count: usize,
}

/// One distinct set of constraints.
#[derive(Debug)]
pub(super) struct Group<'a> {
    /// Statically feasible nodes in node-index order (the order ties are broken in).
    pub(super) candidates: Vec<Candidate>,
    /// Whether every candidate has the same scores (then only the race ranks them).
    pub(super) uniform: bool,
    /// How many nodes each static check kept out.
    pub(super) static_reasons: BTreeMap<Reason, usize>,
    /// Topology domains per topology key, computed on first use.
    domains: Vec<(&'a str, Domains)>,
}

impl<'a> Group<'a> {
    fn new(nodes: &[&NodeView], r: &ReplicaReq) -> Group<'a> {
        let mut candidates = vec![];
        let mut static_reasons = BTreeMap::new();
        // Only the named node can pass (`static_fit` checks the name first): skip the other
        // checks on every other node, as a DaemonSet has a group per node.
        let named =
            r.node_name.as_deref().map(|name| nodes.binary_search_by(|n| n.id.as_str().cmp(name)).ok());
        if let Some(named) = named {
            let others = nodes.len() - usize::from(named.is_some());
            if others > 0 {
                static_reasons.insert(Reason::NodeName, others);
            }
        }
        let mut check = |i: usize, n: &NodeView| match static_fit(n, r) {
            Ok(()) => candidates.push(Candidate {
                node: i,
                rotated: rotated(key_hash(&n.id)),
                weight: weight(n.capacity.cpu_millis),
                prefer_no_schedule: prefer_no_schedule(n, r),
                preferred: preferred_weight(n, r),
            }),
            Err(reason) => *static_reasons.entry(reason).or_insert(0) += 1,
        };
        match named {
            Some(Some(i)) => check(i, nodes[i]),
            Some(None) => {}
            None => nodes.iter().enumerate().for_each(|(i, n)| check(i, n)),
        }
        let uniform = candidates
            .windows(2)
            .all(|w| (w[0].prefer_no_schedule, w[0].preferred) == (w[1].prefer_no_schedule, w[1].preferred));
        Group { candidates, uniform, static_reasons, domains: vec![] }
    }

    /// The index of the domains of `key` in this group, computing them on first use.
    pub(super) fn domains_of(&mut self, nodes: &[&'a NodeView], key: &'a str) -> usize {
        if let Some(at) = self.domains.iter().position(|(k, _)| *k == key) {
            return at;
        }
        let mut of_node = vec![NO_DOMAIN; nodes.len()];
        let mut values: BTreeMap<&str, usize> = BTreeMap::new();
        for c in &self.candidates {
            if let Some(value) = nodes[c.node].labels.get(key) {
                let next = values.len();
                of_node[c.node] = *values.entry(value.as_str()).or_insert(next);
            }
        }
        self.domains.push((key, Domains { of_node, count: values.len() }));
        self.domains.len() - 1
    }

    pub(super) fn domains(&self, at: usize) -> &Domains {
        &self.domains[at].1
    }
}

/// The groups met so far, by constraints.
#[derive(Debug, Default)]
pub(super) struct Groups<'a> {
    index: BTreeMap<Constraints<'a>, usize>,
    groups: Vec<(Constraints<'a>, Group<'a>)>,
}

impl<'a> Groups<'a> {
    /// The index of the group of `r`'s constraints, computed on first use. `hint` is a
    /// group that likely matches (a sibling's): checking it is one comparison.
    pub(super) fn index_of(
        &mut self,
        nodes: &[&'a NodeView],
        r: &'a ReplicaReq,
        hint: Option<usize>,
    ) -> usize {
        let key = constraints(r);
        if let Some(at) = hint.filter(|&at| self.groups[at].0 == key) {
            return at;
        }
        let next = self.groups.len();
        let at = *self.index.entry(key).or_insert(next);
        if at == next {
            self.groups.push((key, Group::new(nodes, r)));
        }
        at
    }

    pub(super) fn get_mut(&mut self, at: usize) -> &mut Group<'a> {
        &mut self.groups[at].1
    }
}
