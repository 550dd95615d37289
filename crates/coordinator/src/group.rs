//! Who should be in the coordinator group: the leader's repair policy.
//!
//! Given the Raft configuration and what membership (SWIM) says of each
//! node, decide the next single change: add a live node as a learner,
//! promote learners or drop dead voters, or forget dead learners. The
//! leader runs it after every membership event and on a tick, and carries
//! out one action at a time.
//!
//! **Invariant:** pure function of its inputs (no Raft handle, no I/O), so
//! every rule is a data-driven test below.

use std::collections::{BTreeMap, BTreeSet};

/// How membership (SWIM) sees a node, reduced to what the policy needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// Alive or suspect: counts as up.
    Up,
    /// Declared dead, or left: will not come back under this life.
    Gone,
    /// Up, but being drained: to leave the voters, never to join them.
    Draining,
}

#[derive(Clone, Debug, Default)]
pub struct GroupView {
    pub voters: BTreeSet<u64>,
    pub learners: BTreeSet<u64>,
    /// Every node membership knows of, with its RPC address.
    pub nodes: BTreeMap<u64, (Liveness, String)>,
    /// Target group size (7 by default).
    pub max_voters: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupAction {
    /// Replicate to this node so it can be promoted.
    AddLearner { id: u64, addr: String },
    /// Make exactly these the voters (removed voters stay learners).
    SetVoters(BTreeSet<u64>),
    /// Drop these non-voters from the configuration entirely.
    RemoveNodes(BTreeSet<u64>),
}

impl GroupView {
    fn is_up(&self, id: u64) -> bool {
        matches!(self.nodes.get(&id), Some((Liveness::Up, _)))
    }

    fn is_gone(&self, id: u64) -> bool {
        matches!(self.nodes.get(&id), Some((Liveness::Gone, _)))
    }

