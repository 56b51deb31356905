//! Wire types and the desired-state model of peer: what the cluster wants, never how it runs.
//!
//! Architecture invariant: this crate does no I/O and knows nothing about containers.
#![forbid(unsafe_code)]

pub mod spec;
