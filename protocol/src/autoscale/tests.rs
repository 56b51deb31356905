//! The autoscaler against the worked examples of Kubernetes' documentation (the HPA
//! walkthrough and "Algorithm details", "Configurable scaling behavior") and its
//! controller's rules, with time as plain `now_ms` values. Timelines are snapshots;
//! refresh with `UPDATE_EXPECT=1 cargo test -p protocol autoscale` after checking them.

use std::collections::BTreeMap;
use std::fmt::Write;

use expect_test::{expect, Expect};

use super::replicas::{propose, Tolerances};
use super::*;
use crate::spec::autoscaler::{
    Behavior, MetricSpec, MetricTarget, PolicyKind, Resource, ScaleTarget, ScalingPolicy, ScalingRules,
    SelectPolicy,
};
use crate::spec::{Kind, ObjectKey};

/// A time long after the test pods started and became Ready (past cpu initialization).
const T0: u64 = 3_600_000;
const TOLERANCE: Tolerances = Tolerances { down: 0.1, up: 0.1 };

fn hpa(min: u32, max: u32, metrics: &[MetricSpec]) -> HorizontalPodAutoscaler {
    HorizontalPodAutoscaler {
        key: ObjectKey {
            kind: Kind::HorizontalPodAutoscaler,
            namespace: "default".into(),
            name: "web".into(),
        },
        labels: BTreeMap::new(),
        scale_target: ScaleTarget { kind: Kind::Deployment, name: "web".into() },
        min_replicas: min,
        max_replicas: max,
        metrics: metrics.to_vec(),
        behavior: Behavior::default(),
    }
}

fn cpu(target: MetricTarget) -> MetricSpec {
    MetricSpec { resource: Resource::Cpu, target }
}

fn memory(target: MetricTarget) -> MetricSpec {
    MetricSpec { resource: Resource::Memory, target }
}

/// A Ready pod, started long ago, using `usage` millicores (None: no sample) of `request`.
fn pod(name: &str, usage: Option<u64>, request: u64) -> PodSample {
    PodSample {
        name: name.into(),
        pending: false,
        ready: true,
        started_ms: Some(0),
        ready_changed_ms: Some(10_000),
        usage: usage
            .map(|value| (Resource::Cpu, Usage { value, window_start_ms: T0 - 30_000 }))
            .into_iter()
            .collect(),
        requests: BTreeMap::from([(Resource::Cpu, request)]),
    }
}

/// The pod unready since its start.
fn unready(p: PodSample) -> PodSample {
    PodSample { ready: false, ready_changed_ms: Some(10_000), ..p }
}

fn proposal(spec: MetricSpec, current: u32, pods: &[PodSample]) -> Result<u32, String> {
    propose(&spec, current, pods, TOLERANCE, T0).map(|p| p.replicas)
}

#[test]
fn the_ratio_of_current_to_target_scales_the_pods() {
    // "if the current metric value is 200m, and the desired value is 100m, the number of
    // replicas will be doubled … If the current value is instead 50m, you'll halve".
    let at = |m| [pod("a", Some(m), 500), pod("b", Some(m), 500), pod("c", Some(m), 500)];
    assert_eq!(proposal(cpu(MetricTarget::AverageValue(100)), 3, &at(200)), Ok(6));
    assert_eq!(proposal(cpu(MetricTarget::AverageValue(100)), 3, &at(50)), Ok(2), "ceil(1.5)");
    // The same as a utilization: 200m of 100m requested is 200 % against a 100 % target.
    let requested = |m| [pod("a", Some(m), 100), pod("b", Some(m), 100)];
    assert_eq!(proposal(cpu(MetricTarget::Utilization(100)), 2, &requested(200)), Ok(4));
}

