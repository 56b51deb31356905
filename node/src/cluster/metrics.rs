//! Usage metrics: what a node's pods and the node itself use, in its own gossip keys
//! `metrics.0`, `metrics.1`, ….
//!
//! Every key starts with the line `T sampled_at_ms` (the sample's time on the publisher's
//! clock); `metrics.0` then has the node's line `N cpu_millis memory_bytes`, and the keys
//! hold one line per pod `namespace/name cpu_millis memory_bytes`, at most [`CHUNK_BYTES`]
//! per key. A reader takes only keys of the same sample as `metrics.0`, so a publish
//! seen half-way never mixes two samples. CPU is in millicores (the rate over the last
//! sampling interval), memory is the working set in bytes.
//!
//! A node republishes only when a value moved meaningfully ([`worth_publishing`]), or at
//! least every [`REFRESH_MS`] so readers can tell fresh values from a node that stopped
//! sampling. Metrics only inform `peer top` and autoscaling; they vanish with their node.

use std::collections::BTreeMap;

/// CPU and memory of a pod or node at one sample.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    /// Millicores used on average over the last sampling interval.
    pub cpu_millis: u64,
    /// Memory working set (Kubernetes' definition), bytes.
    pub memory_bytes: u64,
}

/// One node's sample as it publishes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metrics {
    /// When the sample was taken (ms since the epoch, the publisher's clock).
    pub sampled_at_ms: u64,
    pub node: Usage,
    /// Pod key (`namespace/name`) → the sum over its containers.
    pub pods: BTreeMap<String, Usage>,
}

pub const KEY_PREFIX: &str = "metrics.";
pub const CHUNK_BYTES: usize = 12 * 1024;

/// A node republishes unchanged values at least this often.
pub const REFRESH_MS: u64 = 30_000;

/// A CPU change smaller than this (millicores) and [`STEP_PERCENT`] is not republished.
const CPU_STEP_MILLIS: u64 = 5;
/// A memory change smaller than this and [`STEP_PERCENT`] is not republished.
const MEMORY_STEP_BYTES: u64 = 1 << 20;
/// Relative change (of the published value) below which a value is not republished: half
/// of the HPA's 10 % tolerance, so a published value is never far enough off to tip it.
const STEP_PERCENT: u64 = 5;

pub fn key(i: usize) -> String {
    format!("{KEY_PREFIX}{i}")
}

/// The key values for `metrics`, in key order (`metrics.0` first). Never empty.
pub fn encode(m: &Metrics) -> Vec<String> {
    let head = format!("T {}\n", m.sampled_at_ms);
    let mut chunks = vec![format!("{head}N {} {}\n", m.node.cpu_millis, m.node.memory_bytes)];
    for (pod, u) in &m.pods {
        if pod.is_empty() || pod.contains(char::is_whitespace) {
            continue;
        }
        let line = format!("{pod} {} {}\n", u.cpu_millis, u.memory_bytes);
        let last = chunks.last_mut().expect("never empty");
        if last.len() + line.len() > CHUNK_BYTES && last.len() > head.len() {
            chunks.push(format!("{head}{line}"));
        } else {
            last.push_str(&line);
        }
    }
    chunks
}

/// The metrics in a node's gossip keys; `None` without a well-formed `metrics.0`.
/// Malformed lines, and keys of another sample than `metrics.0`'s, are skipped.
pub fn decode(keys: &BTreeMap<String, String>) -> Option<Metrics> {
    let sample_time = |chunk: &str| chunk.lines().next()?.strip_prefix("T ")?.parse::<u64>().ok();
    let first = keys.get(&key(0))?;
    let sampled_at_ms = sample_time(first)?;
    let node = first.lines().nth(1)?.strip_prefix("N ").and_then(parse_usage)?;
    let mut pods = BTreeMap::new();
    let chunks = keys.range(KEY_PREFIX.to_owned()..).take_while(|(k, _)| k.starts_with(KEY_PREFIX));
    for (_, chunk) in chunks {
        if sample_time(chunk) != Some(sampled_at_ms) {
            continue;
        }
        for line in chunk.lines().skip(1) {
            let Some((pod, rest)) = line.split_once(' ') else { continue };
            if !pod.contains('/') {
                continue;
            }
            if let Some(u) = parse_usage(rest) {
                pods.insert(pod.to_owned(), u);
            }
        }
    }
    Some(Metrics { sampled_at_ms, node, pods })
}

