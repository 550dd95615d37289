use super::*;

/// The first free position by brute force over everything held.
fn first_free(q: &JobQueue) -> u64 {
    let mut taken: Vec<(u64, u64)> = q.view.done.clone();
    taken.extend(q.leased.iter().map(|(&s, l)| (s, s + l.len)));
    taken.extend(q.pending.iter().map(|(&s, &l)| (s, s + l)));
    taken.sort_unstable();
    let mut cursor = 0;
    for (s, e) in taken {
        if s > cursor {
            break;
        }
        cursor = cursor.max(e);
    }
    cursor
}

/// Three workers taking one query at a time, as slots free up: each
/// gets runs of consecutive queries (so each reads its own chunks of
/// rows), and still every position is handed out exactly once, to
/// the last query of the job.
#[test]
fn workers_take_runs_of_consecutive_queries_and_every_position_once() {
    let mut d = Dispatcher::new(DispatcherConfig::default());
    let batch = 10u64;
    let samples = 6 * RUN_QUERIES * batch + 55;
    let view = JobView { name: "j".into(), samples, passes: Some(1), batch_size: batch as u32, done: vec![] };
    d.sync(std::slice::from_ref(&view));
    let mut by_worker: BTreeMap<WorkerId, Vec<Query>> = BTreeMap::new();
    let mut seen = vec![false; samples as usize];
    for round in 0.. {
        let w = 1 + round % 3;
        let Some(q) = d.take(w, 1, 0).pop() else { break };
        for p in q.start..q.start + q.len {
            assert!(!std::mem::replace(&mut seen[p as usize], true), "position {p} handed out twice");
        }
        assert_eq!(d.report(w, &q, 1000, 0), Report::Accepted);
        by_worker.entry(w).or_default().push(q);
        d.check().unwrap();
    }
    assert!(seen.iter().all(|s| *s), "every position handed out");
    for (w, qs) in &by_worker {
        // The first RUN_QUERIES / 2 queries of each worker follow one
        // another: no worker steps into another's run.
        let first: Vec<u64> = qs.iter().take(RUN_QUERIES as usize / 2).map(|q| q.start).collect();
        assert!(first.windows(2).all(|p| p[1] == p[0] + batch), "worker {w}: {first:?}");
    }
    let starts: BTreeSet<u64> = by_worker.values().map(|qs| qs[0].start).collect();
    assert_eq!(starts.len(), 3, "three runs in three places: {starts:?}");
}

/// A looping job over a set of a few runs per pass: runs never take
/// a worker passes ahead of the first free query.
#[test]
fn runs_over_a_looping_set_stay_within_a_pass_of_the_front() {
    let mut d = Dispatcher::new(DispatcherConfig::default());
    let samples = 4 * RUN_QUERIES * 2 + 88;
    let view = JobView { name: "j".into(), samples, passes: None, batch_size: 2, done: vec![] };
    d.sync(std::slice::from_ref(&view));
    let mut held: Vec<(WorkerId, Query)> = Vec::new();
    for round in 0..6000u64 {
        let w = 1 + round % 3;
        // Each worker holds two queries; the one that finishes is
        // the oldest of a worker picked in turn.
        if held.iter().filter(|(x, _)| *x == w).count() >= 2 {
            let i = held.iter().position(|(x, _)| *x == w).unwrap();
            let (_, q) = held.remove(i);
            assert_eq!(d.report(w, &q, 1000, 0), Report::Accepted);
            let q = d.jobs.get_mut("j").unwrap();
            let done: Vec<u64> = q.pending.keys().copied().collect();
            for s in done {
                let l = q.pending.remove(&s).unwrap();
                q.view.done.push((s, s + l));
            }
            q.view.done.sort_unstable();
        }
        let front = first_free(&d.jobs["j"]) / samples;
        for q in d.take(w, 1, 0) {
            assert!(q.pass <= front + 1, "round {round}: pass {} handed out, front at pass {front}", q.pass);
            held.push((w, q));
        }
    }
}

