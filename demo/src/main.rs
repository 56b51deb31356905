//! peer-demo: the program inside peer's example image — a tiny HTTP server plus the
//! few tools the tests and users need inside a container that has no shell.
//!
//! It uses only the standard library (and libc for signals), so it links statically
//! and the image is one file.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static TERMINATING: AtomicBool = AtomicBool::new(false);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rest: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
    let result = match args.first().map(String::as_str) {
        Some("serve") | None => serve(),
        Some("get") => get(&rest),
        Some("hammer") => hammer(&rest),
        Some("resolve") => resolve(&rest),
        Some("cat") => cat(&rest),
        Some("write") => write(&rest),
        Some("mkdir") => rest.iter().try_for_each(|d| std::fs::create_dir_all(d).map_err(|e| format!("{d}: {e}"))),
        Some("rm") => rest.iter().try_for_each(|f| std::fs::remove_file(f).map_err(|e| format!("{f}: {e}"))),
        Some("alloc") => alloc(&rest),
        Some("sleep") => sleep(&rest),
        Some("burn") => burn(&rest),
        Some("echo") => {
            println!("{}", rest.join(" "));
            Ok(())
        }
        Some("mount-cgroup") => mount_cgroup(),
        Some("exit") => return ExitCode::from(rest.first().and_then(|c| c.parse().ok()).unwrap_or(1)),
        Some(other) => Err(format!(
            "unknown command {other:?}; expected serve, get URL, hammer URL COUNT INTERVAL_MS, resolve NAME, cat FILE, write FILE TEXT, mkdir DIR, rm FILE, alloc MIB, sleep SECS, burn [MILLICORES [IDLE_FILE]], echo ..., mount-cgroup, exit CODE"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peer-demo: {e}");
            ExitCode::FAILURE
        }
    }
}

extern "C" fn on_term(_: libc::c_int) {
    TERMINATING.store(true, Ordering::SeqCst);
}

/// Serves HTTP/1.1 on $PORT (default 8080) until SIGTERM, after sleeping
/// $START_DELAY_SECS (default 0) first, like a server with a slow start.
///
/// As PID 1 of its pid namespace the process ignores signals it has no handler for,
/// so it installs one for SIGTERM and SIGINT that exits 0. It waits for connections in a
/// blocking `accept`, as a real server does: an idle replica takes no CPU.
fn serve() -> Result<(), String> {
    exit_on_term();
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
    let delay = std::env::var("START_DELAY_SECS").ok().and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    let ready_at = Instant::now() + Duration::from_secs(delay);
    while Instant::now() < ready_at && !TERMINATING.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(20));
    }
    if TERMINATING.load(Ordering::SeqCst) {
        return terminated();
    }
    let listener =
        TcpListener::bind(format!("0.0.0.0:{port}")).map_err(|e| format!("bind port {port}: {e}"))?;
    println!("peer-demo listening on :{port}");
    // From here on a SIGTERM ends the process in its handler.
    // SAFETY: `exit_at_once` only calls async-signal-safe functions (write, _exit).
    unsafe {
        libc::signal(libc::SIGTERM, exit_at_once as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, exit_at_once as *const () as libc::sighandler_t);
    }
    if TERMINATING.load(Ordering::SeqCst) {
        return terminated();
    }
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                std::thread::spawn(move || {
                    let _ = handle(stream);
                });
            }
            Err(e) => eprintln!("accept: {e}"),
        }
    }
    Ok(())
}

const TERMINATING_LINE: &str = "peer-demo: terminating\n";

fn terminated() -> Result<(), String> {
    print!("{TERMINATING_LINE}");
    Ok(())
}

/// The SIGTERM handler while serving: says so and exits 0 (a blocking `accept` would not
/// look at a flag).
extern "C" fn exit_at_once(_: libc::c_int) {
    // SAFETY: write and _exit are async-signal-safe; the buffer is a static string.
    unsafe {
        libc::write(libc::STDOUT_FILENO, TERMINATING_LINE.as_ptr().cast(), TERMINATING_LINE.len());
        libc::_exit(0);
    }
}