/// `cpu_millis memory_bytes`.
fn parse_usage(text: &str) -> Option<Usage> {
    let (cpu, memory) = text.split_once(' ')?;
    Some(Usage { cpu_millis: cpu.parse().ok()?, memory_bytes: memory.parse().ok()? })
}

/// Whether a new sample should replace the published one: the first, a set of pods that
/// changed, a value that moved by more than its step and [`STEP_PERCENT`], or a published
/// sample [`REFRESH_MS`] old (or from a clock that went back).
pub fn worth_publishing(published: Option<&Metrics>, new: &Metrics) -> bool {
    let Some(old) = published else { return true };
    if new.sampled_at_ms < old.sampled_at_ms || new.sampled_at_ms - old.sampled_at_ms >= REFRESH_MS {
        return true;
    }
    if !old.pods.keys().eq(new.pods.keys()) {
        return true;
    }
    let moved =
        |old: u64, new: u64, step: u64| old.abs_diff(new) >= step.max(old.saturating_mul(STEP_PERCENT) / 100);
    let differs = |a: &Usage, b: &Usage| {
        moved(a.cpu_millis, b.cpu_millis, CPU_STEP_MILLIS)
            || moved(a.memory_bytes, b.memory_bytes, MEMORY_STEP_BYTES)
    };
    differs(&old.node, &new.node) || old.pods.values().zip(new.pods.values()).any(|(a, b)| differs(a, b))
}

#[cfg(test)]
mod tests {
    use expect_test::expect;

    use super::*;

    fn usage(cpu_millis: u64, memory_bytes: u64) -> Usage {
        Usage { cpu_millis, memory_bytes }
    }

    fn keys_of(chunks: Vec<String>) -> BTreeMap<String, String> {
        chunks.into_iter().enumerate().map(|(i, c)| (key(i), c)).collect()
    }

