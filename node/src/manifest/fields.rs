//! The allow-list of manifest fields peer implements, and the walk that warns about the rest.
//!
//! No field is dropped silently. Every field present in a document is one of:
//! - implemented: listed below as [`Rule::Use`] (taken whole) or [`Rule::Walk`] (its
//!   children are checked one by one);
//! - accepted but without effect yet: [`Rule::Note`], warned with what peer does instead;
//! - a Kubernetes field peer does not implement: warned "not implemented by peer yet";
//! - unknown to Kubernetes (a typo, or a field from a newer release): warned "unknown
//!   field". The real Kubernetes types silently skip such fields, so they are found by
//!   comparing the document with the typed object serialized back: a field that did not
//!   survive the round trip is unknown.
//!
//! Patterns write list elements as `[]`: `containers[].ports[].containerPort`.

use protocol::spec::Kind;
use serde_yaml_ng::Value;

use super::diagnostic::{index, join, Note};

/// What peer does with a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    /// Implemented; the value is read whole (a scalar, a list of strings, a label map).
    Use,
    /// Implemented; check each child field (or list element) against the table.
    Walk,
    /// Accepted but peer does not act on it (yet); the message says what peer does instead.
    Note(&'static str),
}

/// Fields every object may carry.
const OBJECT: &[(&str, Rule)] = &[
    ("apiVersion", Rule::Use),
    ("kind", Rule::Use),
    ("metadata", Rule::Walk),
    ("metadata.name", Rule::Use),
    ("metadata.namespace", Rule::Use),
    ("metadata.labels", Rule::Use),
    // Each annotation is checked by [`annotation_rule`].
    ("metadata.annotations", Rule::Walk),
    ("status", Rule::Note("status is written by the cluster, not read from manifests; ignored")),
];

/// Fields outside the pod spec shared by Deployments, StatefulSets and DaemonSets.
const WORKLOAD: &[(&str, Rule)] = &[
    ("spec", Rule::Walk),
    ("spec.selector", Rule::Walk),
    ("spec.selector.matchLabels", Rule::Use),
    (
        "spec.selector.matchExpressions",
        Rule::Note("not implemented by peer yet, ignored: pods are selected by matchLabels, or by the template labels when there are none"),
    ),
    ("spec.template", Rule::Walk),
    ("spec.template.metadata", Rule::Walk),
    ("spec.template.metadata.labels", Rule::Use),
    ("spec.template.metadata.annotations", Rule::Note(ANNOTATIONS)),
];

/// Deployment fields outside the pod spec, besides [`WORKLOAD`].
const DEPLOYMENT: &[(&str, Rule)] = &[
    ("spec.replicas", Rule::Use),
    // Whether a rolling update has an effect yet is decided in `convert`.
    ("spec.strategy", Rule::Walk),
    ("spec.strategy.type", Rule::Use),
    ("spec.strategy.rollingUpdate", Rule::Walk),
    ("spec.strategy.rollingUpdate.maxSurge", Rule::Use),
    ("spec.strategy.rollingUpdate.maxUnavailable", Rule::Use),
    ("spec.minReadySeconds", Rule::Use),
    ("spec.progressDeadlineSeconds", Rule::Use),
    ("spec.revisionHistoryLimit", Rule::Use),
    ("spec.paused", Rule::Use),
];

/// StatefulSet fields outside the pod spec, besides [`WORKLOAD`].
const STATEFUL_SET: &[(&str, Rule)] = &[
    ("spec.replicas", Rule::Use),
    ("spec.podManagementPolicy", Rule::Use),
    // Names the governing Service; peer needs none, so there is nothing to warn about.
    ("spec.serviceName", Rule::Use),
    // What peer does with an update strategy is said in `convert`.
    ("spec.updateStrategy", Rule::Walk),
    ("spec.updateStrategy.type", Rule::Use),
    ("spec.updateStrategy.rollingUpdate", Rule::Walk),
    ("spec.updateStrategy.rollingUpdate.maxUnavailable", Rule::Use),
    (
        "spec.volumeClaimTemplates",
        Rule::Note("not implemented by peer yet, ignored: pods get no persistent volumes"),
    ),
];

