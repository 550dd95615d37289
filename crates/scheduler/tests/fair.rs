//! Fair-time dispatch: equal query rates whatever each query costs, seen
//! on a simulated clock with workers that take a query, run it for its
//! cost and come back.

use std::collections::BTreeMap;

use idunno_scheduler::{Capacity, Dispatcher, DispatcherConfig, JobView, Report, plan};

fn looping(name: &str, batch: u32) -> JobView {
    JobView { name: name.into(), samples: 1000, passes: None, batch_size: batch, done: vec![] }
}

/// A simulated worker: its id, its slots, and how many times longer than
/// the job's cost a query takes there (a slower machine).
#[derive(Clone, Copy)]
struct Worker {
    id: u64,
    slots: usize,
    slowdown: u64,
}

/// `n` alike single-slot workers, ids 1..=n.
fn alike(n: u64) -> Vec<Worker> {
    (1..=n).map(|id| Worker { id, slots: 1, slowdown: 1 }).collect()
}

/// What a simulation saw after `from_ms`: completions per job and per
/// worker, and when each job's first query completed.
#[derive(Default)]
struct Seen {
    done: BTreeMap<String, u64>,
    by_worker: BTreeMap<u64, u64>,
    first: BTreeMap<String, u64>,
}

/// Run the `pool` for `until_ms` of simulated time: every free slot takes
/// a query and runs it for `cost(job) × slowdown` ms. Jobs may join at a
/// time (`joins`).
fn simulate(
    d: &mut Dispatcher,
    pool: &[Worker],
    joins: &[(u64, JobView)],
    cost: impl Fn(&str) -> u64,
    from_ms: u64,
    until_ms: u64,
) -> Seen {
    let mut seen = Seen::default();
    // (worker, slot) → (query, finishes at)
    let mut busy: BTreeMap<(u64, usize), (idunno_scheduler::Query, u64)> = BTreeMap::new();
    let mut running: Vec<JobView> = Vec::new();
    for now in 0..until_ms {
        for (at, job) in joins {
            if *at == now {
                running.push(job.clone());
                d.sync(&running);
            }
        }
        let finished: Vec<(u64, usize)> = busy.iter().filter(|(_, (_, t))| *t <= now).map(|(s, _)| *s).collect();
        for (w, slot) in finished {
            let (q, _) = busy.remove(&(w, slot)).unwrap();
            let slowdown = pool.iter().find(|x| x.id == w).map_or(1, |x| x.slowdown);
            assert_eq!(d.report(w, &q, cost(&q.job) * slowdown * 1000, now), Report::Accepted);
            seen.first.entry(q.job.clone()).or_insert(now);
            if now >= from_ms {
                *seen.done.entry(q.job.clone()).or_default() += 1;
                *seen.by_worker.entry(w).or_default() += 1;
            }
        }
        for w in pool {
            for slot in 0..w.slots {
                if !busy.contains_key(&(w.id, slot))
                    && let Some(q) = d.take(w.id, 1, now).pop()
                {
                    let t = now + cost(&q.job) * w.slowdown;
                    busy.insert((w.id, slot), (q, t));
                }
            }
        }
        d.check().unwrap();
    }
    seen
}

/// The pool's workers with their slots, as the leader tells `explain`.
fn slots(pool: &[Worker]) -> BTreeMap<u64, usize> {
    pool.iter().map(|w| (w.id, w.slots)).collect()
}

fn ratio(done: &BTreeMap<String, u64>) -> f64 {
    let max = *done.values().max().unwrap() as f64;
    let min = *done.values().min().unwrap() as f64;
    max / min - 1.0
}

#[test]
fn jobs_of_four_times_the_cost_get_equal_query_rates() {
    let mut d = Dispatcher::new(DispatcherConfig::default());
    let cost = |j: &str| if j == "big" { 40 } else { 10 };
    let done =
        simulate(&mut d, &alike(5), &[(0, looping("big", 4)), (0, looping("small", 1))], cost, 2_000, 12_000).done;
    // 5 workers, 50 ms of work per pair of queries: 100 queries/s each.
    assert!(ratio(&done) <= 0.05, "{done:?}");
    assert!((done["big"] as f64 / 10.0 - 100.0).abs() < 5.0, "{done:?}");
    // The costlier job holds about four fifths of the workers' time.
    let shares = d.explain(&slots(&alike(5)), 12_000);
    let big: f64 = shares["big"].shares.values().sum();
    let small: f64 = shares["small"].shares.values().sum();
    assert!((big / (big + small) - 0.8).abs() < 0.05, "{shares:?}");
    assert_eq!(shares["big"].cost_ms, Some(40.0));
    let predicted = shares["big"].predicted_rate.unwrap();
    assert!((predicted - 100.0).abs() < 1.0, "{predicted}");
    // Every slot ran queries all the time: the prediction's premise held.
    let mut busy = shares["big"].slot_busy.clone();
    busy.extend(shares["small"].slot_busy.clone());
    assert_eq!(busy.len(), 5, "{busy:?}");
    assert!(busy.values().all(|b| *b > 0.97), "{busy:?}");
}

