//! Claims: what a node says it runs, in its own gossip keys `claims.0`, `claims.1`, ….
//!
//! A claim is a pod key (`namespace/name`), the pod's template revision, whether its
//! containers run yet and since when (the claimant's clock, ms; it only breaks ties between
//! two running copies), its status as `peer get pods` shows it, and how many of its
//! containers are ready. Each key holds lines `R namespace/name revision since status
//! ready/all restarts ip avail` (running) or `P namespace/name revision 0 status ready/all
//! restarts ip avail` (pending; `ip` is `-` for a host-network pod or before it has one;
//! `avail` is `A` once the pod has been Ready for its Deployment's `minReadySeconds`, else
//! `N`; a line without it counts as available when Ready), at most
//! [`CHUNK_BYTES`] per key, so a node with many pods stays under the gossip key limit.
//! Claims only inform placement; they vanish with their node, which is what they mean.

use std::collections::BTreeMap;

/// What a node says of one pod it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimState {
    pub running: bool,
    pub revision: String,
    /// When the copy last started running (ms since the epoch on the claimant); 0 if pending.
    pub since_ms: u64,
    /// The STATUS column (Running, ContainerCreating, CrashLoopBackOff, …), one word.
    pub status: String,
    /// Ready containers and all containers; the pod is Ready when they are equal and not 0.
    pub ready: (u32, u32),
    /// Restarts of its containers, summed.
    pub restarts: u32,
    /// The pod's address (`None` for host-network pods).
    pub ip: Option<std::net::Ipv4Addr>,
    /// Ready for its Deployment's `minReadySeconds` (Kubernetes' "available").
    pub available: bool,
}

impl ClaimState {
    /// Kubernetes' Ready condition of the pod.
    pub fn is_ready(&self) -> bool {
        self.running && self.ready.1 > 0 && self.ready.0 == self.ready.1
    }
}

/// Pod key → its state.
pub type Claims = BTreeMap<String, ClaimState>;

pub const KEY_PREFIX: &str = "claims.";
pub const CHUNK_BYTES: usize = 12 * 1024;

/// The key values for `claims`, in key order (`claims.0` first). Never empty, so an empty
/// set of claims is published too.
pub fn encode(claims: &Claims) -> Vec<String> {
    let mut chunks = vec![String::new()];
    for (pod, c) in claims {
        let status =
            if c.status.is_empty() || c.status.contains(char::is_whitespace) { "-" } else { &c.status };
        let line = format!(
            "{} {pod} {} {} {status} {}/{} {} {} {}\n",
            if c.running { 'R' } else { 'P' },
            c.revision,
            c.since_ms,
            c.ready.0,
            c.ready.1,
            c.restarts,
            c.ip.map_or("-".to_owned(), |ip| ip.to_string()),
            if c.available { 'A' } else { 'N' },
        );
        let last = chunks.last_mut().expect("never empty");
        if !last.is_empty() && last.len() + line.len() > CHUNK_BYTES {
            chunks.push(line);
        } else {
            last.push_str(&line);
        }
    }
    chunks
}

