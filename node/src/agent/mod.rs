//! The agent: one `select!` loop that owns the node's state and drives the reconciler.
//!
//! Inputs are a closed [`Input`] enum (API requests, folder changes, container exits,
//! results of executor tasks, timers, shutdown). After each input the loop runs the pure
//! [`reconcile`](crate::reconcile::reconcile) and hands the actions to the executor
//! (`pods.rs`), whose slow work (creating, stopping containers) runs in tasks that
//! report back as inputs. Only this loop mutates state.

mod autoscalers;
mod cluster_api;
mod cluster_events;
mod distribution;
mod drain;
mod events;
mod image_gc;
mod metrics;
mod network;
mod node_requests;
mod placement;
mod pods;
mod probes;
mod pulls;
mod queries;
mod rollouts;
mod secrets;
mod services;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use protocol::desired::NodeId;
use runtime::image::ImageStore;
use runtime::{ExitEvent, Runtime, RuntimeConfig};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

pub use self::cluster_api::parse_label_arg;
pub use self::events::{EventLog, EventReader};
use self::pods::TaskResult;
use crate::api::{Request, Response};
use crate::cluster::files::ClusterFiles;
use crate::cluster::{Cluster, ClusterInput, ClusterOptions};
use crate::folder::{Folder, Level};
use crate::nodecfg::NodeConfig;
use crate::reconcile::{self, ObservedPod};
use crate::store::Store;

/// Container creates in flight at once. Measured on 2 cores (BENCHMARKS.md): one per core
/// was slower than unbounded, since much of a create is waiting on the kernel; this bound
/// only keeps a burst of hundreds from thrashing (the runtime's create servers bound the
/// creates that actually run).
const CONCURRENT_CREATES: usize = 16;

/// Events kept per node (`DATA/events.jsonl` holds up to twice as many lines).
const EVENT_LOG_CAP: usize = 1000;

/// The shortest time between two rescans of the spec folder caused by its events.
const FOLDER_DEBOUNCE: Duration = Duration::from_millis(5);

/// How long results of container starts wait for the reconcile and what follows it
/// (claims, service endpoints), so a burst of creates finishing over a few hundred
/// milliseconds runs them every TASK_SETTLE instead of once per result (each ≈ 0.4 ms
/// of the agent's CPU at 50 pods, while the creates need both cores). Events and pod
/// states are recorded at once.
const TASK_SETTLE: Duration = Duration::from_millis(20);

/// Node-wide defaults for containers that declare no limits (like a Kubernetes LimitRange).
#[derive(Debug, Clone, Copy)]
pub struct DefaultLimits {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub data_dir: PathBuf,
    pub specs_dir: PathBuf,
    pub socket: PathBuf,
    pub cgroup_parent: String,
    /// The node's name; the host name when not given (fixed at the first start).
    pub node_name: Option<String>,
    pub default_limits: DefaultLimits,
    /// Container log files are rotated past this size, keeping `log_keep` old ones.
    pub log_max_bytes: u64,
    pub log_keep: usize,
    /// QUIC listen address for node-to-node traffic (gossip, sync, joins).
    pub listen: std::net::SocketAddr,
    /// The address other nodes reach this one at [default: derived from `listen`].
    pub advertise: Option<std::net::SocketAddr>,
    /// Labels and taints given on the command line (merged over `peer label`/`peer taint`).
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<String>,
    /// Enables test-only API requests (partition hook).
    pub test_hooks: bool,
    /// The cluster's address plan (pod ranges, service addresses).
    pub net: crate::network::Plan,
    /// Whether pods get an address on the node's bridge (else only their loopback).
    pub pod_network: bool,
    /// How often each autoscaler decides.
    pub hpa_sync_period: Duration,
    /// Where pulls take image blobs from.
    pub image_distribution: runtime::image::Distribution,
    /// How often unused images are collected, and by which rules.
    pub image_gc_period: Duration,
    pub image_gc_policy: runtime::image::gc::GcPolicy,
}

