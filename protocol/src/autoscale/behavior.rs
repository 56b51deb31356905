//! `spec.behavior`: from the metrics' proposal to the replica count, as Kubernetes'
//! `normalizeDesiredReplicasWithBehaviors` does it — first the stabilization window over
//! past recommendations, then the scaling policies over past scale events, then the
//! replica bounds — and the bookkeeping of both histories (`storeScaleEvent`).
//!
//! Times compare as Kubernetes' `After`/`Before` do: a record counts within a window of
//! `w` seconds when it is strictly newer than `now - w`.

use super::{
    reuse_or_push, AutoscalerState, Recommendation, ScaleEvent, MAX_RECOMMENDATIONS, MAX_SCALE_EVENTS,
};
use crate::spec::autoscaler::{Behavior, PolicyKind, ScalingRules, SelectPolicy};

/// The outcome of normalization, with the reasons Kubernetes gives in its conditions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Normalized {
    /// The recommendation after the stabilization window.
    pub stabilized: u32,
    /// The replica count after the policies and bounds too.
    pub desired: u32,
    /// AbleToScale: (reason, message).
    pub able: (&'static str, &'static str),
    /// ScalingLimited: (reason, message); limited when `desired != stabilized`.
    pub limited: (&'static str, &'static str),
}

/// Whether a record at `at_ms` is within `seconds` of `now_ms` (Kubernetes' `After(cutoff)`).
fn within(at_ms: u64, now_ms: u64, seconds: u32) -> bool {
    i128::from(at_ms) > i128::from(now_ms) - i128::from(seconds) * 1000
}

/// Whether a record at `at_ms` is older than `seconds` before `now_ms` (`Before(cutoff)`).
fn before(at_ms: u64, now_ms: u64, seconds: u32) -> bool {
    i128::from(at_ms) < i128::from(now_ms) - i128::from(seconds) * 1000
}

/// Applies the stabilization window, recording `proposal` in `state`, then the policies
/// and the bounds `min..=max`.
pub(super) fn normalize(
    behavior: &Behavior,
    min: u32,
    max: u32,
    current: u32,
    proposal: u32,
    state: &mut AutoscalerState,
    now_ms: u64,
) -> Normalized {
    let (stabilized, stabilized_reason) = stabilize(behavior, current, proposal, state, now_ms);
    let able = if stabilized != proposal {
        stabilized_reason
    } else {
        ("ReadyForNewScale", "recommended size matches current size")
    };
    let (desired, limited) = limit_rate(behavior, min, max, current, stabilized, state, now_ms);
    Normalized { stabilized, desired, able, limited }
}

/// `stabilizeRecommendationWithBehaviors`: the current count brought within the lowest
/// recommendation of the scale-up window and the highest of the scale-down window (both
/// windows include `proposal`), which is then recorded.
fn stabilize(
    behavior: &Behavior,
    current: u32,
    proposal: u32,
    state: &mut AutoscalerState,
    now_ms: u64,
) -> (u32, (&'static str, &'static str)) {
    let up_window = behavior.scale_up.stabilization_window_seconds;
    let down_window = behavior.scale_down.stabilization_window_seconds;
    let mut up = proposal;
    let mut down = proposal;
    for r in &state.recommendations {
        if within(r.at_ms, now_ms, up_window) {
            up = up.min(r.replicas);
        }
        if within(r.at_ms, now_ms, down_window) {
            down = down.max(r.replicas);
        }
    }
    let mut recommendation = current;
    if recommendation < up {
        recommendation = up;
    }
    if recommendation > down {
        recommendation = down;
    }
    let old = |r: &Recommendation| before(r.at_ms, now_ms, up_window) && before(r.at_ms, now_ms, down_window);
    let new = Recommendation { at_ms: now_ms, replicas: proposal };
    reuse_or_push(&mut state.recommendations, new, old, |r| r.at_ms, MAX_RECOMMENDATIONS);
    let reason = if proposal >= current {
        (
            "ScaleUpStabilized",
            "recent recommendations were lower than current one, applying the lowest recent recommendation",
        )
    } else {
        (
            "ScaleDownStabilized",
            "recent recommendations were higher than current one, applying the highest recent recommendation",
        )
    };
    (recommendation, reason)
}

