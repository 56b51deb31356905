//! The orchestrator: interleaves, for each N and run, peer's spec-to-running with the
//! reference batches (raw libcontainer sequential and in parallel workers, `crun run -d`
//! sequential), samples the agent's memory, and collects everything into a [`Report`].

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::machine::Machine;
use crate::peer::Agent;
use crate::procfs;
use crate::refs::{ms, BatchResult, Engine};

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The agent's API socket.
    #[arg(long)]
    pub socket: PathBuf,
    /// The agent's spec folder (`peer up --specs`).
    #[arg(long)]
    pub specs: PathBuf,
    /// A folder on the same file system as `--specs`, where spec files are written
    /// before they are renamed into place.
    #[arg(long)]
    pub staging: PathBuf,
    /// Pid of `peer up`.
    #[arg(long)]
    pub agent_pid: i32,
    /// Extracted demo image layer, used as the rootfs of the reference containers.
    #[arg(long)]
    pub rootfs: PathBuf,
    /// Scratch folder for the reference bundles and runtime state.
    #[arg(long)]
    pub work: PathBuf,
    #[arg(long, value_delimiter = ',', default_value = "1,20,50")]
    pub counts: Vec<usize>,
    #[arg(long, default_value_t = 7)]
    pub runs: usize,
    #[arg(long, default_value = "peer-demo:latest")]
    pub image: String,
    #[arg(long, default_value_t = 100)]
    pub cpu_millis: u64,
    #[arg(long, default_value_t = 32)]
    pub memory_mib: u64,
    /// Parent cgroup of the reference containers; removed at the end.
    #[arg(long, default_value = "peer-bench-ref")]
    pub ref_cgroup_parent: String,
    #[arg(long, default_value = "crun")]
    pub crun: PathBuf,
    /// Parallel workers of the second libcontainer reference (peer creates concurrently).
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Keep the agent running (not SIGSTOPped) during the reference batches.
    #[arg(long)]
    pub no_pause_agent: bool,
    /// Time peer only, without the reference batches (for profiling peer's path).
    #[arg(long)]
    pub peer_only: bool,
    /// Where to write all raw measurements as JSON.
    #[arg(long)]
    pub json_out: Option<PathBuf>,
    /// Shown in the report: which peer was measured (e.g. a git commit).
    #[arg(long, default_value = "unknown")]
    pub peer_version: String,
}

/// One measured run of one system.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    pub n: usize,
    pub system: System,
    pub run: usize,
    /// Wall time for all N containers.
    pub wall_ms: f64,
    /// Per-container create+start times (references only).
    pub per_ms: Vec<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum System {
    Peer,
    LibcontainerSeq,
    LibcontainerPar,
    CrunSeq,
}

/// Memory of the agent with the largest N running.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Loaded {
    pub n: usize,
    pub agent_rss_kib: u64,
    pub children: BTreeMap<String, usize>,
    pub children_rss_kib: u64,
    /// `peer __runtime-helper` processes alive anywhere (a per-container shim would show here).
    pub helpers: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub machine: Machine,
    pub peer_version: String,
    pub runs: usize,
    pub workers: usize,
    pub paused_agent: bool,
    pub samples: Vec<Sample>,
    pub idle_before_kib: u64,
    pub idle_after_kib: u64,
    pub loaded: Vec<Loaded>,
    pub poll_ms: f64,
    /// `/proc/loadavg` when the runs ended: other work on the machine skews the numbers.
    pub loadavg_end: String,
}

pub fn run(args: &RunArgs) -> anyhow::Result<Report> {
    let machine = Machine::collect(&args.crun);
    let agent = Agent {
        socket: args.socket.clone(),
        specs: args.specs.clone(),
        staging: args.staging.clone(),
        image: args.image.clone(),
        cpu_millis: args.cpu_millis,
        memory_mib: args.memory_mib,
    };
    fs::create_dir_all(&args.staging).with_context(|| format!("creating {}", args.staging.display()))?;
    agent.remove_and_drain().context("clearing pods of an earlier benchmark")?;
    let idle_before_kib = agent_rss(args.agent_pid)?;
    let max_n = args.counts.iter().copied().max().unwrap_or(0);
    let mut samples = Vec::new();
    let mut loaded = Vec::new();
    let result = (|| -> anyhow::Result<()> {
        for &n in &args.counts {
            for run in 0..args.runs {
                let wall = agent.spec_to_running(n).with_context(|| format!("peer, N={n}, run {run}"))?;
                eprintln!("peer-bench: N={n} run {run}: peer {:.0} ms", ms(wall));
                samples.push(Sample { n, system: System::Peer, run, wall_ms: ms(wall), per_ms: Vec::new() });
                if n == max_n {
                    // Let the agent settle (log files, watchers) before sampling it.
                    std::thread::sleep(Duration::from_secs(1));
                    let children = procfs::children(args.agent_pid);
                    loaded.push(Loaded {
                        n,
                        agent_rss_kib: agent_rss(args.agent_pid)?,
                        children_rss_kib: children.iter().filter_map(|(p, _)| procfs::rss_kib(*p)).sum(),
                        children: procfs::children_by_name(args.agent_pid),
                        helpers: procfs::count_cmdline("__runtime-helper"),
                    });
                }
                agent.remove_and_drain().with_context(|| format!("removing the pods, N={n}, run {run}"))?;
                if args.peer_only {
                    continue;
                }

                let _paused = (!args.no_pause_agent).then(|| Paused::new(args.agent_pid)).transpose()?;
                let mut batch = |engine, workers, system| -> anyhow::Result<()> {
                    let (wall_ms, per_ms) = batches(args, engine, n, run, workers)?;
                    eprintln!("peer-bench: N={n} run {run}: {system:?} {wall_ms:.0} ms");
                    samples.push(Sample { n, system, run, wall_ms, per_ms });
                    Ok(())
                };
                batch(Engine::Libcontainer, 1, System::LibcontainerSeq)?;
                if n >= args.workers && args.workers > 1 {
                    batch(Engine::Libcontainer, args.workers, System::LibcontainerPar)?;
                }
                batch(Engine::Crun, 1, System::CrunSeq)?;
            }
        }
        Ok(())
    })();
    let drained = agent.remove_and_drain();
    remove_cgroup_parent(&args.ref_cgroup_parent);
    result?;
    drained?;
    std::thread::sleep(Duration::from_secs(2));
    let idle_after_kib = agent_rss(args.agent_pid)?;
    Ok(Report {
        machine,
        peer_version: args.peer_version.clone(),
        runs: args.runs,
        workers: args.workers,
        paused_agent: !args.no_pause_agent,
        samples,
        idle_before_kib,
        idle_after_kib,
        loaded,
        poll_ms: ms(crate::peer::POLL),
        loadavg_end: Machine::collect(&args.crun).loadavg,
    })
}

