//! Workers that are not alike: a node with two query slots and a node
//! held to a tenth of a CPU by a cgroup (root only; without root that
//! node runs at full speed and the test says so), under two real jobs of
//! EfficientNet-Lite0 of 4× different cost. Rates stay equal, faster
//! workers run more, and `job status` says which worker has which slots.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{Cluster, http_token, scrape, up, value, wait_for};
use idunno_testkit::cgroup::CpuLimit;
use serde_json::Value;

fn ok(c: &Cluster, via: u64, args: &[&str]) -> Value {
    common::json_via(c, via, args, Duration::from_secs(120))
}

fn put(c: &Cluster, asset: &str, name: &str) {
    let p = idunno_ml::onnx::assets_dir().join(asset);
    assert!(p.exists(), "{} is missing: run scripts/assets", p.display());
    ok(c, 1, &["fs", "put", p.to_str().unwrap(), name]);
}

fn job(c: &Cluster, name: &str, batch: &str) {
    let args = ["job", "add", name, "--model", "models/effnet.onnx", "--inputs", "data/photos.npy"];
    ok(c, 1, &[&args[..], &["--batch-size", batch]].concat());
    ok(c, 1, &["job", "start", name]);
}

/// Every job's queries done, and when they were read.
fn done(c: &Cluster) -> (Instant, BTreeMap<String, u64>) {
    let all = ok(c, 2, &["job", "status"]);
    let at = Instant::now();
    let jobs = all.as_array().unwrap().iter();
    (at, jobs.map(|j| (j["job"].as_str().unwrap().to_string(), j["queries_done"].as_u64().unwrap())).collect())
}

/// Queries each node's worker ran (both jobs, without error).
fn ran(c: &Cluster, token: &str) -> BTreeMap<u64, f64> {
    c.nodes
        .iter()
        .map(|n| {
            let s = scrape(c, n.id, token);
            let of = |job| value(&s, "idunno_worker_queries_total", &[("job", job), ("outcome", "ok")]).unwrap_or(0.0);
            (n.id, of("big") + of("small"))
        })
        .collect()
}

#[test]
fn workers_with_more_slots_or_less_cpu_keep_the_rates_equal_and_the_faster_do_more() {
    let mut c = up(3);
    let seed = c.node(1).rpc.clone();
    let two = c.add_node_with(&seed, &["--slots", "2"]);
    let slow = c.add_node(&seed);
    assert_eq!((two.id, slow.id), (4, 5));
    let limit = match CpuLimit::new(10) {
        Ok(l) => {
            l.add(slow.pid).expect("move node 5 into the CPU limit");
            Some(l)
        }
        Err(why) => {
            eprintln!("NOTE: node 5 runs at full speed, not slowed: {why}");
            None
        }
    };
    let all_alive = wait_for(Duration::from_secs(30), || {
        let m = common::members(&c, 1);
        m.len() == 5 && m.iter().all(|m| m["state"] == "alive")
    });
    assert!(all_alive.is_some(), "5 members: {:?}", common::members(&c, 1));

    put(&c, "models/efficientnet-lite0.onnx", "models/effnet.onnx");
    put(&c, "datasets/photos/photos.npy", "data/photos.npy");
    // Four photos per query against one: about 4× the cost.
    job(&c, "big", "4");
    job(&c, "small", "1");
    // Every worker has loaded the model and run queries of both jobs,
    // and the rates' 10 s window holds only that.
    let token = http_token(common::bin(), &c.node(1).rpc);
    let warm = wait_for(Duration::from_secs(90), || ran(&c, &token).values().all(|n| *n >= 4.0));
    assert!(warm.is_some(), "not every worker ran queries: {:?}", ran(&c, &token));
    std::thread::sleep(Duration::from_secs(12));

    let (t0, before) = done(&c);
    let ran0 = ran(&c, &token);
    // Long enough that the queries in flight at either end (up to two
    // per slot, and a flush's worth not yet counted) weigh under 2%.
    std::thread::sleep(Duration::from_secs(30));
    let (t1, after) = done(&c);
    let ran1 = ran(&c, &token);
    let secs = (t1 - t0).as_secs_f64();
    let rate = |j: &str| (after[j] - before[j]) as f64 / secs;
    let (big, small) = (rate("big"), rate("small"));
    let status = ok(&c, 2, &["job", "status"]);
    let by_name = |j: &str| status.as_array().unwrap().iter().find(|s| s["job"] == j).unwrap().clone();
    let window: Vec<f64> = ["big", "small"].iter().map(|j| by_name(j)["query_rate"].as_f64().unwrap()).collect();
    let per_node: BTreeMap<u64, f64> = ran1.iter().map(|(id, n)| (*id, (n - ran0[id]) / secs)).collect();
    let shown = common::via(&c, 1, &["job", "assignments"], Duration::from_secs(20));
    eprintln!("{}", String::from_utf8_lossy(&shown.stdout));
    eprintln!(
        "over {secs:.1} s: big {big:.2} q/s, small {small:.2} q/s (last 10 s: {window:?}); predicted {} q/s; \
         queries/s per node {per_node:.2?}",
        by_name("big")["predicted_rate"]
    );

    let fairness = big.max(small) / big.min(small) - 1.0;
    assert!(big > 0.0 && small > 0.0 && fairness <= 0.05, "rates {big:.2} and {small:.2} q/s: {fairness:.3} apart");
    assert!(window[0].max(window[1]) / window[0].min(window[1]) - 1.0 <= 0.2, "10 s rates {window:?}");

    // Two slots run more than one; a tenth of a CPU runs less.
    let plain = (per_node[&2] + per_node[&3]) / 2.0;
    assert!(per_node[&4] > 1.4 * plain, "node 4 (2 slots) against nodes 2 and 3: {per_node:?}");
    if let Some(limit) = &limit {
        assert!(limit.throttled() > 0, "the CPU limit never held node 5 back");
        assert!(per_node[&5] < 0.5 * plain, "node 5 (a tenth of a CPU) against nodes 2 and 3: {per_node:?}");
    }
    // `job status` names each worker's slots and its share of the queries.
    let small = by_name("small");
    assert_eq!(small["worker_slots"]["4"], 2, "{small:#}");
    assert_eq!(small["worker_slots"]["2"], 1, "{small:#}");
    let q = |w: &str| small["worker_query_shares"][w].as_f64().unwrap_or(0.0);
    assert!(q("4") > q("2").max(q("3")), "query shares: {small:#}");
    assert!(String::from_utf8_lossy(&shown.stdout).contains("4 (2 slots)"), "job assignments names node 4's slots");
    drop(limit);
}
