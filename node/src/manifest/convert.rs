//! Kubernetes objects (the real k8s-openapi types) to peer's `Workload`: defaults and validation.
//!
//! This is the one place where Kubernetes semantics become peer's. Defaults follow
//! Kubernetes (replicas 1, RollingUpdate 25%/25% for a Deployment and maxSurge 0,
//! maxUnavailable 1 for a StatefulSet or DaemonSet, restartPolicy Always, grace period
//! 30 s, namespace `default`) with one deliberate difference, see [`selector_and_template`].

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, DeploymentStrategy, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use protocol::spec::{
    IntOrPercent, Kind, ObjectKey, PodManagement, PodTemplate, RestartPolicy, Rollout, Strategy, Workload,
};

use super::diagnostic::{FieldError, Note};
use super::fields::CHANGE_CAUSE;
use super::{container, scheduling};

/// What peer does instead of a StatefulSet's or DaemonSet's update strategy.
const RECREATE_PODS: &str = "a changed template recreates every pod at once";

/// The namespace of objects that do not name one, as in Kubernetes.
pub(crate) const DEFAULT_NAMESPACE: &str = "default";

/// A Deployment as a workload.
///
/// Unlike Kubernetes `apps/v1`, which rejects a Deployment without `spec.selector`,
/// peer accepts the short form users write by hand (see [`selector_and_template`]).
pub(crate) fn deployment(d: &Deployment, notes: &mut Vec<Note>) -> Result<Workload, FieldError> {
    let key = object_key(Kind::Deployment, &d.metadata)?;
    let spec = &d.spec;
    let replicas = replicas(spec.replicas)?;
    let (selector, template) = selector_and_template(&key, &spec.selector, &spec.template, notes)?;
    let rollout = rollout(d)?;
    Ok(Workload {
        strategy: strategy(spec.strategy.as_ref())?,
        pod_management: PodManagement::default(),
        rollout: Box::new(rollout),
        labels: d.metadata.labels.clone().unwrap_or_default(),
        key,
        replicas,
        selector,
        template,
    })
}

/// A StatefulSet as a workload: `replicas` pods with stable names, started in order or
/// in parallel (`podManagementPolicy`). Selector and labels default as for a Deployment.
/// `serviceName` only names the governing Service, which peer does not need.
pub(crate) fn stateful_set(s: &StatefulSet, notes: &mut Vec<Note>) -> Result<Workload, FieldError> {
    let key = object_key(Kind::StatefulSet, &s.metadata)?;
    let spec = &s.spec;
    let replicas = replicas(spec.replicas)?;
    let (selector, template) = selector_and_template(&key, &spec.selector, &spec.template, notes)?;
    let pod_management = match spec.pod_management_policy.as_deref() {
        None | Some("OrderedReady") => PodManagement::OrderedReady,
        Some("Parallel") => PodManagement::Parallel,
        Some(other) => {
            return Err(FieldError::new(
                "spec.podManagementPolicy",
                format!("expected OrderedReady or Parallel, got {other:?}"),
            ))
        }
    };
    let update = spec.update_strategy.as_ref();
    let rolling = update.and_then(|u| u.rolling_update.as_ref());
    let strategy = update_strategy(
        Kind::StatefulSet,
        update.map(|u| u.type_.as_deref()),
        rolling.is_some(),
        None,
        rolling.and_then(|r| r.max_unavailable.as_ref()),
        notes,
    )?;
    Ok(Workload {
        labels: s.metadata.labels.clone().unwrap_or_default(),
        key,
        replicas,
        selector,
        strategy,
        template,
        pod_management,
        rollout: Box::default(),
    })
}

