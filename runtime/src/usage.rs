//! Resource usage for metrics: a container's cumulative CPU time and memory working set
//! from its cgroup (v1 or v2), and the node's own from `/proc`. The parsing is pure; the
//! reads are a few small files, cheap but blocking.
//!
//! The working set is what Kubernetes (cAdvisor) reports and evicts by: memory in use
//! minus the inactive file cache the kernel can drop at once.

use std::fs;
use std::io;
use std::path::Path;

use crate::cgroup::{CgroupPlace, CgroupVersion, CGROUP_ROOT};
use crate::error::Error;

/// Usage at one moment: CPU as a cumulative counter, memory as the current working set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// CPU time used since the container's cgroup was created, or since the node booted,
    /// in ns. Rates come from the difference of two readings.
    pub cpu_ns: u64,
    /// Memory working set in bytes: a container's usage minus its inactive file cache,
    /// the node's `MemTotal − MemAvailable`.
    pub memory_bytes: u64,
}

impl CgroupPlace {
    /// The container's usage; `None` when its cgroup is gone (or lacks the counters).
    pub fn usage(&self) -> Option<Usage> {
        self.usage_under(Path::new(CGROUP_ROOT))
    }

    /// [`usage`](Self::usage) in cgroup filesystems mounted at `root`.
    fn usage_under(&self, root: &Path) -> Option<Usage> {
        let read = |controller: &str, file: &str| {
            fs::read_to_string(self.dir_under(root, controller).join(file)).ok()
        };
        // A key missing from memory.stat counts as 0: older kernels lack some, and the
        // cgroup itself exists (its other files were read).
        match self.version {
            CgroupVersion::V1 => {
                let cpu_ns = parse_u64(&read("cpuacct", "cpuacct.usage")?)?;
                let usage = parse_u64(&read("memory", "memory.usage_in_bytes")?)?;
                let inactive = stat_value(&read("memory", "memory.stat")?, "total_inactive_file");
                Some(Usage { cpu_ns, memory_bytes: usage.saturating_sub(inactive.unwrap_or(0)) })
            }
            CgroupVersion::V2 => {
                let cpu_ns = stat_value(&read("", "cpu.stat")?, "usage_usec")?.checked_mul(1000)?;
                let current = parse_u64(&read("", "memory.current")?)?;
                let inactive = stat_value(&read("", "memory.stat")?, "inactive_file");
                Some(Usage { cpu_ns, memory_bytes: current.saturating_sub(inactive.unwrap_or(0)) })
            }
        }
    }
}

/// The node's usage: busy CPU time of all CPUs since boot (`/proc/stat`) and memory in
/// use (`/proc/meminfo`).
pub fn node_usage() -> Result<Usage, Error> {
    let read = |path: &'static str| {
        let text = fs::read_to_string(path).map_err(|e| Error::io("node", "read", path, e))?;
        Ok::<_, Error>((path, text))
    };
    let invalid = |path: &'static str| {
        let e = io::Error::new(io::ErrorKind::InvalidData, "unexpected format");
        Error::io("node", "parse", path, e)
    };
    let (stat_path, stat) = read("/proc/stat")?;
    let (mem_path, meminfo) = read("/proc/meminfo")?;
    let jiffies = busy_jiffies(&stat).ok_or_else(|| invalid(stat_path))?;
    let memory_bytes = memory_in_use(&meminfo).ok_or_else(|| invalid(mem_path))?;
    Ok(Usage { cpu_ns: jiffies_to_ns(jiffies, clock_ticks()), memory_bytes })
}

/// Clock ticks per second of `/proc/stat` (`USER_HZ`, 100 on every common kernel).
fn clock_ticks() -> u64 {
    use nix::unistd::{sysconf, SysconfVar};
    match sysconf(SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as u64,
        _ => 100,
    }
}

