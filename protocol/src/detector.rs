//! Failure detection: SWIM-style probes (Das, Gupta, Motivala 2002) on a ring of monitors,
//! as a pure state machine. [`crate::membership`] drives it over QUIC datagrams.
//!
//! Why not chitchat's own detector: chitchat learns liveness from heartbeats inside full
//! digests (≈ 29 B per node) sent 3× per round, so fast detection costs O(N) bytes per
//! message and O(N²) for the cluster. Here each node pings the `monitors` nodes that follow it
//! on the ring of live node ids once per `probe_interval` each: O(1) bytes per node whatever
//! the cluster size, and every node has `monitors` watchers at fixed intervals, so the time to
//! the first failed probe is bounded (not a random draw as with SWIM's random targets).
//!
//! One probe: `Ping` → `Ack` within `ack_timeout`; otherwise the same ping again plus
//! `PingReq` to up to `indirect_helpers` live nodes, which ping the target and relay its
//! `Ack` (a path problem between two nodes is not a death); no answer within
//! `indirect_timeout` more → the target is *suspect*: the suspicion goes to every member and
//! to the target itself. A suspect that is alive refutes by raising its incarnation and
//! telling everyone; one that does not within `suspicion_timeout` is *dead* on every node
//! that heard the suspicion (and the suspecting node tells everyone again).
//!
//! Rules (PROTOCOL.md, "Membership and failure detection"):
//! - A member learned from gossip starts alive, unless a published verdict says it is dead
//!   (every node publishes the members it holds dead in its gossip keys, see
//!   [`Detector::dead_verdicts`]; a joining node gets them with the rest of the state, and
//!   they repair a lost death announcement). A member wrongly taken for alive is in some
//!   node's ring and is probed like any other.
//! - Rumors about a member order by (generation, incarnation); within one, dead beats
//!   suspect beats alive, and only the member itself raises its incarnation (refutation).
//! - A dead member is pinged again by its `monitors` ring predecessors only (not by every
//!   node: a dial to a dead address costs a QUIC Initial of 1,200 bytes), with a back-off
//!   of 1 s doubling to 8 s, carrying the news of its death: a partition that heals, or a
//!   false death, ends in a refutation.
//!
//! Time is passed in; nothing here sleeps, spawns or does I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The largest probe message a peer may send (one QUIC datagram fits in it).
pub const MAX_PROBE_BYTES: usize = 1200;
/// Rumors carried on one ping or ack.
const PIGGYBACK: usize = 4;
/// How long a rumor keeps riding on pings and acks after it changed something.
const RUMOR_LIFETIME: Duration = Duration::from_secs(3);
/// Back-off of pings to a dead member: first and last.
const RECHECK: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(8));

/// How the detector probes; [`DetectorConfig::default`] is tuned for ≤ 2 s detection.
#[derive(Debug, Clone)]
pub struct DetectorConfig {
    /// How often each monitor pings each node it watches.
    pub probe_interval: Duration,
    /// How many nodes watch each node: the node's predecessors on the ring of node ids.
    pub monitors: usize,
    /// How long a direct ping may take.
    pub ack_timeout: Duration,
    /// How long the indirect pings may take after that.
    pub indirect_timeout: Duration,
    /// Nodes asked to ping the target when a direct ping failed.
    pub indirect_helpers: usize,
    /// How long a suspect has to refute before it is dead.
    pub suspicion_timeout: Duration,
}

impl Default for DetectorConfig {
    /// Worst case from a death to every node knowing it: a probe interval until the next
    /// ping (less with two monitors), then 150 + 200 ms of probing and 400 ms of suspicion
    /// (≈ 1.75 s); the median is nearer 1 s.
    fn default() -> Self {
        Self {
            probe_interval: Duration::from_secs(1),
            monitors: 2,
            ack_timeout: Duration::from_millis(150),
            indirect_timeout: Duration::from_millis(200),
            indirect_helpers: 2,
            suspicion_timeout: Duration::from_millis(400),
        }
    }
}

/// A node process as probes name it: a restart is a new generation; the incarnation is
/// raised by the node itself to refute a suspicion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ident {
    pub node_id: String,
    pub generation: u64,
    pub incarnation: u64,
}

/// What a rumor says about a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RumorKind {
    Alive,
    Suspect,
    Dead,
}

/// News about one member, spread on pings and acks and sent to all on a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rumor {
    pub node_id: String,
    pub generation: u64,
    pub incarnation: u64,
    pub kind: RumorKind,
}