/// A DaemonSet as a workload: one pod on every node its template may run on, so
/// `replicas` is 0 and unused. Selector and labels default as for a Deployment.
pub(crate) fn daemon_set(d: &DaemonSet, notes: &mut Vec<Note>) -> Result<Workload, FieldError> {
    let key = object_key(Kind::DaemonSet, &d.metadata)?;
    let spec = &d.spec;
    let (selector, template) = selector_and_template(&key, &spec.selector, &spec.template, notes)?;
    let update = spec.update_strategy.as_ref();
    let rolling = update.and_then(|u| u.rolling_update.as_ref());
    let strategy = update_strategy(
        Kind::DaemonSet,
        update.map(|u| u.type_.as_deref()),
        rolling.is_some(),
        rolling.and_then(|r| r.max_surge.as_ref()),
        rolling.and_then(|r| r.max_unavailable.as_ref()),
        notes,
    )?;
    Ok(Workload {
        labels: d.metadata.labels.clone().unwrap_or_default(),
        key,
        replicas: 0,
        selector,
        strategy,
        template,
        pod_management: PodManagement::default(),
        rollout: Box::default(),
    })
}

/// A bare Pod as a workload: one replica, selected by its own labels, replaced whole
/// when it changes (Kubernetes does not update a running pod's containers either).
pub(crate) fn pod(p: &Pod, notes: &mut Vec<Note>) -> Result<Workload, FieldError> {
    let key = object_key(Kind::Pod, &p.metadata)?;
    let labels = p.metadata.labels.clone().unwrap_or_default();
    let template = pod_template(Kind::Pod, "spec", labels.clone(), p.spec.as_ref(), notes)?;
    Ok(Workload {
        pod_management: PodManagement::default(),
        rollout: Box::default(),
        key,
        selector: labels.clone(),
        labels,
        replicas: 1,
        strategy: Strategy::Recreate,
        template,
    })
}

/// Kind, namespace and name, validated as Kubernetes does: names become container ids
/// and file names downstream, so they must not carry `/` or `..`. A Service's name is a
/// DNS-1035 label (it becomes a DNS name).
pub(crate) fn object_key(kind: Kind, meta: &ObjectMeta) -> Result<ObjectKey, FieldError> {
    let name = match meta.name.as_deref() {
        None | Some("") => {
            return Err(FieldError::new(
                "metadata.name",
                "required field is missing (peer does not implement generateName)",
            ))
        }
        Some(name) => name,
    };
    if kind == Kind::Service && !is_dns_1035_label(name) {
        return Err(FieldError::new(
            "metadata.name",
            format!("expected lowercase letters, digits and '-', starting with a letter and ending with a letter or digit, at most 63 characters, got {name:?}"),
        ));
    }
    if !is_dns_subdomain(name) {
        return Err(FieldError::new(
            "metadata.name",
            format!("expected lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, at most 253 characters, got {name:?}"),
        ));
    }
    let namespace = meta.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
    if !is_dns_label(namespace) {
        return Err(FieldError::new(
            "metadata.namespace",
            format!("expected lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters, got {namespace:?}"),
        ));
    }
    Ok(ObjectKey { kind, namespace: namespace.to_owned(), name: name.to_owned() })
}

/// `spec.replicas` of a Deployment or StatefulSet: 1 when absent.
fn replicas(n: Option<i32>) -> Result<u32, FieldError> {
    match n {
        None => Ok(1),
        Some(n) => u32::try_from(n).map_err(|_| {
            FieldError::new("spec.replicas", format!("expected a non-negative integer, got {n}"))
        }),
    }
}

/// The selector and pod template of a Deployment, StatefulSet or DaemonSet.
///
/// Unlike Kubernetes `apps/v1`, which requires `spec.selector`, peer accepts the short
/// form users write by hand:
/// - with neither `spec.selector.matchLabels` nor `spec.template.metadata.labels`, the
///   template labels default to `{app: <metadata.name>}`;
/// - without `spec.selector.matchLabels`, the selector defaults to the template labels.
///
/// A selector that is given must match the template labels, else it is an error, as
/// in Kubernetes.
fn selector_and_template(
    key: &ObjectKey,
    selector: &LabelSelector,
    template: &PodTemplateSpec,
    notes: &mut Vec<Note>,
) -> Result<(BTreeMap<String, String>, PodTemplate), FieldError> {
    let mut template_labels = template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
    let match_labels = selector.match_labels.clone().unwrap_or_default();
    let has_expressions = selector.match_expressions.as_ref().is_some_and(|e| !e.is_empty());
    if match_labels.is_empty() && template_labels.is_empty() && !has_expressions {
        template_labels.insert("app".to_owned(), key.name.clone());
    }
    let selector = if match_labels.is_empty() { template_labels.clone() } else { match_labels };
    if selector.is_empty() {
        return Err(FieldError::new(
            "spec.selector",
            "empty selector: set spec.selector.matchLabels or spec.template.metadata.labels",
        ));
    }
    if let Some((k, v)) = selector.iter().find(|(k, v)| template_labels.get(*k) != Some(*v)) {
        return Err(FieldError::new(
            "spec.template.metadata.labels",
            format!("selector does not match template labels: the selector needs {k}: {v}"),
        ));
    }
    let template =
        pod_template(key.kind, "spec.template.spec", template_labels, template.spec.as_ref(), notes)?;
    Ok((selector, template))
}

