//! A pod spec's placement fields to peer's `Scheduling`: `nodeSelector`, `tolerations`,
//! node affinity, pod anti-affinity on the node name, and `topologySpreadConstraints`.
//!
//! Values Kubernetes would reject are errors here too. What peer cannot express in
//! `protocol::placement` terms (numeric `Gt`/`Lt`, `matchFields`, pod affinity other than
//! spreading a workload's own replicas over nodes) is an error when ignoring it would
//! place pods where the user forbade them, and a warning otherwise.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    self as core, NodeAffinity, PodAffinityTerm, PodAntiAffinity, PodSpec, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use protocol::placement::{
    NodeSelectorRequirement, NodeSelectorTerm, PreferredTerm, SelectorOperator, TaintEffect, Toleration,
    TolerationOperator, TopologySpread,
};
use protocol::spec::Scheduling;

use super::diagnostic::{index, FieldError, Note};

/// The only `topologyKey` peer's pod anti-affinity understands: one domain per node.
const HOSTNAME: &str = "kubernetes.io/hostname";

const OPERATORS: &str = "expected In, NotIn, Exists or DoesNotExist";
const ANTI_AFFINITY_IGNORED: &str = "not implemented by peer yet, ignored: peer only spreads a workload's own replicas over nodes (topologyKey kubernetes.io/hostname with a labelSelector that selects this pod's labels, and no namespaces, namespaceSelector, matchLabelKeys or mismatchLabelKeys)";
const ANTI_AFFINITY_SOFT: &str = "peer spreads replicas over nodes softly: when there are more replicas than nodes, some share a node instead of staying pending";
const MATCH_FIELDS: &str =
    "not implemented by peer yet, ignored: only matchExpressions on node labels are read";

/// The scheduling fields of the pod spec at `prefix`, whose pods carry `labels`.
pub(crate) fn scheduling(
    prefix: &str,
    spec: &PodSpec,
    labels: &BTreeMap<String, String>,
    notes: &mut Vec<Note>,
) -> Result<Scheduling, FieldError> {
    let mut out = Scheduling {
        node_selector: spec.node_selector.clone().unwrap_or_default(),
        tolerations: tolerations(prefix, spec.tolerations.as_deref().unwrap_or_default())?,
        ..Scheduling::default()
    };
    if let Some(affinity) = &spec.affinity {
        let path = format!("{prefix}.affinity");
        if let Some(node) = &affinity.node_affinity {
            (out.required_affinity, out.preferred_affinity) =
                node_affinity(&format!("{path}.nodeAffinity"), node, notes)?;
        }
        // `podAffinity` is warned about by the field walk: nothing of it is read.
        if let Some(anti) = &affinity.pod_anti_affinity {
            out.anti_affinity_by_hostname =
                anti_affinity(&format!("{path}.podAntiAffinity"), anti, labels, notes)?;
        }
    }
    out.topology_spread = topology_spread(
        prefix,
        spec.topology_spread_constraints.as_deref().unwrap_or_default(),
        labels,
        notes,
    )?;
    Ok(out)
}

