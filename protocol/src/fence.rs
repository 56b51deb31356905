//! At most one running copy of a StatefulSet replica, across crashes and partitions:
//! quorum plus self-fencing, as a pure state machine (the clock comes in as an argument).
//!
//! The rules, for a node `n` and a StatefulSet replica `r`:
//! 1. **Run only with a quorum.** `n` runs stateful replicas only while it sees a quorum:
//!    more than half of the cluster's known members live (itself included). A node that
//!    loses its quorum stops its stateful replicas at once (SIGKILL: fencing).
//! 2. **Start only after the fence delay.** `n` starts `r` (which it does not run yet) only
//!    if it has seen a quorum continuously for at least `delay`, and has not seen `r`
//!    claimed by any other live node for at least `delay`.
//! 3. **Start only a stable assignment.** `n` starts `r` only once its own plan has given
//!    it `r` continuously for at least `delay / 2` (5 s). Found by the fleet simulation: without
//!    it, a node cut off into a minority keeps a stale quorum for up to its detection
//!    time, and if its view changes in that window (peers declared dead one by one) its
//!    plan can give it a replica the majority side has just started, which it cannot see.
//!    Views diverge only when membership changes, and a minority notices it lost its
//!    quorum within the detection time, far below `delay`.
//!
//! Why it holds: two copies need two nodes that both pass rule 1, so both in the same
//! majority (two majorities intersect and a node's view of itself is exact), or one of
//! them in a minority that has not yet noticed. A holder cut off into a minority stops
//! `r` within its failure-detection time `d` plus the kill, while the majority sees the
//! holder's claim disappear only after its own detection time `d'` and then waits `delay`.
//! So at most one copy runs when `delay ≥ d − d' + kill time`: failure detection on both
//! sides of a cut is the same phi-accrual over the same silence, so `|d − d'|` is bounded
//! by a gossip interval or two, and `delay` is 10 s by default. Rule 2's "continuously for
//! `delay`" covers a node that restarted and lost its memory of earlier claims.
//!
//! What it does not cover: asymmetric links (a holder that still hears a majority which no
//! longer hears it), a holder frozen longer than `delay` (a paused VM that resumes and
//! runs before it notices), and clocks whose rates differ wildly. And availability has
//! a price: in an even split or a minority, stateful replicas do not run at all.

use std::collections::{BTreeMap, BTreeSet};

/// The default fence delay (see the module docs).
pub const DEFAULT_FENCE_DELAY_MS: u64 = 10_000;

/// Whether `live` members out of `known` form a quorum (strictly more than half).
pub fn has_quorum(live: usize, known: usize) -> bool {
    2 * live > known.max(live)
}

/// One node's fencing state.
#[derive(Debug, Clone)]
pub struct Fence {
    delay_ms: u64,
    /// Rule 3's hold: how long the plan must have given a replica to this node.
    hold_ms: u64,
    /// Replica identity → since when this node's plan gives it to this node (rule 3).
    assigned_since: BTreeMap<String, u64>,
    quorum_since: Option<u64>,
    /// Replica identity → the last time it was seen claimed by another live node (or
    /// the time its claim was first seen gone).
    claimed_elsewhere: BTreeMap<String, u64>,
    /// What the last `observe` saw claimed elsewhere.
    present: BTreeSet<String>,
}

impl Fence {
    /// All three rules: rules 1 and 2 with `delay_ms`, rule 3 with half of it (it only has
    /// to outlast a minority's detection of its lost quorum, ≈ 1.5 s).
    pub fn new(delay_ms: u64) -> Fence {
        Fence {
            delay_ms,
            hold_ms: delay_ms / 2,
            assigned_since: BTreeMap::new(),
            quorum_since: None,
            claimed_elsewhere: BTreeMap::new(),
            present: BTreeSet::new(),
        }
    }

    /// Rules 1 and 2 only: not safe (see rule 3); for the simulation's control runs.
    pub fn without_stable_assignment(delay_ms: u64) -> Fence {
        Fence { hold_ms: 0, ..Fence::new(delay_ms) }
    }

