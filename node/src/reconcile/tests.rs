//! Plain-value tests of the reconciler: desired + observed + now in, plan out.

use std::collections::BTreeMap;

use expect_test::{expect, Expect};
use protocol::spec::{Container, Strategy};

use super::*;

fn template(policy: RestartPolicy, image: &str) -> PodTemplate {
    PodTemplate {
        labels: BTreeMap::from([("app".into(), "web".into())]),
        containers: vec![Container::new("web", image)],
        restart_policy: policy,
        termination_grace_period_seconds: 30,
        host_network: false,
        scheduling: Default::default(),
        image_pull_secrets: vec![],
    }
}

fn deployment(name: &str, replicas: u32, image: &str) -> Workload {
    Workload {
        key: ObjectKey { kind: Kind::Deployment, namespace: "default".into(), name: name.into() },
        labels: BTreeMap::new(),
        replicas,
        selector: BTreeMap::from([("app".into(), "web".into())]),
        strategy: Strategy::Recreate,
        pod_management: Default::default(),
        rollout: Default::default(),
        template: template(RestartPolicy::Always, image),
    }
}

fn running(d: &DesiredPod) -> ObservedPod {
    ObservedPod {
        namespace: d.namespace.clone(),
        name: d.name.clone(),
        workload: d.workload.clone(),
        revision: d.revision.clone(),
        template: d.template.clone(),
        deleting: false,
        created_at_ms: 0,
        ip: None,
        ready_since_ms: None,
        containers: BTreeMap::from([(
            "web".to_string(),
            ObservedContainer {
                state: ContainerState::Running { pid: 100, start_time: 1, started_at_ms: 0 },
                restart_count: 0,
                failures: 0,
                last_termination: None,
                started: true,
                ready: true,
            },
        )]),
    }
}

fn observe(pods: impl IntoIterator<Item = ObservedPod>) -> BTreeMap<String, ObservedPod> {
    pods.into_iter().map(|p| (pod_key(&p.namespace, &p.name), p)).collect()
}

fn render(plan: &Plan) -> String {
    let mut out = String::new();
    for a in &plan.actions {
        let line = match a {
            Action::CreatePod(d) => format!("create {}/{}", d.namespace, d.name),
            Action::StartContainer { pod, container } => format!("start {pod} {container}"),
            Action::DeletePod { pod, grace } => format!("delete {pod} grace={}s", grace.as_secs()),
        };
        out.push_str(&line);
        out.push('\n');
    }
    out.push_str(&format!("wake_at={:?}\n", plan.wake_at_ms));
    out
}

fn check(desired: &[DesiredPod], observed: &BTreeMap<String, ObservedPod>, now_ms: u64, expect: Expect) {
    expect.assert_eq(&render(&reconcile(desired, observed, now_ms)));
}

fn exited(pod: &mut ObservedPod, code: i32, finished_at_ms: u64, failures: u32) {
    let c = pod.containers.get_mut("web").expect("test pod has a web container");
    c.failures = failures;
    c.state = ContainerState::Terminated(Terminated {
        exit_code: Some(code),
        signal: None,
        reason: if code == 0 { "Completed".into() } else { "Error".into() },
        started_at_ms: 0,
        finished_at_ms,
    });
}