#[test]
fn a_ratio_within_the_tolerance_keeps_the_count() {
    let four = |m| {
        [pod("a", Some(m), 1000), pod("b", Some(m), 1000), pod("c", Some(m), 1000), pod("d", Some(m), 1000)]
    };
    let target = cpu(MetricTarget::Utilization(50));
    assert_eq!(proposal(target.clone(), 4, &four(525)), Ok(4), "52 % of 50 %: 1.04");
    assert_eq!(proposal(target.clone(), 4, &four(550)), Ok(4), "55 % of 50 %: exactly 1.1 is within");
    assert_eq!(proposal(target.clone(), 4, &four(560)), Ok(5), "56 %: ceil(1.12 × 4)");
    assert_eq!(proposal(target.clone(), 4, &four(450)), Ok(4), "45 %: exactly 0.9 is within");
    assert_eq!(proposal(target, 4, &four(440)), Ok(4), "44 %: ceil(0.88 × 4) = 4");
    // Utilization is truncated to a whole percent before the ratio, as Kubernetes does:
    // 1/3 of the request is 33 %, so 66 % against 50 % is 1.32, not 1.333….
    let thirds = [pod("a", Some(200), 300), pod("b", Some(200), 300), pod("c", Some(200), 300)];
    let p = propose(&cpu(MetricTarget::Utilization(50)), 3, &thirds, TOLERANCE, T0).expect("computes");
    assert_eq!(p.current, CurrentMetric { average_value: 200, average_utilization: Some(66) });
    assert_eq!(p.replicas, 4, "ceil(1.32 × 3) = ceil(3.96)");
    // A configured scale-up tolerance of 1 % (behavior.scaleUp.tolerance) reacts to 1.04.
    let tight = Tolerances { down: 0.1, up: 0.01 };
    assert_eq!(
        propose(&cpu(MetricTarget::Utilization(50)), 4, &four(525), tight, T0).map(|p| p.replicas),
        Ok(5)
    );
}

#[test]
fn missing_and_unready_pods_make_the_change_smaller_never_reversed() {
    let target = cpu(MetricTarget::Utilization(50));
    // Four pods at a 50 % target: 100 % and 50 % of their requests, one without a sample,
    // one unready. The two measured pods are at 75 % (ratio 1.5), but on a scale-up the
    // other two count as 0: 150m of 400m is 37 %, a ratio below 1, so the direction would
    // turn around and nothing changes.
    let pods = [
        pod("a", Some(100), 100),
        pod("b", Some(50), 100),
        pod("c", None, 100),
        unready(pod("d", Some(90), 100)),
    ];
    assert_eq!(proposal(target.clone(), 4, &pods), Ok(4));
    // With more load the scale-up goes ahead, on all four pods: 300m of 400m is 75 %.
    let pods = [
        pod("a", Some(200), 100),
        pod("b", Some(100), 100),
        pod("c", None, 100),
        unready(pod("d", Some(90), 100)),
    ];
    assert_eq!(proposal(target.clone(), 4, &pods), Ok(6), "ceil(1.5 × 4)");
    // On a scale-down a missing pod counts as using all it requests and unready pods are
    // left out: 10m, 10m and 100m of 300m is 40 %, so ceil(0.8 × 3) = 3 rather than
    // ceil(0.2 × 2) = 1 from the two measured pods alone.
    let pods = [
        pod("a", Some(10), 100),
        pod("b", Some(10), 100),
        pod("c", None, 100),
        unready(pod("d", Some(0), 100)),
    ];
    assert_eq!(proposal(target.clone(), 4, &pods), Ok(3));
    // A missing pod counted at its request can also bring the ratio within tolerance: 40m
    // of 200m is 20 % (0.4), but 140m of 300m is 46 % (0.92).
    let pods = [pod("a", Some(20), 100), pod("b", Some(20), 100), pod("c", None, 100)];
    assert_eq!(proposal(target, 3, &pods), Ok(3));
    // With an AverageValue target a missing pod counts as the target on a scale-down.
    let pods = [pod("a", Some(20), 100), pod("b", Some(20), 100), pod("c", None, 100), pod("d", None, 100)];
    assert_eq!(
        proposal(cpu(MetricTarget::AverageValue(100)), 4, &pods),
        Ok(3),
        "(20+20+100+100)/4 = 60m: ceil(2.4)"
    );
    // A pending pod is unready for every resource.
    let mut pending = pod("c", None, 100);
    pending.pending = true;
    let pods = [pod("a", Some(300), 100), pod("b", Some(300), 100), pending];
    assert_eq!(proposal(cpu(MetricTarget::Utilization(100)), 3, &pods), Ok(6), "600m over 3 pods: 200 %");
}