/// A Deployment's rollout settings, validated as Kubernetes does; the revision history is
/// the store's.
fn rollout(d: &Deployment) -> Result<Rollout, FieldError> {
    let spec = &d.spec;
    let defaults = Rollout::default();
    let non_negative = |v: Option<i32>, field: &str, default: u32| match v {
        None => Ok(default),
        Some(v) => u32::try_from(v)
            .map_err(|_| FieldError::new(field, format!("expected a number of at least 0, got {v}"))),
    };
    let min_ready_seconds = non_negative(spec.min_ready_seconds, "spec.minReadySeconds", 0)?;
    let progress_deadline_seconds = non_negative(
        spec.progress_deadline_seconds,
        "spec.progressDeadlineSeconds",
        defaults.progress_deadline_seconds,
    )?;
    if progress_deadline_seconds <= min_ready_seconds {
        return Err(FieldError::new(
            "spec.progressDeadlineSeconds",
            format!(
                "must be greater than minReadySeconds ({min_ready_seconds}), got {progress_deadline_seconds}"
            ),
        ));
    }
    let revision_history_limit = non_negative(
        spec.revision_history_limit,
        "spec.revisionHistoryLimit",
        defaults.revision_history_limit,
    )?;
    let change_cause = d.metadata.annotations.as_ref().and_then(|a| a.get(CHANGE_CAUSE)).cloned();
    Ok(Rollout {
        min_ready_seconds,
        progress_deadline_seconds,
        revision_history_limit,
        paused: spec.paused.unwrap_or(false),
        change_cause,
        ..defaults
    })
}

fn strategy(s: Option<&DeploymentStrategy>) -> Result<Strategy, FieldError> {
    let type_ = s.and_then(|s| s.type_.as_deref()).unwrap_or("RollingUpdate");
    let rolling = s.and_then(|s| s.rolling_update.as_ref());
    match type_ {
        "Recreate" => {
            if rolling.is_some() {
                return Err(FieldError::new(
                    "spec.strategy.rollingUpdate",
                    "may not be specified when strategy type is Recreate",
                ));
            }
            Ok(Strategy::Recreate)
        }
        "RollingUpdate" => {
            let max_surge = int_or_percent(
                rolling.and_then(|r| r.max_surge.as_ref()),
                IntOrPercent::Percent(25),
                "spec.strategy.rollingUpdate.maxSurge",
            )?;
            let max_unavailable = int_or_percent(
                rolling.and_then(|r| r.max_unavailable.as_ref()),
                IntOrPercent::Percent(25),
                "spec.strategy.rollingUpdate.maxUnavailable",
            )?;
            let zero = |v: IntOrPercent| matches!(v, IntOrPercent::Int(0) | IntOrPercent::Percent(0));
            if zero(max_surge) && zero(max_unavailable) {
                return Err(FieldError::new(
                    "spec.strategy.rollingUpdate.maxUnavailable",
                    "may not be 0 when maxSurge is 0",
                ));
            }
            if matches!(max_unavailable, IntOrPercent::Percent(p) if p > 100) {
                return Err(FieldError::new(
                    "spec.strategy.rollingUpdate.maxUnavailable",
                    "expected a percentage of at most 100%",
                ));
            }
            Ok(Strategy::RollingUpdate { max_surge, max_unavailable })
        }
        other => Err(FieldError::new(
            "spec.strategy.type",
            format!("expected Recreate or RollingUpdate, got {other:?}"),
        )),
    }
}