/// Everything that can wake the agent.
pub enum Input {
    Api(Request, oneshot::Sender<Response>),
    FolderChanged,
    Exit(ExitEvent),
    Task(TaskResult),
    /// A new snapshot of the live members and their gossip keys.
    Members(Vec<protocol::members::MemberView>),
    Cluster(ClusterInput),
    /// A peer's request to cordon, uncordon or drain this node (or for its drain's
    /// status); `from` is the node id of its certificate.
    NodeRequest {
        from: NodeId,
        req: protocol::node_request::NodeRequest,
        reply: oneshot::Sender<protocol::node_request::NodeAnswer>,
    },
    Tick,
    /// Task results waited TASK_SETTLE: time for the reconcile.
    Settled,
    Shutdown,
    /// Time to read the usage counters (every `metrics::SAMPLE_EVERY`).
    SampleUsage,
    /// A read of the usage counters finished.
    Usage(Box<crate::metrics::Reading>),
    /// The image store gained a blob, or a pull started or stopped fetching one: time to
    /// advertise this node's blobs again.
    BlobsChanged,
    /// An image garbage collection pass finished.
    ImageGc(Box<image_gc::PassOutcome>),
}

pub struct Agent {
    cfg: AgentConfig,
    store: Store,
    folder: Folder,
    pods: BTreeMap<String, ObservedPod>,
    runtime: Arc<Runtime>,
    images: Arc<ImageStore>,
    /// Image pulls under way, shared by the pods that wait for them (`pulls.rs`).
    pulls: pulls::Pulls,
    events: EventLog,
    tasks: mpsc::UnboundedSender<TaskResult>,
    /// Executor tasks in flight; owned here so none is detached.
    jobs: JoinSet<()>,
    /// The probe workers of running containers.
    probes: probes::ProbeTasks,
    cluster: Cluster,
    node: NodeConfig,
    started_at_ms: u64,
    /// Bounds concurrent container creates ([`CONCURRENT_CREATES`]).
    creates: Arc<tokio::sync::Semaphore>,
    /// Writes pod records off the loop.
    records: pods::RecordWriter,
    placement: placement::Placement,
    /// The placement inputs last seen from gossip, to skip reconciling when none changed.
    view_key: u64,
    /// This node's taints and when this agent first saw each (for `tolerationSeconds`).
    taints_seen: BTreeMap<String, u64>,
    /// Rollouts under way and since when each stood still (`observe_rollouts`).
    progress: BTreeMap<protocol::spec::ObjectKey, rollouts::Progress>,
    /// What this node has seen of each autoscaler's decisions (`autoscalers.rs`).
    autoscale_watch: BTreeMap<protocol::spec::ObjectKey, protocol::duty::Watch>,
    /// The routes to the peers' pod ranges last programmed (net, prefix, via).
    routes: Vec<(std::net::Ipv4Addr, u8, std::net::Ipv4Addr)>,
    /// Whether the node's bridge and NAT are set up (pods get addresses only then).
    network_up: bool,
    /// The pod address handed out last (addresses go round).
    last_ip: Option<std::net::Ipv4Addr>,
    /// The cluster DNS server on the bridge address, once up.
    dns: Option<crate::dns::DnsServer>,
    /// What the DNS server answers for the cluster domain.
    dns_records: tokio::sync::watch::Sender<Arc<crate::dns::Records>>,
    /// The service rules last programmed into the kernel.
    forwarding: runtime::net::Forwarding,
    latest_rules: network::Latest<runtime::net::Forwarding>,
    latest_routes: network::Latest<Vec<(std::net::Ipv4Addr, u8, std::net::Ipv4Addr)>>,
    /// Usage metrics: the sampler, this node's latest sample, what gossip has.
    usage: metrics::UsageState,
    /// Image garbage collection: when the next pass is due, whether one runs.
    image_gc: image_gc::ImageGc,
}

/// The event object of a pod key (`namespace/name` → `pod/name`).
fn pod_object(key: &str) -> String {
    format!("pod/{}", key.split_once('/').map_or(key, |(_, name)| name))
}

