//! peer's own domain types for desired state: workloads and their pod templates,
//! services ([`service`]), disruption budgets ([`budget`]), autoscalers ([`autoscaler`]),
//! secrets ([`secret`]), and [`Object`], the value of a desired-state entry.
//!
//! Kubernetes manifests are converted into these types in exactly one place
//! (`node::manifest`); everything downstream (reconcile, later gossip and placement)
//! sees only these. They are plain data with deterministic (BTreeMap) ordering so
//! their serialized form, and so their hash, is stable.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub mod autoscaler;
pub mod budget;
mod object;
pub mod secret;
pub mod service;

pub use autoscaler::HorizontalPodAutoscaler;
pub use budget::{Budget, DisruptionBudget};
pub use object::Object;
pub use secret::{Secret, SecretValue};
pub use service::{ClusterIp, Service, ServicePort, ServiceType, TargetPort};

/// The kind of a desired-state object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    Deployment,
    Pod,
    StatefulSet,
    DaemonSet,
    Service,
    PodDisruptionBudget,
    HorizontalPodAutoscaler,
    /// What the node deciding for an autoscaler wrote last (same namespace and name as the
    /// autoscaler); never in a manifest.
    AutoscalerStatus,
    Secret,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Deployment => "Deployment",
            Kind::Pod => "Pod",
            Kind::StatefulSet => "StatefulSet",
            Kind::DaemonSet => "DaemonSet",
            Kind::Service => "Service",
            Kind::PodDisruptionBudget => "PodDisruptionBudget",
            Kind::HorizontalPodAutoscaler => "HorizontalPodAutoscaler",
            Kind::AutoscalerStatus => "AutoscalerStatus",
            Kind::Secret => "Secret",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Kind {
    /// Whether objects of this kind run pods (and so are a [`Workload`]).
    pub fn is_workload(self) -> bool {
        match self {
            Kind::Deployment | Kind::Pod | Kind::StatefulSet | Kind::DaemonSet => true,
            Kind::Service
            | Kind::PodDisruptionBudget
            | Kind::HorizontalPodAutoscaler
            | Kind::AutoscalerStatus
            | Kind::Secret => false,
        }
    }
}

/// Identity of a desired-state object: (kind, namespace, name).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.kind, self.namespace, self.name)
    }
}

/// A workload: a Deployment or StatefulSet (N replicas of a template), a DaemonSet (one
/// replica per matching node; `replicas` unused) or a bare Pod (one replica).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    pub key: ObjectKey,
    /// Labels of the object itself (metadata.labels).
    pub labels: BTreeMap<String, String>,
    pub replicas: u32,
    /// Label selector (matchLabels); defaulted from the template labels when absent.
    pub selector: BTreeMap<String, String>,
    pub strategy: Strategy,
    pub template: PodTemplate,
    /// StatefulSet's `podManagementPolicy`; `OrderedReady` for every other kind.
    #[serde(default)]
    pub pod_management: PodManagement,
    /// A Deployment's rollout settings and revision history.
    #[serde(default)]
    pub rollout: Box<Rollout>,
}

/// A Deployment's rollout settings (Kubernetes' defaults) and its revision history. The
/// history is kept by whichever node writes a new template ([`crate::rollout::carry_history`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Rollout {
    /// A new replica counts as available once Ready this long.
    pub min_ready_seconds: u32,
    /// A rollout that makes no progress for this long is marked failed.
    pub progress_deadline_seconds: u32,
    /// Old revisions kept for `peer rollout undo`.
    pub revision_history_limit: u32,
    /// `spec.paused`: a template change starts no rollout; one under way stops where it is.
    pub paused: bool,
    /// The `kubernetes.io/change-cause` annotation, shown by `peer rollout history`.
    pub change_cause: Option<String>,
    /// The number of the current template's revision (1, 2, …); 0 until first stored.
    pub revision: u64,
    /// Earlier templates, oldest first, at most `revision_history_limit`.
    pub history: Vec<Revision>,
}

