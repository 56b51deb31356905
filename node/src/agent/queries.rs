//! Answers to the local API: tables, descriptions, and writes from `peer apply`/`delete`.

use std::collections::BTreeMap;

use protocol::spec::{Kind, ObjectKey};
use serde_json::json;

use super::pods::container_id;
use super::{now_ms, Agent};
use crate::api::{DeploymentRow, ExecTarget, LogTarget, PodRow, Request, Response};
use crate::manifest::{self, DocResult};
use crate::reconcile::{self, ContainerState, ObservedPod};
use crate::status::{self, pod_status};
use crate::store::Source;

/// A probe as `kubectl describe` shows it:
/// `http-get :8080/healthz delay=0s timeout=1s period=10s #success=1 #failure=3`.
fn describe_probe(p: &protocol::spec::Probe) -> String {
    use protocol::spec::ProbeAction;
    let action = match &p.action {
        ProbeAction::Exec { command } => format!("exec {command:?}"),
        ProbeAction::HttpGet { path, port, .. } => format!("http-get :{port}{path}"),
        ProbeAction::TcpSocket { port } => format!("tcp-socket :{port}"),
    };
    format!(
        "{action} delay={}s timeout={}s period={}s #success={} #failure={}",
        p.initial_delay_seconds,
        p.timeout_seconds,
        p.period_seconds,
        p.success_threshold,
        p.failure_threshold
    )
}

fn ok(data: impl serde::Serialize) -> Response {
    match serde_json::to_value(data) {
        Ok(data) => Response::Ok { data },
        Err(e) => Response::Error { message: format!("encoding the answer: {e}") },
    }
}

fn err(message: impl Into<String>) -> Response {
    Response::Error { message: message.into() }
}

/// kubectl's spellings of the kinds peer knows (`deployment`, `deploy`, `sts`, `ds`, `po`…).
pub fn parse_kind(kind: &str) -> Option<Kind> {
    match kind.to_ascii_lowercase().as_str() {
        "deployment" | "deployments" | "deploy" => Some(Kind::Deployment),
        "statefulset" | "statefulsets" | "sts" => Some(Kind::StatefulSet),
        "daemonset" | "daemonsets" | "ds" => Some(Kind::DaemonSet),
        "pod" | "pods" | "po" => Some(Kind::Pod),
        "service" | "services" | "svc" => Some(Kind::Service),
        "hpa" | "horizontalpodautoscaler" | "horizontalpodautoscalers" => Some(Kind::HorizontalPodAutoscaler),
        "secret" | "secrets" => Some(Kind::Secret),
        _ => None,
    }
}

impl Agent {
    /// Every pod of the cluster as this node sees it: its own in full, other nodes' from
    /// their claims, and pods that fit nowhere as Pending.
    fn pod_rows(&self, now: u64) -> Vec<PodRow> {
        let me = self.cluster.me().0.clone();
        let mut rows: Vec<PodRow> = self
            .pods
            .values()
            .map(|p| PodRow {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                ready: {
                    let (ready, all) = status::ready_counts(p);
                    format!("{ready}/{all}")
                },
                status: pod_status(p, now),
                restarts: p.containers.values().map(|c| c.restart_count).sum(),
                age_secs: now.saturating_sub(p.created_at_ms) / 1000,
                workload: p.workload.to_string(),
                node: me.clone(),
                local: true,
                ip: p.ip,
            })
            .collect();
        let peers: BTreeMap<&str, &crate::cluster::claims::Claims> =
            self.cluster.live_peers().map(|p| (p.member.node_id.as_str(), &p.claims)).collect();
        for (key, planned) in &self.placement.planned {
            if self.pods.contains_key(key) {
                continue;
            }
            let (namespace, name) = key.split_once('/').unwrap_or(("default", key));
            let claim = planned.node.as_deref().and_then(|n| peers.get(n)).and_then(|c| c.get(key));
            let (status, ready) = match claim {
                Some(c) => (c.status.clone(), format!("{}/{}", c.ready.0, c.ready.1)),
                None => ("Pending".to_owned(), "-".to_owned()),
            };
            rows.push(PodRow {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                ready,
                status,
                restarts: claim.map_or(0, |c| c.restarts),
                age_secs: claim.filter(|c| c.running).map_or(0, |c| now.saturating_sub(c.since_ms) / 1000),
                workload: planned.workload.to_string(),
                node: planned.node.clone().unwrap_or_else(|| "<none>".into()),
                local: false,
                ip: claim.and_then(|c| c.ip),
            });
        }
        rows.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        rows
    }

