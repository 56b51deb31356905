//! Real `peer up` agents on loopback, started the way users start them (`peer up`, `peer
//! token`, `peer join`): failure detection after SIGKILL, spec spread after `peer apply`,
//! and a soak under CPU load that counts false deaths (`node is no longer live` lines).
//!
//! Polling goes straight to each agent's socket (`get_nodes`, `get_deployments`, the same
//! requests `peer get … -o json` sends), so no CLI process start sits in the measured time.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The log line an agent writes on every live → not-live transition of a peer.
pub const FALSE_DEATH_LINE: &str = "node is no longer live";

#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// The `peer` binary (release build).
    #[arg(long, default_value = "target/release/peer")]
    pub peer: PathBuf,
    /// Scratch folder for the nodes' data, specs and logs (must exist, emptied by the caller).
    #[arg(long)]
    pub work: PathBuf,
    #[arg(long, default_value_t = 5)]
    pub nodes: usize,
    /// First QUIC port; node k listens on 127.0.0.1:(base_port + k).
    #[arg(long, default_value_t = 47_300)]
    pub base_port: u16,
    /// SIGKILLs for failure detection (0 skips it).
    #[arg(long, default_value_t = 10)]
    pub kills: usize,
    /// `peer apply`s for spec spread (0 skips it).
    #[arg(long, default_value_t = 10)]
    pub spreads: usize,
    /// Seconds of soak with two CPU burners (0 skips it).
    #[arg(long, default_value_t = 0)]
    pub soak_secs: u64,
    /// SIGKILLs of an agent and its containers while a 10-replica Deployment runs, timed
    /// until every replica runs again on the survivors (0 skips it).
    #[arg(long, default_value_t = 0)]
    pub heal_kills: usize,
    /// The demo image archive (`scripts/demo-image`) each node imports for `--heal-kills`.
    #[arg(long, default_value = "target/demo-image.tar")]
    pub image: PathBuf,
    /// Prefix of the nodes' cgroup parents (`PREFIX-nK`).
    #[arg(long, default_value = "peer-bench-cl")]
    pub cgroup_prefix: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClusterReport {
    pub nodes: usize,
    /// Per kill: ms until the last survivor showed the victim not live.
    pub detect_ms: Vec<f64>,
    /// Per kill: the victim.
    pub victims: Vec<String>,
    /// Per apply: ms from `peer apply` returning until all nodes show the deployment.
    pub spread_ms: Vec<f64>,
    /// Per heal kill: ms from SIGKILL of an agent and its containers until all 10
    /// replicas run again, one copy each.
    #[serde(default)]
    pub heal_ms: Vec<f64>,
    /// Per heal kill: replicas the victim ran.
    #[serde(default)]
    pub heal_moved: Vec<usize>,
    pub soak_secs: u64,
    /// `node is no longer live` lines in all agent logs after the soak.
    pub soak_false_deaths: Option<usize>,
    /// Load average at the end of the soak.
    pub soak_loadavg: Option<String>,
}

pub(crate) struct Agent {
    name: String,
    data: PathBuf,
    specs: PathBuf,
    log: PathBuf,
    listen: SocketAddr,
    cgroup_parent: String,
    /// Extra arguments of `peer up`.
    extra: Vec<String>,
    child: Option<Child>,
}

impl Agent {
    pub(crate) fn socket(&self) -> PathBuf {
        self.data.join("peer.sock")
    }

    pub(crate) fn cli(&self, peer: &Path, args: &[&str]) -> anyhow::Result<Output> {
        Command::new(peer)
            .args(args)
            .env("PEER_DATA_DIR", &self.data)
            .output()
            .with_context(|| format!("running peer {args:?} on {}", self.name))
    }