fn jiffies_to_ns(jiffies: u64, ticks_per_sec: u64) -> u64 {
    let ns = u128::from(jiffies) * 1_000_000_000 / u128::from(ticks_per_sec.max(1));
    u64::try_from(ns).unwrap_or(u64::MAX)
}

/// A file holding one number (`cpuacct.usage`, `memory.current`, …).
fn parse_u64(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// The value of `key` in a flat-keyed file of `key value` lines (`memory.stat`, `cpu.stat`).
fn stat_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Busy jiffies of all CPUs from the `cpu` line of `/proc/stat`: user, nice, system, irq,
/// softirq and steal (guest time is already inside user and nice; idle and iowait are
/// not busy).
fn busy_jiffies(proc_stat: &str) -> Option<u64> {
    let line = proc_stat.lines().find(|l| l.split_whitespace().next() == Some("cpu"))?;
    let fields: Vec<u64> = line.split_whitespace().skip(1).map(|f| f.parse().ok()).collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice]; steal is 0 on
    // kernels too old to have it.
    let field = |i: usize| fields.get(i).copied();
    let (user, nice, system) = (field(0)?, field(1)?, field(2)?);
    let (irq, softirq, steal) = (field(5).unwrap_or(0), field(6).unwrap_or(0), field(7).unwrap_or(0));
    [user, nice, system, irq, softirq, steal].into_iter().try_fold(0u64, u64::checked_add)
}