/// DaemonSet fields outside the pod spec, besides [`WORKLOAD`].
const DAEMON_SET: &[(&str, Rule)] = &[
    // What peer does with an update strategy is said in `convert`.
    ("spec.updateStrategy", Rule::Walk),
    ("spec.updateStrategy.type", Rule::Use),
    ("spec.updateStrategy.rollingUpdate", Rule::Walk),
    ("spec.updateStrategy.rollingUpdate.maxSurge", Rule::Use),
    ("spec.updateStrategy.rollingUpdate.maxUnavailable", Rule::Use),
];

/// Service fields. Fields left out (externalIPs, traffic policies, load balancer
/// settings, IP families) are warned about as not implemented.
const SERVICE: &[(&str, Rule)] = &[
    ("spec", Rule::Walk),
    ("spec.type", Rule::Use),
    ("spec.clusterIP", Rule::Use),
    // Only the first is used; `service` warns about more.
    ("spec.clusterIPs", Rule::Use),
    ("spec.selector", Rule::Use),
    ("spec.ports", Rule::Walk),
    ("spec.ports[]", Rule::Walk),
    ("spec.ports[].name", Rule::Use),
    ("spec.ports[].port", Rule::Use),
    ("spec.ports[].targetPort", Rule::Use),
    ("spec.ports[].protocol", Rule::Use),
    ("spec.ports[].nodePort", Rule::Use),
    (
        "spec.ports[].appProtocol",
        Rule::Note("peer does not read appProtocol, ignored: traffic is forwarded as plain TCP or UDP"),
    ),
    ("spec.sessionAffinity", Rule::Use),
    ("spec.sessionAffinityConfig", Rule::Walk),
    ("spec.sessionAffinityConfig.clientIP", Rule::Walk),
    ("spec.sessionAffinityConfig.clientIP.timeoutSeconds", Rule::Use),
    (
        "spec.publishNotReadyAddresses",
        Rule::Note("not implemented by peer yet, ignored: only ready pods are endpoints"),
    ),
    ("spec.ipFamilies", Rule::Note("peer is IPv4 only, ignored")),
    ("spec.ipFamilyPolicy", Rule::Note("peer is IPv4 only, ignored")),
];

/// PodDisruptionBudget fields besides [`OBJECT`].
const DISRUPTION_BUDGET: &[(&str, Rule)] = &[
    ("spec", Rule::Walk),
    ("spec.selector", Rule::Walk),
    ("spec.selector.matchLabels", Rule::Use),
    ("spec.minAvailable", Rule::Use),
    ("spec.maxUnavailable", Rule::Use),
];

/// Secret fields besides [`OBJECT`]; values are checked in `secret`.
const SECRET: &[(&str, Rule)] = &[
    ("type", Rule::Use),
    ("data", Rule::Use),
    ("stringData", Rule::Use),
    (
        "immutable",
        Rule::Note("not implemented by peer yet, ignored: the Secret can be changed by applying it again"),
    ),
];

/// HorizontalPodAutoscaler fields besides [`OBJECT`]: `autoscaling/v2`, and
/// `targetCPUUtilizationPercentage` of `autoscaling/v1` (a v2 field in a v1 document, or
/// the other way round, does not survive the typed round trip and is warned as unknown).
const AUTOSCALER: &[(&str, Rule)] = &[
    ("spec", Rule::Walk),
    ("spec.scaleTargetRef", Rule::Walk),
    ("spec.scaleTargetRef.apiVersion", Rule::Use),
    ("spec.scaleTargetRef.kind", Rule::Use),
    ("spec.scaleTargetRef.name", Rule::Use),
    ("spec.minReplicas", Rule::Use),
    ("spec.maxReplicas", Rule::Use),
    ("spec.targetCPUUtilizationPercentage", Rule::Use),
    ("spec.metrics", Rule::Walk),
    ("spec.metrics[]", Rule::Walk),
    ("spec.metrics[].type", Rule::Use),
    ("spec.metrics[].resource", Rule::Walk),
    // Resources other than cpu and memory are warned about in `autoscaler`.
    ("spec.metrics[].resource.name", Rule::Use),
    ("spec.metrics[].resource.target", Rule::Walk),
    ("spec.metrics[].resource.target.type", Rule::Use),
    ("spec.metrics[].resource.target.averageUtilization", Rule::Use),
    ("spec.metrics[].resource.target.averageValue", Rule::Use),
    (
        "spec.metrics[].resource.target.value",
        Rule::Note("a Resource metric's target is averageUtilization or averageValue; value is ignored, as Kubernetes does"),
    ),
    // Metric types peer does not implement are warned about, whole, in `autoscaler`.
    ("spec.metrics[].pods", Rule::Use),
    ("spec.metrics[].object", Rule::Use),
    ("spec.metrics[].external", Rule::Use),
    ("spec.metrics[].containerResource", Rule::Use),
    ("spec.behavior", Rule::Walk),
    ("spec.behavior.scaleUp", Rule::Walk),
    ("spec.behavior.scaleDown", Rule::Walk),
];

