//! Cluster membership: chitchat gossip over [`QuicTransport`] with failure detection tuned for
//! small edge fleets, and a few checked operations on the node's own keys.
//!
//! Tuning (NOTES.md, measured on loopback): gossip every 200 ms with a 500 ms initial
//! heartbeat interval sees a killed node dead in about 1 s and produced no false deaths with
//! two CPU hogs on two cores. Liveness for decisions comes from [`Membership::live_watcher`]
//! snapshots, not from `subscribe_event` (it misses deletes and GC).
//!
//! [`QuicTransport`]: crate::transport::QuicTransport

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use chitchat::{
    spawn_chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, NodeState,
};
use tokio::sync::watch;

use crate::transport::TransportHandle;

/// The largest value of a key: chitchat silently stops propagating a node's later keys once
/// one value is over ~65 KB (NOTES.md), so stay far below.
pub const MAX_VALUE_BYTES: usize = 16 * 1024;
/// The largest key.
pub const MAX_KEY_BYTES: usize = 256;
/// Set by a node that leaves gracefully; such a node no longer counts as live.
pub const LEFT_KEY: &str = "left";

/// Errors of membership operations. Each says whether state changed.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// Chitchat could not start (e.g. the transport was already opened); nothing runs.
    #[error("cannot start gossip: {0}")]
    Start(String),
    /// The key or value is over its limit; the key was not set.
    #[error("key {key:?} of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { key: String, len: usize, max: usize },
    /// The gossip loop has stopped; nothing was done.
    #[error("gossip is not running: {0}")]
    Stopped(String),
}

/// How this node gossips.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    pub cluster_id: String,
    pub node_id: String,
    /// Must grow on every start (a persisted counter or the boot time in ms): a restart with
    /// the same generation leaves peers with stale state (NOTES.md).
    pub generation: u64,
    pub seeds: Vec<SocketAddr>,
    /// The address peers reach this node at, when it differs from the bound one (a
    /// wildcard listen address such as 0.0.0.0 is not reachable).
    pub advertise: Option<SocketAddr>,
    pub gossip_interval: Duration,
    pub failure_detector: FailureDetectorConfig,
    /// How long deleted keys are kept as tombstones.
    pub marked_for_deletion_grace_period: Duration,
}

impl MembershipConfig {
    /// The tuned defaults: gossip 200 ms, see [`tuned_failure_detector`].
    pub fn new(cluster_id: &str, node_id: &str, generation: u64) -> Self {
        Self {
            cluster_id: cluster_id.to_owned(),
            node_id: node_id.to_owned(),
            generation,
            seeds: Vec::new(),
            advertise: None,
            gossip_interval: Duration::from_millis(200),
            failure_detector: tuned_failure_detector(),
            marked_for_deletion_grace_period: Duration::from_secs(60 * 60),
        }
    }
}

/// Phi threshold 8 (chitchat's default) over a 500 ms initial interval: dead in ~1 s on
/// loopback. A dead node's keys stay readable for an hour, then vanish everywhere, so state a
/// node authors must also live elsewhere (NOTES.md).
pub fn tuned_failure_detector() -> FailureDetectorConfig {
    FailureDetectorConfig {
        phi_threshold: 8.0,
        sampling_window_size: 1_000,
        max_interval: Duration::from_secs(10),
        initial_interval: Duration::from_millis(500),
        dead_node_grace_period: Duration::from_secs(60 * 60),
    }
}

/// One node as gossip sees it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Member {
    pub node_id: String,
    pub gossip_addr: SocketAddr,
    pub generation: u64,
}

impl From<&ChitchatId> for Member {
    fn from(id: &ChitchatId) -> Self {
        Self {
            node_id: id.node_id.to_string(),
            gossip_addr: id.gossip_advertise_addr,
            generation: id.generation_id,
        }
    }
}

/// Live and dead members (self included among the live), sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Members {
    pub live: Vec<Member>,
    pub dead: Vec<Member>,
}

/// A running chitchat instance. Dropping it without [`Membership::leave`] stops gossip like a
/// crash would.
pub struct Membership {
    handle: ChitchatHandle,
    live: watch::Receiver<BTreeMap<ChitchatId, NodeState>>,
    gossip_interval: Duration,
}

fn check_size(key: &str, value: &str) -> Result<(), MembershipError> {
    if key.len() > MAX_KEY_BYTES {
        return Err(MembershipError::TooLarge { key: key.to_owned(), len: key.len(), max: MAX_KEY_BYTES });
    }
    if value.len() > MAX_VALUE_BYTES {
        return Err(MembershipError::TooLarge {
            key: key.to_owned(),
            len: value.len(),
            max: MAX_VALUE_BYTES,
        });
    }
    Ok(())
}

