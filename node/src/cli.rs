//! The `peer` command line: `up` runs the agent; every other command talks to it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "peer", version, about = "A leaderless container orchestrator for edge fleets")]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// Where the node keeps its state, images, containers and logs.
    #[arg(long, global = true, env = "PEER_DATA_DIR", default_value = "/var/lib/peer")]
    pub data_dir: PathBuf,
    /// The agent's API socket [default: DATA_DIR/peer.sock].
    #[arg(long, global = true, env = "PEER_SOCKET")]
    pub socket: Option<PathBuf>,
}

impl Global {
    pub fn socket(&self) -> PathBuf {
        self.socket.clone().unwrap_or_else(|| self.data_dir.join("peer.sock"))
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node agent in the foreground.
    Up(Box<UpArgs>),
    /// List objects: pods, deployments, services, hpa, secrets, nodes, events.
    Get {
        resource: String,
        #[arg(short, long, value_enum)]
        output: Option<Output>,
        /// Keep printing new events (`peer get events -w`) until interrupted.
        #[arg(short, long)]
        watch: bool,
    },
    /// Show CPU and memory use of pods or nodes, cluster-wide: `peer top pods|nodes`.
    Top {
        /// `pods` or `nodes`.
        resource: String,
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// Pods of every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        #[arg(short, long, value_enum)]
        output: Option<Output>,
    },
    /// Show one pod in detail.
    Describe {
        /// `pod`, `service`, `hpa` or `secret`.
        resource: String,
        name: String,
        #[arg(short, long, default_value = "default")]
        namespace: String,
    },
    /// Print a container's logs.
    Logs {
        pod: String,
        #[arg(short, long)]
        container: Option<String>,
        /// Keep printing new output until the container stops.
        #[arg(short, long)]
        follow: bool,
        /// The previous (terminated) instance of the container.
        #[arg(short, long)]
        previous: bool,
        #[arg(short, long, default_value = "default")]
        namespace: String,
    },
    /// Add or update the objects in YAML files (a file or every file of a folder).
    Apply {
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
    },
    /// Delete the objects named in files, or one object by kind and name.
    Delete {
        #[arg(short = 'f', long = "filename")]
        files: Vec<PathBuf>,
        kind: Option<String>,
        name: Option<String>,
        #[arg(short, long, default_value = "default")]
        namespace: String,
    },
    /// Set a Deployment's or StatefulSet's replica count: `peer scale deployment/web --replicas 5`.
    Scale {
        /// `deployment/NAME` or `statefulset/NAME` (or `KIND NAME`).
        target: String,
        name: Option<String>,
        #[arg(long)]
        replicas: u32,
        #[arg(short, long, default_value = "default")]
        namespace: String,
    },
    /// Manage a Deployment's rollout: `peer rollout status|history|undo|pause|resume deployment/web`.
    Rollout {
        /// `status`, `history`, `undo`, `pause` or `resume`.
        action: String,
        /// `deployment/NAME` (or `deployment NAME`).
        target: String,
        name: Option<String>,
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// Print the state once instead of waiting for the rollout to finish.
        #[arg(long)]
        no_wait: bool,
        /// `history`: show this revision's template in full.
        #[arg(long)]
        revision: Option<u64>,
        /// `undo`: go back to this revision (default: the previous one).
        #[arg(long)]
        to_revision: Option<u64>,
        /// `history` and `status`: print the answer as JSON or YAML.
        #[arg(short, long, value_enum)]
        output: Option<Output>,
    },
    /// Run a command in a running container.
    Exec {
        pod: String,
        #[arg(short, long)]
        container: Option<String>,
        #[arg(short, long, default_value = "default")]
        namespace: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Manage the node's local image store.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Create a new cluster with this node as its first member (before `peer up`).
    Init {
        /// This node's name [default: the host name].
        #[arg(long, env = "PEER_NODE_NAME")]
        name: Option<String>,
    },
    /// Join the cluster of the node at ADDR (host:port of its `--listen`), before `peer up`.
    Join {
        addr: String,
        #[arg(long, env = "PEER_JOIN_TOKEN")]
        token: String,
        /// This node's name [default: the host name].
        #[arg(long, env = "PEER_NODE_NAME")]
        name: Option<String>,
    },
    /// Show the join token, or replace it everywhere (`peer token rotate`).
    Token {
        #[arg(value_parser = ["rotate"])]
        action: Option<String>,
    },
    /// Manage cluster members: `peer node remove NAME` refuses its certificate for good.
    Node {
        #[arg(value_parser = ["remove"])]
        action: String,
        name: String,
    },
    /// Set (`key=value`) or remove (`key-`) a label of this node.
    Label { label: String },
    /// Add (`key=value:Effect`) or remove (`key=value:Effect-`) a taint of this node.
    Taint { taint: String },
    /// Mark a node unschedulable: no new pods are placed on it; running ones stay.
    Cordon {
        /// Any live node of the cluster [default: this node].
        name: Option<String>,
    },
    /// Mark a node schedulable again (ends a drain).
    Uncordon {
        /// Any live node of the cluster [default: this node].
        name: Option<String>,
    },
    /// Cordon a node and evict its pods (DaemonSets stay), within PodDisruptionBudgets;
    /// waits until none is left. `peer uncordon` ends it.
    Drain {
        /// Any live node of the cluster [default: this node].
        name: Option<String>,
        /// Return at once instead of waiting for the pods to leave.
        #[arg(long)]
        no_wait: bool,
    },
    /// Leave the cluster gracefully and stop this node's agent.
    Leave,
    /// Test hook: drop all traffic with these peers (agent needs PEER_TEST_HOOKS=1).
    #[command(hide = true)]
    Block { addrs: Vec<std::net::SocketAddr> },
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// This node's name in the cluster [default: the host name, fixed at first start].
    #[arg(long, env = "PEER_NODE_NAME")]
    pub name: Option<String>,
    /// The drop-in folder of Kubernetes YAML specs.
    #[arg(long, env = "PEER_SPECS", default_value = "/etc/peer/specs")]
    pub specs: PathBuf,
    /// CPU limit (millicores) for containers that declare none.
    #[arg(long, env = "PEER_DEFAULT_CPU_MILLIS", default_value_t = 1000)]
    pub default_cpu_millis: u64,
    /// Memory limit (MiB) for containers that declare none.
    #[arg(long, env = "PEER_DEFAULT_MEMORY_MIB", default_value_t = 512)]
    pub default_memory_mib: u64,
    /// Parent cgroup of this node's containers (under each hierarchy's root).
    #[arg(long, env = "PEER_CGROUP_PARENT", default_value = "peer")]
    pub cgroup_parent: String,
    /// Listen address for node-to-node QUIC traffic (gossip, state sync, joins).
    #[arg(long, env = "PEER_LISTEN", default_value = "0.0.0.0:7946")]
    pub listen: std::net::SocketAddr,
    /// The address other nodes reach this node at [default: the listen address, or the
    /// first non-loopback interface address when listening on 0.0.0.0].
    #[arg(long, env = "PEER_ADVERTISE")]
    pub advertise: Option<std::net::SocketAddr>,
    /// A label of this node, `key=value` (repeatable).
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// A taint of this node, `key=value:Effect` (repeatable).
    #[arg(long = "taint")]
    pub taints: Vec<String>,
    /// Rotate a container's log file past this size (MiB).
    #[arg(long, default_value_t = 10)]
    pub log_max_mib: u64,
    /// Pod addresses of the whole cluster; every node must use the same.
    #[arg(long, env = "PEER_CLUSTER_CIDR", default_value = "10.42.0.0/16")]
    pub cluster_cidr: String,
    /// Size of each node's pod range, as a prefix length.
    #[arg(long, env = "PEER_NODE_CIDR_MASK_SIZE", default_value_t = 24)]
    pub node_cidr_mask_size: u8,
    /// Virtual addresses of services; every node must use the same.
    #[arg(long, env = "PEER_SERVICE_CIDR", default_value = "10.43.0.0/16")]
    pub service_cidr: String,
    /// Pod networking: `bridge` (an address per pod on the node's bridge, routes to other
    /// nodes' ranges, services and DNS) or `none` (each pod gets only its loopback).
    #[arg(long, env = "PEER_POD_NETWORK", default_value = "bridge")]
    pub pod_network: String,
    /// How often each HorizontalPodAutoscaler decides, in seconds (Kubernetes'
    /// `--horizontal-pod-autoscaler-sync-period`); every node must use the same.
    #[arg(long, env = "PEER_HPA_SYNC_PERIOD", default_value_t = 15)]
    pub hpa_sync_period: u64,
    /// Where image blobs come from: `peers-first` (from nodes that hold them, the registry
    /// for the rest), `registry-only`, or `peers-only` (air-gapped: never the registry).
    #[arg(long, env = "PEER_IMAGE_DISTRIBUTION", default_value = "peers-first")]
    pub image_distribution: runtime::image::Distribution,
    /// How often unused images are collected (`90s`, `5m`, `1h`; a bare number is seconds).
    #[arg(long, env = "PEER_IMAGE_GC_PERIOD", default_value = "5m", value_parser = crate::duration::parse)]
    pub image_gc_period: std::time::Duration,
    /// Disk usage (percent) of the image store's file system at which unused images are
    /// deleted, least recently used first (kubelet's `--image-gc-high-threshold`); 100
    /// turns it off.
    #[arg(long, env = "PEER_IMAGE_GC_HIGH_THRESHOLD", default_value_t = 85,
          value_parser = clap::value_parser!(u8).range(0..=100))]
    pub image_gc_high_threshold: u8,
    /// Disk usage (percent) that collection under disk pressure brings the file system
    /// down to (kubelet's `--image-gc-low-threshold`).
    #[arg(long, env = "PEER_IMAGE_GC_LOW_THRESHOLD", default_value_t = 80,
          value_parser = clap::value_parser!(u8).range(0..=100))]
    pub image_gc_low_threshold: u8,
    /// Images added more recently than this are never collected (kubelet's
    /// `--minimum-image-ttl-duration`).
    #[arg(long, env = "PEER_IMAGE_GC_MIN_AGE", default_value = "2m", value_parser = crate::duration::parse)]
    pub image_gc_min_age: std::time::Duration,
    /// Images unused this long are collected unless a workload of the cluster names them
    /// (kubelet's `imageMaximumGCAge`); 0 turns it off.
    #[arg(long, env = "PEER_IMAGE_GC_MAX_AGE", default_value = "24h", value_parser = crate::duration::parse)]
    pub image_gc_max_age: std::time::Duration,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Import an OCI image layout (directory or tar) or a `docker save` archive.
    Import { path: PathBuf },
    /// Pull an image from an OCI registry (`host[:port]/repo:tag` or `…@sha256:…`).
    ///
    /// Loopback registries are spoken to over plain HTTP, others over HTTPS unless listed
    /// with `--insecure-registry`.
    Pull {
        reference: String,
        /// Docker `config.json`-shaped file with basic credentials per registry.
        #[arg(long, env = "PEER_REGISTRY_AUTH")]
        credentials: Option<PathBuf>,
        /// A registry (`host[:port]`) to reach over plain HTTP; may be repeated.
        #[arg(long = "insecure-registry")]
        insecure_registries: Vec<String>,
    },
    /// List images.
    Ls,
    /// Remove an image reference.
    Rm { reference: String },
    /// Collect unused images now through the running agent and print what went.
    Prune {
        /// Remove every image no container of this node uses, whether or not workloads
        /// name it and however recent (like `docker image prune -a`).
        #[arg(short, long)]
        all: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Output {
    Json,
    Yaml,
}
