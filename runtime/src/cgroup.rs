//! cgroup facts the runtime needs beyond libcontainer: which version the host runs,
//! where a container's cgroup is, whether the OOM killer struck it, and leftover cleanup.
//! Usage counters for metrics are read in `usage.rs`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Mount point of the cgroup filesystems.
pub(crate) const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Which cgroup hierarchy the host runs; hybrid hosts count as v1 (controllers live there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CgroupVersion {
    V1,
    V2,
}

impl CgroupVersion {
    /// Detects the version by the filesystem type of `/sys/fs/cgroup`.
    pub fn detect() -> io::Result<CgroupVersion> {
        let stat = nix::sys::statfs::statfs(CGROUP_ROOT).map_err(io::Error::from)?;
        // The field and constant types differ between libc targets (glibc, musl); the
        // casts only widen or keep the magic number.
        #[allow(clippy::unnecessary_cast)]
        let magic = stat.filesystem_type().0 as i64;
        #[allow(clippy::unnecessary_cast)]
        let v2 = magic == libc::CGROUP2_SUPER_MAGIC as i64;
        Ok(if v2 { CgroupVersion::V2 } else { CgroupVersion::V1 })
    }
}

/// Where one container's cgroups live, relative to each hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CgroupPlace {
    pub version: CgroupVersion,
    /// `/<parent>/<id>`: the `cgroupsPath` of the OCI spec.
    pub path: PathBuf,
}

impl CgroupPlace {
    pub fn new(version: CgroupVersion, parent: &str, id: &str) -> CgroupPlace {
        CgroupPlace { version, path: cgroups_path(parent, id) }
    }

    /// Directory of the memory controller for this container.
    fn memory_dir(&self) -> PathBuf {
        self.dir_under(Path::new(CGROUP_ROOT), "memory")
    }

    /// This container's directory of `controller` (a v1 hierarchy such as `memory` or
    /// `cpuacct`; v2 has one directory for all) in the cgroup filesystems mounted at `root`.
    pub(crate) fn dir_under(&self, root: &Path, controller: &str) -> PathBuf {
        let rel = self.path.strip_prefix("/").unwrap_or(&self.path);
        match self.version {
            CgroupVersion::V1 => root.join(controller).join(rel),
            CgroupVersion::V2 => root.join(rel),
        }
    }

    /// How many times the OOM killer killed a process in this cgroup; `None` if unknown
    /// (the cgroup is gone or the kernel lacks the counter).
    pub fn oom_kills(&self) -> Option<u64> {
        let file = match self.version {
            CgroupVersion::V1 => "memory.oom_control",
            CgroupVersion::V2 => "memory.events",
        };
        parse_oom_kill(&fs::read_to_string(self.memory_dir().join(file)).ok()?)
    }

    /// Pids in the cgroup (read from the memory controller, which is always enabled).
    /// Empty when the cgroup does not exist.
    pub fn pids(&self) -> Vec<i32> {
        let Ok(text) = fs::read_to_string(self.memory_dir().join("cgroup.procs")) else {
            return Vec::new();
        };
        text.lines().filter_map(|l| l.trim().parse().ok()).collect()
    }

    /// Removes the container's cgroup directories that libcontainer left behind
    /// (every v1 hierarchy, or the v2 directory). Missing ones are fine.
    pub fn remove_leftovers(&self) -> io::Result<()> {
        let rel = self.path.strip_prefix("/").unwrap_or(&self.path);
        let dirs: Vec<PathBuf> = match self.version {
            CgroupVersion::V2 => vec![Path::new(CGROUP_ROOT).join(rel)],
            CgroupVersion::V1 => {
                fs::read_dir(CGROUP_ROOT)?.filter_map(|e| e.ok()).map(|e| e.path().join(rel)).collect()
            }
        };
        for dir in dirs {
            match fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                // A symlinked hierarchy (cpu -> cpu,cpuacct) lists the same directory twice.
                Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {}
                Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", dir.display()))),
            }
        }
        Ok(())
    }
}

/// The `cgroupsPath` of a container: always explicit, so that libcontainer does not
/// invent `/:youki:<id>` at the top of each hierarchy.
pub(crate) fn cgroups_path(parent: &str, id: &str) -> PathBuf {
    let parent = parent.trim_matches('/');
    if parent.is_empty() {
        PathBuf::from(format!("/{id}"))
    } else {
        PathBuf::from(format!("/{parent}/{id}"))
    }
}

/// Reads the `oom_kill N` line of v1 `memory.oom_control` or v2 `memory.events`.
pub(crate) fn parse_oom_kill(text: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(char::is_whitespace)?;
        (key == "oom_kill").then(|| value.trim().parse().ok()).flatten()
    })
}

/// Whether the kernel accounts swap per cgroup, so that swap can be limited.
pub(crate) fn swap_accounting(version: CgroupVersion) -> bool {
    match version {
        CgroupVersion::V1 => Path::new(CGROUP_ROOT).join("memory/memory.memsw.limit_in_bytes").exists(),
        CgroupVersion::V2 => {
            // The root cgroup has no swap files; look at our own cgroup and at init's.
            let own = fs::read_to_string("/proc/self/cgroup")
                .ok()
                .and_then(|t| t.lines().find_map(|l| l.strip_prefix("0::").map(str::to_owned)));
            let candidates = own.into_iter().chain(["/init.scope".to_owned()]);
            candidates
                .map(|rel| Path::new(CGROUP_ROOT).join(rel.trim_start_matches('/')).join("memory.swap.max"))
                .any(|p| p.exists())
        }
    }
}

/// SIGKILLs every process in the cgroups under `parent` in every hierarchy (a power cut
/// for one node's containers; benchmarks and tests use it). Returns how many it signalled.
pub fn kill_all_under(parent: &str) -> usize {
    let root = Path::new(CGROUP_ROOT);
    let mut dirs: Vec<PathBuf> = vec![root.join(parent)];
    if let Ok(hierarchies) = fs::read_dir(root) {
        dirs.extend(hierarchies.flatten().map(|h| h.path().join(parent)));
    }
    let mut pids = std::collections::BTreeSet::new();
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        dirs.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
        let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        pids.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    let signal = nix::sys::signal::Signal::SIGKILL;
    pids.iter().filter(|p| nix::sys::signal::kill(nix::unistd::Pid::from_raw(**p), signal).is_ok()).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_explicit() {
        assert_eq!(cgroups_path("peer", "web-1"), PathBuf::from("/peer/web-1"));
        assert_eq!(cgroups_path("/peer/", "web-1"), PathBuf::from("/peer/web-1"));
        assert_eq!(cgroups_path("", "web-1"), PathBuf::from("/web-1"));
        let v1 = CgroupPlace::new(CgroupVersion::V1, "peer", "c");
        assert_eq!(v1.memory_dir(), PathBuf::from("/sys/fs/cgroup/memory/peer/c"));
        let v2 = CgroupPlace::new(CgroupVersion::V2, "peer", "c");
        assert_eq!(v2.memory_dir(), PathBuf::from("/sys/fs/cgroup/peer/c"));
    }

    #[test]
    fn oom_counters_parse() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        assert_eq!(parse_oom_kill(v1), Some(2));
        let v2 = "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(parse_oom_kill(v2), Some(1));
        assert_eq!(parse_oom_kill("oom_kill_disable 0\nunder_oom 0\n"), None);
        assert_eq!(parse_oom_kill("oom_kill x\n"), None);
    }
}
