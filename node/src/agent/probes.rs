//! Runs the probes of each running container (`crate::probe`) as a task of its own, checks
//! them for real through the runtime (exec in the container through libcontainer, HTTP
//! and TCP inside the pod's network namespace), and applies what they report.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use protocol::spec::ProbeAction;
use runtime::{ExecOutcome, Runtime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::{AbortHandle, JoinSet};

use super::pods::{container_id, sandbox_id, TaskResult};
use super::{now_ms, Agent};
use crate::probe::{self, Outcome, ProbeKind, Report};
use crate::reconcile::ContainerState;

/// The probe tasks of the node's containers, by container id.
#[derive(Default)]
pub struct ProbeTasks {
    tasks: JoinSet<()>,
    running: BTreeMap<String, AbortHandle>,
}

impl ProbeTasks {
    /// Stops a container's probes, if any run.
    pub fn stop(&mut self, id: &str) {
        if let Some(h) = self.running.remove(id) {
            h.abort();
        }
    }

    /// Stops every probe (the agent is stopping).
    pub fn stop_all(&mut self) {
        self.running.clear();
        self.tasks.abort_all();
    }

    /// Forgets finished tasks.
    pub fn reap(&mut self) {
        while self.tasks.try_join_next().is_some() {}
        self.running.retain(|_, h| !h.is_finished());
    }
}

/// A check carried out for real on one container.
struct RuntimeChecker {
    runtime: Arc<Runtime>,
    id: String,
    /// The pod's network namespace; `None` for a host-network pod.
    netns: Option<PathBuf>,
}

/// Reads at most this much of an HTTP answer (the status line is all that counts).
const HTTP_HEAD_LIMIT: usize = 4096;

impl probe::Checker for RuntimeChecker {
    async fn check(&self, action: &ProbeAction, timeout: Duration) -> Outcome {
        match action {
            ProbeAction::Exec { command } => {
                match self.runtime.exec_probe(&self.id, command, timeout).await {
                    Ok(ExecOutcome::Exited { exit_code: 0, .. }) => Outcome::Success,
                    Ok(ExecOutcome::Exited { exit_code, output }) => {
                        let output = output.trim();
                        let tail = if output.is_empty() { String::new() } else { format!(": {output}") };
                        Outcome::Failure(format!("command {command:?} exited with code {exit_code}{tail}"))
                    }
                    Ok(ExecOutcome::TimedOut) => Outcome::Failure(format!(
                        "command {command:?} timed out after {}s",
                        timeout.as_secs()
                    )),
                    Err(e) => Outcome::Failure(format!("command {command:?}: {e}")),
                }
            }
            ProbeAction::TcpSocket { port } => {
                let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, *port));
                match self.runtime.connect_tcp(self.netns.as_deref(), addr, timeout).await {
                    Ok(_) => Outcome::Success,
                    Err(e) => Outcome::Failure(format!("dial tcp {addr}: {}", io_reason(&e))),
                }
            }
            ProbeAction::HttpGet { path, port, headers } => {
                let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, *port));
                let url = format!("http://{addr}{path}");
                let get = self.http_get(addr, path, headers);
                match tokio::time::timeout(timeout, get).await {
                    Err(_) => Outcome::Failure(format!(
                        "Get {url:?}: no answer within {}s (timeout)",
                        timeout.as_secs()
                    )),
                    Ok(Err(e)) => Outcome::Failure(format!("Get {url:?}: {e}")),
                    Ok(Ok(code)) if (200..400).contains(&code) => Outcome::Success,
                    Ok(Ok(code)) => Outcome::Failure(format!("HTTP probe failed with statuscode: {code}")),
                }
            }
        }
    }
}

/// An I/O error as probe messages show it: "connection refused", "timed out".
fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connect: connection refused".to_owned(),
        std::io::ErrorKind::TimedOut => "i/o timeout".to_owned(),
        _ => e.to_string(),
    }
}