/// A direction's scaling rules, relative to `spec.behavior.scaleUp` and `.scaleDown`.
const SCALING_RULES: &[(&str, Rule)] = &[
    ("stabilizationWindowSeconds", Rule::Use),
    ("selectPolicy", Rule::Use),
    ("tolerance", Rule::Use),
    ("policies", Rule::Walk),
    ("policies[]", Rule::Walk),
    ("policies[].type", Rule::Use),
    ("policies[].value", Rule::Use),
    ("policies[].periodSeconds", Rule::Use),
];

/// Pod spec fields, relative to `spec` (Pod) or `spec.template.spec` (the other kinds).
const POD_SPEC: &[(&str, Rule)] = &[
    ("containers", Rule::Walk),
    ("containers[]", Rule::Walk),
    ("containers[].name", Rule::Use),
    ("containers[].image", Rule::Use),
    ("containers[].imagePullPolicy", Rule::Use),
    ("containers[].command", Rule::Use),
    ("containers[].args", Rule::Use),
    ("containers[].workingDir", Rule::Use),
    ("containers[].env", Rule::Walk),
    ("containers[].env[]", Rule::Walk),
    ("containers[].env[].name", Rule::Use),
    ("containers[].env[].value", Rule::Use),
    ("containers[].env[].valueFrom", Rule::Note("not implemented by peer yet: the variable is not set")),
    ("containers[].ports", Rule::Walk),
    ("containers[].ports[]", Rule::Walk),
    ("containers[].ports[].containerPort", Rule::Use),
    ("containers[].ports[].name", Rule::Use),
    ("containers[].ports[].protocol", Rule::Use),
    ("containers[].ports[].hostPort", Rule::Use),
    ("containers[].resources", Rule::Walk),
    // Resource names other than cpu and memory are warned about in `convert`.
    ("containers[].resources.requests", Rule::Use),
    ("containers[].resources.limits", Rule::Use),
    // What peer does with each probe field (hosts, HTTPS, grpc) is said in `probe`.
    ("containers[].livenessProbe", Rule::Walk),
    ("containers[].readinessProbe", Rule::Walk),
    ("containers[].startupProbe", Rule::Walk),
    ("containers[].lifecycle", Rule::Walk),
    ("containers[].lifecycle.preStop", Rule::Walk),
    ("restartPolicy", Rule::Use),
    ("terminationGracePeriodSeconds", Rule::Use),
    ("imagePullSecrets", Rule::Walk),
    ("imagePullSecrets[]", Rule::Walk),
    ("imagePullSecrets[].name", Rule::Use),
    ("hostNetwork", Rule::Use),
    ("nodeSelector", Rule::Use),
    ("tolerations", Rule::Walk),
    ("tolerations[]", Rule::Walk),
    ("tolerations[].key", Rule::Use),
    ("tolerations[].operator", Rule::Use),
    ("tolerations[].value", Rule::Use),
    ("tolerations[].effect", Rule::Use),
    ("tolerations[].tolerationSeconds", Rule::Use),
    // `affinity.podAffinity` is left out: nothing of it is implemented.
    ("affinity", Rule::Walk),
    ("affinity.nodeAffinity", Rule::Walk),
    ("affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution", Rule::Walk),
    ("affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms", Rule::Walk),
    ("affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[]", Rule::Walk),
    ("affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution", Rule::Walk),
    ("affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[]", Rule::Walk),
    ("affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[].weight", Rule::Use),
    ("affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[].preference", Rule::Walk),
    ("affinity.podAntiAffinity", Rule::Walk),
    ("affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution", Rule::Walk),
    ("affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[]", Rule::Walk),
    ("affinity.podAntiAffinity.preferredDuringSchedulingIgnoredDuringExecution", Rule::Walk),
    ("affinity.podAntiAffinity.preferredDuringSchedulingIgnoredDuringExecution[]", Rule::Walk),
    ("affinity.podAntiAffinity.preferredDuringSchedulingIgnoredDuringExecution[].weight", Rule::Use),
    (
        "affinity.podAntiAffinity.preferredDuringSchedulingIgnoredDuringExecution[].podAffinityTerm",
        Rule::Walk,
    ),
    // Which constraints have an effect is decided (and warned about) in `scheduling`.
    ("topologySpreadConstraints", Rule::Walk),
    ("topologySpreadConstraints[]", Rule::Walk),
    ("topologySpreadConstraints[].maxSkew", Rule::Use),
    ("topologySpreadConstraints[].topologyKey", Rule::Use),
    ("topologySpreadConstraints[].whenUnsatisfiable", Rule::Use),
    ("topologySpreadConstraints[].labelSelector", Rule::Walk),
    ("topologySpreadConstraints[].labelSelector.matchLabels", Rule::Use),
    ("topologySpreadConstraints[].labelSelector.matchExpressions", Rule::Use),
];