/// A probe message (one QUIC datagram).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProbeMessage {
    Ping {
        seq: u32,
        from: Ident,
        rumors: Vec<Rumor>,
    },
    Ack {
        seq: u32,
        from: Ident,
        rumors: Vec<Rumor>,
    },
    /// Please ping `target` (a member both know) and relay its ack.
    PingReq {
        seq: u32,
        target: String,
        generation: u64,
    },
    /// The relayed ack of a `PingReq`.
    IndirectAck {
        seq: u32,
        target: Ident,
    },
    /// A change everyone should hear about.
    Rumors {
        rumors: Vec<Rumor>,
    },
}

/// What the detector thinks of a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Alive,
    /// Failed a probe; live until the suspicion times out or is refuted.
    Suspect,
    Dead,
}

impl Health {
    /// Whether the member counts as live (alive or only suspected).
    pub fn is_live(self) -> bool {
        matches!(self, Health::Alive | Health::Suspect)
    }
}

/// A member as gossip describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub node_id: String,
    pub generation: u64,
    pub addr: SocketAddr,
}

#[derive(Debug)]
struct Member {
    generation: u64,
    addr: SocketAddr,
    incarnation: u64,
    health: Health,
    /// When the suspicion started; when it is ours, we announce the death too.
    suspect: Option<(Instant, bool)>,
    /// Next ping when this member is one we watch (or recheck while dead or unconfirmed).
    next_ping: Option<Instant>,
    recheck: Duration,
}

#[derive(Debug)]
struct Probe {
    target: String,
    generation: u64,
    sent: Instant,
    escalated: bool,
}

#[derive(Debug)]
struct Relay {
    requester: SocketAddr,
    their_seq: u32,
    expires: Instant,
}

/// A message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub to: SocketAddr,
    pub message: ProbeMessage,
    /// Whether to dial the peer when no connection is open. Only pings (and the ping
    /// requests that stand in for them) dial; news goes over the connections there are
    /// (a death announced to 50 members must not cost 50 handshakes at once), and the
    /// published verdicts carry it to the rest.
    pub dial: bool,
}

/// The detector of one node.
#[derive(Debug)]
pub struct Detector {
    config: DetectorConfig,
    me: Ident,
    members: BTreeMap<String, Member>,
    probes: BTreeMap<u32, Probe>,
    relays: BTreeMap<u32, Relay>,
    next_seq: u32,
    rumors: Vec<(Rumor, Instant)>,
    out: Vec<Outgoing>,
    /// Addresses whose connection should be dropped (the member restarted there).
    closed: Vec<SocketAddr>,
    changed: bool,
    rng: u64,
}

impl Detector {
    /// A detector for this node (`node_id`, `generation`), `seed` for its random choices.
    pub fn new(config: DetectorConfig, node_id: &str, generation: u64, seed: u64) -> Self {
        Self {
            config,
            me: Ident { node_id: node_id.to_owned(), generation, incarnation: 0 },
            members: BTreeMap::new(),
            probes: BTreeMap::new(),
            relays: BTreeMap::new(),
            next_seq: 0,
            rumors: Vec::new(),
            out: Vec::new(),
            closed: Vec::new(),
            changed: false,
            rng: seed | 1,
        }
    }

    /// This node as it names itself in probes.
    pub fn me(&self) -> &Ident {
        &self.me
    }

    /// The members and what the detector thinks of each, by node id.
    pub fn health(&self) -> impl Iterator<Item = (&str, u64, Health)> {
        self.members.iter().map(|(id, m)| (id.as_str(), m.generation, m.health))
    }

    /// The live members (alive or suspect) and their addresses, by node id.
    pub fn live_members(&self) -> impl Iterator<Item = (&str, SocketAddr)> {
        self.members.iter().filter(|(_, m)| m.health.is_live()).map(|(id, m)| (id.as_str(), m.addr))
    }

    /// Whether `node_id` at `generation` counts as live.
    pub fn is_live(&self, node_id: &str, generation: u64) -> bool {
        self.members.get(node_id).is_some_and(|m| m.generation == generation && m.health.is_live())
    }

    /// Whether the live set changed since the last call.
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// Messages to send, in order.
    pub fn take_outgoing(&mut self) -> Vec<Outgoing> {
        std::mem::take(&mut self.out)
    }