/// Installs the SIGTERM and SIGINT handlers that set [`TERMINATING`].
fn exit_on_term() {
    // SAFETY: `on_term` is async-signal-safe (one atomic store) and the handler
    // pointer stays valid for the life of the process.
    unsafe {
        libc::signal(libc::SIGTERM, on_term as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_term as *const () as libc::sighandler_t);
    }
}

/// `burn [MILLICORES [IDLE_FILE]]`: uses about MILLICORES of CPU (default 1000, one
/// core) until SIGTERM: each of `ceil(MILLICORES / 1000)` threads spins its share of every
/// 100 ms, except while IDLE_FILE exists. A steady load for `peer top` and autoscaling
/// tests, that a test turns off by writing the file.
fn burn(args: &[&str]) -> Result<(), String> {
    let millis: u64 = match args.first() {
        Some(m) => {
            m.parse().map_err(|_| format!("bad MILLICORES {m:?}; usage: burn [MILLICORES [IDLE_FILE]]"))?
        }
        None => 1000,
    };
    let idle_file: Option<std::path::PathBuf> = args.get(1).map(Into::into);
    exit_on_term();
    let threads = millis.div_ceil(1000).max(1);
    let busy = Duration::from_micros(millis * 100 / threads);
    let period = Duration::from_millis(100);
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let idle_file = idle_file.clone();
            std::thread::spawn(move || {
                let mut x: u64 = 1;
                while !TERMINATING.load(Ordering::SeqCst) {
                    let start = Instant::now();
                    let idle = idle_file.as_ref().is_some_and(|f| f.exists());
                    while !idle && start.elapsed() < busy {
                        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                    }
                    if let Some(rest) = period.checked_sub(start.elapsed()) {
                        std::thread::sleep(rest);
                    }
                }
                x
            })
        })
        .collect();
    println!("burning {millis}m on {threads} thread(s)");
    for w in workers {
        let _ = w.join();
    }
    Ok(())
}

fn handle(stream: TcpStream) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut keep_alive = true;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header)? == 0 || header == "\r\n" || header == "\n" {
                break;
            }
            if header.to_ascii_lowercase().starts_with("connection: close") {
                keep_alive = false;
            }
        }
        let target = request_line.split_whitespace().nth(1).unwrap_or("/").to_string();
        let (status, body) = route(&target);
        let conn = if keep_alive { "keep-alive" } else { "close" };
        // One write per answer: `write!` on a socket is a write per piece, and small
        // pieces meet Nagle's algorithm and the client's delayed ACK (40 ms each).
        let answer = format!(
            "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: {conn}\r\n\r\n{body}",
            body.len()
        );
        out.write_all(answer.as_bytes())?;
        out.flush()?;
        if !keep_alive {
            return Ok(());
        }
    }
}

