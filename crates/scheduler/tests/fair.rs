//! Fair-time dispatch: equal query rates whatever each query costs, seen
//! on a simulated clock with workers that take a query, run it for its
//! cost and come back.

use std::collections::BTreeMap;

use idunno_scheduler::{Dispatcher, DispatcherConfig, JobView, Report, plan};

fn looping(name: &str, batch: u32) -> JobView {
    JobView { name: name.into(), samples: 1000, passes: None, batch_size: batch, done: vec![] }
}

/// Run `workers` single-slot workers for `until_ms` of simulated time;
/// `cost(job)` is a query's processing time in ms. Jobs may join at a
/// time (`joins`). Returns completions per job after `from_ms`, and when
/// each job's first query completed.
fn simulate(
    d: &mut Dispatcher,
    workers: u64,
    joins: &[(u64, JobView)],
    cost: impl Fn(&str) -> u64,
    from_ms: u64,
    until_ms: u64,
) -> (BTreeMap<String, u64>, BTreeMap<String, u64>) {
    let mut done: BTreeMap<String, u64> = BTreeMap::new();
    let mut first: BTreeMap<String, u64> = BTreeMap::new();
    // worker → (query, finishes at)
    let mut busy: BTreeMap<u64, (idunno_scheduler::Query, u64)> = BTreeMap::new();
    let mut running: Vec<JobView> = Vec::new();
    for now in 0..until_ms {
        for (at, job) in joins {
            if *at == now {
                running.push(job.clone());
                d.sync(&running);
            }
        }
        let finished: Vec<u64> = busy.iter().filter(|(_, (_, t))| *t <= now).map(|(w, _)| *w).collect();
        for w in finished {
            let (q, _) = busy.remove(&w).unwrap();
            assert_eq!(d.report(w, &q, cost(&q.job) * 1000, now), Report::Accepted);
            first.entry(q.job.clone()).or_insert(now);
            if now >= from_ms {
                *done.entry(q.job.clone()).or_default() += 1;
            }
        }
        for w in 1..=workers {
            if !busy.contains_key(&w)
                && let Some(q) = d.take(w, 1, now).pop()
            {
                let t = now + cost(&q.job);
                busy.insert(w, (q, t));
            }
        }
        d.check().unwrap();
    }
    (done, first)
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
    let (done, _) = simulate(&mut d, 5, &[(0, looping("big", 4)), (0, looping("small", 1))], cost, 2_000, 12_000);
    // 5 workers, 50 ms of work per pair of queries: 100 queries/s each.
    assert!(ratio(&done) <= 0.05, "{done:?}");
    assert!((done["big"] as f64 / 10.0 - 100.0).abs() < 5.0, "{done:?}");
    // The costlier job holds about four fifths of the workers' time.
    let shares = d.explain(&[1, 2, 3, 4, 5], 1, 12_000);
    let big: f64 = shares["big"].shares.values().sum();
    let small: f64 = shares["small"].shares.values().sum();
    assert!((big / (big + small) - 0.8).abs() < 0.05, "{shares:?}");
    assert_eq!(shares["big"].cost_ms, Some(40.0));
    let predicted = shares["big"].predicted_rate.unwrap();
    assert!((predicted - 100.0).abs() < 1.0, "{predicted}");
}

#[test]
fn a_job_that_joins_runs_at_once_and_gets_no_burst() {
    let mut d = Dispatcher::new(DispatcherConfig::default());
    let cost = |j: &str| if j == "a" { 20 } else { 5 };
    let joins = [(0, looping("a", 1)), (5_000, looping("b", 1))];
    let (done, first) = simulate(&mut d, 4, &joins, cost, 8_000, 18_000);
    // Its first query finishes within a query or two of joining.
    assert!(first["b"] <= 5_000 + 20 + 5, "{first:?}");
    assert!(ratio(&done) <= 0.05, "{done:?}");
}

#[test]
fn rates_stay_equal_when_a_worker_goes() {
    let mut d = Dispatcher::new(DispatcherConfig::default());
    let cost = |j: &str| if j == "a" { 30 } else { 10 };
    simulate(&mut d, 5, &[(0, looping("a", 1)), (0, looping("b", 1))], cost, 0, 1_000);
    assert!(d.worker_gone(5) <= 1);
    let (done, _) = simulate(&mut d, 4, &[], cost, 0, 10_000);
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
        let p = plan(&costs, *slots);
        assert!((p.rate - rate).abs() < 1e-9, "{costs:?}: rate {}", p.rate);
        for (job, w) in *shares {
            assert!((p.jobs[*job].workers - w).abs() < 1e-9, "{costs:?}: {job} {}", p.jobs[*job].workers);
            assert!((p.jobs[*job].rate - rate).abs() < 1e-9);
        }
    }
    assert_eq!(plan(&[], 5).rate, 0.0);
}