    /// Addresses of members that restarted (a new generation) since the last call.
    pub fn take_closed(&mut self) -> Vec<SocketAddr> {
        std::mem::take(&mut self.closed)
    }

    /// The members gossip knows (the newest generation of each node, without this node and
    /// nodes that left). New ones start alive; missing ones are forgotten.
    pub fn set_members(&mut self, peers: &[Peer]) {
        let known: BTreeSet<&str> = peers.iter().map(|p| p.node_id.as_str()).collect();
        let mut dropped_live = false;
        self.members.retain(|id, m| {
            let keep = known.contains(id.as_str());
            dropped_live |= !keep && m.health.is_live();
            keep
        });
        // A live member gossip no longer lists (it left) changes the live set.
        self.changed |= dropped_live;
        for p in peers {
            if p.node_id == self.me.node_id {
                continue;
            }
            match self.members.get_mut(&p.node_id) {
                Some(m) if m.generation > p.generation => {}
                Some(m) if m.generation == p.generation => m.addr = p.addr,
                current => {
                    if let Some(old) = current {
                        // A restart: the connection to the old process cannot reach the new
                        // one (it does not know the old connection's reset token).
                        self.closed.push(old.addr);
                    }
                    self.changed = true;
                    self.members.insert(
                        p.node_id.clone(),
                        Member {
                            generation: p.generation,
                            addr: p.addr,
                            incarnation: 0,
                            health: Health::Alive,
                            suspect: None,
                            next_ping: None,
                            recheck: RECHECK.0,
                        },
                    );
                }
            }
        }
    }

    /// The members this node holds dead, as rumors to publish (sorted by node id).
    pub fn dead_verdicts(&self) -> Vec<Rumor> {
        self.members
            .iter()
            .filter(|(_, m)| m.health == Health::Dead)
            .map(|(id, m)| Rumor {
                node_id: id.clone(),
                generation: m.generation,
                incarnation: m.incarnation,
                kind: RumorKind::Dead,
            })
            .collect()
    }

    /// Applies what other nodes published: their verdicts (one about this node is refuted)
    /// and their own incarnations (alive rumors about themselves, so a refutation reaches
    /// every node, not only those its announcement did).
    pub fn apply_verdicts(&mut self, now: Instant, verdicts: &[Rumor]) {
        self.apply_all(now, verdicts);
    }

    /// Handles a message from the peer at `addr` whose certificate names `node_id`. A
    /// message claiming to be from another node is dropped.
    pub fn receive(&mut self, now: Instant, addr: SocketAddr, node_id: &str, message: ProbeMessage) {
        match message {
            ProbeMessage::Ping { seq, from, rumors } => {
                if from.node_id != node_id {
                    return;
                }
                self.apply_all(now, &rumors);
                self.observe(now, &from);
                let rumors = self.piggyback(now, &from.node_id);
                self.send(addr, ProbeMessage::Ack { seq, from: self.me.clone(), rumors });
            }
            ProbeMessage::Ack { seq, from, rumors } => {
                if from.node_id != node_id {
                    return;
                }
                self.apply_all(now, &rumors);
                self.observe(now, &from);
                if let Some(relay) = self.relays.remove(&seq) {
                    self.send(
                        relay.requester,
                        ProbeMessage::IndirectAck { seq: relay.their_seq, target: from },
                    );
                } else if self.probes.get(&seq).is_some_and(|p| p.target == from.node_id) {
                    self.probes.remove(&seq);
                }
            }
            ProbeMessage::PingReq { seq, target, generation } => {
                // Only members this node knows itself, at the address gossip gave it.
                let Some(m) = self.members.get(&target) else { return };
                if m.generation != generation || target == node_id {
                    return;
                }
                let (to, mine) = (m.addr, self.seq());
                self.relays.insert(
                    mine,
                    Relay {
                        requester: addr,
                        their_seq: seq,
                        expires: now + self.config.indirect_timeout * 2,
                    },
                );
                let rumors = self.piggyback(now, &target);
                self.send(to, ProbeMessage::Ping { seq: mine, from: self.me.clone(), rumors });
            }
            ProbeMessage::IndirectAck { seq, target } => {
                if self.probes.get(&seq).is_some_and(|p| p.target == target.node_id) {
                    self.probes.remove(&seq);
                    self.observe(now, &target);
                }
            }
            ProbeMessage::Rumors { rumors } => self.apply_all(now, &rumors),
        }
    }

