//! Plain data the runtime is given (what to run) and gives back (what happened).

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One container to run. Fields left empty fall back to the image's config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// Container id: ASCII letters, digits, `-`, `_`, `.`; at most 128 bytes.
    pub id: String,
    /// Overrides the image's entrypoint; when set, the image's cmd is dropped too
    /// (Kubernetes `command` semantics). Empty means the image's.
    pub command: Vec<String>,
    /// Overrides the image's cmd. Empty means the image's (unless `command` is set).
    pub args: Vec<String>,
    /// Set over the image's environment, in order.
    pub env: Vec<(String, String)>,
    /// Working directory; `None` means the image's, or `/`.
    pub working_dir: Option<String>,
    /// Hostname inside the container's UTS namespace and in its `/etc/hostname`.
    pub hostname: String,
    /// cgroup limits.
    pub limits: Limits,
    /// Which network namespace the container lives in.
    pub network: Network,
    /// File that receives the container's stdout and stderr, appended.
    pub log_path: PathBuf,
    /// The container's `/etc/resolv.conf`, bind-mounted read-only. `None` keeps the
    /// default: a copy of the host's resolver config, writable.
    #[serde(default)]
    pub dns: Option<DnsConfig>,
    /// Entries of the container's `/etc/hosts`. When not empty, the file is the localhost
    /// lines plus these, bind-mounted read-only (as the kubelet writes it: put the pod's
    /// own address and hostname here). Empty keeps the default file, writable.
    #[serde(default)]
    pub hosts: Vec<(Ipv4Addr, Vec<String>)>,
}

/// A container's resolver configuration (`/etc/resolv.conf`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsConfig {
    /// `nameserver` lines, in order.
    pub nameservers: Vec<Ipv4Addr>,
    /// The `search` list, e.g. `default.svc.cluster.local`.
    pub searches: Vec<String>,
    /// The `options` list, e.g. `ndots:5`.
    pub options: Vec<String>,
}

/// cgroup limits of one container.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// CPU time in thousandths of a CPU (1000 = one full core); `None` is unlimited.
    pub cpu_millis: Option<u64>,
    /// Memory limit in bytes (swap is not allowed on top where the kernel accounts it).
    pub memory_bytes: Option<u64>,
    /// Maximum number of tasks; `None` means 1024.
    pub pids: Option<i64>,
}

/// The network namespace of a container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Network {
    /// The host's network namespace.
    #[default]
    Host,
    /// Join the namespace bind-mounted at this path (see `Runtime::ensure_pod_netns`).
    Namespace(PathBuf),
}

/// A container process that was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    /// Host pid of the container's init process.
    pub pid: i32,
    /// Field 22 of `/proc/<pid>/stat` (clock ticks since boot): tells this process
    /// apart from a later one that reuses the pid.
    pub start_time: u64,
}

/// A watched container process exited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitEvent {
    /// Container id.
    pub id: String,
    /// Host pid the process had.
    pub pid: i32,
    /// Exit status; for a process killed by a signal this is `128 + signal`, like a shell.
    /// `None` when the process was not our child (adopted after an agent restart) or was
    /// already gone when watching began, so nobody can know.
    pub exit_code: Option<i32>,
    /// The signal that killed the process, if it was killed and we could see it.
    pub signal: Option<i32>,
    /// The kernel OOM killer killed a process in the container's cgroup.
    pub oom_killed: bool,
}

/// What libcontainer's state and `/proc` say about a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerStatus {
    /// The init process is alive.
    Running { pid: i32, start_time: u64 },
    /// State exists but no process runs (exited, or created and never started).
    Stopped,
    /// No state for this id.
    Missing,
}
