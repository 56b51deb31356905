//! The peer side: drop a Deployment into the agent's spec folder by atomic rename and
//! time until all its replicas are Running, polling the agent's socket.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Name of the benchmark's Deployment (and its spec file).
const NAME: &str = "peer-bench";
/// How often the socket is polled; the measured time is late by at most this much.
pub const POLL: Duration = Duration::from_millis(5);
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

    /// Drops a spec of `replicas` into the folder and returns the time until all run.
    /// The clock starts just before the rename.
    pub fn spec_to_running(&self, replicas: usize) -> anyhow::Result<Duration> {
        let staged = self.staging.join(format!("{NAME}.yaml"));
        fs::write(&staged, self.spec(replicas)).with_context(|| format!("writing {}", staged.display()))?;
        let target = self.spec_path();
        let start = Instant::now();
        fs::rename(&staged, &target).with_context(|| format!("renaming into {}", target.display()))?;
        self.wait_until(start, |running, _| running == replicas)
            .with_context(|| format!("waiting for {replicas} replicas to run"))
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
    let mut stream =
        UnixStream::connect(socket).with_context(|| format!("connecting to {}", socket.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).context("setting a socket timeout")?;
    stream.write_all(b"{\"op\":\"get_pods\"}\n").context("sending get_pods")?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).context("reading the answer to get_pods")?;
    let answer: serde_json::Value =
        serde_json::from_str(&line).with_context(|| format!("bad answer {line:?}"))?;
    if answer.get("status").and_then(|s| s.as_str()) != Some("ok") {
        bail!("agent refused get_pods: {line}");
    }
    match answer.get("data") {
        Some(serde_json::Value::Array(pods)) => Ok(pods.clone()),
        _ => bail!("get_pods answer has no pod list: {line}"),
    }
}