#[test]
fn cpu_of_starting_pods_counts_only_once_ready() {
    let target = cpu(MetricTarget::AverageValue(100));
    let now = T0;
    let started = |p: PodSample, started_ms: u64, ready_changed_ms: u64, window_start_ms: u64| PodSample {
        started_ms: Some(started_ms),
        ready_changed_ms: Some(ready_changed_ms),
        usage: BTreeMap::from([(Resource::Cpu, Usage { value: 900, window_start_ms })]),
        ..p
    };
    let steady = pod("a", Some(100), 100);
    // Started 2 minutes ago, Ready for a minute, sampled over the last 30 s: counts.
    let counted = started(pod("b", None, 100), now - 120_000, now - 60_000, now - 30_000);
    assert_eq!(proposal(target.clone(), 2, &[steady.clone(), counted]), Ok(10), "avg 500m: ceil(5 × 2)");
    // The same pod sampled over a window that began before it became Ready: its startup
    // burst is ignored, and it counts as 0 on the scale-up the steady pod does not ask for.
    let burst = started(pod("b", None, 100), now - 120_000, now - 20_000, now - 30_000);
    assert_eq!(proposal(target.clone(), 2, &[steady.clone(), burst]), Ok(2));
    // After 5 minutes, a pod that was Ready once counts even while unready…
    let flapping =
        PodSample { ready: false, ..started(pod("b", None, 100), now - 600_000, now - 20_000, now - 30_000) };
    assert_eq!(proposal(target.clone(), 2, &[steady.clone(), flapping]), Ok(10));
    // …but not one that has been unready since its start.
    let never = PodSample {
        ready: false,
        ..started(pod("b", None, 100), now - 600_000, now - 590_000, now - 30_000)
    };
    assert_eq!(proposal(target, 2, &[steady.clone(), never.clone()]), Ok(2));
    // Readiness does not matter for memory.
    let mut never_mem = never;
    never_mem.usage = BTreeMap::from([(Resource::Memory, Usage { value: 900 << 20, window_start_ms: now })]);
    let mut steady_mem = steady;
    steady_mem.usage = BTreeMap::from([(Resource::Memory, Usage { value: 100 << 20, window_start_ms: now })]);
    let mem = memory(MetricTarget::AverageValue(100 << 20));
    assert_eq!(proposal(mem, 2, &[steady_mem, never_mem]), Ok(10));
}

#[test]
fn metrics_that_cannot_be_computed_say_why() {
    let util = cpu(MetricTarget::Utilization(50));
    let mut no_request = pod("web-2", Some(10), 100);
    no_request.requests.clear();
    assert_eq!(
        proposal(util.clone(), 2, &[pod("web-1", Some(10), 100), no_request.clone()]),
        Err("failed to get cpu utilization: missing request for cpu in pod web-2".to_owned())
    );
    // An AverageValue target needs no request.
    assert_eq!(proposal(cpu(MetricTarget::AverageValue(10)), 1, &[no_request]), Ok(1));
    assert_eq!(
        proposal(util.clone(), 2, &[pod("a", None, 100), unready(pod("b", Some(5), 100))]),
        Err("failed to get cpu utilization: did not receive metrics for targeted pods (pods might be unready)".to_owned())
    );
    assert_eq!(
        proposal(cpu(MetricTarget::AverageValue(10)), 2, &[]),
        Err("failed to get cpu usage: no pods returned by selector while calculating replica count"
            .to_owned())
    );
    assert_eq!(
        proposal(util, 1, &[pod("a", Some(5), 0)]),
        Err("failed to get cpu utilization: no metrics returned matched known pods".to_owned())
    );
}