impl Membership {
    /// Starts gossip on `transport` (whose address is the gossip address) with initial keys.
    pub async fn spawn(
        config: MembershipConfig,
        transport: &TransportHandle,
        initial: Vec<(String, String)>,
    ) -> Result<Self, MembershipError> {
        for (k, v) in &initial {
            check_size(k, v)?;
        }
        let addr = transport.local_addr().map_err(|e| MembershipError::Start(e.to_string()))?;
        let advertise = config.advertise.unwrap_or(addr);
        let chitchat_config = ChitchatConfig {
            chitchat_id: ChitchatId::new(config.node_id.as_str(), config.generation, advertise),
            cluster_id: config.cluster_id.clone(),
            gossip_interval: config.gossip_interval,
            listen_addr: addr,
            seed_nodes: config.seeds.iter().map(ToString::to_string).collect(),
            failure_detector_config: config.failure_detector.clone(),
            marked_for_deletion_grace_period: config.marked_for_deletion_grace_period,
            catchup_callback: None,
            extra_liveness_predicate: Some(Box::new(|state: &NodeState| state.get(LEFT_KEY).is_none())),
            protocol_version: chitchat::ProtocolVersion::V0,
        };
        let handle = spawn_chitchat(chitchat_config, initial, &transport.chitchat_transport())
            .await
            .map_err(|e| MembershipError::Start(format!("{e:#}")))?;
        let live = handle.with_chitchat(|c| c.live_nodes_watcher()).await;
        Ok(Self { handle, live, gossip_interval: config.gossip_interval })
    }

    /// This node's chitchat id.
    pub fn self_member(&self) -> Member {
        self.handle.chitchat_id().into()
    }

    /// Snapshots of the live nodes and their states; drive reconciliation from these.
    pub fn live_watcher(&self) -> watch::Receiver<BTreeMap<ChitchatId, NodeState>> {
        self.live.clone()
    }

    /// The live members (from the watcher) and the dead ones (from the failure detector).
    pub async fn members(&self) -> Members {
        let mut live: Vec<Member> = self.live.borrow().keys().map(Member::from).collect();
        let mut dead: Vec<Member> =
            self.handle.with_chitchat(|c| c.dead_nodes().map(Member::from).collect()).await;
        live.sort();
        dead.sort();
        Members { live, dead }
    }

    /// Sets one of this node's keys, after checking its size.
    pub async fn set_self_key(&self, key: &str, value: &str) -> Result<(), MembershipError> {
        check_size(key, value)?;
        self.handle.with_chitchat(|c| c.self_node_state().set(key, value)).await;
        Ok(())
    }

    /// Deletes one of this node's keys (a tombstone that gossip carries).
    pub async fn delete_self_key(&self, key: &str) {
        self.handle.with_chitchat(|c| c.self_node_state().delete(key)).await;
    }

    /// The value of `key` on the newest known generation of `node_id`, live or dead.
    pub async fn node_key(&self, node_id: &str, key: &str) -> Option<String> {
        self.handle
            .with_chitchat(|c| {
                c.node_states()
                    .iter()
                    .filter(|(id, _)| &*id.node_id == node_id)
                    .max_by_key(|(id, _)| id.generation_id)
                    .and_then(|(_, state)| state.get(key).map(str::to_owned))
            })
            .await
    }

    /// Nodes whose newest known state says they left gracefully.
    pub async fn left_nodes(&self) -> Vec<String> {
        self.handle
            .with_chitchat(|c| {
                let mut newest: BTreeMap<String, (u64, bool)> = BTreeMap::new();
                for (id, state) in c.node_states() {
                    let left = state.get(LEFT_KEY).is_some();
                    let e = newest.entry(id.node_id.to_string()).or_insert((id.generation_id, left));
                    if id.generation_id >= e.0 {
                        *e = (id.generation_id, left);
                    }
                }
                newest.into_iter().filter(|(_, (_, left))| *left).map(|(id, _)| id).collect()
            })
            .await
    }

    /// Gossips with `addr` now, e.g. to join through a known member.
    pub fn gossip(&self, addr: SocketAddr) -> Result<(), MembershipError> {
        self.handle.gossip(addr).map_err(|e| MembershipError::Stopped(e.to_string()))
    }

