//! Pod status as Kubernetes shows it, derived from an observed pod: the STATUS column,
//! readiness, conditions and container states. Pure: `now_ms` comes in.

use serde::Serialize;
use serde_json::{json, Value};

use crate::reconcile::{self, ContainerState, ObservedContainer, ObservedPod};

/// The STATUS column of `peer get pods`, as kubectl shows it.
pub fn pod_status(pod: &ObservedPod, now_ms: u64) -> String {
    if pod.deleting {
        return "Terminating".into();
    }
    for c in pod.containers.values() {
        match &c.state {
            ContainerState::Waiting { reason, .. } => return reason.clone(),
            ContainerState::Creating => return "ContainerCreating".into(),
            ContainerState::Terminated(_) if in_backoff(pod, c, now_ms) => return "CrashLoopBackOff".into(),
            _ => {}
        }
    }
    reconcile::pod_phase(pod).into()
}

/// A terminated container waiting out its restart back-off.
fn in_backoff(pod: &ObservedPod, c: &ObservedContainer, now_ms: u64) -> bool {
    matches!(c.state, ContainerState::Terminated(_))
        && reconcile::restart_due_ms(pod.template.restart_policy, c).is_some_and(|due| due > now_ms)
}

/// Whether a container counts as ready: running, started, and its readiness probe passes.
pub fn container_ready(c: &ObservedContainer) -> bool {
    matches!(c.state, ContainerState::Running { .. }) && c.started && c.ready
}

/// Ready containers and all containers, for the READY column (`1/2`).
pub fn ready_counts(pod: &ObservedPod) -> (usize, usize) {
    (pod.containers.values().filter(|c| container_ready(c)).count(), pod.containers.len())
}

/// Kubernetes' Ready condition: every container is ready (and the pod is not stopping).
pub fn pod_ready(pod: &ObservedPod) -> bool {
    let (ready, all) = ready_counts(pod);
    !pod.deleting && all > 0 && ready == all
}

/// One of the pod's conditions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Condition {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// PodScheduled, Initialized, ContainersReady and Ready, in Kubernetes' order. A pod on
/// this node is scheduled; peer has no init containers, so it is initialized.
pub fn conditions(pod: &ObservedPod) -> Vec<Condition> {
    let unready: Vec<&str> =
        pod.containers.iter().filter(|(_, c)| !container_ready(c)).map(|(n, _)| n.as_str()).collect();
    let truth = |b: bool| if b { "True" } else { "False" };
    let ready = pod_ready(pod);
    let (reason, message) = if ready {
        (None, None)
    } else if pod.deleting {
        (Some("PodTerminating"), Some("the pod is being stopped".to_owned()))
    } else {
        (Some("ContainersNotReady"), Some(format!("containers with unready status: [{}]", unready.join(" "))))
    };
    let simple = |kind| Condition { kind, status: "True", reason: None, message: None };
    vec![
        simple("PodScheduled"),
        simple("Initialized"),
        Condition { kind: "ContainersReady", status: truth(ready), reason, message: message.clone() },
        Condition { kind: "Ready", status: truth(ready), reason, message },
    ]
}

/// A container's state in Kubernetes' shape: `{running: …}`, `{waiting: {reason,
/// message}}` or `{terminated: {exitCode, reason, …}}`.
pub fn container_state(pod: &ObservedPod, c: &ObservedContainer, now_ms: u64) -> Value {
    match &c.state {
        ContainerState::Creating => json!({"waiting": {"reason": "ContainerCreating"}}),
        ContainerState::Running { pid, started_at_ms, .. } => {
            json!({"running": {"startedAtMs": started_at_ms, "pid": pid}})
        }
        ContainerState::Stopping => json!({"running": {"stopping": true}}),
        ContainerState::Waiting { reason, message, retry_at_ms } => json!({"waiting": {
            "reason": reason,
            "message": message,
            "retryInSecs": retry_at_ms.saturating_sub(now_ms).div_ceil(1000),
        }}),
        ContainerState::Terminated(t) if in_backoff(pod, c, now_ms) => {
            let due = reconcile::restart_due_ms(pod.template.restart_policy, c).unwrap_or(now_ms);
            json!({"waiting": {
                "reason": "CrashLoopBackOff",
                "message": format!(
                    "back-off {}s restarting failed container (exit code {})",
                    reconcile::backoff(c.failures).as_secs(),
                    t.exit_code.map_or("unknown".to_owned(), |c| c.to_string()),
                ),
                "retryInSecs": due.saturating_sub(now_ms).div_ceil(1000),
            }})
        }
        ContainerState::Terminated(t) => json!({"terminated": terminated(t)}),
    }
}

