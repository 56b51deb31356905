//! A network lab for the pod networking tests: throw-away network namespaces (test
//! "hosts", pods, an "internet"), `ip` commands and TCP servers and clients inside them.
//! Nothing here touches the namespace the test process runs in.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};
use runtime::{Runtime, RuntimeConfig};

pub const HELPER: &str = env!("CARGO_BIN_EXE_runtime-helper");

/// A runtime (for its persistent namespaces) in a directory of its own.
pub struct Lab {
    pub base: PathBuf,
    pub runtime: Runtime,
}

/// `None` (after printing why) when not root and root tests are not required.
pub fn lab(name: &str) -> Option<Lab> {
    if !nix::unistd::geteuid().is_root() {
        if std::env::var("PEER_REQUIRE_ROOT_TESTS").as_deref() == Ok("1") {
            panic!("{name}: needs root, and PEER_REQUIRE_ROOT_TESTS=1 is set");
        }
        eprintln!("skipping {name}: needs root (set PEER_REQUIRE_ROOT_TESTS=1 to make this a failure)");
        return None;
    }
    let base = std::env::temp_dir().join(format!("peer-net-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&base);
    let runtime = Runtime::new(RuntimeConfig {
        root: base.join("root"),
        helper_exe: PathBuf::from(HELPER),
        helper_args: Vec::new(),
        cgroup_parent: format!("peer-net-test-{}", std::process::id()),
    })
    .expect("runtime");
    Some(Lab { base, runtime })
}

impl Lab {
    /// A new network namespace with `lo` up.
    pub async fn ns(&self, name: &str) -> PathBuf {
        self.runtime.ensure_pod_netns(name).await.expect("create network namespace")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in fs::read_dir(self.base.join("root/netns")).into_iter().flatten().flatten() {
            let _ = nix::mount::umount2(&ns.path(), nix::mount::MntFlags::MNT_DETACH);
        }
        // The folder itself is a mount of its own (see `Runtime::new`).
        let _ = nix::mount::umount2(&self.base.join("root/netns"), nix::mount::MntFlags::MNT_DETACH);
        let _ = fs::remove_dir_all(&self.base);
    }
}

/// Runs `f` on a thread inside the namespace at `ns`.
pub fn in_ns<T: Send + 'static>(ns: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        enter(&ns);
        f()
    })
    .join()
    .expect("namespace thread")
}

fn enter(ns: &Path) {
    let file = fs::File::open(ns).expect("open namespace");
    setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
}

/// Runs `ip args` inside `ns`; panics with its stderr on failure.
pub fn ip(ns: &Path, args: &str) -> String {
    let args: Vec<String> = args.split_whitespace().map(str::to_owned).collect();
    in_ns(ns, move || {
        let out = Command::new("ip").args(&args).output().expect("run ip");
        assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
}

/// Names of the links in `ns`.
pub fn links(ns: &Path) -> Vec<String> {
    ip(ns, "-o link show")
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .collect()
}

/// Waits until `cond` holds, at most 10 s.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A TCP server inside a namespace: answers each connection with `name` and the
/// client's address on one line, then echoes lines until the client closes.
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    pub fn start(ns: &Path, addr: Ipv4Addr, port: u16, name: &str) -> Server {
        let (ns, name) = (ns.to_owned(), name.to_owned());
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            enter(&ns);
            let listener = TcpListener::bind(SocketAddrV4::new(addr, port)).expect("bind test server");
            listener.set_nonblocking(true).expect("non-blocking listener");
            ready_tx.send(()).expect("signal ready");
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, peer)) => {
                        let name = name.clone();
                        std::thread::spawn(move || serve(stream, &name, peer));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        ready_rx.recv().expect("server started");
        Server { stop, thread: Some(thread) }
    }
}

fn serve(mut stream: TcpStream, name: &str, peer: SocketAddr) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(20)));
    if writeln!(stream, "{name} {}", peer.ip()).is_err() {
        return;
    }
    let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
        if stream.write_all(line.as_bytes()).is_err() {
            return;
        }
        line.clear();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Connects from inside `ns` (a 2 s timeout) and returns the server's first line.
pub fn ask(ns: &Path, addr: Ipv4Addr, port: u16) -> std::io::Result<String> {
    let stream = open(ns, addr, port)?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(line.trim().to_owned())
}

/// Connects from inside `ns`; the socket stays in that namespace.
pub fn open(ns: &Path, addr: Ipv4Addr, port: u16) -> std::io::Result<TcpStream> {
    let target = SocketAddr::V4(SocketAddrV4::new(addr, port));
    in_ns(ns, move || {
        let stream = TcpStream::connect_timeout(&target, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(stream)
    })
}

/// Sends a line on an open connection and reads the echo.
pub fn echo(stream: &mut TcpStream, text: &str) -> std::io::Result<String> {
    writeln!(stream, "{text}")?;
    let mut buf = vec![0u8; text.len() + 1];
    stream.read_exact(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).trim().to_owned())
}