/// Milliseconds since the Unix epoch: for display, ages and back-off deadlines only,
/// never to order writes.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Runs the agent until SIGTERM or Ctrl-C.
pub async fn run(cfg: AgentConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
    let exe = std::env::current_exe().context("finding the peer executable for the runtime helper")?;
    let runtime = Runtime::new(RuntimeConfig {
        root: cfg.data_dir.join("runtime"),
        helper_exe: exe,
        helper_args: vec![crate::RUNTIME_HELPER_ARG.to_owned()],
        cgroup_parent: cfg.cgroup_parent.clone(),
    })
    .context("starting the container runtime")?;
    let runtime = Arc::new(runtime);
    runtime.start_create_servers();
    let images = Arc::new(ImageStore::open(&cfg.data_dir.join("images")).context("opening the image store")?);
    let mut exits = runtime.exits();

    let identity = crate::identity::load_and_bump(&cfg.data_dir, cfg.node_name.as_deref())?;
    let node = NodeId(identity.node_id.clone());
    let store = Store::open(&cfg.data_dir.join("desired.json"), &node, identity.incarnation)?;
    let folder = Folder::open(&cfg.specs_dir)?;
    let (task_tx, mut task_rx) = mpsc::unbounded_channel();
    let (input_tx, mut input_rx) = mpsc::unbounded_channel::<Input>();

    // A node that never joined a cluster starts one of its own: a cluster of one.
    let files = if ClusterFiles::exists(&cfg.data_dir) {
        ClusterFiles::load(&cfg.data_dir)?
    } else {
        let files = ClusterFiles::init(&cfg.data_dir, &identity.node_id)?;
        tracing::info!(cluster = %files.cluster_id, "created a new cluster; `peer token` shows the join token");
        files
    };
    let node_cfg = NodeConfig::load(&cfg.data_dir, &cfg.labels, &cfg.taints)?;
    let started_at_ms = now_ms();
    let info = node_cfg.info(started_at_ms, 0);
    let opts =
        ClusterOptions { listen: cfg.listen, advertise: cfg.advertise, generation: identity.generation };
    let known_peers = !files.peers.is_empty();
    let events = EventLog::open(&cfg.data_dir.join("events.jsonl"), &identity.node_id, EVENT_LOG_CAP)?;
    let cluster =
        Cluster::start(files, &opts, input_tx.clone(), &info, events.reader(), images.clone()).await?;

    let mut agent = Agent {
        cfg: cfg.clone(),
        store,
        folder,
        pods: BTreeMap::new(),
        runtime: runtime.clone(),
        images,
        pulls: pulls::Pulls::default(),
        events,
        tasks: task_tx,
        jobs: JoinSet::new(),
        probes: probes::ProbeTasks::default(),
        cluster,
        node: node_cfg,
        started_at_ms,
        creates: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_CREATES)),
        records: pods::RecordWriter::start().context("starting the pod record writer")?,
        placement: placement::Placement::new(started_at_ms, known_peers),
        view_key: 0,
        taints_seen: BTreeMap::new(),
        progress: BTreeMap::new(),
        autoscale_watch: BTreeMap::new(),
        routes: Vec::new(),
        network_up: false,
        last_ip: None,
        dns: None,
        dns_records: tokio::sync::watch::channel(Arc::new(crate::dns::Records {
            domain: crate::dns::zone::DEFAULT_DOMAIN.to_owned(),
            services: Vec::new(),
        }))
        .0,
        forwarding: runtime::net::Forwarding::default(),
        latest_rules: Default::default(),
        latest_routes: Default::default(),
        usage: metrics::UsageState::new(input_tx.clone()),
        image_gc: image_gc::ImageGc::new(cfg.image_gc_period, cfg.image_gc_policy, input_tx.clone()),
    };
    agent.claim_pod_range();
    agent.setup_network().await;
    agent.adopt().await;

    let _watcher = crate::watch::watch(&cfg.specs_dir, input_tx.clone())?;
    let server = crate::server::serve(&cfg.socket, input_tx.clone()).await?;
    tracing::info!(node = %identity.node_id, generation = identity.generation, data = %cfg.data_dir.display(), specs = %cfg.specs_dir.display(), socket = %cfg.socket.display(), "peer agent up");

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let mut usage_tick = tokio::time::interval(metrics::SAMPLE_EVERY);
    usage_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut wake = agent.apply_folder().await;
    // Folder events mean a writer is done (see `watch`), so the first one rescans at
    // once; the rest of a burst (more files, an editor's several writes) are gathered
    // into one more rescan at most every FOLDER_DEBOUNCE.
    let mut folder_due: Option<tokio::time::Instant> = None;
    let mut folder_scanned = tokio::time::Instant::now();
    // Set while task results wait for the reconcile (see TASK_SETTLE).
    let mut settle_due: Option<tokio::time::Instant> = None;
    loop {
        let far = tokio::time::Instant::now() + Duration::from_secs(3600);
        let sleep = tokio::time::sleep_until(wake.unwrap_or(far));
        let folder_sleep = tokio::time::sleep_until(folder_due.unwrap_or(far));
        let settle_sleep = tokio::time::sleep_until(settle_due.unwrap_or(far));
        let input = tokio::select! {
            Some(i) = input_rx.recv() => i,
            Some(e) = exits.recv() => Input::Exit(e),
            Some(t) = task_rx.recv() => Input::Task(t),
            _ = tick.tick() => Input::Tick,
            _ = usage_tick.tick() => Input::SampleUsage,
            _ = sleep => Input::Tick,
            _ = settle_sleep, if settle_due.is_some() => Input::Settled,
            _ = folder_sleep, if folder_due.is_some() => {
                folder_due = None;
                folder_scanned = tokio::time::Instant::now();
                wake = agent.apply_folder().await;
                let writes = agent.store.drain_local_writes();
                agent.cluster.local_writes(&agent.store, writes);
                agent.cluster.publish(&agent.store, None).await;
                agent.publish_claims().await;
                agent.sync_services();
                continue;
            }
            _ = sigterm.recv() => Input::Shutdown,
            _ = tokio::signal::ctrl_c() => Input::Shutdown,
        };
        match input {
            Input::Api(Request::GetEvents { after }, reply) => {
                agent.answer_events(after, reply);
                continue;
            }
            Input::Api(Request::PullImage { reference, credentials, insecure_registries }, reply) => {
                agent.pull_image(reference, credentials, insecure_registries, reply);
                continue;
            }
            Input::Api(Request::PruneImages { all }, reply) => {
                agent.prune_images(all, reply);
                continue;
            }
            Input::Api(req, reply) if agent.names_a_peer(&req) => {
                agent.forward_node_request(req, reply);
                continue;
            }
            Input::Api(req, reply) => {
                let writes = req.writes();
                let resp = match req {
                    Request::Leave => {
                        let _ = reply.send(Response::Ok { data: serde_json::json!({"left": true}) });
                        agent.cluster.leave().await;
                        break;
                    }
                    req if cluster_api::is_cluster(&req) => agent.handle_cluster_api(req).await,
                    req => agent.handle_api(req),
                };
                let _ = reply.send(resp);
                if !writes {
                    // Reads change nothing the reconciler looks at.
                    continue;
                }
            }
            Input::Members(views) => {
                let changes = agent.cluster.handle_members(views, &agent.store, now_ms());
                agent.record_liveness(changes).await;
                agent.sync_network().await;
                let key = agent.view_key();
                if key == agent.view_key {
                    continue;
                }
                agent.view_key = key;
            }
            Input::NodeRequest { from, req, reply } => {
                let _ = reply.send(agent.apply_node_request(req, Some(&from)).await);
                if req == protocol::node_request::NodeRequest::DrainStatus {
                    continue;
                }
            }
            Input::Cluster(c) => {
                let changed = agent.cluster.handle_input(c, &mut agent.store, now_ms());
                if !changed {
                    agent.cluster.publish(&agent.store, None).await;
                    continue;
                }
            }
            Input::FolderChanged => {
                folder_due.get_or_insert((folder_scanned + FOLDER_DEBOUNCE).max(tokio::time::Instant::now()));
                continue;
            }
            Input::Exit(e) => agent.handle_exit(e),
            Input::Settled => {}
            Input::Task(t) => {
                // A burst of creates finishes as a burst: take every result that is
                // already waiting; the reconcile follows within TASK_SETTLE.
                agent.handle_task(t);
                while let Ok(t) = task_rx.try_recv() {
                    agent.handle_task(t);
                }
                settle_due.get_or_insert(tokio::time::Instant::now() + TASK_SETTLE);
                continue;
            }
            Input::Tick => {
                while agent.jobs.try_join_next().is_some() {}
                agent.probes.reap();
                // Nothing of a rescan's change runs before it is saved here (a missed
                // event is rare; the fast path is `apply_folder`).
                agent.store.defer();
                agent.sync_folder();
                agent.commit_folder().await;
                agent.rotate_logs();
                agent.cluster.tick(&mut agent.store, now_ms());
                agent.cluster.forget_departed().await;
                agent.observe_rollouts(now_ms());
                agent.autoscale(now_ms());
                // Imports and removals through the CLI change the store behind the agent.
                agent.publish_blobs().await;
                agent.image_gc_tick();
                let info = agent.node.info(agent.started_at_ms, agent.pods.len() as u32);
                agent.cluster.publish(&agent.store, Some(&info)).await;
            }
            Input::Shutdown => {
                // SIGTERM and Ctrl-C announce a graceful leave, so peers need not wait
                // for failure detection; the containers keep running.
                agent.cluster.leave().await;
                break;
            }
            // Metrics change nothing the reconciler looks at.
            Input::SampleUsage => {
                agent.sample_usage();
                continue;
            }
            Input::Usage(reading) => {
                agent.handle_usage(*reading).await;
                continue;
            }
            Input::BlobsChanged => {
                agent.publish_blobs().await;
                continue;
            }
            // Images change nothing the reconciler looks at.
            Input::ImageGc(outcome) => {
                agent.handle_image_gc(*outcome);
                continue;
            }
        }
        settle_due = None;
        let writes = agent.store.drain_local_writes();
        agent.cluster.local_writes(&agent.store, writes);
        agent.cluster.publish(&agent.store, None).await;
        wake = agent.reconcile();
        agent.drain_step();
        agent.publish_claims().await;
        agent.sync_services();
    }
    // Containers keep running when the agent stops: a restarted agent adopts them.
    // Executor tasks in flight finish first so no create is cut in half.
    server.abort();
    agent.probes.stop_all();
    if let Some(dns) = agent.dns.take() {
        dns.shutdown().await;
    }
    while agent.jobs.join_next().await.is_some() {}
    agent.records.finish();
    tracing::info!("peer agent stopped; containers keep running");
    Ok(())
}

