//! Horizontal pod autoscaling as a pure function: [`decide`] takes an autoscaler, the
//! target's replica count, a sample of each of its pods, the history of earlier decisions
//! ([`AutoscalerState`]) and the time, and returns the replica count the target should
//! have ([`Decision`]) with the new history. No clock, no I/O: whichever node decides
//! passes the state it was handed and stores the one returned, so the decision carries on
//! unchanged when another node takes over.
//!
//! The semantics are Kubernetes' HPA controller (`pkg/controller/podautoscaler`):
//! - each metric proposes `ceil(ratio × pods)`, `ratio` = current ÷ target, unless the
//!   ratio is within the tolerance (10 %) of 1; pods without a sample count as 0 on a
//!   scale-up and as the target on a scale-down, unready pods (cpu only, see
//!   [`PodSample`]) as 0 on a scale-up and not at all on a scale-down, and filling them in
//!   never turns the direction around (`replicas.rs`);
//! - the largest proposal of all metrics wins; a metric that cannot be computed is skipped
//!   on a scale-up, and stops a scale-down;
//! - the stabilization windows, the scaling policies over past scale events and the
//!   min/max bounds shape the result (`behavior.rs`);
//! - a target at 0 replicas is not autoscaled; one outside min/max is brought back first.
//!
//! Kubernetes uses the older rules (a scale-up limit of `max(2 × current, 4)`, no
//! policies) for an autoscaler without `spec.behavior`; peer always applies `behavior`,
//! with Kubernetes' defaults where the manifest leaves it out. Ratios use `f64` exactly as
//! Kubernetes' `float64` arithmetic does, so the same inputs give the same count on every
//! node and in Kubernetes.

mod behavior;
mod replicas;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::spec::autoscaler::{MetricTarget, Resource};
use crate::spec::HorizontalPodAutoscaler;
use replicas::Tolerances;

/// Kubernetes' `--horizontal-pod-autoscaler-cpu-initialization-period` default (5 min).
pub const CPU_INITIALIZATION_PERIOD_MS: u64 = 5 * 60 * 1000;
/// Kubernetes' `--horizontal-pod-autoscaler-initial-readiness-delay` default (30 s).
pub const INITIAL_READINESS_DELAY_MS: u64 = 30 * 1000;
/// How often Kubernetes decides (`--horizontal-pod-autoscaler-sync-period`); callers
/// should call [`decide`] about as often.
pub const SYNC_PERIOD_MS: u64 = 15 * 1000;
/// Recommendations kept at most: an hour's window (the longest allowed) at one decision
/// every 3.5 s. Only a caller deciding far more often than [`SYNC_PERIOD_MS`] reaches it;
/// then the oldest is replaced.
pub const MAX_RECOMMENDATIONS: usize = 1024;
/// Scale events kept at most per direction (policy periods are at most 30 minutes, and a
/// decision makes at most one).
pub const MAX_SCALE_EVENTS: usize = 1024;

/// One pod of the target, as the node that decides sees it. Pods being deleted and failed
/// pods are left out by the caller; names are unique.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodSample {
    pub name: String,
    /// Not all containers started yet (Kubernetes' phase Pending): counted as unready for
    /// every resource.
    pub pending: bool,
    /// The pod's Ready condition.
    pub ready: bool,
    /// When the pod started (Kubernetes' `status.startTime`); `None` counts as unready for cpu.
    pub started_ms: Option<u64>,
    /// When the Ready condition last changed either way; `None` (no condition yet) counts
    /// as unready for cpu.
    pub ready_changed_ms: Option<u64>,
    /// The latest sample of each resource; a resource absent here is a missing metric.
    pub usage: BTreeMap<Resource, Usage>,
    /// The pod's request of each resource: the sum over its containers, absent when a
    /// container requests none (a Utilization metric of that resource then fails).
    pub requests: BTreeMap<Resource, u64>,
}

/// A resource's use, averaged over a window (metrics-server's sample).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Millicores (cpu) or bytes (memory).
    pub value: u64,
    /// When the window the value was averaged over began. A cpu sample of a pod in its
    /// first 5 minutes counts only if this is not before the pod became Ready.
    pub window_start_ms: u64,
}

/// What one decision found and wants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// The target's replica count the decision started from.
    pub current_replicas: u32,
    /// The replica count the target should have; equal to `current_replicas` when nothing
    /// is to change.
    pub desired_replicas: u32,
    /// When the count changes, the message of Kubernetes' `SuccessfulRescale` event
    /// (`New size: 5; reason: cpu resource utilization (percentage of request) above
    /// target`); otherwise why it does not.
    pub reason: String,
    /// One entry per metric of the spec, in order (`kubectl describe hpa`'s Metrics).
    pub metrics: Vec<MetricStatus>,
    /// AbleToScale, ScalingActive and ScalingLimited as far as known (as in the state).
    /// A rescale is reported as done (AbleToScale `SucceededRescale`), as the caller is
    /// expected to write the count.
    pub conditions: Vec<Condition>,
}

