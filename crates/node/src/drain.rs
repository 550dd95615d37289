//! This node's side of a drain (`idunno member drain`, `docs/deploy.md`):
//! once the replicated state says it is draining, the other layers stop
//! giving it work (the job leader, training groups, SDFS placement, the
//! coordinator group, each on its own); this task waits until nothing needs
//! the node any more, then leaves the group and stops the process.
//!
//! A node that starts and finds a drain of an earlier life of itself in
//! the state calls it off: a restart ends a drain.

use std::time::Duration;

use idunno_state::ClusterState;
use tokio_util::sync::CancellationToken;

/// What still keeps a draining node, as said in its log (empty: nothing).
pub fn remaining(
    state: &ClusterState,
    me: u64,
    voters: &[u64],
    held: usize,
    live: &[u64],
    write_quorum: usize,
) -> Vec<String> {
    let mut left = Vec::new();
    if voters.contains(&me) {
        left.push("still a voter of the coordinator group".to_string());
    }
    if held > 0 {
        left.push(format!("{held} queries still running or not yet delivered"));
    }
    let trainings: Vec<&str> = state
        .training
        .jobs
        .iter()
        .filter(|(_, t)| t.state == idunno_state::JobState::Running && t.group.workers.contains(&me))
        .map(|(n, _)| n.as_str())
        .collect();
    if !trainings.is_empty() {
        left.push(format!("a member of training {}", trainings.join(", ")));
    }
    let staying: Vec<u64> = live.iter().copied().filter(|id| *id != me && !state.nodes.is_draining(*id)).collect();
    let need = write_quorum.min(staying.len()).max(1);
    let short = state
        .namespace
        .files
        .values()
        .flat_map(|e| e.versions.iter())
        .filter(|v| v.replicas.contains(&me))
        .filter(|v| v.replicas.iter().filter(|r| staying.contains(r)).count() < need)
        .count();
    if short > 0 {
        left.push(format!("{short} file version(s) held by fewer than {need} other nodes"));
    }
    left
}

/// Drains that are over, for the leader to forget: the node came back in a
/// later life, or every life of it the view knows is gone (the drain
/// ended with the node leaving, or it died).
pub fn over(state: &ClusterState, members: &[idunno_membership::MemberInfo]) -> Vec<u64> {
    state
        .nodes
        .draining
        .iter()
        .filter(|(id, d)| {
            let lives: Vec<_> = members.iter().filter(|m| m.identity.id.0 == **id).collect();
            let later = lives.iter().any(|m| m.state.is_up() && m.identity.generation > d.generation);
            let gone = !lives.is_empty() && lives.iter().all(|m| !m.state.is_up());
            later || gone
        })
        .map(|(id, _)| *id)
        .collect()
}

/// Follow the state: call off the drain of an earlier life, and carry out
/// a drain of this one (then cancel `stop`, which stops the node).
pub fn spawn(
    coordinator: std::sync::Arc<idunno_coordinator::Coordinator>,
    membership: idunno_membership::MembershipHandle,
    jobs: std::sync::Arc<idunno_jobs::Jobs>,
    write_quorum: usize,
    stop: CancellationToken,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let me = coordinator.id();
        let mut called_off = None;
        let mut said = Vec::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            let state = coordinator.local_state();
            if state.state.nodes.draining.is_empty() {
                continue;
            }
            let view = membership.view();
            let Some(generation) = view.members.iter().find(|m| m.is_self).map(|m| m.identity.generation) else {
                continue;
            };
            if coordinator.status().leader == Some(me) {
                for node in over(&state.state, &view.members) {
                    if node != me {
                        let cmd = idunno_state::NodeCommand::UndrainNode { node };
                        if let Err(e) = coordinator.apply(cmd).await {
                            tracing::debug!(node, error = %e, "could not forget a finished drain yet");
                        }
                    }
                }
            }
            let Some(drain) = state.state.nodes.draining.get(&me) else { continue };
            if drain.generation < generation && called_off != Some(drain.generation) {
                // An earlier life was draining: this one is not.
                let cmd = idunno_state::NodeCommand::UndrainNode { node: me };
                match coordinator.apply(cmd).await {
                    Ok(_) => {
                        tracing::info!(old = drain.generation, "restarted: the drain of an earlier life is over");
                        called_off = Some(drain.generation);
                    }
                    Err(e) => tracing::debug!(error = %e, "could not call off an old drain yet"),
                }
                continue;
            }
            if drain.generation < generation {
                continue;
            }
            let live: Vec<u64> = view.members.iter().filter(|m| m.state.is_up()).map(|m| m.identity.id.0).collect();
            let voters: Vec<u64> = coordinator.status().voters;
            let left = remaining(&state.state, me, &voters, jobs.queries_held(), &live, write_quorum);
            if left.is_empty() {
                tracing::info!("drained: nothing needs this node any more; leaving the group");
                let _ = membership.leave().await;
                stop.cancel();
                return;
            }
            if left != said {
                tracing::info!(waiting_for = ?left, "draining");
                said = left;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use idunno_membership::{MemberInfo, MemberState, NodeId, NodeIdentity};
    use idunno_state::{FileCommand, NodeCommand};

    fn life(id: u64, generation: u64, state: MemberState) -> MemberInfo {
        let identity = NodeIdentity { id: NodeId(id), addr: ([127, 0, 0, 1], 7000 + id as u16).into(), generation };
        MemberInfo { identity, state, swim_incarnation: 0, is_self: false }
    }

    #[test]
    fn a_drain_is_over_when_the_node_is_gone_or_back_in_a_later_life() {
        let mut s = ClusterState::default();
        for node in [2, 3, 4] {
            s.apply(NodeCommand::DrainNode { node, generation: 5, now_ms: 1 }).unwrap();
        }
        let view = vec![
            life(2, 5, MemberState::Alive), // still draining
            life(3, 5, MemberState::Left),  // drained and gone
            life(4, 5, MemberState::Left),
            life(4, 6, MemberState::Alive), // restarted
        ];
        assert_eq!(over(&s, &view), vec![3, 4]);
    }

    #[test]
    fn a_drain_waits_for_the_voters_the_queries_and_the_files() {
        let mut s = ClusterState::default();
        s.apply(NodeCommand::DrainNode { node: 3, generation: 1, now_ms: 1 }).unwrap();
        for (name, replicas) in [("a", vec![3, 1, 2]), ("b", vec![3]), ("c", vec![1, 2])] {
            let cmd = FileCommand::CommitFileVersion {
                name: name.into(),
                size: 1,
                blake3: "x".into(),
                replicas,
                keep: 5,
                now_ms: 1,
            };
            s.apply(cmd).unwrap();
        }
        let live = [1, 2, 3, 4];
        let left = remaining(&s, 3, &[1, 2, 3], 2, &live, 2);
        assert_eq!(left.len(), 3, "{left:?}");
        assert!(left[0].contains("voter") && left[1].contains("2 queries") && left[2].contains("1 file version"));
        // b copied to two nodes that stay: nothing left.
        let cmd = FileCommand::CommitFileVersion {
            name: "b".into(),
            size: 1,
            blake3: "x".into(),
            replicas: vec![3, 1, 4],
            keep: 5,
            now_ms: 2,
        };
        s.apply(cmd).unwrap();
        // (b's first version, only on 3, is still kept: it counts too.)
        assert_eq!(remaining(&s, 3, &[1, 2], 0, &live, 2).len(), 1);
    }
}
