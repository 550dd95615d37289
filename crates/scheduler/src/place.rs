//! Which workers load which served model: the leader's placement, as a
//! pure rule.
//!
//! A served model asks for a number of workers (0: every live one). The
//! rule keeps a model where it is while those workers stay live, so a
//! worker loads a model once and a death moves only what the dead worker
//! held; a model short of workers gets the least loaded ones, load being
//! the bytes of the models already placed on a worker (memory is what
//! placement spends), and among equals a worker that holds the model's
//! file in SDFS (it reads it from its own disk). Requests are then shared
//! between the models on one worker by its fair queue, in the ratio of
//! their weights, as queries of jobs are.
//!
//! **Invariant:** no I/O; the same inputs give the same placement.

use std::collections::{BTreeMap, BTreeSet};

use crate::WorkerId;

/// A served model, as placement sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Demand {
    pub name: String,
    /// How many workers should load it: 0 for every live one.
    pub workers: usize,
    /// What loading it costs a worker (the model file's bytes).
    pub bytes: u64,
    /// Where it is placed now.
    pub placed: Vec<WorkerId>,
    /// The workers that hold the model's file in SDFS.
    pub holders: BTreeSet<WorkerId>,
}

/// The placement of every model of `demands` over the `live` workers (the
/// ones that may take work: not dead, not draining), each sorted.
pub fn place(demands: &[Demand], live: &[WorkerId]) -> BTreeMap<String, Vec<WorkerId>> {
    let live: BTreeSet<WorkerId> = live.iter().copied().collect();
    let want = |d: &Demand| if d.workers == 0 { live.len() } else { d.workers.min(live.len()) };
    // What stays: the live workers a model is on, up to what it asks for
    // (the lowest ids first, so that the rule is the same on every run).
    let mut out: BTreeMap<String, BTreeSet<WorkerId>> = BTreeMap::new();
    let mut load: BTreeMap<WorkerId, u64> = live.iter().map(|w| (*w, 0)).collect();
    for d in demands {
        let on: BTreeSet<WorkerId> = d.placed.iter().copied().filter(|w| live.contains(w)).collect();
        let kept: BTreeSet<WorkerId> = on.into_iter().take(want(d)).collect();
        for w in &kept {
            *load.entry(*w).or_default() += d.bytes;
        }
        out.insert(d.name.clone(), kept);
    }
    // Then the models short of workers, the largest first (they are the
    // hardest to spread), each on the least loaded of the rest.
    let mut order: Vec<&Demand> = demands.iter().collect();
    order.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.name.cmp(&b.name)));
    for d in order {
        let Some(on) = out.get_mut(&d.name) else { continue };
        while on.len() < want(d) {
            let pick = load
                .iter()
                .filter(|(w, _)| !on.contains(w))
                .min_by_key(|(w, l)| (**l, !d.holders.contains(w), **w))
                .map(|(w, _)| *w);
            let Some(w) = pick else { break };
            on.insert(w);
            *load.entry(w).or_default() += d.bytes;
        }
    }
    out.into_iter().map(|(name, on)| (name, on.into_iter().collect())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demand(name: &str, workers: usize, bytes: u64, placed: &[u64], holders: &[u64]) -> Demand {
        Demand {
            name: name.into(),
            workers,
            bytes,
            placed: placed.to_vec(),
            holders: holders.iter().copied().collect(),
        }
    }

    #[test]
    fn a_model_asking_for_every_worker_is_on_every_live_one() {
        let p = place(&[demand("m", 0, 10, &[1, 9], &[])], &[1, 2, 3]);
        assert_eq!(p["m"], vec![1, 2, 3]);
        // Asking for more workers than live ones: every live one.
        let p = place(&[demand("m", 5, 10, &[], &[])], &[2, 3]);
        assert_eq!(p["m"], vec![2, 3]);
        assert_eq!(place(&[demand("m", 2, 10, &[1], &[])], &[])["m"], Vec::<u64>::new());
    }

    #[test]
    fn models_stay_put_and_only_a_dead_workers_share_moves() {
        let demands = [demand("a", 2, 100, &[1, 2], &[]), demand("b", 2, 100, &[3, 4], &[])];
        let p = place(&demands, &[1, 2, 3, 4, 5]);
        assert_eq!((p["a"].clone(), p["b"].clone()), (vec![1, 2], vec![3, 4]));
        // Worker 2 dies: a takes the one worker that holds nothing.
        let p = place(&demands, &[1, 3, 4, 5]);
        assert_eq!((p["a"].clone(), p["b"].clone()), (vec![1, 5], vec![3, 4]));
        // More than asked for (it asked for fewer since): the lowest ids stay.
        let p = place(&[demand("a", 1, 100, &[2, 1], &[])], &[1, 2, 3]);
        assert_eq!(p["a"], vec![1]);
    }

    #[test]
    fn new_models_go_to_the_least_loaded_workers_and_prefer_holders_among_equals() {
        // Worker 1 holds a big model, 2 a small one: the new one goes to
        // 3 and then 2.
        let demands =
            [demand("big", 1, 1000, &[1], &[]), demand("small", 1, 10, &[2], &[]), demand("new", 2, 50, &[], &[1])];
        let p = place(&demands, &[1, 2, 3]);
        assert_eq!(p["new"], vec![2, 3]);
        // All empty: the file's holders first.
        let p = place(&[demand("m", 2, 50, &[], &[3, 4])], &[1, 2, 3, 4]);
        assert_eq!(p["m"], vec![3, 4]);
    }

    #[test]
    fn many_models_spread_by_bytes() {
        let demands: Vec<Demand> = (0..6).map(|i| demand(&format!("m{i}"), 1, 100 + i, &[], &[])).collect();
        let p = place(&demands, &[1, 2, 3]);
        let mut per: BTreeMap<u64, usize> = BTreeMap::new();
        for on in p.values() {
            assert_eq!(on.len(), 1);
            *per.entry(on[0]).or_default() += 1;
        }
        assert_eq!(per.values().copied().collect::<Vec<_>>(), vec![2, 2, 2], "{p:?}");
        // The same inputs, the same placement.
        assert_eq!(place(&demands, &[1, 2, 3]), p);
    }
}