/// A node selector term's fields, relative to each place in [`NESTED`] that holds one.
const NODE_SELECTOR_TERM: &[(&str, Rule)] = &[
    ("matchExpressions", Rule::Walk),
    ("matchExpressions[]", Rule::Walk),
    ("matchExpressions[].key", Rule::Use),
    ("matchExpressions[].operator", Rule::Use),
    ("matchExpressions[].values", Rule::Use),
    // Not implemented; warned about in `scheduling`, which also says what ignoring it means.
    ("matchFields", Rule::Use),
];

/// A pod anti-affinity term's fields. Whether the term has an effect depends on all of
/// them together, so `scheduling` decides, and warns about a term it ignores as a whole.
const POD_AFFINITY_TERM: &[(&str, Rule)] = &[
    ("topologyKey", Rule::Use),
    ("labelSelector", Rule::Walk),
    ("labelSelector.matchLabels", Rule::Use),
    ("labelSelector.matchExpressions", Rule::Use),
    ("namespaces", Rule::Use),
    ("namespaceSelector", Rule::Use),
    ("matchLabelKeys", Rule::Use),
    ("mismatchLabelKeys", Rule::Use),
];

/// What a probe or a lifecycle hook does (relative to the probe or hook).
const HANDLER: &[(&str, Rule)] = &[
    ("exec", Rule::Walk),
    ("exec.command", Rule::Use),
    ("httpGet", Rule::Walk),
    ("httpGet.path", Rule::Use),
    ("httpGet.port", Rule::Use),
    ("httpGet.host", Rule::Use),
    ("httpGet.scheme", Rule::Use),
    ("httpGet.httpHeaders", Rule::Use),
    ("tcpSocket", Rule::Walk),
    ("tcpSocket.port", Rule::Use),
    ("tcpSocket.host", Rule::Use),
];

/// A probe's other fields, relative to each of the container's three probes.
const PROBE: &[(&str, Rule)] = &[
    ("grpc", Rule::Use),
    ("initialDelaySeconds", Rule::Use),
    ("periodSeconds", Rule::Use),
    ("timeoutSeconds", Rule::Use),
    ("successThreshold", Rule::Use),
    ("failureThreshold", Rule::Use),
    ("terminationGracePeriodSeconds", Rule::Use),
];

/// A lifecycle hook's other fields (`lifecycle.preStop`).
const HOOK: &[(&str, Rule)] = &[("sleep", Rule::Walk), ("sleep.seconds", Rule::Use)];

/// Tables used at several places of the pod spec: (pattern of the place, table); a place
/// may have several tables.
const NESTED: &[(&str, &[(&str, Rule)])] = &[
    ("containers[].livenessProbe", HANDLER),
    ("containers[].livenessProbe", PROBE),
    ("containers[].readinessProbe", HANDLER),
    ("containers[].readinessProbe", PROBE),
    ("containers[].startupProbe", HANDLER),
    ("containers[].startupProbe", PROBE),
    ("containers[].lifecycle.preStop", HANDLER),
    ("containers[].lifecycle.preStop", HOOK),
    (
        "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[]",
        NODE_SELECTOR_TERM,
    ),
    (
        "affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[].preference",
        NODE_SELECTOR_TERM,
    ),
    ("affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[]", POD_AFFINITY_TERM),
    (
        "affinity.podAntiAffinity.preferredDuringSchedulingIgnoredDuringExecution[].podAffinityTerm",
        POD_AFFINITY_TERM,
    ),
];