impl Decision {
    /// Whether the caller should set the target's replica count to `desired_replicas`.
    pub fn rescale(&self) -> bool {
        self.desired_replicas != self.current_replicas
    }
}

/// A metric's current value, or why it could not be computed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricStatus {
    pub resource: Resource,
    pub target: MetricTarget,
    pub current: Option<CurrentMetric>,
    /// Kubernetes' wording, e.g. `failed to get cpu utilization: missing request for cpu in pod web-0`.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CurrentMetric {
    /// The average use per counted pod: millicores or bytes.
    pub average_value: u64,
    /// The use as a percentage of the counted pods' requests (Utilization targets only).
    pub average_utilization: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ConditionType {
    /// Whether the autoscaler can change the target's scale now, or is held back.
    AbleToScale,
    /// Whether metrics could be computed and autoscaling is on.
    ScalingActive,
    /// Whether the desired count was cut by the bounds or the policies.
    ScalingLimited,
}

/// A Kubernetes `HorizontalPodAutoscalerCondition`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Condition {
    pub kind: ConditionType,
    pub status: bool,
    /// CamelCase, e.g. `ScaleDownStabilized`.
    pub reason: String,
    pub message: String,
    /// When `status` last changed.
    pub last_transition_ms: u64,
}

/// What must outlive a decision, and a change of the deciding node: the recommendations
/// of the stabilization windows, the scale events of the policy periods, and the status.
/// Bounded as Kubernetes bounds it: a new entry takes the place of one older than the
/// longest window (or policy period), so a list holds about one entry per decision
/// (recommendations) or per change (events) of the longest window; never more than
/// [`MAX_RECOMMENDATIONS`] and [`MAX_SCALE_EVENTS`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AutoscalerState {
    /// Each decision's proposal before stabilization (in no particular order). Empty only
    /// before the first decision, which records the current count first.
    pub recommendations: Vec<Recommendation>,
    /// Changes of the count (in no particular order).
    pub scale_up_events: Vec<ScaleEvent>,
    pub scale_down_events: Vec<ScaleEvent>,
    /// When the count was last changed (`status.lastScaleTime`).
    pub last_scale_ms: Option<u64>,
    pub conditions: Vec<Condition>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recommendation {
    pub at_ms: u64,
    pub replicas: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaleEvent {
    pub at_ms: u64,
    /// Replicas added (scale-up) or removed (scale-down).
    pub change: u32,
}

impl AutoscalerState {
    /// The condition of `kind`, if it was ever set.
    pub fn condition(&self, kind: ConditionType) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.kind == kind)
    }

    /// Kubernetes' `setCondition`: the transition time moves only when the status does.
    fn set_condition(
        &mut self,
        kind: ConditionType,
        status: bool,
        reason: &str,
        message: String,
        now_ms: u64,
    ) {
        let reason = reason.to_owned();
        match self.conditions.iter_mut().find(|c| c.kind == kind) {
            Some(c) => {
                if c.status != status {
                    c.last_transition_ms = now_ms;
                }
                (c.status, c.reason, c.message) = (status, reason, message);
            }
            None => {
                self.conditions.push(Condition { kind, status, reason, message, last_transition_ms: now_ms })
            }
        }
    }
}

/// Adds `item` to `list` as Kubernetes does: in the place of the last entry that `stale`
/// says no longer counts, or at the end when there is none — so a list only grows while
/// all its entries are recent. Past `max` entries the oldest is replaced, a guard against
/// callers deciding far more often than [`SYNC_PERIOD_MS`].
fn reuse_or_push<T: Copy>(
    list: &mut Vec<T>,
    item: T,
    stale: impl Fn(&T) -> bool,
    at: impl Fn(&T) -> u64,
    max: usize,
) {
    if let Some(i) = list.iter().rposition(&stale) {
        list[i] = item;
    } else if list.len() >= max {
        if let Some((i, _)) = list.iter().enumerate().min_by_key(|(_, e)| at(e)) {
            list[i] = item;
        }
    } else {
        list.push(item);
    }
}

