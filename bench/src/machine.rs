//! What machine a result was measured on: CPU, cores, kernel, cgroup mode, load.

use std::fs;
use std::path::Path;
use std::process::Command;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub date: String,
    pub cpu_model: String,
    pub nproc: usize,
    pub kernel: String,
    pub cgroups: String,
    pub loadavg: String,
    pub crun: String,
}

impl Machine {
    pub fn collect(crun: &Path) -> Machine {
        let cpu_model = fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
                })
            })
            .unwrap_or_else(|| "unknown".to_owned());
        Machine {
            date: command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            cpu_model,
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel: read_trimmed("/proc/sys/kernel/osrelease"),
            cgroups: cgroup_mode(),
            loadavg: read_trimmed("/proc/loadavg").split(' ').take(3).collect::<Vec<_>>().join(" "),
            crun: command_line(&crun.to_string_lossy(), &["--version"]),
        }
    }
}

fn read_trimmed(path: &str) -> String {
    fs::read_to_string(path).map_or_else(|_| "unknown".to_owned(), |s| s.trim().to_owned())
}

/// The first line a command prints, or `unknown`.
fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// v2 (unified), v1 hybrid (v1 controllers plus a cgroup2 at `unified`), or v1.
fn cgroup_mode() -> String {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let fs_at = |target: &str| {
        mounts.lines().find_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.get(1) == Some(&target)).then(|| f.get(2).map_or(String::new(), |s| s.to_string()))
        })
    };
    match (fs_at("/sys/fs/cgroup").as_deref(), fs_at("/sys/fs/cgroup/unified").as_deref()) {
        (Some("cgroup2"), _) => "v2 (unified)".to_owned(),
        (_, Some("cgroup2")) => "v1 hybrid (empty cgroup2 at /sys/fs/cgroup/unified)".to_owned(),
        _ => "v1".to_owned(),
    }
}