    /// Advances time: probe and suspicion timeouts, then the pings that are due.
    pub fn tick(&mut self, now: Instant) {
        self.rumors.retain(|(_, at)| now.saturating_duration_since(*at) < RUMOR_LIFETIME);
        self.relays.retain(|_, r| r.expires > now);
        self.expire_suspicions(now);
        self.expire_probes(now);
        self.ping_due(now);
    }

    fn expire_suspicions(&mut self, now: Instant) {
        let timeout = self.config.suspicion_timeout;
        let dead: Vec<(String, bool)> = self
            .members
            .iter()
            .filter_map(|(id, m)| match (m.health, m.suspect) {
                (Health::Suspect, Some((since, ours))) if now.saturating_duration_since(since) >= timeout => {
                    Some((id.clone(), ours))
                }
                _ => None,
            })
            .collect();
        for (id, ours) in dead {
            let Some(m) = self.members.get(&id) else { continue };
            let rumor = Rumor {
                node_id: id.clone(),
                generation: m.generation,
                incarnation: m.incarnation,
                kind: RumorKind::Dead,
            };
            self.apply(now, &rumor);
            if ours {
                self.broadcast(now, rumor, None);
            }
        }
    }

    fn expire_probes(&mut self, now: Instant) {
        let (ack, indirect) = (self.config.ack_timeout, self.config.indirect_timeout);
        let due: Vec<u32> = self
            .probes
            .iter()
            .filter(|(_, p)| {
                now.saturating_duration_since(p.sent) >= if p.escalated { ack + indirect } else { ack }
            })
            .map(|(seq, _)| *seq)
            .collect();
        for seq in due {
            let Some(p) = self.probes.get_mut(&seq) else { continue };
            if !p.escalated {
                p.escalated = true;
                let (target, generation) = (p.target.clone(), p.generation);
                self.escalate(now, seq, &target, generation);
                continue;
            }
            let Some(p) = self.probes.remove(&seq) else { continue };
            self.probe_failed(now, &p);
        }
    }

    /// The direct ping got no answer: once more directly, and through helpers.
    fn escalate(&mut self, now: Instant, seq: u32, target: &str, generation: u64) {
        let Some(addr) = self.members.get(target).map(|m| m.addr) else { return };
        let rumors = self.piggyback(now, target);
        self.send(addr, ProbeMessage::Ping { seq, from: self.me.clone(), rumors });
        let mut helpers: Vec<SocketAddr> = self
            .members
            .iter()
            .filter(|(id, m)| id.as_str() != target && m.health == Health::Alive)
            .map(|(_, m)| m.addr)
            .collect();
        for _ in 0..self.config.indirect_helpers.min(helpers.len()) {
            let i = (self.random() % helpers.len() as u64) as usize;
            let helper = helpers.swap_remove(i);
            self.send(helper, ProbeMessage::PingReq { seq, target: target.to_owned(), generation });
        }
    }

    fn probe_failed(&mut self, now: Instant, p: &Probe) {
        let Some(m) = self.members.get_mut(&p.target) else { return };
        if m.generation != p.generation {
            return;
        }
        match m.health {
            Health::Alive => {
                m.health = Health::Suspect;
                m.suspect = Some((now, true));
                let rumor = Rumor {
                    node_id: p.target.clone(),
                    generation: m.generation,
                    incarnation: m.incarnation,
                    kind: RumorKind::Suspect,
                };
                let target = m.addr;
                self.remember(now, rumor.clone());
                self.broadcast(now, rumor, Some(target));
            }
            Health::Dead => {
                // Still not answering: checked again with a back-off.
                m.next_ping = Some(now + m.recheck);
                m.recheck = (m.recheck * 2).min(RECHECK.1);
            }
            Health::Suspect => {}
        }
    }

