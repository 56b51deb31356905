//! Cluster membership: who is in the cluster and what each node published (chitchat gossip
//! over [`QuicTransport`]), who of them is live (the [`crate::detector`] probes over QUIC
//! datagrams), and a few checked operations on the node's own keys.
//!
//! Idle traffic is O(1) per node (PROTOCOL.md, "Membership"): chitchat still runs its
//! 200 ms rounds, but its digests (Syn) pass the transport's [`GossipGate`] only
//! - for [`NEWS_ROUNDS`] rounds after any node's state changed here (a key, a new node or
//!   generation), so news spreads like before, in O(log N) rounds of 200 ms, and
//! - once per anti-entropy interval otherwise (1 s, or 100 ms per known node from 10 nodes
//!   up: at 50 nodes a 1.5 KB digest every 5 s), which repairs what the news rounds missed.
//!
//! Liveness is the detector's alone: chitchat hears heartbeats only as often as digests
//! pass, so its own failure detector is set far slower ([`lenient_failure_detector`]) and
//! only decides when chitchat forgets a node's state. Decisions come from
//! [`Membership::live_watcher`] snapshots, not from `subscribe_event` (it misses deletes
//! and GC).
//!
//! [`QuicTransport`]: crate::transport::QuicTransport
//! [`GossipGate`]: crate::transport::GossipGate

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chitchat::{
    spawn_chitchat, Chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, NodeState,
};
use tokio::sync::{mpsc, watch};

use crate::detector::{self, Detector, DetectorConfig, Peer, ProbeMessage, MAX_PROBE_BYTES};
use crate::transport::{ProbeRx, TransportHandle};

/// The largest value of a key: chitchat silently stops propagating a node's later keys once
/// one value is over ~65 KB (NOTES.md), so stay far below.
pub const MAX_VALUE_BYTES: usize = 16 * 1024;
/// The largest key.
pub const MAX_KEY_BYTES: usize = 256;
/// Set by a node that leaves gracefully; such a node no longer counts as live.
pub const LEFT_KEY: &str = "left";
/// The members this node's failure detector holds dead (`node@generation.incarnation`).
pub const DEAD_KEY: &str = "detector.dead";
/// This node's incarnation, when above 0: raised to refute a suspicion or a death.
pub const INCARNATION_KEY: &str = "detector.incarnation";
/// Gossip rounds whose digests go out after news.
pub const NEWS_ROUNDS: u32 = 3;
/// How often the detector's timers run.
const DETECTOR_TICK: Duration = Duration::from_millis(10);
/// How often the live view and the detector's member list are refreshed from chitchat.
const REFRESH: Duration = Duration::from_millis(50);
/// Probe datagrams queued per peer before new ones are dropped.
const PROBE_QUEUE: usize = 8;
/// How often one more connection to a live member is opened, up to [`MESH_MAX`]: news of
/// a suspicion or a death goes straight to every member over the open connections, and
/// a connection kept open costs a keep-alive every 2 minutes, where one opened on demand
/// costs a TLS handshake (≈ 5 KB). Spread out so a starting node does not dial everyone at
/// once.
const MESH_DIAL: Duration = Duration::from_secs(1);
/// Connections opened this way at most (past it, published verdicts carry the news).
const MESH_MAX: usize = 64;

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
    /// Chitchat's own detector: only when it forgets a node's state (see the module docs).
    pub failure_detector: FailureDetectorConfig,
    /// Who is live.
    pub detector: DetectorConfig,
    /// How long deleted keys are kept as tombstones.
    pub marked_for_deletion_grace_period: Duration,
}

impl MembershipConfig {
    /// The tuned defaults: gossip rounds of 200 ms, [`DetectorConfig::default`], see
    /// [`lenient_failure_detector`].
    pub fn new(cluster_id: &str, node_id: &str, generation: u64) -> Self {
        Self {
            cluster_id: cluster_id.to_owned(),
            node_id: node_id.to_owned(),
            generation,
            seeds: Vec::new(),
            advertise: None,
            gossip_interval: Duration::from_millis(200),
            failure_detector: lenient_failure_detector(),
            detector: DetectorConfig::default(),
            marked_for_deletion_grace_period: Duration::from_secs(60 * 60),
        }
    }
}