fn tolerations(prefix: &str, list: &[core::Toleration]) -> Result<Vec<Toleration>, FieldError> {
    let list_path = format!("{prefix}.tolerations");
    let mut out = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        let path = index(&list_path, i);
        let key = t.key.clone().unwrap_or_default();
        let operator = match t.operator.as_deref() {
            None | Some("" | "Equal") => TolerationOperator::Equal,
            Some("Exists") => TolerationOperator::Exists,
            Some(other) => {
                return Err(FieldError::new(
                    format!("{path}.operator"),
                    format!("expected Equal or Exists, got {other:?}"),
                ))
            }
        };
        if key.is_empty() && operator != TolerationOperator::Exists {
            return Err(FieldError::new(
                format!("{path}.operator"),
                "expected Exists when key is empty (an empty key with Exists tolerates every taint)",
            ));
        }
        let value = t.value.clone().unwrap_or_default();
        if operator == TolerationOperator::Exists && !value.is_empty() {
            return Err(FieldError::new(
                format!("{path}.value"),
                format!("expected no value when operator is Exists, got {value:?}"),
            ));
        }
        let effect = match t.effect.as_deref() {
            None | Some("") => None,
            Some("NoSchedule") => Some(TaintEffect::NoSchedule),
            Some("PreferNoSchedule") => Some(TaintEffect::PreferNoSchedule),
            Some("NoExecute") => Some(TaintEffect::NoExecute),
            Some(other) => {
                return Err(FieldError::new(
                    format!("{path}.effect"),
                    format!("expected NoSchedule, PreferNoSchedule or NoExecute (or no effect, to match every effect), got {other:?}"),
                ))
            }
        };
        let toleration_seconds = match t.toleration_seconds {
            None => None,
            Some(_) if effect != Some(TaintEffect::NoExecute) => {
                return Err(FieldError::new(
                    format!("{path}.tolerationSeconds"),
                    "may only be set when effect is NoExecute",
                ))
            }
            // Kubernetes reads zero and negative values as "evict at once".
            Some(seconds) => Some(u64::try_from(seconds).unwrap_or(0)),
        };
        out.push(Toleration { key, operator, value, effect, toleration_seconds });
    }
    Ok(out)
}

/// Required terms (ORed) and weighted preferred terms.
fn node_affinity(
    path: &str,
    affinity: &NodeAffinity,
    notes: &mut Vec<Note>,
) -> Result<(Vec<NodeSelectorTerm>, Vec<PreferredTerm>), FieldError> {
    let mut required = Vec::new();
    if let Some(selector) = &affinity.required_during_scheduling_ignored_during_execution {
        let terms_path = format!("{path}.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms");
        if selector.node_selector_terms.is_empty() {
            return Err(FieldError::new(terms_path, "expected at least one node selector term"));
        }
        // A term constrained only by `matchFields` matches every node once those are
        // ignored; as terms are ORed, the whole required affinity then allows every node.
        let mut matches_every_node = false;
        for (i, term) in selector.node_selector_terms.iter().enumerate() {
            let term_path = index(&terms_path, i);
            let converted = node_selector_term(&term_path, term)?;
            if has_match_fields(term) {
                let message = if converted.match_expressions.is_empty() {
                    matches_every_node = true;
                    format!("{MATCH_FIELDS}; this term has no matchExpressions, so it matches every node and the required node affinity has no effect")
                } else {
                    MATCH_FIELDS.to_owned()
                };
                notes.push((format!("{term_path}.matchFields"), message));
            }
            required.push(converted);
        }
        if matches_every_node {
            required.clear();
        }
    }

    let mut preferred = Vec::new();
    let list = affinity.preferred_during_scheduling_ignored_during_execution.as_deref().unwrap_or_default();
    let list_path = format!("{path}.preferredDuringSchedulingIgnoredDuringExecution");
    for (i, p) in list.iter().enumerate() {
        let term_path = index(&list_path, i);
        let weight = weight(&term_path, p.weight)?;
        let preference_path = format!("{term_path}.preference");
        let preference = node_selector_term(&preference_path, &p.preference)?;
        if has_match_fields(&p.preference) {
            notes.push((format!("{preference_path}.matchFields"), MATCH_FIELDS.to_owned()));
        }
        // An empty preference matches every node alike, which changes no ranking
        // (Kubernetes calls it a no-op), so it is left out.
        if !preference.match_expressions.is_empty() {
            preferred.push(PreferredTerm { weight, preference });
        }
    }
    Ok((required, preferred))
}

fn has_match_fields(term: &core::NodeSelectorTerm) -> bool {
    term.match_fields.as_ref().is_some_and(|f| !f.is_empty())
}

/// A term's `matchExpressions` (`matchFields` is the caller's to warn about).
fn node_selector_term(path: &str, term: &core::NodeSelectorTerm) -> Result<NodeSelectorTerm, FieldError> {
    let list_path = format!("{path}.matchExpressions");
    let match_expressions = term
        .match_expressions
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| requirement(&index(&list_path, i), &r.key, &r.operator, r.values.as_deref()))
        .collect::<Result<_, _>>()?;
    Ok(NodeSelectorTerm { match_expressions })
}

