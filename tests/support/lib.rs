//! Helpers for peer's integration tests: build the binaries and the demo image, start
//! real agents in throw-away folders, and wait on conditions with deadlines.
//!
//! Tests that need root (containers, namespaces, cgroups) call [`require_root`]: on a
//! non-root machine they skip with a message, unless `PEER_REQUIRE_ROOT_TESTS=1` (set
//! by `.ci/run`), which turns the skip into a failure.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

mod hosts;
pub use hosts::{TestNet, TEST_SUBNET};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ sits in the workspace").to_owned()
}

/// True when the test may run; false (after printing why) when it must skip.
pub fn require_root(test: &str) -> bool {
    let root = nix_euid() == 0;
    if root {
        return true;
    }
    if std::env::var("PEER_REQUIRE_ROOT_TESTS").as_deref() == Ok("1") {
        panic!("{test} needs root (containers, namespaces, cgroups) and PEER_REQUIRE_ROOT_TESTS=1 forbids skipping it");
    }
    eprintln!("skipping {test}: needs root (containers, namespaces, cgroups); run as root or in CI");
    false
}

fn nix_euid() -> u32 {
    // /proc/self/status is readable without unsafe code: "Uid: real effective ...".
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|u| u.parse().ok())
        .unwrap_or(u32::MAX)
}

/// Builds (once per test process) and returns the `peer` binary.
pub fn peer_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-q", "-p", "node", "--bin", "peer"])
            .current_dir(workspace())
            .status()
            .expect("running cargo build for the peer binary");
        assert!(status.success(), "building the peer binary failed");
        // Where that build put it: CARGO_TARGET_DIR (relative to the workspace, where cargo
        // ran) when set, as it is for test runs that share a prebuilt target folder.
        let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| "target".into(), PathBuf::from);
        workspace().join(target).join("debug/peer")
    })
}

/// Builds (once per test process) the demo image tar with `scripts/demo-image`.
pub fn demo_image() -> &'static Path {
    static TAR: OnceLock<PathBuf> = OnceLock::new();
    TAR.get_or_init(|| {
        // Each test binary builds its own copy, so parallel test binaries never race on one
        // file; copies of test processes that are gone are removed first.
        remove_stale_demo_images();
        let out = workspace().join(format!("target/test-demo-image-{}", std::process::id()));
        let output = Command::new(workspace().join("scripts/demo-image"))
            .arg(&out)
            .current_dir(workspace())
            .output()
            .expect("running scripts/demo-image");
        assert!(
            output.status.success(),
            "scripts/demo-image failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let _ = std::fs::remove_dir_all(&out);
        out.with_extension("tar")
    })
}