    fn is_draining(&self, id: u64) -> bool {
        matches!(self.nodes.get(&id), Some((Liveness::Draining, _)))
    }
}

/// The next change to make, or `None` when the group is as it should be.
///
/// Rules, in order:
/// 1. Voters declared gone, or draining, are replaced by live learners
///    (or simply dropped), so the group again tolerates failures. A voter
///    membership knows nothing of is left alone: absence of news is not
///    death. (A draining leader that drops itself steps down once the
///    change is committed.)
/// 2. While there are fewer than `max_voters` voters, live learners are
///    promoted.
/// 3. Live nodes outside the group become learners, lowest id first.
/// 4. Learners declared gone are forgotten.
pub fn next_action(v: &GroupView) -> Option<GroupAction> {
    let max = v.max_voters.max(1);
    let live_voters: BTreeSet<u64> =
        v.voters.iter().copied().filter(|id| !v.is_gone(*id) && !v.is_draining(*id)).collect();
    let live_learners: Vec<u64> = v.learners.iter().copied().filter(|id| v.is_up(*id)).collect();

    let gone_voters = live_voters.len() < v.voters.len();
    let room = max.saturating_sub(live_voters.len());
    if gone_voters || (room > 0 && !live_learners.is_empty()) {
        let mut want = live_voters.clone();
        want.extend(live_learners.iter().take(room));
        // Never propose an empty group.
        if !want.is_empty() && want != v.voters {
            return Some(GroupAction::SetVoters(want));
        }
    }

    let outsider =
        v.nodes.iter().find(|(id, (l, _))| *l == Liveness::Up && !v.voters.contains(id) && !v.learners.contains(id));
    if let Some((id, (_, addr))) = outsider {
        return Some(GroupAction::AddLearner { id: *id, addr: addr.clone() });
    }

    let gone_learners: BTreeSet<u64> = v.learners.iter().copied().filter(|id| v.is_gone(*id)).collect();
    if !gone_learners.is_empty() {
        return Some(GroupAction::RemoveNodes(gone_learners));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `nodes`: "1 2 3- 4~" means 1 and 2 up, 3 gone, 4 draining.
    fn view(voters: &str, learners: &str, nodes: &str, max: usize) -> GroupView {
        let ids = |s: &str| s.split_whitespace().map(|x| x.parse().unwrap()).collect::<BTreeSet<u64>>();
        let nodes = nodes
            .split_whitespace()
            .map(|x| {
                let l = match x.chars().last() {
                    Some('-') => Liveness::Gone,
                    Some('~') => Liveness::Draining,
                    _ => Liveness::Up,
                };
                let id: u64 = x.trim_end_matches(['-', '~']).parse().unwrap();
                (id, (l, format!("127.0.0.1:{}", 8000 + id)))
            })
            .collect();
        GroupView { voters: ids(voters), learners: ids(learners), nodes, max_voters: max }
    }

    fn set(s: &str) -> BTreeSet<u64> {
        s.split_whitespace().map(|x| x.parse().unwrap()).collect()
    }

    #[test]
    fn cases() {
        use GroupAction::*;
        let add = |id: u64| AddLearner { id, addr: format!("127.0.0.1:{}", 8000 + id) };
        // (voters, learners, nodes, max) → action
        let cases: Vec<(&str, &str, &str, usize, Option<GroupAction>)> = vec![
            // A fresh single-node group grows: learners first...
            ("1", "", "1 2 3", 7, Some(add(2))),
            ("1", "2", "1 2 3", 7, Some(SetVoters(set("1 2")))),
            ("1 2", "", "1 2 3", 7, Some(add(3))),
            ("1 2 3", "", "1 2 3", 7, None),
            // ...up to the target size; the rest stay learners.
            ("1 2 3", "4", "1 2 3 4", 3, None),
            // Two voters die: they are replaced by a live learner, or dropped.
            ("1 2 3 4 5", "6", "1 2 3 4- 5- 6", 5, Some(SetVoters(set("1 2 3 6")))),
            ("1 2 3 4 5", "", "1 2 3 4- 5-", 5, Some(SetVoters(set("1 2 3")))),
            // Dropped voters linger as learners until forgotten.
            ("1 2 3", "4 5", "1 2 3 4- 5-", 5, Some(RemoveNodes(set("4 5")))),
            // A voter membership has no news of is not removed.
            ("1 2 3", "", "1 2", 7, None),
            // A dead node that comes back (new generation, up again) rejoins as learner.
            ("1 2 3", "", "1 2 3 4", 7, Some(add(4))),
            // Promotion fills the room left by a dead voter.
            ("1 2 3", "4", "1 2- 3 4", 3, Some(SetVoters(set("1 3 4")))),
            // Never an empty voter set, even if membership says all are gone.
            ("1", "", "1-", 7, None),
            // A draining voter is replaced by a learner, or dropped; it stays
            // a learner (it is up) and is neither promoted nor added again.
            ("1 2 3", "4", "1 2 3~ 4", 3, Some(SetVoters(set("1 2 4")))),
            ("1 2 3", "", "1 2 3~", 3, Some(SetVoters(set("1 2")))),
            ("1 2", "3", "1 2 3~", 3, None),
            ("1 2", "", "1 2 3~", 3, None),
        ];
        for (voters, learners, nodes, max, want) in cases {
            let got = next_action(&view(voters, learners, nodes, max));
            assert_eq!(got, want, "voters [{voters}] learners [{learners}] nodes [{nodes}] max {max}");
        }
    }

    #[test]
    fn repeated_application_converges() {
        // Apply actions until none is left: the end state has the live
        // nodes as voters (up to max) and no gone node anywhere.
        let mut v = view("1 2 3 4 5", "", "1 2 3- 4- 5 6 7 8", 5);
        for _ in 0..20 {
            match next_action(&v) {
                None => break,
                Some(GroupAction::AddLearner { id, .. }) => {
                    v.learners.insert(id);
                }
                Some(GroupAction::SetVoters(want)) => {
                    let removed: Vec<u64> = v.voters.difference(&want).copied().collect();
                    v.learners.extend(removed);
                    for id in &want {
                        v.learners.remove(id);
                    }
                    v.voters = want;
                }
                Some(GroupAction::RemoveNodes(ids)) => {
                    for id in ids {
                        v.learners.remove(&id);
                    }
                }
            }
        }
        assert_eq!(next_action(&v), None);
        assert_eq!(v.voters, set("1 2 5 6 7"));
        assert_eq!(v.learners, set("8"));
    }
}