    pub(crate) fn cli_ok(&self, peer: &Path, args: &[&str]) -> anyhow::Result<String> {
        let out = self.cli(peer, args)?;
        if !out.status.success() {
            bail!(
                "peer {args:?} on {} failed: {}{}",
                self.name,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn start(&mut self, peer: &Path) -> anyhow::Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let child = Command::new(peer)
            .args(["up", "--specs"])
            .arg(&self.specs)
            .args(["--cgroup-parent", &self.cgroup_parent, "--name", &self.name])
            .args(["--listen", &self.listen.to_string()])
            // Many agents share this machine's network namespace: no pod networking.
            .args(["--pod-network", "none"])
            .args(&self.extra)
            .env("PEER_DATA_DIR", &self.data)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting peer up for {}", self.name))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while request(&self.socket(), "get_nodes").is_err() {
            if Instant::now() > deadline {
                bail!("{}: the agent's socket did not answer within 20 s", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM (graceful leave), then SIGKILL after 10 s.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Names the node shows as live.
    fn live(&self) -> anyhow::Result<Vec<String>> {
        let rows = request(&self.socket(), "get_nodes")?;
        Ok(rows_of(&rows)
            .iter()
            .filter(|r| r.get("state").and_then(Value::as_str) == Some("live"))
            .filter_map(|r| r.get("name").and_then(Value::as_str).map(str::to_owned))
            .collect())
    }
}

pub(crate) fn rows_of(v: &Value) -> Vec<Value> {
    v.as_array().cloned().unwrap_or_default()
}

/// One request without fields over the agent's socket; returns the answer's `data`.
pub(crate) fn request(socket: &Path, op: &str) -> anyhow::Result<Value> {
    request_json(socket, &serde_json::json!({ "op": op }))
}

/// One request over the agent's socket; returns the answer's `data`.
fn request_json(socket: &Path, req: &Value) -> anyhow::Result<Value> {
    let op = req.get("op").and_then(Value::as_str).unwrap_or("?");
    let mut stream =
        UnixStream::connect(socket).with_context(|| format!("connecting to {}", socket.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).context("setting a socket timeout")?;
    stream.write_all(format!("{req}\n").as_bytes()).context("sending a request")?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).context("reading the answer")?;
    let answer: Value = serde_json::from_str(&line).with_context(|| format!("bad answer {line:?}"))?;
    if answer.get("status").and_then(Value::as_str) != Some("ok") {
        bail!("agent refused {op}: {line}");
    }
    Ok(answer.get("data").cloned().unwrap_or(Value::Null))
}

/// The agents of one run; dropping stops them all.
pub(crate) struct Fleet {
    pub(crate) peer: PathBuf,
    pub(crate) agents: Vec<Agent>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for a in &mut self.agents {
            a.stop();
        }
    }
}

impl Fleet {
    pub(crate) fn start(args: &ClusterArgs, extra: &[&str]) -> anyhow::Result<Fleet> {
        let mut fleet = Fleet { peer: args.peer.clone(), agents: Vec::new() };
        for k in 1..=args.nodes {
            let name = format!("n{k}");
            let dir = args.work.join(&name);
            let specs = dir.join("specs");
            fs::create_dir_all(&specs).with_context(|| format!("creating {}", specs.display()))?;
            let port = args.base_port.checked_add(u16::try_from(k)?).context("port out of range")?;
            fleet.agents.push(Agent {
                data: dir.join("data"),
                specs,
                log: dir.join("agent.log"),
                listen: SocketAddr::from(([127, 0, 0, 1], port)),
                cgroup_parent: format!("{}-{name}", args.cgroup_prefix),
                extra: extra.iter().map(|a| (*a).to_owned()).collect(),
                name,
                child: None,
            });
        }
        let peer = fleet.peer.clone();
        fleet.agents[0].start(&peer)?;
        let token = fleet.agents[0].cli_ok(&peer, &["token"])?.trim().to_owned();
        let first = fleet.agents[0].listen.to_string();
        for a in &mut fleet.agents[1..] {
            a.cli_ok(&peer, &["join", &first, "--token", &token, "--name", &a.name.clone()])?;
            a.start(&peer)?;
        }
        fleet.wait_all_live(Duration::from_secs(30))?;
        Ok(fleet)
    }

    fn wait_all_live(&self, limit: Duration) -> anyhow::Result<()> {
        let n = self.agents.len();
        let deadline = Instant::now() + limit;
        loop {
            let mut ok = true;
            for a in &self.agents {
                if a.live().map(|l| l.len()).unwrap_or(0) != n {
                    ok = false;
                    break;
                }
            }
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("not every node saw {n} live nodes within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn false_deaths(&self) -> anyhow::Result<usize> {
        let mut total = 0;
        for a in &self.agents {
            let text = fs::read_to_string(&a.log).with_context(|| format!("reading {}", a.log.display()))?;
            total += text.lines().filter(|l| l.contains(FALSE_DEATH_LINE)).count();
        }
        Ok(total)
    }

    /// SIGKILLs `victim`; returns the ms until every survivor showed it not live.
    fn detect(&mut self, victim: usize) -> anyhow::Result<f64> {
        let name = self.agents[victim].name.clone();
        let sockets: Vec<PathBuf> =
            self.agents.iter().enumerate().filter(|(i, _)| *i != victim).map(|(_, a)| a.socket()).collect();
        self.agents[victim].kill();
        let start = Instant::now();
        let times = poll_all(&sockets, start, Duration::from_millis(50), Duration::from_secs(30), |s| {
            let rows = request(s, "get_nodes")?;
            Ok(!rows_of(&rows).iter().any(|r| {
                r.get("name").and_then(Value::as_str) == Some(name.as_str())
                    && r.get("state").and_then(Value::as_str) == Some("live")
            }))
        })?;
        Ok(times.into_iter().fold(0.0, f64::max))
    }

    /// `peer apply` of a new Deployment on node 1; ms until all nodes show it.
    fn spread(&self, name: &str) -> anyhow::Result<f64> {
        let first = &self.agents[0];
        let file = first.data.parent().unwrap_or(&first.data).join(format!("{name}.yaml"));
        fs::write(&file, deployment(name)).with_context(|| format!("writing {}", file.display()))?;
        let path = file.to_string_lossy().into_owned();
        first.cli_ok(&self.peer, &["apply", "-f", &path])?;
        let start = Instant::now();
        let sockets: Vec<PathBuf> = self.agents.iter().map(Agent::socket).collect();
        let times = poll_all(&sockets, start, Duration::from_millis(20), Duration::from_secs(30), |s| {
            let rows = request_json(s, &serde_json::json!({"op": "get_workloads", "kind": "Deployment"}))?;
            Ok(rows_of(&rows).iter().any(|r| r.get("name").and_then(Value::as_str) == Some(name)))
        })?;
        Ok(times.into_iter().fold(0.0, f64::max))
    }
}

impl Agent {
    /// Pods this agent runs with every container running.
    fn running(&self) -> anyhow::Result<Vec<String>> {
        let rows = request(&self.socket(), "get_pods")?;
        Ok(rows_of(&rows)
            .iter()
            .filter(|r| r.get("local") == Some(&Value::Bool(true)))
            .filter(|r| r.get("status").and_then(Value::as_str) == Some("Running"))
            .filter(|r| {
                let ready = r.get("ready").and_then(Value::as_str).unwrap_or("");
                ready.split_once('/').is_some_and(|(a, b)| a == b && a != "0")
            })
            .filter_map(|r| r.get("name").and_then(Value::as_str).map(str::to_owned))
            .collect())
    }
}

impl Fleet {
    /// Running pods per agent (`None` for a stopped one).
    pub(crate) fn running(&self, skip: Option<usize>) -> Vec<Vec<String>> {
        self.agents
            .iter()
            .enumerate()
            .map(|(i, a)| if Some(i) == skip { Vec::new() } else { a.running().unwrap_or_default() })
            .collect()
    }

    /// Waits until exactly `n` distinct pods run, one copy each, on the agents but `skip`.
    pub(crate) fn wait_exactly(
        &self,
        n: usize,
        skip: Option<usize>,
        limit: Duration,
    ) -> anyhow::Result<Vec<Vec<String>>> {
        let deadline = Instant::now() + limit;
        loop {
            let per = self.running(skip);
            let all: Vec<&String> = per.iter().flatten().collect();
            let distinct: std::collections::BTreeSet<&&String> = all.iter().collect();
            if all.len() == n && distinct.len() == n {
                return Ok(per);
            }
            if Instant::now() > deadline {
                bail!("not exactly {n} running replicas within {limit:?}: {per:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs the agent and containers of the busiest node; ms until 10 replicas run on
    /// the survivors. Then restarts it and waits for exactly 10 again.
    fn heal(&mut self, replicas: usize) -> anyhow::Result<(f64, usize, String)> {
        let per = self.wait_exactly(replicas, None, Duration::from_secs(60))?;
        let victim = (0..per.len()).max_by_key(|i| per[*i].len()).unwrap_or(0);
        let moved = per[victim].len();
        self.agents[victim].kill();
        let start = Instant::now();
        runtime::kill_all_under(&self.agents[victim].cgroup_parent);
        self.wait_exactly(replicas, Some(victim), Duration::from_secs(60))?;
        let ms = start.elapsed().as_secs_f64() * 1e3;
        let peer = self.peer.clone();
        self.agents[victim].start(&peer)?;
        self.wait_all_live(Duration::from_secs(30))?;
        std::thread::sleep(Duration::from_secs(5));
        self.wait_exactly(replicas, None, Duration::from_secs(60))?;
        Ok((ms, moved, self.agents[victim].name.clone()))
    }
}

/// A Deployment with no replicas: spreading it starts no container.
fn deployment(name: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  replicas: 0\n  \
         template:\n    spec:\n      containers:\n        - name: main\n          image: peer-demo:latest\n          \
         resources:\n            limits: {{cpu: \"100m\", memory: \"32Mi\"}}\n"
    )
}

/// Polls `done` on every socket (one thread each) every `period` from `start` until it holds;
/// returns per socket the ms from `start` to the end of the first poll that held.
fn poll_all(
    sockets: &[PathBuf],
    start: Instant,
    period: Duration,
    limit: Duration,
    done: impl Fn(&Path) -> anyhow::Result<bool> + Sync,
) -> anyhow::Result<Vec<f64>> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = sockets
            .iter()
            .map(|s| {
                let done = &done;
                scope.spawn(move || -> anyhow::Result<f64> {
                    let mut next = start;
                    loop {
                        // A failed poll (e.g. an agent busy) counts as not yet.
                        if done(s).unwrap_or(false) {
                            return Ok(start.elapsed().as_secs_f64() * 1e3);
                        }
                        if start.elapsed() > limit {
                            bail!("{}: condition not met within {limit:?}", s.display());
                        }
                        next += period;
                        if let Some(wait) = next.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().map_err(|_| anyhow::anyhow!("poll thread panicked"))?).collect()
    })
}

/// Two busy loops in a child process each (`yes > /dev/null`); killed on drop.
struct Burners(Vec<Child>);

impl Burners {
    fn start(n: usize) -> anyhow::Result<Burners> {
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(
                Command::new("yes")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("starting a CPU burner (yes)")?,
            );
        }
        Ok(Burners(v))
    }
}

impl Drop for Burners {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn run(args: &ClusterArgs) -> anyhow::Result<ClusterReport> {
    let mut report = ClusterReport { nodes: args.nodes, soak_secs: args.soak_secs, ..Default::default() };
    if args.soak_secs > 0 {
        let fleet = Fleet::start(args, &[])?;
        eprintln!("soak: {} nodes live; {} s with two CPU burners", args.nodes, args.soak_secs);
        // Learn the heartbeat rate first, as a running cluster would have.
        std::thread::sleep(Duration::from_secs(3));
        let before = fleet.false_deaths()?;
        if before != 0 {
            bail!("{before} `{FALSE_DEATH_LINE}` lines before the soak started");
        }
        {
            let _burners = Burners::start(2)?;
            std::thread::sleep(Duration::from_secs(args.soak_secs));
            report.soak_loadavg = Some(loadavg());
        }
        fleet.wait_all_live(Duration::from_secs(10))?;
        report.soak_false_deaths = Some(fleet.false_deaths()?);
        eprintln!("soak: {:?} false deaths", report.soak_false_deaths);
        drop(fleet);
        for a in 1..=args.nodes {
            let _ = fs::remove_dir_all(args.work.join(format!("n{a}")));
        }
    }
    if args.kills == 0 && args.spreads == 0 && args.heal_kills == 0 {
        return Ok(report);
    }
    let mut fleet = Fleet::start(args, &[])?;
    std::thread::sleep(Duration::from_secs(3));
    for i in 0..args.spreads {
        let ms = fleet.spread(&format!("spread-{i}"))?;
        eprintln!("spread {i}: {ms:.1} ms");
        report.spread_ms.push(ms);
        std::thread::sleep(Duration::from_millis(500));
    }
    for i in 0..args.spreads {
        let _ = fleet.agents[0].cli(&fleet.peer, &["delete", "deployment", &format!("spread-{i}")]);
    }
    for i in 0..args.kills {
        let victim = i % fleet.agents.len();
        let ms = fleet.detect(victim)?;
        eprintln!("kill {i} ({}): seen not live after {ms:.1} ms", fleet.agents[victim].name);
        report.detect_ms.push(ms);
        report.victims.push(fleet.agents[victim].name.clone());
        let peer = fleet.peer.clone();
        fleet.agents[victim].start(&peer)?;
        fleet.wait_all_live(Duration::from_secs(30))?;
        std::thread::sleep(Duration::from_secs(3));
    }
    if args.heal_kills > 0 {
        let image = args.image.to_string_lossy().into_owned();
        for a in &fleet.agents {
            a.cli_ok(&fleet.peer, &["image", "import", &image])?;
        }
        let first = &fleet.agents[0];
        let file = first.data.parent().unwrap_or(&first.data).join("heal.yaml");
        fs::write(&file, heal_deployment(HEAL_REPLICAS))
            .with_context(|| format!("writing {}", file.display()))?;
        first.cli_ok(&fleet.peer, &["apply", "-f", &file.to_string_lossy()])?;
        for i in 0..args.heal_kills {
            let (ms, moved, victim) = fleet.heal(HEAL_REPLICAS)?;
            eprintln!("heal {i}: {moved} replicas of {victim} running elsewhere after {ms:.0} ms");
            report.heal_ms.push(ms);
            report.heal_moved.push(moved);
        }
        let _ = fleet.agents[0].cli(&fleet.peer, &["delete", "deployment", "heal"]);
        let _ = fleet.wait_exactly(0, None, Duration::from_secs(30));
    }
    Ok(report)
}

const HEAL_REPLICAS: usize = 10;

/// The demo HTTP server with small limits and a 1 s grace period.
fn heal_deployment(replicas: usize) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: heal}}\nspec:\n  replicas: {replicas}\n  \
         template:\n    spec:\n      terminationGracePeriodSeconds: 1\n      containers:\n        - name: main\n          \
         image: peer-demo:latest\n          args: [serve]\n          \
         resources:\n            limits: {{cpu: \"100m\", memory: \"32Mi\"}}\n"
    )
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split(' ').take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Median and max of samples (ms).
pub(crate) fn specs_dir(agent: &Agent) -> &Path {
    &agent.specs
}

pub fn median_max(v: &[f64]) -> Option<(f64, f64)> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let mid = s.len() / 2;
    let median = if s.len() % 2 == 0 { (s[mid - 1] + s[mid]) / 2.0 } else { s[mid] };
    Some((median, s[s.len() - 1]))
}

pub fn markdown(r: &ClusterReport) -> String {
    let mut out = String::new();
    let row = |what: &str, v: &[f64], target: &str, poll: &str| match median_max(v) {
        Some((med, max)) => {
            let all: Vec<String> = v.iter().map(|x| format!("{x:.0}")).collect();
            format!(
                "| {what} | {} | {med:.0} | {max:.0} | {target} | {poll} | {} |\n",
                v.len(),
                all.join(", ")
            )
        }
        None => String::new(),
    };
    if !r.detect_ms.is_empty() || !r.spread_ms.is_empty() || !r.heal_ms.is_empty() {
        out.push_str(&format!("{} real agents (`peer up`, release build) on loopback, ms:\n\n", r.nodes));
        out.push_str("| what | runs | median | max | target | poll period | all samples |\n");
        out.push_str("|---|---:|---:|---:|---|---|---|\n");
        out.push_str(&row(
            "failure detection: SIGKILL → every survivor shows the victim not live",
            &r.detect_ms,
            "≤ 2000",
            "50 ms",
        ));
        out.push_str(&row(
            "spec spread: `peer apply` on n1 returned → `get deployments` shows it on all nodes",
            &r.spread_ms,
            "–",
            "20 ms",
        ));
        out.push_str(&row(
            "self-healing: SIGKILL of the busiest node's agent and containers → all 10 replicas running on the survivors",
            &r.heal_ms,
            "≤ 3000 median",
            "20 ms",
        ));
        out.push('\n');
    }
    if let Some(n) = r.soak_false_deaths {
        out.push_str(&format!(
            "Soak: {} real agents for {} s with two `yes > /dev/null` on {} cores (load average at the end {}): \
             **{n}** `{FALSE_DEATH_LINE}` lines in all agent logs (target 0).\n\n",
            r.nodes,
            r.soak_secs,
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            r.soak_loadavg.as_deref().unwrap_or("?"),
        ));
    }
    out
}
