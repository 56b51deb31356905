//! Kubernetes `autoscaling/v2 HorizontalPodAutoscaler` (and the older `autoscaling/v1`)
//! to peer's: the target workload, the replica bounds, `Resource` metrics on cpu or memory
//! and `behavior`, with Kubernetes' validation and defaults (minReplicas 1, cpu at 80 %
//! of requests when no metric is given, the default scaling rules). Metric types peer
//! does not implement are warned about and skipped; an autoscaler left without a metric
//! is an error.

use k8s_openapi::api::autoscaling::{v1, v2};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use protocol::spec::autoscaler::{
    Behavior, MetricSpec, MetricTarget, PolicyKind, Resource, ScaleTarget, ScalingPolicy, ScalingRules,
    SelectPolicy,
};
use protocol::spec::{HorizontalPodAutoscaler, Kind};

use super::convert::{is_dns_subdomain, object_key};
use super::diagnostic::{FieldError, Note};
use super::quantity;

#[cfg(test)]
mod tests;

/// Kubernetes' target when an autoscaler names none: cpu at 80 % of requests.
const DEFAULT_CPU_UTILIZATION: u32 = 80;

/// The longest stabilization window and policy period Kubernetes accepts.
const MAX_WINDOW_SECONDS: i32 = 3600;
const MAX_PERIOD_SECONDS: i32 = 1800;

pub(crate) fn autoscaler_v2(
    h: &v2::HorizontalPodAutoscaler,
    notes: &mut Vec<Note>,
) -> Result<HorizontalPodAutoscaler, FieldError> {
    let key = object_key(Kind::HorizontalPodAutoscaler, &h.metadata)?;
    let spec = &h.spec;
    let (min_replicas, max_replicas) = bounds(spec.min_replicas, spec.max_replicas)?;
    let r = &spec.scale_target_ref;
    let scale_target = scale_target(&r.kind, r.api_version.as_deref(), &r.name)?;
    let metrics = metrics(spec.metrics.as_deref(), notes)?;
    let behavior = behavior(spec.behavior.as_ref())?;
    Ok(HorizontalPodAutoscaler {
        key,
        labels: h.metadata.labels.clone().unwrap_or_default(),
        scale_target,
        min_replicas,
        max_replicas,
        metrics,
        behavior,
    })
}

/// `autoscaling/v1`: one cpu utilization target and no behavior.
pub(crate) fn autoscaler_v1(
    h: &v1::HorizontalPodAutoscaler,
    _notes: &mut Vec<Note>,
) -> Result<HorizontalPodAutoscaler, FieldError> {
    let key = object_key(Kind::HorizontalPodAutoscaler, &h.metadata)?;
    let spec = &h.spec;
    let (min_replicas, max_replicas) = bounds(spec.min_replicas, spec.max_replicas)?;
    let r = &spec.scale_target_ref;
    let scale_target = scale_target(&r.kind, r.api_version.as_deref(), &r.name)?;
    let percent = spec.target_cpu_utilization_percentage.map_or(Ok(DEFAULT_CPU_UTILIZATION), |p| {
        positive(p, "spec.targetCPUUtilizationPercentage", "a percentage of at least 1")
    })?;
    Ok(HorizontalPodAutoscaler {
        key,
        labels: h.metadata.labels.clone().unwrap_or_default(),
        scale_target,
        min_replicas,
        max_replicas,
        metrics: vec![MetricSpec { resource: Resource::Cpu, target: MetricTarget::Utilization(percent) }],
        behavior: Behavior::default(),
    })
}

fn positive(n: i32, path: &str, what: &str) -> Result<u32, FieldError> {
    u32::try_from(n)
        .ok()
        .filter(|&n| n >= 1)
        .ok_or_else(|| FieldError::new(path, format!("expected {what}, got {n}")))
}

/// `minReplicas` (default 1) and `maxReplicas`.
fn bounds(min: Option<i32>, max: i32) -> Result<(u32, u32), FieldError> {
    // Scaling to zero (minReplicas 0) is behind a Kubernetes alpha feature gate and needs
    // Object or External metrics, which peer does not implement.
    let min = min.map_or(Ok(1), |n| positive(n, "spec.minReplicas", "an integer of at least 1"))?;
    if max == 0 {
        // The Kubernetes type reads a missing maxReplicas as 0.
        return Err(FieldError::new(
            "spec.maxReplicas",
            "required field is missing or 0, expected an integer of at least 1",
        ));
    }
    let max = positive(max, "spec.maxReplicas", "an integer of at least 1")?;
    if max < min {
        return Err(FieldError::new(
            "spec.maxReplicas",
            format!("must be greater than or equal to minReplicas ({min}), got {max}"),
        ));
    }
    Ok((min, max))
}