/// `convertDesiredReplicasWithBehaviorRate`: the policies' limit for the direction, then
/// the bounds. Returns the count and the ScalingLimited (reason, message).
fn limit_rate(
    behavior: &Behavior,
    min: u32,
    max: u32,
    current: u32,
    desired: u32,
    state: &AutoscalerState,
    now_ms: u64,
) -> (u32, (&'static str, &'static str)) {
    let events = (&state.scale_up_events[..], &state.scale_down_events[..]);
    if desired > current {
        let limit = scale_up_limit(current, events, &behavior.scale_up, now_ms).max(i64::from(current));
        let (allowed, reason) = if i64::from(max) > limit {
            (
                limit,
                (
                    "ScaleUpLimit",
                    "the desired replica count is increasing faster than the maximum scale rate",
                ),
            )
        } else {
            (
                i64::from(max),
                ("TooManyReplicas", "the desired replica count is more than the maximum replica count"),
            )
        };
        if i64::from(desired) > allowed {
            return (to_u32(allowed), reason);
        }
    } else if desired < current {
        let limit = scale_down_limit(current, events, &behavior.scale_down, now_ms).min(i64::from(current));
        let (allowed, reason) = if i64::from(min) < limit {
            (
                limit,
                (
                    "ScaleDownLimit",
                    "the desired replica count is decreasing faster than the maximum scale rate",
                ),
            )
        } else {
            (
                i64::from(min),
                ("TooFewReplicas", "the desired replica count is less than the minimum replica count"),
            )
        };
        if i64::from(desired) < allowed {
            return (to_u32(allowed), reason);
        }
    }
    (desired, ("DesiredWithinRange", "the desired count is within the acceptable range"))
}

fn to_u32(v: i64) -> u32 {
    u32::try_from(v.max(0)).unwrap_or(u32::MAX)
}

/// Replicas added (`up`) and removed (`down`) within the last `period` seconds.
fn changes(events: (&[ScaleEvent], &[ScaleEvent]), period: u32, now_ms: u64) -> (i64, i64) {
    let sum = |list: &[ScaleEvent]| -> i64 {
        list.iter().filter(|e| within(e.at_ms, now_ms, period)).map(|e| i64::from(e.change)).sum()
    };
    (sum(events.0), sum(events.1))
}

/// `calculateScaleUpLimitWithScalingRules`: each policy allows growing from the count at
/// the start of its period; `Max` takes the largest of those limits, `Min` the smallest.
fn scale_up_limit(
    current: u32,
    events: (&[ScaleEvent], &[ScaleEvent]),
    rules: &ScalingRules,
    now_ms: u64,
) -> i64 {
    let (mut result, pick): (i64, fn(i64, i64) -> i64) = match rules.select_policy {
        SelectPolicy::Disabled => return i64::from(current),
        SelectPolicy::Min => (i64::MAX, i64::min),
        SelectPolicy::Max => (i64::MIN, i64::max),
    };
    for policy in &rules.policies {
        let (added, removed) = changes(events, policy.period_seconds, now_ms);
        let start = i64::from(current) - added + removed;
        let proposed = match policy.kind {
            PolicyKind::Pods => start + i64::from(policy.value),
            // Rounded up, or a small target could never grow.
            PolicyKind::Percent => (start as f64 * (1.0 + f64::from(policy.value) / 100.0)).ceil() as i64,
        };
        result = pick(result, proposed);
    }
    result
}

/// `calculateScaleDownLimitWithBehaviors`: each policy allows shrinking from the count at
/// the start of its period; `Max` takes the lowest of those limits (the largest change).
fn scale_down_limit(
    current: u32,
    events: (&[ScaleEvent], &[ScaleEvent]),
    rules: &ScalingRules,
    now_ms: u64,
) -> i64 {
    let (mut result, pick): (i64, fn(i64, i64) -> i64) = match rules.select_policy {
        SelectPolicy::Disabled => return i64::from(current),
        SelectPolicy::Min => (i64::MIN, i64::max),
        SelectPolicy::Max => (i64::MAX, i64::min),
    };
    for policy in &rules.policies {
        let (added, removed) = changes(events, policy.period_seconds, now_ms);
        let start = i64::from(current) - added + removed;
        let proposed = match policy.kind {
            PolicyKind::Pods => start - i64::from(policy.value),
            // Truncated, as Kubernetes' int32 conversion does.
            PolicyKind::Percent => (start as f64 * (1.0 - f64::from(policy.value) / 100.0)) as i64,
        };
        result = pick(result, proposed);
    }
    result
}

/// `storeScaleEvent`: records a change from `previous` to `new` replicas, in the place
/// of an event older than the direction's longest policy period if there is one. Such an
/// event may still count for the other direction's longer period until it is replaced,
/// as in Kubernetes.
pub(super) fn record_scale(
    behavior: &Behavior,
    state: &mut AutoscalerState,
    previous: u32,
    new: u32,
    now_ms: u64,
) {
    let (events, change, longest) = if new > previous {
        (&mut state.scale_up_events, new - previous, behavior.scale_up.longest_period_seconds())
    } else {
        (&mut state.scale_down_events, previous - new, behavior.scale_down.longest_period_seconds())
    };
    let outdated = |e: &ScaleEvent| before(e.at_ms, now_ms, longest);
    reuse_or_push(events, ScaleEvent { at_ms: now_ms, change }, outdated, |e| e.at_ms, MAX_SCALE_EVENTS);
}
