//! The peer node: the agent (reconciler, spec folder, local API) and the CLI.
#![forbid(unsafe_code)]

pub mod agent;
pub mod api;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod dns;
pub mod duration;
pub mod folder;
pub mod identity;
pub mod manifest;
pub mod metrics;
pub mod network;
pub mod nodecfg;
pub mod probe;
pub mod reconcile;
pub mod server;
pub mod services;
pub mod status;
pub mod store;
pub mod top;
pub mod watch;

/// `peer __runtime-helper …` runs libcontainer's create in a fresh single-threaded
/// process (see ARCHITECTURE.md); it is not a user command.
pub const RUNTIME_HELPER_ARG: &str = "__runtime-helper";
