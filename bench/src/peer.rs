//! The peer side: drop a Deployment into the agent's spec folder by atomic rename and
//! time until all its replicas are Running: the agent's socket is polled until they are,
//! then the time is read from the agent's own `Started` events (when it recorded each
//! container running, in ms), so the polling interval adds nothing to it.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};

/// Name of the benchmark's Deployment (and its spec file).
const NAME: &str = "peer-bench";
/// How often the socket is polled until all replicas run. The time itself comes from the
/// agent's events, so polling only decides when to look (and costs the agent some work).
pub const POLL: Duration = Duration::from_millis(10);
/// Longest wait for the replicas to start or to go away.
const DEADLINE: Duration = Duration::from_secs(120);

/// The agent under test.
#[derive(Debug, Clone)]
pub struct Agent {
    pub socket: PathBuf,
    pub specs: PathBuf,
    /// A folder on the same file system as `specs`, for the atomic rename.
    pub staging: PathBuf,
    pub image: String,
    pub cpu_millis: u64,
    pub memory_mib: u64,
}

impl Agent {
    fn workload(&self) -> String {
        format!("Deployment/default/{NAME}")
    }

    fn spec(&self, replicas: usize) -> String {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {NAME}, labels: {{app: {NAME}}}}}\n\
             spec:\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: {NAME}}}}}\n  template:\n    \
             metadata: {{labels: {{app: {NAME}}}}}\n    spec:\n      terminationGracePeriodSeconds: 1\n      \
             containers:\n        - name: demo\n          image: {image}\n          resources:\n            \
             requests: {{cpu: 10m, memory: {req_mem}Mi}}\n            \
             limits: {{cpu: {cpu}m, memory: {mem}Mi}}\n",
            image = self.image,
            cpu = self.cpu_millis,
            mem = self.memory_mib,
            // Small requests, so that placement (requests against the node's capacity, as
            // Kubernetes does) admits every replica of the largest N on a 2-core machine.
            req_mem = self.memory_mib.min(16),
        )
    }

    fn spec_path(&self) -> PathBuf {
        self.specs.join(format!("{NAME}.yaml"))
    }

    /// (running, total) pods of the benchmark's Deployment.
    pub fn count_pods(&self) -> anyhow::Result<(usize, usize)> {
        let pods = get_pods(&self.socket)?;
        let workload = self.workload();
        let ours: Vec<_> =
            pods.iter().filter(|p| p.get("workload").and_then(|w| w.as_str()) == Some(&workload)).collect();
        let running =
            ours.iter().filter(|p| p.get("status").and_then(|s| s.as_str()) == Some("Running")).count();
        Ok((running, ours.len()))
    }

    /// Drops a spec of `replicas` into the folder and returns the time until all run:
    /// from just before the rename to the newest `Started` event of the Deployment's
    /// pods that the agent recorded (wall clock, ms: early by less than 1 ms).
    pub fn spec_to_running(&self, replicas: usize) -> anyhow::Result<Duration> {
        let staged = self.staging.join(format!("{NAME}.yaml"));
        fs::write(&staged, self.spec(replicas)).with_context(|| format!("writing {}", staged.display()))?;
        let target = self.spec_path();
        let wall = SystemTime::now();
        let start = Instant::now();
        fs::rename(&staged, &target).with_context(|| format!("renaming into {}", target.display()))?;
        let polled = self
            .wait_until(start, |running, _| running == replicas)
            .with_context(|| format!("waiting for {replicas} replicas to run"))?;
        let start_ms = wall.duration_since(UNIX_EPOCH).context("clock before 1970")?.as_secs_f64() * 1e3;
        let last = last_started_ms(&self.socket, start_ms)?;
        let Some(last) = last.filter(|&l| l >= start_ms.floor()) else {
            bail!("no Started event after the spec landed (all {replicas} ran after {polled:?})");
        };
        Ok(Duration::from_secs_f64(((last - start_ms).max(0.0)) / 1e3))
    }

    /// Removes the spec file and waits until the Deployment has no pod left.
    pub fn remove_and_drain(&self) -> anyhow::Result<Duration> {
        let target = self.spec_path();
        let start = Instant::now();
        match fs::remove_file(&target) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", target.display())),
        }
        self.wait_until(start, |_, total| total == 0).context("waiting for the pods to go away")
    }

    fn wait_until(&self, start: Instant, done: impl Fn(usize, usize) -> bool) -> anyhow::Result<Duration> {
        let mut next = start;
        loop {
            let (running, total) = self.count_pods()?;
            if done(running, total) {
                return Ok(start.elapsed());
            }
            if start.elapsed() > DEADLINE {
                bail!("gave up after {DEADLINE:?} with {running} of {total} pods running");
            }
            next += POLL;
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
    }
}

/// `get_pods` over the agent's socket: one JSON line out, one back.
pub fn get_pods(socket: &Path) -> anyhow::Result<Vec<serde_json::Value>> {
    match call(socket, "{\"op\":\"get_pods\"}")? {
        serde_json::Value::Array(pods) => Ok(pods),
        other => bail!("get_pods answer has no pod list: {other}"),
    }
}

/// The newest `Started` event of the benchmark's pods seen at or after `after_ms`, in
/// ms since the epoch (the agent's wall clock, which is this machine's).
fn last_started_ms(socket: &Path, after_ms: f64) -> anyhow::Result<Option<f64>> {
    let data = call(socket, "{\"op\":\"get_events\",\"after\":{}}")?;
    let prefix = format!("pod/{NAME}-");
    let events = data.get("events").and_then(|e| e.as_array()).context("get_events answer has no events")?;
    Ok(events
        .iter()
        .filter(|e| e.get("reason").and_then(|r| r.as_str()) == Some("Started"))
        .filter(|e| e.get("object").and_then(|o| o.as_str()).is_some_and(|o| o.starts_with(&prefix)))
        .filter_map(|e| e.get("last_ms").and_then(serde_json::Value::as_f64))
        .filter(|&ms| ms >= after_ms.floor())
        .reduce(f64::max))
}

/// One request line to the agent's socket; the answer's `data`.
fn call(socket: &Path, request: &str) -> anyhow::Result<serde_json::Value> {
    let mut stream =
        UnixStream::connect(socket).with_context(|| format!("connecting to {}", socket.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).context("setting a socket timeout")?;
    stream.write_all(format!("{request}\n").as_bytes()).with_context(|| format!("sending {request}"))?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .with_context(|| format!("reading the answer to {request}"))?;
    let mut answer: serde_json::Value =
        serde_json::from_str(&line).with_context(|| format!("bad answer {line:?}"))?;
    if answer.get("status").and_then(|s| s.as_str()) != Some("ok") {
        bail!("agent refused {request}: {line}");
    }
    Ok(answer.get_mut("data").map(serde_json::Value::take).unwrap_or_default())
}