#[test]
fn creates_missing_replicas() {
    let desired = desired_pods([&deployment("web", 3, "peer-demo:latest")], &[], &Default::default(), &[]);
    check(
        &desired,
        &BTreeMap::new(),
        0,
        expect![[r#"
            create default/web-a30497eb60-0
            create default/web-a30497eb60-1
            create default/web-a30497eb60-2
            wake_at=None
        "#]],
    );
}

#[test]
fn steady_state_does_nothing() {
    let desired = desired_pods([&deployment("web", 2, "peer-demo:latest")], &[], &Default::default(), &[]);
    let observed = observe(desired.iter().map(running));
    check(
        &desired,
        &observed,
        5,
        expect![[r#"
        wake_at=None
    "#]],
    );
}

#[test]
fn scale_down_removes_highest_indices() {
    let three = desired_pods([&deployment("web", 3, "peer-demo:latest")], &[], &Default::default(), &[]);
    let observed = observe(three.iter().map(running));
    let one = desired_pods([&deployment("web", 1, "peer-demo:latest")], &[], &Default::default(), &[]);
    check(
        &one,
        &observed,
        0,
        expect![[r#"
            delete default/web-a30497eb60-1 grace=30s
            delete default/web-a30497eb60-2 grace=30s
            wake_at=None
        "#]],
    );
}

/// What every node's claims would show of `pods` (all Ready).
fn seen(pods: &[DesiredPod]) -> BTreeMap<(String, String), Vec<protocol::rollout::Copy>> {
    let keys: Vec<String> = pods.iter().map(|p| pod_key(&p.namespace, &p.name)).collect();
    protocol::rollout::index_copies(
        keys.iter().zip(pods).map(|(k, p)| (k.as_str(), p.revision.as_str(), true)),
    )
}

#[test]
fn template_change_follows_the_rollout_step() {
    let v1 = desired_pods([&deployment("web", 2, "peer-demo:v1")], &[], &Default::default(), &[]);
    let observed = observe(v1.iter().map(running));
    // Recreate: while old copies are seen, none of the new revision is wanted.
    let v2 = desired_pods([&deployment("web", 2, "peer-demo:v2")], &[], &seen(&v1), &[]);
    check(
        &v2,
        &observed,
        0,
        expect![[r#"
            delete default/web-22837cb63a-0 grace=30s
            delete default/web-22837cb63a-1 grace=30s
            wake_at=None
        "#]],
    );
    let v2 = desired_pods([&deployment("web", 2, "peer-demo:v2")], &[], &Default::default(), &[]);
    check(
        &v2,
        &BTreeMap::new(),
        0,
        expect![[r#"
            create default/web-ae50b0b9c1-0
            create default/web-ae50b0b9c1-1
            wake_at=None
        "#]],
    );
    // RollingUpdate with maxSurge 1, maxUnavailable 0: one new replica starts, both old
    // ones stay (wanted, but never created again where they are gone).
    let mut rolling = deployment("web", 2, "peer-demo:v2");
    rolling.strategy = Strategy::RollingUpdate {
        max_surge: protocol::spec::IntOrPercent::Int(1),
        max_unavailable: protocol::spec::IntOrPercent::Int(0),
    };
    let v2 = desired_pods([&rolling], &[], &seen(&v1), &[]);
    check(
        &v2,
        &observed,
        0,
        expect![[r#"
            create default/web-ae50b0b9c1-0
            wake_at=None
        "#]],
    );
    check(
        &v2,
        &BTreeMap::new(),
        0,
        expect![[r#"
            create default/web-ae50b0b9c1-0
            wake_at=None
        "#]],
    );
}

#[test]
fn first_restart_is_immediate_then_backs_off() {
    let desired = desired_pods([&deployment("web", 1, "peer-demo:latest")], &[], &Default::default(), &[]);
    let mut pod = running(&desired[0]);
    exited(&mut pod, 1, 1_000, 0);
    check(
        &desired,
        &observe([pod.clone()]),
        1_000,
        expect![[r#"
            start default/web-a30497eb60-0 web
            wake_at=None
        "#]],
    );
    // Second crash: 10 s back-off, then 20 s, capped at 300 s.
    exited(&mut pod, 1, 2_000, 1);
    check(
        &desired,
        &observe([pod.clone()]),
        2_000,
        expect![[r#"
        wake_at=Some(12000)
    "#]],
    );
    check(
        &desired,
        &observe([pod.clone()]),
        12_000,
        expect![[r#"
            start default/web-a30497eb60-0 web
            wake_at=None
        "#]],
    );
    assert_eq!(backoff(2), Duration::from_secs(20));
    assert_eq!(backoff(6), Duration::from_secs(300));
    assert_eq!(backoff(40), Duration::from_secs(300));
}

#[test]
fn restart_policies() {
    let mut never = deployment("job", 1, "peer-demo:latest");
    never.key.kind = Kind::Pod;
    never.template.restart_policy = RestartPolicy::Never;
    let desired = desired_pods([&never], &[], &Default::default(), &[]);
    let mut pod = running(&desired[0]);
    exited(&mut pod, 1, 0, 0);
    check(
        &desired,
        &observe([pod.clone()]),
        0,
        expect![[r#"
        wake_at=None
    "#]],
    );
    assert_eq!(pod_phase(&pod), "Failed");

    let mut on_failure = never.clone();
    on_failure.template.restart_policy = RestartPolicy::OnFailure;
    let desired = desired_pods([&on_failure], &[], &Default::default(), &[]);
    let mut pod = running(&desired[0]);
    exited(&mut pod, 0, 0, 0);
    check(
        &desired,
        &observe([pod.clone()]),
        0,
        expect![[r#"
        wake_at=None
    "#]],
    );
    assert_eq!(pod_phase(&pod), "Succeeded");
    exited(&mut pod, 2, 0, 0);
    check(
        &desired,
        &observe([pod.clone()]),
        0,
        expect![[r#"
        start default/job web
        wake_at=None
    "#]],
    );
}

#[test]
fn removed_workload_deletes_its_pods_once() {
    let desired = desired_pods([&deployment("web", 1, "peer-demo:latest")], &[], &Default::default(), &[]);
    let mut pod = running(&desired[0]);
    check(
        &[],
        &observe([pod.clone()]),
        0,
        expect![[r#"
            delete default/web-a30497eb60-0 grace=30s
            wake_at=None
        "#]],
    );
    pod.deleting = true;
    check(
        &[],
        &observe([pod]),
        0,
        expect![[r#"
        wake_at=None
    "#]],
    );
}

#[test]
fn waiting_container_is_retried_when_due() {
    let desired = desired_pods([&deployment("web", 1, "missing:v1")], &[], &Default::default(), &[]);
    let mut pod = running(&desired[0]);
    pod.containers.get_mut("web").expect("web").state = ContainerState::Waiting {
        reason: "ErrImageNeverPull".into(),
        message: "image not found".into(),
        retry_at_ms: 10_000,
    };
    check(
        &desired,
        &observe([pod.clone()]),
        9_000,
        expect![[r#"
        wake_at=Some(10000)
    "#]],
    );
    check(
        &desired,
        &observe([pod]),
        10_000,
        expect![[r#"
            start default/web-33f5a7c4c2-0 web
            wake_at=None
        "#]],
    );
}

fn names(pods: &[DesiredPod]) -> Vec<String> {
    pods.iter().map(|p| format!("{}{}", p.name, if p.create { "" } else { " (kept)" })).collect()
}

#[test]
fn a_paused_deployment_keeps_running_its_rolled_out_revision() {
    let v1 = deployment("web", 2, "peer-demo:v1");
    let running = desired_pods([&v1], &[], &Default::default(), &[]);
    // Paused, then edited: v1's template is in the history, so v1 stays in charge and
    // still scales (3 replicas), while nothing of v2 starts.
    let mut v2 = deployment("web", 3, "peer-demo:v2");
    v2.rollout.paused = true;
    protocol::rollout::carry_history(Some(&v1), &mut v2);
    let paused = desired_pods([&v2], &[], &seen(&running), &[]);
    assert_eq!(names(&paused), ["web-22837cb63a-0", "web-22837cb63a-1", "web-22837cb63a-2"]);
    assert!(paused.iter().all(|p| p.template == v1.template));
    // Resumed: the rollout to v2 starts (Recreate here: the old copies go first).
    v2.rollout.paused = false;
    let resumed = desired_pods([&v2], &[], &seen(&running), &[]);
    assert!(resumed.is_empty(), "{:?}", names(&resumed));
}

#[test]
fn a_disruption_budget_slows_a_rollout_down() {
    let v1 = deployment("web", 4, "peer-demo:v1");
    let running = desired_pods([&v1], &[], &Default::default(), &[]);
    let mut v2 = deployment("web", 4, "peer-demo:v2");
    v2.strategy = Strategy::RollingUpdate {
        max_surge: protocol::spec::IntOrPercent::Int(0),
        max_unavailable: protocol::spec::IntOrPercent::Int(2),
    };
    let free = desired_pods([&v2], &[], &seen(&running), &[]);
    assert_eq!(free.iter().filter(|p| !p.create).count(), 2, "maxUnavailable 2 lets two go");
    let budget = protocol::spec::DisruptionBudget {
        key: ObjectKey { kind: Kind::PodDisruptionBudget, namespace: "default".into(), name: "web".into() },
        labels: BTreeMap::new(),
        selector: BTreeMap::from([("app".into(), "web".into())]),
        budget: protocol::spec::Budget::MinAvailable(protocol::spec::IntOrPercent::Int(3)),
    };
    let held = desired_pods([&v2], &[], &seen(&running), &[&budget]);
    assert_eq!(
        held.iter().filter(|p| !p.create).count(),
        3,
        "minAvailable 3 of 4 lets one go: {:?}",
        names(&held)
    );
}
