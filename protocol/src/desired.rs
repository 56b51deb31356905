//! The cluster's desired state as a CRDT every node holds: a last-writer-wins element map
//! with tombstones, keyed by [`ObjectKey`], ordered by Lamport [`Stamp`]s, never wall clock.
//!
//! Why not `crdts::LWWReg`: its `update` ignores a write whose marker equals the current
//! one even when the value differs, so the outcome depends on delivery order, and its field
//! names would leak into the wire format. [`Entry`] is the same register with a total order
//! `(stamp, value hash)` that makes every merge commutative; it is a dozen lines.
//!
//! Tombstones are collected after a local horizon; `gc_floor` (the greatest stamp ever
//! collected) travels with the state so a node that missed a delete cannot resurrect it.
//! The rule is in PROTOCOL.md ("Tombstones and the GC floor") and on [`DesiredState::merge`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::spec::{fnv1a64, Object, ObjectKey, Service, Workload};

/// How long a tombstone is kept after this node first saw it: 7 days of local time.
pub const DEFAULT_GC_HORIZON_MS: u64 = 7 * 24 * 60 * 60 * 1000;

/// The largest encoded entry a node accepts from a local write, so that any entry fits in
/// one sync message (1 MiB) with room to spare.
pub const MAX_ENTRY_BYTES: usize = 512 * 1024;

/// A node's identity in the cluster (stable across restarts).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub String);

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The version of a write. Total order: `lamport`, then `node`, then `incarnation` (field
/// order; the derive relies on it). `incarnation` is random per install, so a node that lost
/// its disk and restarts with the same id never reuses a stamp.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stamp {
    pub lamport: u64,
    pub node: NodeId,
    pub incarnation: u64,
}

/// A node's Lamport clock. It observes every stamp merged into the state (the state does this
/// in [`DesiredState::put`] / [`DesiredState::delete`]), so a local write follows every write
/// this node has seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clock {
    pub lamport: u64,
    pub node: NodeId,
    pub incarnation: u64,
}

impl Clock {
    pub fn new(node: NodeId, incarnation: u64) -> Self {
        Self { lamport: 0, node, incarnation }
    }

    /// Moves the clock past a lamport value seen elsewhere.
    pub fn observe(&mut self, lamport: u64) {
        self.lamport = self.lamport.max(lamport);
    }

    /// The stamp of a new local write: one past everything observed.
    pub fn tick(&mut self) -> Stamp {
        self.lamport = self.lamport.saturating_add(1);
        Stamp { lamport: self.lamport, node: self.node.clone(), incarnation: self.incarnation }
    }
}

/// One key's register as it travels between nodes: a stamped object, or a tombstone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub stamp: Stamp,
    /// `None` is a tombstone: the object was deleted.
    pub value: Option<Object>,
}

impl Entry {
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }

    /// A stable hash of the value (0 for a tombstone): [`Object::value_hash`].
    pub fn value_hash(&self) -> u64 {
        self.value.as_ref().map_or(0, Object::value_hash)
    }
}

/// Errors of desired-state operations.
#[derive(Debug, thiserror::Error)]
pub enum DesiredError {
    /// An entry's object names another key than the one it was sent under; it was
    /// rejected and the state is unchanged.
    #[error("entry for {key} carries object {found}")]
    KeyMismatch { key: ObjectKey, found: ObjectKey },
    /// A local write is too large to replicate; the state is unchanged.
    #[error("object {key} is {len} bytes encoded, more than {max}")]
    TooLarge { key: ObjectKey, len: usize, max: usize },
    /// An object could not be encoded to measure it; the state is unchanged.
    #[error("cannot encode object {key}: {source}")]
    Encode { key: ObjectKey, source: crate::codec::CodecError },
}

/// Per-key record: the replicated [`Entry`] plus local bookkeeping that is never sent and
/// not part of the digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Slot {
    entry: Entry,
    value_hash: u64,
    /// The entry was written on this node (by `put`/`delete`), not merged from a peer.
    local: bool,
    /// The stamp of this node's own write that a merged entry replaced, for
    /// "overwritten by node X"; cleared by the next local write.
    overwritten: Option<Stamp>,
    /// Local time (ms) at which [`DesiredState::gc`] first saw this tombstone.
    tombstone_seen_ms: Option<u64>,
}

