//! Claims: what a node says it runs, in its own gossip keys `claims.0`, `claims.1`, ….
//!
//! A claim is a pod key (`namespace/name`), the pod's template revision, whether its
//! containers run yet and since when (the claimant's clock, ms; it only breaks ties between
//! two running copies). Each key holds lines `R namespace/name revision since` (running)
//! or `P namespace/name revision 0` (pending), at most
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
        let line = format!("{} {pod} {} {}\n", if c.running { 'R' } else { 'P' }, c.revision, c.since_ms);
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
            let mut parts = line.split(' ');
            let fields = (parts.next(), parts.next(), parts.next(), parts.next(), parts.next());
            let (Some(phase), Some(pod), Some(revision), Some(since), None) = fields else {
                continue;
            };
            let Ok(since_ms) = since.parse::<u64>() else { continue };
            let running = match phase {
                "R" => true,
                "P" => false,
                _ => continue,
            };
            if !pod.is_empty() {
                claims
                    .insert(pod.to_owned(), ClaimState { running, revision: revision.to_owned(), since_ms });
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
                let state =
                    ClaimState { running: i % 3 == 0, revision: "abcdef0123".into(), since_ms: i * 7 };
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
        let text = "R default/a r1 5\nX default/b r1 0\nP  r1 0\nnonsense\nR default/d r1\nR default/e r1 x\nR default/f r1 1 2\nP default/c r2 0\n";
        let keys = BTreeMap::from([(key(0), text.to_owned())]);
        let state = |running: bool, revision: &str, since_ms| ClaimState {
            running,
            revision: revision.into(),
            since_ms,
        };
        let want = Claims::from([
            ("default/a".to_owned(), state(true, "r1", 5)),
            ("default/c".to_owned(), state(false, "r2", 0)),
        ]);
        assert_eq!(decode(&keys), want);
    }
}
