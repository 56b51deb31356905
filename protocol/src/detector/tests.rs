//! The detector among several nodes on an in-memory network in virtual time: messages go
//! through the codec, take `latency` and are lost when a node is down or cut off.

use std::collections::{BTreeSet, VecDeque};

use super::*;

const STEP: Duration = Duration::from_millis(10);

struct Net {
    start: Instant,
    now: Instant,
    nodes: Vec<Detector>,
    peers: Vec<Peer>,
    down: BTreeSet<usize>,
    /// Pairs that cannot reach each other.
    cut: BTreeSet<(usize, usize)>,
    latency: Duration,
    queue: VecDeque<(Instant, usize, usize, Vec<u8>)>,
    sent_bytes: usize,
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 40_000 + i as u16))
}

fn name(i: usize) -> String {
    format!("n{i:02}")
}

impl Net {
    fn new(n: usize) -> Self {
        let start = Instant::now();
        let peers: Vec<Peer> =
            (0..n).map(|i| Peer { node_id: name(i), generation: 1, addr: addr(i) }).collect();
        let nodes = (0..n)
            .map(|i| {
                let mut d = Detector::new(DetectorConfig::default(), &name(i), 1, 7 + i as u64);
                d.set_members(&peers);
                d
            })
            .collect();
        Self {
            start,
            now: start,
            nodes,
            peers,
            down: BTreeSet::new(),
            cut: BTreeSet::new(),
            latency: Duration::from_millis(1),
            queue: VecDeque::new(),
            sent_bytes: 0,
        }
    }

    fn index(&self, a: SocketAddr) -> usize {
        self.peers.iter().position(|p| p.addr == a).unwrap()
    }

    fn step(&mut self) {
        self.now += STEP;
        while self.queue.front().is_some_and(|(at, ..)| *at <= self.now) {
            let (_, from, to, bytes) = self.queue.pop_front().unwrap();
            if self.down.contains(&to) || self.down.contains(&from) {
                continue;
            }
            let message = crate::codec::decode::<ProbeMessage>(&bytes, MAX_PROBE_BYTES).unwrap();
            let (from_addr, from_name) = (addr(from), self.peers[from].node_id.clone());
            self.nodes[to].receive(self.now, from_addr, &from_name, message);
        }
        for i in 0..self.nodes.len() {
            if self.down.contains(&i) {
                continue;
            }
            self.nodes[i].tick(self.now);
            for out in self.nodes[i].take_outgoing() {
                let bytes = crate::codec::encode(&out.message).unwrap();
                assert!(bytes.len() <= MAX_PROBE_BYTES, "{} bytes", bytes.len());
                self.sent_bytes += bytes.len();
                let to = self.index(out.to);
                if !self.cut.contains(&(i.min(to), i.max(to))) {
                    self.queue.push_back((self.now + self.latency, i, to, bytes));
                }
            }
            self.nodes[i].take_closed();
        }
    }

    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.step();
        }
    }

    /// Steps until `done`, at most `limit`; returns the time taken.
    fn until(&mut self, limit: Duration, mut done: impl FnMut(&Net) -> bool) -> Option<Duration> {
        let from = self.now;
        while self.now - from <= limit {
            if done(self) {
                return Some(self.now - from);
            }
            self.step();
        }
        None
    }

    fn live_on(&self, i: usize) -> BTreeSet<String> {
        self.nodes[i].health().filter(|(_, _, h)| h.is_live()).map(|(id, _, _)| id.to_owned()).collect()
    }

    fn all_live_except(&self, i: usize, missing: &[usize]) -> bool {
        let want: BTreeSet<String> =
            (0..self.nodes.len()).filter(|j| *j != i && !missing.contains(j)).map(name).collect();
        self.live_on(i) == want
    }

    fn healthy(&self, missing: &[usize]) -> bool {
        (0..self.nodes.len()).filter(|i| !missing.contains(i)).all(|i| self.all_live_except(i, missing))
    }
}

#[test]
fn members_start_live_and_are_watched_by_their_ring_predecessors() {
    let mut net = Net::new(6);
    assert!(net.healthy(&[]), "members learned from gossip start live");
    // Each node pings exactly its two ring successors: n05 watches n00 and n01.
    assert_eq!(net.nodes[5].watched(), ["n00", "n01"].map(String::from).into());
    assert_eq!(net.nodes[1].watched(), ["n02", "n03"].map(String::from).into());
    let before = net.sent_bytes;
    net.run_for(Duration::from_secs(10));
    assert!(net.healthy(&[]), "a false death without failures");
    // Two pings per node per second, each answered: bytes do not depend on the cluster size.
    let per_node_per_s = (net.sent_bytes - before) as f64 / 6.0 / 10.0;
    eprintln!("{per_node_per_s} probe payload bytes per node per second");
    assert!(per_node_per_s < 250.0, "{per_node_per_s} probe bytes per node per second");
    assert!(net.start < net.now);
}