impl Slot {
    fn remote(entry: Entry) -> Self {
        let value_hash = entry.value_hash();
        Slot { entry, value_hash, local: false, overwritten: None, tombstone_seen_ms: None }
    }

    /// The total order of registers: stamp first, value hash breaks a (buggy) stamp reuse.
    fn rank(&self) -> (&Stamp, u64) {
        (&self.entry.stamp, self.value_hash)
    }
}

/// The desired state of the cluster as held by one node. Plain data: persist it with serde.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredState {
    /// Serialized as a list of pairs so that self-describing formats (JSON on disk) work.
    #[serde(with = "pairs")]
    slots: BTreeMap<ObjectKey, Slot>,
    /// The greatest stamp of any tombstone collected here or by a peer we merged with.
    gc_floor: Option<Stamp>,
    /// The greatest lamport value seen in any entry or floor, for the clock.
    max_lamport: u64,
}

impl DesiredState {
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes an object under its own key with a fresh stamp. A kind that keeps its
    /// creation stamp ([`Object::created`]) inherits it from the live version it replaces
    /// ([`DesiredState::inherit`]), or takes this write's stamp when it is new.
    pub fn put(&mut self, object: impl Into<Object>, clock: &mut Clock) -> Result<Entry, DesiredError> {
        let mut object = object.into();
        let key = object.key().clone();
        self.inherit(&mut object);
        clock.observe(self.max_lamport);
        // The stamp is taken before the size check: a refused write only skips a lamport
        // value, which is harmless (stamps must only grow).
        let stamp = clock.tick();
        if object.created().is_none() {
            object.set_created(Some(stamp.clone()));
        }
        let mut len = crate::codec::encoded_len(&object)
            .map_err(|source| DesiredError::Encode { key: key.clone(), source })?;
        // A Deployment's history gives way (oldest first) before its write is refused.
        while let Object::Workload(w) = &mut object {
            if len <= MAX_ENTRY_BYTES || w.rollout.history.is_empty() {
                break;
            }
            w.rollout.history.remove(0);
            len = crate::codec::encoded_len(&object)
                .map_err(|source| DesiredError::Encode { key: key.clone(), source })?;
        }
        if len > MAX_ENTRY_BYTES {
            return Err(DesiredError::TooLarge { key, len, max: MAX_ENTRY_BYTES });
        }
        Ok(self.insert_local(key, Entry { stamp, value: Some(object) }))
    }

    /// Copies what a new version of an object keeps from the live one under its key (the
    /// creation stamp; a Deployment's revision history, see
    /// [`crate::rollout::carry_history`]), so that an unchanged re-apply compares equal to
    /// what is stored.
    pub fn inherit(&self, object: &mut Object) {
        let live = self.get(object.key()).filter(|o| o.kind() == object.kind());
        object.set_created(live.and_then(Object::created).cloned());
        if let Object::Workload(next) = object {
            if next.key.kind == crate::spec::Kind::Deployment {
                crate::rollout::carry_history(live.and_then(Object::as_workload), next);
            }
        }
    }

    /// Deletes a key by writing a tombstone. `None` when there is no live object to delete.
    pub fn delete(&mut self, key: &ObjectKey, clock: &mut Clock) -> Option<Entry> {
        self.get(key)?;
        Some(self.write_local(key.clone(), None, clock))
    }

    fn write_local(&mut self, key: ObjectKey, value: Option<Object>, clock: &mut Clock) -> Entry {
        clock.observe(self.max_lamport);
        let entry = Entry { stamp: clock.tick(), value };
        self.insert_local(key, entry)
    }

    fn insert_local(&mut self, key: ObjectKey, entry: Entry) -> Entry {
        self.max_lamport = self.max_lamport.max(entry.stamp.lamport);
        let slot = Slot { local: true, ..Slot::remote(entry.clone()) };
        self.slots.insert(key, slot);
        entry
    }

