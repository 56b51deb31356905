//! This node's part in its cluster: the QUIC endpoint, gossip membership, and spreading
//! the desired state (pushes of new writes, anti-entropy rounds when digests differ).
//!
//! The agent loop owns [`Cluster`] and the store; stream I/O runs in tasks (`streams.rs`)
//! that report back through [`ClusterInput`]. Decisions come from the pure
//! `protocol::replicate::Replicator` and `protocol::sync::SyncSession`.

pub mod blobs;
pub mod claims;
pub mod events;
pub mod files;
pub mod metrics;
pub mod node_requests;
mod streams;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use protocol::desired::{NodeId, DEFAULT_GC_HORIZON_MS};
use protocol::members::{self, MemberView};
use protocol::membership::{self, Member, Membership, MembershipConfig};
use protocol::replicate::{ReplicateConfig, Replicator};
use protocol::sync::{SyncMessage, SyncSession};
use protocol::tls::RevocationList;
use protocol::transport::{CaJoinHandler, IncomingStream, TransportConfig, TransportHandle};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::{self, UnboundedSender};
use tokio::task::JoinSet;

use self::events::Liveness;
use self::files::{ClusterFiles, Settings};
use crate::agent::{EventReader, Input};
use crate::store::Store;

/// Stream kinds (the first byte of a stream).
pub const STREAM_PUSH: u8 = 1;
pub const STREAM_SYNC: u8 = 2;
/// A read of the peer's event log (`protocol::events`), served without the agent loop.
pub const STREAM_EVENTS: u8 = 3;
/// A request to cordon, uncordon or drain the peer, or for its drain's status
/// (`protocol::node_request`); read by a task, applied by the peer's agent loop.
pub const STREAM_NODE: u8 = 4;
/// A fetch of an image blob or manifest this node holds (`protocol::blob`), served by a
/// task without the agent loop.
pub const STREAM_BLOB: u8 = 5;

/// Gossip keys this node publishes.
pub const KEY_DIGEST: &str = "digest";
pub const KEY_NODE: &str = "node";
pub const KEY_SETTINGS: &str = "settings";

/// What this node tells the cluster about itself (gossip key `node`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub started_at_ms: u64,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<String>,
    pub pods: u32,
    pub cordoned: bool,
    /// The pod address range this node holds (a slot of the cluster CIDR).
    #[serde(default)]
    pub pod_range: Option<crate::network::SlotClaim>,
}

/// Inputs from the cluster's tasks to the agent loop.
pub enum ClusterInput {
    Stream(IncomingStream),
    Push { from: NodeId, msg: SyncMessage },
    SyncMsg { sid: u64, msg: SyncMessage },
    SyncEnded { sid: u64 },
}

struct Session {
    peer: NodeId,
    session: SyncSession,
    out: mpsc::UnboundedSender<SyncMessage>,
    started_ms: u64,
}

/// A peer as the last membership snapshot showed it.
#[derive(Debug, Clone)]
pub struct Peer {
    pub member: Member,
    pub digest: Option<u64>,
    pub info: Option<NodeInfo>,
    pub claims: claims::Claims,
    /// Whether the peer's claims have arrived (it always publishes `claims.0`).
    pub claims_known: bool,
    /// Its latest published usage sample.
    pub metrics: Option<metrics::Metrics>,
    /// The image blobs it holds and fetches, as it advertises them.
    pub blobs: protocol::blob::Advert,
    /// When this node last saw the peer become live.
    pub live_since_ms: u64,
    /// Whether the peer had been seen dead before it became live (again).
    pub returned: bool,
}

/// How long a peer that came back from the dead must stay live before placement counts it.
/// Gossip can briefly revive a dead process's old state (a peer relays heartbeats it heard
/// late), and its stale claims would otherwise take replicas from their new nodes.
pub const RETURN_HOLD_MS: u64 = 3_000;

impl Peer {
    /// Whether placement counts this peer now.
    pub fn counts(&self, now_ms: u64) -> bool {
        !self.returned || now_ms.saturating_sub(self.live_since_ms) >= RETURN_HOLD_MS
    }

    /// When a held-back peer starts to count.
    pub fn counts_from_ms(&self) -> Option<u64> {
        self.returned.then_some(self.live_since_ms + RETURN_HOLD_MS)
    }
}

