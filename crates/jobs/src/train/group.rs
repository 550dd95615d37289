//! Which workers train a job together, decided on the coordinator leader
//! (or by a member that finds its group stuck) and committed as the next
//! generation: the committed command is the only way a group changes, so
//! of two proposers only one wins.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use idunno_state::{ClusterState, JobState, TrainCommand, Training};
use tokio_util::sync::CancellationToken;

use crate::{Jobs, now_ms};

/// The members of the next group for `t`, if it needs one: when it has
/// none (just added or started again), when a member is not alive, when
/// `force` (a member found the group stuck), or to grow back to the
/// workers asked for when live nodes are spare and the last report was a
/// checkpoint (so the new group redoes no step). Survivors keep their
/// order (rank 0 stays if alive, so its rounds need not move); the rest
/// are the live nodes training the fewest jobs, lowest id first.
pub(crate) fn next_group(
    t: &Training,
    alive: &BTreeSet<u64>,
    busy: &BTreeMap<u64, usize>,
    force: bool,
) -> Option<Vec<u64>> {
    if t.state != JobState::Running {
        return None;
    }
    let current = &t.group.workers;
    let whole = !current.is_empty() && current.iter().all(|w| alive.contains(w));
    let want = (t.spec.workers as usize).max(1);
    let grow = current.len() < want
        && alive.iter().any(|w| !current.contains(w))
        && t.progress.checkpoint.is_some_and(|(_, step)| step == t.progress.step);
    if whole && !force && !grow {
        return None;
    }
    let mut chosen: Vec<u64> = current.iter().copied().filter(|w| alive.contains(w)).take(want).collect();
    let mut others: Vec<u64> = alive.iter().copied().filter(|w| !chosen.contains(w)).collect();
    others.sort_by_key(|w| (busy.get(w).copied().unwrap_or(0), *w));
    chosen.extend(others.into_iter().take(want - chosen.len()));
    (!chosen.is_empty()).then_some(chosen)
}

/// How many running trainings each node is a member of.
fn busy(state: &ClusterState) -> BTreeMap<u64, usize> {
    let mut busy = BTreeMap::new();
    for t in state.training.jobs.values().filter(|t| t.state == JobState::Running) {
        for w in &t.group.workers {
            *busy.entry(*w).or_default() += 1;
        }
    }
    busy
}

/// Live nodes as this node sees them (itself included), but those being
/// drained: a group with a draining member re-forms without it.
pub(crate) fn alive(jobs: &Jobs) -> BTreeSet<u64> {
    let mut alive: BTreeSet<u64> =
        jobs.membership.view().members.iter().filter(|m| m.state.is_up()).map(|m| m.identity.id.0).collect();
    alive.insert(jobs.id);
    let state = jobs.coordinator.local_state();
    alive.retain(|id| !state.state.nodes.is_draining(*id));
    alive
}

/// Commit the next generation of `job`'s group if it needs one (see
/// [`next_group`]); whether a group was formed.
pub(crate) async fn regroup(jobs: &Jobs, job: &str, force: bool) -> bool {
    let state = jobs.coordinator.local_state();
    let Some(t) = state.state.training.jobs.get(job) else { return false };
    let Some(workers) = next_group(t, &alive(jobs), &busy(&state.state), force) else { return false };
    let generation = t.group.generation + 1;
    let cmd =
        TrainCommand::SetTrainGroup { job: job.to_string(), generation, workers: workers.clone(), now_ms: now_ms() };
    match jobs.coordinator.apply(cmd).await {
        Ok(out) if out.applied.is_ok() => {
            tracing::info!(%job, generation, ?workers, force, "training group formed");
            if generation > 1 {
                let ids: Vec<String> = workers.iter().map(u64::to_string).collect();
                let detail = format!("training {job} re-formed as generation {generation} of nodes {}", ids.join(", "));
                let events = jobs.coordinator.events();
                events.record(idunno_state::EventKind::TrainingRegrouped, 0, Some(job), detail, None);
            }
            true
        }
        Ok(out) => {
            tracing::debug!(%job, generation, refusal = ?out.applied, "training group not formed");
            false
        }
        Err(e) => {
            tracing::warn!(%job, generation, error = %e, "could not form a training group");
            false
        }
    }
}

