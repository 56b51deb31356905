//! Wire types and the desired-state model of peer: what the cluster wants, never how it runs.
//!
//! Architecture invariant: this crate does no I/O and knows nothing about containers.
#![forbid(unsafe_code)]

pub mod codec;
pub mod desired;
pub mod spec;
pub mod sync;

#[cfg(test)]
mod testkit;