/// `scaleTargetRef`: an apps/v1 Deployment or StatefulSet of the same namespace.
fn scale_target(kind: &str, api_version: Option<&str>, name: &str) -> Result<ScaleTarget, FieldError> {
    let kind = match kind {
        "Deployment" => Kind::Deployment,
        "StatefulSet" => Kind::StatefulSet,
        "" => {
            return Err(FieldError::new(
                "spec.scaleTargetRef.kind",
                "required field is missing, expected Deployment or StatefulSet",
            ))
        }
        other => {
            return Err(FieldError::new(
                "spec.scaleTargetRef.kind",
                format!("expected Deployment or StatefulSet (the kinds peer scales), got {other:?}"),
            ))
        }
    };
    match api_version {
        Some("apps/v1") => {}
        None | Some("") => {
            return Err(FieldError::new(
                "spec.scaleTargetRef.apiVersion",
                "required field is missing, expected apps/v1",
            ))
        }
        Some(other) => {
            return Err(FieldError::new(
                "spec.scaleTargetRef.apiVersion",
                format!("expected apps/v1, got {other:?}"),
            ))
        }
    }
    if name.is_empty() {
        return Err(FieldError::new("spec.scaleTargetRef.name", "required field is missing"));
    }
    if !is_dns_subdomain(name) {
        return Err(FieldError::new(
            "spec.scaleTargetRef.name",
            format!("expected the name of a {kind}: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, at most 253 characters, got {name:?}"),
        ));
    }
    Ok(ScaleTarget { kind, name: name.to_owned() })
}

/// The metric source fields of a `MetricSpec`, by the `type` that selects each.
const SOURCES: &[(&str, &str)] = &[
    ("Resource", "resource"),
    ("Pods", "pods"),
    ("Object", "object"),
    ("External", "external"),
    ("ContainerResource", "containerResource"),
];

/// `spec.metrics`: the Resource metrics peer implements; other types are warned about
/// and skipped.
fn metrics(list: Option<&[v2::MetricSpec]>, notes: &mut Vec<Note>) -> Result<Vec<MetricSpec>, FieldError> {
    let list = list.unwrap_or_default();
    if list.is_empty() {
        let target = MetricTarget::Utilization(DEFAULT_CPU_UTILIZATION);
        return Ok(vec![MetricSpec { resource: Resource::Cpu, target }]);
    }
    let mut out = Vec::new();
    for (i, m) in list.iter().enumerate() {
        let path = format!("spec.metrics[{i}]");
        let present: Vec<&str> = [
            m.resource.is_some().then_some("resource"),
            m.pods.is_some().then_some("pods"),
            m.object.is_some().then_some("object"),
            m.external.is_some().then_some("external"),
            m.container_resource.is_some().then_some("containerResource"),
        ]
        .into_iter()
        .flatten()
        .collect();
        let Some(&(_, field)) = SOURCES.iter().find(|(t, _)| *t == m.type_) else {
            let message = match m.type_.as_str() {
                "" => "required field is missing, expected Resource, Pods, Object, External or ContainerResource"
                    .to_owned(),
                other => format!("expected Resource, Pods, Object, External or ContainerResource, got {other:?}"),
            };
            return Err(FieldError::new(format!("{path}.type"), message));
        };
        if let Some(other) = present.iter().find(|f| **f != field) {
            return Err(FieldError::new(
                format!("{path}.{other}"),
                format!("must populate only the metric source of type {}", m.type_),
            ));
        }
        if present.is_empty() {
            return Err(FieldError::new(
                format!("{path}.{field}"),
                format!("required field is missing, expected the metric source of type {}", m.type_),
            ));
        }
        match &m.resource {
            Some(r) => out.extend(resource_metric(r, &format!("{path}.resource"), notes)?),
            None => notes.push((
                path,
                format!(
                    "metrics of type {} are not implemented by peer yet, ignored: peer scales on Resource metrics (cpu and memory)",
                    m.type_
                ),
            )),
        }
    }
    if out.is_empty() {
        return Err(FieldError::new(
            "spec.metrics",
            "no metric peer implements: expected at least one metric of type Resource on cpu or memory",
        ));
    }
    Ok(out)
}

