//! Wire types and the desired-state model of peer: what the cluster wants, never how it runs.
//!
//! Architecture invariant: this crate knows nothing about containers. Its decisions
//! (`desired`, `detector`, `sync`, `replicate`, `codec`, `placement`, `rollout`, `autoscale`) are pure;
//! only `transport` and `membership` do I/O.
#![forbid(unsafe_code)]

pub mod autoscale;
pub mod blob;
pub mod codec;
pub mod desired;
pub mod detector;
pub mod duty;
pub mod events;
pub mod fence;
pub mod members;
pub mod membership;
pub mod node_request;
pub mod placement;
pub mod replicate;
pub mod rollout;
pub mod spec;
pub mod sync;
pub mod tls;
pub mod transport;

#[cfg(test)]
mod testkit;