/// What of a peer's claim placement and the service rules read: its state, revision,
/// start (placement keeps incumbents by it) and address (the endpoint). Not its status
/// word or restart count, which only `get pods` shows.
fn push_claim(text: &mut String, pod: &str, c: &crate::cluster::claims::ClaimState) {
    use std::fmt::Write;
    let _ = write!(
        text,
        "{pod} {}{}{} {} {} {:?};",
        if c.running { 'R' } else { 'P' },
        if c.is_ready() { 'r' } else { 'u' },
        if c.available { 'a' } else { 'n' },
        c.revision,
        c.since_ms,
        c.ip,
    );
}

impl Agent {
    /// Applies what changed in the spec folder and starts it: the reconcile runs before
    /// the store saves the change (its fsyncs take as long as a container start), and
    /// the save runs off this thread while the creates go on. Nothing of the change is
    /// shared with peers before it is saved; when the save fails the change is undone
    /// (and retried at the next rescan) and the reconcile runs again, which stops what
    /// it started. Returns when to reconcile next.
    async fn apply_folder(&mut self) -> Option<tokio::time::Instant> {
        self.store.defer();
        self.sync_folder();
        let wake = self.reconcile();
        if self.commit_folder().await {
            wake
        } else {
            self.reconcile()
        }
    }

