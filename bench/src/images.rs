//! Image distribution: the time until one image runs on every node of a fleet of real
//! agents, and the bytes the registry sent, with blobs from the registry only against
//! peers first. The registry (Debian's `docker-registry`, started by `scripts/bench-images`)
//! sits behind a throttling proxy run here, which stands in for a thin uplink shared by the
//! fleet and counts every byte the registry sends.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::cluster::{median_max, request, rows_of, specs_dir, ClusterArgs, Fleet};

#[derive(Debug, Args)]
pub struct ImagesArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// The registry's `host:port` (loopback).
    #[arg(long)]
    pub registry: SocketAddr,
    /// The image in that registry, `repo:tag`.
    #[arg(long)]
    pub repo: String,
    /// The uplink's rate in KB/s, shared by all connections to the registry (0: no limit).
    #[arg(long, default_value_t = 2000)]
    pub rate_kbps: u64,
    /// Runs per mode.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
}

/// One mode's samples.
struct Samples {
    mode: &'static str,
    secs: Vec<f64>,
    registry_mb: Vec<f64>,
}

pub fn main(args: &ImagesArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let sent = Arc::new(AtomicU64::new(0));
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).context("binding the proxy")?;
    let proxy = listener.local_addr()?;
    let bucket = Arc::new(Mutex::new(Instant::now()));
    rt.spawn(serve(listener, args.registry, args.rate_kbps * 1000, bucket, sent.clone()));
    let reference = format!("{proxy}/{}", args.repo);
    let mut samples = vec![
        Samples { mode: "registry-only", secs: Vec::new(), registry_mb: Vec::new() },
        Samples { mode: "peers-first", secs: Vec::new(), registry_mb: Vec::new() },
    ];
    for run in 0..args.runs {
        for s in &mut samples {
            let _ = std::fs::remove_dir_all(&args.cluster.work);
            std::fs::create_dir_all(&args.cluster.work).context("creating the work folder")?;
            let fleet = Fleet::start(&args.cluster, &["--image-distribution", s.mode])?;
            let before = sent.load(Ordering::Relaxed);
            let spec = specs_dir(&fleet.agents[0]).join("agents.yaml");
            let tmp = spec.with_extension("tmp");
            std::fs::write(&tmp, daemonset(&reference)).context("writing the spec")?;
            let start = Instant::now();
            std::fs::rename(&tmp, &spec).context("placing the spec")?;
            let n = fleet.agents.len();
            fleet.wait_exactly(n, None, Duration::from_secs(900))?;
            let secs = start.elapsed().as_secs_f64();
            let mb = sent.load(Ordering::Relaxed).saturating_sub(before) as f64 / 1e6;
            eprintln!(
                "run {run} {}: {n} nodes running after {secs:.2} s, {mb:.1} MB from the registry",
                s.mode
            );
            s.secs.push(secs);
            s.registry_mb.push(mb);
            std::fs::remove_file(&spec).context("removing the spec")?;
            // Containers outlive their agent: the next run starts only once they are gone.
            wait_no_pods(&fleet, Duration::from_secs(60))?;
            drop(fleet);
        }
    }
    println!("| blobs from ({} nodes, uplink {} KB/s) | all running, median | runs (s) | MB from the registry, median | runs (MB) |", args.cluster.nodes, args.rate_kbps);
    println!("|---|---|---|---|---|");
    for s in &samples {
        let (secs, _) = median_max(&s.secs).unwrap_or_default();
        let (mb, _) = median_max(&s.registry_mb).unwrap_or_default();
        let list = |v: &[f64], p: usize| v.iter().map(|x| format!("{x:.p$}")).collect::<Vec<_>>().join(" ");
        println!(
            "| {} | **{secs:.1} s** | {} | **{mb:.1}** | {} |",
            s.mode,
            list(&s.secs, 1),
            list(&s.registry_mb, 1)
        );
    }
    Ok(())
}

/// Waits until no agent of the fleet holds a pod of its own, in any state.
fn wait_no_pods(fleet: &Fleet, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let left: usize = fleet
            .agents
            .iter()
            .map(|a| {
                let rows = request(&a.socket(), "get_pods").map(|v| rows_of(&v)).unwrap_or_default();
                rows.iter().filter(|r| r.get("local") == Some(&serde_json::Value::Bool(true))).count()
            })
            .sum();
        if left == 0 {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "{left} pods still there after {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One pod of `image` (the demo server) on every node.
fn daemonset(image: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {{name: agents}}\nspec:\n  selector: {{matchLabels: {{app: agents}}}}\n  \
         template:\n    metadata: {{labels: {{app: agents}}}}\n    spec:\n      terminationGracePeriodSeconds: 1\n      \
         containers:\n        - name: main\n          image: {image}\n          args: [serve]\n          \
         resources:\n            limits: {{cpu: \"100m\", memory: \"32Mi\"}}\n"
    )
}

/// Accepts connections and relays each to the registry.
async fn serve(
    listener: TcpListener,
    upstream: SocketAddr,
    rate: u64,
    bucket: Arc<Mutex<Instant>>,
    sent: Arc<AtomicU64>,
) {
    while let Ok((client, _)) = listener.accept().await {
        let (bucket, sent) = (bucket.clone(), sent.clone());
        tokio::spawn(async move {
            if let Ok(registry) = TcpStream::connect(upstream).await {
                relay(client, registry, rate, bucket, sent).await;
            }
        });
    }
}

/// Client → registry as it comes; registry → client through the shared rate limit, counted.
async fn relay(
    client: TcpStream,
    registry: TcpStream,
    rate: u64,
    bucket: Arc<Mutex<Instant>>,
    sent: Arc<AtomicU64>,
) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut registry_read, mut registry_write) = registry.into_split();
    let up = async {
        let _ = tokio::io::copy(&mut client_read, &mut registry_write).await;
        let _ = registry_write.shutdown().await;
    };
    let down = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match registry_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if rate > 0 {
                // The uplink is free again at `next`; this chunk takes n / rate after that.
                let at = {
                    let mut next = bucket.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    let start = (*next).max(Instant::now());
                    *next = start + Duration::from_secs_f64(n as f64 / rate as f64);
                    *next
                };
                tokio::time::sleep_until(at.into()).await;
            }
            sent.fetch_add(n as u64, Ordering::Relaxed);
            if client_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = client_write.shutdown().await;
    };
    tokio::join!(up, down);
}
