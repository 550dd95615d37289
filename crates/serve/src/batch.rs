//! Dynamic batching and routing at the node a request arrives at,
//! sans-IO: requests of one served model wait in a bounded queue; a batch
//! is the oldest request and the ones after it whose tensors can be
//! stacked with it (the same dimensions after the first), up to
//! `max_batch` rows, sent when it is full or its oldest request has waited
//! `max_delay_ms` — and only when a worker can take it, so that while every
//! worker is busy the queue fills and batches grow, as Triton's dynamic
//! batcher does. A batch goes to the ready worker with the fewest batches
//! in flight from here, never back to one that failed it.
//!
//! **Invariant:** no I/O, no clock (`now_ms` is an argument); a request is
//! in the queue, in one batch in flight, or answered — never two.

use std::collections::{BTreeMap, VecDeque};

/// What decides whether two requests can share a batch: each input's
/// datatype and dimensions after the first.
pub type StackKey = Vec<(u8, Vec<u64>)>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Rows per batch.
    pub max_batch: u64,
    pub max_delay_ms: u64,
    /// Requests waiting.
    pub max_queue: usize,
}

/// A request in the queue, or in a batch taken from it.
#[derive(Debug)]
pub struct Queued<R> {
    pub req: R,
    pub rows: u64,
    pub key: StackKey,
    pub arrived_ms: u64,
    pub deadline_ms: u64,
}

/// The queue of one served model at one node.
#[derive(Debug)]
pub struct Batcher<R> {
    limits: Limits,
    queue: VecDeque<Queued<R>>,
}

/// The queue is full: the request is refused (429).
#[derive(Debug, PartialEq, Eq)]
pub struct Full(pub usize);

impl<R> Batcher<R> {
    pub fn new(limits: Limits) -> Batcher<R> {
        Batcher { limits, queue: VecDeque::new() }
    }

    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Queue a request of `rows` rows; given back when the queue is full.
    pub fn push(&mut self, req: R, rows: u64, key: StackKey, now_ms: u64, deadline_ms: u64) -> Result<(), (Full, R)> {
        if self.queue.len() >= self.limits.max_queue {
            return Err((Full(self.limits.max_queue), req));
        }
        self.queue.push_back(Queued { req, rows, key, arrived_ms: now_ms, deadline_ms });
        Ok(())
    }

    /// The oldest request, which the next batch starts with.
    pub fn front(&self) -> Option<&Queued<R>> {
        self.queue.front()
    }

    pub fn front_mut(&mut self) -> Option<&mut Queued<R>> {
        self.queue.front_mut()
    }

    /// Every request, oldest first (the model is gone).
    pub fn take_all(&mut self) -> Vec<Queued<R>> {
        self.queue.drain(..).collect()
    }

    /// Put requests of a batch that could not run back at the front, in
    /// their order (they are the oldest).
    pub fn requeue(&mut self, batch: Vec<Queued<R>>) {
        for q in batch.into_iter().rev() {
            self.queue.push_front(q);
        }
    }

    /// Requests whose deadline has passed while they waited.
    pub fn expired(&mut self, now_ms: u64) -> Vec<R> {
        let mut out = Vec::new();
        let mut kept = VecDeque::with_capacity(self.queue.len());
        for w in self.queue.drain(..) {
            if w.deadline_ms <= now_ms { out.push(w.req) } else { kept.push_back(w) }
        }
        self.queue = kept;
        out
    }

    /// Whether a batch should go now, given a worker can take one.
    pub fn due(&self, now_ms: u64) -> bool {
        let Some(first) = self.queue.front() else { return false };
        if now_ms >= first.arrived_ms + self.limits.max_delay_ms {
            return true;
        }
        let rows: u64 = self.queue.iter().filter(|w| w.key == first.key).map(|w| w.rows).sum();
        rows >= self.limits.max_batch
    }

    /// When the oldest request's delay runs out (to wake then).
    pub fn wake_at(&self) -> Option<u64> {
        let first = self.queue.front()?;
        let deadline = self.queue.iter().map(|w| w.deadline_ms).min().unwrap_or(u64::MAX);
        Some((first.arrived_ms + self.limits.max_delay_ms).min(deadline))
    }

    /// The earliest deadline of a waiting request.
    pub fn next_deadline(&self) -> Option<u64> {
        self.queue.iter().map(|w| w.deadline_ms).min()
    }