    /// Pings the watched members whose interval is up, and the dead ones this node
    /// rechecks whose back-off is up.
    fn ping_due(&mut self, now: Instant) {
        let watched = self.watched();
        let rechecked: BTreeSet<String> = self.rechecked().into_iter().map(str::to_owned).collect();
        let busy: BTreeSet<String> = self.probes.values().map(|p| p.target.clone()).collect();
        let interval = self.config.probe_interval;
        let mut due = Vec::new();
        for (id, m) in &mut self.members {
            let watching = watched.contains(id.as_str());
            match m.health {
                Health::Alive | Health::Suspect if !watching => m.next_ping = None,
                Health::Alive | Health::Suspect if m.next_ping.is_none() => {
                    // Newly watched: spread the first ping over the interval.
                    let jitter = interval.mul_f64((self.rng % 1000) as f64 / 1000.0);
                    self.rng = splitmix(self.rng);
                    m.next_ping = Some(now + jitter);
                }
                Health::Dead if !rechecked.contains(id.as_str()) => continue,
                _ => {}
            }
            if m.next_ping.is_some_and(|at| at <= now) && !busy.contains(id) {
                due.push(id.clone());
                m.next_ping = match m.health {
                    Health::Alive | Health::Suspect => Some(now + interval),
                    // Rescheduled by the probe's outcome.
                    Health::Dead => None,
                };
            }
        }
        for id in due {
            self.ping(now, &id);
        }
    }

    fn ping(&mut self, now: Instant, target: &str) {
        let Some(m) = self.members.get(target) else { return };
        let (addr, generation) = (m.addr, m.generation);
        let seq = self.seq();
        self.probes.insert(seq, Probe { target: target.to_owned(), generation, sent: now, escalated: false });
        let rumors = self.piggyback(now, target);
        self.send(addr, ProbeMessage::Ping { seq, from: self.me.clone(), rumors });
    }

    /// The members this node watches: the next `monitors` live ones after it on the ring
    /// of node ids.
    fn watched(&self) -> BTreeSet<String> {
        let live: Vec<&String> =
            self.members.iter().filter(|(_, m)| m.health.is_live()).map(|(id, _)| id).collect();
        let start = live.partition_point(|id| id.as_str() < self.me.node_id.as_str());
        (0..self.config.monitors.min(live.len())).map(|i| live[(start + i) % live.len()].clone()).collect()
    }

    /// The dead members this node rechecks: those it would watch if they were live, i.e.
    /// it is among the `monitors` ring nodes (itself included) before them.
    fn rechecked(&self) -> Vec<&str> {
        let mut ring: Vec<&str> =
            self.members.iter().filter(|(_, m)| m.health.is_live()).map(|(id, _)| id.as_str()).collect();
        ring.push(self.me.node_id.as_str());
        ring.sort_unstable();
        let k = self.config.monitors.min(ring.len());
        self.members
            .iter()
            .filter(|(_, m)| m.health == Health::Dead)
            .map(|(id, _)| id.as_str())
            .filter(|dead| {
                // The k ring nodes before `dead`, wrapping around.
                let at = ring.partition_point(|id| id < dead);
                (1..=k).any(|i| ring[(at + ring.len() - i) % ring.len()] == self.me.node_id)
            })
            .collect()
    }

    /// A direct message from `from` proves that process is running.
    fn observe(&mut self, now: Instant, from: &Ident) {
        let Some(m) = self.members.get_mut(&from.node_id) else { return };
        if from.generation < m.generation {
            return;
        }
        if from.generation > m.generation || from.incarnation > m.incarnation {
            let rumor = Rumor {
                node_id: from.node_id.clone(),
                generation: from.generation,
                incarnation: from.incarnation,
                kind: RumorKind::Alive,
            };
            let was_dead = m.health == Health::Dead;
            self.apply(now, &rumor);
            if was_dead {
                // Back from the dead (a healed partition, a refuted death): tell the rest.
                self.broadcast(now, rumor, None);
            }
        }
    }

    fn apply_all(&mut self, now: Instant, rumors: &[Rumor]) {
        for r in rumors {
            self.apply(now, r);
        }
    }