impl Default for Rollout {
    fn default() -> Rollout {
        Rollout {
            min_ready_seconds: 0,
            progress_deadline_seconds: 600,
            revision_history_limit: 10,
            paused: false,
            change_cause: None,
            revision: 0,
            history: Vec::new(),
        }
    }
}

/// An earlier template of a Deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revision {
    pub number: u64,
    pub template: PodTemplate,
    pub change_cause: Option<String>,
}

/// StatefulSet `podManagementPolicy`: `OrderedReady` starts replica `i` only once
/// `0..i` run; `Parallel` starts them all at once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodManagement {
    #[default]
    OrderedReady,
    Parallel,
}

/// How replicas are replaced when the template changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Strategy {
    Recreate,
    RollingUpdate { max_surge: IntOrPercent, max_unavailable: IntOrPercent },
}

/// Kubernetes' IntOrString for counts: an absolute number or a percentage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IntOrPercent {
    Int(u32),
    Percent(u32),
}

/// The pod template: what every replica runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodTemplate {
    pub labels: BTreeMap<String, String>,
    pub containers: Vec<Container>,
    pub restart_policy: RestartPolicy,
    pub termination_grace_period_seconds: u64,
    pub host_network: bool,
    /// Where replicas may run (nodeSelector, affinity, tolerations, spread).
    #[serde(default)]
    pub scheduling: Scheduling,
    /// `imagePullSecrets`: names of `kubernetes.io/dockerconfigjson` Secrets of the pod's
    /// namespace whose credentials pulls of its images try first.
    #[serde(default)]
    pub image_pull_secrets: Vec<String>,
}

/// The pod spec fields placement reads, in `protocol::placement` terms.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scheduling {
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<crate::placement::Toleration>,
    /// `nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms` (ORed).
    pub required_affinity: Vec<crate::placement::NodeSelectorTerm>,
    /// `nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution`.
    pub preferred_affinity: Vec<crate::placement::PreferredTerm>,
    /// `podAntiAffinity` on `kubernetes.io/hostname` against the pod's own labels
    /// (required or preferred: peer spreads softly either way).
    pub anti_affinity_by_hostname: bool,
    /// The first `topologySpreadConstraints` entry with `whenUnsatisfiable: DoNotSchedule`.
    pub topology_spread: Option<crate::placement::TopologySpread>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    pub name: String,
    pub image: String,
    /// Overrides the image's entrypoint when non-empty (Kubernetes `command`).
    pub command: Vec<String>,
    /// Overrides the image's cmd when non-empty (Kubernetes `args`).
    pub args: Vec<String>,
    pub env: Vec<EnvVar>,
    pub working_dir: Option<String>,
    pub ports: Vec<ContainerPort>,
    pub resources: Resources,
    /// Kubernetes' `livenessProbe`, `readinessProbe` and `startupProbe`.
    #[serde(default)]
    pub probes: Probes,
    /// Kubernetes' `lifecycle.preStop`: runs before the container gets SIGTERM.
    #[serde(default)]
    pub pre_stop: Option<Hook>,
    /// `imagePullPolicy` as the manifest gives it; `None` when it gives none (and in
    /// entries stored before the field existed): Kubernetes' default for the image applies
    /// ([`Container::pull_policy`]). Kept unresolved so that neither an upgrade nor
    /// reading the same manifest again changes a stored template.
    #[serde(default)]
    pub image_pull_policy: Option<PullPolicy>,
}

impl Container {
    /// A container running `image` with nothing else set: what tests and simulations
    /// build on.
    pub fn new(name: impl Into<String>, image: impl Into<String>) -> Container {
        Container {
            name: name.into(),
            image: image.into(),
            command: vec![],
            args: vec![],
            env: vec![],
            working_dir: None,
            ports: vec![],
            resources: Resources::default(),
            probes: Probes::default(),
            pre_stop: None,
            image_pull_policy: None,
        }
    }

    /// The pull policy that applies: the manifest's, or Kubernetes' default for the image.
    pub fn pull_policy(&self) -> PullPolicy {
        self.image_pull_policy.unwrap_or_else(|| PullPolicy::default_for(&self.image))
    }
}