/// `n` Ready pods sharing `load` millicores, each requesting 100m.
fn spread(n: u32, load: u64) -> Vec<PodSample> {
    let n64 = u64::from(n.max(1));
    (0..n)
        .map(|i| pod(&format!("web-{i}"), Some(load / n64 + u64::from(u64::from(i) < load % n64)), 100))
        .collect()
}

/// `pods`, each also using `bytes` of memory.
fn with_memory(mut pods: Vec<PodSample>, bytes: u64) -> Vec<PodSample> {
    for p in &mut pods {
        p.usage.insert(Resource::Memory, Usage { value: bytes, window_start_ms: T0 - 30_000 });
    }
    pods
}

/// Runs a decision at each step (seconds after T0, the cpu load in millicores shared by
/// the current pods) against an AverageValue target of 100m, so each proposal is about
/// load / 100; the target takes every desired count at once. Renders one line per step:
/// seconds, current → desired, the proposal (when the metrics gave one) and the reason.
fn timeline(hpa: &HorizontalPodAutoscaler, start: u32, steps: &[(u64, u64)], expect: Expect) {
    let mut state = AutoscalerState::default();
    let mut current = start;
    let mut out = String::new();
    for &(t, load) in steps {
        let now = T0 + t * 1000;
        let (d, next) = decide(hpa, current, &spread(current, load), &state, now);
        let computed = !d.metrics.is_empty() && d.metrics.iter().all(|m| m.error.is_none());
        // The proposal is the recommendation recorded now (after the first decision's record
        // of the current count).
        let proposal = match next.recommendations.iter().rev().find(|r| r.at_ms == now) {
            Some(r) if computed && r.at_ms == now => format!("{:>3}", r.replicas),
            _ => "  -".to_owned(),
        };
        writeln!(out, "t={t:<4} {current:>3} -> {:>3} ({proposal}) {}", d.desired_replicas, d.reason)
            .expect("writing to a String");
        current = d.desired_replicas;
        state = next;
    }
    expect.assert_eq(&out);
}

fn per_100m() -> MetricSpec {
    cpu(MetricTarget::AverageValue(100))
}

