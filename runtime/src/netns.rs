//! Persistent pod network namespaces: created on a throw-away thread, kept alive by a
//! bind mount of the namespace file, joined by every container of the pod; TCP
//! connects from inside one.
//!
//! The folder that holds them is a mount of its own (bound on itself, as `ip netns` does
//! with `/run/netns`), so that a create child can drop every pod's namespace line from its
//! own mount table with one unmount ([`keep_only`]): libcontainer reads
//! `/proc/self/mountinfo` a dozen times per create, and the kernel formats every line
//! each time.

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

/// Makes `dir` a mount of its own (a bind mount on itself, private, then shared in a peer
/// group of its own, as `ip netns` does), unless it already is one. Returns whether it is
/// one afterwards: a folder that already holds namespace mounts (made before this scheme)
/// is left as it is, since binding it would hide them.
pub(crate) fn make_own_mount(dir: &Path) -> io::Result<bool> {
    if is_mount_root(dir)? {
        return Ok(true);
    }
    for entry in fs::read_dir(dir)? {
        if is_netns(&entry?.path()) {
            return Ok(false);
        }
    }
    mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .map_err(|e| os("bind on itself", e))?;
    // Private first, so that the shared mount gets a peer group of its own instead of
    // the one of the mount it was bound from (which would copy every namespace mount
    // under it to the hidden folder below too).
    mount(None::<&str>, dir, None::<&str>, MsFlags::MS_PRIVATE, None::<&str>)
        .map_err(|e| os("make private", e))?;
    mount(None::<&str>, dir, None::<&str>, MsFlags::MS_SHARED, None::<&str>)
        .map_err(|e| os("make shared", e))?;
    Ok(true)
}

/// A failed mount call as an `io::Error` that says which step failed.
fn os(what: impl std::fmt::Display, e: nix::Error) -> io::Error {
    io::Error::new(io::Error::from(e).kind(), format!("{what}: {e}"))
}

/// Whether `path` is the root of a mount.
fn is_mount_root(path: &Path) -> io::Result<bool> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
    // SAFETY: statx is plain data; all-zero is a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is a valid C string and `stx` a valid buffer for the kernel to fill.
    let rc = unsafe { libc::statx(libc::AT_FDCWD, c_path.as_ptr(), 0, libc::STATX_BASIC_STATS, &mut stx) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let bit = libc::STATX_ATTR_MOUNT_ROOT as u64;
    if stx.stx_attributes_mask & bit != 0 {
        return Ok(stx.stx_attributes & bit != 0);
    }
    // Kernels before 5.8 do not report the attribute: look for it in the mount table.
    let wanted = path.canonicalize()?;
    let table = fs::read_to_string("/proc/self/mountinfo")?;
    Ok(table.lines().filter_map(|l| l.split(' ').nth(4)).any(|m| Path::new(&unescape(m)) == wanted))
}

