//! Tests of anti-entropy: diff, chunking, and whole rounds between random replicas.

use proptest::prelude::*;

use super::*;
use crate::desired::{Clock, NodeId};
use crate::testkit::{arb_state, key, stamp, workload};

/// Runs one round between `a` and `b` through the real codec; returns messages exchanged.
fn run_round(a: &mut DesiredState, b: &mut DesiredState) -> usize {
    let (mut sa, mut sb) = (SyncSession::start(a), SyncSession::start(b));
    let mut sent = 0;
    for _ in 0..1000 {
        let mut progressed = false;
        while let Some(m) = sa.poll_transmit() {
            let bytes = m.encode().expect("encodes");
            assert!(bytes.len() <= MAX_MESSAGE);
            sb.handle_message(b, SyncMessage::decode(&bytes).expect("decodes")).expect("valid");
            (sent, progressed) = (sent + 1, true);
        }
        while let Some(m) = sb.poll_transmit() {
            let bytes = m.encode().expect("encodes");
            sa.handle_message(a, SyncMessage::decode(&bytes).expect("decodes")).expect("valid");
            (sent, progressed) = (sent + 1, true);
        }
        if !progressed {
            break;
        }
    }
    assert!(sa.is_done() && sb.is_done(), "round must finish");
    sent
}

fn content(s: &DesiredState) -> (u64, Vec<(ObjectKey, Entry)>) {
    (s.digest(), s.entries().map(|(k, e)| (k.clone(), e.clone())).collect())
}

#[test]
fn equal_states_exchange_only_digests() {
    let mut a = DesiredState::new();
    a.put(workload(1, 1), &mut Clock::new(NodeId("a".into()), 1)).expect("small");
    let mut b = a.clone();
    assert_eq!(run_round(&mut a, &mut b), 2);
}

#[test]
fn diff_sends_newer_and_missing_and_skips_collected() {
    let mut a = DesiredState::new();
    let mut b = DesiredState::new();
    let e = |l, v| Entry { stamp: stamp(l, "a"), value: Some(workload(v, l as u32).into()) };
    a.merge_entry(key(1), e(5, 1), None).expect("ok");
    b.merge_entry(key(1), e(3, 1), None).expect("ok");
    a.merge_entry(key(2), e(1, 2), None).expect("ok");
    b.merge_entry(key(3), e(9, 3), None).expect("ok");
    let d = diff(&a, &summary(&b));
    assert_eq!(d, Diff { to_send: vec![key(1), key(2)], to_request: vec![key(3)] });
    // Once `b` has a floor above key 2's stamp, `a` must not send it (it was collected).
    b.raise_floor(Some(&stamp(2, "z")));
    assert_eq!(diff(&a, &summary(&b)).to_send, vec![key(1)]);
}

#[test]
fn large_states_are_chunked_under_the_message_cap() {
    let mut a = DesiredState::new();
    let mut c = Clock::new(NodeId("a".into()), 1);
    for i in 0..5 {
        let mut w = workload(i, 1);
        w.labels.insert("blob".into(), "x".repeat(400 * 1024));
        a.put(w, &mut c).expect("under the entry cap");
    }
    let keys: Vec<_> = a.entries().map(|(k, _)| k.clone()).collect();
    let msgs = entries_messages(&a, &keys).expect("encodes");
    assert_eq!(msgs.len(), 3);
    assert!(msgs.iter().all(|m| m.encode().expect("fits").len() <= MAX_MESSAGE));
    let mut b = DesiredState::new();
    run_round(&mut a, &mut b);
    assert_eq!(content(&a), content(&b));
}

#[test]
fn out_of_order_messages_end_the_round_with_an_error() {
    let mut a = DesiredState::new();
    let mut s = SyncSession::start(&a);
    let m = SyncMessage::Entries { gc_floor: None, entries: vec![], last: true };
    assert!(matches!(s.handle_message(&mut a, m), Err(SyncError::Unexpected { .. })));
    assert!(s.is_done());
}

#[test]
fn pushes_merge_and_reject_malformed_entries() {
    let mut a = DesiredState::new();
    let good = Entry { stamp: stamp(1, "b"), value: Some(workload(1, 1).into()) };
    let bad = Entry { stamp: stamp(1, "b"), value: Some(workload(2, 1).into()) };
    let SyncMessage::Push { gc_floor, entries } =
        push_message(&a, vec![(key(1), good.clone()), (key(3), bad), (key(1), good)])
    else {
        unreachable!("push_message builds a push")
    };
    let mut stats = MergeStats::default();
    merge_entries(&mut a, entries, gc_floor.as_ref(), &mut stats);
    assert_eq!(stats, MergeStats { changed: 1, unchanged: 1, rejected: 1, pruned: 0 });
}

proptest! {
    #[test]
    fn a_round_makes_two_random_replicas_equal_to_their_join(
        a in arb_state(true), b in arb_state(true),
    ) {
        let mut join = a.clone();
        join.merge(&b);
        let (mut a, mut b) = (a, b);
        run_round(&mut a, &mut b);
        prop_assert_eq!(content(&a), content(&b));
        prop_assert_eq!(content(&a), content(&join));
        prop_assert_eq!(a.gc_floor(), join.gc_floor());
    }
}