const ANNOTATIONS: &str = "peer reads no annotation but a Deployment's kubernetes.io/change-cause, ignored";
/// The annotation `peer rollout history` shows.
pub(crate) const CHANGE_CAUSE: &str = "kubernetes.io/change-cause";

/// The rule for one annotation: only a Deployment's change cause is read.
fn annotation_rule(kind: Kind, key: &str) -> Rule {
    if kind == Kind::Deployment && key == CHANGE_CAUSE {
        Rule::Use
    } else {
        Rule::Note(ANNOTATIONS)
    }
}
const NOT_IMPLEMENTED: &str = "not implemented by peer yet, ignored";
const UNKNOWN: &str = "unknown field, ignored (not part of the Kubernetes API peer knows)";

/// Where the pod spec lives in an object of this kind, if it has one.
fn pod_spec_prefix(kind: Kind) -> Option<&'static str> {
    match kind {
        Kind::Deployment | Kind::StatefulSet | Kind::DaemonSet => Some("spec.template.spec"),
        Kind::Pod => Some("spec"),
        Kind::Service
        | Kind::PodDisruptionBudget
        | Kind::HorizontalPodAutoscaler
        | Kind::AutoscalerStatus
        | Kind::Secret => None,
    }
}

/// The fields of `kind` outside the pod spec and outside [`OBJECT`].
fn kind_tables(kind: Kind) -> &'static [&'static [(&'static str, Rule)]] {
    match kind {
        Kind::Deployment => &[WORKLOAD, DEPLOYMENT],
        Kind::StatefulSet => &[WORKLOAD, STATEFUL_SET],
        Kind::DaemonSet => &[WORKLOAD, DAEMON_SET],
        Kind::Pod => &[],
        Kind::Service => &[SERVICE],
        Kind::PodDisruptionBudget => &[DISRUPTION_BUDGET],
        Kind::HorizontalPodAutoscaler => &[AUTOSCALER],
        Kind::AutoscalerStatus => &[],
        Kind::Secret => &[SECRET],
    }
}

fn find(table: &[(&str, Rule)], pattern: &str) -> Option<Rule> {
    table.iter().find(|(p, _)| *p == pattern).map(|(_, r)| *r)
}

fn rule(kind: Kind, pattern: &str) -> Option<Rule> {
    if let Some(key) = pattern.strip_prefix("metadata.annotations.") {
        return Some(annotation_rule(kind, key));
    }
    if let Some(rule) = find(OBJECT, pattern) {
        return Some(rule);
    }
    if let Some(prefix) = pod_spec_prefix(kind) {
        if pattern == prefix {
            return Some(Rule::Walk);
        }
        if let Some(rest) = pattern.strip_prefix(prefix).and_then(|rest| rest.strip_prefix('.')) {
            return pod_spec_rule(rest);
        }
    }
    kind_tables(kind)
        .iter()
        .find_map(|table| find(table, pattern))
        .or_else(|| nested_kind_rule(kind, pattern))
}

/// A table of field patterns and their rules.
type Table = &'static [(&'static str, Rule)];

/// Tables used at several places outside the pod spec: (kind, pattern of the place, table).
const NESTED_KIND: &[(Kind, &str, Table)] = &[
    (Kind::HorizontalPodAutoscaler, "spec.behavior.scaleUp", SCALING_RULES),
    (Kind::HorizontalPodAutoscaler, "spec.behavior.scaleDown", SCALING_RULES),
];

fn nested_kind_rule(kind: Kind, pattern: &str) -> Option<Rule> {
    NESTED_KIND.iter().filter(|(k, _, _)| *k == kind).find_map(|(_, place, table)| {
        let rest = pattern.strip_prefix(place)?.strip_prefix('.')?;
        find(table, rest)
    })
}