/// One `matchExpressions` entry, of a node selector term or a label selector (same shape).
fn requirement(
    path: &str,
    key: &str,
    operator: &str,
    values: Option<&[String]>,
) -> Result<NodeSelectorRequirement, FieldError> {
    if key.is_empty() {
        return Err(FieldError::new(
            format!("{path}.key"),
            "required field is missing, expected a label key such as topology.kubernetes.io/zone",
        ));
    }
    let operator = match operator {
        "In" => SelectorOperator::In,
        "NotIn" => SelectorOperator::NotIn,
        "Exists" => SelectorOperator::Exists,
        "DoesNotExist" => SelectorOperator::DoesNotExist,
        "Gt" | "Lt" => {
            return Err(FieldError::new(
                format!("{path}.operator"),
                format!(
                    "{OPERATORS}, got {operator:?}: peer does not implement the numeric operators Gt and Lt"
                ),
            ))
        }
        other => {
            return Err(FieldError::new(format!("{path}.operator"), format!("{OPERATORS}, got {other:?}")))
        }
    };
    let values = values.unwrap_or_default().to_vec();
    match operator {
        SelectorOperator::In | SelectorOperator::NotIn if values.is_empty() => Err(FieldError::new(
            format!("{path}.values"),
            format!("required for operator {operator:?}, expected at least one value"),
        )),
        SelectorOperator::Exists | SelectorOperator::DoesNotExist if !values.is_empty() => {
            Err(FieldError::new(
                format!("{path}.values"),
                format!("expected no values for operator {operator:?}"),
            ))
        }
        _ => Ok(NodeSelectorRequirement { key: key.to_owned(), operator, values }),
    }
}

/// A preferred term's weight, 1 to 100 as in Kubernetes.
fn weight(path: &str, weight: i32) -> Result<u32, FieldError> {
    u32::try_from(weight).ok().filter(|w| (1..=100).contains(w)).ok_or_else(|| {
        FieldError::new(format!("{path}.weight"), format!("expected an integer from 1 to 100, got {weight}"))
    })
}

/// Whether the pod anti-affinity spreads this workload's replicas over nodes. Every
/// term (required or preferred) that does something else is warned about and ignored.
fn anti_affinity(
    path: &str,
    anti: &PodAntiAffinity,
    labels: &BTreeMap<String, String>,
    notes: &mut Vec<Note>,
) -> Result<bool, FieldError> {
    let mut spread = false;
    let required = anti.required_during_scheduling_ignored_during_execution.as_deref().unwrap_or_default();
    let list_path = format!("{path}.requiredDuringSchedulingIgnoredDuringExecution");
    for (i, term) in required.iter().enumerate() {
        let term_path = index(&list_path, i);
        if by_hostname(&term_path, term, labels)? {
            spread = true;
            notes.push((term_path, ANTI_AFFINITY_SOFT.to_owned()));
        } else {
            notes.push((term_path, ANTI_AFFINITY_IGNORED.to_owned()));
        }
    }
    let preferred = anti.preferred_during_scheduling_ignored_during_execution.as_deref().unwrap_or_default();
    let list_path = format!("{path}.preferredDuringSchedulingIgnoredDuringExecution");
    for (i, weighted) in preferred.iter().enumerate() {
        let term_path = index(&list_path, i);
        weight(&term_path, weighted.weight)?;
        if by_hostname(&format!("{term_path}.podAffinityTerm"), &weighted.pod_affinity_term, labels)? {
            spread = true;
        } else {
            notes.push((term_path, ANTI_AFFINITY_IGNORED.to_owned()));
        }
    }
    Ok(spread)
}