#[test]
fn scale_down_takes_the_highest_recommendation_of_the_last_5_minutes() {
    let hpa = hpa(1, 20, &[per_100m()]);
    let steps = [
        (0, 1000),
        (60, 500),
        (120, 400),
        (200, 600),
        (299, 300),
        (301, 300),
        (361, 300),
        (501, 300),
        (520, 900),
        (536, 900),
    ];
    timeline(
        &hpa,
        10,
        &steps,
        expect![[r#"
            t=0     10 ->  10 ( 10) recommended size matches current size
            t=60    10 ->  10 (  5) recent recommendations were higher than current one, applying the highest recent recommendation
            t=120   10 ->  10 (  4) recent recommendations were higher than current one, applying the highest recent recommendation
            t=200   10 ->  10 (  6) recent recommendations were higher than current one, applying the highest recent recommendation
            t=299   10 ->  10 (  3) recent recommendations were higher than current one, applying the highest recent recommendation
            t=301   10 ->   6 (  3) New size: 6; reason: All metrics below target
            t=361    6 ->   6 (  3) recent recommendations were higher than current one, applying the highest recent recommendation
            t=501    6 ->   3 (  3) New size: 3; reason: All metrics below target
            t=520    3 ->   7 (  9) New size: 7; reason: cpu resource above target
            t=536    7 ->   9 (  9) New size: 9; reason: cpu resource above target
        "#]],
    );
}

fn rules(select: SelectPolicy, window: u32, policies: &[(PolicyKind, u32, u32)]) -> ScalingRules {
    ScalingRules {
        stabilization_window_seconds: window,
        select_policy: select,
        policies: policies
            .iter()
            .map(|&(kind, value, period_seconds)| ScalingPolicy { kind, value, period_seconds })
            .collect(),
        tolerance_milli: 100,
    }
}

#[test]
fn scale_up_policies_percent_or_pods_max_or_min() {
    // Kubernetes' default scale-up: 100 % or 4 pods per 15 s, whichever allows more.
    let mut max = hpa(1, 30, &[per_100m()]);
    let steps = [(0, 2000), (5, 2000), (15, 2000), (30, 2000), (45, 2000)];
    timeline(
        &max,
        2,
        &steps,
        expect![[r#"
            t=0      2 ->   6 ( 20) New size: 6; reason: cpu resource above target
            t=5      6 ->   6 ( 20) the desired replica count is increasing faster than the maximum scale rate
            t=15     6 ->  12 ( 20) New size: 12; reason: cpu resource above target
            t=30    12 ->  20 ( 20) New size: 20; reason: cpu resource above target
            t=45    20 ->  20 ( 20) recommended size matches current size
        "#]],
    );
    max.behavior.scale_up.select_policy = SelectPolicy::Min;
    timeline(
        &max,
        2,
        &steps,
        expect![[r#"
            t=0      2 ->   4 ( 20) New size: 4; reason: cpu resource above target
            t=5      4 ->   4 ( 20) the desired replica count is increasing faster than the maximum scale rate
            t=15     4 ->   8 ( 20) New size: 8; reason: cpu resource above target
            t=30     8 ->  12 ( 20) New size: 12; reason: cpu resource above target
            t=45    12 ->  16 ( 20) New size: 16; reason: cpu resource above target
        "#]],
    );
}

#[test]
fn scale_down_policies_the_documented_example() {
    // "scaleDown: policies: Pods 4 per 60 s, Percent 10 per 60 s": from 80 replicas towards
    // 10, 8 go first (10 % of 80), then 10 % of what is left until that is under 4 pods.
    let mut h = hpa(1, 100, &[per_100m()]);
    h.behavior.scale_down =
        rules(SelectPolicy::Max, 0, &[(PolicyKind::Pods, 4, 60), (PolicyKind::Percent, 10, 60)]);
    let steps: Vec<(u64, u64)> =
        [0, 30, 60, 61].into_iter().chain((2..12).map(|i| i * 61)).map(|t| (t, 1000)).collect();
    timeline(
        &h,
        80,
        &steps,
        expect![[r#"
            t=0     80 ->  72 ( 10) New size: 72; reason: All metrics below target
            t=30    72 ->  72 ( 10) the desired replica count is decreasing faster than the maximum scale rate
            t=60    72 ->  64 ( 10) New size: 64; reason: All metrics below target
            t=61    64 ->  64 ( 10) the desired replica count is decreasing faster than the maximum scale rate
            t=122   64 ->  57 ( 10) New size: 57; reason: All metrics below target
            t=183   57 ->  51 ( 10) New size: 51; reason: All metrics below target
            t=244   51 ->  45 ( 10) New size: 45; reason: All metrics below target
            t=305   45 ->  40 ( 10) New size: 40; reason: All metrics below target
            t=366   40 ->  36 ( 10) New size: 36; reason: All metrics below target
            t=427   36 ->  32 ( 10) New size: 32; reason: All metrics below target
            t=488   32 ->  28 ( 10) New size: 28; reason: All metrics below target
            t=549   28 ->  24 ( 10) New size: 24; reason: All metrics below target
            t=610   24 ->  20 ( 10) New size: 20; reason: All metrics below target
            t=671   20 ->  16 ( 10) New size: 16; reason: All metrics below target
        "#]],
    );
}

#[test]
fn a_policy_period_starts_from_the_count_before_every_change_within_it() {
    // 10 → 5 by a scale-down, then load: the scale-up policies start from the 10 of the
    // period's start, not from 5 (100 % of 10 is 20), as Kubernetes' periodStartReplicas.
    let mut h = hpa(1, 30, &[per_100m()]);
    h.behavior.scale_down.stabilization_window_seconds = 0;
    timeline(
        &h,
        10,
        &[(0, 500), (5, 3000), (20, 3000)],
        expect![[r#"
        t=0     10 ->   5 (  5) New size: 5; reason: All metrics below target
        t=5      5 ->  20 ( 30) New size: 20; reason: cpu resource above target
        t=20    20 ->  30 ( 30) New size: 30; reason: cpu resource above target
    "#]],
    );
}

#[test]
fn disabled_directions_never_move() {
    let mut h = hpa(1, 20, &[per_100m()]);
    h.behavior.scale_down.select_policy = SelectPolicy::Disabled;
    timeline(
        &h,
        10,
        &[(0, 100), (400, 100), (800, 3000)],
        expect![[r#"
            t=0     10 ->  10 (  1) recent recommendations were higher than current one, applying the highest recent recommendation
            t=400   10 ->  10 (  1) the desired replica count is decreasing faster than the maximum scale rate
            t=800   10 ->  20 ( 30) New size: 20; reason: cpu resource above target
        "#]],
    );
    let mut h = hpa(1, 20, &[per_100m()]);
    h.behavior.scale_up.select_policy = SelectPolicy::Disabled;
    h.behavior.scale_down.stabilization_window_seconds = 0;
    timeline(
        &h,
        10,
        &[(0, 3000), (15, 500)],
        expect![[r#"
            t=0     10 ->  10 ( 30) the desired replica count is increasing faster than the maximum scale rate
            t=15    10 ->   5 (  5) New size: 5; reason: All metrics below target
        "#]],
    );
}

#[test]
fn bounds_clamp_the_count() {
    let mut h = hpa(2, 10, &[per_100m()]);
    h.behavior.scale_down.stabilization_window_seconds = 0;
    // Far above: limited by maxReplicas; far below: by minReplicas; out of bounds at the
    // start: brought back first, without looking at metrics.
    timeline(
        &h,
        6,
        &[(0, 10_000), (15, 10_000), (30, 10), (45, 10)],
        expect![[r#"
            t=0      6 ->  10 (100) New size: 10; reason: cpu resource above target
            t=15    10 ->  10 (100) the desired replica count is more than the maximum replica count
            t=30    10 ->   2 (  1) New size: 2; reason: All metrics below target
            t=45     2 ->   2 (  1) the desired replica count is less than the minimum replica count
        "#]],
    );
    timeline(
        &h,
        15,
        &[(0, 1500)],
        expect![[r#"
            t=0     15 ->  10 (  -) New size: 10; reason: Current number of replicas above Spec.MaxReplicas
        "#]],
    );
    timeline(
        &h,
        1,
        &[(0, 100)],
        expect![[r#"
            t=0      1 ->   2 (  -) New size: 2; reason: Current number of replicas below Spec.MinReplicas
        "#]],
    );
}

/// The conditions, one per line.
fn conditions(d: &Decision) -> String {
    d.conditions
        .iter()
        .map(|c| format!("{:?} {} {} @{}: {}\n", c.kind, c.status, c.reason, c.last_transition_ms, c.message))
        .collect()
}

#[test]
fn a_target_at_zero_is_not_autoscaled() {
    let h = hpa(1, 10, &[per_100m()]);
    let (d, state) = decide(&h, 0, &[], &AutoscalerState::default(), T0);
    assert_eq!((d.desired_replicas, d.rescale()), (0, false));
    assert_eq!(state.last_scale_ms, None);
    expect![[r#"
        AbleToScale true SucceededGetScale @3600000: the HPA controller was able to get the target's current scale
        ScalingActive false ScalingDisabled @3600000: scaling is disabled since the replica count of the target is zero
    "#]].assert_eq(&conditions(&d));
}

#[test]
fn conditions_and_metric_statuses_read_like_kubectl_describe() {
    let h = hpa(1, 10, &[cpu(MetricTarget::Utilization(50)), memory(MetricTarget::AverageValue(64 << 20))]);
    let (d, state) = decide(&h, 3, &with_memory(spread(3, 600), 32 << 20), &AutoscalerState::default(), T0);
    expect![[r#"
        New size: 7; reason: cpu resource utilization (percentage of request) above target
        AbleToScale true SucceededRescale @3600000: the HPA controller was able to update the target scale to 7
        ScalingActive true ValidMetricFound @3600000: the HPA was able to successfully calculate a replica count from cpu resource utilization (percentage of request)
        ScalingLimited true ScaleUpLimit @3600000: the desired replica count is increasing faster than the maximum scale rate
    "#]].assert_eq(&format!("{}\n{}", d.reason, conditions(&d)));
    expect![[r#"[{"resource":"Cpu","target":{"Utilization":50},"current":{"average_value":200,"average_utilization":200},"error":null},{"resource":"Memory","target":{"AverageValue":67108864},"current":{"average_value":33554432,"average_utilization":null},"error":null}]"#]].assert_eq(&serde_json::to_string(&d.metrics).expect("JSON"));
    // A minute later the load is the same, spread over 7 pods: 85 % (1.7) wants 12,
    // limited to 10 by maxReplicas; then 10 is held at the bound, and conditions that keep
    // their status keep their transition time.
    let (d, state) = decide(&h, 7, &with_memory(spread(7, 600), 32 << 20), &state, T0 + 60_000);
    assert_eq!(
        d.reason,
        "New size: 10; reason: cpu resource utilization (percentage of request) above target"
    );
    let (d, state) = decide(&h, 10, &with_memory(spread(10, 600), 32 << 20), &state, T0 + 120_000);
    expect![[r#"
        the desired replica count is more than the maximum replica count
        AbleToScale true ReadyForNewScale @3600000: recommended size matches current size
        ScalingActive true ValidMetricFound @3600000: the HPA was able to successfully calculate a replica count from cpu resource utilization (percentage of request)
        ScalingLimited true TooManyReplicas @3600000: the desired replica count is more than the maximum replica count
    "#]].assert_eq(&format!("{}\n{}", d.reason, conditions(&d)));
    // With the load gone, the scale-down waits for the window; ScalingLimited turns False.
    let (d, _) = decide(&h, 10, &with_memory(spread(10, 100), 32 << 20), &state, T0 + 180_000);
    expect![[r#"
        recent recommendations were higher than current one, applying the highest recent recommendation
        AbleToScale true ScaleDownStabilized @3600000: recent recommendations were higher than current one, applying the highest recent recommendation
        ScalingActive true ValidMetricFound @3600000: the HPA was able to successfully calculate a replica count from memory resource
        ScalingLimited false DesiredWithinRange @3780000: the desired count is within the acceptable range
    "#]].assert_eq(&format!("{}\n{}", d.reason, conditions(&d)));
}

#[test]
fn a_failing_metric_stops_a_scale_down_but_not_a_scale_up() {
    // Memory utilization needs memory requests, which these pods lack.
    let h = hpa(1, 10, &[per_100m(), memory(MetricTarget::Utilization(50))]);
    let (up, _) = decide(&h, 2, &with_memory(spread(2, 800), 64 << 20), &AutoscalerState::default(), T0);
    assert_eq!(up.desired_replicas, 6, "cpu alone proposes 8, the policies allow 6");
    assert_eq!(
        up.metrics[1].error.as_deref(),
        Some("failed to get memory utilization: missing request for memory in pod web-0")
    );
    let mut no_window = h.clone();
    no_window.behavior.scale_down.stabilization_window_seconds = 0;
    let (down, state) =
        decide(&no_window, 6, &with_memory(spread(6, 100), 64 << 20), &AutoscalerState::default(), T0);
    assert_eq!((down.desired_replicas, down.rescale()), (6, false));
    expect![[r#"
        the HPA was unable to compute the replica count: failed to get memory utilization: missing request for memory in pod web-0
        AbleToScale true SucceededGetScale @3600000: the HPA controller was able to get the target's current scale
        ScalingActive false FailedGetResourceMetric @3600000: the HPA was unable to compute the replica count: failed to get memory utilization: missing request for memory in pod web-0
    "#]].assert_eq(&format!("{}\n{}", down.reason, conditions(&down)));
    assert!(state.scale_down_events.is_empty());
}

#[test]
fn the_largest_proposal_of_several_metrics_wins() {
    let h = hpa(1, 20, &[cpu(MetricTarget::Utilization(50)), memory(MetricTarget::AverageValue(100 << 20))]);
    let mut pods = spread(4, 400);
    for p in &mut pods {
        p.usage.insert(Resource::Memory, Usage { value: 150 << 20, window_start_ms: T0 - 30_000 });
        p.requests.insert(Resource::Memory, 256 << 20);
    }
    // cpu: 100 % of requests against 50 %: 8; memory: 150Mi against 100Mi: 6.
    let (d, _) = decide(&h, 4, &pods, &AutoscalerState::default(), T0);
    assert_eq!(d.desired_replicas, 8);
    assert_eq!(
        d.reason,
        "New size: 8; reason: cpu resource utilization (percentage of request) above target"
    );
    for p in &mut pods {
        p.usage.insert(Resource::Memory, Usage { value: 300 << 20, window_start_ms: T0 - 30_000 });
    }
    let (d, _) = decide(&h, 4, &pods, &AutoscalerState::default(), T0);
    // Now memory proposes 12, limited to 8 by the scale-up policies; the reason names it.
    assert_eq!(
        (d.desired_replicas, d.reason.as_str()),
        (8, "New size: 8; reason: memory resource above target")
    );
}

#[test]
fn the_state_carries_a_decision_over_to_another_node_and_stays_small() {
    let h = hpa(1, 20, &[per_100m()]);
    let loads = [1000, 500, 400, 600, 300, 300, 300, 900, 900, 200];
    let run = |handover: bool| {
        let (mut state, mut current, mut out) = (AutoscalerState::default(), 10, Vec::new());
        for (i, load) in loads.iter().enumerate() {
            let (d, next) = decide(&h, current, &spread(current, *load), &state, T0 + i as u64 * 61_000);
            state = next;
            if handover {
                // Stored in the desired state, read back by whichever node decides next.
                let bytes = crate::codec::encode(&state).expect("encodes");
                state = crate::codec::decode(&bytes, crate::codec::MAX_MESSAGE).expect("decodes");
                let json = serde_json::to_string(&state).expect("JSON");
                state = serde_json::from_str(&json).expect("parses");
            }
            current = d.desired_replicas;
            out.push(d);
        }
        out
    };
    assert_eq!(run(true), run(false));

    // Deciding every 15 s for a day keeps 5 minutes of recommendations (21 of them, and
    // the first decision's record of the count it started from until it is reused) and
    // one policy period of events (an event exactly 15 s old is not yet outdated).
    let (mut state, mut current, mut sizes) = (AutoscalerState::default(), 5, (0, 0, 0));
    for i in 0..5760u64 {
        let load = if i % 40 < 20 { 1500 } else { 200 };
        let (d, next) = decide(&h, current, &spread(current, load), &state, T0 + i * 15_000);
        (state, current) = (next, d.desired_replicas);
        sizes = sizes.max((
            state.recommendations.len(),
            state.scale_up_events.len(),
            state.scale_down_events.len(),
        ));
    }
    assert!(sizes.0 <= 22 && sizes.1 <= 2 && sizes.2 <= 2, "{sizes:?}");
    assert!(crate::codec::encode(&state).expect("encodes").len() < 1024);
}