    #[test]
    fn encoding() {
        let m = Metrics {
            sampled_at_ms: 1_700_000_000_123,
            node: usage(1250, 3 << 30),
            pods: BTreeMap::from([
                ("default/web-1".to_owned(), usage(12, 34 << 20)),
                ("kube-system/dns-0".to_owned(), usage(0, 4096)),
            ]),
        };
        expect![[r#"
            [
                "T 1700000000123\nN 1250 3221225472\ndefault/web-1 12 35651584\nkube-system/dns-0 0 4096\n",
            ]
        "#]]
        .assert_debug_eq(&encode(&m));
        assert_eq!(decode(&keys_of(encode(&m))), Some(m));
    }

    #[test]
    fn round_trips_through_chunks() {
        let pods: BTreeMap<String, Usage> = (0..3000u64)
            .map(|i| (format!("default/web-abcdef0123-{i}"), usage(i * 7 % 4000, i << 20)))
            .collect();
        let m = Metrics { sampled_at_ms: 42, node: usage(1999, 1 << 33), pods };
        let chunks = encode(&m);
        assert!(chunks.len() > 1);
        assert!(chunks.iter().all(|c| c.len() <= CHUNK_BYTES && c.starts_with("T 42\n")));
        let mut keys = keys_of(chunks);
        keys.insert("claims.0".into(), String::new());
        keys.insert("node".into(), "{}".into());
        assert_eq!(decode(&keys), Some(m.clone()));
        let empty = Metrics { sampled_at_ms: 7, ..Metrics::default() };
        assert_eq!(encode(&empty), vec!["T 7\nN 0 0\n".to_owned()]);
        assert_eq!(decode(&keys_of(encode(&empty))), Some(empty));
    }

    #[test]
    fn malformed_input_is_skipped() {
        let first = "T 9\nN 100 200\ndefault/a 1 2\nnonsense\ndefault/b 1\ndefault/c x 2\ndefault/d -1 2\nnoslash 1 2\ndefault/e 1 2 3\n default/f 1 2\n\ndefault/g 18446744073709551616 1\ndefault/h 5 6\n";
        let keys = BTreeMap::from([
            (key(0), first.to_owned()),
            // Another sample (a publish seen half-way): skipped whole.
            (key(1), "T 8\ndefault/old 1 1\n".to_owned()),
            (key(2), "T 9\ndefault/i 7 8\n".to_owned()),
            (key(3), "no header\ndefault/j 1 1\n".to_owned()),
        ]);
        let want = Metrics {
            sampled_at_ms: 9,
            node: usage(100, 200),
            pods: BTreeMap::from([
                ("default/a".to_owned(), usage(1, 2)),
                ("default/h".to_owned(), usage(5, 6)),
                ("default/i".to_owned(), usage(7, 8)),
            ]),
        };
        assert_eq!(decode(&keys), Some(want));
        for bad in ["", "T x\nN 1 2\n", "N 1 2\n", "T 1\n", "T 1\nN 1\n", "T 1\ndefault/a 1 2\n"] {
            assert_eq!(decode(&BTreeMap::from([(key(0), bad.to_owned())])), None, "{bad:?}");
        }
        assert_eq!(decode(&BTreeMap::from([(key(1), "T 1\nN 1 2\n".to_owned())])), None);
        // Arbitrary bytes never panic.
        let junk: String = (0u32..2000).filter_map(|i| char::from_u32((i * 7919) % 0x800)).collect();
        let _ = decode(&BTreeMap::from([(key(0), format!("T 1\nN 1 2\n{junk}"))]));
    }

    #[test]
    fn publishes_meaningful_changes_only() {
        let pods = |cpu, mem| BTreeMap::from([("default/a".to_owned(), usage(cpu, mem))]);
        let old = Metrics { sampled_at_ms: 1_000, node: usage(500, 1 << 30), pods: pods(200, 100 << 20) };
        let at = |t: u64, node: Usage, pods| Metrics { sampled_at_ms: t, node, pods };
        assert!(worth_publishing(None, &old));
        // Small moves stay unpublished: CPU under 5 % (and 5m), memory under 5 % (and 1 MiB).
        assert!(!worth_publishing(Some(&old), &old));
        assert!(!worth_publishing(Some(&old), &at(6_000, usage(520, 1 << 30), pods(209, 104 << 20))));
        // Big enough moves of any value, a pod set that changed, or age republish.
        assert!(worth_publishing(Some(&old), &at(6_000, usage(500, 1 << 30), pods(210, 100 << 20))));
        assert!(worth_publishing(Some(&old), &at(6_000, usage(500, 1 << 30), pods(200, 105 << 20))));
        assert!(worth_publishing(Some(&old), &at(6_000, usage(525, 1 << 30), pods(200, 100 << 20))));
        assert!(worth_publishing(Some(&old), &at(6_000, usage(500, 1 << 30), BTreeMap::new())));
        assert!(worth_publishing(Some(&old), &at(1_000 + REFRESH_MS, old.node, old.pods.clone())));
        assert!(worth_publishing(Some(&old), &at(999, old.node, old.pods.clone())));
        // Near zero the absolute steps count: 0 → 4m and 0 → 1 MiB − 1 are noise.
        let idle = at(1_000, usage(0, 0), pods(0, 0));
        assert!(!worth_publishing(Some(&idle), &at(6_000, usage(4, 0), pods(4, (1 << 20) - 1))));
        assert!(worth_publishing(Some(&idle), &at(6_000, usage(0, 0), pods(5, 0))));
    }
}
