//! Weighted rendezvous (HRW) ranks in integer arithmetic only, so every node on every CPU
//! computes bit-identical ranks (a float `ln` may differ in the last bit between libms).
//!
//! Weighted HRW ("logarithmic method"): node `n` wins replica `r` with the smallest race
//! time `-ln(u(r, n)) / w(n)`, `u` uniform in (0, 1) from a stable hash. A node with twice
//! the weight wins twice as often, and removing a node changes the winner only of the
//! replicas it had won. We use `-log2` in 32.32 fixed point (same ordering as `-ln`).

use crate::spec::fnv1a64;

/// The finalizer of MurmurHash3: FNV-1a alone mixes the last bytes of similar strings
/// (`web-0`, `web-1`) poorly, which would correlate ranks.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z ^= z >> 33;
    z = z.wrapping_mul(0xff51_afd7_ed55_8ccd);
    z ^= z >> 33;
    z = z.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    z ^ (z >> 33)
}

/// A stable, well-mixed 64-bit hash of an identity.
pub(crate) fn key_hash(s: &str) -> u64 {
    mix64(fnv1a64(s.as_bytes()))
}

/// The HRW weight of a node: its CPU capacity in millicores, clamped so the race time
/// keeps precision and never divides by zero.
pub(crate) fn weight(cpu_millis: u64) -> u64 {
    cpu_millis.clamp(1, 1 << 32)
}

/// Race time of a replica on a node; smaller wins. Ties (astronomically rare) are broken
/// by node id by the caller. (Placement uses the forms below, on pre-rotated hashes.)
#[cfg(test)]
pub(crate) fn race(replica_hash: u64, node_hash: u64, weight: u64) -> u64 {
    race_rotated(replica_hash, rotated(node_hash), weight)
}

/// [`race`] with the node hash passed through [`rotated`].
pub(crate) fn race_rotated(replica_hash: u64, rotated_node_hash: u64, weight: u64) -> u64 {
    race_dividend(replica_hash, rotated_node_hash) / weight.max(1)
}

/// The node hash as the race mixes it in; placement computes it once per node.
pub(crate) fn rotated(node_hash: u64) -> u64 {
    node_hash.rotate_left(29)
}

/// The race time before the division by the node's weight (at most `2^62`).
fn race_dividend(replica_hash: u64, rotated_node_hash: u64) -> u64 {
    neg_log2_q32(mix64(replica_hash ^ rotated_node_hash)) << 24
}

/// `Some(race)` when the race time is strictly below `bound`, else `None`; the same race
/// as [`race`] (with the node hash passed through [`rotated`]). Placement asks this of
/// every feasible node for every replica, and almost every node loses, so a loser must be
/// cheap: `floor(x / w) < b` iff `x < b * w` (no division), and most losers are told
/// apart by a lower bound of the logarithm before it is computed.
pub(crate) fn race_below(replica_hash: u64, rotated_node_hash: u64, weight: u64, bound: u64) -> Option<u64> {
    let h = mix64(replica_hash ^ rotated_node_hash);
    let weight = weight.max(1);
    let limit = u128::from(bound) * u128::from(weight);
    if u128::from(neg_log2_q32_lower_bound(h) << 24) >= limit {
        return None;
    }
    let dividend = neg_log2_q32(h) << 24;
    (u128::from(dividend) < limit).then(|| dividend / weight)
}

/// A lower bound of [`neg_log2_q32`] without the table: `-log2(u) ≥ (1 - u) / ln 2`, of
/// which we keep half, `(2^64 - x) / 2^33`, so the table's rounding never matters.
fn neg_log2_q32_lower_bound(x: u64) -> u64 {
    !(x | 1) >> 33
}

/// `-log2(x / 2^64)` in 32.32 fixed point for `x` treated as odd (so never zero); at most
/// `64 << 32`, at least 1.
pub(crate) fn neg_log2_q32(x: u64) -> u64 {
    let x = x | 1;
    let lz = x.leading_zeros();
    let int = u64::from(63 - lz);
    // The bits below the leading one, as a fraction of 2^64.
    let frac = x.checked_shl(lz + 1).unwrap_or(0);
    let idx = (frac >> 52) as usize;
    let rem = (frac >> 32) & 0xf_ffff;
    let lo = LOG2_TABLE[idx];
    let hi = LOG2_TABLE[idx + 1];
    let interp = lo + (((hi - lo) * rem) >> 20);
    ((64u64 << 32) - ((int << 32) + interp)).max(1)
}