/// On the coordinator leader, for each of its terms: form groups for
/// trainings that need one.
pub(crate) async fn run(jobs: Arc<Jobs>, shutdown: CancellationToken) {
    let leadership = jobs.coordinator.leadership();
    idunno_coordinator::leader_duty(leadership, shutdown, |_term, stop| lead(jobs.clone(), stop)).await
}

async fn lead(jobs: Arc<Jobs>, stop: CancellationToken) {
    let mut state_rx = jobs.coordinator.watch_state();
    let mut members_rx = jobs.membership.watch();
    loop {
        let state = jobs.coordinator.local_state();
        let alive = alive(&jobs);
        let busy = busy(&state.state);
        let needing: Vec<String> = state
            .state
            .training
            .jobs
            .iter()
            .filter(|(_, t)| next_group(t, &alive, &busy, false).is_some())
            .map(|(n, _)| n.clone())
            .collect();
        for job in needing {
            regroup(&jobs, &job, false).await;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            // A closed watch would wake this at once, forever.
            r = state_rx.changed() => if r.is_err() { return },
            r = members_rx.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use idunno_state::{TrainGroup, TrainProgress, TrainSpec};

    fn training(workers: &[u64], want: u32) -> Training {
        Training {
            spec: TrainSpec { workers: want, ..Default::default() },
            state: JobState::Running,
            group: TrainGroup { generation: 3, workers: workers.to_vec() },
            progress: TrainProgress::default(),
        }
    }

    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    #[test]
    fn a_whole_group_stays_unless_forced() {
        let t = training(&[4, 2], 2);
        assert_eq!(next_group(&t, &set(&[1, 2, 3, 4]), &BTreeMap::new(), false), None);
        assert_eq!(next_group(&t, &set(&[1, 2, 3, 4]), &BTreeMap::new(), true), Some(vec![4, 2]));
    }

    #[test]
    fn survivors_keep_their_ranks_and_the_least_busy_fill_in() {
        let t = training(&[4, 2, 5], 3);
        let busy = BTreeMap::from([(1, 2), (3, 0)]);
        assert_eq!(next_group(&t, &set(&[1, 3, 4]), &busy, false), Some(vec![4, 3, 1]));
        // Rank 0 died: the next survivor is the new rank 0.
        assert_eq!(next_group(&t, &set(&[2, 5]), &busy, false), Some(vec![2, 5]));
        // Nobody alive: no group.
        assert_eq!(next_group(&t, &set(&[]), &busy, false), None);
    }

    #[test]
    fn a_shrunken_group_grows_back_right_after_a_checkpoint() {
        let mut t = training(&[2], 3);
        t.progress.checkpoint = Some((4, 300));
        t.progress.step = 340;
        let alive = set(&[1, 2, 3]);
        // Steps since the checkpoint would be redone: wait.
        assert_eq!(next_group(&t, &alive, &BTreeMap::new(), false), None);
        t.progress.step = 300;
        assert_eq!(next_group(&t, &alive, &BTreeMap::new(), false), Some(vec![2, 1, 3]));
        // Nobody spare: nothing to do.
        assert_eq!(next_group(&t, &set(&[2]), &BTreeMap::new(), false), None);
    }

    #[test]
    fn a_new_or_restarted_training_gets_its_workers() {
        let t = training(&[], 2);
        assert_eq!(next_group(&t, &set(&[3, 1, 2]), &BTreeMap::new(), false), Some(vec![1, 2]));
        let mut stopped = training(&[], 2);
        stopped.state = JobState::Stopped;
        assert_eq!(next_group(&stopped, &set(&[1, 2]), &BTreeMap::new(), false), None);
    }
}