fn agent_rss(pid: i32) -> anyhow::Result<u64> {
    procfs::rss_kib(pid).with_context(|| format!("reading VmRSS of the agent (pid {pid}); is it running?"))
}

/// SIGSTOPs the agent so that its idle work cannot slow the references; SIGCONT on drop.
struct Paused(i32);

impl Paused {
    fn new(pid: i32) -> anyhow::Result<Paused> {
        kill(Pid::from_raw(pid), Signal::SIGSTOP)
            .with_context(|| format!("stopping the agent (pid {pid})"))?;
        Ok(Paused(pid))
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        if let Err(e) = kill(Pid::from_raw(self.0), Signal::SIGCONT) {
            eprintln!("peer-bench: cannot resume the agent (pid {}): {e}", self.0);
        }
    }
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Worker {
    fn line(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        self.stdout.read_line(&mut line).context("reading from a batch")?;
        if line.is_empty() {
            bail!("a batch exited early (see its error above)");
        }
        Ok(line.trim_end().to_owned())
    }

    fn send(&mut self, line: &str) -> anyhow::Result<()> {
        writeln!(self.stdin, "{line}").and_then(|()| self.stdin.flush()).context("writing to a batch")
    }
}

/// Runs `n` creates split over `workers` batch children released at the same instant;
/// returns the wall time until the last one finished and all per-container times.
fn batches(
    args: &RunArgs,
    engine: Engine,
    n: usize,
    run: usize,
    workers: usize,
) -> anyhow::Result<(f64, Vec<f64>)> {
    let exe = std::env::current_exe().context("finding this executable")?;
    let tag = match engine {
        Engine::Libcontainer => "lc",
        Engine::Crun => "crun",
    };
    let mut children = Vec::with_capacity(workers);
    for w in 0..workers {
        let count = n / workers + usize::from(w < n % workers);
        let prefix = format!("{tag}-n{n}-r{run}-w{w}");
        let mut child = Command::new(&exe)
            .arg("batch")
            .args(["--engine", tag_engine(engine)])
            .arg("--work")
            .arg(args.work.join(&prefix))
            .arg("--rootfs")
            .arg(&args.rootfs)
            .args(["--prefix", &prefix, "--count", &count.to_string()])
            .args(["--cgroup-parent", &args.ref_cgroup_parent])
            .args([
                "--cpu-millis",
                &args.cpu_millis.to_string(),
                "--memory-mib",
                &args.memory_mib.to_string(),
            ])
            .arg("--crun")
            .arg(&args.crun)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting a batch")?;
        let stdin = child.stdin.take().context("batch stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("batch stdout")?);
        children.push(Worker { child, stdin, stdout });
    }
    let measured = (|| -> anyhow::Result<(f64, Vec<f64>)> {
        for w in &mut children {
            let line = w.line()?;
            if line != "ready" {
                bail!("batch said {line:?} instead of ready");
            }
        }
        let start = Instant::now();
        for w in &mut children {
            w.send("go")?;
        }
        let mut per = Vec::new();
        for w in &mut children {
            let result: BatchResult = serde_json::from_str(&w.line()?).context("decoding a batch result")?;
            if result.running != result.per_ms.len() {
                bail!("only {} of {} {tag} containers were running", result.running, result.per_ms.len());
            }
            per.extend(result.per_ms);
        }
        Ok((ms(start.elapsed()), per))
    })();
    let mut failed = false;
    for mut w in children {
        let _ = w.send("cleanup");
        drop(w.stdin);
        failed |= !w.child.wait().is_ok_and(|s| s.success());
    }
    let measured = measured?;
    if failed {
        bail!("a {tag} batch failed to clean up");
    }
    Ok(measured)
}

fn tag_engine(engine: Engine) -> &'static str {
    match engine {
        Engine::Libcontainer => "libcontainer",
        Engine::Crun => "crun",
    }
}

/// Removes `/<parent>` (and anything left below it) from every cgroup hierarchy.
pub fn remove_cgroup_parent(parent: &str) {
    let root = Path::new("/sys/fs/cgroup");
    let mut hierarchies = vec![root.to_path_buf()];
    if let Ok(dir) = fs::read_dir(root) {
        hierarchies.extend(dir.flatten().map(|e| e.path()).filter(|p| p.is_dir() && !p.is_symlink()));
    }
    for h in hierarchies {
        remove_tree(&h.join(parent));
    }
}

/// cgroup directories are removed with rmdir, deepest first.
fn remove_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
        let _ = fs::remove_dir(dir);
    }
}