/// Kubernetes' `imagePullPolicy`: when a node pulls a container's image before starting it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PullPolicy {
    /// Pull on every start (the manifest is resolved again; layers held are not
    /// downloaded again).
    Always,
    /// Pull only when the node does not hold the image.
    IfNotPresent,
    /// Never pull: the image must have been imported or pulled on the node.
    Never,
}

impl PullPolicy {
    /// Kubernetes' default: `Always` when the image's tag is `latest`, or when it has
    /// neither tag nor digest; `IfNotPresent` otherwise.
    pub fn default_for(image: &str) -> PullPolicy {
        if image.contains('@') {
            return PullPolicy::IfNotPresent;
        }
        // A tag follows the last ':' after the last '/' (a ':' before it is a port).
        let last = image.rsplit('/').next().unwrap_or(image);
        match last.rsplit_once(':') {
            Some((_, tag)) if tag != "latest" => PullPolicy::IfNotPresent,
            _ => PullPolicy::Always,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// A lifecycle hook's handler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Hook {
    /// `exec`, `httpGet` or `tcpSocket`, as a probe runs them.
    Action(ProbeAction),
    /// `sleep.seconds`.
    Sleep(u32),
}

/// A container's probes; `None` where the manifest gives none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probes {
    /// Failing restarts the container.
    pub liveness: Option<Probe>,
    /// Failing takes the pod out of Ready (no traffic, holds rollouts back); no restart.
    pub readiness: Option<Probe>,
    /// Until it passes, liveness and readiness are not run; failing restarts the container.
    pub startup: Option<Probe>,
}

/// One probe with Kubernetes' timing fields, defaults applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    pub action: ProbeAction,
    pub initial_delay_seconds: u32,
    /// Default 10.
    pub period_seconds: u32,
    /// Default 1.
    pub timeout_seconds: u32,
    /// Consecutive successes after a failure to count as passing again (default 1; 1 for
    /// liveness and startup probes).
    pub success_threshold: u32,
    /// Consecutive failures to count as failed (default 3).
    pub failure_threshold: u32,
    /// Overrides the pod's grace period when this probe's failure kills the container.
    pub termination_grace_period_seconds: Option<u64>,
}

/// What a probe checks. Ports are numbers here: a named port is resolved against the
/// container's ports when the manifest is read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProbeAction {
    /// Runs `command` inside the container; exit code 0 passes.
    Exec { command: Vec<String> },
    /// `GET path` on the pod's loopback; a status from 200 to 399 passes.
    HttpGet { path: String, port: u16, headers: Vec<(String, String)> },
    /// A TCP connection to the port on the pod's loopback is accepted.
    TcpSocket { port: u16 },
}