pub struct Cluster {
    pub files: ClusterFiles,
    pub transport: TransportHandle,
    membership: Option<Membership>,
    join: Arc<CaJoinHandler>,
    revoked: RevocationList,
    me: NodeId,
    repl: Replicator,
    /// Live peers (this node excluded), by node id.
    live: BTreeMap<NodeId, Peer>,
    sessions: BTreeMap<u64, Session>,
    next_sid: u64,
    inputs: UnboundedSender<Input>,
    tasks: JoinSet<()>,
    published_digest: Option<u64>,
    published_claims: Option<Vec<String>>,
    published_metrics: Option<Vec<String>>,
    published_blobs: Option<Vec<String>>,
    /// The peers' image blobs, for pulls.
    pub blobs: blobs::ClusterBlobs,
    /// Peers seen going from live to not live (see [`RETURN_HOLD_MS`]).
    died: BTreeSet<NodeId>,
    /// Until then, peers becoming live are not reported as joins: a node that restarts
    /// sees its whole cluster appear at once.
    quiet_until_ms: u64,
}

/// How long a starting node that knows peers keeps quiet about peers becoming live.
const JOIN_QUIET_MS: u64 = 5_000;

/// Options of `peer up` that concern the cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub listen: SocketAddr,
    /// What peers dial; derived from the listen address when not given.
    pub advertise: Option<SocketAddr>,
    pub generation: u64,
}

impl Cluster {
    /// Binds the endpoint, starts gossip with the known peers as seeds, and returns the
    /// cluster plus the receiver of incoming streams (fed to the agent loop).
    pub async fn start(
        files: ClusterFiles,
        opts: &ClusterOptions,
        inputs: UnboundedSender<Input>,
        info: &NodeInfo,
        events: EventReader,
        images: Arc<runtime::image::ImageStore>,
    ) -> anyhow::Result<Cluster> {
        let identity = files.identity()?;
        let me = NodeId(identity.node_id.clone());
        let revoked = RevocationList::default();
        for r in &files.settings.revoked {
            revoked.insert(r);
        }
        let join = Arc::new(CaJoinHandler::new(
            files.cluster_id.clone(),
            files.ca.clone(),
            files.token()?,
            Vec::new(),
        ));
        let mut tc = TransportConfig::new(opts.listen, identity);
        tc.revoked = revoked.clone();
        tc.join_handler = Some(join.clone());
        let (transport, mut incoming) =
            TransportHandle::bind(tc).with_context(|| format!("listening on {}", opts.listen))?;
        let bound = transport.local_addr().context("reading the bound address")?;
        let addr = opts.advertise.unwrap_or_else(|| advertise_for(bound));
        join.set_seeds(vec![addr]);

        let mut mc = MembershipConfig::new(&files.cluster_id, &me.0, opts.generation);
        mc.advertise = Some(addr);
        mc.seeds = files.peers.iter().copied().filter(|p| *p != addr).collect();
        let initial = vec![
            (KEY_NODE.to_owned(), serde_json::to_string(info)?),
            (KEY_SETTINGS.to_owned(), serde_json::to_string(&files.settings)?),
        ];
        let membership = Membership::spawn(mc, &transport, initial).await.context("starting gossip")?;

        let mut tasks = JoinSet::new();
        let tx = inputs.clone();
        tasks.spawn(async move {
            // Event reads are served here, off the agent loop; node requests are read here
            // and only their decoded request goes to the loop; the rest goes to the loop.
            let mut serving = JoinSet::new();
            let mut requests = JoinSet::new();
            let mut blob_serving = JoinSet::new();
            loop {
                let s = tokio::select! {
                    s = incoming.recv() => s,
                    Some(_) = serving.join_next() => continue,
                    Some(_) = requests.join_next() => continue,
                    Some(_) = blob_serving.join_next() => continue,
                };
                let Some(s) = s else { break };
                if s.kind == STREAM_EVENTS {
                    if serving.len() < events::MAX_SERVING {
                        serving.spawn(events::serve(events.clone(), s.node_id, s.send, s.recv));
                    } else {
                        tracing::debug!(peer = %s.node_id, "too many event reads at once; refusing one");
                    }
                } else if s.kind == STREAM_NODE {
                    if requests.len() < node_requests::MAX_SERVING {
                        requests.spawn(node_requests::serve(s.node_id, s.send, s.recv, tx.clone()));
                    } else {
                        tracing::debug!(peer = %s.node_id, "too many node requests at once; refusing one");
                    }
                } else if s.kind == STREAM_BLOB {
                    // Over the limit the asker still gets an answer (busy), so it asks another
                    // holder at once instead of waiting for a timeout; that answer is a
                    // task too, bounded by the request timeout.
                    let busy = blob_serving.len() >= blobs::MAX_SERVING;
                    if blob_serving.len() < 2 * blobs::MAX_SERVING {
                        blob_serving.spawn(blobs::serve(images.clone(), s.node_id, s.send, s.recv, busy));
                    } else {
                        tracing::debug!(peer = %s.node_id, "too many blob requests at once; refusing one");
                    }
                } else if tx.send(Input::Cluster(ClusterInput::Stream(s))).is_err() {
                    break;
                }
            }
        });
        let tx = inputs.clone();
        let mut watcher = membership.live_watcher();
        tasks.spawn(async move {
            while watcher.changed().await.is_ok() {
                let views = members::views(&watcher.borrow_and_update());
                if tx.send(Input::Members(views)).is_err() {
                    break;
                }
            }
        });
        tracing::info!(node = %me, %addr, cluster = %files.cluster_id, seeds = ?files.peers, "cluster endpoint up");
        let seed = protocol::spec::fnv1a64(format!("{}/{}", me, opts.generation).as_bytes());
        let quiet_until_ms = if files.peers.is_empty() { 0 } else { crate::agent::now_ms() + JOIN_QUIET_MS };
        let blobs = blobs::ClusterBlobs::new(me.clone(), transport.clone(), inputs.clone());
        Ok(Cluster {
            files,
            blobs,
            transport,
            membership: Some(membership),
            join,
            revoked,
            repl: Replicator::new(me.clone(), ReplicateConfig::default(), seed),
            me,
            live: BTreeMap::new(),
            sessions: BTreeMap::new(),
            next_sid: 0,
            inputs,
            tasks,
            published_digest: None,
            published_claims: None,
            published_metrics: None,
            published_blobs: None,
            died: BTreeSet::new(),
            quiet_until_ms,
        })
    }

