//! The markdown tables printed at the end of a run, for BENCHMARKS.md.

use std::collections::BTreeSet;
use std::fmt::Write;

use crate::run::{Report, Sample, System};

/// Median, min and max; `None` for no values.
pub fn summary(values: &[f64]) -> Option<(f64, f64, f64)> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    let median = if v.len() % 2 == 1 { v[mid] } else { (v[mid - 1] + v[mid]) / 2.0 };
    Some((median, v[0], v[v.len() - 1]))
}

fn walls(samples: &[Sample], n: usize, system: System) -> Vec<f64> {
    samples.iter().filter(|s| s.n == n && s.system == system).map(|s| s.wall_ms).collect()
}

fn pers(samples: &[Sample], n: usize, system: System) -> Vec<f64> {
    samples.iter().filter(|s| s.n == n && s.system == system).flat_map(|s| s.per_ms.iter().copied()).collect()
}

fn cell(values: &[f64]) -> String {
    match summary(values) {
        Some((med, min, max)) => format!("{} ({}–{})", num(med), num(min), num(max)),
        None => "–".to_owned(),
    }
}

fn num(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn ratio(a: &[f64], b: &[f64]) -> String {
    match (summary(a), summary(b)) {
        (Some((a, _, _)), Some((b, _, _))) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "–".to_owned(),
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

pub fn markdown(r: &Report) -> String {
    let m = &r.machine;
    let mut out = String::new();
    let w = r.workers;
    let _ = writeln!(out, "| machine | |\n|---|---|");
    let _ = writeln!(out, "| date | {} |", m.date);
    let _ = writeln!(out, "| CPU | {} |", m.cpu_model);
    let _ = writeln!(out, "| nproc | {} |", m.nproc);
    let _ = writeln!(out, "| kernel | {} |", m.kernel);
    let _ = writeln!(out, "| cgroups | {} |", m.cgroups);
    let _ = writeln!(out, "| load average at start, at end | {}; {} |", m.loadavg, r.loadavg_end);
    let _ = writeln!(out, "| crun | {} |", m.crun);
    let _ = writeln!(out, "| peer | {} |", r.peer_version);
    let _ = writeln!(out);

    let ns: BTreeSet<usize> = r.samples.iter().map(|s| s.n).collect();
    let _ = writeln!(
        out,
        "Wall time for N containers, ms: median of {} runs (min–max). peer: spec file renamed into the \
         folder → the agent's last `Started` event of them (its ms clock; the socket is polled every \
         {} ms until all N run). References: create+start of N containers from ready bundles.\n",
        r.runs, r.poll_ms
    );
    let _ = writeln!(
        out,
        "| N | peer | raw libcontainer, sequential | raw libcontainer, {w} workers | crun run -d, sequential \
         | peer ÷ libcontainer seq. | peer ÷ libcontainer {w} workers |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|");
    for &n in &ns {
        let peer = walls(&r.samples, n, System::Peer);
        let seq = walls(&r.samples, n, System::LibcontainerSeq);
        let par = walls(&r.samples, n, System::LibcontainerPar);
        let crun = walls(&r.samples, n, System::CrunSeq);
        let _ = writeln!(
            out,
            "| {n} | {} | {} | {} | {} | {} | {} |",
            cell(&peer),
            cell(&seq),
            cell(&par),
            cell(&crun),
            ratio(&peer, &seq),
            ratio(&peer, &par)
        );
    }
    let _ = writeln!(
        out,
        "\nPer container, ms: peer = wall ÷ N (its creates overlap); references = each create+start \
         on its own, median over all containers of all runs (min–max).\n"
    );
    let _ = writeln!(out, "| N | peer, wall ÷ N | raw libcontainer, sequential | crun run -d, sequential |");
    let _ = writeln!(out, "|---:|---:|---:|---:|");
    for &n in &ns {
        let peer: Vec<f64> = walls(&r.samples, n, System::Peer).iter().map(|x| x / n as f64).collect();
        let _ = writeln!(
            out,
            "| {n} | {} | {} | {} |",
            cell(&peer),
            cell(&pers(&r.samples, n, System::LibcontainerSeq)),
            cell(&pers(&r.samples, n, System::CrunSeq))
        );
    }

    let _ = writeln!(out, "\n| agent (`peer up`) memory | VmRSS |\n|---|---:|");
    let _ = writeln!(out, "| idle, no pods, before the runs | {} |", mib(r.idle_before_kib));
    let loaded_rss: Vec<f64> = r.loaded.iter().map(|l| l.agent_rss_kib as f64).collect();
    if let (Some(first), Some((med, min, max))) = (r.loaded.first(), summary(&loaded_rss)) {
        let n = first.n;
        let _ = writeln!(
            out,
            "| {n} pods running (median of {}, min–max) | {} ({}–{}) |",
            r.loaded.len(),
            mib(med as u64),
            mib(min as u64),
            mib(max as u64)
        );
        let per = (med - r.idle_before_kib as f64) / n as f64;
        let _ = writeln!(out, "| agent growth per running pod | {per:.0} KiB |");
        let kids: Vec<String> =
            first.children.iter().map(|(name, count)| format!("`{name}` ×{count}")).collect();
        let _ = writeln!(
            out,
            "| processes under the agent with {n} pods | {} (their own RSS: {}) |",
            kids.join(", "),
            mib(first.children_rss_kib)
        );
        let _ =
            writeln!(out, "| `peer __runtime-helper` processes alive with {n} pods | {} |", first.helpers);
    }
    let _ = writeln!(out, "| idle, no pods, after the runs | {} |", mib(r.idle_after_kib));
    if r.paused_agent {
        let _ = writeln!(
            out,
            "\nThe agent was SIGSTOPped while the references ran, so its idle work did not slow them."
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_odd_and_even_counts() {
        assert_eq!(summary(&[3.0, 1.0, 2.0]), Some((2.0, 1.0, 3.0)));
        assert_eq!(summary(&[4.0, 1.0, 2.0, 3.0]), Some((2.5, 1.0, 4.0)));
        assert_eq!(summary(&[]), None);
    }
}