/// The claims in a node's gossip keys; malformed lines are skipped.
pub fn decode(keys: &BTreeMap<String, String>) -> Claims {
    let mut claims = Claims::new();
    for (_, chunk) in keys.range(KEY_PREFIX.to_owned()..).take_while(|(k, _)| k.starts_with(KEY_PREFIX)) {
        for line in chunk.lines() {
            let parts: Vec<&str> = line.split(' ').collect();
            let (phase, pod, revision, since, status, ready, restarts, ip, avail) = match parts[..] {
                [phase, pod, revision, since, status, ready, restarts, ip] => {
                    (phase, pod, revision, since, status, ready, restarts, ip, None)
                }
                [phase, pod, revision, since, status, ready, restarts, ip, avail] => {
                    (phase, pod, revision, since, status, ready, restarts, ip, Some(avail))
                }
                _ => continue,
            };
            let ip = match ip {
                "-" => None,
                ip => match ip.parse() {
                    Ok(ip) => Some(ip),
                    Err(_) => continue,
                },
            };
            let (Ok(since_ms), Ok(restarts)) = (since.parse::<u64>(), restarts.parse::<u32>()) else {
                continue;
            };
            let Some(ready) =
                ready.split_once('/').and_then(|(r, a)| Some((r.parse().ok()?, a.parse().ok()?)))
            else {
                continue;
            };
            let running = match phase {
                "R" => true,
                "P" => false,
                _ => continue,
            };
            if !pod.is_empty() {
                let mut state = ClaimState {
                    running,
                    revision: revision.to_owned(),
                    since_ms,
                    status: status.to_owned(),
                    ready,
                    restarts,
                    ip,
                    available: false,
                };
                state.available = match avail {
                    None => state.is_ready(),
                    Some("A") => state.is_ready(),
                    Some("N") => false,
                    Some(_) => continue,
                };
                claims.insert(pod.to_owned(), state);
            }
        }
    }
    claims
}

pub fn key(i: usize) -> String {
    format!("{KEY_PREFIX}{i}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_chunks() {
        let claims: Claims = (0..2000)
            .map(|i| {
                let state = ClaimState {
                    running: i % 3 == 0,
                    revision: "abcdef0123".into(),
                    since_ms: i * 7,
                    status: if i % 3 == 0 { "Running" } else { "ContainerCreating" }.into(),
                    ready: (i as u32 % 2, 1),
                    restarts: i as u32 % 4,
                    ip: (i % 2 == 0).then(|| std::net::Ipv4Addr::new(10, 42, (i / 256) as u8, i as u8)),
                    available: i % 3 == 0 && i % 4 == 1,
                };
                (format!("default/web-abcdef0123-{i}"), state)
            })
            .collect();
        let chunks = encode(&claims);
        assert!(chunks.len() > 1);
        assert!(chunks.iter().all(|c| c.len() <= CHUNK_BYTES));
        let mut keys: BTreeMap<String, String> =
            chunks.into_iter().enumerate().map(|(i, c)| (key(i), c)).collect();
        keys.insert("node".into(), "{}".into());
        keys.insert("digest".into(), "00".into());
        assert_eq!(decode(&keys), claims);
        assert_eq!(encode(&Claims::new()), vec![String::new()]);
    }

    #[test]
    fn malformed_lines_are_skipped() {
        let text = "R default/a r1 5 Running 1/1 3 10.42.0.7\nX default/b r1 0 - 0/1 0 -\nP  r1 0 - 0/1 0 -\nnonsense\nR default/d r1 Running 1/1 0 -\nR default/e r1 x Running 1/1 0 -\nR default/f r1 1 Running 1/1 2 3 -\nR default/g r1 1 Running 1 0 -\nR default/h r1 1 Running 1/1 -1 -\nR default/i r1 1 Running 1/1 0 10.42.0\nP default/c r2 0 ImagePullBackOff 0/2 0 -\nR default/j r1 1 Running 1/1 0 - N\nR default/k r1 1 Running 1/1 0 - X\n";
        let keys = BTreeMap::from([(key(0), text.to_owned())]);
        let state = |running: bool, revision: &str, since_ms, status: &str, ready, restarts, ip| ClaimState {
            running,
            revision: revision.into(),
            since_ms,
            status: status.into(),
            ready,
            restarts,
            ip,
            available: running && ready.0 == ready.1,
        };
        let want = Claims::from([
            (
                "default/a".to_owned(),
                state(true, "r1", 5, "Running", (1, 1), 3, Some(std::net::Ipv4Addr::new(10, 42, 0, 7))),
            ),
            ("default/c".to_owned(), state(false, "r2", 0, "ImagePullBackOff", (0, 2), 0, None)),
            (
                "default/j".to_owned(),
                ClaimState { available: false, ..state(true, "r1", 1, "Running", (1, 1), 0, None) },
            ),
        ]);
        assert_eq!(decode(&keys), want);
    }
}