    /// Deployments, StatefulSets or DaemonSets with cluster-wide counts from claims.
    fn workload_rows(&self, kind: Kind) -> Vec<DeploymentRow> {
        let mine = self.claims();
        let mut claims: BTreeMap<&str, &crate::cluster::claims::ClaimState> =
            mine.iter().map(|(k, c)| (k.as_str(), c)).collect();
        for p in self.cluster.live_peers() {
            claims.extend(p.claims.iter().map(|(k, c)| (k.as_str(), c)));
        }
        self.store
            .iter()
            .filter_map(|s| Some((s.object.as_workload().filter(|w| w.key.kind == kind)?, s)))
            .map(|(w, s)| {
                let rev = w.template.revision_hash();
                let planned: Vec<&str> = self
                    .placement
                    .planned
                    .iter()
                    .filter(|(_, p)| p.workload == w.key)
                    .map(|(k, _)| k.as_str())
                    .collect();
                let current: Vec<_> =
                    planned.iter().filter_map(|k| claims.get(k)).filter(|c| c.revision == rev).collect();
                let source = match s.source {
                    Some(Source::File(f)) => f.clone(),
                    Some(Source::Api(f)) => format!("apply {f}"),
                    None => format!("node {}", s.stamp.node),
                };
                DeploymentRow {
                    namespace: w.key.namespace.clone(),
                    name: w.key.name.clone(),
                    ready: current.iter().filter(|c| c.is_ready()).count() as u32,
                    desired: if kind == Kind::DaemonSet { planned.len() as u32 } else { w.replicas },
                    up_to_date: current.len() as u32,
                    source,
                    overwritten_by: s.overwritten.map(|_| format!("node {}", s.stamp.node)),
                }
            })
            .collect()
    }

    /// A container's state for `peer describe pod`: while its image is being pulled, the
    /// waiting `ContainerCreating` state says how far the pull has got.
    fn container_state(
        &self,
        pod: &ObservedPod,
        c: &reconcile::ObservedContainer,
        image: &str,
        now: u64,
    ) -> serde_json::Value {
        match self.pulls.progress(image).filter(|_| matches!(c.state, ContainerState::Creating)) {
            Some(progress) => json!({"waiting": {
                "reason": "ContainerCreating",
                "message": super::pulls::pulling_message(image, &progress),
            }}),
            None => status::container_state(pod, c, now),
        }
    }

    /// `peer describe pod` of a pod this node does not run.
    fn describe_remote(&self, key: &str, name: &str) -> Response {
        let Some(planned) = self.placement.planned.get(key) else {
            return err(format!("pod {key} not found"));
        };
        match &planned.node {
            // What this node knows of another node's pod: where it is and what its claim says.
            Some(node) => {
                let claim = self
                    .cluster
                    .live_peers()
                    .find(|p| p.member.node_id == *node)
                    .and_then(|p| p.claims.get(key).cloned());
                let status = claim.as_ref().map_or("Pending".to_owned(), |c| c.status.clone());
                ok(json!({
                    "name": name,
                    "node": node,
                    "ip": claim.as_ref().and_then(|c| c.ip),
                    "status": status,
                    "controlledBy": planned.workload.to_string(),
                    "revision": claim.as_ref().map_or(planned.revision.clone(), |c| c.revision.clone()),
                    "runningSinceMs": claim.as_ref().filter(|c| c.running).map(|c| c.since_ms),
                    "ready": claim.as_ref().is_some_and(|c| c.is_ready()),
                    "readyContainers": claim.as_ref().map(|c| format!("{}/{}", c.ready.0, c.ready.1)),
                    "conditions": [
                        { "type": "PodScheduled", "status": "True" },
                        { "type": "Ready", "status": if claim.as_ref().is_some_and(|c| c.is_ready()) { "True" } else { "False" } },
                    ],
                    "details": format!("containers, restarts and logs: `peer describe pod {name}` on node {node}"),
                }))
            }
            None => ok(json!({
                "name": name,
                "status": "Pending",
                "controlledBy": planned.workload.to_string(),
                "revision": planned.revision,
                "conditions": [{
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": self.placement.unschedulable.get(key),
                }],
                "events": self.events.for_object(&format!("pod/{name}")).collect::<Vec<_>>(),
            })),
        }
    }

