//! Spreading desired state: whom to push a write to, whom to forward it to, and when to
//! start an anti-entropy round. Pure decisions over the live view; the node and the
//! simulation (`protocol/tests/sim.rs`) do the sending.
//!
//! A local write is pushed at once to up to `push_fanout` live peers; a node that learns
//! something new from a push forwards it to `forward_fanout` other peers (an epidemic, so
//! a write reaches n nodes in O(log n) hops without one node sending n messages). Pushes
//! may be lost; anti-entropy rounds repair that: every node publishes the digest of its
//! state in gossip, and a node that sees a peer with another digest starts a round with
//! it, at most one round per peer at a time and one per `resync_interval_ms`.

use std::collections::{BTreeMap, BTreeSet};

use crate::desired::{DesiredState, Entry, NodeId};
use crate::spec::ObjectKey;
use crate::sync::{merge_entries, push_message, MergeStats, SyncMessage};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicateConfig {
    pub push_fanout: usize,
    pub forward_fanout: usize,
    pub resync_interval_ms: u64,
}

impl Default for ReplicateConfig {
    fn default() -> Self {
        ReplicateConfig { push_fanout: 16, forward_fanout: 6, resync_interval_ms: 1000 }
    }
}

/// Replication decisions of one node. Inputs are `on_*`; outputs are returned messages.
#[derive(Debug)]
pub struct Replicator {
    me: NodeId,
    cfg: ReplicateConfig,
    rng: u64,
    in_round: BTreeSet<NodeId>,
    last_round_ms: BTreeMap<NodeId, u64>,
    /// When this node first saw a peer's digest differ from its own (cleared when equal).
    noticed_ms: BTreeMap<NodeId, u64>,
}

impl Replicator {
    /// `seed` drives the choice of random peers (inject it; tests and the simulation fix it).
    pub fn new(me: NodeId, cfg: ReplicateConfig, seed: u64) -> Self {
        Replicator {
            me,
            cfg,
            rng: seed | 1,
            in_round: BTreeSet::new(),
            last_round_ms: BTreeMap::new(),
            noticed_ms: BTreeMap::new(),
        }
    }

    /// Pushes new local writes to up to `push_fanout` live peers.
    pub fn on_local_write(
        &mut self,
        state: &DesiredState,
        entries: Vec<(ObjectKey, Entry)>,
        live: &[NodeId],
    ) -> Vec<(NodeId, SyncMessage)> {
        let targets = self.pick(live, self.cfg.push_fanout, None);
        let msg = push_message(state, entries);
        targets.into_iter().map(|t| (t, msg.clone())).collect()
    }

    /// Merges a push from `from`; what changed here is forwarded to `forward_fanout` others.
    pub fn on_push(
        &mut self,
        state: &mut DesiredState,
        from: &NodeId,
        msg: SyncMessage,
        live: &[NodeId],
    ) -> (MergeStats, Vec<(NodeId, SyncMessage)>) {
        let mut stats = MergeStats::default();
        let SyncMessage::Push { gc_floor, entries } = msg else {
            stats.rejected += 1;
            return (stats, vec![]);
        };
        let mut fresh = Vec::new();
        for (key, entry) in entries {
            let before = state.entry(&key).map(|e| e.stamp.clone());
            let mut one = MergeStats::default();
            merge_entries(state, vec![(key.clone(), entry)], gc_floor.as_ref(), &mut one);
            stats.changed += one.changed;
            stats.unchanged += one.unchanged;
            stats.rejected += one.rejected;
            if one.changed > 0 && state.entry(&key).map(|e| &e.stamp) != before.as_ref() {
                if let Some(e) = state.entry(&key) {
                    fresh.push((key, e.clone()));
                }
            }
        }
        if fresh.is_empty() {
            return (stats, vec![]);
        }
        let targets = self.pick(live, self.cfg.forward_fanout, Some(from));
        let msg = push_message(state, fresh);
        (stats, targets.into_iter().map(|t| (t, msg.clone())).collect())
    }

    /// Whether to start a round with `peer`, whose published digest is `peer_digest`.
    ///
    /// Of two nodes that see each other differ, the one with the smaller id starts at once,
    /// so they rarely run two rounds; the other starts too once the difference has lasted
    /// half an interval (the smaller one may not have seen our digest yet). Two rounds at
    /// once are harmless, only wasteful: every merge is idempotent.
    pub fn want_round(&mut self, my_digest: u64, peer: &NodeId, peer_digest: u64, now_ms: u64) -> bool {
        if peer == &self.me || my_digest == peer_digest {
            self.noticed_ms.remove(peer);
            return false;
        }
        if self.in_round.contains(peer) {
            return false;
        }
        let noticed = *self.noticed_ms.entry(peer.clone()).or_insert(now_ms);
        let interval = self.cfg.resync_interval_ms;
        let since_round = self.last_round_ms.get(peer).map_or(u64::MAX, |t| now_ms.saturating_sub(*t));
        let waiting = now_ms.saturating_sub(noticed);
        since_round >= interval && (self.me < *peer || waiting >= interval / 2)
    }

