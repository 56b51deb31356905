//! Small `/proc` readers: liveness, resident memory and the children of a process.

use std::collections::BTreeMap;
use std::fs;

/// One field of `/proc/<pid>/stat`, after the parenthesised command name.
fn stat_fields(pid: i32) -> Option<(String, Vec<String>)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    let rest = stat.get(close + 1..)?.split_whitespace().map(str::to_owned).collect();
    Some((comm, rest))
}

/// Whether `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    stat_fields(pid).is_some_and(|(_, f)| f.first().is_some_and(|state| state != "Z"))
}

/// `VmRSS` of `pid` in KiB.
pub fn rss_kib(pid: i32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The live children of `pid`: (pid, command name).
pub fn children(parent: i32) -> Vec<(i32, String)> {
    let Ok(dir) = fs::read_dir("/proc") else { return Vec::new() };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Some((comm, fields)) = stat_fields(pid) else { continue };
        // Fields after the name: state, ppid, ...
        let ppid = fields.get(1).and_then(|p| p.parse::<i32>().ok());
        if ppid == Some(parent) && fields.first().is_some_and(|s| s != "Z") {
            out.push((pid, comm));
        }
    }
    out.sort();
    out
}

/// Children of `parent` counted by command name.
pub fn children_by_name(parent: i32) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for (_, comm) in children(parent) {
        *counts.entry(comm).or_insert(0) += 1;
    }
    counts
}

/// Live processes whose command line contains `needle` (e.g. a left-behind helper).
pub fn count_cmdline(needle: &str) -> usize {
    let Ok(dir) = fs::read_dir("/proc") else { return 0 };
    dir.flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())))
        .filter_map(|e| fs::read(e.path().join("cmdline")).ok())
        .filter(|c| c.split(|&b| b == 0).any(|arg| arg == needle.as_bytes()))
        .count()
}