    /// Applies a rumor by SWIM's precedence; returns whether it changed anything.
    fn apply(&mut self, now: Instant, r: &Rumor) -> bool {
        if r.node_id == self.me.node_id {
            if r.generation == self.me.generation
                && r.kind != RumorKind::Alive
                && r.incarnation >= self.me.incarnation
            {
                // Refute: only this node raises its own incarnation.
                self.me.incarnation = r.incarnation + 1;
                let alive = Rumor {
                    node_id: self.me.node_id.clone(),
                    generation: self.me.generation,
                    incarnation: self.me.incarnation,
                    kind: RumorKind::Alive,
                };
                self.remember(now, alive.clone());
                // Those that think this node dead hear it in its answer to their next
                // recheck ping.
                self.broadcast(now, alive, None);
            }
            return false;
        }
        let Some(m) = self.members.get_mut(&r.node_id) else { return false };
        if r.generation < m.generation {
            return false;
        }
        let newer_generation = r.generation > m.generation;
        let takes = newer_generation
            || match r.kind {
                RumorKind::Alive => r.incarnation > m.incarnation,
                RumorKind::Suspect => match m.health {
                    Health::Alive => r.incarnation >= m.incarnation,
                    Health::Suspect | Health::Dead => r.incarnation > m.incarnation,
                },
                RumorKind::Dead => {
                    (m.health != Health::Dead && r.incarnation >= m.incarnation)
                        || r.incarnation > m.incarnation
                }
            };
        if !takes {
            return false;
        }
        let was_live = m.health.is_live();
        m.generation = r.generation;
        m.incarnation = r.incarnation;
        m.health = match r.kind {
            RumorKind::Alive => Health::Alive,
            RumorKind::Suspect => Health::Suspect,
            RumorKind::Dead => Health::Dead,
        };
        m.suspect = (r.kind == RumorKind::Suspect).then_some((now, false));
        m.recheck = RECHECK.0;
        m.next_ping = (r.kind == RumorKind::Dead).then_some(now + RECHECK.0);
        if was_live != m.health.is_live() || newer_generation {
            self.changed = true;
        }
        self.remember(now, r.clone());
        true
    }

    /// Keeps a rumor riding on pings and acks for a while.
    fn remember(&mut self, now: Instant, r: Rumor) {
        self.rumors.retain(|(old, _)| old.node_id != r.node_id);
        self.rumors.push((r, now));
    }

    /// Rumors for a message to `to`: first what this node thinks of `to` itself when that
    /// is bad news (so it can refute), then the newest others.
    fn piggyback(&self, _now: Instant, to: &str) -> Vec<Rumor> {
        let mut out = Vec::new();
        if let Some(m) = self.members.get(to) {
            if matches!(m.health, Health::Suspect | Health::Dead) {
                out.push(Rumor {
                    node_id: to.to_owned(),
                    generation: m.generation,
                    incarnation: m.incarnation,
                    kind: if m.health == Health::Dead { RumorKind::Dead } else { RumorKind::Suspect },
                });
            }
        }
        for (r, _) in self.rumors.iter().rev() {
            if out.len() >= PIGGYBACK {
                break;
            }
            if r.node_id != to {
                out.push(r.clone());
            }
        }
        out
    }

    /// Sends a rumor to every live member (and to `also`).
    fn broadcast(&mut self, _now: Instant, rumor: Rumor, also: Option<SocketAddr>) {
        let mut to: BTreeSet<SocketAddr> =
            self.members.values().filter(|m| m.health.is_live()).map(|m| m.addr).collect();
        to.extend(also);
        for addr in to {
            self.send(addr, ProbeMessage::Rumors { rumors: vec![rumor.clone()] });
        }
    }

    fn send(&mut self, to: SocketAddr, message: ProbeMessage) {
        let dial = !matches!(message, ProbeMessage::Rumors { .. });
        self.out.push(Outgoing { to, message, dial });
    }

    fn seq(&mut self) -> u32 {
        self.next_seq = self.next_seq.wrapping_add(1);
        self.next_seq
    }

    fn random(&mut self) -> u64 {
        self.rng = splitmix(self.rng);
        self.rng
    }
}

/// Verdicts as a gossip value: `node@generation.incarnation`, space-separated, cut at
/// `max_bytes` (a node that misses a verdict probes or hears the member itself).
pub fn encode_verdicts(verdicts: &[Rumor], max_bytes: usize) -> String {
    let mut out = String::new();
    for v in verdicts.iter().filter(|v| v.kind == RumorKind::Dead) {
        let item = format!("{}@{}.{}", v.node_id, v.generation, v.incarnation);
        if out.len() + item.len() + 1 > max_bytes {
            break;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&item);
    }
    out
}

/// Reads verdicts published by a peer; malformed items are skipped (peer bytes are data).
pub fn parse_verdicts(value: &str) -> Vec<Rumor> {
    value
        .split_ascii_whitespace()
        .filter_map(|item| {
            let (node_id, rest) = item.rsplit_once('@')?;
            if node_id.is_empty() {
                return None;
            }
            let (generation, incarnation) = rest.split_once('.')?;
            Some(Rumor {
                node_id: node_id.to_owned(),
                generation: generation.parse().ok()?,
                incarnation: incarnation.parse().ok()?,
                kind: RumorKind::Dead,
            })
        })
        .collect()
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // In tests a panic is the failure report.
mod tests;
