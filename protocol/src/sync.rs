//! Anti-entropy for [`DesiredState`]: the messages two nodes exchange and a sans-I/O session
//! that drives one round over one ordered, bidirectional stream.
//!
//! A round: each side sends [`SyncMessage::Digest`]; equal digests end it. Otherwise each
//! side sends its [`Summary`] in chunks, and on the peer's last chunk prunes below the
//! peer's floor (rule F), computes [`diff`] and sends what the peer lacks as
//! [`SyncMessage::Entries`] chunks. After the peer's last `Entries` chunk it raises its floor
//! and the round is done. New local writes go out at once as [`SyncMessage::Push`].
//! Every message is at most [`codec::MAX_MESSAGE`] bytes and decoded through [`codec`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError, MAX_MESSAGE};
use crate::desired::{DesiredState, Entry, Stamp, MAX_ENTRY_BYTES};
use crate::spec::ObjectKey;

/// Chunks are filled up to this many encoded bytes, leaving room for the envelope.
pub const CHUNK_BYTES: usize = MAX_MESSAGE - 64 * 1024;

/// The most keys a peer's summary may list in one round; beyond it the round fails.
pub const MAX_SUMMARY_KEYS: usize = 200_000;

/// What one summary line says about a key: its stamp and value hash (the register's rank).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Version {
    pub stamp: Stamp,
    pub value_hash: u64,
}

/// A message of the anti-entropy protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncMessage {
    /// Opens a round with the sender's content digest and entry count.
    Digest { digest: u64, entries: u32, gc_floor: Option<Stamp> },
    /// One chunk of the sender's key versions; `last` marks the final chunk.
    Summary { gc_floor: Option<Stamp>, items: Vec<(ObjectKey, Version)>, last: bool },
    /// Entries the receiver lacks or holds older; `last` marks the end of the sender's diff.
    Entries { gc_floor: Option<Stamp>, entries: Vec<(ObjectKey, Entry)>, last: bool },
    /// New local writes, pushed outside a round.
    Push { gc_floor: Option<Stamp>, entries: Vec<(ObjectKey, Entry)> },
}

impl SyncMessage {
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        codec::encode(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        codec::decode(bytes, MAX_MESSAGE)
    }
}

/// A node's key set with versions and its floor, as the peer sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub gc_floor: Option<Stamp>,
    pub items: BTreeMap<ObjectKey, Version>,
}

/// The summary of a state.
pub fn summary(state: &DesiredState) -> Summary {
    let items = state
        .versions()
        .map(|(k, stamp, value_hash)| (k.clone(), Version { stamp: stamp.clone(), value_hash }))
        .collect();
    Summary { gc_floor: state.gc_floor().cloned(), items }
}

/// What to send to a peer and what to expect from it, given its summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    /// Local keys the peer lacks or holds at a lower version.
    pub to_send: Vec<ObjectKey>,
    /// Peer keys this node lacks or holds at a lower version.
    pub to_request: Vec<ObjectKey>,
}

/// Compares a state with a peer summary. Keys below a floor that the side holding the
/// greater floor lacks are left out: they were collected and must not travel (rule R).
pub fn diff(state: &DesiredState, peer: &Summary) -> Diff {
    let own = summary(state);
    let mut out = Diff::default();
    for (key, version) in &own.items {
        match peer.items.get(key) {
            Some(theirs) if theirs >= version => {}
            Some(_) => out.to_send.push(key.clone()),
            None if collected(&version.stamp, peer.gc_floor.as_ref(), own.gc_floor.as_ref()) => {}
            None => out.to_send.push(key.clone()),
        }
    }
    for (key, version) in &peer.items {
        match own.items.get(key) {
            Some(ours) if ours >= version => {}
            Some(_) => out.to_request.push(key.clone()),
            None if collected(&version.stamp, own.gc_floor.as_ref(), peer.gc_floor.as_ref()) => {}
            None => out.to_request.push(key.clone()),
        }
    }
    out
}

/// Whether a key the receiver lacks counts as collected there: stamped at or below the
/// receiver's floor, and the sender's floor is not higher.
fn collected(stamp: &Stamp, receiver: Option<&Stamp>, sender: Option<&Stamp>) -> bool {
    receiver.is_some_and(|f| stamp <= f) && sender <= receiver
}

/// Splits items into chunks of at most [`CHUNK_BYTES`] encoded bytes (at least one item each).
fn chunks<T: Serialize>(items: Vec<T>) -> Result<Vec<Vec<T>>, CodecError> {
    let mut out = vec![Vec::new()];
    let mut used = 0;
    for item in items {
        let len = codec::encoded_len(&item)?;
        let current = out.last_mut().expect("out starts non-empty and only grows");
        if !current.is_empty() && used + len > CHUNK_BYTES {
            out.push(Vec::new());
            used = 0;
        }
        used += len;
        out.last_mut().expect("out starts non-empty and only grows").push(item);
    }
    Ok(out)
}

/// Summary messages for a state, in order; the last has `last: true`.
pub fn summary_messages(state: &DesiredState) -> Result<Vec<SyncMessage>, CodecError> {
    let floor = state.gc_floor().cloned();
    let items: Vec<_> = summary(state).items.into_iter().collect();
    let chunks = chunks(items)?;
    let n = chunks.len();
    Ok(chunks
        .into_iter()
        .enumerate()
        .map(|(i, items)| SyncMessage::Summary { gc_floor: floor.clone(), items, last: i + 1 == n })
        .collect())
}

/// Entries messages carrying `keys` from `state`, in order; the last has `last: true`.
pub fn entries_messages(state: &DesiredState, keys: &[ObjectKey]) -> Result<Vec<SyncMessage>, CodecError> {
    let floor = state.gc_floor().cloned();
    let items: Vec<_> = keys.iter().filter_map(|k| state.entry(k).map(|e| (k.clone(), e.clone()))).collect();
    let chunks = chunks(items)?;
    let n = chunks.len();
    Ok(chunks
        .into_iter()
        .enumerate()
        .map(|(i, entries)| SyncMessage::Entries { gc_floor: floor.clone(), entries, last: i + 1 == n })
        .collect())
}

/// A push of new local writes.
pub fn push_message(state: &DesiredState, entries: Vec<(ObjectKey, Entry)>) -> SyncMessage {
    SyncMessage::Push { gc_floor: state.gc_floor().cloned(), entries }
}

/// Counts of what merging a batch of peer entries did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MergeStats {
    /// Entries that changed the state.
    pub changed: usize,
    /// Entries that were older or equal, or collected here.
    pub unchanged: usize,
    /// Malformed entries (key mismatch, oversized), dropped.
    pub rejected: usize,
    /// Local keys dropped under a peer's floor (rule F).
    pub pruned: usize,
}

/// Merges a batch of entries sent by a peer with floor `sender_floor`.
pub fn merge_entries(
    state: &mut DesiredState,
    entries: Vec<(ObjectKey, Entry)>,
    sender_floor: Option<&Stamp>,
    stats: &mut MergeStats,
) {
    for (key, entry) in entries {
        if codec::encoded_len(&entry).map_or(true, |len| len > MAX_ENTRY_BYTES) {
            stats.rejected += 1;
            continue;
        }
        match state.merge_entry(key, entry, sender_floor) {
            Ok(true) => stats.changed += 1,
            Ok(false) => stats.unchanged += 1,
            Err(_) => stats.rejected += 1,
        }
    }
}

#[cfg(test)]
mod tests;

mod session;
pub use session::{SyncError, SyncSession};