/// A worker whose slot waits between queries (handing out and counting
/// them costs more than running them) is busy only part of the time: the
/// prediction, which assumes busy slots, is above what it does by that
/// part, and the share says so.
#[test]
fn slots_that_wait_for_work_show_how_busy_they_were() {
    let mut d = Dispatcher::new(DispatcherConfig::default());
    d.sync(&[looping("a", 1)]);
    // 10 ms per query, one query every 40 ms, for 12 s.
    let mut now = 0;
    let mut done = 0u64;
    while now < 12_000 {
        let q = d.take(1, 1, now).pop().unwrap();
        now += 40;
        assert_eq!(d.report(1, &q, 10_000, now), Report::Accepted);
        done += 1;
    }
    let shares = d.explain(&[(1, 1)].into(), now);
    let busy = shares["a"].slot_busy[&1];
    assert!((busy - 0.25).abs() < 0.02, "busy {busy}");
    let predicted = shares["a"].predicted_rate.unwrap();
    assert!((predicted - 100.0).abs() < 1.0, "{predicted}");
    let measured = done as f64 / 12.0;
    assert!((predicted * busy / measured - 1.0).abs() < 0.05, "{predicted} × {busy} against {measured}");
}

#[test]
fn a_job_that_joins_runs_at_once_and_gets_no_burst() {
    let mut d = Dispatcher::new(DispatcherConfig::default());
    let cost = |j: &str| if j == "a" { 20 } else { 5 };
    let joins = [(0, looping("a", 1)), (5_000, looping("b", 1))];
    let Seen { done, first, .. } = simulate(&mut d, &alike(4), &joins, cost, 8_000, 18_000);
    // Its first query finishes within a query or two of joining.
    assert!(first["b"] <= 5_000 + 20 + 5, "{first:?}");
    assert!(ratio(&done) <= 0.05, "{done:?}");
}

#[test]
fn rates_stay_equal_when_a_worker_goes() {
    let mut d = Dispatcher::new(DispatcherConfig::default());
    let cost = |j: &str| if j == "a" { 30 } else { 10 };
    simulate(&mut d, &alike(5), &[(0, looping("a", 1)), (0, looping("b", 1))], cost, 0, 1_000);
    assert!(d.worker_gone(5) <= 1);
    let done = simulate(&mut d, &alike(4), &[], cost, 0, 10_000).done;
    assert!(ratio(&done) <= 0.05, "{done:?}");
}

