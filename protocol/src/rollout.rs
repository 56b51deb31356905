//! Rolling updates without a controller: which replicas of a Deployment each node wants
//! while a new template replaces the old one, computed by every node from the same
//! shared view (what every node claims to run, and whether it is Ready). Pure.
//!
//! Replica `i` of revision `r` is pod `NAME-r-i`, so both revisions' replicas coexist
//! under different names. In a view with `old` copies of other revisions (`old_ready` of
//! them Ready) and `new` copies of the current one (`new_ready` Ready), with `surge` and
//! `unavailable` resolved from `maxSurge` (rounded up) and `maxUnavailable` (rounded down)
//! against `replicas` = N:
//! - the current revision's indices `0..new_target` are wanted, where
//!   `new_target = min(N, max(new, N + surge - old))`: creating them never takes the
//!   total over `N + surge`;
//! - old copies that are not Ready are dropped (they count for nothing);
//! - of the Ready old copies, `max(0, old_ready + new_ready - (N - unavailable))` are
//!   dropped, the highest index first: dropping them never takes the Ready count under
//!   `N - unavailable`;
//! - old copies are never created again (a lost one is replaced by a new-revision one).
//!
//! Two gates narrow a step ([`Gates`]): a PodDisruptionBudget covering the Deployment
//! lowers how many Ready old copies may be dropped at once to what the budget allows, and
//! a paused rollout freezes: it creates no index of the current revision beyond the
//! highest one seen and drops no old copy.
//!
//! With `Recreate`, every old copy is dropped first and the new revision starts once no
//! old copy is left. A stale view errs on the safe side: copies only disappear from a
//! view late (a node still counts a removed old copy, so it creates less and keeps more),
//! and only Ready copies seen Ready allow an old one to go.

use std::collections::{BTreeMap, BTreeSet};

use crate::spec::{IntOrPercent, Revision, Strategy, Workload};

/// One copy of a replica as the claims show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    pub revision: String,
    pub index: u32,
    pub ready: bool,
}

/// What one rollout step wants of a Deployment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Step {
    /// Indices `0..new` of the current revision are wanted.
    pub new: u32,
    /// Old copies that stay for now: (revision, index).
    pub keep_old: BTreeSet<(String, u32)>,
}

/// What besides the bounds holds a step back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gates {
    /// `spec.paused`: nothing changes revision.
    pub paused: bool,
    /// Ready old copies the PodDisruptionBudgets covering the Deployment let go now
    /// (`None`: no budget covers it).
    pub disruptions: Option<u32>,
}

/// `maxSurge`/`maxUnavailable` against `n` replicas: percentages round up for a surge and
/// down for unavailability, as Kubernetes does.
pub fn resolve(v: &IntOrPercent, n: u32, round_up: bool) -> u32 {
    match v {
        IntOrPercent::Int(i) => *i,
        IntOrPercent::Percent(p) => {
            let scaled = u64::from(*p) * u64::from(n);
            let q = if round_up { scaled.div_ceil(100) } else { scaled / 100 };
            q.min(u64::from(u32::MAX)) as u32
        }
    }
}

