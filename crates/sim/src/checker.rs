//! The invariants checked after every simulation step (the list is in
//! the crate's documentation).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use idunno_coordinator::store::SmData;
use openraft::ServerState;

use super::{JOBS, REPLICAS, Registry};

/// Each job's counted work: ranges of stream positions.
type Work = BTreeMap<String, Vec<(u64, u64)>>;

/// The invariants, checked after every step.
#[derive(Default)]
pub(super) struct Checker {
    /// Term → the node seen leading it.
    pub(super) leaders: BTreeMap<u64, u64>,
    /// Log index → digest of the cluster state applied up to it.
    digests: HashMap<u64, u64>,
    /// The newest applied state seen on any node: its index and each
    /// job's counted work.
    newest: Option<(u64, Work)>,
    /// Each training's generation and checkpoint step in that state.
    trainings: BTreeMap<String, (u64, u64)>,
    /// The newest state's files (for the replica check at the end).
    files: BTreeMap<String, Vec<u64>>,
    /// Every job of the newest state is done.
    pub(super) all_done: bool,
}

impl Checker {
    pub(super) fn check(&mut self, registry: &Registry) -> Result<(), String> {
        let reg = registry.borrow();
        for (&id, view) in reg.iter() {
            let (state, term) = {
                let m = view.metrics.borrow();
                (m.state, m.current_term)
            };
            if state == ServerState::Leader
                && let Some(other) = self.leaders.insert(term, id)
                && other != id
            {
                return Err(format!("two leaders in term {term}: n{other} and n{id}"));
            }
            if let Some(jobs) = view.jobs.upgrade() {
                jobs.check_leases().map_err(|e| format!("n{id}'s lease table: {e}"))?;
            }
        }
        drop(reg);
        // Cloned out so that no borrow of a watch is held below.
        let changed: Vec<(u64, Arc<SmData>)> = registry
            .borrow_mut()
            .iter_mut()
            .filter(|(_, v)| v.state.has_changed().unwrap_or(false))
            .map(|(&id, v)| (id, v.state.borrow_and_update().clone()))
            .collect();
        for (id, sm) in changed {
            self.check_state(id, &sm)?;
        }
        Ok(())
    }

    pub(super) fn check_state(&mut self, id: u64, sm: &SmData) -> Result<(), String> {
        let Some(index) = sm.last_applied.map(|l| l.index) else { return Ok(()) };
        let json = serde_json::to_string(&sm.state).map_err(|e| e.to_string())?;
        let mut h = DefaultHasher::new();
        json.hash(&mut h);
        let digest = h.finish();
        if let Some(seen) = self.digests.insert(index, digest)
            && seen != digest
        {
            return Err(format!("n{id} applied a different cluster state at log index {index} than another node"));
        }
        let mut work = BTreeMap::new();
        for (name, job) in &sm.state.inference.jobs {
            let p = &job.progress;
            let mut total = 0;
            for (k, &(s, e)) in p.done.iter().enumerate() {
                if s >= e || (k > 0 && p.done[k - 1].1 >= s) {
                    return Err(format!(
                        "n{id}, job {name}: counted work is not sorted, disjoint ranges: {:?}",
                        p.done
                    ));
                }
                total += e - s;
            }
            if total != p.inputs_done {
                return Err(format!("n{id}, job {name}: {} inputs counted but the ranges hold {total}", p.inputs_done));
            }
            work.insert(name.clone(), p.done.clone());
        }
        if self.newest.as_ref().is_none_or(|(i, _)| index > *i) {
            if let Some((old_index, old)) = &self.newest {
                for (name, ranges) in old {
                    let now = work.get(name).cloned().unwrap_or_default();
                    for &(s, e) in ranges {
                        if !now.iter().any(|&(a, b)| a <= s && e <= b) {
                            return Err(format!(
                                "n{id}, job {name}: work [{s}, {e}) counted at index {old_index} is gone at index {index}"
                            ));
                        }
                    }
                }
            }
            for (name, t) in &sm.state.training.jobs {
                let now = (t.group.generation, t.progress.checkpoint.map_or(0, |(_, step)| step));
                if let Some(&(generation, step)) = self.trainings.get(name)
                    && (now.0 < generation || now.1 < step)
                {
                    return Err(format!(
                        "n{id}, training {name}: generation {generation} / checkpoint step {step} went back to {now:?} at index {index}"
                    ));
                }
                self.trainings.insert(name.clone(), now);
            }
            self.newest = Some((index, work));
            self.all_done = sm.state.inference.jobs.len() == JOBS.len()
                && sm.state.inference.jobs.values().all(|j| j.state == idunno_state::JobState::Done)
                && sm.state.training.jobs.values().all(|t| t.state == idunno_state::JobState::Done);
            self.files = sm
                .state
                .namespace
                .files
                .iter()
                .filter_map(|(n, f)| f.versions.last().map(|v| (n.clone(), v.replicas.clone())))
                .collect();
        }
        Ok(())
    }

    /// Where the cluster stands, for a failure message.
    pub(super) fn summary(&self, registry: &Registry) -> String {
        let reg = registry.borrow();
        let nodes: Vec<String> = reg
            .iter()
            .map(|(id, v)| {
                let m = v.metrics.borrow();
                format!("n{id}: {:?} term {} applied {:?}", m.state, m.current_term, m.last_applied.map(|l| l.index))
            })
            .collect();
        let work: Vec<String> = self
            .newest
            .iter()
            .flat_map(|(i, w)| w.iter().map(move |(j, r)| format!("{j} at index {i}: {r:?}")))
            .collect();
        format!("nodes [{}]; work [{}]", nodes.join(", "), work.join("; "))
    }

    /// Files whose newest version has fewer than [`REPLICAS`] holders
    /// among the running nodes, in the newest state seen.
    pub(super) fn under_replicated(&self, registry: &Registry) -> BTreeMap<String, Vec<u64>> {
        let live: BTreeSet<u64> = registry.borrow().keys().copied().collect();
        self.files
            .iter()
            .filter(|(_, r)| r.iter().filter(|id| live.contains(id)).count() < REPLICAS)
            .map(|(n, r)| (n.clone(), r.clone()))
            .collect()
    }
}
