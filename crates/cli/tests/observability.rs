//! Seeing it work, end to end on real node processes: `/metrics` read by
//! a real Prometheus text parser, the timeline (`idunno events`) on every
//! node after a kill, an election and a repair, and the dashboard rendered
//! by a real browser (headless Chromium).

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{Cluster, http_token, https_get, kill9, scrape, value, wait_for};
use serde_json::Value;

fn asset(rel: &str) -> PathBuf {
    let p = idunno_ml::onnx::assets_dir().join(rel);
    assert!(p.exists(), "{} is missing: run scripts/assets", p.display());
    p
}

fn ok(c: &Cluster, via: u64, args: &[&str]) -> Value {
    common::json_via(c, via, args, Duration::from_secs(60))
}

/// Any node still running.
fn live(c: &Cluster) -> Vec<u64> {
    c.nodes.iter().filter(|n| common::alive(n.pid)).map(|n| n.id).collect()
}

fn status(c: &Cluster, job: &str) -> Value {
    let via = live(c)[0];
    ok(c, via, &["job", "status", job])[0].clone()
}

/// SIGKILL node `id` and wait until it is gone.
fn kill(c: &Cluster, id: u64) {
    let pid = c.node(id).pid;
    kill9(pid);
    assert!(wait_for(Duration::from_secs(5), || !common::alive(pid)).is_some(), "node {id} outlived SIGKILL");
}

fn tiny_job(c: &Cluster, job: &str, batch: &str, passes: Option<&str>) {
    let mut args = vec!["job", "add", job, "--model", "models/tiny.onnx", "--inputs", "data/tiny.npy"];
    args.extend(["--batch-size", batch]);
    if let Some(p) = passes {
        args.extend(["--passes", p]);
    }
    ok(c, 1, &args);
    ok(c, 1, &["job", "start", job]);
}

fn put_tiny(c: &Cluster) {
    ok(c, 1, &["fs", "put", asset("models/tiny-add.onnx").to_str().unwrap(), "models/tiny.onnx"]);
    ok(c, 1, &["fs", "put", asset("datasets/tiny/x.npy").to_str().unwrap(), "data/tiny.npy"]);
}

