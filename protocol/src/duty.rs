//! Cluster-wide duties without a leader: a periodic job that exactly one node must do
//! (an autoscaler's decision), given to one live node by rendezvous hashing, with a
//! handover rule so that two nodes whose views briefly disagree never both act in the
//! same period. Pure: time comes in as `now_ms` (this node's clock, never compared with
//! another node's).
//!
//! The rule ([`Watch::may_act`]): a node acts on a duty when
//! 1. it is the duty's [`owner`] among the live nodes of its view, and
//! 2. the duty's last action (which the acting node writes into the desired state with a
//!    sequence number, every period, even when nothing changed) was seen to change at
//!    least one `period` ago if that action was its own, or `period + handover` ago if it
//!    was another node's (or none was ever seen).
//!
//! So while an owner acts, the heartbeat it writes every period keeps every other node
//! waiting; a node that takes over (the owner died, or a joining node now wins the hash)
//! acts only after the old owner's writes stopped for `handover` longer than a period. Two
//! nodes act in the same period only if a write takes longer than `handover` to reach the
//! other, which the handover (a multiple of the gossip round) is chosen to exceed.

use crate::placement::hrw::key_hash;

/// The node that owns `duty` among `live`: the highest rendezvous hash of (duty, node),
/// ties broken by the lower name. Removing a node moves only the duties it owned.
pub fn owner<'a>(duty: &str, live: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    live.into_iter()
        .map(|node| (key_hash(&format!("{duty}\u{0}{node}")), std::cmp::Reverse(node)))
        .max()
        .map(|(_, std::cmp::Reverse(node))| node)
}

/// `me`'s place in the order [`owner`] picks from (0: it is the owner), among `me` and the
/// `others`; every node that sees the same live set derives the same order.
pub fn rank<'a>(duty: &str, me: &str, others: impl IntoIterator<Item = &'a str>) -> usize {
    let score = |node: &str| (key_hash(&format!("{duty}\u{0}{node}")), std::cmp::Reverse(node.to_owned()));
    let mine = score(me);
    others.into_iter().filter(|node| *node != me).filter(|node| score(node) > mine).count()
}

/// The last action on a duty as the desired state shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    /// Grows with every action.
    pub seq: u64,
    /// The node that acted.
    pub by: String,
}

/// What one node has seen of a duty's actions, on its own clock.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Watch {
    last: Option<Action>,
    /// When `last` was first seen (this node's clock); 0 before anything was seen.
    seen_at_ms: u64,
}

impl Watch {
    /// A watch that starts at `now_ms` having seen nothing: a node that just started
    /// waits a full handover before acting, as if an action had just been seen.
    pub fn new(now_ms: u64) -> Watch {
        Watch { last: None, seen_at_ms: now_ms }
    }

    /// Takes in the last action the desired state shows now.
    pub fn observe(&mut self, last: Option<Action>, now_ms: u64) {
        if last != self.last {
            self.last = last;
            self.seen_at_ms = now_ms;
        }
    }

    /// Whether `me` may act now (see the module rule).
    pub fn may_act(
        &self,
        me: &str,
        owner: Option<&str>,
        now_ms: u64,
        period_ms: u64,
        handover_ms: u64,
    ) -> bool {
        if owner != Some(me) {
            return false;
        }
        let mine = self.last.as_ref().is_some_and(|a| a.by == me);
        let wait = if mine { period_ms } else { period_ms + handover_ms };
        now_ms.saturating_sub(self.seen_at_ms) >= wait
    }

    /// The next sequence number for an action of this node.
    pub fn next_seq(&self) -> u64 {
        self.last.as_ref().map_or(1, |a| a.seq + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_follow_the_owner_order() {
        let nodes = ["a", "b", "c", "d", "e"];
        for duty in ["sha256:1", "sha256:2", "x"] {
            let mut ranks: Vec<usize> = nodes.iter().map(|me| rank(duty, me, nodes)).collect();
            let first = nodes[ranks.iter().position(|r| *r == 0).expect("someone is first")];
            assert_eq!(Some(first), owner(duty, nodes));
            ranks.sort_unstable();
            assert_eq!(ranks, vec![0, 1, 2, 3, 4], "{duty}");
        }
    }

    #[test]
    fn owners_spread_and_move_only_when_their_node_goes() {
        let nodes = ["a", "b", "c", "d", "e"];
        let duties: Vec<String> = (0..500).map(|i| format!("default/hpa-{i}")).collect();
        let before: Vec<&str> = duties.iter().map(|d| owner(d, nodes).expect("a node")).collect();
        for n in nodes {
            let count = before.iter().filter(|o| **o == n).count();
            assert!((60..=140).contains(&count), "{n} owns {count} of 500");
        }
        let without_c = ["a", "b", "d", "e"];
        for (d, was) in duties.iter().zip(&before) {
            let now = owner(d, without_c).expect("a node");
            if *was != "c" {
                assert_eq!(now, *was, "{d} moved though its owner stayed");
            }
        }
        assert_eq!(owner("x", []), None);
    }

    /// Two nodes, a period of 10 and a handover of 3, gossip that delivers an action to
    /// the other node `delay` later (every other action twice as late: the handover must
    /// cover that jitter). The owner acts every period; at `switch` the second
    /// node starts to see itself as owner (a join) while the first still does until
    /// `switch + lag`; later the first dies. No two actions by different nodes are less
    /// than a period apart, and the survivor takes over.
    fn run(delay: u64, lag: u64) -> Vec<(u64, &'static str)> {
        let (period, handover) = (10_000, 3_000);
        let names = ["a", "b"];
        let mut watches = [Watch::new(0), Watch::new(0)];
        let mut actions: Vec<(u64, &'static str, Action)> = Vec::new();
        let switch = 55_000;
        let death = 120_000;
        for now in (0..200_000).step_by(100) {
            for (i, me) in names.iter().enumerate() {
                if i == 0 && now >= death {
                    continue;
                }
                // What this node sees: its own actions at once, the other's `delay` later.
                let visible = actions
                    .iter()
                    .rev()
                    .find(|(at, by, a)| *by == *me || at + delay * (1 + a.seq % 2) <= now)
                    .map(|(_, _, a)| a.clone());
                watches[i].observe(visible, now);
                let owner = match (i, now) {
                    (_, t) if t >= death => "b",
                    (0, t) if t < switch + lag => "a",
                    (1, t) if t < switch => "a",
                    _ => "b",
                };
                if watches[i].may_act(me, Some(owner), now, period, handover) {
                    let action = Action { seq: watches[i].next_seq(), by: (*me).to_owned() };
                    actions.push((now, me, action.clone()));
                    watches[i].observe(Some(action), now);
                }
            }
        }
        actions.into_iter().map(|(at, by, _)| (at, by)).collect()
    }

    #[test]
    fn one_node_acts_per_period_across_a_handover_and_a_death() {
        for (delay, lag) in [(0, 0), (500, 2_000), (2_500, 5_000), (1_000, 20_000)] {
            let acts = run(delay, lag);
            for w in acts.windows(2) {
                assert!(w[1].0 - w[0].0 >= 10_000, "delay {delay}, lag {lag}: two actions too close: {w:?}");
            }
            assert!(acts.iter().any(|(_, by)| *by == "a"));
            let after_death: Vec<_> = acts.iter().filter(|(at, _)| *at >= 120_000).collect();
            assert!(after_death.iter().all(|(_, by)| *by == "b"));
            let first = after_death.first().expect("b takes over").0;
            assert!(first <= 120_000 + 13_000, "delay {delay}: took over at {first}");
        }
    }
}