/// One decision of autoscaler `hpa` for a target now at `current_replicas` (its spec's
/// count) with `pods`, given the `state` the previous decision returned (or the default).
/// Returns the decision and the state to store for the next one; call it about every
/// [`SYNC_PERIOD_MS`], with `now_ms` from one clock that only moves forward.
pub fn decide(
    hpa: &HorizontalPodAutoscaler,
    current_replicas: u32,
    pods: &[PodSample],
    state: &AutoscalerState,
    now_ms: u64,
) -> (Decision, AutoscalerState) {
    use ConditionType::*;
    let mut next = state.clone();
    if next.recommendations.is_empty() {
        next.recommendations.push(Recommendation { at_ms: now_ms, replicas: current_replicas });
    }
    let get_scale = "the HPA controller was able to get the target's current scale".to_owned();
    next.set_condition(AbleToScale, true, "SucceededGetScale", get_scale, now_ms);

    let current = current_replicas;
    let mut metrics = Vec::new();
    let outcome = if current == 0 {
        let message = "scaling is disabled since the replica count of the target is zero";
        next.set_condition(ScalingActive, false, "ScalingDisabled", message.to_owned(), now_ms);
        Outcome::Keep(message.to_owned())
    } else if current > hpa.max_replicas {
        Outcome::Rescale(hpa.max_replicas, "Current number of replicas above Spec.MaxReplicas".to_owned())
    } else if current < hpa.min_replicas {
        Outcome::Rescale(hpa.min_replicas, "Current number of replicas below Spec.MinReplicas".to_owned())
    } else {
        let (computed, statuses) = compute_replicas_for_metrics(hpa, current, pods, now_ms);
        metrics = statuses;
        match computed {
            Err((reason, message)) => {
                next.set_condition(ScalingActive, false, reason, message.clone(), now_ms);
                Outcome::Keep(message)
            }
            Ok((proposal, metric)) => {
                let found =
                    format!("the HPA was able to successfully calculate a replica count from {metric}");
                next.set_condition(ScalingActive, true, "ValidMetricFound", found, now_ms);
                let why = if proposal > current {
                    format!("{metric} above target")
                } else {
                    "All metrics below target".to_owned()
                };
                let n = behavior::normalize(
                    &hpa.behavior,
                    hpa.min_replicas,
                    hpa.max_replicas,
                    current,
                    proposal,
                    &mut next,
                    now_ms,
                );
                let (able_reason, able_message) = n.able;
                next.set_condition(AbleToScale, true, able_reason, able_message.to_owned(), now_ms);
                let (limited_reason, limited_message) = n.limited;
                let limited = n.desired != n.stabilized;
                next.set_condition(
                    ScalingLimited,
                    limited,
                    limited_reason,
                    limited_message.to_owned(),
                    now_ms,
                );
                if n.desired != current {
                    Outcome::Rescale(n.desired, why)
                } else if proposal == current {
                    Outcome::Keep("recommended size matches current size".to_owned())
                } else if n.stabilized == current {
                    Outcome::Keep(able_message.to_owned())
                } else {
                    Outcome::Keep(limited_message.to_owned())
                }
            }
        }
    };
    let (desired, reason) = match outcome {
        Outcome::Rescale(desired, why) => {
            let rescaled = format!("the HPA controller was able to update the target scale to {desired}");
            next.set_condition(AbleToScale, true, "SucceededRescale", rescaled, now_ms);
            behavior::record_scale(&hpa.behavior, &mut next, current, desired, now_ms);
            next.last_scale_ms = Some(now_ms);
            (desired, format!("New size: {desired}; reason: {why}"))
        }
        Outcome::Keep(why) => (current, why),
    };
    let decision = Decision {
        current_replicas: current,
        desired_replicas: desired,
        reason,
        metrics,
        conditions: next.conditions.clone(),
    };
    (decision, next)
}

/// What a decision comes to, with why.
enum Outcome {
    /// Set the count to this.
    Rescale(u32, String),
    /// Leave the count as it is.
    Keep(String),
}

/// `computeReplicasForMetrics`: the largest proposal and the metric that made it, or the
/// ScalingActive (reason, message) when no scaling may happen; and every metric's status.
#[allow(clippy::type_complexity)]
fn compute_replicas_for_metrics(
    hpa: &HorizontalPodAutoscaler,
    current: u32,
    pods: &[PodSample],
    now_ms: u64,
) -> (Result<(u32, String), (&'static str, String)>, Vec<MetricStatus>) {
    let tolerances = Tolerances {
        down: f64::from(hpa.behavior.scale_down.tolerance_milli) / 1000.0,
        up: f64::from(hpa.behavior.scale_up.tolerance_milli) / 1000.0,
    };
    let mut best: Option<(u32, String)> = None;
    let mut first_error = None;
    let mut statuses = Vec::new();
    for spec in &hpa.metrics {
        let mut status =
            MetricStatus { resource: spec.resource, target: spec.target, current: None, error: None };
        match replicas::propose(spec, current, pods, tolerances, now_ms) {
            Ok(p) => {
                status.current = Some(p.current);
                if best.as_ref().is_none_or(|(replicas, _)| *replicas == 0 || p.replicas > *replicas) {
                    best = Some((p.replicas, replicas::metric_name(spec)));
                }
            }
            Err(error) => {
                first_error.get_or_insert_with(|| error.clone());
                status.error = Some(error);
            }
        }
        statuses.push(status);
    }
    let result = match (best, first_error) {
        (Some((replicas, metric)), None) => Ok((replicas, metric)),
        // Some metric failed: scale up on the others, but never down.
        (Some((replicas, metric)), Some(_)) if replicas >= current => Ok((replicas, metric)),
        (_, error) => {
            let error = error.unwrap_or_else(|| "no metrics specified".to_owned());
            Err((
                "FailedGetResourceMetric",
                format!("the HPA was unable to compute the replica count: {error}"),
            ))
        }
    };
    (result, statuses)
}