#[test]
fn metrics_agree_with_job_status_and_show_a_death() {
    // `/metrics` open to a Prometheus without the token; the rest is not.
    let c = Cluster::up(common::bin(), 5, Some("metrics_public = true\n"));
    put_tiny(&c);
    tiny_job(&c, "alpha", "8", Some("3"));
    tiny_job(&c, "beta", "16", Some("2"));
    let done = wait_for(Duration::from_secs(60), || {
        status(&c, "alpha")["state"] == "done" && status(&c, "beta")["state"] == "done"
    });
    assert!(done.is_some(), "jobs not done: {} {}", status(&c, "alpha"), status(&c, "beta"));

    let (code, body) = https_get(common::bin(), &c.node(2).http, "/metrics", None);
    assert_eq!(code, 200, "/metrics without a token, metrics_public: {body}");
    let (code, _) = https_get(common::bin(), &c.node(2).http, "/api/status", None);
    assert_eq!(code, 401, "/api without a token");

    let token = http_token(common::bin(), &c.node(1).rpc);
    for job in ["alpha", "beta"] {
        let st = status(&c, job);
        let queries = st["queries_done"].as_f64().unwrap();
        let inputs = st["inputs_done"].as_f64().unwrap();
        assert!(queries > 0.0, "{st}");
        // Cluster-wide series: the same on every node, equal to the status.
        for id in [1, 3, 5] {
            let s = scrape(&c, id, &token);
            let l = [("job", job)];
            assert_eq!(value(&s, "idunno_job_queries_total", &l), Some(queries), "node {id}, {job}");
            assert_eq!(value(&s, "idunno_job_inputs_total", &l), Some(inputs), "node {id}, {job}");
            assert_eq!(value(&s, "idunno_job_query_duration_seconds_count", &l), Some(queries), "node {id}");
            assert_eq!(value(&s, "idunno_job_state", &[("job", job), ("state", "done")]), Some(1.0));
            let batch = st["batch_size"].as_f64();
            assert_eq!(value(&s, "idunno_job_batch_size", &l), batch);
            // The variance in s² (the status rounds its ms² to 0.001).
            let var = value(&s, "idunno_job_query_duration_variance_seconds_squared", &l).unwrap() * 1e6;
            let want = st["latency_ms"]["var"].as_f64().unwrap();
            assert!((var - want).abs() <= 0.0005 + 1e-9 * want, "variance {var} ms², status {want}");
            // No labels, no loss.
            assert_eq!(value(&s, "idunno_job_loss_inputs_total", &l), Some(0.0), "node {id}, {job}");
        }
        // Per-node series: summed over the nodes, every counted query ran
        // on some worker (a query run twice counts twice here).
        let ran: f64 = (1..=5)
            .map(|id| {
                value(&scrape(&c, id, &token), "idunno_worker_queries_total", &[("job", job), ("outcome", "ok")])
                    .unwrap_or(0.0)
            })
            .sum();
        assert!(ran >= queries, "{job}: workers ran {ran} queries, {queries} counted");
    }
    let s = scrape(&c, 2, &token);
    assert_eq!(value(&s, "idunno_members", &[("state", "alive")]), Some(5.0));
    assert!(value(&s, "process_resident_memory_bytes", &[]).unwrap() > 1e6);
    assert!(value(&s, "idunno_sdfs_files", &[]).unwrap() >= 2.0);
    let leaders: f64 = (1..=5).map(|id| value(&scrape(&c, id, &token), "idunno_raft_is_leader", &[]).unwrap()).sum();
    assert_eq!(leaders, 1.0, "exactly one node says it leads");

    // A kill shows in members-by-state within the detection time.
    let killed = Instant::now();
    kill(&c, 4);
    let seen = wait_for(Duration::from_secs(10), || {
        value(&scrape(&c, 1, &token), "idunno_members", &[("state", "dead")]) == Some(1.0)
    });
    let took = killed.elapsed();
    assert!(seen.is_some(), "the death never showed in /metrics");
    println!("the kill showed in idunno_members{{state=\"dead\"}} after {took:?}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let s = scrape(&c, 1, &token);
    assert_eq!(value(&s, "idunno_members", &[("state", "alive")]), Some(4.0));
    assert!(value(&s, "idunno_member_changes_total", &[("state", "dead")]).unwrap() >= 1.0);
}

/// `idunno events --json` through node `id`.
fn events(c: &Cluster, id: u64) -> Vec<Value> {
    ok(c, id, &["events"]).as_array().expect("an array").clone()
}

/// The first event of `kind` about `node` (0: any) after `after`, and how
/// many such events there are in all.
fn find<'a>(ev: &'a [Value], kind: &str, node: u64) -> (Option<&'a Value>, usize) {
    let all: Vec<&Value> = ev.iter().filter(|e| e["kind"] == kind && (node == 0 || e["node"] == node)).collect();
    (all.first().copied(), all.len())
}

fn seq(e: Option<&Value>) -> u64 {
    e.and_then(|e| e["seq"].as_u64()).unwrap_or(0)
}