/// Chitchat's detector with heartbeats that arrive only with digests (every anti-entropy
/// interval, up to 10 s): a node it has heard nothing from for about a minute counts as
/// dead to chitchat, and its keys are forgotten everywhere an hour later, so state a node
/// authors must also live elsewhere (NOTES.md). Liveness is the [`crate::detector`]'s.
pub fn lenient_failure_detector() -> FailureDetectorConfig {
    FailureDetectorConfig {
        phi_threshold: 8.0,
        sampling_window_size: 1_000,
        max_interval: Duration::from_secs(30),
        initial_interval: Duration::from_secs(5),
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

/// A running chitchat instance and failure detector. Dropping it without
/// [`Membership::leave`] stops both like a crash would.
pub struct Membership {
    handle: ChitchatHandle,
    transport: TransportHandle,
    live: watch::Receiver<BTreeMap<ChitchatId, NodeState>>,
    dead: Arc<Mutex<Vec<Member>>>,
    gossip_interval: Duration,
    driver: tokio::task::JoinHandle<()>,
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
        let probes =
            transport.probes().ok_or_else(|| MembershipError::Start("probes already taken".into()))?;
        let chitchat_config = ChitchatConfig {
            chitchat_id: ChitchatId::new(config.node_id.as_str(), config.generation, advertise),
            cluster_id: config.cluster_id.clone(),
            gossip_interval: config.gossip_interval,
            listen_addr: addr,
            seed_nodes: config.seeds.iter().map(ToString::to_string).collect(),
            failure_detector_config: config.failure_detector.clone(),
            marked_for_deletion_grace_period: config.marked_for_deletion_grace_period,
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: chitchat::ProtocolVersion::V0,
        };
        let handle = spawn_chitchat(chitchat_config, initial, &transport.chitchat_transport())
            .await
            .map_err(|e| MembershipError::Start(format!("{e:#}")))?;
        let seed = config.generation ^ hash_of(&config.node_id);
        let detector = Detector::new(config.detector.clone(), &config.node_id, config.generation, seed);
        let (live_tx, live) = watch::channel(BTreeMap::new());
        let dead = Arc::new(Mutex::new(Vec::new()));
        let driver = Driver {
            chitchat: handle.chitchat(),
            transport: transport.clone(),
            detector,
            live_tx,
            dead: dead.clone(),
            gossip_interval: config.gossip_interval,
            fingerprint: None,
            published: Vec::new(),
            verdicts: String::new(),
            incarnation: 0,
            senders: BTreeMap::new(),
            mesh_dial: None,
            next_mesh_dial: Instant::now(),
        };
        let driver = tokio::spawn(driver.run(probes));
        Ok(Self {
            handle,
            transport: transport.clone(),
            live,
            dead,
            gossip_interval: config.gossip_interval,
            driver,
        })
    }

    /// Lets this node's digests out for the next [`NEWS_ROUNDS`] rounds.
    fn news(&self) {
        self.transport.gossip_gate().open_until(Instant::now() + self.gossip_interval * NEWS_ROUNDS);
    }

    /// This node's chitchat id.
    pub fn self_member(&self) -> Member {
        self.handle.chitchat_id().into()
    }

    /// Snapshots of the live nodes and their states; drive reconciliation from these.
    pub fn live_watcher(&self) -> watch::Receiver<BTreeMap<ChitchatId, NodeState>> {
        self.live.clone()
    }

    /// The live members (from the watcher) and the others gossip knows (the newest
    /// generation of each node that is not live: dead, left, or not yet confirmed).
    pub async fn members(&self) -> Members {
        let mut live: Vec<Member> = self.live.borrow().keys().map(Member::from).collect();
        let mut dead = self.dead.lock().unwrap_or_else(|e| e.into_inner()).clone();
        live.sort();
        dead.sort();
        Members { live, dead }
    }

    /// Sets one of this node's keys, after checking its size.
    pub async fn set_self_key(&self, key: &str, value: &str) -> Result<(), MembershipError> {
        check_size(key, value)?;
        self.handle.with_chitchat(|c| c.self_node_state().set(key, value)).await;
        self.news();
        Ok(())
    }

    /// Deletes one of this node's keys (a tombstone that gossip carries).
    pub async fn delete_self_key(&self, key: &str) {
        self.handle.with_chitchat(|c| c.self_node_state().delete(key)).await;
        self.news();
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
        self.news();
        self.handle.gossip(addr).map_err(|e| MembershipError::Stopped(e.to_string()))
    }

    /// Leaves gracefully: sets [`LEFT_KEY`], gossips it for three rounds, then stops.
    pub async fn leave(self) -> Result<(), MembershipError> {
        self.set_self_key(LEFT_KEY, "1").await?;
        tokio::time::sleep(self.gossip_interval * 3).await;
        self.shutdown().await
    }

    /// Stops gossip and probes without telling anyone (peers see this node die).
    pub async fn shutdown(self) -> Result<(), MembershipError> {
        let stopped = |e: anyhow::Error| MembershipError::Stopped(e.to_string());
        self.driver.abort();
        self.handle.initiate_shutdown().map_err(stopped)?;
        self.handle.termination_watcher().await.map_err(stopped)
    }
}

impl Drop for Membership {
    /// Chitchat's task and the detector outlive the handle unless stopped: dropping stops
    /// them like a crash.
    fn drop(&mut self) {
        self.driver.abort();
        self.handle.abort();
    }
}

fn hash_of(value: &impl Hash) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

/// One known node in a refresh: its newest generation's id, whether it left.
struct Known<'a> {
    id: &'a ChitchatId,
    state: &'a NodeState,
    left: bool,
}

