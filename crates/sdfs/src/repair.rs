//! Self-repair: which file versions lost replicas and where new copies
//! should go. The coordinator leader runs [`plan`] after every membership
//! change and every second, and carries out each task (a new holder pulls
//! the blob from a live one, then the namespace records the new holders).
//!
//! **Invariant:** [`plan`] is a pure function of the namespace and the
//! live nodes.

use idunno_state::Files;

use crate::placement::repair_targets;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepairTask {
    pub name: String,
    pub version: u64,
    pub blake3: String,
    /// Live holders to copy from (and to keep).
    pub sources: Vec<u64>,
    /// Nodes that should get a copy.
    pub add: Vec<u64>,
}

/// What one repair round did, for the timeline.
#[derive(Debug, Default)]
pub struct Round {
    versions: usize,
    copies: usize,
    bytes: u64,
    targets: std::collections::BTreeSet<u64>,
    example: Option<(String, u64)>,
}

impl Round {
    /// `task` was carried out: `added` now hold its version of `size` bytes.
    pub fn add(&mut self, task: &RepairTask, added: &[u64], size: u64) {
        if added.is_empty() {
            return;
        }
        self.versions += 1;
        self.copies += added.len();
        self.bytes += size * added.len() as u64;
        self.targets.extend(added);
        self.example.get_or_insert_with(|| (task.name.clone(), task.version));
    }

    /// The round in a sentence, if it copied anything.
    pub fn summary(&self) -> Option<String> {
        let (name, version) = self.example.as_ref()?;
        let to: Vec<String> = self.targets.iter().map(u64::to_string).collect();
        Some(format!(
            "{} file version(s) repaired: {} new replica(s) on node {}, {} bytes copied (e.g. {name} v{version})",
            self.versions,
            self.copies,
            to.join(", node "),
            self.bytes
        ))
    }

    pub fn first_target(&self) -> Option<u64> {
        self.targets.first().copied()
    }
}

/// Every version held by fewer than `replicas` live nodes (or by fewer
/// than all live nodes, when there are fewer of them) and still held by
/// at least one, with the nodes to copy it to. Copies on `draining` nodes
/// (live, about to leave) are sources but do not count, and no copy goes
/// to them.
pub fn plan(files: &Files, live: &[u64], draining: &[u64], replicas: usize) -> Vec<RepairTask> {
    let staying: Vec<u64> = live.iter().copied().filter(|id| !draining.contains(id)).collect();
    let want = replicas.min(staying.len());
    let mut tasks = Vec::new();
    for (name, entry) in files {
        for v in &entry.versions {
            let sources: Vec<u64> = v.replicas.iter().copied().filter(|r| live.contains(r)).collect();
            let kept = sources.iter().filter(|r| !draining.contains(r)).count();
            let dead_listed = sources.len() < v.replicas.len();
            if sources.is_empty() || (kept >= want && !dead_listed) {
                continue;
            }
            let add = repair_targets(name, &staying, &v.replicas, replicas);
            let add: Vec<u64> = add.into_iter().take(want.saturating_sub(kept)).collect();
            tasks.push(RepairTask { name: name.clone(), version: v.version, blake3: v.blake3.clone(), sources, add });
        }
    }
    tasks
}

#[cfg(test)]
mod tests {
    use idunno_state::{FileEntry, FileVersion};

    use super::*;

    fn files(holders: &[&[u64]]) -> Files {
        let versions = holders
            .iter()
            .enumerate()
            .map(|(i, h)| FileVersion {
                version: i as u64 + 1,
                size: 1,
                blake3: format!("h{i}"),
                replicas: h.to_vec(),
                committed_at_ms: 0,
            })
            .collect();
        Files::unit(
            "f".to_string(),
            FileEntry { versions, next_version: holders.len() as u64 + 1, deleted_at_ms: None },
        )
    }

    #[test]
    fn cases() {
        let live: Vec<u64> = (1..=7).collect();
        // Whole: nothing to do.
        assert!(plan(&files(&[&[1, 2, 3, 4]]), &live, &[], 4).is_empty());
        // Three of four holders dead: copy from the survivor to three others.
        let t = plan(&files(&[&[1, 8, 9, 10]]), &live, &[], 4);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].sources, vec![1]);
        assert_eq!(t[0].add.len(), 3);
        assert!(t[0].add.iter().all(|n| live.contains(n) && *n != 1));
        // Every holder dead: nothing can be done (and nothing is invented).
        assert!(plan(&files(&[&[8, 9, 10, 11]]), &live, &[], 4).is_empty());
        // Fewer live nodes than replicas: as many as there are.
        let t = plan(&files(&[&[1, 9]]), &[1, 2, 3], &[], 4);
        assert_eq!(t[0].add.len(), 2);
        // A dead holder is dropped even when no new node can take its place.
        let t = plan(&files(&[&[1, 2, 9]]), &[1, 2], &[], 4);
        assert_eq!((t[0].sources.clone(), t[0].add.clone()), (vec![1, 2], vec![]));
        // Each version on its own.
        let t = plan(&files(&[&[1, 2, 3, 4], &[1, 2, 3, 9]]), &live, &[], 4);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].version, 2);
        assert_eq!(t[0].add.len(), 1);
        // A draining holder is a source, but does not count: a copy goes
        // to a node that stays, never to a draining one.
        let t = plan(&files(&[&[1, 2, 3, 4]]), &live, &[4, 5], 4);
        assert_eq!(t[0].sources, vec![1, 2, 3, 4]);
        assert_eq!(t[0].add.len(), 1);
        assert!(![1, 2, 3, 4, 5].contains(&t[0].add[0]), "{:?}", t[0].add);
        // Once copied (the draining node still listed), nothing more to do.
        assert!(plan(&files(&[&[1, 2, 3, 4, 6]]), &live, &[4], 4).is_empty());
    }
}