#[test]
fn a_kill_an_election_and_a_repair_are_on_every_nodes_timeline_and_on_the_dashboard() {
    let c = common::up(5);
    put_tiny(&c);
    tiny_job(&c, "small", "8", None);
    tiny_job(&c, "large", "64", None);
    let running = wait_for(Duration::from_secs(30), || {
        status(&c, "small")["query_rate"].as_f64() > Some(0.0) && status(&c, "large")["query_rate"].as_f64() > Some(0.0)
    });
    assert!(running.is_some(), "jobs not running");
    // A worker that holds a replica (so its death needs a repair), and
    // then the leader.
    let ls = ok(&c, 1, &["fs", "ls", "data/tiny.npy"]);
    let holders: Vec<u64> =
        ls["versions"][0]["replicas"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    let leader = ok(&c, 1, &["status"])["leader"].as_u64().unwrap();
    let worker = *holders.iter().find(|h| **h != leader).expect("a holder that does not lead");
    kill(&c, worker);
    // The repair of what it held, then the leader.
    let repaired = wait_for(Duration::from_secs(30), || {
        let via = live(&c)[0];
        find(&events(&c, via), "file_repaired", 0).1 >= 1
    });
    assert!(repaired.is_some(), "no repair on the timeline: {:#?}", events(&c, live(&c)[0]));
    kill(&c, leader);
    let elected = wait_for(Duration::from_secs(30), || {
        let via = live(&c)[0];
        let ev = events(&c, via);
        let (dead, _) = find(&ev, "member_dead", leader);
        let elections: Vec<&Value> = ev.iter().filter(|e| e["kind"] == "leader_elected").collect();
        dead.is_some() && elections.last().is_some_and(|e| e["node"] != leader)
    });
    assert!(elected.is_some(), "no new leader on the timeline: {:#?}", events(&c, live(&c)[0]));

    // Every live node tells the same story: each once, in order.
    let mut stories = BTreeMap::new();
    for id in live(&c) {
        let ev = events(&c, id);
        let (worker_dead, n_worker_dead) = find(&ev, "member_dead", worker);
        let (leader_dead, n_leader_dead) = find(&ev, "member_dead", leader);
        let (repair, _) = find(&ev, "file_repaired", 0);
        // Elections after the repair (the leader was killed after it): one,
        // of another node. (Raft may elect before SWIM declares the old
        // leader dead, so the two come in either order.)
        let elections: Vec<&Value> =
            ev.iter().filter(|e| e["kind"] == "leader_elected" && e["seq"].as_u64() > Some(seq(repair))).collect();
        assert_eq!((n_worker_dead, n_leader_dead), (1, 1), "node {id}: each death once: {ev:#?}");
        assert!(seq(worker_dead) < seq(repair), "node {id}: the repair follows the death");
        assert!(seq(repair) < seq(leader_dead), "node {id}: then the leader died");
        assert_eq!(elections.len(), 1, "node {id}: one election after the leader's death: {ev:#?}");
        assert_ne!(elections[0]["node"], leader, "node {id}: another node was elected");
        let seqs: Vec<u64> = ev.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "node {id}: oldest first");
        let story: Vec<(u64, String)> =
            ev.iter().map(|e| (e["seq"].as_u64().unwrap(), e["kind"].as_str().unwrap().to_string())).collect();
        stories.insert(id, story);
    }
    // The same events under the same numbers (one node may have applied
    // a little less of the log than another).
    let longest = stories.values().max_by_key(|s| s.len()).unwrap().clone();
    for (id, s) in &stories {
        assert_eq!(s[..], longest[..s.len()], "node {id}'s timeline differs");
    }
    let jobs_started = longest.iter().filter(|(_, k)| k == "job_started").count();
    assert_eq!(jobs_started, 2, "two jobs started: {longest:?}");

    // Metrics are not public by default.
    let (code, _) = https_get(common::bin(), &c.node(live(&c)[0]).http, "/metrics", None);
    assert_eq!(code, 401, "/metrics without a token");

    // The dashboard, in a real browser.
    let Some(chromium) = common::chromium() else {
        println!("SKIPPED the dashboard part: no chromium (scripts/setup installs it as root)");
        return;
    };
    let via = live(&c)[0];
    let token = http_token(common::bin(), &c.node(via).rpc);
    let url = format!("https://{}/?token={token}", c.node(via).http);
    let dom = common::dump_dom(&chromium, &url);
    for job in ["small", "large"] {
        assert!(dom.contains(&format!("data-job=\"{job}\"")), "the jobs table lists {job}");
    }
    let rates = common::cells(&dom, "num rate");
    assert!(rates.iter().filter(|r| r.parse::<f64>().is_ok_and(|v| v > 0.0)).count() >= 2, "non-zero rates: {rates:?}");
    assert!(dom.contains("data-kind=\"member_dead\""), "the kill is on the timeline");
    assert!(dom.contains("class=\"mark mark-member_dead\""), "the kill is marked on the charts");
    assert!(dom.contains("data-kind=\"leader_elected\""), "the election is on the timeline");
    let paint = dom.split("data-first-contentful-paint-ms=\"").nth(1).and_then(|r| r.split('"').next());
    println!("the dashboard's first contentful paint, as Chromium timed it: {} ms", paint.unwrap_or("?"));
}
