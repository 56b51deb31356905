//! Rollout steps with plain values, and whole rollouts driven step by step.

use crate::spec::{IntOrPercent, Strategy};

use super::*;

fn rolling(surge: u32, unavailable: u32) -> Strategy {
    Strategy::RollingUpdate {
        max_surge: IntOrPercent::Int(surge),
        max_unavailable: IntOrPercent::Int(unavailable),
    }
}

fn copy(revision: &str, index: u32, ready: bool) -> Copy {
    Copy { revision: revision.into(), index, ready }
}

#[test]
fn percentages_round_like_kubernetes() {
    assert_eq!(resolve(&IntOrPercent::Percent(25), 10, true), 3);
    assert_eq!(resolve(&IntOrPercent::Percent(25), 10, false), 2);
    assert_eq!(resolve(&IntOrPercent::Percent(25), 1, false), 0);
    assert_eq!(resolve(&IntOrPercent::Int(4), 10, false), 4);
}

#[test]
fn first_step_surges_and_keeps_every_ready_old_copy() {
    let old: Vec<Copy> = (0..10).map(|i| copy("0000000001", i, true)).collect();
    let s = step(10, &rolling(1, 0), "0000000002", &old);
    assert_eq!(s.new, 1, "one surge replica");
    assert_eq!(s.keep_old.len(), 10, "nothing may go while only 10 are ready");
    // The new copy became ready: one old copy, the highest index, may go.
    let mut view = old.clone();
    view.push(copy("0000000002", 0, true));
    let s = step(10, &rolling(1, 0), "0000000002", &view);
    assert_eq!(s.keep_old.len(), 9);
    assert!(!s.keep_old.contains(&("0000000001".to_owned(), 9)));
    assert_eq!(s.new, 1, "the old copy still counts until it is gone");
}

#[test]
fn unavailable_budget_drops_old_copies_before_new_ones_are_ready() {
    let old: Vec<Copy> = (0..10).map(|i| copy("0000000001", i, true)).collect();
    let s = step(10, &rolling(0, 2), "0000000002", &old);
    assert_eq!((s.new, s.keep_old.len()), (0, 8));
    let mut view: Vec<Copy> = (0..8).map(|i| copy("0000000001", i, true)).collect();
    let s = step(10, &rolling(0, 2), "0000000002", &view);
    assert_eq!((s.new, s.keep_old.len()), (2, 8));
    view.push(copy("0000000002", 0, false));
    view.push(copy("0000000002", 1, false));
    let s = step(10, &rolling(0, 2), "0000000002", &view);
    assert_eq!((s.new, s.keep_old.len()), (2, 8), "unready new copies free nothing");
}

#[test]
fn recreate_drops_everything_first() {
    let old = vec![copy("0000000001", 0, true), copy("0000000001", 1, true)];
    assert_eq!(step(2, &Strategy::Recreate, "0000000002", &old), Step { new: 0, keep_old: BTreeSet::new() });
    assert_eq!(step(2, &Strategy::Recreate, "0000000002", &[]).new, 2);
}

/// Drives a rollout of `n` replicas: each round every node acts on the same view; new
/// copies become ready `delay` rounds after they are created. Checks the bounds at every
/// round and returns the number of rounds.
fn roll(n: u32, surge: u32, unavailable: u32, delay: u32) -> u32 {
    let strategy = rolling(surge, unavailable);
    let mut old: BTreeSet<u32> = (0..n).collect();
    let mut new: BTreeMap<u32, u32> = BTreeMap::new(); // index -> rounds since created
    for round in 1..=10_000 {
        let view: Vec<Copy> = old
            .iter()
            .map(|i| copy("0000000001", *i, true))
            .chain(new.iter().map(|(i, age)| copy("0000000002", *i, *age >= delay)))
            .collect();
        let s = step(n, &strategy, "0000000002", &view);
        old.retain(|i| s.keep_old.contains(&("0000000001".to_owned(), *i)));
        for age in new.values_mut() {
            *age += 1;
        }
        for i in 0..s.new {
            new.entry(i).or_insert(0);
        }
        let ready = old.len() as u32 + new.values().filter(|a| **a >= delay).count() as u32;
        let total = old.len() as u32 + new.len() as u32;
        assert!(total <= n + surge, "round {round}: {total} copies > {n} + {surge}");
        assert!(
            ready + unavailable >= n,
            "round {round}: only {ready} ready of {n} (maxUnavailable {unavailable})"
        );
        if old.is_empty() && new.len() as u32 == n && ready == n {
            return round;
        }
    }
    panic!("the rollout did not finish");
}

#[test]
fn whole_rollouts_hold_the_bounds_and_finish() {
    for (n, surge, unavailable, delay) in
        [(10, 1, 0, 1), (10, 0, 2, 2), (10, 3, 2, 3), (1, 1, 0, 1), (1000, 250, 0, 2), (7, 0, 1, 0)]
    {
        let rounds = roll(n, surge, unavailable, delay);
        assert!(rounds > 0, "{n} {surge} {unavailable}");
    }
}

#[test]
fn pod_names_parse_back() {
    assert_eq!(parse_pod_name("web", "web-00ab12cd34-7"), Some(("00ab12cd34".to_owned(), 7)));
    assert_eq!(parse_pod_name("web", "web-api-00ab12cd34-7"), None);
    assert_eq!(parse_pod_name("web-api", "web-api-00ab12cd34-7"), Some(("00ab12cd34".to_owned(), 7)));
    assert_eq!(parse_pod_name("web", "web-0"), None);
}
