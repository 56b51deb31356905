//! Per-node checks that do not depend on other replicas: cordon, taints and tolerations,
//! node selector and node affinity; and the scores they contribute.
//!
//! Semantics follow Kubernetes' `NodeUnschedulable`, `TaintToleration` and `NodeAffinity`
//! filter plugins, and their reasons are worded like them.

use std::collections::BTreeMap;

use super::{
    NodeSelectorRequirement, NodeSelectorTerm, NodeView, ReplicaReq, SelectorOperator, Taint, TaintEffect,
    Toleration, TolerationOperator,
};

/// Why a node cannot take a replica, as counted in the FailedScheduling message.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Reason {
    NodeName,
    Cordoned,
    Taint { key: String, value: String },
    Affinity,
    InsufficientCpu,
    InsufficientMemory,
    SpreadMissingLabel,
    Spread,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::NodeName => f.write_str("node(s) didn't match the requested node name"),
            Reason::Cordoned => f.write_str("node(s) were unschedulable"),
            Reason::Taint { key, value } => write!(f, "node(s) had untolerated taint {{{key}: {value}}}"),
            Reason::Affinity => f.write_str("node(s) didn't match Pod's node affinity/selector"),
            Reason::InsufficientCpu => f.write_str("Insufficient cpu"),
            Reason::InsufficientMemory => f.write_str("Insufficient memory"),
            Reason::SpreadMissingLabel => {
                f.write_str("node(s) didn't match pod topology spread constraints (missing required label)")
            }
            Reason::Spread => f.write_str("node(s) didn't match pod topology spread constraints"),
        }
    }
}

/// The checks that depend only on the node and the replica, in Kubernetes' plugin order;
/// the first failing one is the node's reason.
///
/// A `NoExecute` taint tolerated only for `tolerationSeconds` keeps new replicas away: the
/// toleration bounds how long a replica already there may stay, not where new ones go.
pub(crate) fn static_fit(node: &NodeView, r: &ReplicaReq) -> Result<(), Reason> {
    if r.node_name.as_ref().is_some_and(|n| *n != node.id) {
        return Err(Reason::NodeName);
    }
    if node.cordoned && r.node_name.is_none() {
        return Err(Reason::Cordoned);
    }
    let keeps_away = |t: &&Taint| match t.effect {
        TaintEffect::PreferNoSchedule => false,
        TaintEffect::NoSchedule => !tolerated(t, &r.tolerations),
        TaintEffect::NoExecute => !tolerated_unbounded(t, &r.tolerations),
    };
    if let Some(t) = node.taints.iter().find(keeps_away) {
        return Err(Reason::Taint { key: t.key.clone(), value: t.value.clone() });
    }
    let selector_ok = r.node_selector.iter().all(|(k, v)| node.labels.get(k) == Some(v));
    let affinity_ok =
        r.required_affinity.is_empty() || r.required_affinity.iter().any(|t| term_matches(t, &node.labels));
    if !(selector_ok && affinity_ok) {
        return Err(Reason::Affinity);
    }
    Ok(())
}

/// Untolerated `PreferNoSchedule` taints: fewer is better.
pub(crate) fn prefer_no_schedule(node: &NodeView, r: &ReplicaReq) -> u32 {
    let n = node
        .taints
        .iter()
        .filter(|t| t.effect == TaintEffect::PreferNoSchedule && !tolerated(t, &r.tolerations))
        .count();
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Sum of the weights of the preferred affinity terms the node matches: more is better.
pub(crate) fn preferred_weight(node: &NodeView, r: &ReplicaReq) -> u64 {
    r.preferred_affinity
        .iter()
        .filter(|p| term_matches(&p.preference, &node.labels))
        .map(|p| u64::from(p.weight))
        .sum()
}

/// Whether a replica already on `node` may stay: no `NoExecute` taint it does not tolerate
/// (placement constraints are otherwise `IgnoredDuringExecution`, as in Kubernetes). A
/// toleration's `tolerationSeconds` is enforced by the node that runs the replica.
pub(crate) fn may_keep(node: &NodeView, r: &ReplicaReq) -> bool {
    if r.node_name.as_ref().is_some_and(|n| *n != node.id) {
        return false;
    }
    node.taints.iter().all(|t| t.effect != TaintEffect::NoExecute || tolerated(t, &r.tolerations))
}

fn tolerated_unbounded(taint: &Taint, tolerations: &[Toleration]) -> bool {
    tolerations.iter().any(|t| t.toleration_seconds.is_none() && tolerates(t, taint))
}

fn tolerated(taint: &Taint, tolerations: &[Toleration]) -> bool {
    tolerations.iter().any(|t| tolerates(t, taint))
}

/// Kubernetes' `Toleration.ToleratesTaint`.
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if t.effect.is_some_and(|e| e != taint.effect) {
        return false;
    }
    if t.key.is_empty() {
        return t.operator == TolerationOperator::Exists;
    }
    t.key == taint.key
        && match t.operator {
            TolerationOperator::Exists => true,
            TolerationOperator::Equal => t.value == taint.value,
        }
}