impl RuntimeChecker {
    /// One `GET` with the kubelet's headers; the answer's status code.
    async fn http_get(
        &self,
        addr: SocketAddr,
        path: &str,
        headers: &[(String, String)],
    ) -> Result<u16, String> {
        // The outer timeout bounds the whole exchange; connecting gets all of it.
        let mut stream = self
            .runtime
            .connect_tcp(self.netns.as_deref(), addr, Duration::from_secs(3600))
            .await
            .map_err(|e| format!("dial tcp {addr}: {}", io_reason(&e)))?;
        let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n");
        let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
        if !has("user-agent") {
            request.push_str("User-Agent: kube-probe/1.34 (peer)\r\n");
        }
        if !has("accept") {
            request.push_str("Accept: */*\r\n");
        }
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("Connection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.map_err(|e| format!("writing the request: {e}"))?;
        let mut head = Vec::with_capacity(256);
        let mut buf = [0u8; 512];
        while !head.windows(2).any(|w| w == b"\r\n") && head.len() < HTTP_HEAD_LIMIT {
            let n = stream.read(&mut buf).await.map_err(|e| format!("reading the answer: {e}"))?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        let line = String::from_utf8_lossy(&head);
        let line = line.lines().next().unwrap_or_default();
        let mut parts = line.split_whitespace();
        match (parts.next(), parts.next().and_then(|c| c.parse::<u16>().ok())) {
            (Some(v), Some(code)) if v.starts_with("HTTP/") => Ok(code),
            _ => Err(format!("malformed HTTP response {:?}", line.chars().take(80).collect::<String>())),
        }
    }
}

/// Runs a container's preStop hook, bounded by `timeout`: an exec or a request as a probe
/// makes them, or a sleep. An error says why the hook failed.
pub(super) async fn run_hook(
    runtime: &Arc<Runtime>,
    id: &str,
    netns: Option<PathBuf>,
    hook: &protocol::spec::Hook,
    timeout: Duration,
) -> Result<(), String> {
    let action = match hook {
        protocol::spec::Hook::Sleep(secs) => {
            tokio::time::sleep(Duration::from_secs(u64::from(*secs)).min(timeout)).await;
            return Ok(());
        }
        protocol::spec::Hook::Action(action) => action,
    };
    let checker = RuntimeChecker { runtime: runtime.clone(), id: id.to_owned(), netns };
    match probe::Checker::check(&checker, action, timeout.max(Duration::from_secs(1))).await {
        Outcome::Success => Ok(()),
        Outcome::Failure(why) => Err(format!("preStop hook of container {id} failed: {why}")),
    }
}

impl Agent {
    /// Starts the probes of a running container (just started, or adopted). A container
    /// without probes is started and ready at once.
    pub(super) fn start_probes(&mut self, key: &str, name: &str) {
        let Some(pod) = self.pods.get_mut(key) else { return };
        let id = container_id(&pod.namespace, &pod.name, name);
        self.probes.stop(&id);
        let Some(spec) = pod.template.containers.iter().find(|c| c.name == name) else { return };
        let probes = spec.probes.clone();
        let Some(c) = pod.containers.get_mut(name) else { return };
        let ContainerState::Running { pid, started_at_ms, .. } = c.state else { return };
        if probes.liveness.is_none() && probes.readiness.is_none() && probes.startup.is_none() {
            c.started = true;
            c.ready = true;
            return;
        }
        let checker = RuntimeChecker {
            runtime: self.runtime.clone(),
            id: id.clone(),
            netns: (!pod.template.host_network)
                .then(|| self.runtime.pod_netns_path(&sandbox_id(&pod.namespace, &pod.name))),
        };
        let tx = self.tasks.clone();
        let (pod_key, container) = (key.to_owned(), name.to_owned());
        let report = move |report| {
            let _ = tx.send(TaskResult::Probe {
                pod: pod_key.clone(),
                container: container.clone(),
                pid,
                report,
            });
        };
        let running_for = Duration::from_millis(now_ms().saturating_sub(started_at_ms));
        let task = probe::run(probes, checker, running_for, c.started, report);
        let handle = self.probes.tasks.spawn(task);
        self.probes.running.insert(id, handle);
    }

    /// Applies a probe worker's report about the container instance `pid`.
    pub(super) fn handle_probe(&mut self, key: &str, name: &str, pid: i32, report: Report) {
        let Some(pod) = self.pods.get_mut(key) else { return };
        let object = format!("pod/{}", pod.name);
        let grace_default = Duration::from_secs(pod.template.termination_grace_period_seconds);
        let id = container_id(&pod.namespace, &pod.name, name);
        let Some(c) = pod.containers.get_mut(name) else { return };
        if !matches!(c.state, ContainerState::Running { pid: p, .. } if p == pid) {
            return; // about an instance that is gone
        }
        match report {
            Report::Started => c.started = true,
            Report::Ready(ready) => {
                tracing::info!(pod = %key, container = %name, ready, "readiness changed");
                c.ready = ready;
            }
            Report::Unhealthy { kind, message } => {
                let msg = format!("{} probe failed: {message}", kind.title());
                tracing::info!(pod = %key, container = %name, "{msg}");
                self.events.warning(&object, "Unhealthy", &msg);
                return;
            }
            Report::Kill { kind, message, grace } => {
                let what = match kind {
                    ProbeKind::Startup => "startup",
                    _ => "liveness",
                };
                let msg = format!("Container {name} failed {what} probe, will be restarted ({message})");
                tracing::warn!(pod = %key, "{msg}");
                self.events.normal(&object, "Killing", &msg);
                c.ready = false;
                self.probes.running.remove(&id);
                let rt = self.runtime.clone();
                let grace = grace.unwrap_or(grace_default);
                // The exit that follows is handled like any other: the restart policy
                // and back-off decide what happens next.
                self.jobs.spawn(async move {
                    if let Err(e) = rt.stop_container(&id, grace).await {
                        tracing::warn!(container = %id, "stopping after a failed probe: {e}");
                    }
                });
            }
        }
        self.persist(key);
    }
}