fn query(target: &str, key: &str) -> Option<u64> {
    let q = target.split_once('?')?.1;
    q.split('&').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

fn route(target: &str) -> (&'static str, String) {
    let path = target.split('?').next().unwrap_or("/");
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    match path {
        "/" => ("200 OK", format!("hello from {} (pid {})\n", host.trim(), std::process::id())),
        "/healthz" if std::path::Path::new("/tmp/unhealthy").exists() => {
            ("500 Internal Server Error", "unhealthy\n".into())
        }
        "/healthz" => ("200 OK", "ok\n".into()),
        "/ready" if std::path::Path::new("/tmp/notready").exists() => {
            ("503 Service Unavailable", "not ready\n".into())
        }
        "/ready" => ("200 OK", "ready\n".into()),
        "/burn" => {
            let ms = query(target, "ms").unwrap_or(100);
            let end = Instant::now() + Duration::from_millis(ms);
            let mut x: u64 = 1;
            while Instant::now() < end {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            }
            ("200 OK", format!("burned {ms} ms ({x})\n"))
        }
        "/alloc" => {
            let mib = query(target, "mib").unwrap_or(1);
            let kept = touch(mib);
            ("200 OK", format!("allocated {} MiB\n", kept.len() >> 20))
        }
        "/exit" => std::process::exit(query(target, "code").unwrap_or(1) as i32),
        _ => ("404 Not Found", "not found\n".into()),
    }
}

/// Allocates `mib` MiB and writes every page so the memory is really charged.
fn touch(mib: u64) -> Vec<u8> {
    let mut v = vec![0u8; (mib as usize) << 20];
    for i in (0..v.len()).step_by(4096) {
        v[i] = 1;
    }
    v
}

fn get(args: &[&str]) -> Result<(), String> {
    let url = args.first().ok_or("usage: get http://HOST:PORT/PATH")?;
    let body = fetch(url, Duration::from_secs(10))?;
    print!("{body}");
    Ok(())
}

/// One `GET url`; the body of a 2xx answer, else why not.
fn fetch(url: &str, timeout: Duration) -> Result<String, String> {
    let rest = url.strip_prefix("http://").ok_or("only http:// URLs are supported")?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let hostport = if hostport.contains(':') { hostport.to_string() } else { format!("{hostport}:80") };
    let (host, port) = hostport.rsplit_once(':').ok_or("bad host:port")?;
    let port: u16 = port.parse().map_err(|_| format!("bad port in {hostport}"))?;
    let ip = lookup(host)?.into_iter().next().ok_or_else(|| format!("resolve {host}: no address"))?;
    let addr = std::net::SocketAddr::from((ip, port));
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect {hostport}: {e}"))?;
    s.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.1\r\nhost: {hostport}\r\nconnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(|e| e.to_string())?;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let ok = head.split_whitespace().nth(1).is_some_and(|c| c.starts_with('2'));
    if ok {
        Ok(body.to_owned())
    } else {
        Err(head.lines().next().unwrap_or("no response").to_string())
    }
}

/// `hammer URL COUNT INTERVAL_MS`: COUNT requests, one line each: `MS ok BODY` or
/// `MS err WHY` (MS since the start), each with a 3 s timeout.
fn hammer(args: &[&str]) -> Result<(), String> {
    let [url, count, interval] = args else { return Err("usage: hammer URL COUNT INTERVAL_MS".into()) };
    let count: u64 = count.parse().map_err(|_| format!("bad COUNT {count:?}"))?;
    let interval: u64 = interval.parse().map_err(|_| format!("bad INTERVAL_MS {interval:?}"))?;
    let start = Instant::now();
    for i in 0..count {
        let due = start + Duration::from_millis(i * interval);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let t = start.elapsed().as_millis();
        match fetch(url, Duration::from_secs(3)) {
            Ok(body) => println!("{t} ok {}", body.lines().next().unwrap_or_default()),
            Err(e) => println!("{t} err {e}"),
        }
    }
    Ok(())
}

/// `resolve NAME`: the addresses NAME resolves to, one per line.
fn resolve(args: &[&str]) -> Result<(), String> {
    let name = args.first().ok_or("usage: resolve NAME")?;
    for ip in lookup(name)? {
        println!("{ip}");
    }
    Ok(())
}

/// The IPv4 addresses of `name`: an address literal as is, else A records from the
/// nameservers of /etc/resolv.conf, trying the search list as a libc resolver does
/// (ndots). The binary is static, and static glibc cannot load its name-service
/// modules, so it asks DNS itself.
fn lookup(name: &str) -> Result<Vec<std::net::Ipv4Addr>, String> {
    if let Ok(ip) = name.parse() {
        return Ok(vec![ip]);
    }
    let conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let mut servers = Vec::new();
    let mut search = Vec::new();
    let mut ndots = 1;
    for line in conf.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                servers.extend(words.next().and_then(|w| w.parse::<std::net::Ipv4Addr>().ok()))
            }
            Some("search") => search = words.map(str::to_owned).collect(),
            Some("options") => {
                for o in words {
                    if let Some(n) = o.strip_prefix("ndots:").and_then(|n| n.parse().ok()) {
                        ndots = n;
                    }
                }
            }
            _ => {}
        }
    }
    let name = name.trim_end_matches('.');
    let mut candidates: Vec<String> = Vec::new();
    let absolute = name.matches('.').count() >= ndots;
    if absolute {
        candidates.push(name.to_owned());
    }
    candidates.extend(search.iter().map(|s| format!("{name}.{s}")));
    if !absolute {
        candidates.push(name.to_owned());
    }
    for candidate in &candidates {
        for server in &servers {
            match query_a(*server, candidate) {
                Ok(ips) if !ips.is_empty() => return Ok(ips),
                _ => continue,
            }
        }
    }
    Err(format!("resolve {name}: no address (asked {servers:?} for {candidates:?})"))
}

