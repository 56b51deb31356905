//! The local API between the `peer` CLI and its agent: JSON lines over a Unix socket.
//!
//! API boundary: one request per connection, one JSON object per line. The agent
//! answers with one `Response`; `logs --follow` answers with `Chunk`s until the
//! client hangs up. The socket is created mode 0600, so only root can use it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Largest request line the agent reads (a big `peer apply` of many files fits).
pub const MAX_REQUEST_BYTES: usize = 16 << 20;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Pods as table rows.
    GetPods,
    /// Deployments, StatefulSets or DaemonSets.
    GetWorkloads {
        kind: protocol::spec::Kind,
    },
    /// Services with their addresses, ports and endpoints (`services::ServiceEntry`s).
    GetServices,
    /// `peer top pods`: usage of the cluster's pods in `namespace` (all when `None`).
    TopPods {
        namespace: Option<String>,
    },
    /// `peer top nodes`: usage of every live node against its capacity.
    TopNodes,
    /// One service's entry, selector and where it came from.
    DescribeService {
        namespace: String,
        name: String,
    },
    GetEvents {
        after: std::collections::BTreeMap<String, u64>,
    },
    /// Full detail of one pod.
    DescribePod {
        namespace: String,
        name: String,
    },
    /// Log file location of a container (current or previous instance).
    LogPath {
        namespace: String,
        pod: String,
        container: Option<String>,
        previous: bool,
    },
    /// Where a running container lives, for `peer exec` (which runs in the CLI process).
    ExecTarget {
        namespace: String,
        pod: String,
        container: Option<String>,
    },
    /// Files given to `peer apply -f`: (name for messages, content).
    Apply {
        files: Vec<(String, String)>,
    },
    /// Files given to `peer delete -f`: every object they name is deleted.
    DeleteFiles {
        files: Vec<(String, String)>,
    },
    /// `peer scale KIND/NAME --replicas N`.
    Scale {
        kind: String,
        namespace: String,
        name: String,
        replicas: u32,
    },
    /// Where a Deployment's rollout stands (`peer rollout status`).
    RolloutStatus {
        namespace: String,
        name: String,
    },
    /// `peer rollout history deployment/NAME [--revision N]`.
    RolloutHistory {
        namespace: String,
        name: String,
        revision: Option<u64>,
    },
    /// `peer rollout undo deployment/NAME [--to-revision N]`.
    RolloutUndo {
        namespace: String,
        name: String,
        to_revision: Option<u64>,
    },
    /// `peer rollout pause` (`paused: true`) and `peer rollout resume`.
    RolloutPause {
        namespace: String,
        name: String,
        paused: bool,
    },
    /// HorizontalPodAutoscalers as `peer get hpa` shows them.
    GetAutoscalers,
    /// `peer describe hpa NAME`.
    DescribeAutoscaler {
        namespace: String,
        name: String,
    },
    /// Secrets as `kubectl get secrets -o json` shows them (values base64-encoded).
    GetSecrets,
    /// `peer describe secret NAME`: keys and sizes, never values.
    DescribeSecret {
        namespace: String,
        name: String,
    },
    /// `peer delete KIND NAME`.
    Delete {
        kind: String,
        namespace: String,
        name: String,
    },
    /// Cluster members as `peer get nodes` shows them.
    GetNodes,
    /// The current join token.
    Token,
    /// Replace the join token everywhere.
    TokenRotate,
    /// Remove a node for good: its certificate is refused from then on.
    NodeRemove {
        name: String,
    },
    /// Set (`value: Some`) or remove a label of this node.
    Label {
        key: String,
        value: Option<String>,
    },
    /// Add or remove a taint of this node.
    Taint {
        taint: String,
        remove: bool,
    },
    /// Cordon (`true`) or uncordon a node: this one, or the live node `name`. Answered
    /// with a [`NodeStatusAnswer`], as are `Drain` and `DrainStatus`.
    Cordon {
        name: Option<String>,
        cordoned: bool,
    },
    /// `peer drain`: cordon a node (this one, or the live node `name`) and evict its pods
    /// within disruption budgets.
    Drain {
        name: Option<String>,
    },
    /// Where a node's drain stands: the pods it still runs, DaemonSet pods aside.
    DrainStatus {
        name: Option<String>,
    },
    /// `peer image prune [--all]`: an image garbage collection pass now; with `all`,
    /// every image no container of this node uses goes. Answered with an
    /// [`ImagePruneAnswer`].
    PruneImages {
        all: bool,
    },
    /// Leave the cluster gracefully and stop the agent.
    Leave,
    /// Test hook (only with `PEER_TEST_HOOKS=1`): drop all traffic with these addresses.
    Block {
        addrs: Vec<std::net::SocketAddr>,
    },
    /// Pull an image into the node's store the way the agent pulls for pods (blobs from
    /// peers as `--image-distribution` says); answered when the pull ends.
    PullImage {
        reference: String,
        /// Overrides the agent's credentials file.
        credentials: Option<std::path::PathBuf>,
        insecure_registries: Vec<String>,
    },
}