/// A term peer implements: one pod per node among the pods with this pod's labels, in
/// this pod's namespace.
fn by_hostname(
    path: &str,
    term: &PodAffinityTerm,
    labels: &BTreeMap<String, String>,
) -> Result<bool, FieldError> {
    if term.topology_key.is_empty() {
        return Err(FieldError::new(
            format!("{path}.topologyKey"),
            "required field is missing, expected a node label key such as kubernetes.io/hostname",
        ));
    }
    let selects_own = match &term.label_selector {
        Some(selector) => selects(&format!("{path}.labelSelector"), selector, labels)?,
        None => false,
    };
    let set = |list: &Option<Vec<String>>| list.as_ref().is_some_and(|l| !l.is_empty());
    Ok(selects_own
        && term.topology_key == HOSTNAME
        && !set(&term.namespaces)
        && term.namespace_selector.is_none()
        && !set(&term.match_label_keys)
        && !set(&term.mismatch_label_keys))
}

/// Whether a non-empty label selector selects pods with `labels`. (An empty selector
/// selects every pod in the namespace, not just this workload's.)
fn selects(
    path: &str,
    selector: &LabelSelector,
    labels: &BTreeMap<String, String>,
) -> Result<bool, FieldError> {
    let match_labels = selector.match_labels.as_ref().into_iter().flatten();
    let mut selects = match_labels.clone().all(|(k, v)| labels.get(k) == Some(v));
    let mut empty = match_labels.count() == 0;
    let list_path = format!("{path}.matchExpressions");
    for (i, r) in selector.match_expressions.iter().flatten().enumerate() {
        let req = requirement(&index(&list_path, i), &r.key, &r.operator, r.values.as_deref())?;
        let value = labels.get(&req.key);
        selects &= match req.operator {
            SelectorOperator::In => value.is_some_and(|v| req.values.contains(v)),
            SelectorOperator::NotIn => value.is_none_or(|v| !req.values.contains(v)),
            SelectorOperator::Exists => value.is_some(),
            SelectorOperator::DoesNotExist => value.is_none(),
        };
        empty = false;
    }
    Ok(selects && !empty)
}

/// The first `DoNotSchedule` constraint; every other one is warned about.
fn topology_spread(
    prefix: &str,
    constraints: &[TopologySpreadConstraint],
    labels: &BTreeMap<String, String>,
    notes: &mut Vec<Note>,
) -> Result<Option<TopologySpread>, FieldError> {
    let list_path = format!("{prefix}.topologySpreadConstraints");
    let mut chosen: Option<(String, TopologySpread)> = None;
    for (i, c) in constraints.iter().enumerate() {
        let path = index(&list_path, i);
        let max_skew = u32::try_from(c.max_skew).ok().filter(|n| *n >= 1).ok_or_else(|| {
            FieldError::new(
                format!("{path}.maxSkew"),
                format!("expected an integer of at least 1, got {}", c.max_skew),
            )
        })?;
        if c.topology_key.is_empty() {
            return Err(FieldError::new(
                format!("{path}.topologyKey"),
                "required field is missing, expected a node label key such as topology.kubernetes.io/zone",
            ));
        }
        let selects_own = match &c.label_selector {
            Some(selector) => selects(&format!("{path}.labelSelector"), selector, labels)?,
            None => true,
        };
        match (c.when_unsatisfiable.as_str(), &chosen) {
            ("DoNotSchedule", None) => {
                if !selects_own {
                    notes.push((
                        format!("{path}.labelSelector"),
                        "peer spreads the replicas of this workload only: a labelSelector that does not select this pod's labels is not implemented, ignored".to_owned(),
                    ));
                }
                chosen = Some((path, TopologySpread { topology_key: c.topology_key.clone(), max_skew }));
            }
            ("DoNotSchedule", Some((first, _))) => notes.push((
                path,
                format!("not implemented by peer yet, ignored: peer applies only the first DoNotSchedule constraint ({first})"),
            )),
            ("ScheduleAnyway", _) => notes.push((
                path,
                "not implemented by peer yet, ignored: peer applies only a whenUnsatisfiable: DoNotSchedule constraint".to_owned(),
            )),
            (other, _) => {
                return Err(FieldError::new(
                    format!("{path}.whenUnsatisfiable"),
                    format!("expected DoNotSchedule or ScheduleAnyway, got {other:?}"),
                ))
            }
        }
    }
    Ok(chosen.map(|(_, spread)| spread))
}