    /// Leaves gracefully: sets [`LEFT_KEY`], gossips it for three rounds, then stops.
    pub async fn leave(self) -> Result<(), MembershipError> {
        self.set_self_key(LEFT_KEY, "1").await?;
        tokio::time::sleep(self.gossip_interval * 3).await;
        self.shutdown().await
    }

    /// Stops gossip without telling anyone (peers see this node die).
    pub async fn shutdown(self) -> Result<(), MembershipError> {
        let stopped = |e: anyhow::Error| MembershipError::Stopped(e.to_string());
        self.handle.initiate_shutdown().map_err(stopped)?;
        self.handle.termination_watcher().await.map_err(stopped)
    }
}

impl Drop for Membership {
    /// Chitchat's task outlives its handle unless stopped: dropping stops it like a crash.
    fn drop(&mut self) {
        self.handle.abort();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // In tests a panic is the failure report.
mod tests {
    use std::collections::BTreeSet;
    use std::time::Instant;

    use super::*;
    use crate::transport::tests::{cluster_ca, node, wait_until, TestNode};

    async fn member(ca: &crate::tls::ClusterCa, name: &str, seeds: &[SocketAddr]) -> (TestNode, Membership) {
        let n = node(ca, name);
        let mut config = MembershipConfig::new("test", name, 1);
        config.seeds = seeds.to_vec();
        let m = Membership::spawn(config, &n.handle, Vec::new()).await.unwrap();
        (n, m)
    }

    fn live_ids(m: &Membership) -> BTreeSet<String> {
        m.live_watcher().borrow().keys().map(|id| id.node_id.to_string()).collect()
    }

    fn ids(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_nodes_gossip_and_detect_a_killed_node() {
        let ca = cluster_ca();
        let (a, ma) = member(&ca, "a", &[]).await;
        let (_b, mb) = member(&ca, "b", &[a.addr]).await;
        let (c, mc) = member(&ca, "c", &[a.addr]).await;
        let start = Instant::now();
        let all = ids(&["a", "b", "c"]);
        wait_until(Duration::from_secs(10), || {
            live_ids(&ma) == all && live_ids(&mb) == all && live_ids(&mc) == all
        })
        .await
        .expect("all three live everywhere within 10 s");
        eprintln!("three nodes live everywhere after {:?}", start.elapsed());

        mc.set_self_key("role", "edge").await.unwrap();
        let big = "x".repeat(MAX_VALUE_BYTES + 1);
        assert!(matches!(mc.set_self_key("big", &big).await, Err(MembershipError::TooLarge { .. })));
        let mut seen = None;
        for _ in 0..20 {
            seen = ma.node_key("c", "role").await;
            if seen.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(seen.as_deref(), Some("edge"));

        // Let the failure detector learn the heartbeat rate (its 500 ms prior fades with samples).
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // Kill c: no leave, endpoint gone.
        let killed = Instant::now();
        drop(mc);
        c.handle.close();
        drop(c);
        let two = ids(&["a", "b"]);
        // How fast is a benchmark (BENCHMARKS.md, "Cluster"); here only that it happens, with
        // room for a loaded 2-core CI machine.
        wait_until(Duration::from_secs(10), || live_ids(&ma) == two && live_ids(&mb) == two)
            .await
            .expect("the killed node is dead within 10 s");
        eprintln!("killed node seen dead after {:?}", killed.elapsed());
        assert!(ma.members().await.dead.iter().any(|m| m.node_id == "c"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn blocked_peers_stop_seeing_each_other_and_leave_is_seen() {
        let ca = cluster_ca();
        let (a, ma) = member(&ca, "a", &[]).await;
        let (b, mb) = member(&ca, "b", &[a.addr]).await;
        let both = ids(&["a", "b"]);
        wait_until(Duration::from_secs(2), || live_ids(&ma) == both && live_ids(&mb) == both).await.unwrap();

        a.handle.set_blocked([b.addr].into());
        b.handle.set_blocked([a.addr].into());
        // Freshly started nodes detect slower: the 500 ms prior still weighs on the mean.
        wait_until(Duration::from_secs(5), || live_ids(&ma) == ids(&["a"]) && live_ids(&mb) == ids(&["b"]))
            .await
            .expect("partitioned nodes see each other dead");

        a.handle.set_blocked(BTreeSet::new());
        b.handle.set_blocked(BTreeSet::new());
        wait_until(Duration::from_secs(3), || live_ids(&ma) == both && live_ids(&mb) == both)
            .await
            .expect("healed nodes see each other again");

        mb.leave().await.unwrap();
        wait_until(Duration::from_secs(1), || live_ids(&ma) == ids(&["a"]))
            .await
            .expect("a left node is not live");
    }
}
