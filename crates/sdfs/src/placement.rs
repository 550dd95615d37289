//! Where the replicas of a file go: rendezvous (highest-random-weight)
//! hashing. Every node gets a weight for each file, a hash of the file's
//! name and the node's id; the heaviest live nodes hold it. Load spreads
//! evenly, and a node joining or leaving moves only the files it wins or
//! held: everything else stays put.
//!
//! **Invariant:** pure functions of their inputs.

fn weight(name: &str, node: u64) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(name.as_bytes());
    h.update(&[0]);
    h.update(&node.to_le_bytes());
    let bytes = h.finalize();
    let mut w = [0u8; 8];
    w.copy_from_slice(&bytes.as_bytes()[..8]);
    u64::from_le_bytes(w)
}

/// The `count` nodes of `live` that should hold `name`, heaviest first.
pub fn place(name: &str, live: &[u64], count: usize) -> Vec<u64> {
    let mut ranked: Vec<(u64, u64)> = live.iter().map(|n| (weight(name, *n), *n)).collect();
    ranked.sort_unstable_by(|a, b| b.cmp(a));
    ranked.dedup_by_key(|r| r.1);
    ranked.into_iter().take(count).map(|(_, n)| n).collect()
}

/// Nodes to add so that `name` is held by `count` live nodes again, given
/// the live nodes that hold it now: the heaviest live non-holders.
pub fn repair_targets(name: &str, live: &[u64], holders: &[u64], count: usize) -> Vec<u64> {
    let have = holders.iter().filter(|h| live.contains(h)).count();
    let candidates: Vec<u64> = live.iter().copied().filter(|n| !holders.contains(n)).collect();
    place(name, &candidates, count.saturating_sub(have))
}

/// Replicas that must hold a write before it is acknowledged: a majority
/// of those written.
pub fn write_quorum(replicas: usize) -> usize {
    replicas / 2 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_distinct_live_nodes() {
        let live = [1, 2, 3, 4, 5, 6];
        let p = place("model.onnx", &live, 4);
        assert_eq!(p.len(), 4);
        let mut d = p.clone();
        d.sort();
        d.dedup();
        assert_eq!(d.len(), 4);
        assert!(p.iter().all(|n| live.contains(n)));
        // Fewer live nodes than replicas: all of them.
        assert_eq!(place("x", &[7, 3], 4).len(), 2);
        assert!(place("x", &[], 4).is_empty());
    }

    #[test]
    fn stable_under_membership_change() {
        // Removing a node that does not hold a file never moves the file;
        // removing a holder replaces only that holder.
        let live: Vec<u64> = (1..=8).collect();
        for f in 0..200 {
            let name = format!("file-{f}");
            let before = place(&name, &live, 4);
            for gone in &live {
                let rest: Vec<u64> = live.iter().copied().filter(|n| n != gone).collect();
                let after = place(&name, &rest, 4);
                let kept: Vec<u64> = before.iter().copied().filter(|n| n != gone).collect();
                assert!(kept.iter().all(|n| after.contains(n)), "{name}: {before:?} -{gone} -> {after:?}");
            }
        }
    }

    #[test]
    fn spreads_load() {
        let live: Vec<u64> = (1..=5).collect();
        let mut count = [0usize; 6];
        for f in 0..2000 {
            for n in place(&format!("f{f}"), &live, 4) {
                count[n as usize] += 1;
            }
        }
        // 8000 replicas over 5 nodes: 1600 each; allow 10%.
        for (n, held) in count.iter().enumerate().skip(1) {
            assert!((1440..=1760).contains(held), "node {n} holds {held} replicas");
        }
    }

    #[test]
    fn repair_adds_only_what_is_missing() {
        let live = [1, 2, 3, 4, 5, 6];
        let holders = [1, 2, 9, 10]; // 9 and 10 are dead
        let add = repair_targets("f", &live, &holders, 4);
        assert_eq!(add.len(), 2);
        assert!(add.iter().all(|n| !holders.contains(n) && live.contains(n)));
        assert!(repair_targets("f", &live, &[1, 2, 3, 4], 4).is_empty());
    }

    #[test]
    fn quorum_is_a_majority() {
        assert_eq!([1, 2, 3, 4, 5].map(write_quorum), [1, 2, 2, 3, 3]);
    }
}