/// A terminated container's details.
pub fn terminated(t: &reconcile::Terminated) -> Value {
    json!({
        "exitCode": t.exit_code,
        "signal": t.signal,
        "reason": t.reason,
        "startedAtMs": t.started_at_ms,
        "finishedAtMs": t.finished_at_ms,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use protocol::spec::{Kind, ObjectKey, PodTemplate, RestartPolicy};

    use super::*;
    use crate::reconcile::Terminated;

    fn pod(containers: &[(&str, ContainerState, bool)]) -> ObservedPod {
        ObservedPod {
            namespace: "default".into(),
            name: "web".into(),
            workload: ObjectKey { kind: Kind::Pod, namespace: "default".into(), name: "web".into() },
            revision: "r1".into(),
            template: PodTemplate {
                labels: BTreeMap::new(),
                containers: vec![],
                restart_policy: RestartPolicy::Always,
                termination_grace_period_seconds: 30,
                host_network: false,
                scheduling: Default::default(),
                image_pull_secrets: vec![],
            },
            deleting: false,
            created_at_ms: 0,
            ip: None,
            ready_since_ms: None,
            containers: containers
                .iter()
                .map(|(n, state, ready)| {
                    let mut c = ObservedContainer::creating();
                    c.state = state.clone();
                    c.started = *ready;
                    c.ready = *ready;
                    (n.to_string(), c)
                })
                .collect(),
        }
    }

    fn running() -> ContainerState {
        ContainerState::Running { pid: 7, start_time: 1, started_at_ms: 1000 }
    }

    fn render(p: &ObservedPod, now: u64) -> String {
        let conditions: Vec<String> = conditions(p)
            .iter()
            .map(|c| {
                format!(
                    "{}={}{}",
                    c.kind,
                    c.status,
                    c.message.as_ref().map_or(String::new(), |m| format!(" ({m})"))
                )
            })
            .collect();
        let states: Vec<String> =
            p.containers.values().map(|c| container_state(p, c, now).to_string()).collect();
        format!(
            "{} {:?} {} | {}",
            pod_status(p, now),
            ready_counts(p),
            conditions.join(", "),
            states.join(" ")
        )
    }

    #[test]
    fn readiness_and_conditions() {
        let p = pod(&[("a", running(), true), ("b", running(), false)]);
        expect_test::expect![[r#"Running (1, 2) PodScheduled=True, Initialized=True, ContainersReady=False (containers with unready status: [b]), Ready=False (containers with unready status: [b]) | {"running":{"pid":7,"startedAtMs":1000}} {"running":{"pid":7,"startedAtMs":1000}}"#]]
            .assert_eq(&render(&p, 2000));
        let p = pod(&[("a", running(), true)]);
        assert!(pod_ready(&p));
        assert_eq!(
            conditions(&p)[3],
            Condition { kind: "Ready", status: "True", reason: None, message: None }
        );
        let mut stopping = p.clone();
        stopping.deleting = true;
        assert!(!pod_ready(&stopping));
    }

    #[test]
    fn waiting_reasons() {
        let crashed = ContainerState::Terminated(Terminated {
            exit_code: Some(2),
            signal: None,
            reason: "Error".into(),
            started_at_ms: 0,
            finished_at_ms: 1000,
        });
        let mut p = pod(&[("a", crashed, false)]);
        p.containers.get_mut("a").expect("a").failures = 1;
        expect_test::expect![[r#"CrashLoopBackOff (0, 1) PodScheduled=True, Initialized=True, ContainersReady=False (containers with unready status: [a]), Ready=False (containers with unready status: [a]) | {"waiting":{"message":"back-off 10s restarting failed container (exit code 2)","reason":"CrashLoopBackOff","retryInSecs":10}}"#]]
            .assert_eq(&render(&p, 1500));
        let pulling = ContainerState::Waiting {
            reason: "ImagePullBackOff".into(),
            message: "image nope:1 not found".into(),
            retry_at_ms: 5000,
        };
        let p = pod(&[("a", pulling, false), ("b", ContainerState::Creating, false)]);
        expect_test::expect![[r#"ImagePullBackOff (0, 2) PodScheduled=True, Initialized=True, ContainersReady=False (containers with unready status: [a b]), Ready=False (containers with unready status: [a b]) | {"waiting":{"message":"image nope:1 not found","reason":"ImagePullBackOff","retryInSecs":4}} {"waiting":{"reason":"ContainerCreating"}}"#]]
            .assert_eq(&render(&p, 1000));
    }
}