/// A StatefulSet's or DaemonSet's `spec.updateStrategy` (`update` is `None` when absent,
/// else its `type`). Both kinds replace one pod at a time by default: `maxSurge` 0 and
/// `maxUnavailable` 1 (a StatefulSet has no `maxSurge`). peer does not wait for pods to
/// be deleted, so `OnDelete` is read as the default RollingUpdate, with a warning.
fn update_strategy(
    kind: Kind,
    update: Option<Option<&str>>,
    has_rolling_update: bool,
    max_surge: Option<&IntOrString>,
    max_unavailable: Option<&IntOrString>,
    notes: &mut Vec<Note>,
) -> Result<Strategy, FieldError> {
    let surge_path = "spec.updateStrategy.rollingUpdate.maxSurge";
    let unavailable_path = "spec.updateStrategy.rollingUpdate.maxUnavailable";
    let max_surge = int_or_percent(max_surge, IntOrPercent::Int(0), surge_path)?;
    let max_unavailable = int_or_percent(max_unavailable, IntOrPercent::Int(1), unavailable_path)?;
    match update.flatten().unwrap_or("RollingUpdate") {
        "RollingUpdate" => {
            if update.is_some() {
                notes.push((
                    "spec.updateStrategy".to_owned(),
                    format!("rolling updates are not implemented by peer yet: {RECREATE_PODS}"),
                ));
            }
        }
        "OnDelete" => {
            if has_rolling_update {
                return Err(FieldError::new(
                    "spec.updateStrategy.rollingUpdate",
                    "may not be specified when updateStrategy type is OnDelete",
                ));
            }
            notes.push((
                "spec.updateStrategy.type".to_owned(),
                format!("OnDelete is not implemented by peer yet, read as RollingUpdate: {RECREATE_PODS} instead of waiting for them to be deleted"),
            ));
        }
        other => {
            return Err(FieldError::new(
                "spec.updateStrategy.type",
                format!("expected RollingUpdate or OnDelete, got {other:?}"),
            ))
        }
    }
    let zero = |v: IntOrPercent| matches!(v, IntOrPercent::Int(0) | IntOrPercent::Percent(0));
    if zero(max_surge) && zero(max_unavailable) {
        let message = match kind {
            Kind::DaemonSet => "may not be 0 when maxSurge is 0",
            _ => "may not be 0",
        };
        return Err(FieldError::new(unavailable_path, message));
    }
    if matches!(max_unavailable, IntOrPercent::Percent(p) if p > 100) {
        return Err(FieldError::new(unavailable_path, "expected a percentage of at most 100%"));
    }
    Ok(Strategy::RollingUpdate { max_surge, max_unavailable })
}

/// `maxSurge`/`maxUnavailable`: an integer or a percentage; `default` when absent.
pub(crate) fn int_or_percent(
    value: Option<&IntOrString>,
    default: IntOrPercent,
    path: &str,
) -> Result<IntOrPercent, FieldError> {
    match value {
        None => Ok(default),
        Some(IntOrString::Int(n)) => u32::try_from(*n)
            .map(IntOrPercent::Int)
            .map_err(|_| FieldError::new(path, format!("expected a non-negative integer, got {n}"))),
        Some(IntOrString::String(s)) => s
            .strip_suffix('%')
            .and_then(|p| p.parse::<u32>().ok())
            .map(IntOrPercent::Percent)
            .ok_or_else(|| {
                FieldError::new(path, format!("expected an integer or a percentage such as 25%, got {s:?}"))
            }),
    }
}