    pub fn round_started(&mut self, peer: &NodeId, now_ms: u64) {
        self.in_round.insert(peer.clone());
        self.last_round_ms.insert(peer.clone(), now_ms);
    }

    pub fn round_ended(&mut self, peer: &NodeId, now_ms: u64) {
        self.in_round.remove(peer);
        self.noticed_ms.remove(peer);
        self.last_round_ms.insert(peer.clone(), now_ms);
    }

    pub fn in_round(&self, peer: &NodeId) -> bool {
        self.in_round.contains(peer)
    }

    /// Up to `n` distinct live peers other than this node and `except`, chosen at random.
    fn pick(&mut self, live: &[NodeId], n: usize, except: Option<&NodeId>) -> Vec<NodeId> {
        let mut pool: Vec<&NodeId> = live.iter().filter(|p| **p != self.me && Some(*p) != except).collect();
        let mut out = Vec::new();
        while out.len() < n && !pool.is_empty() {
            let i = (self.next() % pool.len() as u64) as usize;
            out.push(pool.swap_remove(i).clone());
        }
        out
    }

    /// xorshift64*: small, seedable, good enough to spread load.
    fn next(&mut self) -> u64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::Clock;
    use crate::testkit::workload;

    fn ids(n: usize) -> Vec<NodeId> {
        (0..n).map(|i| NodeId(format!("n{i:03}"))).collect()
    }

    #[test]
    fn pushes_to_at_most_fanout_distinct_others() {
        let live = ids(40);
        let mut r = Replicator::new(live[0].clone(), ReplicateConfig::default(), 7);
        let mut state = DesiredState::new();
        let mut clock = Clock::new(live[0].clone(), 1);
        let e = state.put(workload(1, 1), &mut clock).expect("put");
        let out = r.on_local_write(&state, vec![(workload(1, 1).key, e)], &live);
        let targets: BTreeSet<_> = out.iter().map(|(t, _)| t.clone()).collect();
        assert_eq!(targets.len(), 16);
        assert!(!targets.contains(&live[0]));
        // A small cluster gets everyone.
        let out = r.on_local_write(&state, vec![], &live[..5]);
        assert_eq!(out.len(), 4);
    }

    #[test]
    fn forwards_only_what_was_new() {
        let live = ids(10);
        let mut writer = DesiredState::new();
        let mut clock = Clock::new(live[1].clone(), 1);
        let e = writer.put(workload(1, 1), &mut clock).expect("put");
        let push = push_message(&writer, vec![(workload(1, 1).key, e)]);
        let mut r = Replicator::new(live[0].clone(), ReplicateConfig::default(), 3);
        let mut state = DesiredState::new();
        let (stats, out) = r.on_push(&mut state, &live[1], push.clone(), &live);
        assert_eq!(stats.changed, 1);
        assert_eq!(out.len(), 6);
        assert!(out.iter().all(|(t, _)| t != &live[0] && t != &live[1]));
        let (stats, out) = r.on_push(&mut state, &live[2], push, &live);
        assert_eq!((stats.changed, out.len()), (0, 0));
    }

    #[test]
    fn rounds_start_from_the_smaller_id_and_respect_the_interval() {
        let a = NodeId("a".into());
        let b = NodeId("b".into());
        let mut ra = Replicator::new(a.clone(), ReplicateConfig::default(), 1);
        let mut rb = Replicator::new(b.clone(), ReplicateConfig::default(), 1);
        assert!(ra.want_round(1, &b, 2, 10_000));
        assert!(!rb.want_round(2, &a, 1, 10_000), "the larger id waits for the smaller");
        assert!(!rb.want_round(2, &a, 1, 10_400));
        assert!(rb.want_round(2, &a, 1, 10_500), "but not for long");
        assert!(!ra.want_round(1, &b, 1, 10_000), "equal digests need no round");
        ra.round_started(&b, 10_000);
        assert!(!ra.want_round(1, &b, 2, 10_500), "one round per peer at a time");
        ra.round_ended(&b, 10_100);
        assert!(!ra.want_round(1, &b, 2, 10_500), "at most one round per interval");
        assert!(ra.want_round(1, &b, 2, 11_100));
    }
}