    /// Takes the StatefulSet replicas this node's current plan gives it (rule 3). Call it
    /// with every new plan.
    pub fn assigned<'a>(&mut self, now_ms: u64, mine: impl IntoIterator<Item = &'a str>) {
        let before = std::mem::take(&mut self.assigned_since);
        for r in mine {
            let since = before.get(r).copied().unwrap_or(now_ms);
            self.assigned_since.insert(r.to_owned(), since);
        }
    }

    /// Takes the current view: whether this node sees a quorum, and the stateful replicas
    /// other live nodes claim. Call it on every view change and periodically.
    pub fn observe<'a>(
        &mut self,
        now_ms: u64,
        quorum: bool,
        claimed_by_others: impl IntoIterator<Item = &'a str>,
    ) {
        self.quorum_since = if quorum { Some(self.quorum_since.unwrap_or(now_ms)) } else { None };
        // A claim counts until the observation that finds it gone, not the one before.
        let now: BTreeSet<String> = claimed_by_others.into_iter().map(str::to_owned).collect();
        for r in self.present.iter().chain(&now) {
            self.claimed_elsewhere.insert(r.clone(), now_ms);
        }
        self.present = now;
        // Entries older than the delay no longer block anything.
        let delay = self.delay_ms;
        self.claimed_elsewhere.retain(|_, seen| now_ms.saturating_sub(*seen) < delay);
    }

    /// Rule 1: whether this node may keep running stateful replicas.
    pub fn may_run(&self) -> bool {
        self.quorum_since.is_some()
    }

    /// Rules 2 and 3: whether this node may start stateful replica `identity` now.
    pub fn may_start(&self, now_ms: u64, identity: &str) -> bool {
        let settled = self.quorum_since.is_some_and(|since| now_ms.saturating_sub(since) >= self.delay_ms);
        let free = self
            .claimed_elsewhere
            .get(identity)
            .is_none_or(|seen| now_ms.saturating_sub(*seen) >= self.delay_ms);
        let stable = self.hold_ms == 0
            || self
                .assigned_since
                .get(identity)
                .is_some_and(|since| now_ms.saturating_sub(*since) >= self.hold_ms);
        settled && free && stable
    }

    /// When `may_start` may change for a replica blocked now (for the caller's timer).
    pub fn next_change_ms(&self, now_ms: u64) -> Option<u64> {
        let quorum = self.quorum_since.map(|s| s + self.delay_ms);
        let claims = self.claimed_elsewhere.values().map(|s| s + self.delay_ms);
        let assigned = self.assigned_since.values().map(|s| s + self.hold_ms);
        quorum.into_iter().chain(claims).chain(assigned).filter(|t| *t > now_ms).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_is_a_strict_majority() {
        assert!(has_quorum(1, 1));
        assert!(!has_quorum(1, 2));
        assert!(has_quorum(2, 3));
        assert!(!has_quorum(2, 4));
        assert!(has_quorum(3, 5));
        assert!(has_quorum(3, 2), "more live than known counts the live");
    }

    #[test]
    fn a_start_waits_for_a_settled_quorum_and_a_quiet_claim() {
        let mut f = Fence::without_stable_assignment(10_000);
        f.observe(0, true, []);
        assert!(f.may_run());
        assert!(!f.may_start(5_000, "db-0"), "quorum seen for less than the delay");
        assert!(f.may_start(10_000, "db-0"));
        f.observe(11_000, true, ["db-0"]);
        assert!(!f.may_start(12_000, "db-0"), "another node claims it");
        assert!(f.may_start(12_000, "db-1"));
        assert_eq!(f.next_change_ms(12_000), Some(21_000));
        f.observe(15_000, true, []);
        assert!(!f.may_start(24_999, "db-0"), "gone since the observation at 15 s, not 11 s");
        assert!(f.may_start(25_000, "db-0"), "the claim vanished a delay ago");
    }

    #[test]
    fn losing_quorum_fences_and_restarts_the_wait() {
        let mut f = Fence::without_stable_assignment(10_000);
        f.observe(0, true, []);
        f.observe(20_000, false, []);
        assert!(!f.may_run());
        assert!(!f.may_start(20_000, "db-0"));
        f.observe(25_000, true, []);
        assert!(f.may_run());
        assert!(!f.may_start(30_000, "db-0"));
        assert!(f.may_start(35_000, "db-0"));
    }

    #[test]
    fn a_start_waits_for_the_plan_to_give_the_replica_for_half_the_delay() {
        let mut f = Fence::new(10_000);
        f.observe(0, true, []);
        f.assigned(0, ["db-0"]);
        f.assigned(7_000, ["db-0", "db-1"]);
        assert!(f.may_start(10_000, "db-0"));
        assert!(!f.may_start(10_000, "db-1"), "given since 7 s only");
        assert_eq!(f.next_change_ms(10_000), Some(12_000));
        assert!(f.may_start(12_000, "db-1"));
        // A plan that stops giving it restarts the clock.
        f.assigned(15_000, ["db-0"]);
        f.assigned(16_000, ["db-0", "db-1"]);
        assert!(!f.may_start(20_000, "db-1"));
        assert!(!f.may_start(20_000, "db-2"), "never given");
        assert!(f.may_start(21_000, "db-1"));
    }
}