    pub fn me(&self) -> &NodeId {
        &self.me
    }

    pub fn live_peers(&self) -> impl Iterator<Item = &Peer> {
        self.live.values()
    }

    fn live_ids(&self) -> Vec<NodeId> {
        self.live.keys().cloned().collect()
    }

    pub fn membership(&self) -> Option<&Membership> {
        self.membership.as_ref()
    }

    /// Takes a new membership snapshot: merges settings, remembers peers as seeds, and
    /// starts anti-entropy rounds with peers whose digest differs from ours. Returns the
    /// liveness changes this node is the one to record (see [`events::records`]).
    pub fn handle_members(&mut self, views: Vec<MemberView>, store: &Store, now_ms: u64) -> Vec<Liveness> {
        let mut live = BTreeMap::new();
        let mut settings_changed = false;
        for v in views {
            let id = NodeId(v.member.node_id.clone());
            if id == self.me {
                continue;
            }
            if let Some(s) = v.keys.get(KEY_SETTINGS).and_then(|s| serde_json::from_str::<Settings>(s).ok()) {
                settings_changed |= self.files.settings.merge(&s);
            }
            let digest = v.keys.get(KEY_DIGEST).and_then(|d| u64::from_str_radix(d, 16).ok());
            let info = v.keys.get(KEY_NODE).and_then(|i| serde_json::from_str(i).ok());
            let claims = claims::decode(&v.keys);
            let claims_known = v.keys.contains_key(&claims::key(0));
            let metrics = metrics::decode(&v.keys);
            let blobs = protocol::blob::Advert::decode(&v.keys);
            let (live_since_ms, returned) = match self.live.get(&id) {
                Some(p) => (p.live_since_ms, p.returned),
                None => (now_ms, self.died.contains(&id)),
            };
            live.insert(
                id,
                Peer {
                    member: v.member,
                    digest,
                    info,
                    claims,
                    claims_known,
                    metrics,
                    blobs,
                    live_since_ms,
                    returned,
                },
            );
        }
        self.blobs.update(live.iter().map(|(id, p)| (id.clone(), p.member.gossip_addr, p.blobs.clone())));
        let addrs: BTreeSet<SocketAddr> = live.values().map(|p| p.member.gossip_addr).collect();
        let mut new_peers = !addrs.is_subset(&self.files.peers);
        if new_peers {
            self.files.peers.extend(addrs);
        }
        for id in live.keys().chain([&self.me]) {
            if !self.files.members.contains(&id.0) && !self.files.settings.revoked.contains(&id.0) {
                self.files.members.insert(id.0.clone());
                new_peers = true;
            }
        }
        if settings_changed {
            self.apply_settings();
        }
        if settings_changed || new_peers {
            if let Err(e) = self.files.save() {
                tracing::warn!("saving cluster settings: {e:#}");
            }
        }
        let mut changes = Vec::new();
        for gone in self.live.keys().filter(|id| !live.contains_key(*id)) {
            tracing::warn!(node = %gone, "node is no longer live");
            changes.push(Liveness::Gone { node: gone.clone() });
        }
        for new in live.keys().filter(|id| !self.live.contains_key(*id)) {
            tracing::info!(node = %new, "node is live");
            if now_ms >= self.quiet_until_ms {
                changes.push(Liveness::Live { node: new.clone(), returned: self.died.contains(new) });
            }
        }
        for gone in self.live.keys().filter(|id| !live.contains_key(*id)) {
            self.died.insert(gone.clone());
        }
        self.live = live;
        self.maybe_sync(store, now_ms);
        changes.retain(|c| events::records(&self.me, self.live.keys(), c.node()));
        changes
    }

