//! Persistent pod network namespaces: created on a throw-away thread, kept alive by a
//! bind mount of the namespace file, joined by every container of the pod; TCP
//! connects from inside one.

use std::fs;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

/// Whether `path` is a bind mount of a namespace file.
// The field and constant types differ between libc targets (glibc, musl); the casts
// only widen or keep the magic number.
#[allow(clippy::unnecessary_cast)]
pub(crate) fn is_netns(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type().0 as i64 == libc::NSFS_MAGIC as i64)
        .unwrap_or(false)
}

/// Creates a network namespace with `lo` up and bind-mounts it on `path`; does nothing
/// if `path` already is one.
///
/// This moves the calling thread into the new namespace: call it on a thread that exits
/// right after (the agent uses a dedicated short-lived thread, the helper its only thread).
pub(crate) fn create(path: &Path) -> io::Result<()> {
    if is_netns(path) {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::OpenOptions::new().write(true).create(true).truncate(false).open(path)?;
    unshare(CloneFlags::CLONE_NEWNET)
        .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("unshare net: {e}")))?;
    mount(Some("/proc/thread-self/ns/net"), path, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(
        |e| io::Error::new(io::Error::from(e).kind(), format!("bind mount on {}: {e}", path.display())),
    )?;
    loopback_up().map_err(|e| io::Error::new(e.kind(), format!("set lo up: {e}")))
}

/// Moves the calling thread into the network namespace at `path` and connects a TCP
/// socket to `addr` there, waiting at most `timeout` (which must not be zero). The
/// socket stays in that namespace for its whole life.
///
/// The thread stays in the namespace too: call it on a thread that exits right after.
pub(crate) fn connect_in(path: &Path, addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let ns = fs::File::open(path)?;
    setns(&ns, CloneFlags::CLONE_NEWNET)
        .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("setns: {e}")))?;
    TcpStream::connect_timeout(&addr, timeout)
}

/// Brings `lo` up in the current network namespace.
fn loopback_up() -> io::Result<()> {
    // SAFETY: socket() takes plain integers and returns a new fd or -1.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd and nothing else owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `req` is a valid ifreq naming "lo"; SIOCGIFFLAGS fills ifru_flags.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS initialised the flags member of the union.
    unsafe { req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    // SAFETY: `req` is a valid ifreq with the name and flags set.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Unmounts and deletes the namespace file at `path`; a missing one is fine.
pub(crate) fn remove(path: &Path) -> io::Result<()> {
    if is_netns(path) {
        match umount2(path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
            Err(e) => return Err(io::Error::new(io::Error::from(e).kind(), format!("unmount: {e}"))),
        }
    }
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