/// The task that runs the detector and keeps the live view.
struct Driver {
    chitchat: Arc<tokio::sync::Mutex<Chitchat>>,
    transport: TransportHandle,
    detector: Detector,
    live_tx: watch::Sender<BTreeMap<ChitchatId, NodeState>>,
    dead: Arc<Mutex<Vec<Member>>>,
    gossip_interval: Duration,
    /// A hash of every node's (id, versions): when it moves there is news to gossip.
    fingerprint: Option<u64>,
    /// The (id, max version) of what the live view last published.
    published: Vec<(ChitchatId, u64)>,
    /// The dead verdicts and incarnation this node last published.
    verdicts: String,
    incarnation: u64,
    senders: BTreeMap<SocketAddr, mpsc::Sender<(Vec<u8>, bool)>>,
    /// The mesh dial in flight, if any.
    mesh_dial: Option<tokio::task::JoinHandle<()>>,
    next_mesh_dial: Instant,
}

impl Driver {
    async fn run(mut self, mut probes: ProbeRx) {
        let mut tick = tokio::time::interval(DETECTOR_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut refresh_at = Instant::now();
        loop {
            tokio::select! {
                got = probes.recv() => {
                    let Some((addr, node, bytes)) = got else { return };
                    match crate::codec::decode::<ProbeMessage>(&bytes, MAX_PROBE_BYTES) {
                        Ok(message) => self.detector.receive(Instant::now(), addr, &node, message),
                        Err(e) => tracing::debug!(%addr, %node, "malformed probe: {e}"),
                    }
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    self.detector.tick(now);
                    if now >= refresh_at || self.detector.take_changed() {
                        refresh_at = now + REFRESH;
                        self.refresh(now).await;
                    }
                    if now >= self.next_mesh_dial {
                        self.next_mesh_dial = now + MESH_DIAL;
                        self.grow_mesh();
                    }
                }
            }
            self.flush();
        }
    }

    /// Sends what the detector wants sent, each peer through its own queue so a dial to an
    /// unreachable peer never holds up the others.
    fn flush(&mut self) {
        for addr in self.detector.take_closed() {
            self.transport.close_peer(addr);
        }
        for out in self.detector.take_outgoing() {
            let Ok(bytes) = crate::codec::encode(&out.message) else { continue };
            let sender = self.senders.entry(out.to).or_insert_with(|| {
                let (tx, mut rx) = mpsc::channel::<(Vec<u8>, bool)>(PROBE_QUEUE);
                let (transport, to) = (self.transport.clone(), out.to);
                tokio::spawn(async move {
                    while let Some((bytes, dial)) = rx.recv().await {
                        // A lost probe is a failed probe: nothing to retry.
                        let _ = transport.send_probe(to, bytes, dial).await;
                    }
                });
                tx
            });
            let _ = sender.try_send((bytes, out.dial));
        }
    }

    /// Opens a connection to one more live member (the next unconnected one after this
    /// node on the ring), one dial at a time.
    fn grow_mesh(&mut self) {
        if self.mesh_dial.as_ref().is_some_and(|d| !d.is_finished()) {
            return;
        }
        let me = self.detector.me().node_id.clone();
        let live: Vec<(String, SocketAddr)> =
            self.detector.live_members().map(|(id, addr)| (id.to_owned(), addr)).collect();
        if live.iter().filter(|(_, addr)| self.transport.is_connected(*addr)).count() >= MESH_MAX {
            return;
        }
        let start = live.partition_point(|(id, _)| *id < me);
        let next = (0..live.len())
            .map(|i| &live[(start + i) % live.len()])
            .find(|(_, addr)| !self.transport.is_connected(*addr));
        if let Some((_, addr)) = next {
            let (transport, addr) = (self.transport.clone(), *addr);
            self.mesh_dial = Some(tokio::spawn(async move {
                let _ = transport.connect(addr).await;
            }));
        }
    }

    /// Reads chitchat's state: the members for the detector, news for the gossip gate, and
    /// the live view.
    async fn refresh(&mut self, now: Instant) {
        let chitchat = self.chitchat.clone();
        let mut chitchat = chitchat.lock().await;
        // This node's verdicts first, so the fingerprint below sees the change as news.
        let verdicts = detector::encode_verdicts(&self.detector.dead_verdicts(), MAX_VALUE_BYTES);
        if verdicts != self.verdicts {
            if verdicts.is_empty() {
                chitchat.self_node_state().delete(DEAD_KEY);
            } else {
                chitchat.self_node_state().set(DEAD_KEY, &verdicts);
            }
            self.verdicts = verdicts;
        }
        let incarnation = self.detector.me().incarnation;
        if incarnation != self.incarnation {
            chitchat.self_node_state().set(INCARNATION_KEY, incarnation);
            self.incarnation = incarnation;
        }
        let me = chitchat.self_chitchat_id().clone();
        let mut newest: BTreeMap<&str, Known<'_>> = BTreeMap::new();
        let mut fingerprint = std::collections::hash_map::DefaultHasher::new();
        for (id, state) in chitchat.node_states() {
            (id, state.max_version(), state.last_gc_version()).hash(&mut fingerprint);
            let known = Known { id, state, left: state.get(LEFT_KEY).is_some() };
            match newest.get(&*id.node_id) {
                Some(k) if k.id.generation_id >= id.generation_id => {}
                _ => {
                    newest.insert(&id.node_id, known);
                }
            }
        }
        let fingerprint = fingerprint.finish();
        let gate = self.transport.gossip_gate();
        if self.fingerprint != Some(fingerprint) {
            self.fingerprint = Some(fingerprint);
            gate.open_until(now + self.gossip_interval * NEWS_ROUNDS);
        }
        let every = Duration::from_millis(100 * newest.len() as u64).max(Duration::from_secs(1));
        gate.set_anti_entropy(every.min(Duration::from_secs(10)));

        let peers: Vec<Peer> = newest
            .values()
            .filter(|k| k.id.node_id != me.node_id && !k.left)
            .map(|k| Peer {
                node_id: k.id.node_id.to_string(),
                generation: k.id.generation_id,
                addr: k.id.gossip_advertise_addr,
            })
            .collect();
        self.detector.set_members(&peers);
        let others = || newest.values().filter(|k| k.id.node_id != me.node_id);
        let mut published: Vec<detector::Rumor> =
            others().filter_map(|k| k.state.get(DEAD_KEY)).flat_map(detector::parse_verdicts).collect();
        published.extend(others().filter_map(|k| {
            Some(detector::Rumor {
                node_id: k.id.node_id.to_string(),
                generation: k.id.generation_id,
                incarnation: k.state.get(INCARNATION_KEY)?.parse().ok()?,
                kind: detector::RumorKind::Alive,
            })
        }));
        self.detector.apply_verdicts(now, &published);
        self.detector.take_changed();

        let live: Vec<&Known<'_>> = newest
            .values()
            .filter(|k| *k.id == me || (!k.left && self.detector.is_live(&k.id.node_id, k.id.generation_id)))
            .collect();
        let signature: Vec<(ChitchatId, u64)> =
            live.iter().map(|k| (k.id.clone(), k.state.max_version())).collect();
        if signature != self.published {
            let view = live.iter().map(|k| (k.id.clone(), k.state.clone())).collect();
            self.live_tx.send_replace(view);
            self.published = signature;
        }
        let live_ids: BTreeSet<&ChitchatId> = live.iter().map(|k| k.id).collect();
        let dead: Vec<Member> =
            newest.values().filter(|k| !live_ids.contains(k.id)).map(|k| Member::from(k.id)).collect();
        *self.dead.lock().unwrap_or_else(|e| e.into_inner()) = dead;
        let addrs: BTreeSet<SocketAddr> = peers.iter().map(|p| p.addr).collect();
        self.senders.retain(|addr, tx| addrs.contains(addr) && !tx.is_closed());
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

    /// `node`'s value of `key` as `m` sees it, polled every 100 ms for up to `tries` times.
    async fn key_seen(m: &Membership, node: &str, key: &str, tries: u32) -> Option<String> {
        for _ in 0..tries {
            if let Some(v) = m.node_key(node, key).await {
                return Some(v);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
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
        assert_eq!(key_seen(&ma, "c", "role", 20).await.as_deref(), Some("edge"));

        // Past the join's news rounds, with every node watched by its ring predecessors.
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
    async fn idle_digests_are_held_back_and_news_still_spreads() {
        let ca = cluster_ca();
        let (a, ma) = member(&ca, "a", &[]).await;
        let (_b, _mb) = member(&ca, "b", &[a.addr]).await;
        let (_c, mc) = member(&ca, "c", &[a.addr]).await;
        let all = ids(&["a", "b", "c"]);
        wait_until(Duration::from_secs(10), || live_ids(&ma) == all).await.expect("all live on a");
        // Past the news rounds of the join, nothing changes: chitchat still tries two
        // digests every 200 ms, but only the anti-entropy one per second goes out.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let before = a.handle.stats();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = a.handle.stats();
        let held = after.gossip_held - before.gossip_held;
        let sent = after.gossip_sent - before.gossip_sent;
        eprintln!("idle for 3 s: {held} digests held, {sent} gossip messages sent");
        assert!(held >= 10 && sent < held, "{held} digests held, {sent} gossip messages sent");

        mc.set_self_key("role", "edge").await.unwrap();
        assert_eq!(
            key_seen(&ma, "c", "role", 50).await.as_deref(),
            Some("edge"),
            "news did not spread within 5 s"
        );
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
        // Each sees the other dead: no ack, no helper to ask, then 400 ms of suspicion.
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