    /// Saves the store's deferred writes; false (with the error logged and recorded as
    /// an event) when they could not be saved and were undone.
    async fn commit_folder(&mut self) -> bool {
        match self.store.commit().await {
            Ok(()) => true,
            Err(e) => {
                let msg =
                    format!("{e:#}; the spec folder's changes are undone and tried again at the next rescan");
                tracing::error!("{msg}");
                self.events.warning("specs", "FailedToSave", &msg);
                false
            }
        }
    }

    fn sync_folder(&mut self) {
        let outcome = self.folder.sync(&mut self.store);
        for (level, msg) in outcome.messages {
            match level {
                Level::Info => tracing::info!("{msg}"),
                Level::Warning => {
                    tracing::warn!("{msg}");
                    self.events.warning("specs", "SpecWarning", &msg);
                }
                Level::Error => {
                    tracing::error!("{msg}");
                    self.events.warning("specs", "InvalidSpec", &msg);
                }
            }
        }
    }

    /// Runs placement and the reconciler and starts the actions; returns when to run
    /// them again.
    fn reconcile(&mut self) -> Option<tokio::time::Instant> {
        let now = now_ms();
        let at = |t: u64| tokio::time::Instant::now() + Duration::from_millis(t.saturating_sub(now));
        // The view is complete enough once every live peer's info and claims arrived:
        // deciding earlier would take back replicas others replaced while this node was away.
        let peers_seen = {
            let mut peers = self.cluster.live_peers().peekable();
            peers.peek().is_some() && peers.all(|p| p.info.is_some() && p.claims_known)
        };
        if let Some(until) = self.placement.settling(now, peers_seen) {
            return Some(at(until));
        }
        let me = self.cluster.me().0.clone();
        let info = self.node.info(self.started_at_ms, self.pods.len() as u32);
        let claims = self.claims();
        let mut nodes = vec![placement::LiveNode { id: &me, info: &info, claims: &claims }];
        let mut hold_until: Option<u64> = None;
        for p in self.cluster.live_peers() {
            if !p.counts(now) {
                hold_until = p.counts_from_ms().map(|t| hold_until.map_or(t, |h| h.min(t)));
                continue;
            }
            if let Some(info) = &p.info {
                nodes.push(placement::LiveNode { id: &p.member.node_id, info, claims: &p.claims });
            }
        }
        let mut ids: Vec<String> = nodes.iter().map(|n| n.id.to_owned()).collect();
        ids.sort();
        let copies = protocol::rollout::index_copies(
            nodes
                .iter()
                .flat_map(|n| n.claims.iter().map(|(k, c)| (k.as_str(), c.revision.as_str(), c.available))),
        );
        let budgets: Vec<_> = self.store.budgets().collect();
        let all = reconcile::desired_pods(self.store.workloads(), &ids, &copies, &budgets);
        let before = std::mem::take(&mut self.placement.unschedulable);
        let mut share = self.placement.decide(&me, &all, &nodes, self.cluster.quorum(), now);
        let taints = self.node.taints();
        self.taints_seen.retain(|t, _| taints.contains(t));
        for t in &taints {
            self.taints_seen.entry(t.clone()).or_insert(now);
        }
        let seen: Vec<_> =
            self.taints_seen.iter().filter_map(|(t, at)| Some((placement::parse_taint(t)?, *at))).collect();
        let (evicted, evict_at) = placement::evict_for_taints(&mut share.mine, &seen, now);
        for pod in evicted.iter().filter(|p| self.pods.get(*p).is_some_and(|o| !o.deleting)) {
            let msg = "the node's NoExecute taint outlasted the pod's tolerationSeconds";
            tracing::info!(%pod, "{msg}; evicting");
            self.events.warning(&pod_object(pod), "TaintManagerEviction", msg);
        }
        share.wake_at_ms = [share.wake_at_ms, evict_at].into_iter().flatten().min();
        for (pod, why) in &self.placement.unschedulable {
            if before.get(pod) != Some(why) {
                tracing::warn!(%pod, "FailedScheduling: {why}");
                self.events.warning(&pod_object(pod), "FailedScheduling", why);
            }
        }
        let plan = reconcile::reconcile(&share.mine, &self.pods, now);
        for mut action in plan.actions {
            match &action {
                reconcile::Action::CreatePod(d) => {
                    tracing::info!(pod = %reconcile::pod_key(&d.namespace, &d.name), "placed on this node; creating");
                }
                reconcile::Action::DeletePod { pod, .. } => {
                    let to = self.placement.planned.get(pod).and_then(|p| p.node.as_deref());
                    match to {
                        Some(node) if node != me => {
                            tracing::info!(%pod, %node, "placed on another node; stopping this copy")
                        }
                        _ => tracing::info!(%pod, "no longer wanted here; stopping"),
                    }
                }
                reconcile::Action::StartContainer { .. } => {}
            }
            if let reconcile::Action::DeletePod { pod, grace } = &mut action {
                if share.fenced.contains(pod) {
                    tracing::warn!(%pod, "no quorum: fencing this StatefulSet pod (killed at once)");
                    self.events.warning(&pod_object(pod), "Fenced", "this node lost its quorum");
                    *grace = Duration::ZERO;
                }
            }
            self.execute(action);
        }
        [plan.wake_at_ms, share.wake_at_ms, hold_until].into_iter().flatten().min().map(at)
    }