fn pod_template(
    kind: Kind,
    prefix: &str,
    labels: BTreeMap<String, String>,
    spec: Option<&PodSpec>,
    notes: &mut Vec<Note>,
) -> Result<PodTemplate, FieldError> {
    let Some(spec) = spec else {
        return Err(FieldError::new(
            prefix,
            "required field is missing, expected a pod spec with containers",
        ));
    };
    let containers = container::containers(prefix, &spec.containers, notes)?;
    let restart_policy = match (kind, spec.restart_policy.as_deref()) {
        (_, None | Some("Always")) => RestartPolicy::Always,
        // Services have no pod template; the arm only keeps the match exhaustive.
        (
            Kind::Deployment
            | Kind::StatefulSet
            | Kind::DaemonSet
            | Kind::Service
            | Kind::PodDisruptionBudget
            | Kind::HorizontalPodAutoscaler
            | Kind::AutoscalerStatus
            | Kind::Secret,
            Some(other),
        ) => {
            return Err(FieldError::new(
                format!("{prefix}.restartPolicy"),
                format!("expected Always for a {kind}, got {other:?}"),
            ))
        }
        (Kind::Pod, Some("OnFailure")) => RestartPolicy::OnFailure,
        (Kind::Pod, Some("Never")) => RestartPolicy::Never,
        (Kind::Pod, Some(other)) => {
            return Err(FieldError::new(
                format!("{prefix}.restartPolicy"),
                format!("expected Always, OnFailure or Never, got {other:?}"),
            ))
        }
    };
    let termination_grace_period_seconds = match spec.termination_grace_period_seconds {
        None => 30,
        Some(n) => u64::try_from(n).map_err(|_| {
            FieldError::new(
                format!("{prefix}.terminationGracePeriodSeconds"),
                format!("expected a non-negative integer, got {n}"),
            )
        })?,
    };
    let scheduling = scheduling::scheduling(prefix, spec, &labels, notes)?;
    let image_pull_secrets = image_pull_secrets(prefix, spec)?;
    Ok(PodTemplate {
        image_pull_secrets,
        scheduling,
        labels,
        containers,
        restart_policy,
        termination_grace_period_seconds,
        host_network: spec.host_network.unwrap_or(false),
    })
}

/// `imagePullSecrets`: the names of Secrets in the pod's namespace. Whether each exists and
/// holds registry credentials is only known when a pull needs them (a warning event then,
/// as the kubelet records), so a Secret may be applied after the workload.
fn image_pull_secrets(prefix: &str, spec: &PodSpec) -> Result<Vec<String>, FieldError> {
    let mut names: Vec<String> = Vec::new();
    for (i, r) in spec.image_pull_secrets.iter().flatten().enumerate() {
        let path = super::diagnostic::index(&format!("{prefix}.imagePullSecrets"), i);
        if !is_dns_subdomain(&r.name) {
            return Err(FieldError::new(
                format!("{path}.name"),
                format!("expected the name of a Secret in the pod's namespace, got {:?}", r.name),
            ));
        }
        if !names.contains(&r.name) {
            names.push(r.name.clone());
        }
    }
    Ok(names)
}

/// A DNS-1123 subdomain, the rule for Deployment and Pod names.
pub(crate) fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label_part)
}

/// A DNS-1123 label, the rule for namespaces and container names.
pub(crate) fn is_dns_label(s: &str) -> bool {
    s.len() <= 63 && is_dns_label_part(s)
}

/// A DNS-1035 label, the rule for Service names: a DNS-1123 label starting with a letter.
pub(crate) fn is_dns_1035_label(s: &str) -> bool {
    is_dns_label(s) && s.starts_with(|c: char| c.is_ascii_lowercase())
}

fn is_dns_label_part(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    s.starts_with(alnum) && s.ends_with(alnum) && s.chars().all(|c| alnum(c) || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_dns_rules() {
        assert!(is_dns_subdomain("api"));
        assert!(is_dns_subdomain("api.v2-x"));
        assert!(!is_dns_subdomain("../etc"));
        assert!(!is_dns_subdomain("Api"));
        assert!(!is_dns_subdomain("a/b"));
        assert!(!is_dns_subdomain("a..b"));
        assert!(!is_dns_subdomain("-a"));
        assert!(is_dns_label("default"));
        assert!(!is_dns_label("a.b"));
        assert!(!is_dns_label(&"a".repeat(64)));
        assert!(is_dns_1035_label("web-1"));
        assert!(!is_dns_1035_label("1web"));
        assert!(!is_dns_1035_label("web.v2"));
    }
}