/// One `Resource` metric, or `None` (with a warning) for a resource peer does not measure.
fn resource_metric(
    r: &v2::ResourceMetricSource,
    path: &str,
    notes: &mut Vec<Note>,
) -> Result<Option<MetricSpec>, FieldError> {
    let resource = match r.name.as_str() {
        "cpu" => Resource::Cpu,
        "memory" => Resource::Memory,
        "" => {
            return Err(FieldError::new(
                format!("{path}.name"),
                "required field is missing, expected cpu or memory",
            ))
        }
        other => {
            notes.push((
                format!("{path}.name"),
                format!("peer measures only cpu and memory, the metric on {other:?} is ignored"),
            ));
            return Ok(None);
        }
    };
    let t = &r.target;
    let target_path = format!("{path}.target");
    let target = match (t.average_utilization, &t.average_value) {
        (Some(_), Some(_)) => {
            return Err(FieldError::new(
                format!("{target_path}.averageValue"),
                "may not set both a target raw value and a target utilization",
            ))
        }
        (None, None) => {
            return Err(FieldError::new(
                format!("{target_path}.averageUtilization"),
                "required field is missing, expected averageUtilization (a percentage of the pods' requests) or averageValue",
            ))
        }
        (Some(p), None) => MetricTarget::Utilization(positive(
            p,
            &format!("{target_path}.averageUtilization"),
            "a percentage of at least 1",
        )?),
        (None, Some(Quantity(text))) => {
            let value_path = format!("{target_path}.averageValue");
            let value = match resource {
                Resource::Cpu => quantity::cpu_millis(text),
                Resource::Memory => quantity::memory_bytes(text),
            }
            .map_err(|m| FieldError::new(&value_path, m))?;
            if value == 0 {
                return Err(FieldError::new(value_path, format!("must be positive, got {text:?}")));
            }
            MetricTarget::AverageValue(value)
        }
    };
    // Kubernetes reads whichever of the two is set, whatever `type` says; peer does too
    // and says so when they disagree.
    let named = match target {
        MetricTarget::Utilization(_) => "Utilization",
        MetricTarget::AverageValue(_) => "AverageValue",
    };
    match t.type_.as_str() {
        "Utilization" | "AverageValue" | "Value" if t.type_ == named => {}
        "Utilization" | "AverageValue" | "Value" => notes.push((
            format!("{target_path}.type"),
            format!(
                "is {}, but the target set is {named}; the {named} target is used, as Kubernetes does",
                t.type_
            ),
        )),
        "" => {
            return Err(FieldError::new(
                format!("{target_path}.type"),
                "required field is missing, expected Utilization or AverageValue",
            ))
        }
        other => {
            return Err(FieldError::new(
                format!("{target_path}.type"),
                format!("expected Utilization or AverageValue, got {other:?}"),
            ))
        }
    }
    Ok(Some(MetricSpec { resource, target }))
}

/// `spec.behavior` with Kubernetes' defaults for what is left out.
fn behavior(b: Option<&v2::HorizontalPodAutoscalerBehavior>) -> Result<Behavior, FieldError> {
    let scale_up = b.and_then(|b| b.scale_up.as_ref());
    let scale_down = b.and_then(|b| b.scale_down.as_ref());
    Ok(Behavior {
        scale_up: rules(scale_up, ScalingRules::default_up(), "spec.behavior.scaleUp")?,
        scale_down: rules(scale_down, ScalingRules::default_down(), "spec.behavior.scaleDown")?,
    })
}

fn rules(
    r: Option<&v2::HPAScalingRules>,
    default: ScalingRules,
    path: &str,
) -> Result<ScalingRules, FieldError> {
    let Some(r) = r else { return Ok(default) };
    let mut out = default;
    if let Some(s) = r.stabilization_window_seconds {
        out.stabilization_window_seconds =
            u32::try_from(s).ok().filter(|_| s <= MAX_WINDOW_SECONDS).ok_or_else(|| {
                FieldError::new(
                    format!("{path}.stabilizationWindowSeconds"),
                    format!("expected a number of seconds from 0 to {MAX_WINDOW_SECONDS}, got {s}"),
                )
            })?;
    }
    if let Some(select) = &r.select_policy {
        out.select_policy = match select.as_str() {
            "Max" => SelectPolicy::Max,
            "Min" => SelectPolicy::Min,
            "Disabled" => SelectPolicy::Disabled,
            other => {
                return Err(FieldError::new(
                    format!("{path}.selectPolicy"),
                    format!("expected Max, Min or Disabled, got {other:?}"),
                ))
            }
        };
    }
    if let Some(policies) = &r.policies {
        if policies.is_empty() {
            return Err(FieldError::new(format!("{path}.policies"), "must specify at least one policy"));
        }
        out.policies = policies
            .iter()
            .enumerate()
            .map(|(i, p)| policy(p, &format!("{path}.policies[{i}]")))
            .collect::<Result<_, _>>()?;
    }
    if let Some(Quantity(text)) = &r.tolerance {
        // Thousandths: Kubernetes' MilliValue of the quantity (`0.05` is 50).
        let field = format!("{path}.tolerance");
        let milli = quantity::cpu_millis(text).map_err(|m| FieldError::new(&field, m))?;
        out.tolerance_milli = u32::try_from(milli)
            .map_err(|_| FieldError::new(&field, format!("expected a ratio such as 0.05, got {text:?}")))?;
    }
    Ok(out)
}

fn policy(p: &v2::HPAScalingPolicy, path: &str) -> Result<ScalingPolicy, FieldError> {
    let kind = match p.type_.as_str() {
        "Pods" => PolicyKind::Pods,
        "Percent" => PolicyKind::Percent,
        other => {
            return Err(FieldError::new(
                format!("{path}.type"),
                format!("expected Pods or Percent, got {other:?}"),
            ))
        }
    };
    let value = positive(p.value, &format!("{path}.value"), "an integer of at least 1")?;
    let period_seconds = u32::try_from(p.period_seconds)
        .ok()
        .filter(|&s| s >= 1 && p.period_seconds <= MAX_PERIOD_SECONDS)
        .ok_or_else(|| {
            FieldError::new(
                format!("{path}.periodSeconds"),
                format!(
                    "expected a number of seconds from 1 to {MAX_PERIOD_SECONDS}, got {}",
                    p.period_seconds
                ),
            )
        })?;
    Ok(ScalingPolicy { kind, value, period_seconds })
}