    /// What this node claims to run (see `placement::my_claims`).
    fn claims(&self) -> crate::cluster::claims::Claims {
        let peers_running: std::collections::BTreeSet<&str> = self
            .cluster
            .live_peers()
            .flat_map(|p| p.claims.iter().filter(|(_, c)| c.running).map(|(k, _)| k.as_str()))
            .collect();
        let min_ready = |w: &protocol::spec::ObjectKey| {
            let stored = self.store.get(w);
            stored.and_then(|s| s.object.as_workload()).map_or(0, |w| w.rollout.min_ready_seconds)
        };
        placement::my_claims(&self.pods, &peers_running, self.placement.is_settling(), now_ms(), &min_ready)
    }

    async fn publish_claims(&mut self) {
        let now = now_ms();
        for pod in self.pods.values_mut() {
            let ready = crate::status::pod_ready(pod);
            match (ready, pod.ready_since_ms) {
                (true, None) => pod.ready_since_ms = Some(now),
                (false, Some(_)) => pod.ready_since_ms = None,
                _ => {}
            }
        }
        let claims = self.claims();
        self.cluster.publish_claims(&claims).await;
    }

    /// A hash of what placement reads from gossip: live nodes, their info and claims.
    fn view_key(&self) -> u64 {
        let mut text = String::new();
        for p in self.cluster.live_peers() {
            text.push_str(&p.member.node_id);
            text.push_str(&serde_json::to_string(&p.info).unwrap_or_default());
            for (k, c) in &p.claims {
                push_claim(&mut text, k, c);
            }
            text.push('\n');
        }
        protocol::spec::fnv1a64(text.as_bytes())
    }