impl Request {
    /// Whether the request changes desired state (and so needs a reconcile).
    pub fn writes(&self) -> bool {
        matches!(
            self,
            Request::Apply { .. }
                | Request::DeleteFiles { .. }
                | Request::Delete { .. }
                | Request::Scale { .. }
                | Request::RolloutUndo { .. }
                | Request::RolloutPause { .. }
                | Request::Label { .. }
                | Request::Taint { .. }
                | Request::Cordon { .. }
                | Request::Drain { .. }
        )
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Response {
    Ok { data: serde_json::Value },
    Error { message: String },
}

/// Answer to [`Request::LogPath`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogTarget {
    pub path: PathBuf,
    pub running: bool,
}

/// Answer to [`Request::ExecTarget`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecTarget {
    pub runtime_root: PathBuf,
    pub container_id: String,
}

/// A row of `peer get pods`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodRow {
    pub namespace: String,
    pub name: String,
    pub ready: String,
    pub status: String,
    pub restarts: u32,
    pub age_secs: u64,
    pub workload: String,
    /// The node that runs it (`<none>` when it fits nowhere).
    #[serde(default)]
    pub node: String,
    /// Whether this node runs it (other nodes' pods show only what their claims say).
    #[serde(default)]
    pub local: bool,
    /// The pod's address (`None` for host-network pods, or before it has one).
    #[serde(default)]
    pub ip: Option<std::net::Ipv4Addr>,
}

/// A row of `peer get deployments`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeploymentRow {
    pub namespace: String,
    pub name: String,
    pub ready: u32,
    pub desired: u32,
    pub up_to_date: u32,
    pub source: String,
    /// Set when this node's last write of the object lost to a concurrent write elsewhere.
    pub overwritten_by: Option<String>,
}

/// One entry of a node's event log (the wire type: the same on every node).
pub type EventRow = protocol::events::Event;

/// Answer to [`Request::GetEvents`]: the events of every live node with
/// `seq > after[node]` (all of a node's events when it is not named in `after`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EventsAnswer {
    /// Every node's events, sorted by the time they were last seen.
    pub events: Vec<EventRow>,
    /// Per node that answered, the newest `seq` it sent (or the `after` it was asked for):
    /// what to ask for next.
    pub cursors: std::collections::BTreeMap<String, u64>,
    /// Live nodes that did not answer in time.
    pub unreachable: Vec<String>,
}

/// Answer to [`Request::Cordon`], [`Request::Drain`] and [`Request::DrainStatus`]: the
/// node's state after the request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatusAnswer {
    pub node: String,
    #[serde(flatten)]
    pub status: protocol::node_request::NodeStatus,
}

/// A row of `peer get nodes`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRow {
    pub name: String,
    pub address: String,
    /// live, dead or left.
    pub state: String,
    pub age_secs: Option<u64>,
    pub cpu_millis: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub labels: std::collections::BTreeMap<String, String>,
    pub taints: Vec<String>,
    pub pods: Option<u32>,
}

/// A row of `peer top pods`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodUsageRow {
    pub namespace: String,
    pub name: String,
    /// The node that runs it.
    pub node: String,
    /// Millicores, averaged over the node's last sampling interval.
    pub cpu_millis: u64,
    /// Working set of its containers.
    pub memory_bytes: u64,
    /// When its node sampled it (ms since the epoch, that node's clock).
    pub sampled_at_ms: u64,
}

/// A row of `peer top nodes`; usage is `None` until the node has published a sample,
/// capacity until its node info arrived.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeUsageRow {
    pub name: String,
    pub cpu_millis: Option<u64>,
    pub cpu_percent: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub memory_percent: Option<u64>,
    pub cpu_capacity_millis: Option<u64>,
    pub memory_capacity_bytes: Option<u64>,
    pub sampled_at_ms: Option<u64>,
}

/// Answer to [`Request::PruneImages`]: what one image garbage collection pass removed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImagePruneAnswer {
    pub removed: Vec<RemovedImage>,
    /// Usage of the image store's file system when the pass planned, in percent.
    pub disk_percent: u64,
}

/// One image a garbage collection pass removed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemovedImage {
    pub id: String,
    /// Its tags (none for an image known by id only).
    pub names: Vec<String>,
    /// Bytes of its layer blobs as stored (what `peer image ls` shows).
    pub size: u64,
    pub unused_secs: u64,
    /// Why it went, in words (`unused for longer than …`, `disk usage …`, `pruned`).
    pub why: String,
}