/// Removes `target/test-demo-image-PID.tar` files whose test process no longer runs.
fn remove_stale_demo_images() {
    let Ok(entries) = std::fs::read_dir(workspace().join("target")) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name.strip_prefix("test-demo-image-").and_then(|r| r.strip_suffix(".tar"));
        if pid.is_some_and(|pid| !Path::new("/proc").join(pid).exists()) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// The static demo binary, to run on the host side (e.g. as an HTTP client).
pub fn demo_bin() -> PathBuf {
    demo_image();
    workspace().join("target/demo-static/release/peer-demo")
}

/// Polls `f` every 50 ms until it returns `Some`, or panics with `what` at the deadline.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A real `peer up` agent in its own data and spec folders and cgroup parent.
pub struct Node {
    pub name: String,
    pub dir: PathBuf,
    pub data: PathBuf,
    pub specs: PathBuf,
    pub cgroup_parent: String,
    /// The node's QUIC address on loopback (fixed across agent restarts).
    pub listen: std::net::SocketAddr,
    /// Extra environment for the agent (e.g. `PEER_TEST_HOOKS`).
    pub agent_env: Vec<(String, String)>,
    /// Extra arguments for `peer up`.
    pub agent_args: Vec<String>,
    /// The test host (network namespace) the agent runs in; `None` for the machine's own.
    pub netns: Option<String>,
    agent: Option<Child>,
}

impl Node {
    /// Creates the folders, imports the demo image and starts the agent.
    pub fn start(name: &str) -> Node {
        let mut node = Node::prepare(name);
        node.start_agent();
        node
    }

    /// Creates the folders and imports the demo image; the agent is not started.
    pub fn prepare(name: &str) -> Node {
        let dir = std::env::temp_dir().join(format!("peer-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let data = dir.join("data");
        let specs = dir.join("specs");
        std::fs::create_dir_all(&specs).expect("creating spec folder");
        let node = Node {
            name: name.to_owned(),
            cgroup_parent: format!("peer-test-{name}-{}", std::process::id()),
            dir,
            data,
            specs,
            listen: free_udp_port(),
            agent_env: vec![],
            agent_args: vec![],
            netns: None,
            agent: None,
        };
        let out = node.peer(&["image", "import", &demo_image().display().to_string()]);
        assert!(out.status.success(), "image import failed: {}", String::from_utf8_lossy(&out.stderr));
        node
    }

    pub fn start_agent(&mut self) {
        // A probed free port can be taken by another test's process (a CLI dialing out)
        // before the agent binds it; on loopback the agent then gets another one.
        for _ in 0..3 {
            let log_path = self.dir.join(format!("agent-{}.log", crate::unique()));
            self.spawn_agent(&log_path);
            let up = wait_for("the agent's API socket", Duration::from_secs(20), || {
                if self.peer(&["get", "pods"]).status.success() {
                    return Some(true);
                }
                let exited = self.agent.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
                let taken =
                    std::fs::read_to_string(&log_path).is_ok_and(|l| l.contains("Address already in use"));
                (exited && taken && self.netns.is_none()).then_some(false)
            });
            if up {
                return;
            }
            self.agent = None;
            self.listen = free_udp_port();
        }
        panic!("the agent of {} could not bind a free port", self.name);
    }

    fn spawn_agent(&mut self, log_path: &Path) {
        let log = std::fs::File::create(log_path).expect("creating agent log");
        let mut cmd = match &self.netns {
            None => Command::new(peer_bin()),
            Some(ns) => in_netns(ns),
        };
        let child = cmd
            .args(["up", "--specs"])
            .arg(&self.specs)
            .args(["--cgroup-parent", &self.cgroup_parent])
            .args(["--name", &self.name, "--listen", &self.listen.to_string()])
            .args(&self.agent_args)
            // Agents that share the machine's own network namespace would fight over one
            // bridge, routes and NAT tables: only agents on test hosts network their pods.
            .args(match (&self.netns, self.agent_args.iter().any(|a| a == "--pod-network")) {
                (None, false) => &["--pod-network", "none"][..],
                _ => &[][..],
            })
            .envs(self.agent_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("PEER_DATA_DIR", &self.data)
            .env("RUST_LOG", "info,hickory_server=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting peer up");
        self.agent = Some(child);
    }

    /// Stops the agent with SIGTERM (a graceful leave) and waits for it.
    pub fn stop_agent(&mut self) {
        if let Some(mut child) = self.agent.take() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let _ = child.wait();
        }
    }

    /// Kills the agent with SIGKILL (containers keep running).
    pub fn kill_agent(&mut self) {
        if let Some(mut child) = self.agent.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGKILLs every process in this node's cgroups (its containers), as a power cut
    /// would; returns how many it killed.
    pub fn kill_containers(&self) -> usize {
        runtime::kill_all_under(&self.cgroup_parent)
    }

    /// Runs a `peer` CLI command against this node.
    pub fn peer(&self, args: &[&str]) -> Output {
        // In the node's test host, so commands that dial peers (`peer join`) reach them.
        let mut cmd = match &self.netns {
            None => Command::new(peer_bin()),
            Some(ns) => in_netns(ns),
        };
        cmd.args(args).env("PEER_DATA_DIR", &self.data).output().expect("running the peer CLI")
    }

    /// Starts a `peer` CLI command against this node and returns at once; its output is
    /// piped (`Child::wait_with_output`).
    pub fn peer_spawn(&self, args: &[&str]) -> Child {
        let mut cmd = match &self.netns {
            None => Command::new(peer_bin()),
            Some(ns) => in_netns(ns),
        };
        cmd.args(args)
            .env("PEER_DATA_DIR", &self.data)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the peer CLI")
    }

    /// Runs a `peer` command that must succeed; returns its stdout.
    pub fn peer_ok(&self, args: &[&str]) -> String {
        let out = self.peer(args);
        assert!(
            out.status.success(),
            "peer {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.peer_ok(&all)).expect("peer printed JSON")
    }

    /// The pods this node runs, as `peer get pods -o json` rows.
    pub fn pods(&self) -> Vec<Value> {
        self.all_pods().into_iter().filter(|p| p["local"] == true).collect()
    }

    /// Every pod of the cluster as this node sees it (other nodes' from their claims).
    pub fn all_pods(&self) -> Vec<Value> {
        self.json(&["get", "pods"]).as_array().cloned().unwrap_or_default()
    }

    /// Names of the pods whose status is Running and all containers ready.
    pub fn running_pods(&self) -> Vec<String> {
        self.pods()
            .into_iter()
            .filter(|p| p["status"] == "Running" && ready_all(&p["ready"]))
            .filter_map(|p| p["name"].as_str().map(str::to_owned))
            .collect()
    }

    pub fn describe(&self, pod: &str) -> Value {
        let out = self.peer_ok(&["describe", "pod", pod]);
        serde_json::to_value(serde_yaml_like(&out)).expect("describe output")
    }

    /// Writes a spec file into the drop-in folder (atomically, as editors and tools should).
    pub fn write_spec(&self, file: &str, yaml: &str) {
        let tmp = self.specs.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, yaml).expect("writing spec");
        std::fs::rename(&tmp, self.specs.join(file)).expect("renaming spec");
    }

    pub fn remove_spec(&self, file: &str) {
        std::fs::remove_file(self.specs.join(file)).expect("removing spec");
    }

    /// The agent's log so far (for assertions on messages and for debugging).
    pub fn agent_log(&self) -> String {
        let mut out = String::new();
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            let mut logs: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
            logs.sort();
            for p in logs.iter().filter(|p| p.extension().is_some_and(|e| e == "log")) {
                out.push_str(&std::fs::read_to_string(p).unwrap_or_default());
            }
        }
        out
    }
}

impl Drop for Node {
    /// Deletes every workload and waits for the containers to go before stopping the
    /// agent, so no container of a test outlives it.
    fn drop(&mut self) {
        if self.agent.is_some() {
            if let Ok(entries) = std::fs::read_dir(&self.specs) {
                for e in entries.flatten() {
                    let _ = std::fs::remove_file(e.path());
                }
            }
            for kind in ["deployment", "statefulset", "daemonset"] {
                let out = self.peer(&["get", &format!("{kind}s"), "-o", "json"]);
                let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
                for r in rows {
                    if let Some(n) = r["name"].as_str() {
                        let _ = self.peer(&["delete", kind, n]);
                    }
                }
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                let out = self.peer(&["get", "pods", "-o", "json"]);
                let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
                if rows.iter().all(|r| r["local"] != true) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            self.kill_agent();
        }
        // What a dead agent left (a test killed it): its containers, their rootfs mounts.
        self.kill_containers();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut mounts: Vec<&str> = mountinfo
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| Path::new(m).starts_with(&self.dir))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = Command::new("umount").args(["-l", m]).status();
        }
        // libcontainer leaves the parent cgroup directories behind (and a dead agent its
        // containers' too); remove this node's, deepest first.
        let mut roots = vec![Path::new("/sys/fs/cgroup").join(&self.cgroup_parent)];
        if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
            roots.extend(hierarchies.flatten().map(|h| h.path().join(&self.cgroup_parent)));
        }
        for root in roots {
            remove_cgroup_tree(&root);
        }
        if std::thread::panicking() {
            eprintln!("--- agent log of node {} ---\n{}", self.name, self.agent_log());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Removes a cgroup directory and its children, deepest first (cgroup files cannot be
/// deleted, only their empty directories).
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// `peer` in the network namespace `ns` only: `nsenter` execs it in place (so the child is
/// the agent itself) and, unlike `ip netns exec`, leaves the mounts alone (`/sys/fs/cgroup`
/// stays visible).
fn in_netns(ns: &str) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{ns}")).arg("--").arg(peer_bin());
    c
}

fn ready_all(ready: &Value) -> bool {
    ready.as_str().and_then(|r| r.split_once('/')).is_some_and(|(a, b)| a == b && a != "0")
}

/// `peer describe` prints YAML; tests read it back through the JSON form instead.
/// The messages of the events with `reason` in a `peer describe pod` answer.
pub fn event_messages(described: &Value, reason: &str) -> Vec<String> {
    described["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["reason"] == reason)
        .filter_map(|e| e["message"].as_str().map(str::to_owned))
        .collect()
}

fn serde_yaml_like(text: &str) -> Value {
    serde_yaml_ng::from_str(text).expect("describe prints YAML")
}

// --- clusters ---------------------------------------------------------------------------

/// A Deployment of the demo image with a 1 s grace period and small limits.
pub fn deployment(name: &str, replicas: u32) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  replicas: {replicas}\n  template:\n    spec:\n      terminationGracePeriodSeconds: 1\n      containers:\n        - name: main\n          image: peer-demo:latest\n          resources:\n            limits: {{cpu: \"100m\", memory: \"32Mi\"}}\n"
    )
}

/// Starts `names[0]` as a new cluster and joins the others through it.
/// Every agent has the test hooks (`peer block`) enabled.
pub fn cluster(names: &[&str]) -> Vec<Node> {
    cluster_with(names, &[])
}

/// Like [`cluster`], with extra arguments for every `peer up`.
pub fn cluster_with(names: &[&str], args: &[&str]) -> Vec<Node> {
    let nodes = names
        .iter()
        .map(|n| {
            let mut node = Node::prepare(n);
            node.agent_args.extend(args.iter().map(|a| (*a).to_owned()));
            node
        })
        .collect();
    form(nodes)
}

/// Like [`cluster`], but node `i` runs on test host `i` of `net` (its own network
/// namespace, address `192.168.251.(i + 10)`), with its QUIC endpoint on port 7946 there.
pub fn cluster_on(net: &mut TestNet, names: &[&str]) -> Vec<Node> {
    let nodes = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let (ns, addr) = net.add_host(i as u8);
            let mut node = Node::prepare(name);
            node.netns = Some(ns);
            node.listen = std::net::SocketAddr::from((addr, 7946));
            node
        })
        .collect();
    form(nodes)
}

/// Starts the first node as a new cluster, joins the others through it and waits until
/// every node sees all of them live.
fn form(mut prepared: Vec<Node>) -> Vec<Node> {
    let mut first = prepared.remove(0);
    first.agent_env.push(("PEER_TEST_HOOKS".into(), "1".into()));
    first.start_agent();
    let token = first.peer_ok(&["token"]).trim().to_owned();
    let mut nodes = vec![first];
    for mut node in prepared {
        node.agent_env.push(("PEER_TEST_HOOKS".into(), "1".into()));
        let name = node.name.clone();
        node.peer_ok(&["join", &nodes[0].listen.to_string(), "--token", &token, "--name", &name]);
        node.start_agent();
        nodes.push(node);
    }
    let n = nodes.len();
    for node in &nodes {
        wait_for(&format!("{} to see {n} live nodes", node.name), Duration::from_secs(10), || {
            (live_nodes(node).len() == n).then_some(())
        });
    }
    nodes
}

pub fn join(name: &str, via: &Node, token: &str) -> Node {
    let mut node = Node::prepare(name);
    node.agent_env.push(("PEER_TEST_HOOKS".into(), "1".into()));
    node.peer_ok(&["join", &via.listen.to_string(), "--token", token, "--name", name]);
    node.start_agent();
    node
}

pub fn nodes_json(node: &Node) -> Vec<Value> {
    node.json(&["get", "nodes"]).as_array().cloned().unwrap_or_default()
}

pub fn live_nodes(node: &Node) -> Vec<String> {
    nodes_json(node)
        .into_iter()
        .filter(|n| n["state"] == "live")
        .filter_map(|n| n["name"].as_str().map(str::to_owned))
        .collect()
}

/// `name -> desired replicas` as `peer get deployments` on `node` shows them.
pub fn deployments(node: &Node) -> Vec<(String, u64)> {
    node.json(&["get", "deployments"])
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|d| (d["name"].as_str().unwrap_or_default().to_owned(), d["desired"].as_u64().unwrap_or(0)))
        .collect()
}

pub fn apply(node: &Node, file: &str, yaml: &str) {
    let path = node.dir.join(file);
    std::fs::write(&path, yaml).expect("writing spec");
    node.peer_ok(&["apply", "-f", &path.display().to_string()]);
}

/// A number unique within this process, for file names.
pub fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

/// A loopback address with a UDP port that was free a moment ago.
pub fn free_udp_port() -> std::net::SocketAddr {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("binding a probe socket");
    s.local_addr().expect("probe socket address")
}