    /// The next batch: the oldest request and the later ones that stack
    /// with it, up to `max_batch` rows (a request bigger than that goes
    /// alone).
    pub fn take(&mut self) -> Vec<Queued<R>> {
        let Some(first) = self.queue.pop_front() else { return Vec::new() };
        let mut rows = first.rows;
        let key = first.key.clone();
        let mut batch = vec![first];
        let mut kept = VecDeque::with_capacity(self.queue.len());
        while let Some(w) = self.queue.pop_front() {
            if w.key == key && rows + w.rows <= self.limits.max_batch {
                rows += w.rows;
                batch.push(w);
            } else {
                kept.push_back(w);
            }
        }
        self.queue = kept;
        batch
    }
}

/// Which worker a batch goes to: the ready one with the fewest batches in
/// flight from this node (within `per_worker`), skipping those that
/// already failed it; ties by id.
pub fn pick(
    ready: &[u64],
    in_flight: &BTreeMap<u64, usize>,
    per_worker: impl Fn(u64) -> usize,
    tried: &[u64],
) -> Option<u64> {
    ready
        .iter()
        .filter(|w| !tried.contains(w))
        .map(|w| (*w, in_flight.get(w).copied().unwrap_or(0)))
        .filter(|(w, n)| *n < per_worker(*w))
        .min_by_key(|(w, n)| (*n, *w))
        .map(|(w, _)| w)
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits { max_batch: 8, max_delay_ms: 5, max_queue: 4 };

    fn key(d: u64) -> StackKey {
        vec![(1, vec![d])]
    }

    #[test]
    fn a_batch_goes_when_full_or_when_its_oldest_has_waited() {
        let mut b = Batcher::new(L);
        b.push('a', 3, key(4), 100, 10_000).unwrap();
        assert!(!b.due(101));
        assert_eq!(b.wake_at(), Some(105));
        b.push('b', 3, key(4), 101, 10_000).unwrap();
        b.push('c', 3, key(4), 102, 10_000).unwrap();
        assert!(b.due(102), "9 rows waiting: a batch of 8 is full");
        let batch: Vec<char> = b.take().into_iter().map(|x| x.req).collect();
        assert_eq!(batch, vec!['a', 'b'], "6 rows; a third request would make 9");
        assert!(!b.due(104));
        assert!(b.due(107), "c has waited its 5 ms");
        assert_eq!(b.take().len(), 1);
    }

    #[test]
    fn only_requests_that_stack_share_a_batch_and_order_is_kept() {
        let mut b = Batcher::new(L);
        b.push(1, 1, key(4), 0, 100).unwrap();
        b.push(2, 1, key(5), 0, 100).unwrap();
        b.push(3, 1, key(4), 0, 100).unwrap();
        let first: Vec<i32> = b.take().into_iter().map(|x| x.req).collect();
        assert_eq!(first, vec![1, 3]);
        let second = b.take();
        assert_eq!(second.len(), 1);
        // A batch that could not run goes back in front.
        b.push(4, 1, key(5), 1, 100).unwrap();
        b.requeue(second);
        let again: Vec<i32> = b.take().into_iter().map(|x| x.req).collect();
        assert_eq!(again, vec![2, 4]);
    }

    #[test]
    fn a_full_queue_refuses_and_expired_requests_leave() {
        let mut b = Batcher::new(L);
        for i in 0..4 {
            b.push(i, 1, key(1), 0, 10 + i as u64).unwrap();
        }
        assert_eq!(b.push(9, 1, key(1), 0, 100).unwrap_err(), (Full(4), 9));
        assert_eq!(b.expired(11), vec![0, 1]);
        assert_eq!(b.len(), 2);
        assert_eq!(b.wake_at(), Some(5));
    }

    #[test]
    fn batches_go_to_the_least_busy_ready_worker_that_has_not_failed_them() {
        let flight: BTreeMap<u64, usize> = [(1, 2), (2, 0), (3, 1)].into();
        assert_eq!(pick(&[1, 2, 3], &flight, |_| 2, &[]), Some(2));
        assert_eq!(pick(&[1, 2, 3], &flight, |_| 2, &[2]), Some(3));
        assert_eq!(pick(&[1, 3], &flight, |_| 1, &[]), None, "every worker at its limit");
        assert_eq!(pick(&[1, 3], &flight, |w| if w == 1 { 4 } else { 1 }, &[]), Some(1));
        assert_eq!(pick(&[], &flight, |_| 2, &[]), None);
    }
}
