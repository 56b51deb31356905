//! One metric's replica proposal: Kubernetes' `replica_calculator.go` (`GetResourceReplicas`
//! for Utilization targets, `GetRawResourceReplicas` for AverageValue), with its grouping of
//! pods into ready, unready and missing (`groupPods`) and its float arithmetic, so a proposal
//! is the one Kubernetes would make from the same numbers.
//!
//! Values are handled in milli-units as Kubernetes does (`Quantity.MilliValue()`):
//! millicores for cpu, thousandths of a byte for memory, so integer truncations happen
//! at the same places.

use std::collections::BTreeMap;

use super::{CurrentMetric, PodSample, CPU_INITIALIZATION_PERIOD_MS, INITIAL_READINESS_DELAY_MS};
use crate::spec::autoscaler::{MetricSpec, MetricTarget, Resource};

/// The usage ratio band, around 1, inside which nothing changes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Tolerances {
    pub down: f64,
    pub up: f64,
}

impl Tolerances {
    fn is_within(self, ratio: f64) -> bool {
        (1.0 - self.down) <= ratio && ratio <= (1.0 + self.up)
    }
}

/// What one metric proposes.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Proposal {
    pub replicas: u32,
    pub current: CurrentMetric,
}

/// Kubernetes' name of a metric in conditions and events.
pub(super) fn metric_name(spec: &MetricSpec) -> String {
    match spec.target {
        MetricTarget::Utilization(_) => {
            format!("{} resource utilization (percentage of request)", spec.resource)
        }
        MetricTarget::AverageValue(_) => format!("{} resource", spec.resource),
    }
}

/// The replicas `spec` proposes for a target of `current_replicas` with `pods`; the error
/// is worded like Kubernetes' ("failed to get cpu utilization: …").
pub(super) fn propose(
    spec: &MetricSpec,
    current_replicas: u32,
    pods: &[PodSample],
    tolerances: Tolerances,
    now_ms: u64,
) -> Result<Proposal, String> {
    let resource = spec.resource;
    match spec.target {
        MetricTarget::Utilization(target) => {
            utilization(resource, target, current_replicas, pods, tolerances, now_ms)
                .map_err(|e| format!("failed to get {resource} utilization: {e}"))
        }
        MetricTarget::AverageValue(target) => {
            average_value(resource, milli(resource, target), current_replicas, pods, tolerances, now_ms)
                .map_err(|e| format!("failed to get {resource} usage: {e}"))
        }
    }
}

fn milli(resource: Resource, value: u64) -> i128 {
    match resource {
        Resource::Cpu => i128::from(value),
        Resource::Memory => i128::from(value) * 1000,
    }
}

fn unmilli(resource: Resource, value: i128) -> u64 {
    let units = match resource {
        Resource::Cpu => value,
        Resource::Memory => value / 1000,
    };
    u64::try_from(units.max(0)).unwrap_or(u64::MAX)
}

/// `groupPods`: the pods whose sample counts now, the unready ones (left out, counted as 0
/// on a scale-up) and the ones without a sample.
struct Groups<'a> {
    /// Samples of the ready pods, by pod name, in milli-units.
    metrics: BTreeMap<&'a str, i128>,
    unready: Vec<&'a str>,
    missing: Vec<&'a str>,
}

fn group(pods: &[PodSample], resource: Resource, now_ms: u64) -> Groups<'_> {
    let mut groups = Groups { metrics: BTreeMap::new(), unready: Vec::new(), missing: Vec::new() };
    for pod in pods {
        if pod.pending {
            groups.unready.push(&pod.name);
            continue;
        }
        let Some(usage) = pod.usage.get(&resource) else {
            groups.missing.push(&pod.name);
            continue;
        };
        if resource == Resource::Cpu && !cpu_sample_counts(pod, usage.window_start_ms, now_ms) {
            groups.unready.push(&pod.name);
            continue;
        }
        groups.metrics.insert(&pod.name, milli(resource, usage.value));
    }
    groups
}

/// Kubernetes' rule against the cpu burst of starting pods: in its first 5 minutes a pod's
/// cpu sample counts only if the pod is Ready and the sample was taken wholly after it
/// became Ready; later, it counts unless the pod is unready and has never been Ready (its
/// readiness last changed within 30 s of its start).
fn cpu_sample_counts(pod: &PodSample, window_start_ms: u64, now_ms: u64) -> bool {
    let (Some(started), Some(changed)) = (pod.started_ms, pod.ready_changed_ms) else {
        return false;
    };
    if u128::from(started) + u128::from(CPU_INITIALIZATION_PERIOD_MS) > u128::from(now_ms) {
        pod.ready && window_start_ms >= changed
    } else {
        pod.ready || u128::from(started) + u128::from(INITIAL_READINESS_DELAY_MS) <= u128::from(changed)
    }
}