    pub(super) fn handle_api(&mut self, req: Request) -> Response {
        let now = now_ms();
        match req {
            Request::GetPods => ok(self.pod_rows(now)),
            Request::GetWorkloads { kind } => ok(self.workload_rows(kind)),
            Request::Scale { kind, namespace, name, replicas } => {
                self.scale(&kind, namespace, name, replicas)
            }
            Request::RolloutStatus { namespace, name } => self.rollout_status(namespace, name),
            Request::RolloutHistory { namespace, name, revision } => {
                self.rollout_history(namespace, name, revision)
            }
            Request::RolloutUndo { namespace, name, to_revision } => {
                self.rollout_undo(namespace, name, to_revision)
            }
            Request::RolloutPause { namespace, name, paused } => self.rollout_pause(namespace, name, paused),
            Request::GetAutoscalers => ok(self.autoscaler_rows()),
            Request::DescribeAutoscaler { namespace, name } => self.describe_autoscaler(namespace, name),
            Request::GetSecrets => ok(self.secret_rows()),
            Request::DescribeSecret { namespace, name } => self.describe_secret(namespace, name),
            Request::GetServices => ok(self.service_table().services.into_values().collect::<Vec<_>>()),
            Request::TopPods { namespace } => ok(self.top_pods(namespace.as_deref())),
            Request::TopNodes => ok(self.top_nodes()),
            Request::DescribeService { namespace, name } => self.describe_service(namespace, name),
            Request::DescribePod { namespace, name } => {
                let key = reconcile::pod_key(&namespace, &name);
                let Some(pod) = self.pods.get(&key) else {
                    return self.describe_remote(&key, &name);
                };
                let containers: Vec<_> = pod
                    .template
                    .containers
                    .iter()
                    .map(|c| {
                        let obs = pod.containers.get(&c.name);
                        json!({
                            "name": c.name,
                            "id": container_id(&pod.namespace, &pod.name, &c.name),
                            "image": c.image,
                            "imagePullPolicy": c.pull_policy().as_str(),
                            "ready": obs.is_some_and(status::container_ready),
                            "started": obs.is_some_and(|o| o.started),
                            "state": obs.map(|o| self.container_state(pod, o, &c.image, now)),
                            "restartCount": obs.map_or(0, |o| o.restart_count),
                            "lastState": obs.and_then(|o| o.last_termination.as_ref()).map(|t| json!({"terminated": status::terminated(t)})),
                            "liveness": c.probes.liveness.as_ref().map(describe_probe),
                            "readiness": c.probes.readiness.as_ref().map(describe_probe),
                            "startup": c.probes.startup.as_ref().map(describe_probe),
                            "requests": c.resources.requests,
                            "limits": super::pods::limits_for(c, self.cfg.default_limits),
                            "limitsDefaulted": c.resources.limits.cpu_millis.is_none() || c.resources.limits.memory_bytes.is_none(),
                        })
                    })
                    .collect();
                let object = format!("pod/{}", pod.name);
                ok(json!({
                    "namespace": pod.namespace,
                    "name": pod.name,
                    "node": self.cluster.me().0,
                    "ip": pod.ip,
                    "status": pod_status(pod, now),
                    "phase": reconcile::pod_phase(pod),
                    "ready": status::pod_ready(pod),
                    "conditions": status::conditions(pod),
                    "controlledBy": pod.workload.to_string(),
                    "revision": pod.revision,
                    "createdAtMs": pod.created_at_ms,
                    "labels": pod.template.labels,
                    "restartPolicy": pod.template.restart_policy,
                    "hostNetwork": pod.template.host_network,
                    "imagePullSecrets": pod.template.image_pull_secrets,
                    "containers": containers,
                    "events": self.events.for_object(&object).collect::<Vec<_>>(),
                }))
            }
            Request::LogPath { namespace, pod, container, previous } => {
                let Some(p) = self.pods.get(&reconcile::pod_key(&namespace, &pod)) else {
                    return err(format!("pod {namespace}/{pod} not found"));
                };
                let Some((name, c)) = pick_container(p, container.as_deref()) else {
                    return err(format!("container {container:?} not found in pod {namespace}/{pod}"));
                };
                let restart = if previous {
                    match c.restart_count.checked_sub(1) {
                        Some(r) => r,
                        None => {
                            return err(format!(
                                "previous terminated container {name} in pod {pod} not found"
                            ))
                        }
                    }
                } else {
                    c.restart_count
                };
                let running = !previous && matches!(c.state, ContainerState::Running { .. });
                ok(LogTarget { path: self.log_path(&p.namespace, &p.name, name, restart), running })
            }
            Request::ExecTarget { namespace, pod, container } => {
                let Some(p) = self.pods.get(&reconcile::pod_key(&namespace, &pod)) else {
                    return err(format!("pod {namespace}/{pod} not found"));
                };
                let Some((name, c)) = pick_container(p, container.as_deref()) else {
                    return err(format!("container {container:?} not found in pod {namespace}/{pod}"));
                };
                if !matches!(c.state, ContainerState::Running { .. }) {
                    return err(format!("container {name} in pod {pod} is not running"));
                }
                ok(ExecTarget {
                    runtime_root: self.cfg.data_dir.join("runtime"),
                    container_id: container_id(&p.namespace, &p.name, name),
                })
            }
            Request::Apply { files } => self.apply_files(files),
            Request::DeleteFiles { files } => {
                let mut keys = Vec::new();
                let mut errors = Vec::new();
                for (name, text) in &files {
                    let parsed = manifest::parse_file(name, text);
                    if let Some(e) = parsed.syntax_error {
                        errors.push(e.to_string());
                    }
                    for doc in parsed.documents {
                        match doc {
                            DocResult::Object { object, .. } => keys.push(object.key().clone()),
                            DocResult::Invalid { key: Some(key), .. } => keys.push(key),
                            DocResult::Invalid { key: None, error } => errors.push(error.to_string()),
                            DocResult::Ignored { .. } => {}
                        }
                    }
                }
                self.delete_keys(keys, errors)
            }
            Request::Delete { kind, namespace, name } => {
                let Some(kind) = parse_kind(&kind) else {
                    return err(format!(
                        "unknown kind {kind:?}; expected deployment, statefulset, daemonset, pod, service, hpa or secret"
                    ));
                };
                self.delete_keys(vec![ObjectKey { kind, namespace, name }], vec![])
            }
            other => err(format!("request {other:?} is handled by the agent loop")),
        }
    }

