//! The dispatcher, event by event: which queries go out, what a dead
//! worker's queries become, which reports count.

use idunno_scheduler::{Dispatcher, DispatcherConfig, JobView, Query, Report};

fn job(name: &str, samples: u64, batch: u32) -> JobView {
    JobView { name: name.into(), samples, passes: Some(1), batch_size: batch, done: vec![] }
}

fn query(job: &str, pass: u64, start: u64, len: u64) -> Query {
    Query { job: job.into(), pass, start, len }
}

fn starts(qs: &[Query]) -> Vec<(String, u64, u64)> {
    qs.iter().map(|q| (q.job.clone(), q.start, q.len)).collect()
}

fn d() -> Dispatcher {
    Dispatcher::new(DispatcherConfig { lease_ms: 1000 })
}

#[test]
fn batches_are_consecutive_and_never_handed_out_twice() {
    let mut d = d();
    d.sync(&[job("a", 10, 4)]);
    let got = d.take(1, 2, 0);
    assert_eq!(starts(&got), [("a".into(), 0, 4), ("a".into(), 4, 4)]);
    assert_eq!(starts(&d.take(2, 5, 0)), [("a".into(), 8, 2)]);
    assert!(d.take(3, 1, 0).is_empty(), "everything is leased");
    d.check().unwrap();
}

#[test]
fn a_dead_workers_queries_go_to_the_next_worker() {
    let mut d = d();
    d.sync(&[job("a", 8, 4)]);
    d.take(1, 1, 0);
    d.take(2, 1, 0);
    assert_eq!(d.worker_gone(1), 1);
    assert_eq!(starts(&d.take(3, 4, 10)), [("a".into(), 0, 4)]);
    // The "dead" worker was only slow: its late report is a repeat now
    // that worker 3 holds the range.
    assert_eq!(d.report(1, &query("a", 0, 0, 4), 10, 0), Report::Repeat);
    assert_eq!(d.report(3, &query("a", 0, 0, 4), 10, 0), Report::Accepted);
    assert_eq!(d.report(3, &query("a", 0, 0, 4), 10, 0), Report::Repeat, "a second report of the same query");
    d.check().unwrap();
}

#[test]
fn expired_leases_are_handed_out_again() {
    let mut d = d();
    d.sync(&[job("a", 4, 4)]);
    d.take(1, 1, 0);
    assert_eq!(d.expire(999), 0);
    assert_eq!(d.expire(1000), 1);
    assert_eq!(starts(&d.take(2, 1, 1000)), [("a".into(), 0, 4)]);
}

#[test]
fn reports_without_a_lease_count_after_a_leader_change() {
    // A new leader knows no leases: workers report what they ran for the
    // old one, and it counts if it is not done.
    let mut d = d();
    d.sync(&[JobView { done: vec![(0, 4)], ..job("a", 12, 4) }]);
    assert_eq!(d.report(7, &query("a", 0, 0, 4), 10, 0), Report::Repeat, "done before the change");
    assert_eq!(d.report(7, &query("a", 0, 4, 4), 10, 0), Report::Accepted);
    assert_eq!(starts(&d.take(1, 4, 0)), [("a".into(), 8, 4)]);
    d.check().unwrap();
}

#[test]
fn committed_work_moves_to_done_and_abandoned_work_returns() {
    let mut d = d();
    d.sync(&[job("a", 8, 4)]);
    let qs = d.take(1, 2, 0);
    assert_eq!(d.report(1, &qs[0], 10, 0), Report::Accepted);
    assert_eq!(d.report(1, &qs[1], 10, 0), Report::Accepted);
    d.abandon(&qs[1..]);
    d.sync(&[JobView { done: vec![(0, 4)], ..job("a", 8, 4) }]);
    assert_eq!(starts(&d.take(2, 4, 0)), [("a".into(), 4, 4)]);
    d.check().unwrap();
}

#[test]
fn a_batch_size_change_applies_to_the_next_queries() {
    let mut d = d();
    d.sync(&[job("a", 100, 10)]);
    d.take(1, 1, 0);
    d.sync(&[job("a", 100, 3)]);
    assert_eq!(starts(&d.take(1, 2, 0)), [("a".into(), 10, 3), ("a".into(), 13, 3)]);
    // A gap shorter than the batch is filled exactly.
    let mut d2 = self::d();
    d2.sync(&[JobView { done: vec![(0, 5), (7, 100)], ..job("a", 100, 10) }]);
    assert_eq!(starts(&d2.take(1, 5, 0)), [("a".into(), 5, 2)]);
}

#[test]
fn a_worker_alternates_between_running_jobs() {
    let mut d = d();
    d.sync(&[job("a", 100, 1), job("b", 100, 1)]);
    let got: Vec<String> = d.take(1, 4, 0).into_iter().map(|q| q.job).collect();
    assert_eq!(got, ["a", "b", "a", "b"]);
    // A stopped job's leases disappear; its reports are repeats.
    d.sync(&[job("b", 100, 1)]);
    assert_eq!(d.report(1, &query("a", 0, 0, 1), 10, 0), Report::Repeat);
}

#[test]
fn the_next_pass_starts_while_this_one_finishes() {
    let mut d = d();
    d.sync(&[JobView { passes: Some(3), ..job("a", 5, 2) }]);
    // Queries never span two passes: 2, 2, 1 per pass of 5.
    let got = d.take(1, 7, 0);
    let spans: Vec<(u64, u64, u64)> = got.iter().map(|q| (q.pass, q.start, q.len)).collect();
    assert_eq!(spans, [(0, 0, 2), (0, 2, 2), (0, 4, 1), (1, 5, 2), (1, 7, 2), (1, 9, 1), (2, 10, 2)]);
    assert_eq!(got[4].first_input(5), 2);
    // Up to the last pass and no further.
    assert_eq!(d.take(1, 9, 0).len(), 2);
    assert!(d.take(1, 1, 0).is_empty());
    // A looping job has no end.
    let mut d = self::d();
    d.sync(&[JobView { passes: None, ..job("a", 1, 4) }]);
    assert_eq!(d.take(1, 100, 0).len(), 100);
    d.check().unwrap();
}

#[test]
fn work_counted_by_another_leader_ends_the_leases_on_it() {
    // The old leader's last flush commits (through the new leader) work
    // this dispatcher has leased out meanwhile: the lease is over, the
    // worker's report a repeat, and nothing is leased twice.
    let mut d = d();
    d.sync(&[job("a", 12, 4)]);
    let qs = d.take(1, 2, 0);
    assert_eq!(starts(&qs), [("a".into(), 0, 4), ("a".into(), 4, 4)]);
    d.sync(&[JobView { done: vec![(0, 6)], ..job("a", 12, 4) }]);
    d.check().unwrap();
    assert_eq!(d.leases().values().sum::<usize>(), 0, "both leases overlap counted work");
    assert_eq!(d.report(1, &qs[1], 10, 0), Report::Repeat);
    assert_eq!(starts(&d.take(2, 4, 0)), [("a".into(), 6, 4), ("a".into(), 10, 2)]);
    d.check().unwrap();
}