    /// Merges one entry received from a peer whose floor is `sender_floor`. Returns whether
    /// the state changed. An entry for a key this node does not hold, stamped at or below
    /// our `gc_floor`, is dropped unless the sender's floor is higher: it was deleted and its
    /// tombstone collected here (rule R in PROTOCOL.md).
    pub fn merge_entry(
        &mut self,
        key: ObjectKey,
        entry: Entry,
        sender_floor: Option<&Stamp>,
    ) -> Result<bool, DesiredError> {
        if let Some(o) = &entry.value {
            if *o.key() != key {
                return Err(DesiredError::KeyMismatch { key, found: o.key().clone() });
            }
        }
        self.max_lamport = self.max_lamport.max(entry.stamp.lamport);
        let incoming = Slot::remote(entry);
        match self.slots.get_mut(&key) {
            Some(slot) => {
                if incoming.rank() <= slot.rank() {
                    return Ok(false);
                }
                let overwritten =
                    if slot.local { Some(slot.entry.stamp.clone()) } else { slot.overwritten.take() };
                *slot = Slot { overwritten, ..incoming };
                Ok(true)
            }
            None => {
                let below_floor = self.gc_floor.as_ref().is_some_and(|f| incoming.entry.stamp <= *f);
                if below_floor && sender_floor <= self.gc_floor.as_ref() {
                    return Ok(false);
                }
                self.slots.insert(key, incoming);
                Ok(true)
            }
        }
    }

    /// Merges a whole peer state: the join of the two. With `f` the greater floor, a key
    /// survives when its winning stamp is above `f` or every side whose floor is `f` holds
    /// it; below the greatest floor, absence means "deleted and collected".
    pub fn merge(&mut self, other: &DesiredState) {
        let peer_floor = other.gc_floor.as_ref();
        self.prune_to_floor(peer_floor, |k| other.slots.contains_key(k));
        for (key, slot) in &other.slots {
            // `other` only holds entries under their own keys, so this cannot fail.
            let _ = self.merge_entry(key.clone(), slot.entry.clone(), peer_floor);
        }
        self.raise_floor(peer_floor);
    }

    /// Rule F, part 1: once a peer's full key set and floor are known (a whole state or a
    /// complete sync summary) and its floor is at least ours, every local key stamped at or
    /// below that floor which the peer lacks is dropped. Returns the dropped keys (a dropped
    /// local write is worth a log line). Call [`DesiredState::raise_floor`] after the peer's
    /// entries were merged.
    pub fn prune_to_floor(
        &mut self,
        peer_floor: Option<&Stamp>,
        peer_has: impl Fn(&ObjectKey) -> bool,
    ) -> Vec<ObjectKey> {
        let Some(floor) = peer_floor else { return Vec::new() };
        if self.gc_floor.as_ref().is_some_and(|own| own > floor) {
            return Vec::new();
        }
        let dropped: Vec<ObjectKey> = self
            .slots
            .iter()
            .filter(|(k, s)| s.entry.stamp <= *floor && !peer_has(k))
            .map(|(k, _)| k.clone())
            .collect();
        for key in &dropped {
            self.slots.remove(key);
        }
        dropped
    }

    /// Rule F, part 2: takes a peer's floor when it is higher than ours.
    pub fn raise_floor(&mut self, peer_floor: Option<&Stamp>) {
        if let Some(floor) = peer_floor {
            if self.gc_floor.as_ref().is_none_or(|own| own < floor) {
                self.max_lamport = self.max_lamport.max(floor.lamport);
                self.gc_floor = Some(floor.clone());
            }
        }
    }