#[test]
fn a_killed_node_is_dead_everywhere_within_two_seconds_whatever_the_phase() {
    let mut worst = Duration::ZERO;
    for (victim, offset_ms) in [(0, 0), (3, 130), (7, 470), (4, 990), (9, 620)] {
        let mut net = Net::new(10);
        net.run_for(Duration::from_secs(2) + Duration::from_millis(offset_ms));
        assert!(net.healthy(&[]));
        net.down.insert(victim);
        let took = net
            .until(Duration::from_secs(3), |n| {
                (0..10).filter(|i| *i != victim).all(|i| n.all_live_except(i, &[victim]))
            })
            .unwrap_or_else(|| panic!("n{victim:02} still live somewhere after 3 s"));
        worst = worst.max(took);
        for i in (0..10).filter(|i| *i != victim) {
            let h = net.nodes[i].health().find(|(id, ..)| *id == name(victim)).unwrap().2;
            assert_eq!(h, Health::Dead, "on n{i:02}");
        }
    }
    eprintln!("worst detection {worst:?}");
    assert!(worst <= Duration::from_secs(2), "detection took {worst:?}");
}

#[test]
fn a_path_failure_between_two_nodes_is_not_a_death() {
    let mut net = Net::new(5);
    net.run_for(Duration::from_secs(1));
    // n0 watches n1; their direct path breaks, the others still reach both.
    net.cut.insert((0, 1));
    net.run_for(Duration::from_secs(10));
    assert!(net.healthy(&[]), "indirect probes should have kept n01 alive");
}

#[test]
fn a_suspected_node_refutes_and_stays_live() {
    let mut net = Net::new(4);
    net.run_for(Duration::from_secs(1));
    // Everyone hears that n02 is suspect, but n02 is running: it refutes.
    let rumor = Rumor { node_id: name(2), generation: 1, incarnation: 0, kind: RumorKind::Suspect };
    for i in [0, 1, 3] {
        net.nodes[i].receive(
            net.now,
            addr(0),
            &name(0),
            ProbeMessage::Rumors { rumors: vec![rumor.clone()] },
        );
    }
    net.nodes[2].receive(net.now, addr(0), &name(0), ProbeMessage::Rumors { rumors: vec![rumor] });
    assert_eq!(net.nodes[2].me().incarnation, 1);
    net.run_for(Duration::from_secs(2));
    assert!(net.healthy(&[]), "a refuted suspicion ended in a death");
}

#[test]
fn a_healed_partition_and_a_restart_bring_nodes_back() {
    let mut net = Net::new(6);
    net.run_for(Duration::from_secs(1));
    let (left, right) = ([0, 1, 2], [3, 4, 5]);
    for a in left {
        for b in right {
            net.cut.insert((a, b));
        }
    }
    net.until(Duration::from_secs(3), |n| {
        left.iter().all(|i| n.all_live_except(*i, &right))
            && right.iter().all(|i| n.all_live_except(*i, &left))
    })
    .expect("each side sees the other dead");
    net.cut.clear();
    let healed = net.until(Duration::from_secs(20), |n| n.healthy(&[])).expect("the partition heals");
    eprintln!("healed after {healed:?}");
    assert!(healed <= Duration::from_secs(10), "healing took {healed:?}");

    // n04 restarts: a new generation, learned from gossip, confirmed by its answer.
    net.down.insert(4);
    net.until(Duration::from_secs(3), |n| n.healthy(&[4])).expect("n04 seen dead");
    net.peers[4].generation = 2;
    net.nodes[4] = Detector::new(DetectorConfig::default(), &name(4), 2, 99);
    let peers = net.peers.clone();
    for d in &mut net.nodes {
        d.set_members(&peers);
    }
    net.down.remove(&4);
    net.until(Duration::from_secs(2), |n| n.healthy(&[])).expect("the new generation is live everywhere");
    assert!(net.nodes[0].is_live(&name(4), 2) && !net.nodes[0].is_live(&name(4), 1));
}

#[test]
fn a_joining_node_takes_published_verdicts_and_only_ring_predecessors_recheck_the_dead() {
    let mut net = Net::new(8);
    net.run_for(Duration::from_secs(1));
    net.down.insert(5);
    net.until(Duration::from_secs(3), |n| n.healthy(&[5])).expect("n05 seen dead");
    let verdicts = net.nodes[0].dead_verdicts();
    assert_eq!(verdicts.len(), 1);
    let published = encode_verdicts(&verdicts, 16 * 1024);
    assert_eq!(parse_verdicts(&published), verdicts);
    // n03 and n04 come before n05 on the ring of the 7 live nodes: only they ping it.
    let pings_to_dead = |net: &Net| -> Vec<usize> {
        (0..8).filter(|i| net.nodes[*i].rechecked().contains(&name(5).as_str())).collect()
    };
    assert_eq!(pings_to_dead(&net), vec![3, 4]);

    // A node restarted with no memory learns the members from gossip: it would take n05
    // for alive (and nobody would ever probe it for it: n05 is in no other node's ring),
    // but the verdicts others publish say otherwise.
    let mut fresh = Detector::new(DetectorConfig::default(), &name(0), 2, 5);
    fresh.set_members(&net.peers);
    assert!(fresh.is_live(&name(5), 1));
    fresh.apply_verdicts(net.now, &parse_verdicts(&published));
    assert!(!fresh.is_live(&name(5), 1));
    // A stale verdict about a node that runs is refuted by that node.
    let before = net.nodes[2].me().incarnation;
    let stale = Rumor { node_id: name(2), generation: 1, incarnation: before, kind: RumorKind::Dead };
    net.nodes[2].apply_verdicts(net.now, &[stale]);
    assert_eq!(net.nodes[2].me().incarnation, before + 1);
    // Malformed published values are skipped, never a panic.
    assert_eq!(parse_verdicts("n1 @ n2@x.1 n3@1 n4@1.2.3 @1.1"), vec![]);
    assert_eq!(encode_verdicts(&verdicts, 5), "");
}