/// A term matches when all its requirements hold; an empty term matches nothing.
fn term_matches(term: &NodeSelectorTerm, labels: &BTreeMap<String, String>) -> bool {
    !term.match_expressions.is_empty()
        && term.match_expressions.iter().all(|req| requirement_holds(req, labels))
}

fn requirement_holds(req: &NodeSelectorRequirement, labels: &BTreeMap<String, String>) -> bool {
    let value = labels.get(&req.key);
    match req.operator {
        SelectorOperator::In => value.is_some_and(|v| req.values.contains(v)),
        SelectorOperator::NotIn => value.is_none_or(|v| !req.values.contains(v)),
        SelectorOperator::Exists => value.is_some(),
        SelectorOperator::DoesNotExist => value.is_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::PreferredTerm;

    fn node(labels: &[(&str, &str)], taints: Vec<Taint>) -> NodeView {
        NodeView {
            id: "n".into(),
            labels: labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            taints,
            ..NodeView::default()
        }
    }

    fn taint(key: &str, value: &str, effect: TaintEffect) -> Taint {
        Taint { key: key.into(), value: value.into(), effect }
    }

    fn req(key: &str, operator: SelectorOperator, values: &[&str]) -> NodeSelectorRequirement {
        NodeSelectorRequirement {
            key: key.into(),
            operator,
            values: values.iter().map(|v| (*v).to_owned()).collect(),
        }
    }

    #[test]
    fn tolerations_follow_kubernetes() {
        let t = taint("gpu", "yes", TaintEffect::NoSchedule);
        let tol = |key: &str, op, value: &str, effect| Toleration {
            key: key.into(),
            operator: op,
            value: value.into(),
            effect,
            toleration_seconds: None,
        };
        use TolerationOperator::{Equal, Exists};
        assert!(tolerated(&t, &[tol("gpu", Equal, "yes", None)]));
        assert!(!tolerated(&t, &[tol("gpu", Equal, "no", None)]));
        assert!(tolerated(&t, &[tol("gpu", Exists, "", Some(TaintEffect::NoSchedule))]));
        assert!(!tolerated(&t, &[tol("gpu", Exists, "", Some(TaintEffect::NoExecute))]));
        assert!(tolerated(&t, &[tol("", Exists, "", None)]), "empty key with Exists tolerates all");
        assert!(!tolerated(&t, &[tol("", Equal, "", None)]));
        assert!(!tolerated(&t, &[]));
    }

    #[test]
    fn static_fit_reasons_in_plugin_order() {
        let mut r = ReplicaReq::default();
        let mut n = node(&[("zone", "a")], vec![taint("k", "v", TaintEffect::NoExecute)]);
        n.cordoned = true;
        assert_eq!(static_fit(&n, &r), Err(Reason::Cordoned));
        n.cordoned = false;
        assert_eq!(static_fit(&n, &r), Err(Reason::Taint { key: "k".into(), value: "v".into() }));
        n.taints[0].effect = TaintEffect::PreferNoSchedule;
        assert_eq!(static_fit(&n, &r), Ok(()));
        assert_eq!(prefer_no_schedule(&n, &r), 1);
        r.node_selector.insert("zone".into(), "b".into());
        assert_eq!(static_fit(&n, &r), Err(Reason::Affinity));
    }

    #[test]
    fn affinity_terms_or_requirements_and() {
        let labels = node(&[("zone", "a"), ("disk", "ssd")], vec![]).labels;
        use SelectorOperator::*;
        let term = |reqs: Vec<NodeSelectorRequirement>| NodeSelectorTerm { match_expressions: reqs };
        assert!(term_matches(&term(vec![req("zone", In, &["a", "b"]), req("disk", Exists, &[])]), &labels));
        assert!(!term_matches(&term(vec![req("zone", In, &["a"]), req("gpu", Exists, &[])]), &labels));
        assert!(term_matches(
            &term(vec![req("zone", NotIn, &["b"]), req("gpu", DoesNotExist, &[])]),
            &labels
        ));
        assert!(
            term_matches(&term(vec![req("gpu", NotIn, &["x"])]), &labels),
            "NotIn holds without the label"
        );
        assert!(!term_matches(&term(vec![]), &labels), "an empty term matches nothing");

        let n = node(&[("zone", "a")], vec![]);
        let r = ReplicaReq {
            required_affinity: vec![term(vec![req("zone", In, &["b"])]), term(vec![req("zone", In, &["a"])])],
            preferred_affinity: vec![
                PreferredTerm { weight: 5, preference: term(vec![req("zone", In, &["a"])]) },
                PreferredTerm { weight: 7, preference: term(vec![req("zone", Exists, &[])]) },
                PreferredTerm { weight: 100, preference: term(vec![req("zone", In, &["b"])]) },
            ],
            ..ReplicaReq::default()
        };
        assert_eq!(static_fit(&n, &r), Ok(()), "required terms are ORed");
        assert_eq!(preferred_weight(&n, &r), 12);
    }
}