    /// Collects tombstones this node first saw at least `horizon_ms` of local time ago and
    /// raises `gc_floor` past them. A tombstone's first sighting is the first `gc` call that
    /// sees it, so call this periodically. Returns how many were collected.
    pub fn gc(&mut self, now_local_ms: u64, horizon_ms: u64) -> usize {
        let mut collected = Vec::new();
        for (key, slot) in &mut self.slots {
            if !slot.entry.is_tombstone() {
                continue;
            }
            match slot.tombstone_seen_ms {
                None => slot.tombstone_seen_ms = Some(now_local_ms),
                Some(seen) if now_local_ms.saturating_sub(seen) >= horizon_ms => {
                    collected.push(key.clone());
                }
                Some(_) => {}
            }
        }
        for key in &collected {
            if let Some(slot) = self.slots.remove(key) {
                self.raise_floor(Some(&slot.entry.stamp));
            }
        }
        collected.len()
    }

    /// The live object of a key (`None` if absent or deleted).
    pub fn get(&self, key: &ObjectKey) -> Option<&Object> {
        self.slots.get(key)?.entry.value.as_ref()
    }

    /// The entry of a key, tombstones included.
    pub fn entry(&self, key: &ObjectKey) -> Option<&Entry> {
        self.slots.get(key).map(|s| &s.entry)
    }

    /// The stamp of this node's own write of `key` that a peer's write replaced; the winner
    /// is [`DesiredState::entry`]`.stamp` ("overwritten by node X").
    pub fn overwritten(&self, key: &ObjectKey) -> Option<&Stamp> {
        self.slots.get(key)?.overwritten.as_ref()
    }

    /// Live objects in key order.
    pub fn live(&self) -> impl Iterator<Item = &Object> {
        self.slots.values().filter_map(|s| s.entry.value.as_ref())
    }

    /// Live workloads in key order: what placement and reconcile see.
    pub fn workloads(&self) -> impl Iterator<Item = &Workload> {
        self.live().filter_map(Object::as_workload)
    }

    /// Live services in key order.
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.live().filter_map(Object::as_service)
    }

    /// All entries in key order, tombstones included.
    pub fn entries(&self) -> impl Iterator<Item = (&ObjectKey, &Entry)> {
        self.slots.iter().map(|(k, s)| (k, &s.entry))
    }

    /// (key, stamp, value hash) of every entry in key order: what a sync summary carries.
    pub fn versions(&self) -> impl Iterator<Item = (&ObjectKey, &Stamp, u64)> {
        self.slots.iter().map(|(k, s)| (k, &s.entry.stamp, s.value_hash))
    }

    /// Number of entries, tombstones included.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn gc_floor(&self) -> Option<&Stamp> {
        self.gc_floor.as_ref()
    }

    /// The greatest lamport value seen; seed a restarted node's [`Clock`] with it.
    pub fn max_lamport(&self) -> u64 {
        self.max_lamport
    }

    /// A content digest: FNV-1a over the floor and every (key, stamp, value hash) in key
    /// order. Equal replicated states give equal digests; local bookkeeping is excluded.
    pub fn digest(&self) -> u64 {
        let mut buf = Vec::with_capacity(64 * (self.slots.len() + 1));
        push_stamp(&mut buf, self.gc_floor.as_ref());
        for (key, slot) in &self.slots {
            push_str(&mut buf, key.kind.as_str());
            push_str(&mut buf, &key.namespace);
            push_str(&mut buf, &key.name);
            push_stamp(&mut buf, Some(&slot.entry.stamp));
            buf.extend_from_slice(&slot.value_hash.to_le_bytes());
        }
        fnv1a64(&buf)
    }
}

/// Length-prefixed, so `("ab", "c")` and `("a", "bc")` hash differently.
fn push_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

fn push_stamp(buf: &mut Vec<u8>, stamp: Option<&Stamp>) {
    match stamp {
        None => buf.push(0),
        Some(s) => {
            buf.push(1);
            buf.extend_from_slice(&s.lamport.to_le_bytes());
            push_str(buf, &s.node.0);
            buf.extend_from_slice(&s.incarnation.to_le_bytes());
        }
    }
}

/// Serde adaptor: a map with non-string keys as a sequence of `(key, value)` pairs.
pub mod pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<K: Serialize, V: Serialize, S: Serializer>(
        map: &BTreeMap<K, V>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(map.iter())
    }

    pub fn deserialize<'de, K, V, D>(d: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(d)?.into_iter().collect())
    }
}

#[cfg(test)]
mod tests;
