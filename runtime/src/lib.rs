//! Runs containers for peer through youki's libcontainer: images, bundles, cgroups, logs.
//!
//! Architecture invariant: this crate knows nothing about clusters, specs or gossip; it
//! runs the containers it is told about and reports what happened to them.

pub mod helper;
pub mod image;
pub mod logs;
pub mod net;

mod bundle;
mod cgroup;
mod engine;
mod error;
mod exec;
mod exit;
mod gate;
mod netns;
mod overlay;
mod probe;
mod process;
mod spec;
mod usage;

pub use bundle::{mounts as container_mounts, DEFAULT_CAPS, MASKED_PATHS, READONLY_PATHS};
pub use cgroup::kill_all_under;
pub use engine::{Runtime, RuntimeConfig};
pub use error::Error;
pub use exec::exec;
pub use gate::StartGate;
pub use image::{ImageConfig, ResolvedImage};
pub use probe::{ExecOutcome, PROBE_OUTPUT_LIMIT};
pub use spec::{ContainerSpec, ContainerStatus, DnsConfig, ExitEvent, Limits, Network, Started};
pub use usage::{node_usage, Usage};