#[test]
fn hostile_or_misaddressed_messages_change_nothing() {
    let mut net = Net::new(3);
    net.run_for(Duration::from_secs(1));
    let now = net.now;
    // n1 claims to be n2 and says n2 is dead at a huge incarnation: dropped (not from n2),
    // and a rumor about an unknown node is ignored.
    let lie = ProbeMessage::Ping {
        seq: 1,
        from: Ident { node_id: name(2), generation: 1, incarnation: 9 },
        rumors: vec![],
    };
    net.nodes[0].receive(now, addr(1), &name(1), lie);
    let unknown = Rumor { node_id: "ghost".into(), generation: 1, incarnation: 0, kind: RumorKind::Alive };
    net.nodes[0].receive(now, addr(1), &name(1), ProbeMessage::Rumors { rumors: vec![unknown] });
    // A ping request for a node this node does not know, or for the requester itself.
    net.nodes[0].receive(
        now,
        addr(1),
        &name(1),
        ProbeMessage::PingReq { seq: 5, target: "ghost".into(), generation: 1 },
    );
    net.nodes[0].receive(
        now,
        addr(1),
        &name(1),
        ProbeMessage::PingReq { seq: 6, target: name(1), generation: 1 },
    );
    assert!(net.nodes[0].take_outgoing().is_empty());
    assert_eq!(net.live_on(0), BTreeSet::from([name(1), name(2)]));
    // Bytes that are not a probe message are an error, never a panic.
    for bad in [&[0xff_u8; 3][..], &[], &[0, 1]] {
        assert!(crate::codec::decode::<ProbeMessage>(bad, MAX_PROBE_BYTES).is_err());
    }
    let long = crate::codec::encode(&ProbeMessage::Rumors {
        rumors: vec![
            Rumor { node_id: "x".repeat(60), generation: 1, incarnation: 1, kind: RumorKind::Dead };
            20
        ],
    })
    .unwrap();
    assert!(crate::codec::decode::<ProbeMessage>(&long, MAX_PROBE_BYTES).is_err(), "over the size limit");
}

#[test]
fn probe_decoding_refuses_hostile_truncated_and_trailing_bytes() {
    use crate::codec::{decode, encode, CodecError};
    let ping = ProbeMessage::Ping {
        seq: 7,
        from: Ident { node_id: name(1), generation: 1_764_000_000_000, incarnation: 2 },
        rumors: vec![Rumor { node_id: name(2), generation: 3, incarnation: 1, kind: RumorKind::Suspect }],
    };
    let bytes = encode(&ping).unwrap();
    assert_eq!(decode::<ProbeMessage>(&bytes, MAX_PROBE_BYTES).unwrap(), ping);
    for cut in 0..bytes.len() {
        assert!(decode::<ProbeMessage>(&bytes[..cut], MAX_PROBE_BYTES).is_err(), "cut at {cut}");
    }
    let mut long = bytes.clone();
    long.push(0);
    assert!(matches!(
        decode::<ProbeMessage>(&long, MAX_PROBE_BYTES),
        Err(CodecError::TrailingBytes { trailing: 1 })
    ));
    // Ping, seq 7, then a node id claiming 2^64 - 1 bytes (varint 0xff + u64 max).
    let mut hostile = vec![0u8, 7, 0xff];
    hostile.extend_from_slice(&u64::MAX.to_le_bytes());
    assert!(decode::<ProbeMessage>(&hostile, MAX_PROBE_BYTES).is_err());
    // A rumor list claiming 2^32 entries in a 20-byte message.
    let mut many = encode(&ProbeMessage::Rumors { rumors: vec![] }).unwrap();
    many.truncate(1);
    many.extend_from_slice(&[0xfc, 0xff, 0xff, 0xff, 0xff]);
    assert!(decode::<ProbeMessage>(&many, MAX_PROBE_BYTES).is_err());
}

proptest::proptest! {
    #[test]
    fn random_probe_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
        let _ = crate::codec::decode::<ProbeMessage>(&bytes, MAX_PROBE_BYTES);
    }
}
