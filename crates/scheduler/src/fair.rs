//! Which piece of work a free worker slot takes next, when several flows
//! wait at one worker: the queries of each job the leader handed it, and
//! the request batches of each served model that nodes sent it.
//!
//! Start-time fair queuing, the rule the dispatcher applies to jobs: each
//! flow has a virtual time that grows by the work it was given divided by
//! its weight (a job's query counts one, a served batch counts its
//! requests), and a free slot takes the head of the waiting flow with the
//! smallest. A flow that was idle starts level with the least-served busy
//! flow, so idling earns no burst. Under overload every flow then gets the
//! same rate of queries or requests (in the ratio of the weights), whatever
//! each costs.
//!
//! **Invariant:** no I/O, no clock; items wait in arrival order within a
//! flow.

use std::collections::{BTreeMap, VecDeque};

/// Work waiting for a slot, by flow.
#[derive(Debug)]
pub struct FairQueue<T> {
    flows: BTreeMap<String, Flow<T>>,
    /// The virtual time of the last item taken: where an idle flow
    /// starts again.
    now: f64,
    len: usize,
}

#[derive(Debug)]
struct Flow<T> {
    vtime: f64,
    /// (item, its size in the flow's units, the flow's weight then).
    items: VecDeque<(T, f64, f64)>,
}

impl<T> Default for FairQueue<T> {
    fn default() -> Self {
        FairQueue { flows: BTreeMap::new(), now: 0.0, len: 0 }
    }
}

impl<T> FairQueue<T> {
    /// Queue `item` of `size` units (≥ 1 counted) in `flow`, whose share is
    /// in proportion to `weight` (≥ 1 counted).
    pub fn push(&mut self, flow: &str, item: T, size: u64, weight: u32) {
        let now = self.now;
        let f = self.flows.entry(flow.to_string()).or_insert_with(|| Flow { vtime: now, items: VecDeque::new() });
        if f.items.is_empty() {
            f.vtime = f.vtime.max(now);
        }
        f.items.push_back((item, size.max(1) as f64, weight.max(1) as f64));
        self.len += 1;
    }

    /// The next item for a free slot, with its flow.
    pub fn pop(&mut self) -> Option<(String, T)> {
        let name = self
            .flows
            .iter()
            .filter(|(_, f)| !f.items.is_empty())
            .min_by(|a, b| a.1.vtime.total_cmp(&b.1.vtime).then_with(|| a.0.cmp(b.0)))
            .map(|(n, _)| n.clone())?;
        let f = self.flows.get_mut(&name)?;
        let (item, size, weight) = f.items.pop_front()?;
        self.now = self.now.max(f.vtime);
        f.vtime += size / weight;
        self.len -= 1;
        self.forget_idle();
        Some((name, item))
    }

    /// Idle flows whose virtual time the clock has passed carry nothing
    /// worth keeping.
    fn forget_idle(&mut self) {
        let now = self.now;
        self.flows.retain(|_, f| !f.items.is_empty() || f.vtime > now);
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Items waiting in `flow`.
    pub fn waiting(&self, flow: &str) -> usize {
        self.flows.get(flow).map_or(0, |f| f.items.len())
    }

    /// Take every waiting item out (the slots are going away).
    pub fn drain(&mut self) -> Vec<(String, T)> {
        let mut out = Vec::with_capacity(self.len);
        for (name, f) in std::mem::take(&mut self.flows) {
            out.extend(f.items.into_iter().map(|(t, _, _)| (name.clone(), t)));
        }
        self.len = 0;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slots that take an item, run it for its cost and come back, with
    /// every flow always backlogged; items of each flow taken.
    fn run(costs: &[(&str, u64, u64, u32)], steps: usize) -> BTreeMap<String, u64> {
        let mut q = FairQueue::default();
        let mut taken: BTreeMap<String, u64> = BTreeMap::new();
        for &(flow, _, size, weight) in costs {
            for _ in 0..4 {
                q.push(flow, (), size, weight);
            }
        }
        // One slot, simulated: the clock is the sum of costs so far.
        for _ in 0..steps {
            let (flow, ()) = q.pop().unwrap();
            let &(_, _, size, weight) = costs.iter().find(|c| c.0 == flow).unwrap();
            *taken.entry(flow.clone()).or_default() += size;
            q.push(&flow, (), size, weight);
        }
        taken
    }

    #[test]
    fn backlogged_flows_get_equal_units_whatever_their_cost_or_ratios_by_weight() {
        // (flow, cost, size in requests, weight)
        let t = run(&[("a", 40, 1, 1), ("b", 10, 1, 1)], 1000);
        assert_eq!(t["a"], t["b"]);
        // Batches of 8 requests against single requests: equal requests.
        let t = run(&[("a", 40, 8, 1), ("b", 10, 1, 1)], 900);
        assert!((t["a"] as i64 - t["b"] as i64).abs() <= 8, "{t:?}");
        // Weights 3:1.
        let t = run(&[("a", 10, 1, 3), ("b", 10, 1, 1)], 800);
        assert_eq!((t["a"], t["b"]), (600, 200));
    }

    #[test]
    fn an_idle_flow_gets_no_burst_when_it_comes_back() {
        let mut q = FairQueue::default();
        for _ in 0..100 {
            q.push("a", 'a', 1, 1);
        }
        for _ in 0..50 {
            assert_eq!(q.pop().unwrap().0, "a");
        }
        // b arrives after a was served 50 times: it alternates with a
        // from now on instead of taking 50 in a row.
        for _ in 0..10 {
            q.push("b", 'b', 1, 1);
        }
        let next: String = (0..10).map(|_| q.pop().unwrap().1).collect();
        assert_eq!(next.matches('b').count(), 5, "{next}");
        assert_eq!(q.len(), 50);
    }

    #[test]
    fn items_keep_their_order_within_a_flow_and_drain_empties() {
        let mut q = FairQueue::default();
        for i in 0..5 {
            q.push("a", i, 1, 1);
        }
        let got: Vec<i32> = (0..3).map(|_| q.pop().unwrap().1).collect();
        assert_eq!(got, vec![0, 1, 2]);
        assert_eq!(q.waiting("a"), 2);
        let rest: Vec<i32> = q.drain().into_iter().map(|(_, i)| i).collect();
        assert_eq!(rest, vec![3, 4]);
        assert!(q.is_empty() && q.pop().is_none());
    }
}