/// Jobs with their cost per query (µs), slots → rate, worker shares.
type Case<'a> = (&'a [(&'a str, f64)], usize, f64, &'a [(&'a str, f64)]);

#[test]
fn the_plan_splits_slots_by_cost() {
    // (jobs with their cost per query in µs, slots) → common rate and
    // each job's worker share.
    let cases: &[Case] = &[
        (&[("effnet", 40_000.0), ("tiny", 10_000.0)], 5, 100.0, &[("effnet", 4.0), ("tiny", 1.0)]),
        (&[("a", 10_000.0), ("b", 10_000.0)], 2, 100.0, &[("a", 1.0), ("b", 1.0)]),
        (&[("solo", 25_000.0)], 3, 120.0, &[("solo", 3.0)]),
        (&[("x", 1_000.0), ("y", 2_000.0), ("z", 7_000.0)], 1, 100.0, &[("x", 0.1), ("y", 0.2), ("z", 0.7)]),
    ];
    for (costs, slots, rate, shares) in cases {
        let costs: Vec<(String, f64)> = costs.iter().map(|(n, c)| (n.to_string(), *c)).collect();
        let p = plan(&costs, &vec![Capacity::slots(1); *slots]);
        assert!((p.rate - rate).abs() < 1e-9, "{costs:?}: rate {}", p.rate);
        for (job, w) in *shares {
            assert!((p.jobs[*job].workers - w).abs() < 1e-9, "{costs:?}: {job} {}", p.jobs[*job].workers);
            assert!((p.jobs[*job].rate - rate).abs() < 1e-9);
        }
    }
    assert_eq!(plan(&[], &[Capacity::slots(5)]).rate, 0.0);
    // Slots of one worker count as much as single-slot workers.
    let costs = [("a".to_string(), 10_000.0)];
    assert_eq!(plan(&costs, &[Capacity::slots(3)]).rate, plan(&costs, &vec![Capacity::slots(1); 3]).rate);
}

#[test]
fn workers_of_different_slots_and_speeds_keep_the_rates_equal_and_the_faster_do_more() {
    let mut d = Dispatcher::new(DispatcherConfig::default());
    // Two plain workers, one with two slots, one three times slower.
    let pool = [
        Worker { id: 1, slots: 1, slowdown: 1 },
        Worker { id: 2, slots: 1, slowdown: 1 },
        Worker { id: 3, slots: 2, slowdown: 1 },
        Worker { id: 4, slots: 1, slowdown: 3 },
    ];
    let cost = |j: &str| if j == "big" { 40 } else { 10 };
    let seen = simulate(&mut d, &pool, &[(0, looping("big", 4)), (0, looping("small", 1))], cost, 2_000, 12_000);
    assert!(ratio(&seen.done) <= 0.05, "{:?}", seen.done);
    // Per pair of queries (50 ms on a plain slot): 20 pairs/s per plain
    // slot, 4 plain slots and a third of one: 86.7 queries/s per job.
    let measured = seen.done["big"] as f64 / 10.0;
    assert!((measured - 86.7).abs() < 5.0, "{:?}", seen.done);
    let w = &seen.by_worker;
    let plain = w[&1].min(w[&2]) as f64;
    assert!(w[&3] as f64 > 1.8 * plain, "two slots run about twice as many: {w:?}");
    assert!((w[&4] as f64) < 0.45 * plain, "a third of the speed runs about a third as many: {w:?}");
    // The plan counts the slots and what each worker's queries cost.
    let shares = d.explain(&slots(&pool), 12_000);
    let predicted = shares["big"].predicted_rate.unwrap();
    assert!((predicted / measured - 1.0).abs() < 0.05, "predicted {predicted}, measured {measured}");
    assert_eq!(shares["big"].slots[&3], 2);
    let q = &shares["small"].query_shares;
    assert!(q[&3] > q[&1] && q[&4] < q[&1], "{q:?}");
    assert!((q.values().sum::<f64>() - 1.0).abs() < 1e-9, "{q:?}");
}

#[test]
fn the_plan_weighs_each_worker_by_its_slots_and_its_measured_costs() {
    let costs: Vec<(String, f64)> = vec![("a".into(), 20_000.0), ("b".into(), 5_000.0)];
    let measured = |a: f64, b: f64| [("a".to_string(), a), ("b".to_string(), b)].into_iter().collect();
    // A worker twice as slow on what it ran; another that ran only `a`,
    // at the average: its cost of `b` is taken as the average too.
    let workers = [
        Capacity { slots: 1, costs: measured(40_000.0, 10_000.0) },
        Capacity { slots: 2, costs: [("a".to_string(), 20_000.0)].into_iter().collect() },
    ];
    let p = plan(&costs, &workers);
    // 1 slot / 50 ms + 2 slots / 25 ms = 20 + 80 queries/s of each job.
    assert!((p.per_worker[0] - 20.0).abs() < 1e-9 && (p.per_worker[1] - 80.0).abs() < 1e-9, "{p:?}");
    assert!((p.rate - 100.0).abs() < 1e-9, "{p:?}");
    // Slot time: job a takes 20 × 0.04 + 80 × 0.02 = 2.4 of the 3 slots.
    assert!((p.jobs["a"].workers - 2.4).abs() < 1e-9 && (p.jobs["b"].workers - 0.6).abs() < 1e-9, "{p:?}");
    // Nonsense costs give no plan rather than infinities.
    assert_eq!(plan(&[("a".into(), 0.0)], &workers).rate, 0.0);
    assert_eq!(plan(&[("a".into(), f64::NAN)], &workers).rate, 0.0);
}