/// `MemTotal − MemAvailable` of `/proc/meminfo`, in bytes.
fn memory_in_use(meminfo: &str) -> Option<u64> {
    let kib = |key: &str| {
        meminfo.lines().find_map(|l| {
            let rest = l.strip_prefix(key)?.strip_prefix(':')?;
            rest.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()
        })
    };
    let (total, available) = (kib("MemTotal")?, kib("MemAvailable")?);
    total.saturating_sub(available).checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    const V1_CPUACCT_USAGE: &str = include_str!("usage/testdata/v1-cpuacct.usage");
    const V1_MEMORY_USAGE: &str = include_str!("usage/testdata/v1-memory.usage_in_bytes");
    const V1_MEMORY_STAT: &str = include_str!("usage/testdata/v1-memory.stat");
    const V2_CPU_STAT: &str = include_str!("usage/testdata/v2-cpu.stat");
    const V2_MEMORY_CURRENT: &str = include_str!("usage/testdata/v2-memory.current");
    const V2_MEMORY_STAT: &str = include_str!("usage/testdata/v2-memory.stat");
    const PROC_STAT: &str = include_str!("usage/testdata/proc-stat");
    const PROC_MEMINFO: &str = include_str!("usage/testdata/proc-meminfo");

    #[test]
    fn cgroup_files_parse() {
        assert_eq!(parse_u64(V1_CPUACCT_USAGE), Some(1_234_567_890));
        assert_eq!(parse_u64(V1_MEMORY_USAGE), Some(8_790_016));
        // v1 has both the cgroup's own and the hierarchical (`total_`) counters.
        assert_eq!(stat_value(V1_MEMORY_STAT, "total_inactive_file"), Some(1_622_016));
        assert_eq!(stat_value(V1_MEMORY_STAT, "inactive_file"), Some(1_622_016));
        assert_eq!(stat_value(V2_CPU_STAT, "usage_usec"), Some(8_355_041));
        assert_eq!(parse_u64(V2_MEMORY_CURRENT), Some(9_437_184));
        assert_eq!(stat_value(V2_MEMORY_STAT, "inactive_file"), Some(2_097_152));
        assert_eq!(stat_value(V2_MEMORY_STAT, "total_inactive_file"), None);
        // Keys match whole: `inactive_file` is not `inactive_filex`, nor a prefix of it.
        assert_eq!(stat_value("inactive_filex 5\ninactive_file 7\n", "inactive_file"), Some(7));
        assert_eq!(stat_value("usage_usec x\n", "usage_usec"), None);
        assert_eq!(parse_u64(""), None);
    }

    #[test]
    fn proc_files_parse() {
        // user 3898401 + nice 219 + system 615274 + irq 0 + softirq 10798 + steal 1174.
        assert_eq!(busy_jiffies(PROC_STAT), Some(4_525_866));
        assert_eq!(jiffies_to_ns(4_525_866, 100), 45_258_660_000_000);
        assert_eq!(busy_jiffies("cpu  10 0 5 100\n"), Some(15));
        assert_eq!(busy_jiffies("cpu0 1 2 3 4\n"), None);
        assert_eq!(busy_jiffies("cpu  1 x 3 4\n"), None);
        assert_eq!(busy_jiffies("cpu  1 2\n"), None);
        // (24684084 − 23207900) KiB.
        assert_eq!(memory_in_use(PROC_MEMINFO), Some(1_476_184 * 1024));
        assert_eq!(memory_in_use("MemTotal: 100 kB\n"), None);
        assert_eq!(memory_in_use("MemTotal: 100 kB\nMemAvailable: 200 kB\n"), Some(0));
    }

    /// A throw-away cgroup tree holding `files` (path under the root, content).
    fn tree(name: &str, files: &[(&str, &str)]) -> PathBuf {
        let root = std::env::temp_dir().join(format!("peer-usage-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        for (path, text) in files {
            let path = root.join(path);
            fs::create_dir_all(path.parent().expect("fixture paths have a parent")).expect("mkdir");
            fs::write(path, text).expect("writing a fixture");
        }
        root
    }

    #[test]
    fn v1_container_usage() {
        let root = tree(
            "v1",
            &[
                ("cpuacct/peer/c/cpuacct.usage", V1_CPUACCT_USAGE),
                ("memory/peer/c/memory.usage_in_bytes", V1_MEMORY_USAGE),
                ("memory/peer/c/memory.stat", V1_MEMORY_STAT),
            ],
        );
        let place = CgroupPlace::new(CgroupVersion::V1, "peer", "c");
        let want = Usage { cpu_ns: 1_234_567_890, memory_bytes: 8_790_016 - 1_622_016 };
        assert_eq!(place.usage_under(&root), Some(want));
        let gone = CgroupPlace::new(CgroupVersion::V1, "peer", "gone");
        assert_eq!(gone.usage_under(&root), None);
        fs::remove_dir_all(&root).expect("cleanup");
    }

    #[test]
    fn v2_container_usage() {
        let root = tree(
            "v2",
            &[
                ("peer/c/cpu.stat", V2_CPU_STAT),
                ("peer/c/memory.current", V2_MEMORY_CURRENT),
                ("peer/c/memory.stat", V2_MEMORY_STAT),
                // Inactive cache above usage (a racy read) is a working set of 0, not a wrap.
                ("peer/d/cpu.stat", "usage_usec 5\n"),
                ("peer/d/memory.current", "100\n"),
                ("peer/d/memory.stat", "inactive_file 4096\n"),
                // Without the memory controller there is no usage to report.
                ("peer/e/cpu.stat", V2_CPU_STAT),
            ],
        );
        let place = |id| CgroupPlace::new(CgroupVersion::V2, "peer", id);
        let want = Usage { cpu_ns: 8_355_041_000, memory_bytes: 9_437_184 - 2_097_152 };
        assert_eq!(place("c").usage_under(&root), Some(want));
        assert_eq!(place("d").usage_under(&root), Some(Usage { cpu_ns: 5000, memory_bytes: 0 }));
        assert_eq!(place("e").usage_under(&root), None);
        assert_eq!(place("gone").usage_under(&root), None);
        fs::remove_dir_all(&root).expect("cleanup");
    }

    #[test]
    fn this_machine_reads() {
        let usage = node_usage().expect("reading /proc");
        assert!(usage.cpu_ns > 0 && usage.memory_bytes > 0, "{usage:?}");
    }
}