    fn apply_files(&mut self, files: Vec<(String, String)>) -> Response {
        let (mut applied, mut unchanged, mut warnings, mut errors) = (vec![], vec![], vec![], vec![]);
        for (name, text) in &files {
            let parsed = manifest::parse_file(name, text);
            if let Some(e) = parsed.syntax_error {
                errors.push(e.to_string());
                continue;
            }
            for doc in parsed.documents {
                match doc {
                    DocResult::Object { object, warnings: w } => {
                        warnings.extend(w.iter().map(|w| w.to_string()));
                        let key = object.key().to_string();
                        match self.store.put(object, Source::Api(name.clone())) {
                            Ok(Some(_)) => applied.push(key),
                            Ok(None) => unchanged.push(key),
                            Err(e) => errors.push(format!("{name}: storing {key}: {e:#}")),
                        }
                    }
                    DocResult::Ignored { warning, .. } => warnings.push(warning.to_string()),
                    DocResult::Invalid { error, .. } => errors.push(error.to_string()),
                }
            }
        }
        for w in &warnings {
            self.events.warning("specs", "SpecWarning", w);
        }
        ok(json!({ "applied": applied, "unchanged": unchanged, "warnings": warnings, "errors": errors }))
    }

    fn delete_keys(&mut self, keys: Vec<ObjectKey>, mut errors: Vec<String>) -> Response {
        let mut deleted = vec![];
        for key in keys {
            match self.store.remove(&key) {
                Ok(Some(_)) => deleted.push(key.to_string()),
                Ok(None) => errors.push(format!("{key} not found")),
                Err(e) => errors.push(format!("deleting {key}: {e:#}")),
            }
        }
        ok(json!({ "deleted": deleted, "errors": errors }))
    }
}

/// The named container, or the pod's first one when no name is given.
fn pick_container<'a>(
    pod: &'a ObservedPod,
    name: Option<&str>,
) -> Option<(&'a String, &'a reconcile::ObservedContainer)> {
    match name {
        Some(n) => pod.containers.get_key_value(n),
        None => {
            let first = pod.template.containers.first()?;
            pod.containers.get_key_value(&first.name)
        }
    }
}