/// The step every node computes for a Deployment of `replicas` at revision `current`,
/// given every copy the claims show.
pub fn step(replicas: u32, strategy: &Strategy, current: &str, copies: &[Copy], gates: &Gates) -> Step {
    let n = replicas;
    // Copies of the current revision by index (one per index; duplicates are placement's).
    let new: BTreeMap<u32, bool> =
        copies.iter().filter(|c| c.revision == current && c.index < n).fold(BTreeMap::new(), |mut m, c| {
            *m.entry(c.index).or_insert(false) |= c.ready;
            m
        });
    let old: Vec<&Copy> = copies.iter().filter(|c| c.revision != current).collect();
    let new_count = new.len() as u32;
    let new_ready = new.values().filter(|r| **r).count() as u32;
    if gates.paused {
        // Frozen: the indices of the current revision up to the highest one seen stay
        // wanted (a lost one comes back), every old copy stays where it runs.
        let new_target = new.keys().next_back().map_or(0, |i| i + 1);
        let keep_old = old.iter().map(|c| (c.revision.clone(), c.index)).collect();
        return Step { new: new_target, keep_old };
    }
    match strategy {
        Strategy::Recreate => Step { new: if old.is_empty() { n } else { 0 }, keep_old: BTreeSet::new() },
        Strategy::RollingUpdate { max_surge, max_unavailable } => {
            let surge = resolve(max_surge, n, true);
            let mut unavailable = resolve(max_unavailable, n, false);
            if surge == 0 && unavailable == 0 {
                unavailable = 1; // Kubernetes refuses both 0; never stall.
            }
            let old_count = old.len() as u32;
            let new_target = n.min(new_count.max((n + surge).saturating_sub(old_count)));
            let mut ready_old: Vec<&Copy> = old.iter().copied().filter(|c| c.ready).collect();
            let min_available = n.saturating_sub(unavailable);
            let drop = (ready_old.len() as u32 + new_ready).saturating_sub(min_available);
            let drop = gates.disruptions.map_or(drop, |allowed| drop.min(allowed));
            // Keep the lowest indices; drop from the highest.
            ready_old.sort_by(|a, b| (a.index, &a.revision).cmp(&(b.index, &b.revision)));
            let keep = ready_old.len().saturating_sub(drop as usize);
            let keep_old = ready_old[..keep].iter().map(|c| (c.revision.clone(), c.index)).collect();
            Step { new: new_target, keep_old }
        }
    }
}

/// Replica `(revision, index)` of Deployment `name` from a pod name `NAME-REVISION-INDEX`
/// (revisions are 10 hex digits).
pub fn parse_pod_name(name: &str, pod: &str) -> Option<(String, u32)> {
    let rest = pod.strip_prefix(name)?.strip_prefix('-')?;
    let (revision, index) = rest.split_once('-')?;
    let hex = revision.len() == 10 && revision.bytes().all(|b| b.is_ascii_hexdigit());
    hex.then(|| Some((revision.to_owned(), index.parse().ok()?))).flatten()
}

#[cfg(test)]
mod tests;

/// Carries a Deployment's revision history from `prev` (the stored version) into `next`
/// (the version about to be written): the same template keeps its revision number; a new
/// one gets the next number and `prev`'s template joins the history, from which a
/// template coming back (`peer rollout undo`, or a manifest set back) is taken out. The
/// history keeps the newest `revision_history_limit` entries.
pub fn carry_history(prev: Option<&Workload>, next: &mut Workload) {
    let Some(prev) = prev else {
        next.rollout.revision = next.rollout.revision.max(1);
        next.rollout.history.clear();
        return;
    };
    let prev_number = prev.rollout.revision.max(1);
    let mut history = prev.rollout.history.clone();
    if prev.template == next.template {
        next.rollout.revision = prev_number;
    } else {
        history.push(Revision {
            number: prev_number,
            template: prev.template.clone(),
            change_cause: prev.rollout.change_cause.clone(),
        });
        history.retain(|r| r.template != next.template);
        next.rollout.revision = history.iter().map(|r| r.number).max().unwrap_or(0).max(prev_number) + 1;
    }
    history.sort_by_key(|r| r.number);
    let extra = history.len().saturating_sub(next.rollout.revision_history_limit as usize);
    history.drain(..extra);
    next.rollout.history = history;
}

/// The copies of every Deployment replica among `claims` (pod key → (revision, Ready)),
/// by `(namespace, deployment name)`. Pod keys that are no Deployment replica are skipped.
pub fn index_copies<'a>(
    claims: impl IntoIterator<Item = (&'a str, &'a str, bool)>,
) -> BTreeMap<(String, String), Vec<Copy>> {
    let mut out: BTreeMap<(String, String), Vec<Copy>> = BTreeMap::new();
    for (key, revision, ready) in claims {
        let Some((namespace, pod)) = key.split_once('/') else { continue };
        let Some((rest, index)) = pod.rsplit_once('-') else { continue };
        let Some((name, rev)) = rest.rsplit_once('-') else { continue };
        let Ok(index) = index.parse::<u32>() else { continue };
        if rev != revision || rev.len() != 10 || !rev.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        out.entry((namespace.to_owned(), name.to_owned())).or_default().push(Copy {
            revision: revision.to_owned(),
            index,
            ready,
        });
    }
    out
}