/// `GetResourceReplicas`.
fn utilization(
    resource: Resource,
    target: u32,
    current_replicas: u32,
    pods: &[PodSample],
    tolerances: Tolerances,
    now_ms: u64,
) -> Result<Proposal, String> {
    if pods.is_empty() {
        return Err("no pods returned by selector while calculating replica count".to_owned());
    }
    let Groups { mut metrics, unready, missing } = group(pods, resource, now_ms);
    if metrics.is_empty() {
        return Err("did not receive metrics for targeted pods (pods might be unready)".to_owned());
    }
    let mut requests = BTreeMap::new();
    for pod in pods {
        let Some(request) = pod.requests.get(&resource) else {
            return Err(format!("missing request for {resource} in pod {}", pod.name));
        };
        requests.insert(pod.name.as_str(), milli(resource, *request));
    }
    let ratio_of = |metrics: &BTreeMap<&str, i128>| utilization_ratio(metrics, &requests, target);
    let (ratio, percent, raw) = ratio_of(&metrics)?;
    let current = CurrentMetric { average_value: unmilli(resource, raw), average_utilization: Some(percent) };
    let ready_count = metrics.len();

    let scale_up_with_unready = !unready.is_empty() && ratio > 1.0;
    if !scale_up_with_unready && missing.is_empty() {
        let replicas =
            if tolerances.is_within(ratio) { current_replicas } else { ceil_replicas(ratio, ready_count) };
        return Ok(Proposal { replicas, current });
    }
    if ratio < 1.0 {
        // A scale-down assumes the missing pods use all they request (or the target, if
        // that is above 100 %).
        let fallback = i128::from(target.max(100));
        for &name in &missing {
            metrics.insert(name, requests[name] * fallback / 100);
        }
    } else if ratio > 1.0 {
        for &name in &missing {
            metrics.insert(name, 0);
        }
    }
    if scale_up_with_unready {
        for &name in &unready {
            metrics.insert(name, 0);
        }
    }
    let (new_ratio, _, _) = ratio_of(&metrics)?;
    Ok(Proposal {
        replicas: rebalanced(ratio, new_ratio, metrics.len(), current_replicas, tolerances),
        current,
    })
}

/// `GetRawResourceReplicas` (`calcPlainMetricReplicas`); `target` in milli-units.
fn average_value(
    resource: Resource,
    target: i128,
    current_replicas: u32,
    pods: &[PodSample],
    tolerances: Tolerances,
    now_ms: u64,
) -> Result<Proposal, String> {
    if pods.is_empty() {
        return Err("no pods returned by selector while calculating replica count".to_owned());
    }
    let Groups { mut metrics, unready, missing } = group(pods, resource, now_ms);
    if metrics.is_empty() {
        return Err("did not receive metrics for targeted pods (pods might be unready)".to_owned());
    }
    let (ratio, usage) = usage_ratio(&metrics, target);
    let current = CurrentMetric { average_value: unmilli(resource, usage), average_utilization: None };
    let ready_count = metrics.len();

    let scale_up_with_unready = !unready.is_empty() && ratio > 1.0;
    if !scale_up_with_unready && missing.is_empty() {
        let replicas =
            if tolerances.is_within(ratio) { current_replicas } else { ceil_replicas(ratio, ready_count) };
        return Ok(Proposal { replicas, current });
    }
    if ratio < 1.0 {
        // A scale-down assumes the missing pods use exactly the target.
        for &name in &missing {
            metrics.insert(name, target);
        }
    } else if ratio > 1.0 {
        for &name in &missing {
            metrics.insert(name, 0);
        }
    }
    if scale_up_with_unready {
        for &name in &unready {
            metrics.insert(name, 0);
        }
    }
    let (new_ratio, _) = usage_ratio(&metrics, target);
    Ok(Proposal {
        replicas: rebalanced(ratio, new_ratio, metrics.len(), current_replicas, tolerances),
        current,
    })
}

/// The proposal once missing and unready pods are filled in: no change when that brings
/// the ratio within tolerance or turns the direction around.
fn rebalanced(
    ratio: f64,
    new_ratio: f64,
    counted: usize,
    current_replicas: u32,
    tolerances: Tolerances,
) -> u32 {
    if tolerances.is_within(new_ratio) || (ratio < 1.0 && new_ratio > 1.0) || (ratio > 1.0 && new_ratio < 1.0)
    {
        return current_replicas;
    }
    let replicas = ceil_replicas(new_ratio, counted);
    if (new_ratio < 1.0 && replicas > current_replicas) || (new_ratio > 1.0 && replicas < current_replicas) {
        return current_replicas;
    }
    replicas
}

/// `int32(math.Ceil(ratio * count))`, saturating.
fn ceil_replicas(ratio: f64, count: usize) -> u32 {
    (ratio * count as f64).ceil() as u32
}

/// `GetResourceUtilizationRatio`: (usage ratio, utilization in percent truncated, average
/// value in milli-units).
fn utilization_ratio(
    metrics: &BTreeMap<&str, i128>,
    requests: &BTreeMap<&str, i128>,
    target: u32,
) -> Result<(f64, u32, i128), String> {
    let (mut total, mut requested, mut entries) = (0i128, 0i128, 0i128);
    for (name, value) in metrics {
        if let Some(request) = requests.get(name) {
            total += value;
            requested += request;
            entries += 1;
        }
    }
    if requested == 0 {
        return Err("no metrics returned matched known pods".to_owned());
    }
    let percent = u32::try_from(total * 100 / requested).unwrap_or(u32::MAX);
    Ok((f64::from(percent) / f64::from(target), percent, total / entries))
}

/// `GetMetricUsageRatio`: (usage ratio, average in milli-units); `metrics` is not empty.
fn usage_ratio(metrics: &BTreeMap<&str, i128>, target: i128) -> (f64, i128) {
    let total: i128 = metrics.values().sum();
    let average = total / metrics.len().max(1) as i128;
    (average as f64 / target as f64, average)
}