    /// Whether a node that is no longer live left gracefully or was removed (rather than
    /// died).
    pub async fn departed(&self, node: &NodeId) -> bool {
        if self.files.settings.revoked.contains(&node.0) {
            return true;
        }
        let Some(m) = self.membership.as_ref() else { return false };
        m.node_key(&node.0, membership::LEFT_KEY).await.is_some()
    }

    /// Applies merged settings: the current token admits joiners, revoked nodes are refused.
    fn apply_settings(&mut self) {
        match self.files.token() {
            Ok(t) => self.join.rotate(t),
            Err(e) => tracing::warn!("bad join token in cluster settings: {e:#}"),
        }
        for r in &self.files.settings.revoked {
            if !self.revoked.contains(r) {
                tracing::warn!(node = %r, "node removed from the cluster; its certificate is refused from now on");
                self.transport.revoke(r);
            }
        }
    }

    /// Starts rounds with peers whose published digest differs from ours.
    pub fn maybe_sync(&mut self, store: &Store, now_ms: u64) {
        let mine = store.state().digest();
        let wanted: Vec<(NodeId, SocketAddr)> = self
            .live
            .iter()
            .filter_map(|(id, p)| Some((id, p, p.digest?)))
            .filter(|(id, _, d)| self.repl.want_round(mine, id, *d, now_ms))
            .map(|(id, p, _)| (id.clone(), p.member.gossip_addr))
            .collect();
        for (peer, addr) in wanted {
            self.repl.round_started(&peer, now_ms);
            let (sid, out) = self.new_session(peer.clone(), store, now_ms);
            let tx = self.inputs.clone();
            let transport = self.transport.clone();
            self.tasks.spawn(streams::initiate(transport, addr, peer, sid, out, tx));
        }
    }

    fn new_session(
        &mut self,
        peer: NodeId,
        store: &Store,
        now_ms: u64,
    ) -> (u64, mpsc::UnboundedReceiver<SyncMessage>) {
        self.next_sid += 1;
        let sid = self.next_sid;
        let (out, rx) = mpsc::unbounded_channel();
        let mut session =
            Session { peer, session: SyncSession::start(store.state()), out, started_ms: now_ms };
        while let Some(m) = session.session.poll_transmit() {
            let _ = session.out.send(m);
        }
        self.sessions.insert(sid, session);
        (sid, rx)
    }

    /// Handles input from the cluster's tasks. Returns whether the desired state changed.
    pub fn handle_input(&mut self, input: ClusterInput, store: &mut Store, now_ms: u64) -> bool {
        match input {
            ClusterInput::Stream(s) => {
                let peer = NodeId(s.node_id.clone());
                match s.kind {
                    STREAM_PUSH => {
                        self.tasks.spawn(streams::read_push(peer, s.recv, self.inputs.clone()));
                    }
                    STREAM_SYNC => {
                        self.repl.round_started(&peer, now_ms);
                        let (sid, out) = self.new_session(peer, store, now_ms);
                        self.tasks.spawn(streams::run(sid, s.send, s.recv, out, self.inputs.clone()));
                    }
                    other => {
                        tracing::debug!(peer = %s.node_id, kind = other, "ignoring a stream of unknown kind")
                    }
                }
                false
            }
            ClusterInput::Push { from, msg } => {
                let live = self.live_ids();
                let repl = &mut self.repl;
                let result = store.update(|state| repl.on_push(state, &from, msg, &live));
                match result {
                    Ok((stats, forwards)) => {
                        if stats.rejected > 0 {
                            tracing::warn!(peer = %from, rejected = stats.rejected, "dropped malformed entries from a push");
                        }
                        self.send_pushes(forwards);
                        stats.changed > 0
                    }
                    Err(e) => {
                        tracing::error!("merging a push from {from}: {e:#}");
                        false
                    }
                }
            }
            ClusterInput::SyncMsg { sid, msg } => {
                let Some(s) = self.sessions.get_mut(&sid) else { return false };
                let before = store.state().digest();
                let result = store.update(|state| s.session.handle_message(state, msg));
                let failed = match result {
                    Ok(Ok(())) => false,
                    Ok(Err(e)) => {
                        tracing::warn!(peer = %s.peer, "sync round failed: {e}");
                        true
                    }
                    Err(e) => {
                        tracing::error!(peer = %s.peer, "persisting a sync round: {e:#}");
                        true
                    }
                };
                while let Some(m) = s.session.poll_transmit() {
                    let _ = s.out.send(m);
                }
                if failed || s.session.is_done() {
                    self.end_session(sid, now_ms);
                }
                store.state().digest() != before
            }
            ClusterInput::SyncEnded { sid } => {
                self.end_session(sid, now_ms);
                false
            }
        }
    }