/// The rule for a pattern relative to the pod spec.
fn pod_spec_rule(pattern: &str) -> Option<Rule> {
    find(POD_SPEC, pattern).or_else(|| {
        NESTED.iter().find_map(|(place, table)| {
            let rest = pattern.strip_prefix(place)?.strip_prefix('.')?;
            find(table, rest)
        })
    })
}

/// Warnings for every field of `doc` that peer does not implement, in document order.
///
/// `known` is the typed Kubernetes object serialized back to JSON.
pub(crate) fn unimplemented(kind: Kind, doc: &Value, known: &serde_json::Value) -> Vec<Note> {
    let mut notes = Vec::new();
    walk(kind, doc, known, "", "", &mut notes);
    notes
}

fn walk(
    kind: Kind,
    value: &Value,
    known: &serde_json::Value,
    path: &str,
    pattern: &str,
    notes: &mut Vec<Note>,
) {
    match value {
        Value::Mapping(map) => {
            for (key, child) in map {
                let key = match key {
                    Value::String(s) => s.clone(),
                    other => {
                        serde_yaml_ng::to_string(other).map(|s| s.trim_end().to_owned()).unwrap_or_default()
                    }
                };
                let child_path = join(path, &key);
                let child_pattern = if pattern.is_empty() { key.clone() } else { format!("{pattern}.{key}") };
                field(kind, child, known.get(&key), &child_path, &child_pattern, notes);
            }
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter().enumerate() {
                let child_path = index(path, i);
                let child_pattern = format!("{pattern}[]");
                field(kind, item, known.get(i), &child_path, &child_pattern, notes);
            }
        }
        Value::Tagged(tagged) => walk(kind, &tagged.value, known, path, pattern, notes),
        _ => {}
    }
}

fn field(
    kind: Kind,
    value: &Value,
    known: Option<&serde_json::Value>,
    path: &str,
    pattern: &str,
    notes: &mut Vec<Note>,
) {
    // Kubernetes treats an explicit null as "not set".
    if value.is_null() {
        return;
    }
    let Some(known) = known else {
        notes.push((path.to_owned(), UNKNOWN.to_owned()));
        return;
    };
    match rule(kind, pattern) {
        Some(Rule::Use) => {}
        Some(Rule::Walk) => walk(kind, value, known, path, pattern, notes),
        Some(Rule::Note(message)) => notes.push((path.to_owned(), message.to_owned())),
        // An empty list or mapping has no effect in Kubernetes either: nothing is lost.
        None if is_empty(value) => {}
        None => notes.push((path.to_owned(), NOT_IMPLEMENTED.to_owned())),
    }
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Mapping(map) => map.is_empty(),
        Value::Sequence(items) => items.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pattern_is_reachable_from_a_walked_parent() {
        for kind in [
            Kind::Deployment,
            Kind::StatefulSet,
            Kind::DaemonSet,
            Kind::Pod,
            Kind::Service,
            Kind::PodDisruptionBudget,
            Kind::HorizontalPodAutoscaler,
            Kind::Secret,
        ] {
            let mut patterns: Vec<String> = OBJECT.iter().map(|(p, _)| (*p).to_owned()).collect();
            if let Some(prefix) = pod_spec_prefix(kind) {
                patterns.extend(POD_SPEC.iter().map(|(p, _)| format!("{prefix}.{p}")));
                for (place, table) in NESTED {
                    assert_eq!(pod_spec_rule(place), Some(Rule::Walk), "{place}");
                    patterns.extend(table.iter().map(|(p, _)| format!("{prefix}.{place}.{p}")));
                }
            }
            for table in kind_tables(kind) {
                patterns.extend(table.iter().map(|(p, _)| (*p).to_owned()));
            }
            for (_, place, table) in NESTED_KIND.iter().filter(|(k, _, _)| *k == kind) {
                assert_eq!(rule(kind, place), Some(Rule::Walk), "{place}");
                patterns.extend(table.iter().map(|(p, _)| format!("{place}.{p}")));
            }
            for pattern in patterns {
                assert!(rule(kind, &pattern).is_some(), "{pattern} ({kind})");
                let parent = match pattern.rfind(['.', '[']) {
                    Some(i) => &pattern[..i],
                    None => continue,
                };
                assert_eq!(rule(kind, parent), Some(Rule::Walk), "parent of {pattern} ({kind})");
            }
        }
    }
}