    fn rotate_logs(&self) {
        for pod in self.pods.values() {
            for (name, c) in &pod.containers {
                let path = self.log_path(&pod.namespace, &pod.name, name, c.restart_count);
                if let Err(e) =
                    runtime::logs::rotate_if_needed(&path, self.cfg.log_max_bytes, self.cfg.log_keep)
                {
                    tracing::warn!(path = %path.display(), "rotating log: {e}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::cluster::claims::ClaimState;

    #[test]
    fn what_placement_and_services_read_of_a_claim_changes_the_view() {
        let base = ClaimState {
            running: true,
            revision: "r1".into(),
            since_ms: 5,
            status: "Running".into(),
            ready: (1, 1),
            restarts: 0,
            ip: Some(Ipv4Addr::new(10, 42, 1, 2)),
            available: true,
        };
        let line = |c: &ClaimState| {
            let mut text = String::new();
            push_claim(&mut text, "default/web-0", c);
            text
        };
        let changed = [
            ClaimState { ip: Some(Ipv4Addr::new(10, 42, 1, 3)), ..base.clone() },
            ClaimState { ip: None, ..base.clone() },
            ClaimState { since_ms: 6, ..base.clone() },
            ClaimState { running: false, ..base.clone() },
            ClaimState { revision: "r2".into(), ..base.clone() },
            ClaimState { ready: (0, 1), ..base.clone() },
            ClaimState { available: false, ..base.clone() },
        ];
        for c in &changed {
            assert_ne!(line(c), line(&base), "{c:?}");
        }
        // Only `get pods` shows these.
        let shown = ClaimState { status: "Completed".into(), restarts: 3, ..base.clone() };
        assert_eq!(line(&shown), line(&base));
    }
}
