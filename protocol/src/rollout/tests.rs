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
    let s = step(10, &rolling(1, 0), "0000000002", &old, &Gates::default());
    assert_eq!(s.new, 1, "one surge replica");
    assert_eq!(s.keep_old.len(), 10, "nothing may go while only 10 are ready");
    // The new copy became ready: one old copy, the highest index, may go.
    let mut view = old.clone();
    view.push(copy("0000000002", 0, true));
    let s = step(10, &rolling(1, 0), "0000000002", &view, &Gates::default());
    assert_eq!(s.keep_old.len(), 9);
    assert!(!s.keep_old.contains(&("0000000001".to_owned(), 9)));
    assert_eq!(s.new, 1, "the old copy still counts until it is gone");
}

#[test]
fn unavailable_budget_drops_old_copies_before_new_ones_are_ready() {
    let old: Vec<Copy> = (0..10).map(|i| copy("0000000001", i, true)).collect();
    let s = step(10, &rolling(0, 2), "0000000002", &old, &Gates::default());
    assert_eq!((s.new, s.keep_old.len()), (0, 8));
    let mut view: Vec<Copy> = (0..8).map(|i| copy("0000000001", i, true)).collect();
    let s = step(10, &rolling(0, 2), "0000000002", &view, &Gates::default());
    assert_eq!((s.new, s.keep_old.len()), (2, 8));
    view.push(copy("0000000002", 0, false));
    view.push(copy("0000000002", 1, false));
    let s = step(10, &rolling(0, 2), "0000000002", &view, &Gates::default());
    assert_eq!((s.new, s.keep_old.len()), (2, 8), "unready new copies free nothing");
}

#[test]
fn recreate_drops_everything_first() {
    let old = vec![copy("0000000001", 0, true), copy("0000000001", 1, true)];
    assert_eq!(
        step(2, &Strategy::Recreate, "0000000002", &old, &Gates::default()),
        Step { new: 0, keep_old: BTreeSet::new() }
    );
    assert_eq!(step(2, &Strategy::Recreate, "0000000002", &[], &Gates::default()).new, 2);
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
        let s = step(n, &strategy, "0000000002", &view, &Gates::default());
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

#[test]
fn a_paused_rollout_freezes_where_it_is() {
    let paused = Gates { paused: true, disruptions: None };
    // Mid-rollout: new indices 0 and 2 seen (1 lost), old 3..10 running, 0..3 gone.
    let mut view: Vec<Copy> = (3..10).map(|i| copy("0000000001", i, true)).collect();
    view.extend([copy("0000000002", 0, true), copy("0000000002", 2, false)]);
    let s = step(10, &rolling(1, 0), "0000000002", &view, &paused);
    assert_eq!(s.new, 3, "indices up to the highest seen stay wanted, the lost one included");
    assert_eq!(s.keep_old.len(), 7, "no old copy goes while paused");
    // A template changed while paused starts nothing.
    let old: Vec<Copy> = (0..10).map(|i| copy("0000000001", i, true)).collect();
    let s = step(10, &rolling(1, 0), "0000000003", &old, &paused);
    assert_eq!((s.new, s.keep_old.len()), (0, 10));
}

#[test]
fn a_disruption_budget_limits_how_many_ready_copies_go_at_once() {
    let old: Vec<Copy> = (0..10).map(|i| copy("0000000001", i, true)).collect();
    let open = step(10, &rolling(0, 3), "0000000002", &old, &Gates::default());
    assert_eq!(open.keep_old.len(), 7);
    let budget = Gates { paused: false, disruptions: Some(1) };
    let held = step(10, &rolling(0, 3), "0000000002", &old, &budget);
    assert_eq!(held.keep_old.len(), 9, "the budget lets one go");
    let none = Gates { paused: false, disruptions: Some(0) };
    assert_eq!(step(10, &rolling(0, 3), "0000000002", &old, &none).keep_old.len(), 10);
    // Unready old copies count for nothing: they go whatever the budget says.
    let mut view = old.clone();
    view[9].ready = false;
    assert_eq!(step(10, &rolling(0, 3), "0000000002", &view, &none).keep_old.len(), 9);
}

fn deployment(image: &str, limit: u32) -> Workload {
    let mut w = crate::testkit::workload(1, 3);
    w.template.containers[0].image = image.into();
    w.rollout.revision_history_limit = limit;
    w
}

#[test]
fn history_numbers_revisions_and_keeps_the_newest() {
    let mut v1 = deployment("v1", 2);
    carry_history(None, &mut v1);
    assert_eq!((v1.rollout.revision, v1.rollout.history.len()), (1, 0));
    // The same template again (a rewrite, a scale) keeps the number.
    let mut scaled = deployment("v1", 2);
    scaled.replicas = 5;
    carry_history(Some(&v1), &mut scaled);
    assert_eq!(scaled.rollout.revision, 1);
    let mut v2 = deployment("v2", 2);
    carry_history(Some(&scaled), &mut v2);
    let mut v3 = deployment("v3", 2);
    carry_history(Some(&v2), &mut v3);
    let mut v4 = deployment("v4", 2);
    carry_history(Some(&v3), &mut v4);
    assert_eq!(v4.rollout.revision, 4);
    let numbers: Vec<u64> = v4.rollout.history.iter().map(|r| r.number).collect();
    assert_eq!(numbers, vec![2, 3], "only the newest two are kept");
    // Undo to revision 2: its template comes back as revision 5, and leaves the history.
    let mut undo = v4.clone();
    undo.template = v4.rollout.history[0].template.clone();
    carry_history(Some(&v4), &mut undo);
    assert_eq!(undo.rollout.revision, 5);
    assert_eq!(undo.template.containers[0].image, "v2");
    let numbers: Vec<u64> = undo.rollout.history.iter().map(|r| r.number).collect();
    assert_eq!(numbers, vec![3, 4]);
}