/// One DNS query for A records of `name` over UDP, 2 s timeout.
fn query_a(server: std::net::Ipv4Addr, name: &str) -> Result<Vec<std::net::Ipv4Addr>, String> {
    let id = (std::process::id() as u16) ^ 0x5a5a;
    let mut q = vec![(id >> 8) as u8, id as u8, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
    sock.send_to(&q, (server, 53)).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 1500];
    let n = sock.recv(&mut buf).map_err(|e| e.to_string())?;
    let r = &buf[..n];
    if n < 12 || r[0..2] != q[0..2] || r[3] & 0x0f != 0 {
        return Ok(vec![]);
    }
    let answers = u16::from_be_bytes([r[6], r[7]]);
    // Skip the question: the name as sent, then type and class.
    let mut i = q.len();
    let mut ips = Vec::new();
    for _ in 0..answers {
        // The answer's name: a pointer (2 bytes) or labels.
        while i < n {
            let b = r[i];
            if b & 0xc0 == 0xc0 {
                i += 2;
                break;
            }
            i += 1 + b as usize;
            if b == 0 {
                break;
            }
        }
        if i + 10 > n {
            break;
        }
        let kind = u16::from_be_bytes([r[i], r[i + 1]]);
        let len = u16::from_be_bytes([r[i + 8], r[i + 9]]) as usize;
        i += 10;
        if kind == 1 && len == 4 && i + 4 <= n {
            ips.push(std::net::Ipv4Addr::new(r[i], r[i + 1], r[i + 2], r[i + 3]));
        }
        i += len;
    }
    ips.sort();
    Ok(ips)
}

fn cat(args: &[&str]) -> Result<(), String> {
    for f in args {
        let text = std::fs::read_to_string(f).map_err(|e| format!("{f}: {e}"))?;
        print!("{text}");
    }
    Ok(())
}

fn write(args: &[&str]) -> Result<(), String> {
    let [file, text] = args else { return Err("usage: write FILE TEXT".into()) };
    std::fs::write(file, text).map_err(|e| format!("{file}: {e}"))
}

fn alloc(args: &[&str]) -> Result<(), String> {
    let mib: u64 = args.first().and_then(|m| m.parse().ok()).ok_or("usage: alloc MIB")?;
    let kept = touch(mib);
    println!("allocated {} MiB", kept.len() >> 20);
    std::thread::sleep(Duration::from_secs(3600));
    Ok(())
}

fn sleep(args: &[&str]) -> Result<(), String> {
    let secs: u64 = args.first().and_then(|m| m.parse().ok()).unwrap_or(3600);
    std::thread::sleep(Duration::from_secs(secs));
    Ok(())
}

/// Tries to mount a cgroup v1 memory hierarchy (and then cgroup2) at /tmp/cg; a
/// container without CAP_SYS_ADMIN must fail.
fn mount_cgroup() -> Result<(), String> {
    std::fs::create_dir_all("/tmp/cg").map_err(|e| e.to_string())?;
    for (fstype, data) in [("cgroup", "memory"), ("cgroup2", "")] {
        let src = std::ffi::CString::new("cgroup").expect("no NUL in a literal");
        let target = std::ffi::CString::new("/tmp/cg").expect("no NUL in a literal");
        let fs = std::ffi::CString::new(fstype).expect("no NUL in a literal");
        let data = std::ffi::CString::new(data).expect("no NUL in a literal");
        // SAFETY: all pointers are valid NUL-terminated strings that outlive the call.
        let rc = unsafe { libc::mount(src.as_ptr(), target.as_ptr(), fs.as_ptr(), 0, data.as_ptr().cast()) };
        if rc == 0 {
            println!("mounted {fstype}");
            return Ok(());
        }
        eprintln!("mount {fstype}: {}", std::io::Error::last_os_error());
    }
    Err("could not mount any cgroup filesystem".into())
}