    fn end_session(&mut self, sid: u64, now_ms: u64) {
        if let Some(s) = self.sessions.remove(&sid) {
            self.repl.round_ended(&s.peer, now_ms);
        }
    }

    /// Pushes this node's new writes to live peers.
    pub fn local_writes(
        &mut self,
        store: &Store,
        writes: Vec<(protocol::spec::ObjectKey, protocol::desired::Entry)>,
    ) {
        if writes.is_empty() {
            return;
        }
        let live = self.live_ids();
        let pushes = self.repl.on_local_write(store.state(), writes, &live);
        self.send_pushes(pushes);
    }

    fn send_pushes(&mut self, pushes: Vec<(NodeId, SyncMessage)>) {
        for (peer, msg) in pushes {
            let Some(p) = self.live.get(&peer) else { continue };
            let addr = p.member.gossip_addr;
            self.tasks.spawn(streams::push(self.transport.clone(), addr, peer, msg));
        }
    }

    /// Periodic upkeep: drops stalled rounds, collects old tombstones, reaps tasks.
    pub fn tick(&mut self, store: &mut Store, now_ms: u64) {
        let stalled: Vec<u64> = self
            .sessions
            .iter()
            .filter(|(_, s)| now_ms.saturating_sub(s.started_ms) > 30_000)
            .map(|(k, _)| *k)
            .collect();
        for sid in stalled {
            self.end_session(sid, now_ms);
        }
        if let Err(e) = store.update(|state| state.gc(now_ms, DEFAULT_GC_HORIZON_MS)) {
            tracing::warn!("collecting tombstones: {e:#}");
        }
        while self.tasks.try_join_next().is_some() {}
        self.maybe_sync(store, now_ms);
    }

    /// Publishes the digest of the desired state (if it changed) and this node's info.
    pub async fn publish(&mut self, store: &Store, info: Option<&NodeInfo>) {
        let Some(m) = self.membership.as_ref() else { return };
        let digest = store.state().digest();
        if self.published_digest != Some(digest) {
            if let Err(e) = m.set_self_key(KEY_DIGEST, &format!("{digest:016x}")).await {
                tracing::warn!("publishing the desired-state digest: {e}");
            }
            self.published_digest = Some(digest);
        }
        if let Some(info) = info {
            match serde_json::to_string(info) {
                Ok(v) => {
                    if let Err(e) = m.set_self_key(KEY_NODE, &v).await {
                        tracing::warn!("publishing node info: {e}");
                    }
                }
                Err(e) => tracing::warn!("encoding node info: {e}"),
            }
        }
    }

    /// Publishes what this node runs, if it changed since the last call.
    pub async fn publish_claims(&mut self, claims: &claims::Claims) {
        let Some(m) = self.membership.as_ref() else { return };
        let chunks = claims::encode(claims);
        publish_chunks(m, "claims", claims::key, &chunks, self.published_claims.as_deref()).await;
        self.published_claims = Some(chunks);
    }

    /// Publishes this node's usage sample (the caller decides when it is worth it).
    pub async fn publish_metrics(&mut self, sample: &metrics::Metrics) {
        let Some(m) = self.membership.as_ref() else { return };
        let chunks = metrics::encode(sample);
        publish_chunks(m, "metrics", metrics::key, &chunks, self.published_metrics.as_deref()).await;
        self.published_metrics = Some(chunks);
    }