impl Probe {
    /// A probe with Kubernetes' default timing.
    pub fn new(action: ProbeAction) -> Probe {
        Probe {
            action,
            initial_delay_seconds: 0,
            period_seconds: 10,
            timeout_seconds: 1,
            success_threshold: 1,
            failure_threshold: 3,
            termination_grace_period_seconds: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvVar {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub container_port: u16,
    pub protocol: Protocol,
    pub host_port: Option<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Protocol {
    Tcp,
    Udp,
}

/// Requests and limits; `None` means "not set".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub requests: ResourceList,
    pub limits: ResourceList,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceList {
    /// CPU in millicores (`500m` = 500, `2` = 2000).
    pub cpu_millis: Option<u64>,
    /// Memory in bytes (`128Mi` = 134217728).
    pub memory_bytes: Option<u64>,
}

impl PodTemplate {
    /// What one replica asks of a node: the sum of its containers' requests, where a
    /// container gives a limit but no request, the limit (Kubernetes' defaulting).
    pub fn requests(&self) -> crate::placement::Resources {
        let mut sum = crate::placement::Resources::default();
        for c in &self.containers {
            let r = &c.resources;
            sum.cpu_millis += r.requests.cpu_millis.or(r.limits.cpu_millis).unwrap_or(0);
            sum.memory_bytes += r.requests.memory_bytes.or(r.limits.memory_bytes).unwrap_or(0);
        }
        sum
    }

    /// One replica of this template as placement sees it. Replicas of a workload spread
    /// over nodes by default, as Kubernetes' default hostname spread does (an explicit
    /// hostname podAntiAffinity says the same).
    pub fn replica_req(
        &self,
        workload: String,
        identity: String,
        node_name: Option<String>,
    ) -> crate::placement::ReplicaReq {
        let s = &self.scheduling;
        crate::placement::ReplicaReq {
            workload,
            identity,
            requests: self.requests(),
            node_selector: s.node_selector.clone(),
            tolerations: s.tolerations.clone(),
            required_affinity: s.required_affinity.clone(),
            preferred_affinity: s.preferred_affinity.clone(),
            anti_affinity_by_hostname: true,
            topology_spread: s.topology_spread.clone(),
            node_name,
        }
    }

    /// A stable hash of the template, used as the revision of a Deployment:
    /// FNV-1a over the canonical JSON encoding (field order is declaration
    /// order and maps are BTreeMaps, so the bytes are deterministic).
    ///
    /// Fields added later are left out while they hold the value a template written before
    /// them means (a defaulted pull policy, no pull secrets), so an upgrade does not give
    /// every Deployment a new revision and replace all its pods.
    pub fn revision_hash(&self) -> String {
        let bytes =
            serde_json::to_vec(&HashedTemplate::of(self)).expect("a PodTemplate always serializes to JSON");
        format!("{:010x}", fnv1a64(&bytes) & 0xff_ffff_ffff)
    }
}

/// A [`PodTemplate`] as [`PodTemplate::revision_hash`] hashes it: the same fields in the
/// same order, with fields added later left out while they hold the value a template
/// written before them means (no pull policy or one equal to its image's default, no pull
/// secrets). So an upgrade gives no Deployment a new revision, which would replace all its
/// pods. A new field of `PodTemplate` or `Container` must be added here too (a test checks).
#[derive(Serialize)]
struct HashedTemplate<'a> {
    labels: &'a BTreeMap<String, String>,
    containers: Vec<HashedContainer<'a>>,
    restart_policy: RestartPolicy,
    termination_grace_period_seconds: u64,
    host_network: bool,
    scheduling: &'a Scheduling,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    image_pull_secrets: &'a [String],
}

#[derive(Serialize)]
struct HashedContainer<'a> {
    name: &'a str,
    image: &'a str,
    command: &'a [String],
    args: &'a [String],
    env: &'a [EnvVar],
    working_dir: &'a Option<String>,
    ports: &'a [ContainerPort],
    resources: &'a Resources,
    probes: &'a Probes,
    pre_stop: &'a Option<Hook>,
    #[serde(skip_serializing_if = "Option::is_none")]
    image_pull_policy: Option<PullPolicy>,
}

impl<'a> HashedTemplate<'a> {
    fn of(t: &'a PodTemplate) -> HashedTemplate<'a> {
        let containers = t
            .containers
            .iter()
            .map(|c| HashedContainer {
                name: &c.name,
                image: &c.image,
                command: &c.command,
                args: &c.args,
                env: &c.env,
                working_dir: &c.working_dir,
                ports: &c.ports,
                resources: &c.resources,
                probes: &c.probes,
                pre_stop: &c.pre_stop,
                image_pull_policy: c.image_pull_policy.filter(|p| *p != PullPolicy::default_for(&c.image)),
            })
            .collect();
        HashedTemplate {
            labels: &t.labels,
            containers,
            restart_policy: t.restart_policy,
            termination_grace_period_seconds: t.termination_grace_period_seconds,
            host_network: t.host_network,
            scheduling: &t.scheduling,
            image_pull_secrets: &t.image_pull_secrets,
        }
    }
}

/// FNV-1a, 64 bit: a stable hash for identities that must agree across processes and versions.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_matches_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn revision_hash_changes_with_the_template() {
        let mut t = PodTemplate {
            labels: BTreeMap::new(),
            containers: vec![],
            restart_policy: RestartPolicy::Always,
            termination_grace_period_seconds: 30,
            host_network: false,
            scheduling: Scheduling::default(),
            image_pull_secrets: vec![],
        };
        let a = t.revision_hash();
        assert_eq!(a, t.clone().revision_hash());
        t.termination_grace_period_seconds = 5;
        assert_ne!(a, t.revision_hash());
        assert_eq!(a.len(), 10);
    }

    fn container(image: &str, image_pull_policy: Option<PullPolicy>) -> Container {
        Container { image_pull_policy, ..Container::new("main", image) }
    }

    fn template(containers: Vec<Container>, image_pull_secrets: Vec<String>) -> PodTemplate {
        PodTemplate {
            labels: BTreeMap::new(),
            containers,
            restart_policy: RestartPolicy::Always,
            termination_grace_period_seconds: 30,
            host_network: false,
            scheduling: Scheduling::default(),
            image_pull_secrets,
        }
    }

    /// The JSON of a template without the fields added after revisions were first hashed,
    /// as a template of that time serialized.
    fn legacy_json(t: &PodTemplate) -> Vec<u8> {
        let text = serde_json::to_string(t).expect("encodes");
        text.replace(",\"image_pull_secrets\":[]}", "}")
            .replace(",\"image_pull_policy\":null}", "}")
            .into_bytes()
    }

    #[test]
    fn revision_hash_of_defaults_is_that_of_templates_before_pull_policies() {
        for image in ["peer-demo:latest", "127.0.0.1:5000/demo:v1", "nginx", "r.example/app@sha256:ab"] {
            let unset = template(vec![container(image, None)], vec![]);
            let before = format!("{:010x}", fnv1a64(&legacy_json(&unset)) & 0xff_ffff_ffff);
            assert_eq!(unset.revision_hash(), before, "{image}");
            // Decoded from an entry stored before the fields existed: the same.
            let mut json: serde_json::Value = serde_json::to_value(&unset).expect("encodes");
            json.as_object_mut().expect("object").remove("image_pull_secrets");
            json["containers"][0].as_object_mut().expect("object").remove("image_pull_policy");
            let old: PodTemplate = serde_json::from_value(json).expect("an old template decodes");
            assert_eq!(old, unset);
            // The default written out is the same revision.
            let written = template(vec![container(image, Some(PullPolicy::default_for(image)))], vec![]);
            assert_eq!(written.revision_hash(), before, "{image}");
            // Another policy, or a pull secret, is a new revision.
            let never = template(vec![container(image, Some(PullPolicy::Never))], vec![]);
            assert_ne!(never.revision_hash(), before, "{image}");
            let secret = template(vec![container(image, None)], vec!["r".into()]);
            assert_ne!(secret.revision_hash(), before, "{image}");
        }
        // Every field of the template and its containers is hashed: the mirror has them all.
        let full = template(vec![container("a:1", Some(PullPolicy::Never))], vec!["r".into()]);
        let keys = |v: serde_json::Value| -> Vec<String> {
            let mut keys: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
            keys.sort();
            keys
        };
        let real = serde_json::to_value(&full).expect("encodes");
        let hashed = serde_json::to_value(HashedTemplate::of(&full)).expect("encodes");
        assert_eq!(keys(real.clone()), keys(hashed.clone()));
        assert_eq!(keys(real["containers"][0].clone()), keys(hashed["containers"][0].clone()));
    }

    #[test]
    fn pull_policy_defaults_like_kubernetes() {
        let cases = [
            ("nginx", PullPolicy::Always),
            ("nginx:latest", PullPolicy::Always),
            ("nginx:1.25", PullPolicy::IfNotPresent),
            ("127.0.0.1:5000/demo", PullPolicy::Always),
            ("127.0.0.1:5000/demo:v1", PullPolicy::IfNotPresent),
            ("r.example/app@sha256:abcd", PullPolicy::IfNotPresent),
            ("r.example/app:latest@sha256:abcd", PullPolicy::IfNotPresent),
        ];
        for (image, want) in cases {
            assert_eq!(PullPolicy::default_for(image), want, "{image}");
        }
    }
}