/// A worker whose run meets work taken by another goes on at the
/// first free query outside the others' runs; one that died leaves
/// no run behind.
#[test]
fn a_run_that_meets_taken_work_starts_again_outside_the_others() {
    let mut d = Dispatcher::new(DispatcherConfig::default());
    let view = JobView { name: "j".into(), samples: 1_000_000, passes: Some(1), batch_size: 10, done: vec![] };
    d.sync(std::slice::from_ref(&view));
    let span = RUN_QUERIES * 10;
    assert_eq!(d.take(1, 1, 0)[0].start, 0);
    // Worker 2 starts past worker 1's run.
    assert_eq!(d.take(2, 1, 0)[0].start, 10 + span);
    // Worker 1 goes on; worker 3 starts past both runs.
    assert_eq!(d.take(1, 1, 0)[0].start, 10);
    assert_eq!(d.take(3, 1, 0)[0].start, 20 + 2 * span);
    // Worker 2 dies: its lease and its run are gone. The next worker
    // to start a run starts right past worker 1's; worker 1's run
    // takes up what worker 2 held when it gets there.
    d.worker_gone(2);
    assert_eq!(d.take(4, 1, 0)[0].start, 20 + span);
    for _ in 0..RUN_QUERIES - 1 {
        d.take(1, 1, 0);
    }
    assert_eq!(d.take(1, 1, 0)[0].start, 10 + span, "worker 2's query, by worker 1's run");
    d.check().unwrap();
}

/// Random events (a fixed-seed generator), and after each one the
/// search that starts from `free_from` finds what a walk over
/// everything held finds.
#[test]
fn the_search_for_free_work_agrees_with_a_walk_over_everything_held() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n.max(1)
    };
    let mut d = Dispatcher::new(DispatcherConfig { lease_ms: 100 });
    let mut view = JobView { name: "j".into(), samples: 50, passes: Some(6), batch_size: 3, done: vec![] };
    d.sync(std::slice::from_ref(&view));
    let mut now = 0;
    let mut held: Vec<(WorkerId, Query)> = Vec::new();
    let mut reported: Vec<Query> = Vec::new();
    for step in 0..20_000 {
        now += rand(20);
        match rand(8) {
            0..=2 => {
                let w = rand(4);
                held.extend(d.take(w, 1 + rand(2) as usize, now).into_iter().map(|q| (w, q)));
            }
            3 | 4 if !held.is_empty() => {
                let (w, q) = held.swap_remove(rand(held.len() as u64) as usize);
                if d.report(w, &q, 10, now) == Report::Accepted {
                    reported.push(q);
                }
            }
            5 if !held.is_empty() => {
                let (w, q) = held.swap_remove(rand(held.len() as u64) as usize);
                d.release(w, &q);
            }
            6 => {
                // A flush: commit some reports, abandon others.
                let (commit, give_up): (Vec<Query>, Vec<Query>) = reported.drain(..).partition(|_| rand(4) > 0);
                d.abandon(&give_up);
                view.done.extend(commit.iter().map(|q| (q.start, q.start + q.len)));
                view.done.sort_unstable();
                view.done = view.done.iter().fold(Vec::new(), |mut m: Vec<(u64, u64)>, &(s, e)| {
                    match m.last_mut() {
                        Some(last) if s <= last.1 => last.1 = last.1.max(e),
                        _ => m.push((s, e)),
                    }
                    m
                });
                if rand(50) == 0 {
                    // The job finished and runs again from the start.
                    view.done.clear();
                }
                d.sync(std::slice::from_ref(&view));
            }
            _ => {
                if rand(2) == 0 {
                    d.expire(now);
                } else {
                    d.worker_gone(rand(4));
                }
            }
        }
        d.check().unwrap();
        if let Some(q) = d.jobs.get_mut("j") {
            let want = first_free(q);
            let got = q.next_free().map_or(q.view.end(), |(s, _)| s);
            assert_eq!(got, want.min(q.view.end()), "step {step}");
        }
    }
}