/// Undoes the kernel's octal escapes (`\040` for a space) of a mountinfo path.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                out.push(d.iter().fold(0u8, |n, c| n.wrapping_mul(8).wrapping_add(c - b'0')));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// In the calling process's own mount namespace (a create child's): unmounts the folder
/// of pod namespaces `dir` with every namespace mount under it, then binds back only
/// `own` (a namespace file in `dir`, which the container joins), so the mount table
/// libcontainer reads holds one namespace line instead of one per pod on the node.
/// Does nothing if `dir` is not a mount of its own (see [`make_own_mount`]).
///
/// Never call it in the node's mount namespace.
pub(crate) fn keep_only(dir: &Path, own: Option<&Path>) -> io::Result<()> {
    // Opened before the unmount, while the path still leads to the namespace.
    let own = match own {
        Some(path) => Some((path, fs::File::open(path)?)),
        None => None,
    };
    match umount2(dir, MntFlags::MNT_DETACH) {
        Ok(()) => {}
        // Not a mount point: the namespaces sit in the folder itself; leave them.
        Err(nix::Error::EINVAL) => return Ok(()),
        Err(e) => return Err(os(format!("unmount {}", dir.display()), e)),
    }
    if let Some((path, file)) = own {
        // The folder below the unmounted one is the same folder, so the file the
        // namespace was bound on is there to bind it on again.
        let source = format!("/proc/self/fd/{}", file.as_raw_fd());
        mount(Some(source.as_str()), path, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .map_err(|e| os(format!("bind {} again", path.display()), e))?;
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `None` (after printing why) when not root and root tests are not required.
    fn scratch(name: &str) -> Option<std::path::PathBuf> {
        if !nix::unistd::geteuid().is_root() {
            assert_ne!(
                std::env::var("PEER_REQUIRE_ROOT_TESTS").as_deref(),
                Ok("1"),
                "{name}: needs root, and PEER_REQUIRE_ROOT_TESTS=1 is set"
            );
            eprintln!("skipping {name}: needs root (set PEER_REQUIRE_ROOT_TESTS=1 to make this a failure)");
            return None;
        }
        let dir = std::env::temp_dir().join(format!("peer-netns-{}-{name}", std::process::id()));
        fs::create_dir_all(&dir).expect("scratch dir");
        Some(dir)
    }

    /// Runs `f` on a thread of its own that exits right after (namespace changes stay there).
    fn on_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(f).join().expect("thread")
    }

    fn mount_points_under(table: &str, dir: &Path) -> Vec<String> {
        table
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(unescape)
            .filter(|m| Path::new(m).starts_with(dir))
            .collect()
    }

    #[test]
    fn a_create_child_keeps_only_its_own_pod_namespace() {
        let Some(base) = scratch("keep") else { return };
        let dir = base.join("netns dir");
        fs::create_dir_all(&dir).expect("dir");
        assert!(make_own_mount(&dir).expect("make own mount"));
        assert!(make_own_mount(&dir).expect("again"), "already one: nothing stacked");
        let (a, b) = (dir.join("a"), dir.join("b"));
        for ns in [a.clone(), b.clone()] {
            on_thread(move || create(&ns)).expect("create namespace");
        }
        let node_table = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let mut expected = vec![dir.display().to_string(), a.display().to_string(), b.display().to_string()];
        expected.sort();
        let mut seen = mount_points_under(&node_table, &dir);
        seen.sort();
        assert_eq!(seen, expected, "one line each, none propagated below the folder's own mount");

        let (dir2, a2, b2) = (dir.clone(), a.clone(), b.clone());
        let (child_table, a_kept, b_gone, a_ino) = on_thread(move || {
            // What the create child does: a mount namespace of its own, a slave of the node's.
            unshare(CloneFlags::CLONE_NEWNS).expect("unshare");
            mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_SLAVE, None::<&str>)
                .expect("make / a slave");
            keep_only(&dir2, Some(&a2)).expect("keep only a");
            let ino = fs::metadata(&a2).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).expect("a");
            (
                fs::read_to_string("/proc/thread-self/mountinfo").expect("mountinfo"),
                is_netns(&a2),
                !is_netns(&b2),
                ino,
            )
        });
        assert_eq!(mount_points_under(&child_table, &dir), vec![a.display().to_string()]);
        assert!(a_kept && b_gone);
        let node_a = fs::metadata(&a).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).expect("a");
        assert_eq!(a_ino, node_a, "the same namespace is bound again");
        // The node's table is untouched.
        assert!(is_netns(&a) && is_netns(&b));

        // A folder that is no mount of its own is left alone.
        let plain = base.join("plain");
        fs::create_dir_all(&plain).expect("plain");
        let plain2 = plain.clone();
        on_thread(move || {
            unshare(CloneFlags::CLONE_NEWNS).expect("unshare");
            mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_SLAVE, None::<&str>)
                .expect("make / a slave");
            keep_only(&plain2, None)
        })
        .expect("not a mount: nothing to do");

        for ns in [&a, &b] {
            remove(ns).expect("remove namespace");
        }
        umount2(&dir, MntFlags::MNT_DETACH).expect("unmount the folder");
        fs::remove_dir_all(&base).expect("remove scratch");
    }
}
