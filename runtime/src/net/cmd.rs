//! Running `ip` and `nft` and writing sysctls in the calling thread's network namespace,
//! with errors that name the object, the command and its stderr.

use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use crate::error::Error;

/// Where a binary is: `PATH` first, then the sbin directories an agent started with a
/// minimal `PATH` may lack.
fn binary(name: &str) -> PathBuf {
    let dirs =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).unwrap_or_default();
    dirs.into_iter()
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Runs `name args…` with `stdin`, returns its stdout, or an error naming `object`, the
/// command line and its stderr.
fn run(object: &str, name: &str, args: &[&str], stdin: Option<&str>) -> Result<String, Error> {
    let command = format!("{name} {}", args.join(" "));
    let fail = |message: String| Error::Net { object: object.to_owned(), command: command.clone(), message };
    let output = spawn(name, args, stdin).map_err(|e| fail(e.to_string()))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(fail(match stderr.trim() {
            "" => format!("exited with {}", output.status),
            text => text.to_owned(),
        }));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn spawn(name: &str, args: &[&str], stdin: Option<&str>) -> io::Result<Output> {
    // The child inherits the network namespace of this thread, which the caller chose.
    let mut child = Command::new(binary(name))
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("stdin was requested as a pipe");
        pipe.write_all(text.as_bytes())?;
    }
    child.wait_with_output()
}

/// `ip args…`.
pub(super) fn ip(object: &str, args: &[&str]) -> Result<String, Error> {
    run(object, "ip", args, None)
}

/// `ip -j args…`, parsed; iproute2 prints nothing (not `[]`) for some empty lists.
pub(super) fn ip_json(object: &str, args: &[&str]) -> Result<Vec<Value>, Error> {
    let mut all = vec!["-j"];
    all.extend_from_slice(args);
    let out = run(object, "ip", &all, None)?;
    if out.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(&out).map_err(|e| Error::Net {
        object: object.to_owned(),
        command: format!("ip {}", all.join(" ")),
        message: format!("unexpected output {out:?}: {e}"),
    })
}

/// `nft -f -` with `script` on stdin: one atomic transaction.
pub(super) fn nft(object: &str, script: &str) -> Result<(), Error> {
    run(object, "nft", &["-f", "-"], Some(script)).map(drop)
}

/// The link named `name`, if it exists (with `ip -d`, so `linkinfo` is there).
pub(super) fn link(object: &str, name: &str) -> Result<Option<Value>, Error> {
    let all = ip_json(object, &["-d", "link", "show"])?;
    Ok(all.into_iter().find(|l| l["ifname"].as_str() == Some(name)))
}

/// The kind of a link (`bridge`, `veth`, ...), from `ip -d` output.
pub(super) fn link_kind(link: &Value) -> Option<&str> {
    link["linkinfo"]["info_kind"].as_str()
}

/// The IPv4 addresses (`address/prefix`) on link `name`.
pub(super) fn ipv4_addrs(object: &str, name: &str) -> Result<Vec<(Ipv4Addr, u8)>, Error> {
    let links = ip_json(object, &["-4", "addr", "show", "dev", name])?;
    let mut addrs = Vec::new();
    for info in links.iter().flat_map(|l| l["addr_info"].as_array().into_iter().flatten()) {
        let local = info["local"].as_str().and_then(|a| a.parse().ok());
        let len = info["prefixlen"].as_u64().and_then(|l| u8::try_from(l).ok());
        if let (Some(local), Some(len)) = (local, len) {
            addrs.push((local, len));
        }
    }
    Ok(addrs)
}

/// Writes a sysctl of this thread's network namespace, e.g. `net/ipv4/ip_forward`.
/// `/proc/sys/net` shows the namespace of the task that opens it, so this must run on
/// the thread that joined the namespace.
pub(super) fn sysctl(object: &str, key: &str, value: &str) -> Result<(), Error> {
    let path = format!("/proc/sys/{key}");
    if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == value) {
        return Ok(());
    }
    std::fs::write(&path, value).map_err(|e| Error::Net {
        object: object.to_owned(),
        command: format!("sysctl {}={value}", key.replace('/', ".")),
        message: e.to_string(),
    })
}