    /// Publishes which image blobs this node holds (`held`) and fetches, if that changed.
    pub async fn publish_blobs(&mut self, held: &[runtime::image::Digest]) {
        let Some(m) = self.membership.as_ref() else { return };
        let chunks = self.blobs.advert(held).encode();
        publish_chunks(m, "blobs", protocol::blob::key, &chunks, self.published_blobs.as_deref()).await;
        self.published_blobs = Some(chunks);
    }

    /// Whether this node sees a quorum of the cluster's members (itself included).
    pub fn quorum(&self) -> bool {
        let known = self.files.members.len().max(1);
        protocol::fence::has_quorum(self.live.len() + 1, known)
    }

    /// Forgets members that left gracefully or were removed: they no longer count
    /// towards the quorum.
    pub async fn forget_departed(&mut self) {
        let Some(m) = self.membership.as_ref() else { return };
        let left = m.left_nodes().await;
        let before = self.files.members.len();
        let revoked = &self.files.settings.revoked;
        self.files.members.retain(|id| !left.contains(id) && !revoked.contains(id));
        if self.files.members.len() != before {
            if let Err(e) = self.files.save() {
                tracing::warn!("saving cluster members: {e:#}");
            }
        }
    }

    /// Publishes the cluster settings after a local change (token rotation, node removal).
    pub async fn publish_settings(&mut self) -> anyhow::Result<()> {
        self.apply_settings();
        self.files.save()?;
        if let Some(m) = self.membership.as_ref() {
            m.set_self_key(KEY_SETTINGS, &serde_json::to_string(&self.files.settings)?).await?;
        }
        Ok(())
    }

    /// Members as `peer get nodes` shows them.
    pub async fn members(&self) -> Option<membership::Members> {
        Some(self.membership.as_ref()?.members().await)
    }

    /// Announces a graceful leave (peers need not wait for failure detection), then stops.
    pub async fn leave(&mut self) {
        if let Some(m) = self.membership.take() {
            if let Err(e) = m.leave().await {
                tracing::warn!("leaving the cluster: {e}");
            }
        }
        self.transport.close();
        self.tasks.abort_all();
    }
}

/// A node with a certificate of `ca` on a loopback endpoint, for tests of stream kinds.
#[cfg(test)]
#[allow(clippy::unwrap_used)] // In tests a panic is the failure report.
pub(crate) fn test_node(
    ca: &protocol::tls::ClusterCa,
    name: &str,
) -> (TransportHandle, protocol::transport::Incoming, SocketAddr) {
    use protocol::tls::{issue_node_cert, NodeIdentity};
    let identity = NodeIdentity::from_pem(&ca.cert_pem, &issue_node_cert(ca, name).unwrap()).unwrap();
    let (handle, incoming) =
        TransportHandle::bind(TransportConfig::new(([127, 0, 0, 1], 0).into(), identity)).unwrap();
    let addr = handle.local_addr().unwrap();
    (handle, incoming, addr)
}

/// Sets the keys `key(0)`, `key(1)`, … to `chunks` where they differ from `old` (what was
/// published before) and deletes the keys past the new last one.
async fn publish_chunks(
    m: &Membership,
    what: &str,
    key: fn(usize) -> String,
    chunks: &[String],
    old: Option<&[String]>,
) {
    if old == Some(chunks) {
        return;
    }
    for (i, chunk) in chunks.iter().enumerate() {
        if old.and_then(|p| p.get(i)) == Some(chunk) {
            continue;
        }
        if let Err(e) = m.set_self_key(&key(i), chunk).await {
            tracing::warn!("publishing {what}: {e}");
        }
    }
    for i in chunks.len()..old.map_or(0, <[String]>::len) {
        m.delete_self_key(&key(i)).await;
    }
}

/// The address to advertise for a bound one: itself, unless it is a wildcard (0.0.0.0 or
/// ::), then the first non-loopback address of an interface that is up (read from the
/// interfaces, no traffic sent), or loopback on a machine without one.
pub fn advertise_for(bound: SocketAddr) -> SocketAddr {
    if !bound.ip().is_unspecified() {
        return bound;
    }
    let found = nix::ifaddrs::getifaddrs().ok().and_then(|addrs| {
        addrs
            .filter(|a| a.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP))
            .filter_map(|a| a.address?.as_sockaddr_in().map(|s| std::net::IpAddr::V4(s.ip())))
            .find(|ip| !ip.is_loopback())
    });
    SocketAddr::new(found.unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)), bound.port())
}
