//! The executor: carries out the reconciler's actions on the runtime and keeps the
//! observed pods (persisted per pod under `pods/`) in step with what happened.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use protocol::spec::{Container, Kind, ObjectKey, PullPolicy};
use runtime::image::{PullOptions, PullSecret};
use runtime::{ContainerSpec, ContainerStatus, ExitEvent, Limits, Network, Runtime};

use super::pulls::{ImageJob, StartError};
use super::{now_ms, Agent, DefaultLimits};
use crate::reconcile::{
    self, Action, ContainerState, DesiredPod, ObservedContainer, ObservedPod, Terminated,
};

/// How long a service endpoint that is being deleted keeps running after its claim is
/// withdrawn, before SIGTERM (bounded by its grace period): long enough for every node to
/// drop it from the service's rules.
const ENDPOINT_DRAIN: Duration = Duration::from_secs(2);

/// Replaces `path` with `bytes` atomically (temp file + rename), without fsync.
fn write_replace(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Writes pod records on a thread of its own, in the order they were asked for, so that
/// the agent loop never waits for the file system: a burst of 50 new pods took the loop
/// ≈ 25 ms of file creation before it could record the first one running (BENCHMARKS.md).
/// Only the newest content of a record waiting to be written is written.
///
/// A record may reach the disk a little after its container started; a crash in between
/// leaves a container no record names, which adoption removes (and the reconciler starts
/// again), so no duplicate can run.
pub(super) struct RecordWriter {
    tx: Option<std::sync::mpsc::Sender<(PathBuf, Option<Vec<u8>>)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RecordWriter {
    pub(super) fn start() -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel::<(PathBuf, Option<Vec<u8>>)>();
        let thread = std::thread::Builder::new().name("peer-records".into()).spawn(move || {
            while let Ok(first) = rx.recv() {
                // Everything already asked for, newest content per record, in order.
                let mut batch: Vec<(PathBuf, Option<Vec<u8>>)> = vec![first];
                while let Ok(next) = rx.try_recv() {
                    batch.retain(|(path, _)| *path != next.0);
                    batch.push(next);
                }
                for (path, content) in batch {
                    let result = match content {
                        Some(bytes) => write_replace(&path, &bytes),
                        None => match std::fs::remove_file(&path) {
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                            other => other,
                        },
                    };
                    if let Err(e) = result {
                        tracing::error!("persisting pod record {}: {e}", path.display());
                    }
                }
            }
        })?;
        Ok(Self { tx: Some(tx), thread: Some(thread) })
    }

    fn send(&self, path: PathBuf, content: Option<Vec<u8>>) {
        if let Some(tx) = &self.tx {
            if tx.send((path, content)).is_err() {
                tracing::error!("the pod record writer has stopped");
            }
        }
    }

    /// Waits until every record asked for is written.
    pub(super) fn finish(&mut self) {
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for RecordWriter {
    fn drop(&mut self) {
        self.finish();
    }
}

/// What a finished executor task reports to the agent loop.
#[derive(Debug)]
pub enum TaskResult {
    Started {
        pod: String,
        container: String,
        pid: i32,
        start_time: u64,
    },
    StartFailed {
        pod: String,
        container: String,
        reason: String,
        message: String,
    },
    PodRemoved {
        pod: String,
    },
    /// A container's preStop hook failed (it was stopped all the same).
    HookFailed {
        pod: String,
        message: String,
    },
    /// An event about a pod, from a task (image pulls).
    Event {
        pod: String,
        warning: bool,
        reason: String,
        message: String,
    },
    /// A probe worker's report about the container instance `pid`.
    Probe {
        pod: String,
        container: String,
        pid: i32,
        report: crate::probe::Report,
    },
}

/// The runtime's id of a container: `<namespace>_<pod>_<container>` (Kubernetes names
/// never contain `_`, so this is unambiguous and passes libcontainer's id check).
pub fn container_id(namespace: &str, pod: &str, container: &str) -> String {
    format!("{namespace}_{pod}_{container}")
}

/// The id of a pod's sandbox (its network namespace).
pub fn sandbox_id(namespace: &str, pod: &str) -> String {
    format!("{namespace}_{pod}")
}

/// Limits a container runs with: its own, or the node's defaults where it sets none.
pub fn limits_for(c: &Container, defaults: DefaultLimits) -> Limits {
    let cpu = c.resources.limits.cpu_millis.unwrap_or(defaults.cpu_millis);
    let mem = c.resources.limits.memory_bytes.unwrap_or(defaults.memory_bytes);
    Limits {
        // A request above the default limit raises the limit to the request, as a
        // LimitRange would refuse the pod otherwise.
        cpu_millis: Some(cpu.max(c.resources.requests.cpu_millis.unwrap_or(0))),
        memory_bytes: Some(mem.max(c.resources.requests.memory_bytes.unwrap_or(0))),
        pids: None,
    }
}

/// Everything a task needs to start one container, cloned out of the agent.
struct StartJob {
    runtime: Arc<Runtime>,
    /// Getting each container's image, with the pod's pull secrets.
    images: ImageJob,
    pod_key: String,
    sandbox: String,
    host_network: bool,
    /// The pod's address on the node's bridge, with the prefix length and gateway.
    address: Option<(std::net::Ipv4Addr, u8, std::net::Ipv4Addr)>,
    specs: Vec<(String, String, PullPolicy, ContainerSpec)>, // (container name, image, policy, spec)
    /// A new pod has no old container to clear away; a restart does.
    fresh: bool,
    /// Bounds concurrent creates: each one is a process doing clone-heavy work, and
    /// running more than the cores can take only makes every one of them slower.
    creates: Arc<tokio::sync::Semaphore>,
}

impl StartJob {
    async fn run(mut self, tx: tokio::sync::mpsc::UnboundedSender<super::TaskResult>) {
        let send = |container: String, result: Result<(i32, u64), StartError>| {
            let pod = self.pod_key.clone();
            let _ = tx.send(match result {
                Ok((pid, start_time)) => TaskResult::Started { pod, container, pid, start_time },
                Err((reason, message)) => TaskResult::StartFailed { pod, container, reason, message },
            });
        };
        let specs = std::mem::take(&mut self.specs);
        let mut specs = specs.into_iter().peekable();
        // A new pod's first container is created while its veth pair is made: the create
        // child waits at a start gate until the network is up. Without a gate (it could
        // not be made) the two run one after the other.
        let gate = match (self.host_network, self.address, specs.peek()) {
            (false, Some(_), Some((_, _, _, first))) if self.fresh => {
                match self.runtime.start_gate(&first.id) {
                    Ok(gate) => Some(gate),
                    Err(e) => {
                        tracing::warn!(container = %first.id, "no start gate, attaching the pod first: {e}");
                        None
                    }
                }
            }
            _ => None,
        };
        let netns = match (self.host_network, self.address, gate) {
            (true, _, _) => Ok(None),
            (false, Some(address), Some(gate)) => {
                let (name, image, policy, spec) = specs.next().expect("peeked");
                let (netns, first) = self.attach_while_creating(address, gate, &image, policy, spec).await;
                send(name, first);
                netns
            }
            // Makes the namespace too when there is none yet, on the same thread as the
            // veth pair. Idempotent: a restarted container finds its pod attached already.
            (false, Some((ip, len, gateway)), None) => {
                let path = self.runtime.pod_netns_path(&self.sandbox);
                runtime::net::Net::host()
                    .attach_pod(&self.sandbox, &path, ip, len, gateway, None)
                    .await
                    .map(|()| Some(path))
                    .map_err(|e| e.to_string())
            }
            (false, None, _) => {
                self.runtime.ensure_pod_netns(&self.sandbox).await.map(Some).map_err(|e| e.to_string())
            }
        };
        for (name, image, policy, mut spec) in specs {
            let result = match &netns {
                Err(e) => Err(("CreateContainerError".to_owned(), format!("pod network: {e}"))),
                Ok(ns) => {
                    spec.network = ns.clone().map_or(Network::Host, Network::Namespace);
                    self.create(&image, policy, &spec, None).await
                }
            };
            send(name, result);
        }
    }

    /// Attaches the pod to the node's network and, as soon as its namespace exists,
    /// creates the first container in it behind a start gate that opens once the veth
    /// pair, address and routes are there (a one-pod start no longer waits ≈ 1.5 ms for
    /// them first).
    async fn attach_while_creating(
        &self,
        (ip, len, gateway): (std::net::Ipv4Addr, u8, std::net::Ipv4Addr),
        gate: runtime::StartGate,
        image: &str,
        policy: PullPolicy,
        mut spec: ContainerSpec,
    ) -> (Result<Option<PathBuf>, String>, Result<(i32, u64), StartError>) {
        let path = self.runtime.pod_netns_path(&self.sandbox);
        spec.network = Network::Namespace(path.clone());
        let gate_path = gate.path().to_owned();
        let (namespace_tx, namespace_rx) = tokio::sync::oneshot::channel();
        let attach = async {
            let attached = runtime::net::Net::host()
                .attach_pod(&self.sandbox, &path, ip, len, gateway, Some(namespace_tx))
                .await
                .map_err(|e| e.to_string());
            match &attached {
                Ok(()) => gate.open(Ok(())),
                Err(e) => gate.open(Err(&format!("pod network: {e}"))),
            }
            attached
        };
        let create = async {
            // No namespace (the attach failed before it was made): its error says why.
            namespace_rx.await.ok()?;
            Some(self.create(image, policy, &spec, Some(&gate_path)).await)
        };
        let (attached, created) = tokio::join!(attach, create);
        let first = match (&attached, created) {
            // The container was deleted at the gate, or never made: the network's error.
            (Err(e), _) => Err(("CreateContainerError".to_owned(), format!("pod network: {e}"))),
            (Ok(()), Some(result)) => result,
            (Ok(()), None) => Err((
                "CreateContainerError".to_owned(),
                "pod network: the namespace was not reported".to_owned(),
            )),
        };
        (attached.map(|()| Some(path)), first)
    }

    /// Gets the image and creates and starts one container (behind `gate` if given).
    async fn create(
        &self,
        image: &str,
        policy: PullPolicy,
        spec: &ContainerSpec,
        gate: Option<&Path>,
    ) -> Result<(i32, u64), StartError> {
        // A pull holds no create permit: only the create itself is bounded.
        let resolved = self.images.ensure(image, policy).await?;
        let _permit = self.creates.acquire().await;
        start_one(&self.runtime, &resolved, spec, self.fresh, gate).await
    }
}

async fn start_one(
    runtime: &Runtime,
    resolved: &runtime::ResolvedImage,
    spec: &ContainerSpec,
    fresh: bool,
    gate: Option<&Path>,
) -> Result<(i32, u64), StartError> {
    // A restart's previous container (or one left by a crash mid-create) goes first, so
    // the new one starts from a fresh writable layer, as in Kubernetes.
    if !fresh {
        if let Err(e) = runtime.remove_container(&spec.id).await {
            return Err((
                "CreateContainerError".to_owned(),
                format!("removing old container {}: {e}", spec.id),
            ));
        }
    }
    match runtime.run_container_gated(spec, resolved, gate).await {
        Ok(started) => Ok((started.pid, started.start_time)),
        Err(e) => Err(("CreateContainerError".to_owned(), e.to_string())),
    }
}

impl Agent {
    /// How this node pulls images: the credentials file `PEER_REGISTRY_AUTH` names, and
    /// blobs from peers as `--image-distribution` says.
    pub(super) fn pull_options(&self) -> PullOptions {
        PullOptions {
            credentials: std::env::var_os("PEER_REGISTRY_AUTH").map(PathBuf::from),
            distribution: self.cfg.image_distribution,
            peers: Some(Arc::new(self.cluster.blobs.clone())),
            ..PullOptions::default()
        }
    }

    /// A pod's `imagePullSecrets` as pull secrets, from the desired state (its namespace),
    /// and the names that do not exist or hold no registry credentials (the kubelet warns
    /// about those and pulls anyway).
    fn pull_secrets(&self, namespace: &str, names: &[String]) -> (Vec<PullSecret>, Vec<String>) {
        let (mut found, mut missing) = (Vec::new(), Vec::new());
        for name in names {
            let key = ObjectKey { kind: Kind::Secret, namespace: namespace.to_owned(), name: name.clone() };
            let stored = self.store.get(&key);
            match stored.as_ref().and_then(|s| s.object.as_secret()).and_then(|s| s.docker_config_json()) {
                Some(json) => found.push(PullSecret {
                    what: format!("secret {namespace}/{name}"),
                    config_json: json.to_vec(),
                }),
                None => missing.push(name.clone()),
            }
        }
        (found, missing)
    }

    pub(super) fn log_path(&self, namespace: &str, pod: &str, container: &str, restart: u32) -> PathBuf {
        self.cfg
            .data_dir
            .join("logs")
            .join(sandbox_id(namespace, pod))
            .join(container)
            .join(format!("{restart}.log"))
    }

    fn record_path(&self, key: &str) -> PathBuf {
        self.cfg.data_dir.join("pods").join(format!("{}.json", key.replace('/', "_")))
    }

    /// Writes a pod's record so a restarted agent can adopt its containers.
    ///
    /// Records are replaced atomically (temp file + rename) by the [`RecordWriter`]
    /// thread, and not fsynced: they are a
    /// cache of what the runtime holds, written on the hot path of every start and exit.
    /// After a power loss a record may be older than the truth; adoption then checks each
    /// container's pid and start time, restarts what is gone and removes what no record
    /// names, so no duplicate can run. (Desired state, which users are told is saved, is
    /// fsynced: see `store.rs`.)
    pub(super) fn persist(&self, key: &str) {
        let path = self.record_path(key);
        match self.pods.get(key).map(serde_json::to_vec) {
            Some(Ok(bytes)) => self.records.send(path, Some(bytes)),
            Some(Err(e)) => tracing::error!(pod = key, "encoding pod record {}: {e}", path.display()),
            None => self.records.send(path, None),
        }
    }

    fn spec_for(&mut self, pod: &ObservedPod, c: &Container) -> ContainerSpec {
        if c.resources.limits.cpu_millis.is_none() || c.resources.limits.memory_bytes.is_none() {
            let msg = format!(
                "container {} declares no cpu or memory limit; the node's defaults apply (cpu {}m, memory {} bytes)",
                c.name, self.cfg.default_limits.cpu_millis, self.cfg.default_limits.memory_bytes
            );
            tracing::warn!(pod = %pod.name, "{msg}");
            self.events.warning(&format!("pod/{}", pod.name), "DefaultLimits", &msg);
        }
        let restart = pod.containers.get(&c.name).map_or(0, |o| o.restart_count);
        ContainerSpec {
            id: container_id(&pod.namespace, &pod.name, &c.name),
            command: c.command.clone(),
            args: c.args.clone(),
            env: c.env.iter().map(|e| (e.name.clone(), e.value.clone())).collect(),
            working_dir: c.working_dir.clone(),
            hostname: pod.name.chars().take(63).collect(),
            limits: limits_for(c, self.cfg.default_limits),
            network: Network::Host,
            log_path: self.log_path(&pod.namespace, &pod.name, &c.name, restart),
            // A pod on the node's bridge resolves names through the node's cluster DNS,
            // with Kubernetes' search list (`api`, `api.NS`, `api.NS.svc.cluster.local`).
            dns: pod.ip.zip(self.pod_slot()).map(|(_, slot)| runtime::DnsConfig {
                nameservers: vec![self.cfg.net.gateway(slot)],
                searches: vec![
                    format!("{}.svc.{}", pod.namespace, crate::dns::zone::DEFAULT_DOMAIN),
                    format!("svc.{}", crate::dns::zone::DEFAULT_DOMAIN),
                    crate::dns::zone::DEFAULT_DOMAIN.to_owned(),
                ],
                options: vec!["ndots:5".to_owned()],
            }),
            hosts: pod.ip.map(|ip| vec![(ip, vec![pod.name.chars().take(63).collect()])]).unwrap_or_default(),
        }
    }

    fn spawn_start(&mut self, key: &str, only: Option<&str>) {
        let Some(pod) = self.pods.get(key).cloned() else { return };
        let mut specs = Vec::new();
        for c in &pod.template.containers {
            if only.is_none_or(|o| o == c.name) {
                let spec = self.spec_for(&pod, c);
                specs.push((c.name.clone(), c.image.clone(), c.pull_policy(), spec));
            }
        }
        let (pull_secrets, missing_secrets) =
            self.pull_secrets(&pod.namespace, &pod.template.image_pull_secrets);
        let job = StartJob {
            runtime: self.runtime.clone(),
            images: ImageJob {
                images: self.images.clone(),
                options: PullOptions { pull_secrets, ..self.pull_options() },
                pulls: self.pulls.clone(),
                missing_secrets,
                pod: key.to_owned(),
                tx: self.tasks.clone(),
            },
            pod_key: key.to_owned(),
            sandbox: sandbox_id(&pod.namespace, &pod.name),
            host_network: pod.template.host_network,
            address: pod
                .ip
                .zip(self.pod_slot())
                .map(|(ip, slot)| (ip, self.cfg.net.node_prefix, self.cfg.net.gateway(slot))),
            specs,
            fresh: only.is_none(),
            creates: self.creates.clone(),
        };
        let tx = self.tasks.clone();
        self.jobs.spawn(job.run(tx));
    }

    pub(super) fn execute(&mut self, action: Action) {
        match action {
            Action::CreatePod(d) => self.create_pod(*d),
            Action::StartContainer { pod, container } => {
                let Some(p) = self.pods.get_mut(&pod) else { return };
                let Some(c) = p.containers.get_mut(&container) else { return };
                if let ContainerState::Terminated(t) = &c.state {
                    c.last_termination = Some(t.clone());
                    c.restart_count += 1;
                }
                c.failures += 1;
                c.set_state(ContainerState::Creating);
                self.events.normal(
                    &format!("pod/{}", p.name),
                    "Restarting",
                    &format!("restarting container {container}"),
                );
                self.persist(&pod);
                self.spawn_start(&pod, Some(&container));
            }
            Action::DeletePod { pod, grace } => self.delete_pod(&pod, grace),
        }
    }

    fn create_pod(&mut self, d: DesiredPod) {
        let key = reconcile::pod_key(&d.namespace, &d.name);
        let containers =
            d.template.containers.iter().map(|c| (c.name.clone(), ObservedContainer::creating())).collect();
        let ip = if d.template.host_network || !self.network_up { None } else { self.allocate_pod_ip() };
        let pod = ObservedPod {
            namespace: d.namespace,
            name: d.name,
            workload: d.workload,
            revision: d.revision,
            template: d.template,
            deleting: false,
            created_at_ms: now_ms(),
            ip,
            ready_since_ms: None,
            containers,
        };
        self.events.normal(
            &format!("pod/{}", pod.name),
            "Scheduled",
            &format!("assigned to this node for {}", pod.workload),
        );
        self.pods.insert(key.clone(), pod);
        self.persist(&key);
        self.spawn_start(&key, None);
    }

    /// Whether a service of the pod's namespace selects it.
    fn is_service_endpoint(&self, pod: &ObservedPod) -> bool {
        self.store.services().any(|s| {
            s.key.namespace == pod.namespace
                && !s.selector.is_empty()
                && s.selector.iter().all(|(k, v)| pod.template.labels.get(k) == Some(v))
        })
    }

    fn delete_pod(&mut self, key: &str, grace: Duration) {
        // A service's endpoint leaves every node's rules first (its claim goes with this
        // loop turn and spreads within a gossip round or two), then gets SIGTERM: requests
        // already routed to it are not cut off.
        let drain = match self.pods.get(key) {
            Some(p) if p.ip.is_some() && self.is_service_endpoint(p) => ENDPOINT_DRAIN.min(grace),
            _ => Duration::ZERO,
        };
        let netns = self
            .pods
            .get(key)
            .filter(|p| !p.template.host_network)
            .map(|p| self.runtime.pod_netns_path(&sandbox_id(&p.namespace, &p.name)));
        let Some(pod) = self.pods.get_mut(key) else { return };
        pod.deleting = true;
        // preStop hooks of the containers that run (none when killed at once).
        let hooks: BTreeMap<String, protocol::spec::Hook> = pod
            .template
            .containers
            .iter()
            .filter(|_| !grace.is_zero())
            .filter(|c| {
                pod.containers.get(&c.name).is_some_and(|o| matches!(o.state, ContainerState::Running { .. }))
            })
            .filter_map(|c| Some((container_id(&pod.namespace, &pod.name, &c.name), c.pre_stop.clone()?)))
            .collect();
        for c in pod.containers.values_mut() {
            if matches!(c.state, ContainerState::Running { .. } | ContainerState::Creating) {
                c.set_state(ContainerState::Stopping);
            }
        }
        let ids: Vec<String> =
            pod.containers.keys().map(|c| container_id(&pod.namespace, &pod.name, c)).collect();
        for id in &ids {
            self.probes.stop(id);
        }
        let sandbox = sandbox_id(&pod.namespace, &pod.name);
        let attached = pod.ip.is_some();
        self.events.normal(
            &format!("pod/{}", pod.name),
            "Killing",
            &format!("stopping pod (grace {}s)", grace.as_secs()),
        );
        self.persist(key);
        let rt = self.runtime.clone();
        let tx = self.tasks.clone();
        let key = key.to_owned();
        self.jobs.spawn(async move {
            tokio::time::sleep(drain).await;
            // Containers of a pod stop together, each within the full grace period: its
            // preStop hook first, then SIGTERM, then SIGKILL when the grace is over.
            let mut stops = tokio::task::JoinSet::new();
            for id in ids.clone() {
                let (rt, hook, netns, tx, key) =
                    (rt.clone(), hooks.get(&id).cloned(), netns.clone(), tx.clone(), key.clone());
                stops.spawn(async move {
                    let started = tokio::time::Instant::now();
                    if let Some(hook) = hook {
                        if let Err(message) = super::probes::run_hook(&rt, &id, netns, &hook, grace).await {
                            let _ = tx.send(TaskResult::HookFailed { pod: key, message });
                        }
                    }
                    let left = grace.saturating_sub(started.elapsed());
                    if let Err(e) = rt.stop_container(&id, left).await {
                        tracing::warn!(container = %id, "stopping: {e}");
                    }
                });
            }
            while stops.join_next().await.is_some() {}
            for id in &ids {
                if let Err(e) = rt.remove_container(id).await {
                    tracing::warn!(container = %id, "removing: {e}");
                }
            }
            if attached {
                if let Err(e) = runtime::net::Net::host().detach_pod(&sandbox).await {
                    tracing::warn!(sandbox = %sandbox, "detaching from the pod network: {e}");
                }
            }
            if let Err(e) = rt.remove_pod_netns(&sandbox).await {
                tracing::warn!(sandbox = %sandbox, "removing network namespace: {e}");
            }
            let _ = tx.send(TaskResult::PodRemoved { pod: key });
        });
    }

    pub(super) fn handle_task(&mut self, t: TaskResult) {
        match t {
            TaskResult::Started { pod, container, pid, start_time } => {
                let grace = self.pods.get(&pod).map_or(Duration::from_secs(1), |p| {
                    Duration::from_secs(p.template.termination_grace_period_seconds)
                });
                if self.pods.get(&pod).is_none_or(|p| p.deleting) {
                    // The pod was deleted while this container was being created, so the
                    // delete found nothing to stop: stop it now instead of leaving it
                    // running with no pod (stop and remove are idempotent).
                    let id = format!("{}_{container}", pod.replace('/', "_"));
                    tracing::info!(container = %id, "stopping a container whose pod was deleted during its start");
                    let rt = self.runtime.clone();
                    self.jobs.spawn(async move {
                        if let Err(e) = rt.stop_container(&id, grace).await {
                            tracing::warn!(container = %id, "stopping: {e}");
                        }
                        if let Err(e) = rt.remove_container(&id).await {
                            tracing::warn!(container = %id, "removing: {e}");
                        }
                    });
                    return;
                }
                let Some(p) = self.pods.get_mut(&pod) else { return };
                let id = container_id(&p.namespace, &p.name, &container);
                // Watch even when the pod is being deleted, so the exit is reaped.
                self.runtime.watch(&id, pid, start_time);
                let Some(c) = p.containers.get_mut(&container) else { return };
                if matches!(c.state, ContainerState::Creating) {
                    c.set_state(ContainerState::Running { pid, start_time, started_at_ms: now_ms() });
                    self.events.normal(
                        &format!("pod/{}", p.name),
                        "Started",
                        &format!("started container {container} (pid {pid})"),
                    );
                    self.start_probes(&pod, &container);
                }
                self.persist(&pod);
            }
            TaskResult::StartFailed { pod, container, reason, message } => {
                let Some(p) = self.pods.get_mut(&pod) else { return };
                let Some(c) = p.containers.get_mut(&container) else { return };
                if !matches!(c.state, ContainerState::Creating) {
                    return;
                }
                c.failures += 1;
                let delay = reconcile::backoff(c.failures).max(Duration::from_secs(1));
                c.set_state(ContainerState::Waiting {
                    reason: reason.clone(),
                    message: message.clone(),
                    retry_at_ms: now_ms() + delay.as_millis() as u64,
                });
                tracing::warn!(pod = %pod, container = %container, "{reason}: {message}");
                let object = format!("pod/{}", p.name);
                let image =
                    p.template.containers.iter().find(|c| c.name == container).map(|c| c.image.clone());
                match image.filter(|_| reason == "ImagePullBackOff") {
                    // The pull's `Failed` event carries the error already, as the kubelet's does.
                    Some(image) => {
                        self.events.warning(&object, "BackOff", &format!("Back-off pulling image {image:?}"))
                    }
                    None => self.events.warning(&object, &reason, &message),
                }
                self.persist(&pod);
            }
            TaskResult::HookFailed { pod, message } => {
                tracing::warn!(%pod, "FailedPreStopHook: {message}");
                self.events.warning(&super::pod_object(&pod), "FailedPreStopHook", &message);
            }
            TaskResult::Event { pod, warning, reason, message } => {
                let object = super::pod_object(&pod);
                if warning {
                    tracing::warn!(%pod, "{reason}: {message}");
                    self.events.warning(&object, &reason, &message);
                } else {
                    self.events.normal(&object, &reason, &message);
                }
            }
            TaskResult::Probe { pod, container, pid, report } => {
                self.handle_probe(&pod, &container, pid, report)
            }
            TaskResult::PodRemoved { pod } => {
                if let Some(p) = self.pods.remove(&pod) {
                    let logs = self.cfg.data_dir.join("logs").join(sandbox_id(&p.namespace, &p.name));
                    let _ = std::fs::remove_dir_all(logs);
                    self.events.normal(&format!("pod/{}", p.name), "Deleted", "pod removed");
                }
                self.persist(&pod);
            }
        }
    }

    pub(super) fn handle_exit(&mut self, e: ExitEvent) {
        let found = self.pods.iter_mut().find_map(|(key, p)| {
            let name = p.containers.iter().find_map(|(n, c)| match c.state {
                ContainerState::Running { pid, .. }
                    if pid == e.pid && container_id(&p.namespace, &p.name, n) == e.id =>
                {
                    Some(n.clone())
                }
                _ => None,
            })?;
            Some((key.clone(), name))
        });
        let Some((key, name)) = found else {
            tracing::debug!(id = %e.id, pid = e.pid, "exit of a container no longer tracked");
            return;
        };
        let now = now_ms();
        self.probes.stop(&e.id);
        let Some(pod) = self.pods.get_mut(&key) else { return };
        let Some(c) = pod.containers.get_mut(&name) else { return };
        let ContainerState::Running { started_at_ms, .. } = c.state else { return };
        let reason = if e.oom_killed {
            "OOMKilled"
        } else {
            match e.exit_code {
                Some(0) => "Completed",
                Some(_) => "Error",
                None if e.signal.is_some() => "Error",
                None => "Unknown",
            }
        };
        if now.saturating_sub(started_at_ms) >= reconcile::BACKOFF_RESET.as_millis() as u64 {
            c.failures = 0;
        }
        let exit_code = e.exit_code.or(e.signal.map(|s| 128 + s));
        c.set_state(ContainerState::Terminated(Terminated {
            exit_code,
            signal: e.signal,
            reason: reason.to_owned(),
            started_at_ms,
            finished_at_ms: now,
        }));
        let msg = format!("container {name} exited (code {exit_code:?}, reason {reason})");
        tracing::info!(pod = %key, "{msg}");
        let object = format!("pod/{}", pod.name);
        if reason == "Completed" {
            self.events.normal(&object, reason, &msg);
        } else {
            self.events.warning(&object, reason, &msg);
        }
        let delay =
            reconcile::restart_due_ms(pod.template.restart_policy, c).map(|due| due.saturating_sub(now));
        if let Some(delay) = delay.filter(|d| *d > 0) {
            let msg = format!("back-off {}s restarting failed container {name}", delay.div_ceil(1000));
            self.events.warning(&object, "BackOff", &msg);
        }
        self.persist(&key);
    }

    /// After a start: take back the pods of the previous run from their records.
    ///
    /// A container still running with the same pid and process start time is adopted
    /// as it is (no restart, no duplicate); one that died meanwhile is marked
    /// terminated with an unknown exit code and restarted by the reconciler. Containers
    /// the runtime holds that no record names are removed.
    pub(super) async fn adopt(&mut self) {
        let dir = self.cfg.data_dir.join("pods");
        let mut records: BTreeMap<String, ObservedPod> = BTreeMap::new();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                match std::fs::read(&path).map(|b| serde_json::from_slice::<ObservedPod>(&b)) {
                    Ok(Ok(pod)) => {
                        records.insert(reconcile::pod_key(&pod.namespace, &pod.name), pod);
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(path = %path.display(), "ignoring unreadable pod record: {e}")
                    }
                    Err(e) => tracing::warn!(path = %path.display(), "reading pod record: {e}"),
                }
            }
        }
        let now = now_ms();
        let mut known = std::collections::BTreeSet::new();
        for (key, pod) in records.iter_mut() {
            // An interrupted stop is decided again by the reconciler.
            pod.deleting = false;
            for (name, c) in pod.containers.iter_mut() {
                let id = container_id(&pod.namespace, &pod.name, name);
                known.insert(id.clone());
                let status = self.runtime.inspect(&id);
                match (&c.state, status) {
                    (
                        ContainerState::Running { pid, start_time, .. },
                        Ok(ContainerStatus::Running { pid: p, start_time: s }),
                    ) if *pid == p && *start_time == s => {
                        self.runtime.watch(&id, p, s);
                        tracing::info!(pod = %key, container = %name, pid = p, "adopted running container");
                    }
                    (ContainerState::Waiting { .. } | ContainerState::Terminated(_), _) => {}
                    (state, _) => {
                        let started_at_ms = match state {
                            ContainerState::Running { started_at_ms, .. } => *started_at_ms,
                            _ => now,
                        };
                        c.set_state(ContainerState::Terminated(Terminated {
                            exit_code: None,
                            signal: None,
                            reason: "Unknown".to_owned(),
                            started_at_ms,
                            finished_at_ms: now,
                        }));
                        // Gone while the agent was down (often a reboot): start it again
                        // at once rather than after an old crash loop's back-off.
                        c.failures = 0;
                        tracing::info!(pod = %key, container = %name, "container is gone since the agent last ran; it will be restarted");
                    }
                }
            }
        }
        self.pods = records;
        for key in self.pods.keys().cloned().collect::<Vec<_>>() {
            let names: Vec<String> =
                self.pods.get(&key).map(|p| p.containers.keys().cloned().collect()).unwrap_or_default();
            for name in names {
                self.start_probes(&key, &name);
            }
            self.persist(&key);
        }
        match self.runtime.list_containers() {
            Ok(ids) => {
                for id in ids.into_iter().filter(|id| !known.contains(id)) {
                    tracing::info!(container = %id, "removing a container no pod record names");
                    let rt = self.runtime.clone();
                    self.jobs.spawn(async move {
                        let _ = rt.stop_container(&id, Duration::from_secs(1)).await;
                        if let Err(e) = rt.remove_container(&id).await {
                            tracing::warn!(container = %id, "removing orphan: {e}");
                        }
                    });
                }
            }
            Err(e) => tracing::warn!("listing runtime containers: {e}"),
        }
    }
}