const TABLE_BITS: u32 = 12;
const TABLE_LEN: usize = (1 << TABLE_BITS) + 1;

/// `log2(1 + i / 4096)` in 0.32 fixed point for `i` in `0..=4096`, computed at compile time
/// by repeated squaring (exact integer arithmetic, so identical everywhere).
static LOG2_TABLE: [u64; TABLE_LEN] = build_table();

const fn build_table() -> [u64; TABLE_LEN] {
    let mut table = [0u64; TABLE_LEN];
    let mut i = 0;
    while i < TABLE_LEN {
        // v in [1, 2] as Q62.
        let mut v: u128 = ((1u128 << TABLE_BITS) + i as u128) << (62 - TABLE_BITS);
        let mut bits = 0u64;
        let mut k = 0;
        if i == TABLE_LEN - 1 {
            table[i] = 1 << 32;
            i += 1;
            continue;
        }
        while k < 32 {
            v = (v * v) >> 62;
            bits <<= 1;
            if v >= (2u128 << 62) {
                bits |= 1;
                v >>= 1;
            }
            k += 1;
        }
        table[i] = bits;
        i += 1;
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log2_matches_floats_closely() {
        for x in [1u64, 2, 3, 1000, 1 << 40, (1 << 63) + 12345, u64::MAX - 2, 0x1234_5678_9abc_def1] {
            let want = 64.0 - ((x | 1) as f64).log2();
            let got = neg_log2_q32(x) as f64 / 4_294_967_296.0;
            assert!((want - got).abs() < 1e-6, "x={x}: want {want}, got {got}");
        }
        assert!(neg_log2_q32(u64::MAX) >= 1);
    }

    #[test]
    fn the_lower_bound_holds() {
        let mut edges = vec![0, 1, 2, 3, u64::MAX, u64::MAX - 1];
        for k in 0..64 {
            for d in [0u64, 1, 2, 3, 1000] {
                edges.extend([
                    (1u64 << k).wrapping_add(d),
                    (1u64 << k).wrapping_sub(d),
                    (u64::MAX - (1 << k)).wrapping_add(d),
                ]);
                edges.push((u64::MAX << k).wrapping_sub(d));
            }
        }
        let mut x = 7u64;
        let randoms = (0..200_000).map(|_| {
            x = mix64(x.wrapping_add(0x9e37_79b9_7f4a_7c15));
            x
        });
        for x in edges.into_iter().chain(randoms) {
            assert!(neg_log2_q32_lower_bound(x) <= neg_log2_q32(x), "x={x:#x}");
        }
    }

    #[test]
    fn race_below_agrees_with_race() {
        let mut x = 0x1234_5678_9abc_def1u64;
        for _ in 0..20_000 {
            x = mix64(x.wrapping_add(0x9e37_79b9_7f4a_7c15));
            let (r, n) = (x, mix64(x ^ 7));
            let w = [1, 3, 1000, 7777, 1 << 32][(x % 5) as usize];
            let exact = race(r, n, w);
            for bound in [0, 1, exact.saturating_sub(1), exact, exact + 1, u64::MAX] {
                let want = (exact < bound).then_some(exact);
                assert_eq!(
                    race_below(r, rotated(n), w, bound),
                    want,
                    "race {exact}, bound {bound}, weight {w}"
                );
            }
        }
    }

    #[test]
    fn heavier_nodes_win_proportionally() {
        // Node b weighs 3x node a: it should win about 75 % of replicas.
        let (a, b) = (key_hash("a"), key_hash("b"));
        let wins_b = (0..20_000)
            .filter(|i| {
                let r = key_hash(&format!("web-{i}"));
                race(r, b, weight(3000)) < race(r, a, weight(1000))
            })
            .count();
        assert!((14_500..15_500).contains(&wins_b), "b won {wins_b} of 20000");
    }

    #[test]
    fn similar_identities_rank_independently() {
        // With equal weights each of 4 nodes should win about a quarter of web-0..web-3999.
        let nodes: Vec<u64> = (0..4).map(|i| key_hash(&format!("node-{i}"))).collect();
        let mut wins = [0usize; 4];
        for i in 0..4000 {
            let r = key_hash(&format!("web-{i}"));
            let best = (0..4).min_by_key(|&n| race(r, nodes[n], weight(1000))).unwrap_or(0);
            wins[best] += 1;
        }
        assert!(wins.iter().all(|w| (850..1150).contains(w)), "{wins:?}");
    }
}
